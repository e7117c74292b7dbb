"""Stores: forward-only watermarks, atomic documents+watermark, persistence across reopen."""

import pytest

from khala_client.stores import Document, MemoryStore, SQLiteStore, TopicState


def doc(key, version, wm, payload=None, topic="t"):
    return Document(topic, key, version, payload if payload is not None else {"k": key, "v": version}, None, wm)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "state" / "khala.sqlite3")
    yield s
    s.close()


def test_watermarks_only_move_forward(store):
    assert store.topic_state("t") == TopicState(0, None)
    assert store.commit("t", [doc("a", 1, 5)], 5, "e1") == 5
    assert store.commit("t", [], 3) == 5
    assert store.topic_state("t") == TopicState(5, "e1")  # epoch kept when not given


def test_a_document_never_moves_back(store):
    store.commit("t", [doc("a", 4, 2)], 2)
    store.commit("t", [doc("a", 3, 9)], 9)
    assert store.get("t", "a").doc_version == 4
    store.commit("t", [doc("a", 4, 10, payload={"again": 1})], 10)
    assert store.get("t", "a").payload == {"again": 1}


def test_replace_topic_resets_documents_and_cursor(store):
    store.commit("t", [doc("a", 1, 1), doc("b", 1, 2)], 50, "old")
    store.commit("u", [doc("x", 1, 1, topic="u")], 1)
    store.replace_topic("t", [doc("c", 7, 40)], 40, "new")
    assert set(store.documents("t")) == {"c"}
    assert store.topic_state("t") == TopicState(40, "new")
    assert set(store.documents("u")) == {"x"}  # other topics untouched
    store.clear_topic("t")
    assert store.documents("t") == {} and store.topic_state("t").watermark == 0


def test_sqlite_survives_reopen(tmp_path):
    path = tmp_path / "khala.sqlite3"
    s = SQLiteStore(path)
    s.commit("t", [doc("a", 2, 7, payload={"nested": {"x": [1, "é"]}})], 7, "epoch")
    s.close()
    s = SQLiteStore(path)
    assert s.topic_state("t") == TopicState(7, "epoch")
    assert s.get("t", "a").payload == {"nested": {"x": [1, "é"]}}
    assert s.topics() == {"t": TopicState(7, "epoch")}
    s.close()


def test_sqlite_commit_is_atomic(tmp_path):
    """A failure after the documents were written rolls them back with the watermark."""
    import sqlite3

    s = SQLiteStore(tmp_path / "k.sqlite3")
    s.commit("n", [doc("a", 1, 1, topic="n")], 1)
    # the documents are upserted first; the cursor write then violates CHECK (watermark >= 0)
    with pytest.raises(sqlite3.IntegrityError):
        s.commit("m", [doc("z", 1, 2, topic="m")], -1)
    assert s.documents("m") == {} and s.topic_state("m").watermark == 0
    assert set(s.documents("n")) == {"a"}
    s.close()


def test_sqlite_rejects_a_newer_schema(tmp_path):
    import sqlite3

    path = tmp_path / "k.sqlite3"
    sqlite3.connect(path).execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteStore(path)

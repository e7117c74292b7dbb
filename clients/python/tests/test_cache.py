"""Merge rules of the document cache (property-based) over both stores."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from khala_client.cache import DocumentCache, merge
from khala_client.protocol import Update
from khala_client.stores import MemoryStore, SQLiteStore


def upd(wm, key="k", version=1, topic="t", payload=None):
    return Update(topic, key, version, payload if payload is not None else {"v": version, "wm": wm}, None, wm, False)


def test_older_version_is_ignored_but_the_watermark_advances():
    # an out-of-order pair: v9 then v8 at watermark 10 keeps v9 and moves the cursor to 10
    cache = DocumentCache()
    cache.apply("t", [upd(5, version=9)])
    result = cache.apply("t", [upd(10, version=8)])
    assert result.ignored_older == 1 and result.applied == 0
    assert cache.get("t", "k").doc_version == 9
    assert cache.watermark("t") == 10


def test_equal_version_replaces_reprojection():
    cache = DocumentCache()
    cache.apply("t", [upd(1, version=3, payload={"old": True})])
    cache.apply("t", [upd(2, version=3, payload={"new": True})])
    assert cache.get("t", "k").payload == {"new": True}


def test_duplicates_at_or_below_the_cursor_are_dropped():
    cache = DocumentCache()
    cache.apply("t", [upd(1, version=1), upd(2, version=2)])
    result = cache.apply("t", [upd(2, version=2, payload={"dup": 1}), upd(1, version=7)])
    assert result.duplicates == 2 and result.applied == 0
    assert cache.get("t", "k").doc_version == 2 and cache.watermark("t") == 2


def test_merge_refuses_other_topics():
    with pytest.raises(ValueError):
        merge("t", 0, lambda k: None, [upd(1, topic="other")])


journal_rows = st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 6)), min_size=1, max_size=40)


@st.composite
def deliveries(draw):
    """A journal (watermarks 1..N) and an at-least-once delivery of it: overlapping replays,
    each a contiguous run starting at or before the previous end, split into random batches."""
    rows = draw(journal_rows)
    journal = [upd(i + 1, key=k, version=v) for i, (k, v) in enumerate(rows)]
    segments, end = [], 0
    while end < len(journal):
        start = draw(st.integers(0, end))  # a reconnect resumes at or before what it already has
        stop = draw(st.integers(end + 1, len(journal)))
        segment = journal[start:stop]
        cuts = sorted(draw(st.lists(st.integers(0, len(segment)), max_size=3)))
        bounds = [0, *cuts, len(segment)]
        segments.extend(segment[a:b] for a, b in zip(bounds, bounds[1:]) if b > a)
        end = stop
    return journal, segments


def expected_state(journal):
    """Per doc: highest version, ties to the latest watermark (equal replaces)."""
    best = {}
    for u in journal:
        cur = best.get(u.doc_key)
        if cur is None or u.doc_version >= cur.doc_version:
            best[u.doc_key] = u
    return {k: (u.doc_version, u.watermark) for k, u in best.items()}


@given(deliveries())
@settings(max_examples=200, deadline=None)
def test_any_at_least_once_delivery_converges(case):
    journal, batches = case
    cache = DocumentCache(MemoryStore())
    for batch in batches:
        cache.apply("t", batch)
    got = {k: (d.doc_version, d.watermark) for k, d in cache.documents("t").items()}
    assert got == expected_state(journal)
    assert cache.watermark("t") == len(journal)


@given(deliveries())
@settings(max_examples=40, deadline=None)
def test_sqlite_store_merges_exactly_like_memory(tmp_path_factory, case):
    journal, batches = case
    mem = DocumentCache(MemoryStore())
    lite = DocumentCache(SQLiteStore(tmp_path_factory.mktemp("s") / "c.sqlite3"))
    for batch in batches:
        mem.apply("t", batch)
        lite.apply("t", batch)
    assert mem.documents("t") == lite.documents("t")
    assert mem.watermark("t") == lite.watermark("t")
    lite.store.close()


def test_the_watermark_never_moves_back_through_a_batch():
    cache = DocumentCache()
    cache.apply("t", [upd(10)])
    cache.advance("t", 4)
    assert cache.watermark("t") == 10

"""GET /api/sync/v1/list/<topic>: snapshot pages, keyset cursors, owner filter, paging under writes."""

import threading
import time

import pytest
from django.db import close_old_connections

from projector.models import RUN_SUMMARIES, ReadModelDocument, StreamEvent, TopicSequence
from projector.payload_hash import payload_hash, to_wire
from projector.sink import project

LIST = f"/api/sync/v1/list/{RUN_SUMMARIES}"


def fetch_all(client, limit, *, between_pages=None):
    """Walk every page; return (pages, documents by key). ``between_pages(i)`` runs after page i."""
    pages, cursor = [], None
    while True:
        params = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        response = client.get(LIST, params)
        assert response.status_code == 200, response.content
        assert response["Cache-Control"] == "no-store"
        page = response.json()
        pages.append(page)
        if between_pages is not None:
            between_pages(len(pages) - 1)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    docs = {}
    for page in pages:
        for doc in page["documents"]:
            assert doc["doc_key"] not in docs, "a document appeared on two pages"
            docs[doc["doc_key"]] = doc
    return pages, docs


def replay_after(watermark, owner):
    """What a WebSocket subscribe with ``resume_after`` = ``watermark`` replays (journal, owner-filtered)."""
    rows = StreamEvent.objects.filter(topic=RUN_SUMMARIES, watermark__gt=watermark).order_by("watermark")
    return [r for r in rows if r.owner == owner or r.public]


def apply(state, rows):
    """Client merge rule: a journal row replaces the document when its doc_version is not older."""
    for row in rows:
        current = state.get(row.doc_key)
        if current is None or row.doc_version >= current["doc_version"]:
            state[row.doc_key] = {"doc_version": row.doc_version, "payload": row.payload}
    return state


def visible_read_models(owner):
    return {
        d.doc_key: {"doc_version": d.doc_version, "payload": d.payload}
        for d in ReadModelDocument.objects.filter(topic=RUN_SUMMARIES)
        if d.owner == owner or d.public
    }


def test_single_page_shape(topics, mint, api):
    project(RUN_SUMMARIES, "run:b", 2, {"b": 1}, "user:1")
    project(RUN_SUMMARIES, "run:a", 1, {"a": 1}, "user:1")
    response = api(mint(1)).get(LIST)
    assert response.status_code == 200
    body = response.json()
    seq = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    assert body["topic"] == RUN_SUMMARIES
    assert body["head_watermark"] == seq.last_watermark
    assert body["stream_epoch"] == seq.stream_epoch
    assert body["next_cursor"] is None
    assert [d["doc_key"] for d in body["documents"]] == ["run:a", "run:b"]
    first = body["documents"][0]
    assert first == {
        "doc_key": "run:a",
        "doc_version": 1,
        "payload": {"a": 1},
        "payload_hash": to_wire(payload_hash({"a": 1})),
        "watermark": StreamEvent.objects.get(doc_key="run:a").watermark,
    }


def test_empty_topic_lists_nothing_at_head_zero(topics, mint, api):
    body = api(mint(1)).get(LIST).json()
    assert body["documents"] == [] and body["next_cursor"] is None and body["head_watermark"] == 0


def test_default_limit_is_100_and_pages_cover_every_document_once(topics, mint, api):
    for i in range(250):
        project(RUN_SUMMARIES, f"run:{i:04d}", 1, {"i": i}, "user:1")
    client = api(mint(1))
    first = client.get(LIST).json()
    assert len(first["documents"]) == 100 and first["next_cursor"]
    pages, docs = fetch_all(client, 100)
    assert [len(p["documents"]) for p in pages] == [100, 100, 50]
    assert sorted(docs) == [f"run:{i:04d}" for i in range(250)]


def test_last_page_exactly_full_has_no_next_cursor(topics, mint, api):
    for i in range(10):
        project(RUN_SUMMARIES, f"k{i}", 1, {}, "user:1")
    pages, docs = fetch_all(api(mint(1)), 5)
    assert [len(p["documents"]) for p in pages] == [5, 5]
    assert pages[-1]["next_cursor"] is None


def test_owner_filter_and_public_documents(topics, mint, api):
    for i in range(30):
        project(RUN_SUMMARIES, f"a:{i:02d}", 1, {"owner": "A"}, "user:1")
        project(RUN_SUMMARIES, f"b:{i:02d}", 1, {"owner": "B"}, "user:2")
    for i in range(5):
        project(RUN_SUMMARIES, f"pub:{i}", 1, {"public": True}, "user:1", public=True)
        project(RUN_SUMMARIES, f"pubb:{i}", 1, {"public": True}, "user:2", public=True)
    _, docs_b = fetch_all(api(mint(2)), 7)
    assert not any(k.startswith("a:") for k in docs_b), "user B saw user A's private documents"
    assert {k for k in docs_b if k.startswith("b:")} == {f"b:{i:02d}" for i in range(30)}
    assert {k for k in docs_b if k.startswith("pub")} == {f"pub:{i}" for i in range(5)} | {f"pubb:{i}" for i in range(5)}
    _, docs_c = fetch_all(api(mint(3)), 3)
    assert set(docs_c) == {f"pub:{i}" for i in range(5)} | {f"pubb:{i}" for i in range(5)}


def test_doc_keys_with_slashes_and_colons_page_in_order(topics, mint, api):
    keys = ["a/b:c", "a:b/c", "a/b/c", "a:b:c", "a", "a/", "b/:/"]
    for key in keys:
        project(RUN_SUMMARIES, key, 1, {"k": key}, "user:1")
    pages, docs = fetch_all(api(mint(1)), 2)
    assert set(docs) == set(keys)
    listed = [d["doc_key"] for p in pages for d in p["documents"]]
    assert len(listed) == len(keys)


def test_pointer_mode_documents_are_listed_with_full_payload(topics, mint, api, settings):
    big = {"blob": "p" * 2000}
    settings.KHALA = {**settings.KHALA, "INLINE_PAYLOAD_LIMIT_BYTES": 128}
    project(RUN_SUMMARIES, "run:big", 1, big, "user:1")
    assert StreamEvent.objects.get(doc_key="run:big").payload is None
    body = api(mint(1)).get(LIST).json()
    assert body["documents"][0]["payload"] == big


@pytest.mark.parametrize(
    "query,code",
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "-5"}, "invalid_limit"),
        ({"limit": "abc"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "2.5"}, "invalid_limit"),
        ({"cursor": "!!!not-base64!!!"}, "invalid_cursor"),
        ({"cursor": "eyJ2IjoxfQ"}, "invalid_cursor"),  # valid base64 JSON, wrong shape
        ({"cursor": "bnVsbA"}, "invalid_cursor"),  # base64 of "null"
        ({"cursor": "x" * 5000}, "invalid_cursor"),
    ],
)
def test_bad_query_is_400_with_a_stable_code(topics, mint, api, query, code):
    response = api(mint(1)).get(LIST, query)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code
    assert response["Cache-Control"] == "no-store"


def test_limit_max_is_accepted_and_blank_params_mean_defaults(topics, mint, api):
    client = api(mint(1))
    assert client.get(LIST, {"limit": "1000"}).status_code == 200
    assert client.get(LIST, {"limit": "", "cursor": ""}).status_code == 200


def test_cursor_of_another_topic_is_invalid(topics, mint, api):
    for i in range(3):
        project("runtime.notifications", f"n:{i}", 1, {}, "user:1")
    other = api(mint(1)).get("/api/sync/v1/list/runtime.notifications", {"limit": 1}).json()["next_cursor"]
    response = api(mint(1)).get(LIST, {"cursor": other})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


def test_cursor_from_an_older_stream_epoch_is_409(topics, mint, api):
    for i in range(3):
        project(RUN_SUMMARIES, f"run:{i}", 1, {}, "user:1")
    client = api(mint(1))
    cursor = client.get(LIST, {"limit": 1}).json()["next_cursor"]
    TopicSequence.objects.filter(topic=RUN_SUMMARIES).update(stream_epoch="f" * 32)
    response = client.get(LIST, {"cursor": cursor})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "stream_epoch_changed"
    assert response.json()["error"]["stream_epoch"] == "f" * 32


def test_forced_writes_between_pages_are_covered_by_resuming_from_the_first_pages_head(topics, mint, api):
    """Force the race: after page 0 is read, change a document on it, add one before the cursor,
    and change one on a later page. The pages alone miss the first two; replaying the journal
    from page 0's head_watermark brings the client to exactly the read-model state. Resuming from
    the LAST page's head instead would miss the change to the already-read document."""
    for i in range(20):
        project(RUN_SUMMARIES, f"run:{i:02d}", 1, {"i": i, "v": 1}, "user:1")

    def between(page_index):
        if page_index == 0:
            project(RUN_SUMMARIES, "run:01", 2, {"i": 1, "v": 2}, "user:1")  # already listed
            project(RUN_SUMMARIES, "run:00a", 1, {"new": True}, "user:1")  # sorts before cursor
            project(RUN_SUMMARIES, "run:15", 2, {"i": 15, "v": 2}, "user:1")  # not listed yet
            project(RUN_SUMMARIES, "run:16b", 1, {"other": True}, "user:2")  # not visible to user:1

    pages, docs = fetch_all(api(mint(1)), 5, between_pages=between)
    assert {f"run:{i:02d}" for i in range(20)} <= set(docs), "a pre-existing document is missing"
    assert docs["run:01"]["doc_version"] == 1 and "run:00a" not in docs  # the pages alone are behind
    assert docs["run:15"]["doc_version"] == 2  # later page saw the newer version
    first_head, last_head = pages[0]["head_watermark"], pages[-1]["head_watermark"]
    assert last_head > first_head

    state = {k: {"doc_version": d["doc_version"], "payload": d["payload"]} for k, d in docs.items()}
    assert apply(dict(state), replay_after(first_head, "user:1")) == visible_read_models("user:1")
    # The reason the doc insists on the FIRST head: the last one loses run:01@2 and run:00a.
    assert apply(dict(state), replay_after(last_head, "user:1")) != visible_read_models("user:1")


def test_paging_while_writers_commit_concurrently_converges(topics, mint, api):
    """Two writer threads keep updating and inserting documents while a client pages with small
    pages; pages + replay from the first page's head equal the final read models exactly."""
    for i in range(200):
        project(RUN_SUMMARIES, f"run:{i:03d}", 1, {"i": i, "v": 1}, "user:1")
    stop = threading.Event()
    errors = []
    written = [0, 0]

    def writer(slot, owner):
        try:
            version = 2
            while not stop.is_set() and version < 400:
                i = (version * 14) % 200 + slot  # slot 0 owns even documents, slot 1 odd ones
                project(RUN_SUMMARIES, f"run:{i:03d}", version, {"i": i, "v": version}, "user:1")
                project(RUN_SUMMARIES, f"new:{slot}:{version:04d}", 1, {"slot": slot}, owner)
                written[slot] += 2
                version += 1
        except Exception as exc:  # surfaced below; a dead writer would make the test vacuous
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=writer, args=(0, "user:1")), threading.Thread(target=writer, args=(1, "user:2"))]
    for t in threads:
        t.start()
    try:
        # Wait (bounded) until writes are flowing so the paging below really overlaps them.
        head0 = TopicSequence.objects.get(topic=RUN_SUMMARIES).last_watermark
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not errors:
            if TopicSequence.objects.get(topic=RUN_SUMMARIES).last_watermark > head0 + 10:
                break
            time.sleep(0.005)
        pages, docs = fetch_all(api(mint(1)), 7)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    assert pages[-1]["head_watermark"] > pages[0]["head_watermark"], "no write overlapped the paging"
    assert {f"run:{i:03d}" for i in range(200)} <= set(docs)
    assert not any(k.startswith("new:1:") for k in docs), "user:2's documents leaked"
    state = {k: {"doc_version": d["doc_version"], "payload": d["payload"]} for k, d in docs.items()}
    assert apply(state, replay_after(pages[0]["head_watermark"], "user:1")) == visible_read_models("user:1")


def test_a_write_committed_between_the_head_and_the_page_reads_is_in_neither(topics, mint, api):
    """Force the race inside one request: right after the head is read, another connection commits
    a new document. The page must still be exactly the state at ``head_watermark`` (one snapshot):
    the new document is not listed, so resuming from the head replays it exactly once."""
    from django.db import connection

    project(RUN_SUMMARIES, "run:a", 1, {"v": 1}, "user:1")
    fired = []

    def write_from_another_connection():
        try:
            project(RUN_SUMMARIES, "run:b", 1, {"v": 1}, "user:1")
        finally:
            close_old_connections()

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "FROM sync_topic_sequences" in sql and not fired:
            fired.append(True)
            thread = threading.Thread(target=write_from_another_connection)
            thread.start()
            thread.join(timeout=30)
        return result

    with connection.execute_wrapper(wrapper):
        body = api(mint(1)).get(LIST).json()
    assert fired, "the race was not forced"
    written = StreamEvent.objects.get(doc_key="run:b").watermark
    assert written > body["head_watermark"]
    assert [d["doc_key"] for d in body["documents"]] == ["run:a"]
    assert all(d["watermark"] <= body["head_watermark"] for d in body["documents"])
    assert [r.doc_key for r in replay_after(body["head_watermark"], "user:1")] == ["run:b"]

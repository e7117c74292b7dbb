"""GET /api/sync/v1/doc/<topic>/<path:doc_key>: happy path, owner filter, odd keys, pointer mode."""

import pytest
from django.test import override_settings

from projector.models import RUN_SUMMARIES, StreamEvent
from projector.payload_hash import payload_hash, to_wire
from projector.sink import project

DOC_URL = "/api/sync/v1/doc/{topic}/{key}"


def test_document_is_returned_with_hash_and_watermark(topics, mint, api):
    payload = {"status": "running", "n": 1, "nested": {"k": [1, 2, 3]}}
    project(RUN_SUMMARIES, "run:1", 3, payload, "user:1")
    response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:1"))
    assert response.status_code == 200, response.content
    body = response.json()
    journal = StreamEvent.objects.get(topic=RUN_SUMMARIES, doc_key="run:1")
    assert body == {
        "doc_key": "run:1",
        "doc_version": 3,
        "payload": payload,
        "payload_hash": to_wire(payload_hash(payload)),
        "watermark": journal.watermark,
    }
    assert response["Cache-Control"] == "no-store"


def test_document_reflects_latest_version(topics, mint, api):
    project(RUN_SUMMARIES, "run:1", 1, {"v": 1}, "user:1")
    project(RUN_SUMMARIES, "run:1", 2, {"v": 2}, "user:1")
    body = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:1")).json()
    assert body["doc_version"] == 2 and body["payload"] == {"v": 2}
    assert body["watermark"] == StreamEvent.objects.filter(topic=RUN_SUMMARIES).order_by("-watermark")[0].watermark


@pytest.mark.parametrize(
    "doc_key",
    ["run:7/events:3", "worker/abc:def/ghi", "a:b:c", "trailing/", "x@y=z~/+-_.."],
)
def test_doc_keys_with_slashes_and_colons_route_as_paths(topics, mint, api, doc_key):
    project(RUN_SUMMARIES, doc_key, 1, {"key": doc_key}, "user:1")
    response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key=doc_key))
    assert response.status_code == 200, response.content
    assert response.json()["doc_key"] == doc_key
    assert response.json()["payload"] == {"key": doc_key}


def test_percent_encoded_doc_key_is_the_same_document(topics, mint, api):
    project(RUN_SUMMARIES, "run:7/events:3", 1, {"ok": True}, "user:1")
    response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run%3A7%2Fevents%3A3"))
    assert response.status_code == 200, response.content
    assert response.json()["doc_key"] == "run:7/events:3"


def test_other_owners_document_is_404_like_a_missing_one(topics, mint, api):
    project(RUN_SUMMARIES, "run:a", 1, {"secret": "A"}, "user:1")
    as_b = api(mint(2))
    foreign = as_b.get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:a"))
    missing = as_b.get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:nope"))
    assert foreign.status_code == missing.status_code == 404
    # Identical bodies: nothing tells B that run:a exists.
    assert foreign.json() == missing.json() == {"error": {"code": "document_not_found", "message": "no such document"}}
    assert b"secret" not in foreign.content
    assert foreign["Cache-Control"] == "no-store"


def test_public_document_is_visible_to_everyone(topics, mint, api):
    project(RUN_SUMMARIES, "announcement:1", 1, {"text": "hello"}, "user:1", public=True)
    for user_id in (1, 2, 3):
        response = api(mint(user_id)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="announcement:1"))
        assert response.status_code == 200
        assert response.json()["payload"] == {"text": "hello"}


def test_same_doc_key_on_another_topic_is_not_found(topics, mint, api):
    project(RUN_SUMMARIES, "run:1", 1, {"v": 1}, "user:1")
    response = api(mint(1)).get(DOC_URL.format(topic="runtime.notifications", key="run:1"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "document_not_found"


def test_pointer_mode_document_is_hydrated_with_its_full_payload(topics, mint, api):
    big = {"blob": "z" * 4096, "items": list(range(50))}
    with override_settings(KHALA={"INLINE_PAYLOAD_LIMIT_BYTES": 256, "SIGNING_KEYS": _keys()}):
        project(RUN_SUMMARIES, "run:big", 1, big, "user:1")
    journal = StreamEvent.objects.get(topic=RUN_SUMMARIES, doc_key="run:big")
    assert journal.payload is None, "precondition: the journal row is in pointer mode"
    response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:big"))
    assert response.status_code == 200
    body = response.json()
    assert body["payload"] == big
    assert body["payload_hash"] == to_wire(bytes(journal.payload_hash)) == to_wire(payload_hash(big))
    assert body["watermark"] == journal.watermark


def _keys():
    from django.conf import settings

    return settings.KHALA["SIGNING_KEYS"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/sync/v1/doc/runtime.run_summaries",
        "/api/sync/v1/doc/runtime.run_summaries/",
        "/api/sync/v1/doc/",
        "/api/sync/v1/list/",
        "/api/sync/v1/list/runtime.run_summaries/extra",
    ],
)
def test_malformed_paths_get_the_api_404_shape(topics, mint, api, path):
    response = api(mint(1)).get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response["Cache-Control"] == "no-store"


def test_only_get_is_allowed(topics, mint, api):
    response = api(mint(1)).post(DOC_URL.format(topic=RUN_SUMMARIES, key="run:1"), {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "query",
    ["min_watermark=abc&stream_epoch=e", "min_watermark=-1&stream_epoch=e", "min_watermark=3", "stream_epoch=e",
     "min_watermark=1&stream_epoch=" + "e" * 201],
)
def test_a_malformed_freshness_statement_is_invalid_min_watermark(topics, mint, api, query):
    project(RUN_SUMMARIES, "run:1", 1, {"v": 1}, "user:1")
    response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:1") + "?" + query)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_min_watermark"


def test_a_freshness_statement_without_replicas_reads_the_primary(topics, mint, api):
    """With no DATABASE_REPLICA_URLS the statement changes nothing (tests/sync/test_replicas.py
    covers a real replica)."""
    from projector.models import TopicSequence

    project(RUN_SUMMARIES, "run:1", 1, {"v": 1}, "user:1")
    project(RUN_SUMMARIES, "run:1", 2, {"v": 2}, "user:1")
    epoch = TopicSequence.objects.get(topic=RUN_SUMMARIES).stream_epoch
    for min_watermark in (0, 2, 10**6):  # beyond the head too: the primary is the truth
        query = f"?min_watermark={min_watermark}&stream_epoch={epoch}"
        response = api(mint(1)).get(DOC_URL.format(topic=RUN_SUMMARIES, key="run:1") + query)
        assert response.status_code == 200, response.content
        assert response.json()["doc_version"] == 2

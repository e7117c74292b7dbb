"""POST /api/internal/sync/projections: the sink over HTTP with a service token."""

import json

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from projector.models import ReadModelDocument, StreamEvent, TopicSequence

URL = "/api/internal/sync/projections"
TOKEN = "svc-token-for-tests"
RUNS = "runtime.run_summaries"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("topics")]


@pytest.fixture(autouse=True)
def service_token(settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SERVICE_TOKEN": TOKEN}


def doc(**overrides):
    base = {"topic": RUNS, "doc_key": "ext/doc:1", "doc_version": 1, "payload": {"a": 1}, "owner": "user:9"}
    base.update(overrides)
    return base


def call(body, *, token=TOKEN, raw=None, content_type="application/json"):
    client = APIClient()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body)
    return client.generic("POST", URL, data, content_type=content_type, **headers)


def nothing_written():
    return (
        not StreamEvent.objects.exists()
        and not ReadModelDocument.objects.exists()
        and not TopicSequence.objects.filter(last_watermark__gt=0).exists()
    )


def test_one_document():
    response = call(doc())
    assert response.status_code == 200, response.content
    assert response.json() == {
        "results": [
            {"topic": RUNS, "doc_key": "ext/doc:1", "doc_version": 1, "written": True, "watermark": 1, "hydration_required": False}
        ]
    }
    assert StreamEvent.objects.get(topic=RUNS).owner == "user:9"


def test_a_list_of_documents_and_a_stale_one():
    call(doc(doc_key="d", doc_version=5))
    response = call([doc(doc_key="a"), doc(doc_key="d", doc_version=4), doc(doc_key="b", public=True, owner="")])
    assert response.status_code == 200
    assert [(r["doc_key"], r["written"], r["watermark"]) for r in response.json()["results"]] == [
        ("a", True, 2), ("d", False, None), ("b", True, 3),
    ]


@override_settings(KHALA={"SERVICE_TOKEN": TOKEN, "INLINE_PAYLOAD_LIMIT_BYTES": 32})
def test_pointer_mode_is_reported():
    response = call(doc(payload={"x": "y" * 64}))
    assert response.json()["results"][0]["hydration_required"] is True


@pytest.mark.parametrize(
    "token, status, code",
    [(None, 401, "unauthenticated"), ("wrong", 401, "unauthenticated"), ("", 401, "unauthenticated")],
)
def test_missing_or_bad_service_token(token, status, code):
    response = call(doc(), token=token)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert nothing_written()


def test_unset_service_token_disables_the_endpoint(settings):
    settings.KHALA = {"SERVICE_TOKEN": ""}
    response = call(doc())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_token_unconfigured"
    assert nothing_written()


def test_user_token_auth_is_not_enough(django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user(username="u", password="p")
    key = Token.objects.create(user=user).key
    response = APIClient().generic("POST", URL, json.dumps(doc()), content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401
    assert nothing_written()


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"a": NaN}', 400, "malformed_json"),
        (b"[]", 400, "empty_batch"),
        (b'"a string"', 400, "invalid_request"),
        (b"42", 400, "invalid_request"),
        (b"[1]", 400, "invalid_document"),
        (b'{"topic": "runtime.run_summaries"}', 400, "invalid_document"),
    ],
)
def test_malformed_bodies(raw, status, code):
    response = call(None, raw=raw)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert nothing_written()


@pytest.mark.parametrize(
    "overrides, status, code, field",
    [
        ({"topic": "runtime.typo"}, 422, "unknown_topic", "topic"),
        ({"topic": 7}, 422, "invalid_topic", "topic"),
        ({"doc_key": ""}, 422, "invalid_doc_key", "doc_key"),
        ({"doc_key": ["x"]}, 422, "invalid_doc_key", "doc_key"),
        ({"doc_version": "1"}, 422, "invalid_doc_version", "doc_version"),
        ({"doc_version": -5}, 422, "invalid_doc_version", "doc_version"),
        ({"doc_version": 1.5}, 422, "invalid_doc_version", "doc_version"),
        ({"doc_version": None}, 422, "invalid_doc_version", "doc_version"),
        ({"owner": ""}, 422, "invalid_owner", "owner"),
        ({"owner": 42}, 422, "invalid_owner", "owner"),
        ({"public": "true"}, 422, "invalid_public", "public"),
        ({"payload": None}, 422, "invalid_payload", "payload"),
        ({"payload": [1, 2]}, 422, "invalid_payload", "payload"),
        ({"payload": {"n": 9007199254740993}}, 422, "invalid_payload", "payload"),
        # Refused where input enters, before the sink (khala_project/storable_text.py).
        ({"payload": {"s": "\u0000"}}, 400, "unstorable_text", "body.payload.s"),
        ({"extra": 1}, 400, "invalid_document", None),
    ],
)
def test_bad_fields(overrides, status, code, field):
    response = call(doc(**overrides))
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (status, code)
    if field:
        assert error["field"] == field
    assert nothing_written()


def test_a_list_with_one_bad_document_writes_nothing():
    response = call([doc(doc_key="ok1"), doc(doc_key="ok2"), doc(doc_key="bad", doc_version=-1), doc(doc_key="ok3")])
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["index"]) == (422, "invalid_doc_version", 2)
    assert nothing_written()


def test_a_list_with_an_unknown_topic_writes_nothing():
    response = call([doc(doc_key="ok1"), doc(topic="runtime.nope")])
    assert (response.status_code, response.json()["error"]["code"], response.json()["error"]["index"]) == (
        422, "unknown_topic", 1,
    )
    assert nothing_written()


@override_settings(KHALA={"SERVICE_TOKEN": TOKEN, "MAX_PAYLOAD_BYTES": 1000})
def test_huge_payload_is_refused():
    response = call(doc(payload={"x": "y" * 5000}))
    assert (response.status_code, response.json()["error"]["code"]) == (413, "payload_too_large")
    assert nothing_written()


@override_settings(KHALA={"SERVICE_TOKEN": TOKEN, "INGEST_MAX_BODY_BYTES": 2000})
def test_huge_body_is_refused_before_parsing():
    response = call(doc(payload={"x": "y" * 5000}))
    assert (response.status_code, response.json()["error"]["code"]) == (413, "request_too_large")
    assert nothing_written()


def test_default_limits_accept_a_large_pointer_payload_and_refuse_a_huge_one():
    big = call(doc(payload={"x": "y" * (300 * 1024)}))  # over the 256 KiB inline limit
    assert big.status_code == 200 and big.json()["results"][0]["hydration_required"] is True
    huge = call(doc(doc_key="huge", payload={"x": "y" * (5 * 1024 * 1024)}))  # over MAX_PAYLOAD_BYTES
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "payload_too_large")


@override_settings(KHALA={"SERVICE_TOKEN": TOKEN, "INGEST_MAX_DOCUMENTS": 3})
def test_too_many_documents():
    response = call([doc(doc_key=f"k{i}") for i in range(4)])
    assert (response.status_code, response.json()["error"]["code"]) == (413, "too_many_documents")
    assert nothing_written()


def test_wrong_content_type():
    response = call(None, raw=json.dumps(doc()), content_type="text/plain")
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")


def nested_body(depth: int) -> str:
    payload = '{"n":' * depth + "{}" + "}" * depth
    return json.dumps(doc(payload={})).replace('"payload": {}', f'"payload": {payload}')


def test_deeply_nested_payload_is_refused_cleanly():
    response = call(None, raw=nested_body(5000))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "malformed_json")
    assert nothing_written()


def test_moderately_nested_payload_is_accepted():
    response = call(None, raw=nested_body(400))
    assert response.status_code == 200, response.content
    assert ReadModelDocument.objects.get(doc_key="ext/doc:1").doc_version == 1


def test_get_is_not_allowed():
    response = APIClient().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")

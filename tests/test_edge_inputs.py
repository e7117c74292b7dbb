"""Edge inputs at the HTTP boundary: text PostgreSQL cannot store, numbers JSON cannot carry
exactly, and strings that only look like numbers or ids. Each gets a stable code and a 4xx, never a
500, and nothing is written. Real PostgreSQL (the embedded default hides NUL failures)."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.db import DataError, connection, transaction
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from khala_project.storable_text import find_unstorable
from projector.models import ReadModelDocument, StreamEvent
from projector.topics import ensure_v1_topics
from runtime.models import Run, RunEvent
from sync.protocol import ProtocolError, parse_watermark
from tokens.issuer import ID_PATTERN
from tokens.keyring import KID_PATTERN
from tokens.revocation import REASON_PATTERN

pytestmark = pytest.mark.django_db

SERVICE_TOKEN = "edge-inputs-service-token"


@pytest.fixture
def user_client(db):
    ensure_v1_topics()
    user = get_user_model().objects.create_user(username="edge", password="pw-edge")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# --- NUL and lone surrogates: refused where they enter -----------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/sync/v1/doc/runtime.run_summaries/run%00x",  # doc key segment
        "/api/sync/v1/doc/runtime%00.run_summaries/k",  # topic segment
        "/api/sync/v1/list/runtime.run_summaries?cursor=ab%00cd",  # list cursor
        "/api/sync/v1/list/runtime.run_summaries?cur%00sor=x",  # a parameter's name
        "/api/runtime/runs/run%00id",  # the command API's run id
        "/api/runtime/runs/run%00id/events",
    ],
)
def test_nul_in_path_or_query_is_refused_before_any_view(user_client, path):
    response = user_client.get(path)
    assert error_of(response) == (400, "unstorable_text")
    assert "NUL" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"text": "a\u0000b"}, "body.payload.text"),
        ({"k\u0000": 1}, "body.payload (a key)"),
        ({"list": ["ok", "\ud800"]}, "body.payload.list[1]"),
    ],
)
def test_unstorable_text_in_an_event_payload_is_refused_and_nothing_is_written(user_client, payload, where):
    run_id = user_client.post("/api/runtime/runs", {}, format="json").json()["id"]
    events_before = RunEvent.objects.count()
    # json.dumps escapes NUL and lone surrogates as \u0000 / \ud800, exactly what a client sends.
    body = json.dumps({"event_type": "run.delta", "payload": payload})
    response = user_client.generic("POST", f"/api/runtime/runs/{run_id}/events", body, content_type="application/json")
    assert error_of(response) == (400, "unstorable_text")
    assert response.json()["error"]["field"] == where
    assert RunEvent.objects.count() == events_before
    assert Run.objects.get(id=run_id).latest_seq == 0


def ingest(raw: str, settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SERVICE_TOKEN": SERVICE_TOKEN}
    ensure_v1_topics()
    return APIClient().generic(
        "POST", "/api/internal/sync/projections", raw, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}",
    )


def document(payload_json: str, doc_key: str = "edge/doc") -> str:
    return (
        '{"topic": "runtime.run_summaries", "doc_key": "%s", "doc_version": 1, "owner": "user:1", "payload": %s}'
        % (doc_key, payload_json)
    )


@pytest.mark.parametrize(
    "payload_json, code",
    [
        ('{"a": "x\\u0000y"}', "unstorable_text"),
        ('{"a\\u0000": 1}', "unstorable_text"),
        # The ingest parser (orjson) already refuses an escaped lone surrogate as invalid JSON.
        ('{"a": "\\udc00"}', "malformed_json"),
    ],
)
def test_ingest_refuses_unstorable_text(settings, payload_json, code):
    response = ingest(document(payload_json), settings)
    assert error_of(response) == (400, code)
    assert not StreamEvent.objects.exists() and not ReadModelDocument.objects.exists()


def test_ingest_refuses_a_nul_in_the_doc_key(settings):
    response = ingest(document("{}", doc_key="a\\u0000b"), settings)
    assert error_of(response) == (400, "unstorable_text")
    assert response.json()["error"]["field"] == "body.doc_key"


# --- numbers: exact or refused ------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        "18446744073709551616",  # 2**64: orjson alone would have made it 1.8446744073709552e+19
        "100000000000000000000000",  # 1e23 as an integer literal: would pass as the float 1e+23
        "-9223372036854775809",
        "9007199254740992",  # 2**53: representable, but not safely by every JSON reader
    ],
)
def test_ingest_refuses_unsafe_integers_instead_of_storing_a_lossy_float(settings, literal):
    response = ingest(document('{"n": %s}' % literal), settings)
    assert error_of(response) == (422, "invalid_payload")
    assert "integer outside" in response.json()["error"]["message"]
    assert not StreamEvent.objects.exists()


def test_ingest_keeps_real_floats_and_safe_integers(settings):
    response = ingest(document('{"f": 1.5, "n": 9007199254740991}'), settings)
    assert response.status_code == 200, response.content
    assert ReadModelDocument.objects.get().payload == {"f": 1.5, "n": 9007199254740991}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_ingest_refuses_non_json_numbers(settings, literal):
    response = ingest(document('{"f": 0.5, "x": %s}' % literal), settings)
    assert error_of(response) == (400, "malformed_json")
    assert not StreamEvent.objects.exists()


# --- strings that only look like numbers or ids -------------------------------------------------


@pytest.mark.parametrize("text", ["5\n", "5\r\n", " 5", "5 ", "+5", "٥"])
def test_a_watermark_string_must_be_only_ascii_digits(text):
    with pytest.raises(ProtocolError) as info:
        parse_watermark(text, "resume_after")
    assert info.value.code == "bad_subscription"


@pytest.mark.parametrize("pattern", [ID_PATTERN, KID_PATTERN, REASON_PATTERN], ids=["id", "kid", "reason"])
def test_id_patterns_refuse_a_trailing_newline(pattern):
    # ``$`` also matches before a final newline; every id pattern anchors with ``\Z``.
    assert pattern.match("abc") and not pattern.match("abc\n")


# --- the validator itself -----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


def postgres_stores(value) -> bool:
    """The oracle: does PostgreSQL accept this value as jsonb? (ASCII-escaped JSON, as a client sends.)"""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT %s::jsonb", [json.dumps(value)])
        return True
    except DataError:
        return False


@given(_json)
def test_find_unstorable_agrees_with_what_postgres_can_store(value):
    assert (find_unstorable(value) is None) == postgres_stores(value)

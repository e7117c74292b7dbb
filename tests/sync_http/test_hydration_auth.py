"""Hydration authentication and topic entitlement: every verifier reason surfaces as a 401 code."""

import time

import pytest

from projector.models import CODEX_WORKER_EVENTS, RUN_SUMMARIES
from projector.sink import project

from tests.support.tokens import sync_claims

from .conftest import OTHER_SECRET, encode

DOC = f"/api/sync/v1/doc/{RUN_SUMMARIES}/run:1"
LIST = f"/api/sync/v1/list/{RUN_SUMMARIES}"


@pytest.fixture
def doc(topics):
    project(RUN_SUMMARIES, "run:1", 1, {"v": 1}, "user:1")


def _assert_401(response, code):
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == code, response.content
    assert response["Cache-Control"] == "no-store"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("url", [DOC, LIST])
def test_missing_authorization_header_is_missing_token(doc, signing_key, api, url):
    _assert_401(api().get(url), "missing_token")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc"])
def test_wrong_authorization_scheme_is_invalid_token_format(doc, signing_key, api, header):
    client = api()
    client.credentials(HTTP_AUTHORIZATION=header)
    _assert_401(client.get(DOC), "invalid_token_format")


def _now():
    return int(time.time())


# Each case: (expected verifier reason, token factory). The factories build on the valid claim set
# and change exactly one thing.
BAD_TOKENS = {
    "invalid_token_format": lambda: "not-a-jwt",
    "unsupported_alg": lambda: encode(sync_claims(1, [RUN_SUMMARIES]), alg="HS512"),
    "missing_kid": lambda: encode(sync_claims(1, [RUN_SUMMARIES]), kid=None),
    "unknown_kid": lambda: encode(sync_claims(1, [RUN_SUMMARIES]), kid="nobody-k9"),
    "invalid_signature": lambda: encode(sync_claims(1, [RUN_SUMMARIES]), secret=OTHER_SECRET),
    "invalid_claims": lambda: encode(sync_claims(1, [RUN_SUMMARIES], sub="")),
    "token_expired": lambda: encode(sync_claims(1, [RUN_SUMMARIES], now=_now() - 1000, ttl=300)),
    "token_not_yet_valid": lambda: encode(sync_claims(1, [RUN_SUMMARIES], now=_now() + 600)),
    "claim_mismatch": lambda: encode(sync_claims(1, [RUN_SUMMARIES], aud="someone-else")),
}


@pytest.mark.parametrize("reason", sorted(BAD_TOKENS))
@pytest.mark.parametrize("url", [DOC, LIST])
def test_each_verifier_reason_surfaces_as_the_401_code(doc, signing_key, api, reason, url):
    _assert_401(api(BAD_TOKENS[reason]()).get(url), reason)


def test_revoked_session_is_reauth_required(doc, mint, api):
    from tokens.revocation import revoke

    token = mint(1, oa_session_id="sess_revoked_1")
    assert api(token).get(DOC).status_code == 200
    revoke(["sess_revoked_1"], None, "user_requested")
    response = api(token).get(DOC)
    _assert_401(response, "reauth_required")
    assert response.json()["error"]["reauth_required"] is True


def test_unknown_topic_is_404(doc, mint, api):
    for url in ("/api/sync/v1/doc/runtime.nope/run:1", "/api/sync/v1/list/runtime.nope"):
        response = api(mint(1)).get(url)
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] == "unknown_topic"
        assert response["Cache-Control"] == "no-store"


def test_topic_outside_the_tokens_scopes_is_forbidden(doc, mint, api):
    token = mint(1, scopes=[CODEX_WORKER_EVENTS])
    for url in (DOC, LIST):
        response = api(token).get(url)
        assert response.status_code == 403, response.content
        body = response.json()["error"]
        assert body["code"] == "forbidden_topic"
        assert body["forbidden_topics"] == [RUN_SUMMARIES]
        assert response["Cache-Control"] == "no-store"
    # The same token may read the topic it was granted.
    assert api(token).get(f"/api/sync/v1/list/{CODEX_WORKER_EVENTS}").status_code == 200


def test_auth_is_checked_before_topic_existence(doc, signing_key, api):
    """An unauthenticated caller learns nothing about which topics exist."""
    _assert_401(api().get("/api/sync/v1/list/runtime.nope"), "missing_token")

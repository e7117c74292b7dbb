"""POST /api/sync/token and the legacy POST /api/khala/token, through HTTP."""

import datetime as dt

import jwt
import pytest
from rest_framework.test import APIClient

from tests.tokens.crafting import NOW, SECRET_A
from tokens import issuer
from tokens.verifier import TokenRejected, verify_sync_token

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("khala_settings")]

SYNC = "/api/sync/token"
LEGACY = "/api/khala/token"


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(issuer, "clock", lambda: NOW + 0.75)
    return NOW


def post(client, url, body=None):
    return client.post(url, body if body is not None else {}, format="json")


def error_of(response):
    return response.json()["error"]["code"]


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SYNC, LEGACY])
def test_unauthenticated_is_401(url):
    response = post(APIClient(), url)
    assert response.status_code == 401
    assert error_of(response) == "unauthenticated"


@pytest.mark.parametrize("url", [SYNC, LEGACY])
def test_bad_api_token_is_401(url):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert post(client, url).status_code == 401


def test_inactive_user_is_401(api_client, user):
    user.is_active = False
    user.save()
    assert post(api_client, SYNC).status_code == 401


def test_session_authentication_works(user):
    client = APIClient()
    client.force_login(user)
    response = post(client, SYNC)
    assert response.status_code == 200, response.content
    assert response.json()["data"]["subject"] == f"user:{user.pk}"


def test_session_authentication_enforces_csrf(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = post(client, SYNC)
    assert response.status_code == 403
    assert error_of(response) == "forbidden"


# --- the happy path: claims and TTL exactness --------------------------------------------------


def test_response_and_claims_are_exact(api_client, user, frozen):
    response = post(api_client, SYNC)
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    data = response.json()["data"]
    token = data.pop("token")
    session_id = data.pop("session_id")
    assert data == {
        "token_type": "Bearer",
        "expires_in": 300,
        "issued_at": "2027-01-15T08:00:00Z",
        "expires_at": "2027-01-15T08:05:00Z",
        "issuer": "khala",
        "audience": "openagents-sync",
        "subject": f"user:{user.pk}",
        "org_id": f"user:{user.pk}",
        "claims_version": "oa_sync_claims_v1",
        "scopes": ["runtime.codex_worker_summaries"],
        "kid": "kid-a",
        "device_id": "device:unknown",
    }
    assert dt.datetime.fromtimestamp(NOW, dt.timezone.utc).isoformat().startswith("2027-01-15T08:00:00")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": "kid-a"}
    claims = jwt.decode(token, SECRET_A, algorithms=["HS256"], audience="openagents-sync", options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    jti = claims.pop("jti")
    assert len(jti) == 24 and int(jti, 16) >= 0
    assert session_id.startswith("sess_") and len(session_id) == 37
    assert claims == {
        "iss": "khala",
        "aud": "openagents-sync",
        "sub": f"user:{user.pk}",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "oa_user_id": user.pk,
        "oa_org_id": f"user:{user.pk}",
        "oa_sync_scopes": ["runtime.codex_worker_summaries"],
        "oa_claims_version": "oa_sync_claims_v1",
        "oa_session_id": session_id,
        "oa_device_id": "device:unknown",
    }


def test_minted_token_passes_the_verifier(api_client, user, frozen):
    data = post(api_client, SYNC, {"scopes": ["runtime.run_summaries"], "device_id": "ios:ab12"}).json()["data"]
    principal = verify_sync_token(data["token"], now=NOW + 1)
    assert principal.user_id == user.pk
    assert principal.allowed_topics == ("runtime.run_summaries",)
    assert principal.session_id == data["session_id"]
    assert principal.device_id == "ios:ab12"
    with pytest.raises(TokenRejected) as info:
        verify_sync_token(data["token"], now=NOW + 300)
    assert info.value.reason == "token_expired"


@pytest.mark.parametrize("ttl", [60, 61, 899, 900])
def test_requested_ttl_is_exact(api_client, frozen, ttl):
    data = post(api_client, SYNC, {"ttl_seconds": ttl}).json()["data"]
    claims = jwt.decode(data["token"], options={"verify_signature": False})
    assert data["expires_in"] == ttl
    assert claims["exp"] - claims["iat"] == ttl
    assert claims["iat"] == NOW


def test_both_endpoints_continue_a_given_session_for_sync_refresh(api_client):
    """A ``sync:refresh`` token must carry the socket's session: both endpoints take ``session_id``."""
    sync = post(api_client, SYNC, {"session_id": "sess_keep"}).json()["data"]
    legacy = post(api_client, LEGACY, {"session_id": "sess_keep"}).json()
    decode = lambda d: jwt.decode(d["token"], options={"verify_signature": False})  # noqa: E731
    assert sync["session_id"] == legacy["session_id"] == "sess_keep"
    assert decode(sync)["oa_session_id"] == decode(legacy)["oa_session_id"] == "sess_keep"
    assert post(api_client, SYNC, {"session_id": "bad id!"}).status_code == 400


def test_each_mint_is_a_fresh_session_and_jti(api_client):
    first, second = (post(api_client, SYNC).json()["data"] for _ in range(2))
    assert first["session_id"] != second["session_id"]
    decode = lambda d: jwt.decode(d["token"], options={"verify_signature": False})  # noqa: E731
    assert decode(first)["jti"] != decode(second)["jti"]


def test_requested_scopes_are_trimmed_and_deduplicated(api_client):
    body = {"scopes": [" runtime.notifications", "runtime.run_summaries", "runtime.notifications "]}
    assert post(api_client, SYNC, body).json()["data"]["scopes"] == ["runtime.notifications", "runtime.run_summaries"]


def test_empty_scope_list_means_defaults(api_client):
    assert post(api_client, SYNC, {"scopes": []}).json()["data"]["scopes"] == ["runtime.codex_worker_summaries"]


def test_signs_with_the_current_key(api_client, khala_settings):
    khala_settings(SIGNING_KEYS=f"kid-b:{'b' * 40},kid-a:{SECRET_A}")
    assert post(api_client, SYNC).json()["data"]["kid"] == "kid-b"


# --- 422 / 400 ------------------------------------------------------------------------------


@pytest.mark.parametrize("scopes", [["runtime.secret_topic"], ["runtime.run_summaries", "nope"]])
def test_unknown_scope_is_422(api_client, scopes):
    response = post(api_client, SYNC, {"scopes": scopes})
    assert (response.status_code, error_of(response)) == (422, "invalid_scope")
    assert "not allowed" in response.json()["error"]["message"]


@pytest.mark.parametrize("scopes", [["x" * 121], [" "], [""]])
def test_blank_or_overlong_scope_is_400(api_client, scopes):
    response = post(api_client, SYNC, {"scopes": scopes})
    assert (response.status_code, error_of(response)) == (400, "invalid_request")


@pytest.mark.parametrize("ttl", [59, 901, 0, -5, 10**12])
def test_ttl_out_of_range_is_422(api_client, ttl):
    response = post(api_client, SYNC, {"ttl_seconds": ttl})
    assert (response.status_code, error_of(response)) == (422, "invalid_ttl")


@pytest.mark.parametrize(
    "body",
    [
        {"ttl_seconds": "300"},
        {"ttl_seconds": 300.5},
        {"ttl_seconds": True},
        {"scopes": "runtime.run_summaries"},
        {"scopes": [1]},
        {"device_id": "has space"},
        {"device_id": ""},
        {"device_id": "x" * 129},
        {"device_id": 5},
        ["not", "an", "object"],
    ],
    ids=repr,
)
def test_malformed_body_is_400(api_client, body):
    response = post(api_client, SYNC, body)
    assert (response.status_code, error_of(response)) == (400, "invalid_request")


def test_non_json_body_is_400(api_client):
    response = api_client.post(SYNC, "{nope", content_type="application/json")
    assert (response.status_code, error_of(response)) == (400, "malformed_json")


# --- 503: misconfiguration never becomes a 500 ------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"SIGNING_KEYS": ""},
        {"SIGNING_KEYS": "kid-a:short"},
        {"SIGNING_KEYS": f"kid-a:{SECRET_A},kid-a:{SECRET_A}"},
        {"SIGNING_KEYS": "", "SIGNING_KEYS_FILE": "/nonexistent/khala-keys"},
        {"TOKEN_TTL_MIN_SECONDS": 600},
        {"TOKEN_TTL_MAX_SECONDS": 100},
        {"TOKEN_TTL_SECONDS": "300"},
        {"TOKEN_ISSUER": ""},
        {"TOKEN_ALLOWED_SCOPES": []},
        {"TOKEN_DEFAULT_SCOPES": ["runtime.not_allowed"]},
    ],
    ids=repr,
)
@pytest.mark.parametrize("url,code", [(SYNC, "sync_token_unavailable"), (LEGACY, "khala_token_unavailable")])
def test_misconfiguration_is_503(api_client, khala_settings, overrides, url, code):
    khala_settings(**overrides)
    response = post(api_client, url)
    assert (response.status_code, error_of(response)) == (503, code)
    assert "secret-of-key" not in response.content.decode()


def test_keys_file_is_used_when_the_setting_is_empty(api_client, khala_settings, tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"kid-file:{'f' * 40}\n")
    khala_settings(SIGNING_KEYS="", SIGNING_KEYS_FILE=str(path))
    data = post(api_client, SYNC).json()["data"]
    assert data["kid"] == "kid-file"
    assert verify_sync_token(data["token"]).kid == "kid-file"


# --- legacy /api/khala/token ----------------------------------------------------------------


def test_legacy_flat_response_and_socket_accepts_it(api_client, user, frozen):
    body = {"scope": ["runtime.run_summaries"], "workspace_id": "ws_42", "role": "admin"}
    response = post(api_client, LEGACY, body)
    assert response.status_code == 200, response.content
    data = response.json()
    assert "data" not in data
    assert {k: data[k] for k in ("token_type", "expires_in", "issuer", "audience", "subject", "claims_version")} == {
        "token_type": "Bearer",
        "expires_in": 300,
        "issuer": "khala",
        "audience": "openagents-sync",
        "subject": f"user:{user.pk}",
        "claims_version": "oa_sync_claims_v1",
    }
    assert (data["scope"], data["workspace_id"], data["role"]) == (["runtime.run_summaries"], "ws_42", "admin")
    assert data["issued_at"] == "2027-01-15T08:00:00Z" and data["expires_at"] == "2027-01-15T08:05:00Z"
    principal = verify_sync_token(data["token"], now=NOW)
    assert principal.allowed_topics == ("runtime.run_summaries",)
    # workspace/role are carried, but tenancy stays per user: they grant nothing.
    assert principal.org_id == f"user:{user.pk}"
    assert (principal.claims["oa_workspace_id"], principal.claims["oa_role"]) == ("ws_42", "admin")
    assert principal.kid == data["kid"] == "kid-a"


def test_legacy_defaults(api_client):
    data = post(api_client, LEGACY).json()
    assert (data["scope"], data["workspace_id"], data["role"]) == (["runtime.codex_worker_summaries"], None, "member")
    assert verify_sync_token(data["token"]).scopes == ("runtime.codex_worker_summaries",)


def test_legacy_refresh_reissues_fresh_times(api_client, monkeypatch):
    monkeypatch.setattr(issuer, "clock", lambda: NOW)
    first = post(api_client, LEGACY).json()
    monkeypatch.setattr(issuer, "clock", lambda: NOW + 120)
    second = post(api_client, LEGACY).json()
    assert (first["issued_at"], second["issued_at"]) == ("2027-01-15T08:00:00Z", "2027-01-15T08:02:00Z")
    assert first["token"] != second["token"]


def test_legacy_unknown_scope_is_422(api_client):
    response = post(api_client, LEGACY, {"scope": ["runtime.secret"]})
    assert (response.status_code, error_of(response)) == (422, "invalid_scope")


@pytest.mark.parametrize("body", [{"role": "superuser"}, {"workspace_id": "has space"}, {"scope": "x"}], ids=repr)
def test_legacy_malformed_is_400(api_client, body):
    response = post(api_client, LEGACY, body)
    assert (response.status_code, error_of(response)) == (400, "invalid_request")


# --- library --------------------------------------------------------------------------------


def test_mint_library_call_with_explicit_now(user):
    data = issuer.mint_sync_token(user, ttl_seconds=120, now=NOW)
    assert data["expires_in"] == 120
    assert verify_sync_token(data["token"], now=NOW + 119).expires_at == NOW + 120


def test_mint_library_can_continue_a_session(user):
    data = issuer.mint_sync_token(user, session_id="sess_continued", now=NOW)
    assert verify_sync_token(data["token"], now=NOW).session_id == "sess_continued"

"""Every verifier reason code, each provoked by a crafted token (tokens.verifier)."""

import jwt
import pytest
from prometheus_client import REGISTRY

from tests.tokens.crafting import DROP, NOW, SECRET_A, SECRET_B, b64, craft, valid_claims
from tokens.verifier import MAX_TOKEN_LENGTH, REASONS, SyncPrincipal, TokenRejected, verify_sync_token

pytestmark = pytest.mark.usefixtures("khala_settings")


def rejected(token, now=NOW) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        verify_sync_token(token, now=now)
    assert info.value.reason in REASONS
    assert info.value.message
    return info.value


def test_valid_token_gives_the_principal():
    claims = valid_claims(oa_sync_scopes=["runtime.notifications", "runtime.not_declared", "runtime.notifications"])
    principal = verify_sync_token(craft(claims), now=NOW + 10)
    assert isinstance(principal, SyncPrincipal)
    assert principal.subject == "user:7"
    assert principal.user_id == 7
    assert principal.org_id == "user:7"
    assert principal.scopes == ("runtime.notifications", "runtime.not_declared")
    # scopes ∩ declared topics, de-duplicated, in token order.
    assert principal.allowed_topics == ("runtime.notifications",)
    assert principal.session_id == "sess_test"
    assert principal.device_id == "device:test"
    assert principal.kid == "kid-a"
    assert principal.expires_at == NOW + 300
    assert principal.claims == claims
    hash(principal)  # frozen and hashable despite the claims dict


def test_scopes_as_comma_separated_string_are_accepted():
    token = craft(valid_claims(oa_sync_scopes=" runtime.run_summaries, runtime.codex_worker_events ,,"))
    assert verify_sync_token(token, now=NOW).allowed_topics == (
        "runtime.run_summaries",
        "runtime.codex_worker_events",
    )


def test_declared_topics_come_from_settings(khala_settings):
    khala_settings(DECLARED_TOPICS=["runtime.run_summaries"])
    assert verify_sync_token(craft(valid_claims()), now=NOW).allowed_topics == ("runtime.run_summaries",)


def test_a_token_signed_by_the_verify_only_key_verifies():
    token = craft(valid_claims(), header={"alg": "HS256", "kid": "kid-b"}, secret=SECRET_B)
    assert verify_sync_token(token, now=NOW).kid == "kid-b"


def test_token_minted_by_pyjwt_verifies():
    token = jwt.encode(valid_claims(), SECRET_A, algorithm="HS256", headers={"kid": "kid-a"})
    assert verify_sync_token(token, now=NOW).subject == "user:7"


# --- missing_token / invalid_token_format ------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_token(token):
    assert rejected(token).reason == "missing_token"


def _segments(header: bytes, payload: bytes, secret=SECRET_A) -> str:
    import hashlib
    import hmac

    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    return f"{signing_input.decode()}.{b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())}"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",  # two segments
        "a.b.c.d",
        "..",
        "!!!.e30.c2ln",  # not base64url
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln=====",  # bad padding
        b64(b"not json") + ".e30.c2ln",
        b64(b"[1, 2]") + ".e30.c2ln",  # header is not an object
        "x" * (MAX_TOKEN_LENGTH + 1),
        b"bytes.are.refused",
        12345,
    ],
    ids=lambda t: repr(t)[:30],
)
def test_invalid_token_format(token):
    assert rejected(token).reason == "invalid_token_format"


def test_signed_payload_that_is_not_json_is_invalid_format():
    token = _segments(b'{"alg":"HS256","kid":"kid-a"}', b"not json at all")
    assert rejected(token).reason == "invalid_token_format"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "kid": "kid-a", "crit": ["exp"]},
        {"alg": "HS256", "kid": "kid-a", "b64": False, "crit": ["b64"]},
        {"alg": "HS256", "kid": "kid-a", "b64": False},
    ],
    ids=repr,
)
def test_critical_and_unencoded_payload_headers_are_refused(header):
    assert rejected(craft(valid_claims(), header=header)).reason == "invalid_token_format"


def test_non_string_kid_is_invalid_format():
    assert rejected(craft(valid_claims(), header={"alg": "HS256", "kid": 42})).reason == "invalid_token_format"


# --- unsupported_alg ------------------------------------------------------------------------------


def test_alg_none_is_refused():
    token = craft(valid_claims(), header={"alg": "none", "kid": "kid-a"}, signature="")
    assert rejected(token).reason == "unsupported_alg"


def test_alg_none_with_a_signature_is_refused():
    token = craft(valid_claims(), header={"alg": "none", "kid": "kid-a"})
    assert rejected(token).reason == "unsupported_alg"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs384_signed_with_the_right_secret_is_refused():
    token = jwt.encode(valid_claims(), SECRET_A, algorithm="HS384", headers={"kid": "kid-a"})
    assert rejected(token).reason == "unsupported_alg"


def test_rs256_header_over_an_hmac_signature_is_refused():
    # The classic HS/RS confusion: an "RS256" token MACed with a secret the verifier might treat as a key.
    token = craft(valid_claims(), header={"alg": "RS256", "kid": "kid-a"})
    assert rejected(token).reason == "unsupported_alg"


@pytest.mark.parametrize("header", [{"kid": "kid-a"}, {"alg": 256, "kid": "kid-a"}, {"alg": "", "kid": "kid-a"}])
def test_missing_or_mistyped_alg_is_refused(header):
    assert rejected(craft(valid_claims(), header=header)).reason == "unsupported_alg"


# --- missing_kid / unknown_kid / invalid_signature ---------------------------------------------


@pytest.mark.parametrize("header", [{"alg": "HS256"}, {"alg": "HS256", "kid": ""}])
def test_missing_kid(header):
    assert rejected(craft(valid_claims(), header=header)).reason == "missing_kid"


def test_unknown_kid():
    token = craft(valid_claims(), header={"alg": "HS256", "kid": "kid-retired"})
    assert rejected(token).reason == "unknown_kid"


def test_no_configured_keys_rejects_as_unknown_kid(khala_settings):
    khala_settings(SIGNING_KEYS="")
    assert rejected(craft(valid_claims())).reason == "unknown_kid"


def test_signed_with_another_kids_secret_under_this_kid():
    token = craft(valid_claims(), header={"alg": "HS256", "kid": "kid-a"}, secret=SECRET_B)
    assert rejected(token).reason == "invalid_signature"


def test_kid_swapped_to_the_public_name_of_another_key():
    # Signed with kid-a's secret but claiming to be kid-b: verified with kid-b's secret, so it fails.
    token = craft(valid_claims(), header={"alg": "HS256", "kid": "kid-b"}, secret=SECRET_A)
    assert rejected(token).reason == "invalid_signature"


def test_tampered_claims_break_the_signature():
    head, _, signature = craft(valid_claims()).split(".")
    forged = b64(__import__("json").dumps(valid_claims(sub="user:1")).encode())
    assert rejected(f"{head}.{forged}.{signature}").reason == "invalid_signature"


def test_truncated_signature():
    assert rejected(craft(valid_claims())[:-4]).reason == "invalid_signature"


# --- invalid_claims ---------------------------------------------------------------------------------


REQUIRED = ["iat", "exp", "sub", "jti", "oa_org_id", "oa_session_id", "oa_device_id", "oa_user_id", "oa_sync_scopes"]


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_claim_is_required(name):
    error = rejected(craft(valid_claims(**{name: DROP})))
    assert (error.reason, error.claim) == ("invalid_claims", name)


@pytest.mark.parametrize(
    "changes",
    [
        {"iat": "1800000000"},
        {"iat": 1800000000.5},
        {"exp": True},
        {"nbf": "soon"},
        {"oa_user_id": "7"},
        {"oa_user_id": False},
        {"sub": ""},
        {"sub": "   "},
        {"jti": 5},
        {"oa_org_id": None},
        {"oa_session_id": ["s"]},
        {"oa_sync_scopes": 3},
        {"oa_sync_scopes": ["ok", 3]},
        {"oa_sync_scopes": []},
        {"oa_sync_scopes": " , "},
        {"aud": 5},
        {"aud": ["openagents-sync", 5]},
        {"iss": None},
        {"oa_claims_version": 1},
    ],
    ids=lambda c: repr(c),
)
def test_mistyped_claims(changes):
    assert rejected(craft(valid_claims(**changes))).reason == "invalid_claims"


@pytest.mark.parametrize("exp_offset", [0, -1])
def test_exp_not_after_iat_is_invalid(exp_offset):
    error = rejected(craft(valid_claims(exp=NOW + exp_offset)), now=NOW - 100)
    assert (error.reason, error.claim) == ("invalid_claims", "exp")


def test_claims_that_are_not_an_object():
    assert rejected(craft([1, 2, 3])).reason == "invalid_claims"


# --- claim_mismatch -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,claim",
    [
        ({"iss": "someone-else"}, "iss"),
        ({"aud": "another-audience"}, "aud"),
        ({"aud": ["another-audience"]}, "aud"),
        ({"oa_claims_version": "oa_khala_claims_v1"}, "oa_claims_version"),
    ],
)
def test_claim_mismatch_names_the_claim(changes, claim):
    error = rejected(craft(valid_claims(**changes)))
    assert (error.reason, error.claim) == ("claim_mismatch", claim)


def test_audience_list_containing_ours_is_accepted():
    token = craft(valid_claims(aud=["other", "openagents-sync"]))
    assert verify_sync_token(token, now=NOW).subject == "user:7"


def test_expected_values_follow_settings(khala_settings):
    khala_settings(TOKEN_AUDIENCE="elsewhere")
    assert rejected(craft(valid_claims())).claim == "aud"


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [NOW + 300, NOW + 301, NOW + 10_000])
def test_expired(now):
    assert rejected(craft(valid_claims()), now=now).reason == "token_expired"


def test_last_second_before_exp_is_valid():
    assert verify_sync_token(craft(valid_claims()), now=NOW + 299).expires_at == NOW + 300


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_not_yet_valid_beyond_the_skew(claim):
    claims = valid_claims(**{claim: NOW + 31}, exp=NOW + 600)
    assert rejected(craft(claims), now=NOW).reason == "token_not_yet_valid"


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_within_the_skew_is_valid(claim):
    claims = valid_claims(**{claim: NOW + 30}, exp=NOW + 600)
    assert verify_sync_token(craft(claims), now=NOW).subject == "user:7"


def test_skew_follows_settings(khala_settings):
    khala_settings(TOKEN_CLOCK_SKEW_SECONDS=5)
    assert rejected(craft(valid_claims(nbf=NOW + 6, exp=NOW + 600)), now=NOW).reason == "token_not_yet_valid"


def test_nbf_defaults_to_iat():
    claims = valid_claims(nbf=DROP, iat=NOW + 31, exp=NOW + 600)
    assert rejected(craft(claims), now=NOW).reason == "token_not_yet_valid"


def test_default_clock_is_patchable(monkeypatch):
    from tokens import verifier

    monkeypatch.setattr(verifier, "clock", lambda: NOW + 400)
    assert rejected(craft(valid_claims()), now=None).reason == "token_expired"


# --- metrics ------------------------------------------------------------------------------------


def _count(result, reason):
    return REGISTRY.get_sample_value("khala_token_verifications_total", {"result": result, "reason": reason}) or 0


def test_outcomes_are_counted_by_reason():
    ok, expired = _count("ok", "ok"), _count("rejected", "token_expired")
    verify_sync_token(craft(valid_claims()), now=NOW)
    rejected(craft(valid_claims()), now=NOW + 1000)
    rejected(craft(valid_claims()), now=NOW + 1000)
    assert _count("ok", "ok") == ok + 1
    assert _count("rejected", "token_expired") == expired + 2

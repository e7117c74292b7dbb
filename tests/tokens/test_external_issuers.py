"""Tokens of external issuers (TRUSTED_ISSUERS) verified through their JWKS, served by a local HTTP
server: first fetch, rotation picked up on an unknown kid, a bounded refresh rate under a flood of
made-up kids, no algorithm confusion, outages, and the async verifier's off-loop fetch."""

import asyncio
import secrets

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from django.core.checks import run_checks

from tests.tokens.crafting import craft, valid_claims
from tests.tokens.jwks_server import serve_jwks
from tokens import external_issuers
from tokens import keyring as kr
from tokens.verifier import TokenRejected, averify_sync_token, verify_sync_token
from tests.support.clock import FakeClock

ISSUER = "https://id.example.test"
AUDIENCE = "khala-from-id"
MIN_REFRESH = 30.0



@pytest.fixture
def jwks_server():
    server = serve_jwks()
    yield server
    server.stop()


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(external_issuers, "clock", fake)
    external_issuers.reset_caches()
    yield fake
    external_issuers.reset_caches()


@pytest.fixture
def trusted(khala_settings, jwks_server, clock):
    khala_settings(
        TRUSTED_ISSUERS=[{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_server.url}],
        JWKS_MIN_REFRESH_SECONDS=MIN_REFRESH,
        JWKS_MAX_AGE_SECONDS=300.0,
    )
    return jwks_server


def now():
    import time

    return int(time.time())


def external_token(key, *, kid=None, **claims) -> str:
    body = valid_claims(now=now(), **{"iss": ISSUER, "aud": AUDIENCE, **claims})
    return jwt.encode(body, key.signing_key(), algorithm=key.alg, headers={"kid": kid or key.kid})


def rejection(token) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify_sync_token(token)
    return caught.value.reason


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_an_external_issuers_token_verifies_from_its_jwks(trusted, alg):
    key = kr.generate_key(alg)
    trusted.publish(key.public_jwk())
    principal = verify_sync_token(external_token(key))
    assert principal.kid == key.kid and principal.claims["iss"] == ISSUER
    assert trusted.fetches == 1
    verify_sync_token(external_token(key))
    assert trusted.fetches == 1  # cached


def test_the_issuers_own_audience_is_required(trusted):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    with pytest.raises(TokenRejected) as caught:
        verify_sync_token(external_token(key, aud="openagents-sync"))
    assert caught.value.reason == "claim_mismatch" and caught.value.claim == "aud"


def test_an_untrusted_issuer_is_looked_up_in_our_ring_and_refused(trusted):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    body = valid_claims(now=now(), iss="https://evil.example.test", aud=AUDIENCE)
    token = jwt.encode(body, key.signing_key(), algorithm="EdDSA", headers={"kid": key.kid})
    assert rejection(token) == "unknown_kid"
    assert trusted.fetches == 0


def test_rotation_at_the_issuer_is_picked_up_on_an_unknown_kid(trusted, clock):
    old, new = kr.generate_key("ES256"), kr.generate_key("ES256")
    trusted.publish(old.public_jwk())
    verify_sync_token(external_token(old))
    trusted.publish(new.public_jwk(), old.public_jwk())  # the issuer rotates
    clock.advance(MIN_REFRESH)
    assert verify_sync_token(external_token(new)).kid == new.kid
    assert trusted.fetches == 2
    assert verify_sync_token(external_token(old)).kid == old.kid  # still published: still valid


def test_a_removed_key_stops_verifying_after_max_age(trusted, clock):
    old, new = kr.generate_key("EdDSA"), kr.generate_key("EdDSA")
    trusted.publish(old.public_jwk(), new.public_jwk())
    verify_sync_token(external_token(old))
    trusted.publish(new.public_jwk())
    clock.advance(299)
    assert verify_sync_token(external_token(old)).kid == old.kid  # cache still fresh
    clock.advance(1)
    assert rejection(external_token(old)) == "unknown_kid"


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval(trusted, clock):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    verify_sync_token(external_token(key))
    assert trusted.fetches == 1
    clock.advance(MIN_REFRESH)
    for _ in range(200):
        assert rejection(external_token(key, kid=f"made-up-{secrets.token_hex(4)}")) == "unknown_kid"
    assert trusted.fetches == 2  # one refetch for the whole flood
    clock.advance(MIN_REFRESH - 1)
    for _ in range(50):
        rejection(external_token(key, kid=f"made-up-{secrets.token_hex(4)}"))
    assert trusted.fetches == 2
    clock.advance(1)
    rejection(external_token(key, kid="made-up-again"))
    assert trusted.fetches == 3
    assert verify_sync_token(external_token(key)).kid == key.kid  # the real key is unaffected


def test_an_outage_keeps_known_keys_and_is_not_hammered(trusted, clock):
    key = kr.generate_key("RS256")
    trusted.publish(key.public_jwk())
    verify_sync_token(external_token(key))
    trusted.status = 500
    clock.advance(300)  # stale: a refetch is due, and fails
    assert verify_sync_token(external_token(key)).kid == key.kid
    assert trusted.fetches == 2
    for _ in range(20):
        verify_sync_token(external_token(key))
    assert trusted.fetches == 2  # failed attempts count toward the interval too


def test_rs256_to_hs256_confusion_against_an_external_key_fails(trusted):
    """HMAC over the token with the issuer's PUBLIC key (fetched from its JWKS) as the secret."""
    key = kr.generate_key("RS256")
    trusted.publish(key.public_jwk())
    pem = key.verification_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = craft(valid_claims(now=now(), iss=ISSUER, aud=AUDIENCE),
                   header={"alg": "HS256", "typ": "JWT", "kid": key.kid}, secret=pem.decode())
    assert rejection(forged) == "unsupported_alg"


def test_symmetric_keys_in_a_jwks_are_never_trusted(trusted):
    secret = "s" * 48
    trusted.publish({"kty": "oct", "kid": "shared", "alg": "HS256", "k": jwt.utils.base64url_encode(secret.encode()).decode()},
                    kr.generate_key("EdDSA").public_jwk())
    token = craft(valid_claims(now=now(), iss=ISSUER, aud=AUDIENCE), header={"alg": "HS256", "typ": "JWT", "kid": "shared"},
                  secret=secret)
    assert rejection(token) == "unknown_kid"


def test_alg_none_fails_for_an_external_kid(trusted):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    token = craft(valid_claims(now=now(), iss=ISSUER, aud=AUDIENCE), header={"alg": "none", "kid": key.kid}, signature="")
    assert rejection(token) in {"unsupported_alg", "invalid_token_format"}


def test_an_algorithm_outside_the_issuers_allow_list_is_not_trusted(khala_settings, jwks_server, clock):
    khala_settings(TRUSTED_ISSUERS=[{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_server.url,
                                     "algorithms": ["EdDSA"]}])
    key = kr.generate_key("ES256")
    jwks_server.publish(key.public_jwk())
    assert rejection(external_token(key)) == "unknown_kid"


def test_async_verifier_fetches_off_the_event_loop(trusted, monkeypatch):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    loop_thread = []
    real_fetch = external_issuers.fetch_jwks

    def recording_fetch(url, timeout):
        import threading

        loop_thread.append(threading.current_thread())
        return real_fetch(url, timeout)

    monkeypatch.setattr(external_issuers, "fetch_jwks", recording_fetch)

    async def main():
        import threading

        principal = await averify_sync_token(external_token(key))
        return principal, threading.current_thread()

    principal, main_thread = asyncio.run(main())
    assert principal.kid == key.kid
    assert trusted.fetches == 1 and loop_thread and loop_thread[0] is not main_thread


def test_async_verifier_rejects_like_the_sync_one(trusted):
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())

    async def main():
        with pytest.raises(TokenRejected) as caught:
            await averify_sync_token(external_token(key, kid="nope"))
        return caught.value.reason

    assert asyncio.run(main()) == "unknown_kid"


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("nope", "must be a list"),
        ([{"issuer": ISSUER, "audience": AUDIENCE}], "'jwks_url' must be a non-empty string"),
        ([{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "file:///etc/passwd"}], "http(s) URL"),
        ([{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://x", "algorithms": ["HS256"]}], "not accepted"),
        ([{"issuer": "khala", "audience": AUDIENCE, "jwks_url": "https://x"}], "own TOKEN_ISSUER"),
        ([{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://x", "extra": 1}], "unknown keys"),
    ],
)
def test_a_malformed_setting_is_check_error_e006_and_trusts_nobody(khala_settings, value, fragment):
    khala_settings(TRUSTED_ISSUERS=value)
    errors = [e for e in run_checks() if e.id == "tokens.E006"]
    assert len(errors) == 1 and fragment in errors[0].msg
    assert external_issuers.trusted_issuer(ISSUER) is None


def test_jwks_fetches_are_counted(trusted):
    from tokens.metrics import JWKS_FETCHES

    before = JWKS_FETCHES.labels(issuer=ISSUER, result="ok")._value.get()
    key = kr.generate_key("EdDSA")
    trusted.publish(key.public_jwk())
    verify_sync_token(external_token(key))
    assert JWKS_FETCHES.labels(issuer=ISSUER, result="ok")._value.get() == before + 1


def test_our_own_tokens_are_unaffected_by_trusted_issuers(trusted):
    token = craft(valid_claims(now=now()))
    assert verify_sync_token(token).kid == "kid-a"
    assert trusted.fetches == 0

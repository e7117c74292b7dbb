"""Sync-token verification: the one place that decides whether a token opens the sync lane.

Used by the socket (``sync``) and the HTTP hydration endpoints. The policy, in order:

1. A token is required (``missing_token``) and must be three base64url segments of JSON
   (``invalid_token_format``); tokens longer than ``MAX_TOKEN_LENGTH`` are refused before parsing.
2. The header is read *unverified*, only to classify and to pick a key: ``alg`` must be one of
   ``ALLOWED_ALGORITHMS`` (``unsupported_alg``; ``none`` never is), ``kid`` must be a non-empty
   string (``missing_kid``). The trust domain comes from the unverified ``iss``: an issuer listed
   in ``TRUSTED_ISSUERS`` is looked up in its cached JWKS (``tokens.external_issuers``), anything
   else in OUR keyring; a kid found in neither is ``unknown_kid``. Each key has ONE algorithm and
   it is that key's whole allow-list: a header ``alg`` other than the key's is ``unsupported_alg``
   (so an HS256 token "signed" with an RSA key's public half as the HMAC secret is refused before
   any MAC is computed). The header never chooses the algorithm: PyJWT verifies with
   ``algorithms=[key.alg]`` and that key (``invalid_signature``; MACs compared in constant time).
3. Claims are checked after the signature (``invalid_claims`` for missing/mistyped ones and
   ``exp <= iat``), then ``iss``/``aud``/``oa_claims_version`` against settings
   (an external issuer's own ``iss``/``audience`` instead of ``TOKEN_ISSUER``/``TOKEN_AUDIENCE``)
   (``claim_mismatch``, with ``.claim``), then time: ``exp <= now`` is ``token_expired``;
   ``iat``/``nbf`` more than ``TOKEN_CLOCK_SKEW_SECONDS`` ahead is ``token_not_yet_valid``.

Entitlements: ``allowed_topics`` = the token's scopes ∩ ``DECLARED_TOPICS`` (a setting, so a verify
never touches the database). Document ownership is ``org_id``/``subject``; delivery filters on it.

Every outcome is counted in ``khala_token_verifications_total{result,reason}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import jwt
from jwt.api_jws import PyJWS

from khala_project.conf import khala_setting
from tokens import external_issuers
from tokens.keyring import ALGORITHMS, KeyringMisconfigured, load_keyring
from tokens.metrics import TOKEN_VERIFICATIONS

REASONS = (
    "missing_token",
    "invalid_token_format",
    "unsupported_alg",
    "missing_kid",
    "unknown_kid",
    "invalid_signature",
    "invalid_claims",
    "token_expired",
    "token_not_yet_valid",
    "claim_mismatch",
)

# The union of what any key may have; each key then narrows it to its own one algorithm.
ALLOWED_ALGORITHMS = ALGORITHMS
# Our tokens are ~600 bytes; anything past 8 KiB is not ours and is refused before any decoding.
MAX_TOKEN_LENGTH = 8192

# Used when a caller passes no `now`; tests patch it (or pass `now=`) to drive expiry.
clock = time.time

# enforce_minimum_key_length: the keyring already refuses short secrets; this is a second lock.
_JWS = PyJWS(options={"enforce_minimum_key_length": True})


class TokenRejected(Exception):
    """A token was refused. ``reason`` is a stable code from ``REASONS``; ``message`` is for humans."""

    def __init__(self, reason: str, message: str, *, claim: str | None = None):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.claim = claim


@dataclass(frozen=True)
class SyncPrincipal:
    """Who a verified token speaks for and what it may read."""

    subject: str
    user_id: int
    org_id: str
    scopes: tuple[str, ...]
    allowed_topics: tuple[str, ...]
    session_id: str
    device_id: str
    kid: str
    expires_at: int
    # The verified claims as decoded; excluded from eq/hash so the principal stays hashable.
    claims: dict = field(compare=False, repr=False)

    def without_claims(self) -> SyncPrincipal:
        """This principal with empty ``claims``: the one a socket keeps for its lifetime. Every
        field a session reads is above; the decoded claims (the token's whole JSON, ~2 KiB) are
        read once, at the join, and would otherwise stay in memory as long as the socket."""
        return replace(self, claims=_NO_CLAIMS)


_NO_CLAIMS = MappingProxyType({})  # shared and read-only


# What the verification may do when an external issuer's JWKS is due for a fetch: fetch right here
# (blocking; sync callers), raise _KeysDue so the async caller fetches in a thread, or never fetch.
FETCH_INLINE, FETCH_DEFER, FETCH_NEVER = "inline", "defer", "never"


class _KeysDue(Exception):
    """Internal: an external issuer's JWKS must be fetched before this token can be judged."""

    def __init__(self, keys, kid: str):
        self.keys = keys
        self.kid = kid


def verify_sync_token(token: str | None, *, now: float | None = None) -> SyncPrincipal:
    """Verify ``token`` and return its principal; raise ``TokenRejected`` otherwise.

    May fetch an external issuer's JWKS (blocking, bounded by ``JWKS_FETCH_TIMEOUT_SECONDS``) when the
    token names a kid not yet cached. From an event loop call ``averify_sync_token`` instead.
    """
    return _counted(token, now, FETCH_INLINE)


async def averify_sync_token(token: str | None, *, now: float | None = None) -> SyncPrincipal:
    """``verify_sync_token`` for async callers: a JWKS fetch, if one is due, runs in a worker thread,
    so the event loop never waits on the network. Everything else runs inline (no thread hop)."""
    try:
        return _counted(token, now, FETCH_DEFER)
    except _KeysDue as due:
        await asyncio.to_thread(due.keys.refresh_for, due.kid)
    return _counted(token, now, FETCH_NEVER)  # fetched (or not due any more): judge with what is cached


def _counted(token, now, fetch: str) -> SyncPrincipal:
    try:
        principal = _verify(token, clock() if now is None else now, fetch)
    except TokenRejected as exc:
        TOKEN_VERIFICATIONS.labels(result="rejected", reason=exc.reason).inc()
        raise
    TOKEN_VERIFICATIONS.labels(result="ok", reason="ok").inc()
    return principal


def _verify(token, now: float, fetch: str) -> SyncPrincipal:
    if token is None or (isinstance(token, str) and not token.strip()):
        raise TokenRejected("missing_token", "a sync token is required")
    if not isinstance(token, str):
        raise TokenRejected("invalid_token_format", "the token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("invalid_token_format", f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    segments = token.split(".")
    if len(segments) != 3 or not segments[0] or not segments[1]:
        raise TokenRejected("invalid_token_format", "the token must be three base64url segments (header.claims.signature)")

    header = _unverified_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else type(alg).__name__
        raise TokenRejected(
            "unsupported_alg", f"algorithm {shown!r} is not accepted (allowed: {', '.join(ALLOWED_ALGORITHMS)})"
        )
    kid = header.get("kid")
    if not kid:
        raise TokenRejected("missing_kid", "the token header has no kid")

    # Without TRUSTED_ISSUERS (the default) the claims are not decoded twice.
    external = (
        external_issuers.trusted_issuer(_unverified_issuer(segments[1])) if khala_setting("TRUSTED_ISSUERS") else None
    )
    if external is not None:
        keys = external_issuers.keys_of(external)
        if fetch == FETCH_DEFER and keys.fetch_due(kid):
            raise _KeysDue(keys, kid)
        key = keys.get(kid, allow_fetch=fetch == FETCH_INLINE)
        if key is None:
            raise TokenRejected("unknown_kid", "the token's kid is not in its issuer's published keys")
        expected_issuer, expected_audience = external.issuer, external.audience
    else:
        try:
            keyring = load_keyring()
        except KeyringMisconfigured:
            raise TokenRejected("unknown_kid", "this server has no usable verification keys") from None
        key = keyring.get(kid)
        if key is None:
            raise TokenRejected("unknown_kid", "the token's kid is not in this server's keyring")
        expected_issuer, expected_audience = khala_setting("TOKEN_ISSUER"), khala_setting("TOKEN_AUDIENCE")
    if alg != key.alg:
        # Checked before any signature work: this is where HS256-with-the-RSA-public-key dies.
        raise TokenRejected("unsupported_alg", f"key {key.kid!r} accepts only {key.alg}")

    try:
        payload = _JWS.decode(token, key.verification_key(), algorithms=[key.alg])
    except jwt.InvalidSignatureError:
        raise TokenRejected("invalid_signature", "the token signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise TokenRejected("unsupported_alg", "the token algorithm is not accepted") from None
    except jwt.InvalidTokenError as exc:  # DecodeError and malformed headers
        raise TokenRejected("invalid_token_format", f"the token cannot be decoded: {exc}") from None
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise TokenRejected("invalid_token_format", "the token claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenRejected("invalid_claims", "the token claims must be a JSON object")
    return _principal(claims, kid, now, expected_issuer, expected_audience)


def _unverified_issuer(segment: str):
    """The ``iss`` of the unverified claims, or None: used only to choose whose keys to try (the
    signature check that follows is what makes it true), so any decoding problem means "ours"."""
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        return None
    return claims.get("iss") if isinstance(claims, dict) else None


def _unverified_header(token: str) -> dict:
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise TokenRejected("invalid_token_format", f"the token header cannot be decoded: {exc}") from None


def _invalid(message: str, claim: str) -> TokenRejected:
    return TokenRejected("invalid_claims", message, claim=claim)


def _int_claim(claims: dict, name: str, *, default=None) -> int:
    value = claims.get(name, default)
    # bool is an int subclass; JSON true is not a timestamp or a user id.
    if type(value) is not int:
        raise _invalid(f"claim {name!r} must be an integer", name)
    return value


def _str_claim(claims: dict, name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"claim {name!r} must be a non-empty string", name)
    return value


def _scopes(claims: dict) -> tuple[str, ...]:
    raw = claims.get("oa_sync_scopes")
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = raw
    else:
        raise _invalid("claim 'oa_sync_scopes' must be a list of strings or a comma-separated string", "oa_sync_scopes")
    scopes = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not scopes:
        raise _invalid("claim 'oa_sync_scopes' is empty", "oa_sync_scopes")
    return scopes


def _check_expected(claims: dict, name: str, expected: str) -> None:
    value = claims.get(name)
    if name == "aud" and isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise _invalid("claim 'aud' must be a string or a list of strings", name)
        matches = expected in value
    elif isinstance(value, str):
        matches = value == expected
    else:
        raise _invalid(f"claim {name!r} must be a string", name)
    if not matches:
        raise TokenRejected("claim_mismatch", f"claim {name!r} does not match this server", claim=name)


def _principal(claims: dict, kid: str, now: float, issuer: str, audience: str) -> SyncPrincipal:
    # 1. Shape: every required claim present with its type.
    iat = _int_claim(claims, "iat")
    exp = _int_claim(claims, "exp")
    nbf = _int_claim(claims, "nbf", default=iat)
    subject = _str_claim(claims, "sub")
    _str_claim(claims, "jti")
    org_id = _str_claim(claims, "oa_org_id")
    session_id = _str_claim(claims, "oa_session_id")
    device_id = _str_claim(claims, "oa_device_id")
    user_id = _int_claim(claims, "oa_user_id")
    scopes = _scopes(claims)
    if exp <= iat:
        raise _invalid("claim 'exp' must be after 'iat'", "exp")

    # 2. Is it meant for us?
    _check_expected(claims, "iss", issuer)
    _check_expected(claims, "aud", audience)
    _check_expected(claims, "oa_claims_version", khala_setting("TOKEN_CLAIMS_VERSION"))

    # 3. Time. No leeway on exp (a client refreshes before it); skew only for clocks running ahead.
    if exp <= now:
        raise TokenRejected("token_expired", "the token has expired; mint a new one")
    skew = khala_setting("TOKEN_CLOCK_SKEW_SECONDS")
    if iat > now + skew or nbf > now + skew:
        raise TokenRejected("token_not_yet_valid", "the token is not valid yet (issuer clock ahead?)")

    declared = set(khala_setting("DECLARED_TOPICS"))
    return SyncPrincipal(
        subject=subject,
        user_id=user_id,
        org_id=org_id,
        scopes=scopes,
        allowed_topics=tuple(scope for scope in scopes if scope in declared),
        session_id=session_id,
        device_id=device_id,
        kid=kid,
        expires_at=exp,
        claims=claims,
    )

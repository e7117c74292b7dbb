"""Minting sync tokens for an authenticated user (``/api/sync/token`` and the legacy ``/api/khala/token``).

Both endpoints mint through ``issue_token()``, so a legacy token carries everything the socket
verifier requires (kid from the same keyring, ``oa_org_id``, ``oa_sync_scopes``, the current claims
version, session and device ids). Upstream's legacy tokens lacked those and the socket refused them.

Sessions: a *sync session* is one minted token and every socket opened with it. Each mint starts a
fresh ``oa_session_id`` (``sess_<32 hex>``) unless a caller passes ``session_id`` to continue one.
Revoking a session therefore cuts off that token's sockets (now and at any later join); to keep a
user out beyond that, revoke their device and remove their credential (API token / Django session),
which is what the issuer authenticates. ``oa_device_id`` is the client's own label
(``device:unknown`` when it sends none).

Tenancy: ``oa_org_id`` is ``user:<id>`` (per-user tenancy: a user is their own organisation). The legacy ``workspace_id``
and ``role`` are carried as ``oa_workspace_id``/``oa_role`` but grant nothing: there is no membership
model to check them against, so they never widen what delivery shows.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from dataclasses import dataclass

import jwt

from khala_project.conf import khala_setting
from tokens.keyring import Keyring, KeyringMisconfigured, load_keyring
from tokens.metrics import TOKENS_ISSUED

DEFAULT_DEVICE_ID = "device:unknown"
MAX_SCOPE_LENGTH = 120
# Ids end up in revocation rows and log lines: printable, no spaces, bounded.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}\Z")
LEGACY_ROLES = ("member", "admin", "owner")

# Used when a caller passes no `now`; tests patch it or pass `now=`.
clock = time.time
# Randomness for jti and session ids; tests may replace it.
token_hex = secrets.token_hex


class TokenUnavailable(Exception):
    """Issuing is misconfigured (no key, bad TTL bounds, no scopes): HTTP 503, never a 500."""


class InvalidScope(ValueError):
    """A requested scope is not grantable: HTTP 422 ``invalid_scope``."""


class InvalidTTL(ValueError):
    """The requested TTL is outside ``[TOKEN_TTL_MIN_SECONDS, TOKEN_TTL_MAX_SECONDS]``: HTTP 422 ``invalid_ttl``."""


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audience: str
    claims_version: str
    ttl_seconds: int
    ttl_min_seconds: int
    ttl_max_seconds: int
    default_scopes: tuple[str, ...]
    allowed_scopes: tuple[str, ...]
    keyring: Keyring


def ttl_bounds_problem(default, minimum, maximum) -> str | None:
    """Why the TTL settings are unusable, or None. (Shared with ``tokens.checks``.)"""
    values = {"TOKEN_TTL_SECONDS": default, "TOKEN_TTL_MIN_SECONDS": minimum, "TOKEN_TTL_MAX_SECONDS": maximum}
    for name, value in values.items():
        if type(value) is not int or value <= 0:
            return f"{name} must be a positive integer"
    if not minimum <= default <= maximum:
        return "TTL bounds must satisfy TOKEN_TTL_MIN_SECONDS <= TOKEN_TTL_SECONDS <= TOKEN_TTL_MAX_SECONDS"
    return None


def scopes_problem(default_scopes, allowed_scopes) -> str | None:
    """Why the scope settings are unusable, or None. (Shared with ``tokens.checks``.)"""
    if not allowed_scopes:
        return "TOKEN_ALLOWED_SCOPES is empty: no scope can be granted"
    unknown = [scope for scope in default_scopes or () if scope not in allowed_scopes]
    if unknown:
        return f"TOKEN_DEFAULT_SCOPES contains scopes not in TOKEN_ALLOWED_SCOPES: {', '.join(unknown)}"
    return None


def claims_settings_problem(issuer, audience, claims_version) -> str | None:
    for name, value in (("TOKEN_ISSUER", issuer), ("TOKEN_AUDIENCE", audience), ("TOKEN_CLAIMS_VERSION", claims_version)):
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string"
    return None


def issuer_config() -> IssuerConfig:
    """The settings in force, validated; ``TokenUnavailable`` names the first problem."""
    try:
        keyring = load_keyring()
    except KeyringMisconfigured as exc:
        raise TokenUnavailable(str(exc)) from None
    issuer, audience, version = (
        khala_setting("TOKEN_ISSUER"),
        khala_setting("TOKEN_AUDIENCE"),
        khala_setting("TOKEN_CLAIMS_VERSION"),
    )
    ttl = (khala_setting("TOKEN_TTL_SECONDS"), khala_setting("TOKEN_TTL_MIN_SECONDS"), khala_setting("TOKEN_TTL_MAX_SECONDS"))
    default_scopes = tuple(khala_setting("TOKEN_DEFAULT_SCOPES") or ())
    allowed_scopes = tuple(khala_setting("TOKEN_ALLOWED_SCOPES") or ())
    problem = (
        claims_settings_problem(issuer, audience, version)
        or ttl_bounds_problem(*ttl)
        or scopes_problem(default_scopes, allowed_scopes)
    )
    if problem:
        raise TokenUnavailable(problem)
    return IssuerConfig(
        issuer=issuer,
        audience=audience,
        claims_version=version,
        ttl_seconds=ttl[0],
        ttl_min_seconds=ttl[1],
        ttl_max_seconds=ttl[2],
        default_scopes=default_scopes,
        allowed_scopes=allowed_scopes,
        keyring=keyring,
    )


def resolve_scopes(requested, config: IssuerConfig) -> tuple[str, ...]:
    """Requested scopes (trimmed, de-duplicated) if all are allowed; the defaults when none requested."""
    if not requested:
        return config.default_scopes or config.allowed_scopes
    if isinstance(requested, str) or not all(isinstance(s, str) for s in requested):
        raise InvalidScope("scopes must be a list of strings")
    scopes = tuple(dict.fromkeys(s.strip() for s in requested))
    if any(not s or len(s) > MAX_SCOPE_LENGTH for s in scopes):
        raise InvalidScope(f"every scope must be 1-{MAX_SCOPE_LENGTH} characters")
    unknown = [s for s in scopes if s not in config.allowed_scopes]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:5])
        raise InvalidScope(f"scope(s) not allowed: {shown}; allowed: {', '.join(config.allowed_scopes)}")
    return scopes


def resolve_ttl(ttl_seconds, config: IssuerConfig) -> int:
    if ttl_seconds is None:
        return config.ttl_seconds
    if type(ttl_seconds) is not int:
        raise InvalidTTL("ttl_seconds must be an integer")
    if not config.ttl_min_seconds <= ttl_seconds <= config.ttl_max_seconds:
        raise InvalidTTL(
            f"ttl_seconds must be between {config.ttl_min_seconds} and {config.ttl_max_seconds}"
        )
    return ttl_seconds


def _checked_id(value, name: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ValueError(f"{name} must be 1-128 characters of [A-Za-z0-9._:@/-]")
    return value


def new_session_id() -> str:
    return f"sess_{token_hex(16)}"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    kid: str
    claims: dict
    config: IssuerConfig

    @property
    def issued_at(self) -> str:
        return _iso8601(self.claims["iat"])

    @property
    def expires_at(self) -> str:
        return _iso8601(self.claims["exp"])

    @property
    def expires_in(self) -> int:
        return self.claims["exp"] - self.claims["iat"]


def _iso8601(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def issue_token(
    user,
    *,
    scopes=None,
    ttl_seconds=None,
    device_id=None,
    session_id=None,
    extra_claims: dict | None = None,
    now: float | None = None,
    config: IssuerConfig | None = None,
) -> IssuedToken:
    """Sign a sync token for ``user`` with the current key. Raises the typed errors above."""
    config = config or issuer_config()
    granted = resolve_scopes(scopes, config)
    ttl = resolve_ttl(ttl_seconds, config)
    device_id = DEFAULT_DEVICE_ID if device_id is None else _checked_id(device_id, "device_id")
    session_id = new_session_id() if session_id is None else _checked_id(session_id, "session_id")
    iat = int(clock() if now is None else now)
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": f"user:{user.pk}",
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
        "jti": token_hex(12),
        "oa_user_id": user.pk,
        "oa_org_id": f"user:{user.pk}",
        "oa_sync_scopes": list(granted),
        "oa_claims_version": config.claims_version,
        "oa_session_id": session_id,
        "oa_device_id": device_id,
        **(extra_claims or {}),
    }
    key = config.keyring.current()
    # The key's own algorithm (HS256, EdDSA, ES256 or RS256): the verifier accepts no other for this kid.
    token = jwt.encode(claims, key.signing_key(), algorithm=key.alg, headers={"kid": key.kid})
    return IssuedToken(token=token, kid=key.kid, claims=claims, config=config)


def _token_response(issued: IssuedToken) -> dict:
    """The leading fields both token endpoints answer with (callers append their own, in order)."""
    claims = issued.claims
    return {
        "token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
        "expires_at": issued.expires_at,
        "issuer": claims["iss"],
        "audience": claims["aud"],
        "subject": claims["sub"],
    }


def mint_sync_token(user, *, scopes=None, ttl_seconds=None, device_id=None, session_id=None, now=None) -> dict:
    """Mint for ``POST /api/sync/token``; return the response's ``data`` object."""
    issued = issue_token(
        user, scopes=scopes, ttl_seconds=ttl_seconds, device_id=device_id, session_id=session_id, now=now
    )
    TOKENS_ISSUED.labels(endpoint="sync").inc()
    claims = issued.claims
    return {
        **_token_response(issued),
        "org_id": claims["oa_org_id"],
        "claims_version": claims["oa_claims_version"],
        "scopes": claims["oa_sync_scopes"],
        "kid": issued.kid,
        "session_id": claims["oa_session_id"],
        "device_id": claims["oa_device_id"],
    }


def mint_legacy_token(user, *, scope=None, workspace_id=None, role=None, session_id=None, now=None) -> dict:
    """Mint for the legacy ``POST /api/khala/token``; return its flat response object."""
    role = role or "member"
    if role not in LEGACY_ROLES:
        raise ValueError(f"role must be one of {', '.join(LEGACY_ROLES)}")
    extra = {"oa_role": role}
    if workspace_id is not None:
        extra["oa_workspace_id"] = _checked_id(workspace_id, "workspace_id")
    issued = issue_token(user, scopes=scope, extra_claims=extra, session_id=session_id, now=now)
    claims = issued.claims
    TOKENS_ISSUED.labels(endpoint="legacy").inc()
    return {
        **_token_response(issued),
        "claims_version": claims["oa_claims_version"],
        "scope": claims["oa_sync_scopes"],
        "workspace_id": workspace_id,
        "role": role,
        # Additions (a flat object tolerates new keys): what the socket will enforce.
        "kid": issued.kid,
        "org_id": claims["oa_org_id"],
        "session_id": claims["oa_session_id"],
    }

"""Sync tokens minted by hand (PyJWT) for tests that must shape each claim and header themselves.

``sync_claims`` is the exact claim set ``tokens.issuer.issue_token`` writes (the
claims listed in ``docs/sync/TOKENS.md``, plus session and device ids) under the settings in force; ``sign`` encodes claims with a test
key. Minting this way, not through the issuer, lets a test produce each verifier failure on purpose
(bad alg, unknown kid, expired, mismatched audience …).
"""

import secrets
import time
import uuid

import jwt


def sync_claims(user_id: int, scopes, *, now=None, ttl=300, **overrides) -> dict:
    """The issuer's claims for ``user_id``; ``overrides`` replace claims, and ``None`` drops one."""
    from khala_project.conf import khala_setting

    now = int(now if now is not None else time.time())
    claims = {
        "iss": khala_setting("TOKEN_ISSUER"),
        "aud": khala_setting("TOKEN_AUDIENCE"),
        "sub": f"user:{user_id}",
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": secrets.token_hex(12),
        "oa_user_id": user_id,
        "oa_org_id": f"user:{user_id}",
        "oa_sync_scopes": list(scopes),
        "oa_claims_version": khala_setting("TOKEN_CLAIMS_VERSION"),
        "oa_session_id": f"sess_{uuid.uuid4().hex}",
        "oa_device_id": f"dev_{uuid.uuid4().hex[:12]}",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict, *, kid: str | None, secret: str, alg: str = "HS256", headers: dict | None = None) -> str:
    """A JWS of ``claims``; ``kid=None`` leaves the kid header out, ``headers`` add or replace others."""
    header = {"kid": kid} if kid is not None else {}
    header.update(headers or {})
    return jwt.encode(claims, secret, algorithm=alg, headers=header)

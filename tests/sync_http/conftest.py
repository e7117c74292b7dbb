"""Fixtures of the hydration API tests: declared topics, a signing key, token minting, documents.

Tokens are minted here as raw JWTs (PyJWT) rather than through the issuer so that each verifier
failure (bad alg, unknown kid, expired …) can be produced on purpose; the happy-path token has the
exact claim set the issuer writes (upstream-khala-v1.md §6.1 plus session/device ids).
"""

import secrets
import time
import uuid

import jwt
import pytest
from rest_framework.test import APIClient

from projector.models import V1_TOPICS, TopicSequence

SIGNING_KID = "hydration-test-k1"
SIGNING_SECRET = "hydration-test-secret-" + "x" * 48  # >= 64 bytes: HS512 tokens (unsupported_alg case) warn otherwise
OTHER_SECRET = "some-other-secret-" + "y" * 32


@pytest.fixture
def topics(transactional_db):
    """The four v1 topics (transactional_db flushes the migration's seed rows between tests)."""
    for topic in V1_TOPICS:
        TopicSequence.objects.get_or_create(topic=topic)
    return V1_TOPICS


@pytest.fixture
def signing_key(settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": f"{SIGNING_KID}:{SIGNING_SECRET}"}
    return SIGNING_KID


def claims_for(user_id: int, scopes, *, now=None, ttl=300, **overrides) -> dict:
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


def encode(claims: dict, *, kid=SIGNING_KID, secret=SIGNING_SECRET, alg="HS256", headers=None) -> str:
    hdr = {"kid": kid} if kid is not None else {}
    hdr.update(headers or {})
    return jwt.encode(claims, secret, algorithm=alg, headers=hdr)


@pytest.fixture
def mint(signing_key):
    """``mint(user_id, scopes=V1_TOPICS, **claim_overrides) -> token``."""

    def _mint(user_id: int, scopes=V1_TOPICS, **overrides) -> str:
        return encode(claims_for(user_id, scopes, **overrides))

    return _mint


@pytest.fixture
def api():
    """``api(token).get(path)``: an APIClient sending ``Authorization: Bearer <token>``."""

    def _client(token: str | None = None) -> APIClient:
        client = APIClient()
        if token is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return _client

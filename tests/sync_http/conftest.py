"""Fixtures of the hydration API tests: declared topics, a signing key, token minting, documents.

Tokens are minted as raw JWTs (``tests.support.tokens``) rather than through the issuer so that each
verifier failure (bad alg, unknown kid, expired …) can be produced on purpose; the happy-path token
has the exact claim set the issuer writes (listed in docs/sync/TOKENS.md).
"""

import pytest
from rest_framework.test import APIClient

from projector.models import V1_TOPICS, TopicSequence
from tests.support.tokens import sign, sync_claims

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


def encode(claims: dict, *, kid=SIGNING_KID, secret=SIGNING_SECRET, alg="HS256", headers=None) -> str:
    return sign(claims, kid=kid, secret=secret, alg=alg, headers=headers)


@pytest.fixture
def mint(signing_key):
    """``mint(user_id, scopes=V1_TOPICS, **claim_overrides) -> token``."""

    def _mint(user_id: int, scopes=V1_TOPICS, **overrides) -> str:
        return encode(sync_claims(user_id, scopes, **overrides))

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

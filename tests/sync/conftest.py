"""Fixtures of the WebSocket delivery tests (real PostgreSQL, real Redis; process tests use
``tests.support`` to run real daphne/uvicorn workers)."""

import pytest

from projector.models import V1_TOPICS

from tests.support.fixtures import asgi_server  # noqa: E402,F401  (fixture re-export; pytest_plugins is only allowed at the top level)
from tests.support.tokens import sign, sync_claims

SIGNING_KID = "sync-ws-test-k1"
SIGNING_SECRET = "sync-ws-test-secret-" + "z" * 40


@pytest.fixture
def topics(transactional_db):
    """The four v1 topics with their policies (transactional_db flushes the seed rows)."""
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()
    return V1_TOPICS


@pytest.fixture
def signing_key(settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": f"{SIGNING_KID}:{SIGNING_SECRET}"}
    return SIGNING_KID


@pytest.fixture
def khala(settings, signing_key):
    """``khala(**overrides)``: set KHALA settings for this test (and for servers started after)."""

    def _set(**overrides):
        settings.KHALA = {**settings.KHALA, **overrides}
        return settings.KHALA

    return _set


def make_token(user_id: int, scopes=V1_TOPICS, *, ttl=300, now=None, **overrides) -> str:
    return sign(sync_claims(user_id, scopes, now=now, ttl=ttl, **overrides), kid=SIGNING_KID, secret=SIGNING_SECRET)


@pytest.fixture
def mint(signing_key):
    """``mint(user_id, scopes=V1_TOPICS, **claim_overrides) -> token``."""
    return make_token


@pytest.fixture
def write():
    """``write(topic, doc_key, version, payload, owner="user:1", public=False) -> watermark``
    through the real sink (commits; the hint goes out after commit)."""
    from projector.sink import project

    def _write(topic, doc_key, doc_version, payload, owner="user:1", public=False):
        return project(topic, doc_key, doc_version, payload, owner, public=public).watermark

    return _write


@pytest.fixture
def awrite(write):
    """Async ``write`` (``database_sync_to_async``: its thread's connection is closed after)."""
    from channels.db import database_sync_to_async

    return database_sync_to_async(write)


@pytest.fixture
async def hub_cleanup():
    """Stop the test loop's hub (and close its pool) after a communicator test."""
    yield
    from sync.hub import stop_hub

    await stop_hub()

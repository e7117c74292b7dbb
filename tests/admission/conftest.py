"""Fixtures of the admission-control tests: a private Redis, a fake clock, a clean key space."""

import uuid

import pytest
import redis

from tests.admission.private_redis import PrivateRedis
from tests.support.fixtures import asgi_server  # noqa: F401  (fixture re-export)
from tests.support.clock import FakeClock



@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix(settings):
    """A fresh key namespace inside this run's prefix, so no test sees another's counters."""
    return f"{settings.KHALA_CHANNEL_PREFIX}:t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def prefix(settings):
    """A key space of this test only (a sub-prefix of the run's, for servers' KHALA_CHANNEL_PREFIX);
    its keys are deleted after."""
    value = f"{settings.KHALA_CHANNEL_PREFIX}_t{uuid.uuid4().hex[:8]}"
    yield value
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(f"{value}:*"):
        client.delete(key)

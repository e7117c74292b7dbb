"""Suite-wide guards: correctness is proven on PostgreSQL and Redis, never on the embedded default."""

import pytest
from django.conf import settings


def pytest_configure(config):
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            "the Khala test suite runs on PostgreSQL only: set DATABASE_URL "
            "(make test defaults it to postgres://root@127.0.0.1:5432/khala)"
        )
    if not settings.CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis"):
        raise pytest.UsageError(
            "the Khala test suite runs on the Redis channel layer only: set REDIS_URL "
            "(make test defaults it to redis://127.0.0.1:6379/0)"
        )

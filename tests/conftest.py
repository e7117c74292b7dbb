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


# The socket's admission limits are off by default in the suite: its tests open hundreds of sockets
# per second from one address as a handful of users, which is exactly what the limits refuse.
# tests/admission turns each one on where it is the subject (servers started by a test inherit it).
from tests.support.servers import SOCKET_LIMITS_OFF  # noqa: E402


@pytest.fixture(autouse=True)
def _socket_limits_off(settings):
    settings.KHALA = {**SOCKET_LIMITS_OFF, **getattr(settings, "KHALA", {})}

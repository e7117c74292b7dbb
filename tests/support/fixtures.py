"""pytest fixtures over ``tests.support.servers``. Re-export them from a conftest with
``from tests.support.fixtures import asgi_server`` (``pytest_plugins`` is top-level only).

``asgi_server(kind="daphne", khala=None, env=None, **kw)`` starts a server on the current test
database (pytest-django's ``test_<name>``: the test must use ``transactional_db`` so the server
sees committed rows), the run's Redis URL and channel prefix; every server it started is stopped
at teardown.
"""

import pytest
from django.conf import settings

from tests.support.servers import start_server, test_database_url


@pytest.fixture
def asgi_server(django_db_setup, django_db_blocker):
    started = []

    def _start(kind: str = "daphne", *, khala: dict | None = None, env: dict | None = None, **kwargs):
        server = start_server(
            kind,
            database_url=test_database_url(),
            redis_url=settings.REDIS_URL,
            channel_prefix=settings.KHALA_CHANNEL_PREFIX,
            khala={**getattr(settings, "KHALA", {}), **(khala or {})},
            env=env,
            **kwargs,
        )
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()

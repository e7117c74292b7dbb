"""Fixtures of the Python client's integration tests: a REAL Khala server (daphne processes from
``tests.support``) on the pytest-django test database, real Redis, a user with an API token, and
writes through the real sink. The unit tests in this folder need none of it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # the server's apps and the shared process harness
    sys.path.insert(0, str(REPO))

from tests.support.fixtures import asgi_server  # noqa: E402,F401  (fixture re-export)
from tests.support.servers import start_server, test_database_url  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402,F401  (the suite's one wait helper, re-exported)

SIGNING_KEYS = "kclient1:khala-client-tests-signing-secret-0123456789"
V1_TOPICS = ["runtime.run_summaries", "runtime.codex_worker_summaries", "runtime.codex_worker_events", "runtime.notifications"]


class KhalaEnv:
    """One test's server (restartable on the same port), user, and write/read helpers."""

    def __init__(self, settings, khala: dict):
        self.settings = settings
        self.khala = khala
        self.server = None
        self.port = 0
        self.started = []  # every server process this env started, stopped at teardown

    # -- server --
    def start(self):
        self.server = start_server(
            "daphne",
            database_url=test_database_url(),
            redis_url=self.settings.REDIS_URL,
            channel_prefix=self.settings.KHALA_CHANNEL_PREFIX,
            khala=self.khala,
            port=self.port,
        )
        self.port = self.server.port
        self.started.append(self.server)
        return self.server

    @property
    def url(self) -> str:
        return self.server.http_url

    def kill(self):
        self.server.kill()

    def restart(self):
        """SIGKILL the worker and start a new one on the same port (clients keep their URL)."""
        self.server.kill()
        return self.start()

    def stop(self):
        for server in self.started:
            if server.alive():
                server.stop()

    # -- users and tokens --
    def make_user(self, username: str):
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        user = get_user_model().objects.create_user(username=username, password="pw")
        return user, Token.objects.create(user=user).key, f"user:{user.pk}"

    def token_provider(self, api_token: str, scopes=None, calls: list | None = None):
        """Mints a fresh sync token over HTTP on every call (what a real app does); for an in-band
        refresh the client passes the socket's ``session_id``, which the token endpoint continues."""
        from khala_client import HttpApi

        async def provide(session_id=None):
            data = await HttpApi(self.url).mint_sync_token(api_token, scopes=scopes or V1_TOPICS, session_id=session_id)
            if calls is not None:
                calls.append(data)
            return data["token"]

        return provide

    # -- writes and read models (the test process writes through the real sink) --
    def write(self, topic, doc_key, doc_version, payload, owner, public=False):
        from projector.sink import project

        return project(topic, doc_key, doc_version, payload, owner, public=public)

    def write_many(self, writes):
        from projector.sink import DocumentWrite, project_many

        return project_many([DocumentWrite(*w) for w in writes])

    def read_models(self, topic, owner):
        from django.db.models import Q

        from projector.models import ReadModelDocument

        rows = ReadModelDocument.objects.filter(Q(owner=owner) | Q(public=True), topic=topic)
        return {r.doc_key: (r.doc_version, r.payload) for r in rows}

    def head(self, topic) -> int:
        from projector.models import TopicSequence

        return TopicSequence.objects.get(topic=topic).last_watermark


def db(fn, *args, **kwargs):
    """Run ORM code from an async test (its own thread; the connection is closed afterwards)."""
    from channels.db import database_sync_to_async

    return database_sync_to_async(fn)(*args, **kwargs)


async def converged(client, env, topic, owner) -> bool:
    """The client's cache equals the read models it may see, and its cursor reached the head."""
    read_models, head = await db(lambda: (env.read_models(topic, owner), env.head(topic)))
    return cache_state(client, topic) == read_models and client.watermark(topic) >= head


def cache_state(client, topic):
    return {k: (d.doc_version, d.payload) for k, d in client.documents(topic).items()}


@pytest.fixture
def khala_env(transactional_db, settings):
    """A running server with signing keys and fast heartbeats; the v1 topics declared."""
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()  # transactional_db truncates tables between tests, seeded rows included
    env = KhalaEnv(settings, {"SIGNING_KEYS": SIGNING_KEYS, "HEARTBEAT_INTERVAL_SECONDS": 1.0})
    yield env
    env.stop()

"""A server the way ``make run`` starts one, for the executable docs.

daphne on a free port (``tests/support/servers.py``), a signing key, the web live view on the
WebSocket lane, and the demo user whose API token ``make run`` prints. The database is the suite's
PostgreSQL test database (the suite never runs on SQLite), so tests use ``transactional_db``: the
server is another process and sees only committed rows.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fixtures import asgi_server  # noqa: F401  (fixture re-export)
from tests.support.servers import REPO_ROOT

SIGNING_KEYS = "kdocs1:khala-docs-tests-signing-secret-0123456789abc"
JS_CLIENT = REPO_ROOT / "clients" / "js"


@dataclass
class DocsServer:
    url: str
    host_port: str
    api_token: str

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Token {self.api_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())

    def write_run(self) -> str:
        """An authority write (a run and its first event) through the HTTP command API; its id."""
        run_id = self.post("/api/runtime/runs", {})["id"]
        self.post(f"/api/runtime/runs/{run_id}/events", {"event_type": "run.started", "payload": {}})
        return run_id


def declare_topics() -> None:
    """The topic rows `make run`'s migrate declares (``transactional_db`` flushes them after each test)."""
    from projector.models import V1_TOPICS, TopicSequence

    for topic in V1_TOPICS:
        TopicSequence.objects.get_or_create(topic=topic)


@pytest.fixture
def docs_server(transactional_db, asgi_server):  # noqa: F811
    from runtime.management.commands.ensure_demo_user import ensure_demo_user

    declare_topics()
    _, token, _ = ensure_demo_user("demo", "demo-password")
    server = asgi_server(env={"KHALA_SIGNING_KEYS": SIGNING_KEYS, "KHALA_WEB_SYNC_ENABLED": "1"})
    return DocsServer(server.http_url, f"{server.host}:{server.port}", token.key)


@pytest.fixture(scope="session")
def js_client_installed() -> Path:
    """``clients/js`` with its pinned dependencies (``npm ci`` once if a fresh clone lacks them)."""
    if not (JS_CLIENT / "node_modules" / "ws").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_CLIENT, check=True,
                       capture_output=True, timeout=600)
    return JS_CLIENT

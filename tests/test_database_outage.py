"""With PostgreSQL unreachable, every API answers a JSON 503 ``database_unavailable`` with
``Retry-After`` (never Django's HTML 500), and the worker stays alive to serve again.

A real daphne process whose ``DATABASE_URL`` points at a port nobody listens on: the same failure a
client sees while the database restarts or fails over, without touching the shared server.
"""

import json
import urllib.error
import urllib.request

import pytest

from tests.support.servers import start_server

SERVICE_TOKEN = "outage-service-token"


@pytest.fixture(scope="module")
def server_without_database():
    server = start_server(
        "daphne",
        database_url="postgres://root@127.0.0.1:1/khala",  # port 1: connection refused at once
        khala={"SERVICE_TOKEN": SERVICE_TOKEN, "SIGNING_KEYS": "outage-k1:" + "s" * 64, "UNAVAILABLE_RETRY_AFTER_SECONDS": 7},
    )
    yield server
    server.stop()


def call(server, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.http_url + path, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


DOCUMENT = {"topic": "runtime.run_summaries", "doc_key": "k", "doc_version": 1, "payload": {}, "owner": "user:1"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, path, body, headers",
    [
        ("POST", "/api/sync/token", {}, {"Authorization": "Token some-api-token"}),
        ("POST", "/api/khala/token", {}, {"Authorization": "Token some-api-token"}),
        ("POST", "/api/runtime/runs", {}, {"Authorization": "Token some-api-token"}),
        ("POST", "/api/internal/sync/projections", DOCUMENT, {"Authorization": f"Bearer {SERVICE_TOKEN}"}),
    ],
    ids=["sync-token", "legacy-token", "command", "ingest"],
)
def test_every_api_answers_json_503_with_retry_after(server_without_database, method, path, body, headers):
    status, response_headers, raw = call(server_without_database, method, path, body, headers)
    assert status == 503, raw[:500]
    assert response_headers["Content-Type"] == "application/json"
    assert response_headers["Retry-After"] == "7"
    assert json.loads(raw)["error"] == {
        "code": "database_unavailable",
        "message": "the database is unavailable; retry later",
        "retry_after": 7,
    }


@pytest.mark.slow
def test_readiness_is_unavailable_and_names_the_database(server_without_database):
    status, _, raw = call(server_without_database, "GET", "/readyz")
    body = json.loads(raw)
    assert (status, body["status"], body["failing"]) == (503, "unavailable", ["database"])
    assert server_without_database.alive()

"""The process harness itself: both servers start on the test database and are stopped for good."""

import json
import urllib.request

import pytest

from tests.support.servers import SERVER_KINDS




@pytest.mark.slow
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_starts_answers_and_stops(asgi_server, kind, transactional_db):
    server = asgi_server(kind)
    with urllib.request.urlopen(server.http_url + "/readyz", timeout=5) as response:
        body = json.loads(response.read())
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    server.stop()
    assert not server.alive()

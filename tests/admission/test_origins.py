"""The WebSocket Origin allow-list against a REAL daphne worker: an allowed browser origin joins, a
foreign one is refused at the handshake (HTTP 403, the app never runs), and a client that sends no
Origin (CLI, SDKs) is not a browser and is let through to token verification."""

import asyncio

import pytest
import websockets

from projector.models import V1_TOPICS
from tests.support.tokens import sign, sync_claims
from tests.support.wsclient import PhoenixClient

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KID = "origin-k1"
SECRET = "origin-test-secret-" + "o" * 40


@pytest.fixture
def token(transactional_db):
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()
    return sign(sync_claims(1, V1_TOPICS), kid=KID, secret=SECRET)


def handshake(server, token, origin):
    """``("joined", status)`` or ``("refused", http status)``."""

    async def attempt():
        kwargs = {"origin": origin} if origin is not None else {}
        try:
            client = await PhoenixClient.connect(server.ws_url(token=token), **kwargs)
        except websockets.exceptions.InvalidStatus as exc:
            return "refused", exc.response.status_code
        try:
            return "joined", (await client.join())["status"]
        finally:
            await client.close()

    return asyncio.run(attempt())


def test_default_allows_same_site_origins_and_clients_without_origin(asgi_server, token):
    server = asgi_server("daphne", khala={"SIGNING_KEYS": f"{KID}:{SECRET}"})
    assert handshake(server, token, f"http://127.0.0.1:{server.port}") == ("joined", "ok")
    assert handshake(server, token, "http://localhost:3000") == ("joined", "ok")  # host in ALLOWED_HOSTS
    assert handshake(server, token, None) == ("joined", "ok")  # not a browser
    assert handshake(server, token, "https://evil.example.com") == ("refused", 403)
    assert handshake(server, token, "null") == ("refused", 403)


def test_a_configured_allow_list(asgi_server, token):
    server = asgi_server(
        "daphne",
        khala={
            "SIGNING_KEYS": f"{KID}:{SECRET}",
            "WEBSOCKET_ALLOWED_ORIGINS": ["https://app.example.com", "https://.corp.example"],
        },
    )
    assert handshake(server, token, "https://app.example.com") == ("joined", "ok")
    assert handshake(server, token, "https://team.corp.example") == ("joined", "ok")
    assert handshake(server, token, "http://app.example.com") == ("refused", 403)  # scheme differs
    assert handshake(server, token, "https://app.example.com:8443") == ("refused", 403)  # port differs
    assert handshake(server, token, f"http://127.0.0.1:{server.port}") == ("refused", 403)  # not listed
    assert handshake(server, token, None) == ("joined", "ok")


def test_the_origin_check_runs_before_the_token_check(asgi_server):
    """A refused origin never reaches the app: even a garbage token gets the 403, not a join error."""
    server = asgi_server("daphne", khala={"SIGNING_KEYS": f"{KID}:{SECRET}"})
    assert handshake(server, "garbage", "https://evil.example.com") == ("refused", 403)
    kind, status = handshake(server, "garbage", None)
    assert kind == "joined" and status == "error"


def test_star_turns_the_check_off(asgi_server, token):
    server = asgi_server("daphne", khala={"SIGNING_KEYS": f"{KID}:{SECRET}", "WEBSOCKET_ALLOWED_ORIGINS": ["*"]})
    assert handshake(server, token, "https://anything.example") == ("joined", "ok")

"""The socket's admission limits (``sync.admission``): each refusal is deterministic, says when to
retry, and happens before the database work it protects — in process (a communicator, with spies on
the first database step), across two REAL daphne workers sharing Redis, and with their Redis
stopped (per-process limits)."""

import uuid
from urllib.parse import urlencode

import pytest
import redis
from django.test import override_settings

from tests.support.tokens import sign, sync_claims
from tests.support.waiting import wait_until
from tests.support.wsclient import Closed, PhoenixClient

pytestmark = pytest.mark.django_db(transaction=True)

KID = "admission-ws"
SECRET = "admission-ws-secret-" + "w" * 40
KEYS = f"{KID}:{SECRET}"
FOREVER = 1_000_000_000.0  # no window boundary can fall inside a test (windows are clock-aligned)
RUNS = "runtime.run_summaries"


def token(user_id: int) -> str:
    return sign(sync_claims(user_id, [RUNS]), kid=KID, secret=SECRET)


@pytest.fixture
def limits(settings, prefix):
    """``limits(**khala)``: the signing key, this test's limiter key space and the given limits."""

    def _set(**overrides):
        settings.KHALA_CHANNEL_PREFIX = prefix  # the process limiter's key space (read lazily)
        settings.KHALA = {**settings.KHALA, "SIGNING_KEYS": KEYS, **overrides}

    return _set


@pytest.fixture
def topics(transactional_db):
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()


@pytest.fixture
async def stop_hub():
    yield
    from sync.hub import stop_hub as stop

    await stop()


@pytest.fixture
def spies(monkeypatch):
    """Counts of the first database-bound steps: the hub (its pool) at connect, the revocation read
    at join, the topic list at subscribe."""
    from sync import consumer, policies
    from sync.hub import Hub

    calls = {"hub": 0, "revocation": 0, "known_topics": 0}
    get_hub, revoked_reason, known_topics = consumer.get_hub, policies.RevocationCheck.revoked_reason, Hub.known_topics

    async def counted_get_hub():
        calls["hub"] += 1
        return await get_hub()

    async def counted_revoked_reason(self, principal):
        calls["revocation"] += 1
        return await revoked_reason(self, principal)

    async def counted_known_topics(self):
        calls["known_topics"] += 1
        return await known_topics(self)

    monkeypatch.setattr(consumer, "get_hub", counted_get_hub)
    monkeypatch.setattr(policies.RevocationCheck, "revoked_reason", counted_revoked_reason)
    monkeypatch.setattr(Hub, "known_topics", counted_known_topics)
    return calls


async def connect(user_id=1, ip="10.9.8.7") -> PhoenixClient:
    return await PhoenixClient.communicator(urlencode({"token": token(user_id), "vsn": "2.0.0"}), client=(ip, 40001))


def refusal(reply: dict, limit: str) -> dict:
    assert reply["status"] == "error", reply
    error = reply["response"]
    assert error["code"] == "rate_limited" and error["limit"] == limit, error
    assert error["retry_after_ms"] > 0
    return error


async def test_a_connection_flood_from_one_ip_is_closed_4429_before_the_hub(limits, spies, stop_hub):
    limits(LIMIT_CONNECTS_PER_IP=[2, FOREVER])
    first, second = await connect(), await connect()
    assert [(await first.join())["status"], (await second.join())["status"]] == ["ok", "ok"]
    assert spies["hub"] == 2
    third = await connect()
    frame = await third.recv()
    assert frame[2:4] == ["phoenix", "sync:error"]
    assert frame[4]["code"] == "rate_limited" and frame[4]["limit"] == "connects_per_ip" and frame[4]["retry_after_ms"] > 0
    with pytest.raises(Closed) as closed:
        await third.recv()
    assert closed.value.code == 4429
    assert spies["hub"] == 2  # refused before the worker's hub (and its database pool) was touched
    other_ip = await connect(ip="10.9.8.8")
    assert (await other_ip.join())["status"] == "ok"
    for client in (first, second, other_ip):
        await client.close()


async def test_joins_per_user_are_refused_before_the_revocation_read_and_the_socket_stays(limits, spies, stop_hub):
    limits(LIMIT_CONNECTS_PER_USER=[1, FOREVER])
    first = await connect(user_id=31)
    assert (await first.join())["status"] == "ok"
    assert spies["revocation"] == 1
    second = await connect(user_id=31)
    refusal(await second.join(), "connects_per_user")
    assert spies["revocation"] == 1  # refused after the token, before any database read
    reply, _ = await second.reply(await second.push("sync:heartbeat", {}, join_ref=None), timeout=5)
    assert reply["response"]["code"] == "bad_topic"  # still open, just not joined
    other_user = await connect(user_id=32)
    assert (await other_user.join())["status"] == "ok"
    for client in (first, second, other_user):
        await client.close()


async def test_open_sockets_per_user_free_their_place_on_close(limits, spies, stop_hub):
    limits(LIMIT_SOCKETS_PER_USER=1)
    first = await connect(user_id=41)
    assert (await first.join())["status"] == "ok"
    second = await connect(user_id=41)
    error = refusal(await second.join(), "sockets_per_user")
    assert error["retry_after_ms"] <= 90_000  # at most until the holder's lease lapses
    await first.close()  # releases its place at once
    assert (await second.join())["status"] == "ok"
    await second.close()


async def test_joins_and_subscribes_per_socket(limits, spies, stop_hub, topics):
    limits(LIMIT_JOINS_PER_SOCKET=[1, FOREVER], LIMIT_SUBSCRIBES_PER_SOCKET=[1, FOREVER])
    client = await connect(user_id=51)
    assert (await client.join())["status"] == "ok"
    refusal(await client.join(), "joins_per_socket")
    assert spies["revocation"] == 1  # the refused rejoin did not verify or read anything
    reply, _ = await client.subscribe([RUNS])
    assert reply["status"] == "ok"
    assert spies["known_topics"] == 1
    reply, _ = await client.subscribe([RUNS])
    refusal(reply, "subscribes_per_socket")
    assert spies["known_topics"] == 1  # refused before the topic list and the journal
    await client.close()


# --- real workers ---------------------------------------------------------------------------------


async def joined_on(server, user_id) -> tuple[PhoenixClient, dict]:
    client = await PhoenixClient.connect(server.ws_url(token=token(user_id)))
    return client, await client.join()


@pytest.mark.slow
async def test_two_workers_sharing_redis_enforce_one_socket_cap(asgi_server, prefix, topics, settings):
    khala = {"SIGNING_KEYS": KEYS, "LIMIT_SOCKETS_PER_USER": 2}
    workers = [asgi_server("daphne", khala=khala, env={"KHALA_CHANNEL_PREFIX": prefix}) for _ in range(2)]
    user = int(uuid.uuid4().int % 10**6) + 1000
    a, reply_a = await joined_on(workers[0], user)
    b, reply_b = await joined_on(workers[1], user)
    c, reply_c = await joined_on(workers[0], user)
    d, reply_d = await joined_on(workers[1], user)
    assert [reply_a["status"], reply_b["status"]] == ["ok", "ok"]
    refusal(reply_c, "sockets_per_user")
    refusal(reply_d, "sockets_per_user")
    await b.close()  # a place frees up on worker 1 (released at close); worker 0's socket may take it
    places = redis.Redis.from_url(settings.REDIS_URL)
    await wait_until(lambda: places.zcard(f"{prefix}:lease:sockets_per_user:user:{user}") == 1, 10,
                     message="worker 1 releases the closed socket's place")
    assert (await c.join())["status"] == "ok"
    for client in (a, c, d):
        await client.close()


@pytest.mark.slow
async def test_with_redis_stopped_each_worker_caps_sockets_on_its_own(asgi_server, private_redis, topics):
    khala = {"SIGNING_KEYS": KEYS, "LIMIT_SOCKETS_PER_USER": 1, "RATE_LIMIT_REDIS_RETRY_SECONDS": 600.0}
    with override_settings(REDIS_URL=private_redis.url):
        workers = [asgi_server("daphne", khala=khala) for _ in range(2)]
    user = 77
    a, reply_a = await joined_on(workers[0], user)
    b, reply_b = await joined_on(workers[1], user)
    assert reply_a["status"] == "ok"
    refusal(reply_b, "sockets_per_user")  # one budget through Redis

    private_redis.stop()
    # Each worker now counts alone from zero (the Redis-held place is forgotten): one more socket
    # each, then refusals. Looser than one shared cap, never unlimited.
    c, reply_c = await joined_on(workers[1], user)
    d, reply_d = await joined_on(workers[1], user)
    e, reply_e = await joined_on(workers[0], user)
    f, reply_f = await joined_on(workers[0], user)
    assert [reply_c["status"], reply_e["status"]] == ["ok", "ok"]
    refusal(reply_d, "sockets_per_user")
    refusal(reply_f, "sockets_per_user")
    for client in (a, b, c, d, e, f):
        await client.close()

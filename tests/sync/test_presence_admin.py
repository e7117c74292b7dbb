"""Cluster-wide admin figures: two REAL daphne workers publish presence records and stale-cursor
buckets to Redis (``sync.presence``); the admin Topics page (Django test client, staff user) sums
them. Presence is best effort: an unreachable Redis never affects delivery."""

import asyncio
import secrets

import pytest
import redis
from django.urls import reverse

from tests.support.wsclient import PhoenixClient, updates_of
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"


@pytest.fixture
def prefix(settings):
    """A channel prefix of this test only (for the servers it starts and for the admin), so no
    presence record of another run is summed; its keys are deleted afterwards."""
    value = f"{settings.KHALA_CHANNEL_PREFIX}_presence_{secrets.token_hex(4)}"
    settings.KHALA_CHANNEL_PREFIX = value
    yield value
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{value}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.invalid", "ops-password-123")


def topics_page(user):
    """GET the admin Topics page as ``user`` from a plain thread; (DeliveryStatus, html)."""
    from django.db import connection
    from django.test import Client

    try:
        client = Client()
        client.force_login(user)
        response = client.get(reverse("admin:projector_topicsequence_changelist"))
        assert response.status_code == 200
        return response.context["delivery"], response.content.decode()
    finally:
        connection.close()


async def wait_for_page(user, predicate, timeout=20.0):
    async def page():
        delivery, html = await asyncio.to_thread(topics_page, user)
        return (delivery, html) if predicate(delivery) else None

    return await wait_until(page, timeout, interval=0.2, message="the admin to show the expected figures")


async def joined(server, token):
    client = await PhoenixClient.connect(server.ws_url(token=token))
    assert (await client.join())["status"] == "ok"
    return client


async def subscribed(server, token):
    client = await joined(server, token)
    reply, _ = await client.subscribe([RUNS])
    assert reply["status"] == "ok", reply
    return client


async def refused_as_stale(client):
    reply, _ = await client.subscribe([RUNS], {RUNS: 999})  # ahead of the head: stale
    assert reply["status"] == "error" and reply["response"]["code"] == "stale_cursor", reply


@pytest.mark.slow
async def test_admin_sums_connections_subscribers_and_stale_cursors_of_two_workers(topics, mint, asgi_server, prefix, staff):
    fast = {"HEAD_CHECK_INTERVAL_SECONDS": 0.2}
    one, two = asgi_server("daphne", khala=fast), asgi_server("daphne", khala=fast)
    sockets = [await subscribed(one, mint(1)), await subscribed(one, mint(2))]
    sockets += [await subscribed(two, mint(3)), await subscribed(two, mint(4)), await joined(two, mint(5))]
    # Stale cursors on both workers: one on worker one (from a socket that then goes away), two
    # on worker two (the joined-only socket; a refused subscribe leaves it joined).
    passing = await joined(one, mint(6))
    await refused_as_stale(passing)
    await passing.close()
    await refused_as_stale(sockets[4])
    await refused_as_stale(sockets[4])

    delivery, html = await wait_for_page(
        staff,
        lambda d: d.cluster and len(d.workers) == 2 and d.connections == 5 and d.subscribers.get(RUNS) == 4
        and d.stale_cursors_last_hour.get(RUNS) == 3,
    )
    assert sorted(w["connections"] for w in delivery.workers) == [2, 3]
    assert {w["pid"] for w in delivery.workers} == {one.pid, two.pid}
    assert {w["server"] for w in delivery.workers} == {"daphne"}
    assert "cluster-wide" in html and "all 2 live workers" in html
    [row] = [chunk for chunk in html.split("<tr") if f">{RUNS}</a>" in chunk and "field-live_connections" in chunk]
    assert '<td class="field-live_connections">5</td>' in row
    assert '<td class="field-subscribers">4</td>' in row
    assert '<td class="field-stale_cursors_last_hour">3</td>' in row

    # A worker that stops stops refreshing its record: within a few ticks only the live one counts.
    # The stale-cursor buckets are counts of the last hour and stay.
    one.stop()
    delivery, _ = await wait_for_page(staff, lambda d: len(d.workers) == 1)
    assert delivery.connections == 3 and delivery.subscribers.get(RUNS) == 2
    assert delivery.stale_cursors_last_hour.get(RUNS) == 3
    for client in sockets[2:]:
        await client.close()


@pytest.mark.usefixtures("hub_cleanup")
async def test_unreachable_presence_redis_never_affects_delivery(topics, mint, awrite, settings):
    """The hub's presence writes fail (nothing listens on its Redis URL); joins, replay, live
    updates and stale-cursor refusals work as usual, and the failure is only logged."""
    from sync.hub import get_hub

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # read by the hub's presence; the layer is already built
    settings.KHALA = {**settings.KHALA, "HEAD_CHECK_INTERVAL_SECONDS": 0.05}
    client = await PhoenixClient.communicator(f"token={mint(1)}&vsn=2.0.0")
    assert (await client.join())["status"] == "ok"
    hub = await get_hub()
    assert hub.presence.redis_url == "redis://127.0.0.1:1/0"
    await refused_as_stale(client)
    reply, _ = await client.subscribe([RUNS])
    assert reply["status"] == "ok"
    watermark = await awrite(RUNS, "runtime/run_summary:p1", 1, {"n": 1}, "user:1")
    frames = await client.recv_until(lambda f: f[3] == "sync:update_batch")
    assert [u["watermark"] for u in updates_of(frames)] == [watermark]
    # its writes were tried (head-check ticks, the stale cursor) and failed
    await wait_until(lambda: hub.presence.failing, 10, interval=0.05, message="presence to try (and fail) a write")
    assert hub.presence.local_stale_last_hour() == {RUNS: 1}
    await client.close()

"""The sharded hint bus across REAL processes: two Redis servers of the test's own (REDIS_URL lists
both), real daphne workers, and this process as the writer.

- Each topic's hints go to its own shard, and workers hear them there: with the head check set to
  600 s only a hint can deliver within the test, so delivery on BOTH shards proves the routing
  (and ``PUBSUB NUMSUB`` shows each topic's group subscribed on its shard only).
- One shard killed: writes still succeed, the live shard's topic is still hint-delivered, the dead
  shard's topic is not (on the hint-only workers) but is delivered by the journal head check on a
  worker whose check is short; /readyz answers 200 "degraded" naming the shard.
- The shard restarted: the workers re-attach to it, catch up what they missed (the head check that
  follows an attach), and its topic is hint-delivered again.
- Presence records and stale-cursor counters are spread over the shards and summed by the admin;
  with a shard down the admin's read names it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from channels.layers import channel_layers

from django.conf import settings

from khala_project.bus import ShardReadError, current_bus, group_channel_name, shard_index, topic_group, topic_shard
from khala_project.metrics import BUS_PUBLISHES
from projector.models import V1_TOPICS
from sync.presence import read_cluster
from tests.support.private_services import RedisServer
from tests.support.waiting import wait_until
from tests.support.wsclient import PhoenixClient, updates_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HINTS_ONLY = {"HEAD_CHECK_INTERVAL_SECONDS": 600.0}  # far longer than any wait here
HEAD_CHECK = {"HEAD_CHECK_INTERVAL_SECONDS": 0.3}
# Notice a dead shard and re-attach within a second or two (the defaults are for production).
FAST_BUS = {"BUS_PROBE_INTERVAL_SECONDS": 0.3, "BUS_PROBE_TIMEOUT_SECONDS": 1.0, "BUS_RETRY_MAX_SECONDS": 0.5}
WINDOW = 15.0


def split_prefix(base: str) -> tuple[str, str, str]:
    """A channel prefix under which two v1 topics land on different shards of two, and those
    topics: (prefix, topic on shard 0, topic on shard 1)."""
    for k in range(100):
        prefix = f"{base}_shards{k}"
        by_shard = {}
        for topic in V1_TOPICS:
            by_shard.setdefault(topic_shard(topic, 2, prefix), topic)
        if len(by_shard) == 2:
            return prefix, by_shard[0], by_shard[1]
    raise AssertionError("no prefix splits the v1 topics over two shards")


@pytest.fixture
def shards(settings):
    """Two private Redis servers as the run's bus; (redis servers, prefix, topic on 0, topic on 1)."""
    servers = [RedisServer(), RedisServer()]
    for server in servers:
        server.start()
    prefix, on_0, on_1 = split_prefix(settings.KHALA_CHANNEL_PREFIX)
    urls = [server.url for server in servers]
    settings.REDIS_URL = ",".join(urls)
    settings.KHALA_CHANNEL_PREFIX = prefix
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": urls, "prefix": prefix}}
    }
    channel_layers.backends.clear()
    try:
        yield servers, prefix, on_0, on_1
    finally:
        channel_layers.backends.clear()
        for server in servers:
            server.close()


def write_rows(topic: str, start: int, count: int) -> list[int]:
    """Sink writes from a plain thread (its own DB connection, closed at the end); the watermarks."""
    from django.db import connection

    from projector.sink import project

    try:
        return [project(topic, f"shard-test:{topic}:{i}", 1, {"i": i}, "user:1").watermark for i in range(start, start + count)]
    finally:
        connection.close()


async def subscribed(server, token, topics):
    client = await PhoenixClient.connect(server.ws_url(token=token))
    assert (await client.join())["status"] == "ok"
    reply, _ = await client.subscribe(list(topics))
    assert reply["status"] == "ok", reply
    return client


async def collect(client, topic: str, count: int, timeout: float = WINDOW) -> list[int]:
    """The next ``count`` watermarks of ``topic`` this client receives (fails past ``timeout``);
    updates of other topics received meanwhile are kept for their own ``collect``."""
    pending = client.__dict__.setdefault("pending_updates", {})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(pending.get(topic, [])) < count:
        frame = await client.recv(max(deadline - loop.time(), 0.01))
        if frame[3] == "sync:update_batch":
            for update in frame[4]["updates"]:
                pending.setdefault(update["topic"], []).append(update["watermark"])
    taken, pending[topic] = pending[topic][:count], pending[topic][count:]
    return taken


async def delivered_head(client, topic: str) -> int:
    """The watermark of ``topic`` the worker has sent this client so far (a heartbeat's answer)."""
    ref = await client.push("sync:heartbeat", {})
    reply, frames = await client.reply(ref)
    assert updates_of(frames) == [], "an update arrived that the test did not expect"
    return {w["topic"]: w["watermark"] for w in reply["response"]["watermarks"]}[topic]


def http_json(server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric(server, name: str, **labels) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    selector = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    match = re.search(rf"^{re.escape(name + selector)} ([0-9.e+-]+)$", text, flags=re.M)
    return float(match.group(1)) if match else 0.0


def presence_figures(prefix: str, topic: str) -> tuple[int, int]:
    """(workers with a presence record, stale cursors of ``topic`` in the last hour), all shards."""
    figures = read_cluster(settings.REDIS_URL, prefix, [topic])
    return len(figures.workers), figures.stale_last_hour.get(topic, 0)


def redis_keys(redis: RedisServer, pattern: str) -> list[str]:
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan", "--pattern", pattern], capture_output=True, text=True, timeout=10)
    return out.stdout.split()


def subscribers(redis: RedisServer, channel: str) -> int:
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "PUBSUB", "NUMSUB", channel], capture_output=True, text=True, timeout=10)
    return int(out.stdout.split()[1])


def local_publishes(shard: str, outcome: str) -> float:
    return BUS_PUBLISHES.labels(shard=shard, outcome=outcome)._value.get()


async def test_each_shard_carries_its_topics_and_a_dead_shard_delays_only_its_own(topics, mint, asgi_server, shards):
    servers, prefix, on_0, on_1 = shards
    one = asgi_server("daphne", khala={**HINTS_ONLY, **FAST_BUS})
    two = asgi_server("daphne", khala={**HINTS_ONLY, **FAST_BUS})
    checker = asgi_server("daphne", khala={**HEAD_CHECK, **FAST_BUS})
    a = await subscribed(one, mint(1), [on_0, on_1])
    b = await subscribed(two, mint(1), [on_0, on_1])
    c = await subscribed(checker, mint(1), [on_1])

    # Both shards up: every topic's group is subscribed on its own shard only, by the three workers
    # (the checker follows only on_1), and hints on both shards deliver to both hint-only workers.
    for server in (one, two, checker):
        await wait_until(lambda server=server: http_json(server, "/readyz")[1]["status"] == "ok", timeout=WINDOW, message="all shards attached")
    group_0, group_1 = (group_channel_name(prefix, topic_group(t)) for t in (on_0, on_1))
    await wait_until(lambda: subscribers(servers[0], group_0) == 2 and subscribers(servers[1], group_1) == 3, timeout=WINDOW,
                     message="each topic's group subscribed on its shard")
    assert subscribers(servers[1], group_0) == 0 and subscribers(servers[0], group_1) == 0
    status, body = http_json(one, "/readyz")
    assert status == 200 and body["redis_shards"] == {"0": f"127.0.0.1:{servers[0].port}/0", "1": f"127.0.0.1:{servers[1].port}/0"}
    assert set(body["checks"]) == {"database", "channel_layer.0", "channel_layer.1"}

    # Presence follows the shards: a worker's record on the shard of its key, a topic's stale-cursor
    # counters on the topic's shard; the admin's read sums all shards. (Only the checker writes a
    # record here: a worker writes it on its head-check tick, 600 s on the others.)
    late = await PhoenixClient.connect(checker.ws_url(token=mint(1)))
    assert (await late.join())["status"] == "ok"
    reply, _ = await late.subscribe([on_1], {on_1: 999})  # ahead of the head: refused as stale
    assert reply["response"]["code"] == "stale_cursor", reply
    await wait_until(lambda: presence_figures(prefix, on_1) == (1, 1), timeout=WINDOW, message="presence summed over both shards")
    for index, redis in enumerate(servers):
        keys = redis_keys(redis, f"{prefix}:*")
        assert all(shard_index(key, 2) == index for key in keys if ":presence:" in key), keys
        assert any(f":stale:{on_1}:" in key for key in keys) == (index == 1), keys

    first_0 = await asyncio.to_thread(write_rows, on_0, 1, 2)
    first_1 = await asyncio.to_thread(write_rows, on_1, 1, 2)
    for client in (a, b):
        assert await collect(client, on_0, 2) == first_0
        assert await collect(client, on_1, 2) == first_1
    assert await collect(c, on_1, 2) == first_1
    for server in (one, two):
        assert metric(server, "khala_hub_head_check_catchups_total") == 0

    # Shard 1 dies. The workers notice (their probe on it), readiness names it and stays 200.
    servers[1].stop()
    for server in (one, two, checker):
        await wait_until(lambda server=server: metric(server, "khala_bus_shard_attached", shard="1") == 0, timeout=WINDOW,
                         message="the dead shard detached")
        status, body = http_json(server, "/readyz")
        assert status == 200 and body["status"] == "degraded" and body["degraded"] == ["channel_layer.1"], body
        assert body["checks"]["channel_layer.0"] == "ok" and metric(server, "khala_bus_shard_attached", shard="0") == 1

    # The admin cannot read shard 1, and says so (it falls back to its own process's figures).
    with pytest.raises(ShardReadError, match=f"shard 1 \\(127.0.0.1:{servers[1].port}/0\\)"):
        await asyncio.to_thread(read_cluster, settings.REDIS_URL, prefix, [on_0, on_1])

    # Writes succeed on both topics; the publishes to the dead shard fail (counted), not the writes.
    failed_before = local_publishes("1", "failed") + local_publishes("1", "skipped")
    second_0 = await asyncio.to_thread(write_rows, on_0, 3, 2)
    second_1 = await asyncio.to_thread(write_rows, on_1, 3, 2)
    await wait_until(lambda: local_publishes("1", "failed") + local_publishes("1", "skipped") > failed_before, timeout=WINDOW,
                     message="the hint to the dead shard counted as not sent")
    # The live shard's topic still arrives by hint on the hint-only workers...
    for client in (a, b):
        assert await collect(client, on_0, 2) == second_0
    # ...the dead shard's topic arrives by the journal head check where it runs...
    assert await collect(c, on_1, 2) == second_1
    assert metric(checker, "khala_hub_head_check_catchups_total") >= 1
    # ...and not on the hint-only workers: nothing but a hint could have delivered it there.
    for client in (a, b):
        assert await delivered_head(client, on_1) == first_1[-1]

    # Shard 1 is back (same port, empty: it forgot every subscription): the workers re-attach, and
    # the head check that follows an attach delivers what its hints missed.
    servers[1].start()
    for server in (one, two):
        await wait_until(lambda server=server: metric(server, "khala_bus_shard_attached", shard="1") == 1, timeout=WINDOW,
                         message="re-attached to the restarted shard")
        assert metric(server, "khala_bus_shard_attaches_total", shard="1") >= 2
        await wait_until(lambda server=server: http_json(server, "/readyz")[1]["status"] == "ok", timeout=WINDOW, message="ready again")
    for client in (a, b):
        assert await collect(client, on_1, 2) == second_1
    await wait_until(lambda: subscribers(servers[1], group_1) == 3, timeout=WINDOW, message="the group re-subscribed on the shard")
    # And hints on the restarted shard deliver again (this process's publisher waits out its
    # skip window after the failures above: the wait below is a condition, not a sleep).
    publisher_shard = current_bus().shards[1]
    await wait_until(lambda: publisher_shard.down_until <= time.monotonic(), timeout=WINDOW, message="the skip window to end")
    third_1 = await asyncio.to_thread(write_rows, on_1, 5, 2)
    for client in (a, b):
        assert await collect(client, on_1, 2) == third_1
    for server in (one, two):
        assert metric(server, "khala_hub_head_check_catchups_total") >= 1  # the catch-up after re-attach

"""The bus's shard routing (``khala_project.bus``): the hash every process computes, the REDIS_URL
list, and revocations on every shard (two private Redis servers, one killed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash

import redis as sync_redis

from khala_project.bus import (
    REVOCATIONS_GROUP,
    PresenceWriteError,
    PresenceWriter,
    ShardReadError,
    read_presence,
    ShardedSubscription,
    bus_for_layers,
    current_bus,
    group_channel_name,
    publish,
    redacted_address,
    redis_urls,
    revoked_message,
    shard_index,
    topic_group,
    topic_shard,
)
from projector.models import V1_TOPICS
from tests.support.private_services import RedisServer
from tests.support.waiting import wait_until

PREFIX = "bus_shards_test"


def test_the_shard_of_a_group_is_channels_redis_own_choice():
    # The bus routes exactly as a multi-host channels-redis layer would (its ring over the group's
    # Redis channel name), so a plain ``group_send`` on the default layer reaches the same shard.
    for count in (2, 3, 5):
        for topic in (*V1_TOPICS, "a", "x" * 90):
            name = group_channel_name(PREFIX, topic_group(topic))
            assert shard_index(name, count) == _consistent_hash(name, count)
            assert topic_shard(topic, count, PREFIX) == _consistent_hash(name, count)
    assert {topic_shard(f"topic.{i}", 3, PREFIX) for i in range(50)} == {0, 1, 2}
    assert shard_index("anything", 1) == 0


def test_redis_url_lists():
    assert redis_urls("redis://a:6379/0") == ["redis://a:6379/0"]
    assert redis_urls(" redis://a:1/0 , redis://b:2/3,") == ["redis://a:1/0", "redis://b:2/3"]
    assert redis_urls("") == []
    assert redacted_address("redis://user:secret@h:7000/2") == "h:7000/2"


def test_one_url_is_one_shard_the_default_layer(settings):
    from channels.layers import get_channel_layer

    bus = current_bus()
    assert len(bus.shards) == 1 and bus.shards[0].layer is get_channel_layer()


@contextlib.asynccontextmanager
async def two_shards():
    """Two private Redis servers as two bus shards: ``(servers, subscription, publisher, received)``,
    the subscription running (every message it gets appended to ``received``) and the publisher a
    bus of its own layers on the same servers."""
    servers = [RedisServer(), RedisServer()]
    for server in servers:
        server.start()
    layers = [RedisPubSubChannelLayer(hosts=[s.url], prefix=PREFIX) for s in servers]
    publisher_layers = [RedisPubSubChannelLayer(hosts=[s.url], prefix=PREFIX) for s in servers]
    subscription = ShardedSubscription(bus_for_layers(layers, PREFIX), probe_interval=0.2, probe_timeout=1.0,
                                       retry_initial=0.05, retry_max=0.2, attach_timeout=1.0)
    publisher = bus_for_layers(publisher_layers, PREFIX)
    received: list[dict] = []
    task = asyncio.create_task(subscription.run(received.append))
    try:
        yield servers, subscription, publisher, received
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscription.close()
        for layer in layers + publisher_layers:
            try:
                await layer.flush()
            except Exception:
                pass
        for server in servers:
            server.close()


async def test_revocations_go_to_every_shard_and_survive_one_dead_shard():
    async with two_shards() as (servers, subscription, publisher, received):
        await wait_until(lambda: subscription.attached, timeout=20, message="attached on both shards")

        first = revoked_message(["s1"], [], "user_requested")
        await publish(REVOCATIONS_GROUP, first, publisher)
        await wait_until(lambda: received.count(first) == 2, timeout=10, message="one copy per shard")

        servers[1].stop()
        await wait_until(lambda: not subscription.parts[1].attached, timeout=20, message="shard 1 detached")
        assert subscription.parts[0].attached
        second = revoked_message(["s2"], [], "user_requested")
        await publish(REVOCATIONS_GROUP, second, publisher)  # never raises: shard 1 fails alone
        await wait_until(lambda: second in received, timeout=10, message="the revocation through the live shard")


@pytest.mark.parametrize("dead", [0, 1])
async def test_a_topics_hints_flow_while_another_shard_is_dead(dead):
    topic = next(t for t in (f"topic.{i}" for i in range(100)) if topic_shard(t, 2, PREFIX) == 1 - dead)
    async with two_shards() as (servers, subscription, publisher, received):
        await subscription.follow(topic)
        await wait_until(lambda: subscription.attached, timeout=20, message="attached on both shards")
        assert subscription.part_of(topic) is subscription.parts[1 - dead] and subscription.parts[1 - dead].topics == {topic}
        servers[dead].stop()
        await wait_until(lambda: not subscription.parts[dead].attached, timeout=20, message="the other shard detached")
        message = {"type": "sync.hint", "topic": topic, "watermark": 1, "stream_epoch": "e"}

        async def delivered() -> bool:
            await publish(topic_group(topic), message, publisher)
            return message in received

        await wait_until(delivered, timeout=10, interval=0.1, message="the hint on the topic's live shard")


async def test_presence_records_and_stale_counters_spread_over_the_shards_and_are_read_from_all():
    servers = [RedisServer(), RedisServer()]
    for server in servers:
        server.start()
    urls = ",".join(server.url for server in servers)
    writer = PresenceWriter(urls, PREFIX, timeout=2.0)
    workers = [f"host:{i}" for i in range(12)]
    candidates = [f"topic.{i}" for i in range(100)]
    topics = [t for t in candidates if topic_shard(t, 2, PREFIX) == 0][:3] + [t for t in candidates if topic_shard(t, 2, PREFIX) == 1][:3]
    try:
        assert {writer.record_shard(w) for w in workers} == {0, 1}  # both shards hold records
        for worker in workers:
            await writer.write(worker, f'{{"worker_id": "{worker}"}}', 60_000, {(topic, 7): 1 for topic in topics}, 600)
        raw, stale = await asyncio.to_thread(read_presence, urls, PREFIX, topics, [6, 7])
        assert sorted(raw) == sorted(f'{{"worker_id": "{w}"}}'.encode() for w in workers)
        assert stale == {topic: len(workers) for topic in topics}
        for index, server in enumerate(servers):
            keys = sync_redis.Redis(port=server.port).keys(f"{PREFIX}:*")
            assert all(shard_index(k.decode(), 2) == index for k in keys if b":presence:" in k)
            assert all(topic_shard(k.decode().split(":")[2], 2, PREFIX) == index for k in keys if b":stale:" in k)

        servers[1].stop()  # a dead shard: the writes to the live one land, the rest are handed back
        on_live, on_dead = topics[0], topics[-1]
        with pytest.raises(PresenceWriteError) as failure:
            await writer.write(workers[0], None, 60_000, {(on_live, 8): 1, (on_dead, 8): 1}, 600)
        assert failure.value.unsent == {(on_dead, 8): 1}
        assert int(sync_redis.Redis(port=servers[0].port).get(f"{PREFIX}:stale:{on_live}:8")) == 1
        with pytest.raises(ShardReadError, match="shard 1"):
            await asyncio.to_thread(read_presence, urls, PREFIX, topics, [7])
    finally:
        for worker in workers:
            await writer.close(worker)
        for server in servers:
            server.close()


async def test_a_shard_that_stops_answering_holds_up_only_its_own_topics_hints(settings, monkeypatch):
    # A host that accepts connections and never answers (a hung machine, a blackhole) costs a
    # publish its whole timeout. The publisher has one lane per shard: while shard 1's publish
    # hangs, the hints of shard 0's topics still go out.
    import socket

    from channels.layers import channel_layers

    from khala_project import bus as bus_module
    from projector.hints import HintPublisher

    monkeypatch.setattr(bus_module, "PUBLISH_TIMEOUT_SECONDS", 60.0)  # hangs for the whole test
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # never accepted: connects succeed, commands get no answer
    live = RedisServer()
    live.start()
    urls = [live.url, f"redis://127.0.0.1:{silent.getsockname()[1]}/0"]
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": urls, "prefix": PREFIX}}
    }
    channel_layers.backends.clear()
    candidates = [f"topic.{i}" for i in range(100)]
    on_live = next(t for t in candidates if topic_shard(t, 2, PREFIX) == 0)
    on_silent = next(t for t in candidates if topic_shard(t, 2, PREFIX) == 1)
    listener = RedisPubSubChannelLayer(hosts=[live.url], prefix=PREFIX)
    publisher = HintPublisher()
    try:
        channel = await listener.new_channel()
        await listener.group_add(topic_group(on_live), channel)
        publisher.submit(on_silent, 1, "e")
        hanging = lambda: sum(lane.in_flight for lane in publisher._lanes.values()) == 1  # noqa: E731
        await wait_until(hanging, timeout=10, message="shard 1's publish under way")
        publisher.submit(on_live, 1, "e")
        message = await asyncio.wait_for(listener.receive(channel), 20)
        assert message["topic"] == on_live
        assert hanging()  # shard 1's publish still hangs
    finally:
        await listener.flush()
        channel_layers.backends.clear()
        live.close()
        silent.close()

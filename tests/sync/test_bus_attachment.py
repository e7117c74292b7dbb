"""The hub's bus subscription (``khala_project.bus.Subscription``) against a Redis of the test's own:
it runs while Redis is down, attaches when Redis comes up, notices Redis dying after that (the probe),
and re-attaches with every followed topic's group and the revocation group."""

from __future__ import annotations

import asyncio
import random

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from khala_project.bus import REVOCATIONS_GROUP, Subscription, hint_message, revoked_message, topic_group
from tests.support.private_services import RedisServer
from tests.support.waiting import wait_until


def layer_for(redis: RedisServer) -> RedisPubSubChannelLayer:
    return RedisPubSubChannelLayer(hosts=[redis.url], prefix="bus_attach_test")


def test_retry_delays_double_up_to_the_cap_with_jitter():
    subscription = Subscription(layer=object(), rng=random.Random(7), retry_initial=0.2, retry_max=5.0)
    delays = subscription.retry_delays()
    first = [next(delays) for _ in range(12)]
    bases = [0.2, 0.4, 0.8, 1.6, 3.2] + [5.0] * 7
    assert all(0.5 * base <= delay <= 1.5 * base for delay, base in zip(first, bases)), first
    assert len(set(first)) == len(first)  # jittered, not a fixed schedule


async def test_attaches_when_redis_comes_up_and_reattaches_after_it_dies():
    redis = RedisServer()  # not started: the worker starts during an outage
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(min(seconds, 0.05))

    received: list[dict] = []
    attached_calls: list[int] = []
    subscription = Subscription(
        layer_for(redis), rng=random.Random(1), sleep=recording_sleep,
        probe_interval=0.2, probe_timeout=1.0, retry_initial=0.05, retry_max=0.2, attach_timeout=1.0,
    )
    await subscription.follow("topic.a")  # followed before the bus is reachable
    task = asyncio.create_task(subscription.run(received.append, lambda: attached_calls.append(1)))
    publisher = layer_for(redis)
    try:
        await wait_until(lambda: len(sleeps) >= 3, timeout=20, message="attach attempts while Redis is down")
        assert not subscription.attached and subscription.attachments == 0

        redis.start()
        await wait_until(lambda: subscription.attached, timeout=20, message="attached once Redis is up")
        await subscription.follow("topic.b")  # followed while attached

        async def delivered(group: str, message: dict) -> bool:
            await publisher.group_send(group, message)
            return message in received

        for group, message in (
            (topic_group("topic.a"), hint_message("topic.a", 1, "e1")),
            (topic_group("topic.b"), hint_message("topic.b", 1, "e1")),
            (REVOCATIONS_GROUP, revoked_message(["s1"], [], "user_requested")),
        ):
            await wait_until(lambda: delivered(group, message), timeout=10, interval=0.1, message=f"delivery on {group}")

        redis.stop()  # dies after the attach: only the probe can tell
        await wait_until(lambda: not subscription.attached, timeout=20, message="the dead subscription noticed")
        redis.start()
        await wait_until(lambda: subscription.attached and subscription.attachments == 2, timeout=20, message="re-attached")
        assert len(attached_calls) == 2
        await publisher.flush()  # its connection died with the first Redis
        for group, message in (
            (topic_group("topic.a"), hint_message("topic.a", 2, "e1")),
            (topic_group("topic.b"), hint_message("topic.b", 2, "e1")),
            (REVOCATIONS_GROUP, revoked_message(["s2"], [], "user_requested")),
        ):
            await wait_until(lambda: delivered(group, message), timeout=10, interval=0.1, message=f"delivery on {group} after re-attach")

        await subscription.unfollow("topic.a")
        assert subscription.topics == {"topic.b"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscription.close()
        for layer in (publisher, subscription.layer):
            try:
                await layer.flush()
            except Exception:
                pass
        redis.close()


@pytest.mark.django_db(transaction=True)
async def test_a_hub_starts_without_redis():
    from sync.hub import Hub

    redis = RedisServer()  # never started
    hub = Hub(layer=layer_for(redis))
    try:
        await asyncio.wait_for(hub.start(), 10)
        assert hub.started and not hub.bus.attached
    finally:
        await hub.stop()


@pytest.mark.django_db(transaction=True)
async def test_the_head_check_runs_more_often_while_the_subscription_is_down(settings):
    """Without Redis the head check is how every update arrives: its interval shrinks from
    HEAD_CHECK_INTERVAL_SECONDS to HEAD_CHECK_DETACHED_INTERVAL_SECONDS until the bus attaches."""
    from sync.hub import Hub

    settings.KHALA = {"HEAD_CHECK_INTERVAL_SECONDS": 1.0, "HEAD_CHECK_DETACHED_INTERVAL_SECONDS": 0.2,
                      "BUS_PROBE_INTERVAL_SECONDS": 0.2, "BUS_RETRY_MAX_SECONDS": 0.2}
    redis = RedisServer()
    hub = Hub(layer=layer_for(redis))
    try:
        await asyncio.wait_for(hub.start(), 10)
        assert not hub.bus.attached and hub.head_check_interval() == 0.2
        redis.start()
        await wait_until(lambda: hub.bus.attached, timeout=20, message="the bus to attach")
        assert hub.head_check_interval() == 1.0
    finally:
        await hub.stop()
        redis.close()

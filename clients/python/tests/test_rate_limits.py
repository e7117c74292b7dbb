"""The client against a REAL server's admission limits: each refusal's hint reaches the client's
retry (and the app, as ``RateLimited`` or ``Reconnecting.retry_after_ms``) instead of the client
coming back on its own jitter and being refused again.

Each limit is set to one per window of ~30 years: the second request is refused whatever the clock
says (windows are clock-aligned, so a short one could end between the two requests), and its hint
is then far beyond any test, so seeing the client wait for it is deterministic. The waits
themselves (at least the hint, then the retry succeeding) are covered with short hints against a
scripted peer in ``test_client_unit.py``.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from khala_client import ErrorEvent, KhalaClient, RateLimited, Reconnecting, State

from conftest import db, wait_until

RUNS = "runtime.run_summaries"
WORKERS = "runtime.codex_worker_summaries"
FOREVER = 1_000_000_000.0


@pytest.fixture
def limited(khala_env, settings):
    """``limited(**limits)``: start khala_env's server with these limits, counted in a Redis key
    space of this test only (the counters of a 30-year window must not outlive it)."""
    settings.KHALA_CHANNEL_PREFIX = f"{settings.KHALA_CHANNEL_PREFIX}_t{uuid.uuid4().hex[:8]}"
    prefix = settings.KHALA_CHANNEL_PREFIX

    def start(**limits):
        khala_env.khala.update(limits)
        khala_env.start()
        return khala_env

    yield start
    khala_env.stop()
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def recorded(client):
    events = []
    client.on_event = events.append
    return events


async def first_event(events, kind, message):
    """The first event of ``kind`` the client reported, waiting for it."""
    return await wait_until(lambda: next((e for e in events if isinstance(e, kind)), None), timeout=30, message=message)


async def two_clients_of_one_user(env, username):
    _, api_token, _ = await db(env.make_user, username)
    return [KhalaClient(env.url, env.token_provider(api_token, scopes=[RUNS]), topics=[RUNS]) for _ in range(2)]


async def test_a_connection_flood_refusal_floors_the_reconnect_delay(limited):
    env = limited(LIMIT_CONNECTS_PER_IP=[1, FOREVER])
    first, second = await two_clients_of_one_user(env, "flood")
    events = recorded(second)
    first.start()
    try:
        await first.wait_live(timeout=30)
        second.start()  # same address: refused with a rate_limited push, then close 4429
        reconnect = await first_event(events, Reconnecting, "the refused client schedules its reconnect")
        assert reconnect.reason == "rate_limited" and reconnect.retry_after_ms > 60_000
        assert reconnect.delay >= reconnect.retry_after_ms / 1000, "never sooner than the server said"
        assert second.state == State.RECONNECTING and len(second.connect_attempts) == 1
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_join_refused_per_user_waits_on_its_open_socket(limited):
    env = limited(LIMIT_CONNECTS_PER_USER=[1, FOREVER])
    first, second = await two_clients_of_one_user(env, "joins")
    events = recorded(second)
    first.start()
    try:
        await first.wait_live(timeout=30)
        second.start()
        limited_join = await first_event(events, RateLimited, "the refused join waits for its hint")
        assert (limited_join.request, limited_join.limit) == ("phx_join", "connects_per_user")
        assert limited_join.retry_after_ms > 60_000 and limited_join.delay >= limited_join.retry_after_ms / 1000
        assert len(second.connect_attempts) == 1 and second.state == State.CONNECTING  # no new socket for it
        assert not [e for e in events if isinstance(e, Reconnecting)]
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_subscribe_refused_per_socket_waits_its_hint(limited):
    env = limited(LIMIT_SUBSCRIBES_PER_SOCKET=[1, FOREVER])
    _, api_token, _ = await db(env.make_user, "subscribes")
    client = KhalaClient(env.url, env.token_provider(api_token, scopes=[RUNS, WORKERS]), topics=[RUNS])
    events = recorded(client)
    client.start()
    adding = None
    try:
        await client.wait_live(timeout=30)
        adding = asyncio.ensure_future(client.subscribe(WORKERS))  # the socket's second subscribe
        refusal = await first_event(events, RateLimited, "the refused subscribe waits for its hint")
        assert (refusal.request, refusal.limit) == ("sync:subscribe", "subscribes_per_socket")
        assert refusal.retry_after_ms > 60_000 and not adding.done()
        assert client.state == State.LIVE and client.connects == 1  # the socket carries on meanwhile
    finally:
        if adding is not None:
            adding.cancel()
        await client.close()


async def test_a_hydration_answered_429_waits_its_retry_after(limited):
    from projector.models import TopicSequence

    env = limited(LIMIT_HYDRATIONS_PER_TOKEN=[1, FOREVER])
    _, api_token, owner = await db(env.make_user, "hydrations")
    await db(lambda: TopicSequence.objects.filter(topic=WORKERS).update(force_pointer_mode=True))
    await db(env.write_many, [(WORKERS, f"cw/{i}", 1, {"i": i}, owner) for i in range(2)])
    client = KhalaClient(env.url, env.token_provider(api_token, scopes=[WORKERS]), topics=[WORKERS])
    events = recorded(client)
    client.start()
    try:
        refusal = await first_event(events, RateLimited, "the second hydration waits for its Retry-After")
        assert refusal.request == "hydration" and refusal.retry_after_ms > 60_000
        assert refusal.delay >= refusal.retry_after_ms / 1000
        # the pointer is not given up on (and the cursor does not pass it) while the client waits
        assert not [e for e in events if isinstance(e, ErrorEvent)]
        assert client.watermark(WORKERS) == 0
    finally:
        await client.close()

"""khala_project.ratelimit: fixed windows and leases on the real Redis, shared between limiters
(= workers), atomic under concurrency, and the per-process fallback when Redis is unreachable —
including a Redis of the test's own that is stopped and started again. Time is a fake clock."""

import asyncio
import threading

import pytest

from khala_project import ratelimit
from khala_project.metrics import ADMISSION_DECISIONS
from khala_project.ratelimit import Limiter

DEAD_REDIS = "redis://127.0.0.1:9/0"  # discard port: connection refused at once


@pytest.fixture
def shared(settings, key_prefix, clock):
    """Two limiters on the run's Redis with the same prefix: what two workers see."""
    return [Limiter(settings.REDIS_URL, key_prefix, clock=clock) for _ in range(2)]


def outcomes(decisions):
    return [d.allowed for d in decisions]


def test_a_fixed_window_admits_limit_events_then_refuses_until_it_ends(shared, clock):
    limiter = shared[0]
    clock.now = 1_000_000.0 + 2.5  # 2.5 s into a 10 s window
    decisions = [limiter.check("u:1", 3, 10.0) for _ in range(4)]
    assert outcomes(decisions) == [True, True, True, False]
    assert {d.backend for d in decisions} == {"redis"}
    assert decisions[-1].retry_after == pytest.approx(7.5)
    assert decisions[-1].retry_after_seconds == 8
    clock.advance(7.5)  # the next window
    assert limiter.check("u:1", 3, 10.0).allowed


def test_two_workers_share_one_count(shared):
    first, second = shared
    results = [worker.check("u:2", 4, 60.0).allowed for _ in range(3) for worker in (first, second)]
    assert results == [True, True, True, True, False, False]


def test_subjects_are_counted_apart(shared):
    limiter = shared[0]
    assert limiter.check("u:a", 1, 60.0).allowed and limiter.check("u:b", 1, 60.0).allowed
    assert not limiter.check("u:a", 1, 60.0).allowed


def test_concurrent_checks_admit_exactly_the_limit(settings, key_prefix):
    """Eight threads, each its own limiter and connection: INCR in one script is atomic."""
    limiters = [Limiter(settings.REDIS_URL, key_prefix) for _ in range(8)]
    admitted = []
    lock = threading.Lock()

    def hammer(limiter):
        mine = sum(limiter.check("u:race", 100, 3600.0).allowed for _ in range(40))
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=hammer, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 100


def test_async_checks_share_the_count_with_sync_ones(shared):
    limiter = shared[0]

    async def main():
        return [(await limiter.acheck("u:3", 3, 60.0)).allowed for _ in range(2)]

    assert limiter.check("u:3", 3, 60.0).allowed
    assert asyncio.run(main()) == [True, True]
    assert not shared[1].check("u:3", 3, 60.0).allowed


def test_a_burst_of_concurrent_async_checks_stays_shared(settings, key_prefix):
    """A reconnect storm makes hundreds of admission checks wait on Redis at once in one worker.
    They queue for the limiter's connections; none of them may count in the per-process fallback
    (an exhausted connection pool is not an unreachable Redis: treated as one, a worker's limits
    stopped being shared for the next 5 s, doubling what an address could get across 2 workers)."""
    limiter = Limiter(settings.REDIS_URL, key_prefix)

    async def main():
        return await asyncio.gather(*(limiter.acheck("ip:burst", 250, 60.0) for _ in range(400)))

    decisions = asyncio.run(main())
    assert {d.backend for d in decisions} == {"redis"}
    assert sum(d.allowed for d in decisions) == 250


def test_without_redis_limits_are_per_process_never_off(clock):
    limiter = Limiter(DEAD_REDIS, "t", clock=clock)
    decisions = [limiter.check("u:4", 2, 10.0) for _ in range(3)]
    assert outcomes(decisions) == [True, True, False]
    assert {d.backend for d in decisions} == {"local"}
    unset = Limiter(None, "t", clock=clock)
    assert outcomes([unset.check("u:4", 2, 10.0) for _ in range(3)]) == [True, True, False]


def test_redis_going_away_and_coming_back(private_redis, clock):
    limiter = Limiter(private_redis.url, "t", clock=clock, retry_seconds=5.0)
    assert limiter.check("u:5", 2, 60.0).backend == "redis"
    assert limiter.check("u:5", 2, 60.0).allowed
    assert not limiter.check("u:5", 2, 60.0).allowed  # the shared count is full

    private_redis.stop()
    degraded = [limiter.check("u:5", 2, 60.0) for _ in range(3)]
    assert [d.backend for d in degraded] == ["local"] * 3
    assert outcomes(degraded) == [True, True, False]  # per-process count: looser, still a limit

    private_redis.start()
    clock.advance(4.9)
    assert limiter.check("u:5", 2, 60.0).backend == "local"  # not retried within the period
    clock.advance(0.1)
    back = limiter.check("u:6", 2, 60.0)
    assert back.backend == "redis" and back.allowed


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_leases_cap_concurrent_holders(settings, key_prefix, clock, backend):
    url = settings.REDIS_URL if backend == "redis" else None
    limiter = Limiter(url, key_prefix, clock=clock)
    assert [limiter.acquire("user:1", f"s{i}", 2, 90.0).allowed for i in (1, 2)] == [True, True]
    clock.advance(30)
    refused = limiter.acquire("user:1", "s3", 2, 90.0)
    assert not refused.allowed and refused.backend == backend
    assert refused.retry_after == pytest.approx(60.0)  # when the oldest lease lapses
    assert limiter.renew("user:1", "s1", 2, 90.0).allowed  # a holder is never refused its renewal
    limiter.release("user:1", "s2")
    assert limiter.acquire("user:1", "s3", 2, 90.0).allowed
    assert not limiter.acquire("user:1", "s4", 2, 90.0).allowed
    clock.advance(91)  # s1 and s3 lapse: a worker that died without releasing stops counting
    assert limiter.acquire("user:1", "s4", 2, 90.0).allowed


def test_leases_are_shared_between_workers(shared):
    first, second = shared
    assert first.acquire("user:9", "w1-s1", 1, 90.0).allowed
    assert not second.acquire("user:9", "w2-s1", 1, 90.0).allowed
    first.release("user:9", "w1-s1")
    assert second.acquire("user:9", "w2-s1", 1, 90.0).allowed


def test_async_leases(shared):
    limiter = shared[0]

    async def main():
        got = (await limiter.aacquire("user:10", "a", 1, 90.0)).allowed
        refused = (await limiter.aacquire("user:10", "b", 1, 90.0)).allowed
        await limiter.arelease("user:10", "a")
        again = (await limiter.aacquire("user:10", "b", 1, 90.0)).allowed
        return got, refused, again

    assert asyncio.run(main()) == (True, False, True)


# --- named limits --------------------------------------------------------------------------------


def counter(limit, outcome, backend):
    return ADMISSION_DECISIONS.labels(limit=limit, outcome=outcome, backend=backend)._value.get()


def test_admit_applies_the_setting_and_counts_outcomes(settings, key_prefix, clock):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_CONNECTS_PER_IP": [2, 10.0]}
    limiter = Limiter(settings.REDIS_URL, key_prefix, clock=clock)
    before = counter("connects_per_ip", "allowed", "redis"), counter("connects_per_ip", "limited", "redis")
    decisions = [ratelimit.admit("connects_per_ip", "10.0.0.1", limiter=limiter) for _ in range(3)]
    assert outcomes(decisions) == [True, True, False]
    assert counter("connects_per_ip", "allowed", "redis") == before[0] + 2
    assert counter("connects_per_ip", "limited", "redis") == before[1] + 1


def test_a_limit_set_to_none_is_off(settings, clock):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_JOINS_PER_SOCKET": None}
    limiter = Limiter(None, "t", clock=clock)
    assert all(ratelimit.admit("joins_per_socket", "sock", limiter=limiter).allowed for _ in range(100))


def test_socket_leases_through_the_named_api(settings, key_prefix, clock):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_SOCKETS_PER_USER": 1, "SOCKET_LEASE_SECONDS": 30.0}
    limiter = Limiter(settings.REDIS_URL, key_prefix, clock=clock)

    async def main():
        first = await ratelimit.aacquire_socket("user:1", "sock-1", limiter=limiter)
        second = await ratelimit.aacquire_socket("user:1", "sock-2", limiter=limiter)
        renewed = await ratelimit.arenew_socket("user:1", "sock-1", limiter=limiter)
        await ratelimit.arelease_socket("user:1", "sock-1", limiter=limiter)
        third = await ratelimit.aacquire_socket("user:1", "sock-2", limiter=limiter)
        return first.allowed, second.allowed, second.retry_after, renewed.allowed, third.allowed

    assert asyncio.run(main()) == (True, False, 30.0, True, True)


def test_aadmit_for_per_socket_limits_with_a_local_limiter(settings, clock):
    """joins/subscribes per socket live in the socket's own process: a Limiter(None) per socket."""
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_SUBSCRIBES_PER_SOCKET": [3, 1.0]}
    per_socket = Limiter(None, "sock", clock=clock)

    async def main():
        return [(await ratelimit.aadmit("subscribes_per_socket", "s", limiter=per_socket)).allowed for _ in range(4)]

    assert asyncio.run(main()) == [True, True, True, False]
    clock.advance(1.0)
    assert asyncio.run(main())[0] is True


@pytest.mark.parametrize("bad", ["30/60", [0, 60], [5, 0], [5], [True, 60], [5, "60"], {"count": 5}])
def test_a_malformed_limit_setting_falls_back_to_the_default_never_off(settings, clock, bad, caplog):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_TOKEN_MINTS_PER_USER": bad}
    assert ratelimit.limit_of("token_mints_per_user") == (30, 60.0)
    assert "LIMIT_TOKEN_MINTS_PER_USER" in caplog.text
    limiter = Limiter(None, "t", clock=clock)
    assert outcomes([ratelimit.admit("token_mints_per_user", "u", limiter=limiter) for _ in range(31)])[-1] is False


@pytest.mark.parametrize("bad", [0, -1, "50", 2.5])
def test_a_malformed_sockets_limit_falls_back_to_the_default(settings, bad):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "LIMIT_SOCKETS_PER_USER": bad}
    assert ratelimit.sockets_limit() == 50

"""Admission control: fixed-window rate limits and concurrency leases, shared by every worker through
Redis, and counted per process while Redis is unreachable (degraded, never unlimited).

Why here and not in an app: token mints (``tokens``), HTTP hydration and the socket (``sync``) all
ask it, and ``tokens`` sits below ``sync`` (sync imports tokens, never the reverse), so the limiter
is project infrastructure like ``conf.py`` and ``api_errors.py``.

Two primitives, both answering a ``Decision(allowed, retry_after, backend)``:

- ``Limiter.check(key, limit, window)``: at most ``limit`` events per fixed window of ``window``
  seconds (windows are aligned on the clock: ``floor(now / window)``). In Redis one Lua script does
  ``INCR`` and, on the window's first event, ``PEXPIRE``, so every worker counts into the same key
  atomically. A fixed window can admit up to 2 × ``limit`` across a window boundary; that is the
  price of one round trip and one key per (subject, window), and the limits are sized for it.
  ``retry_after`` = time until the window ends.
- ``Limiter.acquire(key, holder, limit, lease)`` / ``renew`` / ``release``: at most ``limit``
  holders at once (open sockets of a user). Each holder is a member of a sorted set scored by its
  lease expiry; expired leases are dropped before counting, so a worker that dies without
  releasing stops counting after ``lease`` seconds. ``retry_after`` = time until the oldest lease
  lapses (an upper bound: a closing socket frees its place sooner).

Degradation: any Redis error switches the limiter to its per-process counters for
``RATE_LIMIT_REDIS_RETRY_SECONDS``, then Redis is tried again. While degraded each worker enforces
the full limit on its own, so a cluster of N workers admits at most N × limit: looser, never open.
Redis calls use short timeouts (``REDIS_TIMEOUT_SECONDS``) so an unreachable Redis costs one timeout
per retry period, not one per request.

``admit(name, subject)`` / ``aadmit`` apply a named limit from the settings (``LIMITS``) with the
process's default limiter and count the outcome in ``khala_admission_decisions_total``. Time is
``clock`` (injectable per limiter); tests drive windows and leases with a fake one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio

from khala_project.conf import DEFAULTS, khala_setting
from khala_project.metrics import ADMISSION_DECISIONS

logger = logging.getLogger("khala.admission")

REDIS_TIMEOUT_SECONDS = 0.5
# Redis calls of one event loop in flight at once; the others wait for one of them to finish. A
# reconnect storm puts hundreds of admission checks on a worker's loop at once: with no bound they
# exhausted redis-py's pool (100 connections), and its MaxConnectionsError, taken for an unreachable
# Redis, made the worker count per process for RATE_LIMIT_REDIS_RETRY_SECONDS.
ASYNC_REDIS_CALLS = 32
_NO_ANSWER = object()

# Named limits: name -> the KHALA setting holding [count, window seconds] (None turns it off).
# The name is the metric label and part of the Redis key.
LIMITS = {
    "token_mints_per_user": "LIMIT_TOKEN_MINTS_PER_USER",
    "hydrations_per_token": "LIMIT_HYDRATIONS_PER_TOKEN",
    "connects_per_ip": "LIMIT_CONNECTS_PER_IP",
    "connects_per_user": "LIMIT_CONNECTS_PER_USER",
    "joins_per_socket": "LIMIT_JOINS_PER_SOCKET",
    "subscribes_per_socket": "LIMIT_SUBSCRIBES_PER_SOCKET",
}
# The concurrency limit (a count, not a rate) and its lease.
SOCKETS_PER_USER = "sockets_per_user"

# KEYS[1] = the window's counter; ARGV[1] = its lifetime in ms. Returns the count so far.
_WINDOW_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"""

# KEYS[1] = the holders' sorted set; ARGV = now ms, lease ms, limit, holder.
# Returns {1, 0} when admitted (or renewed), {0, ms until the oldest lease lapses} when full.
_LEASE_SCRIPT = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) - now}
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease)
return {1, 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Seconds until a retry can succeed; 0.0 when allowed.
    retry_after: float
    # "redis" (shared by every worker) or "local" (this process only: Redis unreachable or unset).
    backend: str

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds for an HTTP ``Retry-After`` (rounded up, at least 1 when refused)."""
        return 0 if self.allowed else max(1, math.ceil(self.retry_after))


class LocalCounters:
    """The per-process fallback: the same windows and leases in dicts, under one lock (HTTP views
    run in threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window index, count)
        self._leases: dict[str, dict[str, float]] = {}  # key -> {holder: expires at}

    def hit(self, key: str, index: int) -> int:
        with self._lock:
            current, count = self._windows.get(key, (index, 0))
            count = count + 1 if current == index else 1
            self._windows[key] = (index, count)
            if len(self._windows) > 100_000:  # bound memory under a flood of distinct subjects
                self._windows = {k: v for k, v in self._windows.items() if v[0] >= index}
            return count

    def acquire(self, key: str, holder: str, limit: int, now: float, lease: float) -> float | None:
        """None when admitted, else seconds until the oldest lease lapses."""
        with self._lock:
            holders = {h: exp for h, exp in self._leases.get(key, {}).items() if exp > now}
            if holder not in holders and len(holders) >= limit:
                self._leases[key] = holders
                return min(holders.values()) - now
            holders[holder] = now + lease
            self._leases[key] = holders
            return None

    def release(self, key: str, holder: str) -> None:
        with self._lock:
            holders = self._leases.get(key)
            if holders is not None:
                holders.pop(holder, None)
                if not holders:
                    del self._leases[key]


class Limiter:
    """Rate limits and leases in Redis (``redis_url``), per process when it is unset or unreachable."""

    def __init__(self, redis_url: str | None, prefix: str = "khala", *, clock=time.time, retry_seconds: float = 5.0):
        self.redis_url = redis_url or None
        self.prefix = prefix
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.local = LocalCounters()
        self._redis_down_until = 0.0
        self._client = None
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> client
        self._lock = threading.Lock()

    # --- keys ---------------------------------------------------------------------------------

    def _window_key(self, key: str, window: float, now: float) -> tuple[str, int, float]:
        index = int(now // window)
        retry_after = (index + 1) * window - now
        return f"{self.prefix}:rl:{key}:{index}", index, retry_after

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}:lease:{key}"

    # --- Redis availability ---------------------------------------------------------------------

    def _use_redis(self) -> bool:
        return self.redis_url is not None and self.clock() >= self._redis_down_until

    def _redis_failed(self, exc: Exception) -> None:
        if self.clock() >= self._redis_down_until:
            logger.warning(
                "rate limits: Redis unreachable (%s); counting per process for %.0f s", type(exc).__name__, self.retry_seconds
            )
        self._redis_down_until = self.clock() + self.retry_seconds

    def _sync_client(self):
        with self._lock:
            if self._client is None:
                client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
                )
                self._client = (client.register_script(_WINDOW_SCRIPT), client.register_script(_LEASE_SCRIPT), client)
            return self._client

    def _async_client(self) -> "_AsyncRedis":
        loop = asyncio.get_running_loop()
        found = self._aclients.get(loop)
        if found is None:
            client = redis.asyncio.Redis.from_url(
                self.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                max_connections=ASYNC_REDIS_CALLS,
            )
            found = self._aclients[loop] = _AsyncRedis(
                client.register_script(_WINDOW_SCRIPT), client.register_script(_LEASE_SCRIPT), client,
                asyncio.Semaphore(ASYNC_REDIS_CALLS),
            )
        return found

    async def _on_redis(self, call):
        """``await call(redis)`` for the async methods, or ``_NO_ANSWER`` when Redis is not used or
        failed (the caller then counts per process). At most ``ASYNC_REDIS_CALLS`` at a time."""
        if not self._use_redis():
            return _NO_ANSWER
        found = self._async_client()
        async with found.slots:
            if not self._use_redis():  # it failed while this call waited for a connection
                return _NO_ANSWER
            try:
                return await call(found)
            except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
                self._redis_failed(exc)
                return _NO_ANSWER

    # --- rate: check ------------------------------------------------------------------------------

    def check(self, key: str, limit: int, window: float) -> Decision:
        """Count one event for ``key``; allowed while at most ``limit`` happened in this window."""
        now = self.clock()
        redis_key, index, retry_after = self._window_key(key, window, now)
        if self._use_redis():
            window_script = self._sync_client()[0]
            try:
                count = int(window_script(keys=[redis_key], args=[_ms(window) + 1000]))
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                return _rate_decision(count, limit, retry_after, "redis")
        return _rate_decision(self.local.hit(redis_key, index), limit, retry_after, "local")

    async def acheck(self, key: str, limit: int, window: float) -> Decision:
        """``check`` for async callers (the socket): one Redis round trip on the loop, no thread."""
        now = self.clock()
        redis_key, index, retry_after = self._window_key(key, window, now)
        count = await self._on_redis(lambda r: r.window(keys=[redis_key], args=[_ms(window) + 1000]))
        if count is not _NO_ANSWER:
            return _rate_decision(int(count), limit, retry_after, "redis")
        return _rate_decision(self.local.hit(redis_key, index), limit, retry_after, "local")

    # --- concurrency: acquire / renew / release ------------------------------------------------------

    def acquire(self, key: str, holder: str, limit: int, lease: float) -> Decision:
        """Take (or renew) ``holder``'s place among at most ``limit`` holders of ``key`` for ``lease`` s."""
        now = self.clock()
        if self._use_redis():
            lease_script = self._sync_client()[1]
            try:
                admitted, wait_ms = lease_script(keys=[self._lease_key(key)], args=[_ms(now), _ms(lease), limit, holder])
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                return Decision(bool(admitted), 0.0 if admitted else max(0.0, int(wait_ms) / 1000), "redis")
        return self._local_acquire(key, holder, limit, now, lease)

    async def aacquire(self, key: str, holder: str, limit: int, lease: float) -> Decision:
        now = self.clock()
        answer = await self._on_redis(lambda r: r.lease(keys=[self._lease_key(key)], args=[_ms(now), _ms(lease), limit, holder]))
        if answer is not _NO_ANSWER:
            admitted, wait_ms = answer
            return Decision(bool(admitted), 0.0 if admitted else max(0.0, int(wait_ms) / 1000), "redis")
        return self._local_acquire(key, holder, limit, now, lease)

    def _local_acquire(self, key, holder, limit, now, lease) -> Decision:
        wait = self.local.acquire(self._lease_key(key), holder, limit, now, lease)
        return Decision(wait is None, 0.0 if wait is None else max(0.0, wait), "local")

    # Renewing is acquiring again: a holder already in the set is never refused.
    renew = acquire
    arenew = aacquire

    def release(self, key: str, holder: str) -> None:
        """Give ``holder``'s place back (both stores: it may have been taken while degraded)."""
        self.local.release(self._lease_key(key), holder)
        if self._use_redis():
            try:
                self._sync_client()[2].zrem(self._lease_key(key), holder)
            except redis.RedisError as exc:
                self._redis_failed(exc)  # the lease lapses on its own

    async def arelease(self, key: str, holder: str) -> None:
        self.local.release(self._lease_key(key), holder)
        await self._on_redis(lambda r: r.client.zrem(self._lease_key(key), holder))  # else the lease lapses on its own


@dataclass(frozen=True, slots=True)
class _AsyncRedis:
    """One event loop's Redis client, its two scripts, and the bound on its calls in flight."""

    window: object
    lease: object
    client: redis.asyncio.Redis
    slots: asyncio.Semaphore


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _rate_decision(count: int, limit: int, retry_after: float, backend: str) -> Decision:
    allowed = count <= limit
    return Decision(allowed, 0.0 if allowed else retry_after, backend)


# --- the process's limiter and the named limits ------------------------------------------------

_default: dict[tuple, Limiter] = {}
_default_lock = threading.Lock()


def default_limiter() -> Limiter:
    """The limiter of this process, on ``REDIS_URL`` with the deployment's ``KHALA_CHANNEL_PREFIX``.
    With several Redis shards, on the first one: limits are counters every worker must share, and
    they are small (a few keys per user and window); when that Redis is down the limiter counts per
    process (``_redis_failed``), as with one Redis."""
    from django.conf import settings

    from khala_project.bus import redis_urls

    config = (
        (redis_urls(getattr(settings, "REDIS_URL", "") or "") or [None])[0],
        getattr(settings, "KHALA_CHANNEL_PREFIX", "khala"),
        float(khala_setting("RATE_LIMIT_REDIS_RETRY_SECONDS")),
    )
    with _default_lock:
        limiter = _default.get(config)
        if limiter is None:
            limiter = _default[config] = Limiter(config[0], config[1], retry_seconds=config[2])
        return limiter


def parse_limit(value) -> tuple[int, float] | None:
    """``[count, window seconds]`` → ``(count, window)``; None stays None (off). ``ValueError`` names
    what is wrong with anything else."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("must be [count, window seconds] or null")
    count, window = value
    if type(count) is not int or count < 1:
        raise ValueError("count must be a positive integer")
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
        raise ValueError("window must be a positive number of seconds")
    return count, float(window)


def limit_of(name: str) -> tuple[int, float] | None:
    """``(count, window seconds)`` of the named limit, or None when it is turned off.

    A malformed setting falls back to the documented default (and says so in the log): a typo in a
    deployment must neither take the endpoint down nor lift the limit.
    """
    setting = LIMITS[name]
    try:
        return parse_limit(khala_setting(setting))
    except ValueError as exc:
        logger.error("KHALA[%r] is malformed (%s); using the default %r", setting, exc, DEFAULTS[setting])
        return parse_limit(DEFAULTS[setting])


def _counted(name: str, decision: Decision) -> Decision:
    ADMISSION_DECISIONS.labels(
        limit=name, outcome="allowed" if decision.allowed else "limited", backend=decision.backend
    ).inc()
    return decision


ALLOWED_OFF = Decision(True, 0.0, "off")


def admit(name: str, subject: str, *, limiter: Limiter | None = None) -> Decision:
    """Apply the named limit to ``subject`` (a user id, IP, token jti, socket id …) and count it."""
    limit = limit_of(name)
    if limit is None:
        return ALLOWED_OFF
    return _counted(name, (limiter or default_limiter()).check(f"{name}:{subject}", *limit))


async def aadmit(name: str, subject: str, *, limiter: Limiter | None = None) -> Decision:
    limit = limit_of(name)
    if limit is None:
        return ALLOWED_OFF
    return _counted(name, await (limiter or default_limiter()).acheck(f"{name}:{subject}", *limit))


def sockets_limit() -> int | None:
    """``LIMIT_SOCKETS_PER_USER`` (None: off); malformed → the default, logged, as for rates."""
    value = khala_setting("LIMIT_SOCKETS_PER_USER")
    if value is None or (type(value) is int and value >= 1):
        return value
    logger.error("KHALA['LIMIT_SOCKETS_PER_USER'] is malformed (%r); using the default", value)
    return DEFAULTS["LIMIT_SOCKETS_PER_USER"]


async def aacquire_socket(user_subject: str, socket_id: str, *, limiter: Limiter | None = None) -> Decision:
    """Take one of ``LIMIT_SOCKETS_PER_USER`` places for this socket (``arenew_socket`` on each
    heartbeat tick, ``arelease_socket`` at close)."""
    limit = sockets_limit()
    if limit is None:
        return ALLOWED_OFF
    decision = await (limiter or default_limiter()).aacquire(
        f"{SOCKETS_PER_USER}:{user_subject}", socket_id, int(limit), float(khala_setting("SOCKET_LEASE_SECONDS"))
    )
    return _counted(SOCKETS_PER_USER, decision)


async def arenew_socket(user_subject: str, socket_id: str, *, limiter: Limiter | None = None) -> Decision:
    """Extend this socket's lease (not counted in the metric: it is not an admission)."""
    limit = sockets_limit()
    if limit is None:
        return ALLOWED_OFF
    return await (limiter or default_limiter()).arenew(
        f"{SOCKETS_PER_USER}:{user_subject}", socket_id, int(limit), float(khala_setting("SOCKET_LEASE_SECONDS"))
    )


async def arelease_socket(user_subject: str, socket_id: str, *, limiter: Limiter | None = None) -> None:
    await (limiter or default_limiter()).arelease(f"{SOCKETS_PER_USER}:{user_subject}", socket_id)


def overview() -> list[dict]:
    """Each limit's setting and this process's decisions since start, for the admin overview."""
    counts: dict[tuple[str, str], float] = {}
    for metric in ADMISSION_DECISIONS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["limit"], sample.labels["outcome"])
                counts[key] = counts.get(key, 0) + sample.value
                if sample.labels["backend"] == "local":
                    counts[(sample.labels["limit"], "local")] = counts.get((sample.labels["limit"], "local"), 0) + sample.value
    rows = []
    for name, setting in [*LIMITS.items(), (SOCKETS_PER_USER, "LIMIT_SOCKETS_PER_USER")]:
        if name == SOCKETS_PER_USER:
            value = sockets_limit()
            shown = "off" if value is None else f"{value} open at once"
        else:
            value = limit_of(name)
            shown = "off" if value is None else f"{value[0]} per {value[1]:g} s"
        rows.append(
            {
                "name": name,
                "setting": setting,
                "limit": shown,
                "allowed": int(counts.get((name, "allowed"), 0)),
                "limited": int(counts.get((name, "limited"), 0)),
                "local": int(counts.get((name, "local"), 0)),
            }
        )
    return rows

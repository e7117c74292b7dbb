"""The cross-worker bus: every message one Khala process sends to the others, in one place.

Three kinds of traffic cross process boundaries, all through Redis:

- **Watermark hints** ``{type: "sync.hint", topic, watermark, stream_epoch, lsn?}`` on the channel-layer
  group ``sync_topic.<topic>``: published after commit by the projector (``projector.hints``),
  consumed by every worker's hub (``sync.hub``) that follows the topic.
- **Revocation hints** ``{type: "sync.revoked", session_ids, device_ids, reason}`` on the group
  ``khala.revocations``: published after commit by ``tokens.revocation``, consumed by every hub.
- **Presence records** (plain Redis keys under ``<KHALA_CHANNEL_PREFIX>:``): each worker's record
  of its connections and subscribers, and per-minute stale-cursor counters (``sync.presence``
  writes them, the admin's ``sync.delivery_status`` reads them).

Hints are only hints: the channel layer (channels-redis pub/sub) may drop any of them, and every
consumer has a database re-check that turns a lost hint into a delay (the hub's head check, the
revocation re-check on the heartbeat tick). So ``publish`` never raises: a committed write must not
fail because its hint could not be sent.

Why this module lives in ``khala_project`` and not in ``sync``: the publishers are the write path
(``projector``) and the token service (``tokens``), which are lower layers than delivery and must
not import ``sync``. Every app may import ``khala_project``, so the names, the message shapes and
the publish/subscribe seam have ONE definition here, and swapping or sharding the bus touches this
file only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

HINT_TYPE = "sync.hint"
REVOKED_TYPE = "sync.revoked"
REVOCATIONS_GROUP = "khala.revocations"
HUB_CHANNEL_PREFIX = "khala.hub."


# ---- names and message shapes -----------------------------------------------------------------


def topic_group(topic: str) -> str:
    """Channel-layer group of a topic (group names allow [A-Za-z0-9._-], < 100 chars)."""
    return f"sync_topic.{topic}"


def hint_message(topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> dict:
    """"``topic`` is now at ``watermark``" — never document data. ``lsn``: the primary's WAL
    position right after the commit (an integer, present only when replicas are configured): a
    replica that has replayed that far may serve the read this hint triggers."""
    message = {"type": HINT_TYPE, "topic": topic, "watermark": watermark, "stream_epoch": stream_epoch}
    if lsn is not None:
        message["lsn"] = lsn
    return message


def revoked_message(session_ids: list[str], device_ids: list[str], reason: str) -> dict:
    return {"type": REVOKED_TYPE, "session_ids": session_ids, "device_ids": device_ids, "reason": reason}


def presence_key(prefix: str, worker_id: str) -> str:
    """A worker's presence record (a JSON string with a TTL)."""
    return f"{prefix}:presence:{worker_id}"


def stale_key(prefix: str, topic: str, minute: int) -> str:
    """Stale cursors refused on ``topic`` during ``minute`` (unix time // 60), all workers."""
    return f"{prefix}:stale:{topic}:{minute}"


# ---- publishing (after commit; best effort) -----------------------------------------------------


async def publish(group: str, message: dict) -> None:
    """Send ``message`` to every worker listening on ``group``. Fire-and-forget: the layer may
    drop it, and a failure is logged, never raised (the caller's write is already committed)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group, message)
    except Exception:
        log.warning("could not publish %s to %s", message.get("type"), group, exc_info=True)


def publish_blocking(group: str, message: dict) -> None:
    """``publish`` from synchronous code (one event loop and layer connection per call: fine for a
    rare message such as a revocation; frequent publishers keep their own loop, see
    ``projector.hints.HintPublisher``)."""
    async_to_sync(publish)(group, message)


# ---- subscribing (one per worker: the hub) ------------------------------------------------------

PROBE_TYPE = "khala.bus_probe"


class Subscription:
    """A worker's ONE channel on the bus: the revocation group, plus one topic group per followed
    topic (``follow``/``unfollow`` keep that set whether or not the bus is reachable).

    Attachment is ``run``'s job, for as long as the worker lives, because Redis may be down when
    the worker starts and may die or restart at any time after:

    1. attach: a new channel, the revocation group, then every followed topic's group (topics
       followed meanwhile are added before the subscription counts as attached);
    2. serve: hand every message to ``on_message``; every ``probe_interval`` send a probe to the
       channel itself. A probe not back within ``probe_timeout`` (or any layer error) means the
       subscription is dead — Redis stopped, or restarted and forgot the subscriptions — even
       when the layer's own receiver swallows the error;
    3. detached: reset the layer's connections (``flush``), wait with capped, jittered exponential
       backoff, and attach again.

    Nothing waits on the bus: while detached, hints and revocation messages are simply missed, and
    the hub's database re-checks (journal head check, revocation check on the heartbeat tick) cover
    them; ``on_attached`` lets the hub run those checks at once after each (re)attach.
    """

    def __init__(self, layer=None, *, clock=time.monotonic, rng=None, sleep=asyncio.sleep, probe_interval: float = 1.0,
                 probe_timeout: float = 3.0, retry_initial: float = 0.2, retry_max: float = 5.0, attach_timeout: float = 3.0):
        self.layer = layer if layer is not None else get_channel_layer()
        self.channel: str | None = None
        self.topics: set[str] = set()
        self.attached = False
        self.attachments = 0  # successful attaches so far (the first one included)
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.attach_timeout = attach_timeout
        self._broken = False  # a group change failed while attached: re-attach

    @property
    def enabled(self) -> bool:
        return self.layer is not None

    def retry_delays(self):
        """The waits between attach attempts: doubling from ``retry_initial`` up to ``retry_max``,
        each jittered to 50–150 % so that workers cut off together do not retry together."""
        delay = self.retry_initial
        while True:
            yield delay * (0.5 + self.rng.random())
            delay = min(delay * 2, self.retry_max)

    async def run(self, on_message, on_attached=None) -> None:
        """Attach, serve, and re-attach after any failure, until cancelled."""
        delays = self.retry_delays()
        while True:
            _raise_if_cancelling()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                # races with the inner await's completion, and this loop would then outlive stop().
                async with asyncio.timeout(self.attach_timeout):
                    await self._attach()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus: cannot attach (%s); delivery goes on through the database checks", _brief(exc))
                await self._reset()
                await self.sleep(next(delays))
                continue
            delays = self.retry_delays()
            self.attachments += 1
            log.info("bus: attached (%d topic groups)", len(self.topics))
            if on_attached is not None:
                on_attached()
            try:
                await self._serve(on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus: subscription failed (%s); re-attaching", _brief(exc))
            self.attached = False
            await self._reset()
            await self.sleep(next(delays))

    async def _attach(self) -> None:
        self._broken = False
        self.channel = await self.layer.new_channel(HUB_CHANNEL_PREFIX)
        await self.layer.group_add(REVOCATIONS_GROUP, self.channel)
        added: set[str] = set()
        while pending := self.topics - added:  # topics followed while this ran are added too
            for topic in pending:
                await self.layer.group_add(topic_group(topic), self.channel)
            added |= pending
        self.attached = True  # no await since the last check: no followed topic is missing

    async def _serve(self, on_message) -> None:
        """Returns when the subscription is found dead; raises what the layer raised."""
        # One receive at a time, never cancelled while attached: cancelling a pending receive
        # makes the Redis pub/sub layer unsubscribe the channel.
        receiving: asyncio.Task | None = None
        probe_sent: float | None = None
        next_probe = self.clock() + self.probe_interval
        step = max(min(self.probe_interval, self.probe_timeout) / 4, 0.01)
        try:
            while not self._broken:
                _raise_if_cancelling()
                if receiving is None:
                    receiving = asyncio.ensure_future(self.layer.receive(self.channel))
                done, _ = await asyncio.wait({receiving}, timeout=step)
                if done:
                    message, receiving = receiving.result(), None
                    if message.get("type") == PROBE_TYPE:
                        probe_sent = None
                    else:
                        on_message(message)
                now = self.clock()
                if probe_sent is not None and now - probe_sent > self.probe_timeout:
                    log.warning("bus: probe not back after %.1fs", now - probe_sent)
                    return
                if probe_sent is None and now >= next_probe:
                    probe_sent, next_probe = now, now + self.probe_interval
                    async with asyncio.timeout(self.probe_timeout):
                        await self.layer.send(self.channel, {"type": PROBE_TYPE})
        finally:
            if receiving is not None and not receiving.done():
                receiving.cancel()

    async def _reset(self) -> None:
        """Drop the dead subscription and the layer's connections (the next attach opens new ones)."""
        self.attached = False
        self.channel = None
        flush = getattr(self.layer, "flush", None)
        if flush is None:
            return
        try:
            async with asyncio.timeout(self.attach_timeout):
                await flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("bus: flush failed", exc_info=True)

    async def follow(self, topic: str) -> None:
        self.topics.add(topic)
        if self.attached:
            try:
                await self.layer.group_add(topic_group(topic), self.channel)
            except Exception as exc:
                log.warning("bus: group add failed (%s); re-attaching", _brief(exc))
                self._broken = True

    async def unfollow(self, topic: str) -> None:
        self.topics.discard(topic)
        if self.attached:
            try:
                await self.layer.group_discard(topic_group(topic), self.channel)
            except Exception:  # a stale group only brings hints the hub ignores
                log.debug("bus: group discard failed", exc_info=True)

    async def close(self) -> None:
        if self.channel is None:
            return
        for group in [REVOCATIONS_GROUP] + [topic_group(topic) for topic in self.topics]:
            try:
                async with asyncio.timeout(self.attach_timeout):
                    await self.layer.group_discard(group, self.channel)
            except Exception:
                pass
        self.attached = False
        self.channel = None


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation some awaited library call swallowed (the Redis client can, when
    a cancel lands inside a command), so that ``run`` ends when its task is cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


# ---- presence records (plain Redis keys, best effort) -------------------------------------------


class PresenceWriter:
    """A worker's one Redis connection for its presence record and stale-cursor counters. The
    caller serialises writes (``sync.presence`` runs one flush at a time) and handles failures."""

    def __init__(self, redis_url: str, prefix: str, *, timeout: float):
        self.redis_url = redis_url
        self.prefix = prefix
        self.timeout = timeout
        self._client = None

    def _redis(self):
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.redis_url,
                single_connection_client=True,  # one connection per worker; flushes are serialised
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
        return self._client

    async def write(self, worker_id: str, record: str | None, ttl_ms: int, stale: dict, stale_ttl_seconds: int) -> None:
        """Set the record (with its TTL) and add ``stale`` — ``{(topic, minute): n}`` — to the
        per-minute counters, in one pipeline."""
        pipe = self._redis().pipeline(transaction=False)
        if record is not None:
            pipe.set(presence_key(self.prefix, worker_id), record, px=ttl_ms)
        for (topic, minute), n in stale.items():
            key = stale_key(self.prefix, topic, minute)
            pipe.incrby(key, n)
            pipe.expire(key, stale_ttl_seconds)
        await pipe.execute()

    async def close(self, worker_id: str) -> None:
        """Delete the record (the worker is leaving) and the connection; best effort."""
        client, self._client = self._client, None
        if client is None:
            return
        import asyncio

        try:
            await asyncio.wait_for(client.delete(presence_key(self.prefix, worker_id)), self.timeout)
        except Exception:
            pass
        try:
            await client.aclose()
        except Exception:
            pass


def read_presence(redis_url: str, prefix: str, topics, minutes) -> tuple[list[bytes], dict[str, int]]:
    """The raw presence records of the live workers, and per topic the sum of its stale-cursor
    counters over ``minutes``. Raises the client's error when Redis cannot be read."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = sorted(client.scan_iter(match=presence_key(prefix, "*"), count=1000))
        raw = [value for value in (client.mget(keys) if keys else []) if value is not None]  # None: expired meanwhile
        stale: dict[str, int] = {}
        topics = list(topics)
        if topics:
            pipe = client.pipeline(transaction=False)
            for topic in topics:
                pipe.mget([stale_key(prefix, topic, m) for m in minutes])
            for topic, values in zip(topics, pipe.execute()):
                stale[topic] = sum(int(v) for v in values if v is not None)
        return raw, stale
    finally:
        client.close()

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

**Shards.** ``REDIS_URL`` may list several Redis servers, comma-separated (one URL is one shard:
exactly the unsharded bus). Every message and key goes to a shard by a stable hash, the same one on
every process (``shard_index``: channels-redis's own ring over the group's Redis channel name, so
the default multi-host ``CHANNEL_LAYERS`` layer routes a ``group_send`` to the very same shard):

- a topic's hints go to ITS shard only; a worker subscribes on every shard (one ``Subscription``
  per shard, each with its own connection, channel and probe, so one dead shard detaches only that
  shard's topics; see ``ShardedSubscription`` for why every shard and not only the followed
  topics' ones);
- revocations go to EVERY shard (``BROADCAST_GROUPS``): they are rare and must reach every worker
  promptly, so losing one shard must not leave them to the heartbeat re-check; the hub's revoke is
  idempotent, so the copies cost nothing;
- a topic's stale-cursor counters live on the topic's shard, a worker's presence record on the
  shard of its key; the admin reads every shard (``read_presence``).

Losing a shard delays only its topics, by at most the journal head-check interval: publishes to it
fail (at most after ``PUBLISH_TIMEOUT_SECONDS``, then the shard is skipped for
``PUBLISH_RETRY_SECONDS``), and the hint publisher has one lane per shard
(``projector.hints.HintPublisher``), so a host that stops answering stalls only its own topics'
hints; ``/readyz`` names it (``khala_project.health``); the shard's ``Subscription`` re-attaches
when it is back. Metrics per shard: ``khala_project.metrics``.

Why this module lives in ``khala_project`` and not in ``sync``: the publishers are the write path
(``projector``) and the token service (``tokens``), which are lower layers than delivery and must
not import ``sync``. Every app may import ``khala_project``, so the names, the message shapes and
the publish/subscribe seam have ONE definition here, and swapping or sharding the bus touches this
file only.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from khala_project.metrics import BUS_ATTACHES, BUS_PUBLISHES, BUS_SHARD_ATTACHED

log = logging.getLogger(__name__)

HINT_TYPE = "sync.hint"
REVOKED_TYPE = "sync.revoked"
REVOCATIONS_GROUP = "khala.revocations"
HUB_CHANNEL_PREFIX = "khala.hub."
# Groups published on every shard and subscribed on every shard (the rest live on one shard each).
BROADCAST_GROUPS = frozenset({REVOCATIONS_GROUP})
# A publish waits at most this long for its shard; after a failure the shard is skipped this long
# (its topics are delivered by the head check meanwhile), then tried again.
PUBLISH_TIMEOUT_SECONDS = 2.0
PUBLISH_RETRY_SECONDS = 1.0


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


# ---- shards ------------------------------------------------------------------------------------


def redis_urls(value: str | None = None) -> list[str]:
    """The Redis servers of ``REDIS_URL`` (comma-separated; empty: none), in their configured order:
    the order is the shard numbering, so every process must be given the same list."""
    if value is None:
        from django.conf import settings

        value = getattr(settings, "REDIS_URL", "") or ""
    return [url.strip() for url in value.split(",") if url.strip()]


def shard_index(name: str, count: int) -> int:
    """The shard of a Redis channel or key name among ``count``: channels-redis's consistent hash
    (CRC32 onto a 4096-slot ring split into ``count`` equal arcs), the same in every process.
    Adding a shard moves some names to another shard: deploy the new list to every process at once
    (hints sent meanwhile to the old shard are lost, and the head check delivers them)."""
    if count <= 1:
        return 0
    return int((binascii.crc32(name.encode("utf8")) & 0xFFF) / (4096 / float(count)))


def group_channel_name(prefix: str, group: str) -> str:
    """The Redis pub/sub channel channels-redis uses for ``group`` (what its ring hashes)."""
    return f"{prefix}__group__{group}"


def topic_shard(topic: str, count: int, prefix: str) -> int:
    """The shard of ``topic``: where its hints are published and its stale counters kept."""
    return shard_index(group_channel_name(prefix, topic_group(topic)), count)


def redacted_address(host) -> str:
    """``host:port/db`` of a channels-redis host (URL or dict), without credentials: safe for
    ``/readyz`` bodies, logs and metric help."""
    if isinstance(host, dict):
        if "address" in host:
            host = host["address"]
        else:
            return f"{host.get('host', '?')}:{host.get('port', 6379)}"
    if isinstance(host, (tuple, list)):
        return f"{host[0]}:{host[1]}"
    parsed = urllib.parse.urlsplit(str(host))
    if parsed.scheme == "unix":
        return parsed.path
    return f"{parsed.hostname}:{parsed.port or 6379}{parsed.path or ''}"


@dataclass(eq=False)
class Shard:
    """One Redis server of the bus: its channel layer (this server only) and publish state."""

    index: int
    address: str  # redacted: host:port/db
    layer: object
    down_until: float = 0.0  # publishes skip the shard until then (monotonic clock)

    @property
    def label(self) -> str:
        return str(self.index)


@dataclass(eq=False)
class Bus:
    """The shards of one channel-layer configuration and the routing between them."""

    shards: list
    prefix: str
    clock: object = field(default=time.monotonic)

    @property
    def enabled(self) -> bool:
        return bool(self.shards) and self.shards[0].layer is not None

    def shard_of_group(self, group: str) -> Shard:
        return self.shards[shard_index(group_channel_name(self.prefix, group), len(self.shards))]

    def shard_of_topic(self, topic: str) -> Shard:
        return self.shard_of_group(topic_group(topic))

    def shards_of_group(self, group: str) -> list:
        return list(self.shards) if group in BROADCAST_GROUPS else [self.shard_of_group(group)]


def bus_for_layers(layers: list, prefix: str = "asgi", addresses: list | None = None) -> Bus:
    """A bus over given layers, one per shard (tests; ``current_bus`` for the configured one)."""
    addresses = addresses or [f"shard{i}" for i in range(len(layers))]
    return Bus([Shard(i, addresses[i], layer) for i, layer in enumerate(layers)], prefix)


_buses: dict[str, Bus] = {}
_buses_lock = threading.Lock()


def current_bus() -> Bus:
    """The bus of ``CHANNEL_LAYERS["default"]``: with a channels-redis pub/sub layer of N > 1
    hosts, N shards, each its own single-host layer of the same class and options (so that each
    has its own connection and its own probe, and a dead one fails alone); otherwise one shard,
    the default layer itself (one Redis URL, the in-memory layer, or none: as before sharding).
    Built once per configuration and process; read again when tests change the settings."""
    from django.conf import settings

    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}
    last = _last_bus
    if last is not None and last[0] is config and (len(last[1].shards) > 1 or last[1].shards[0].layer is get_channel_layer()):
        return last[1]  # the hot path (every hint submitted): no serialisation of the config
    key = json.dumps(config, sort_keys=True, default=str)
    bus = _buses.get(key)
    if bus is not None and (len(bus.shards) > 1 or bus.shards[0].layer is get_channel_layer()):
        _remember(config, bus)
        return bus
    options = dict(config.get("CONFIG") or {})
    hosts = list(options.get("hosts") or [])
    prefix = options.get("prefix", "asgi")
    with _buses_lock:
        if str(config.get("BACKEND", "")).endswith("RedisPubSubChannelLayer") and len(hosts) > 1:
            from django.utils.module_loading import import_string

            layer_class = import_string(config["BACKEND"])
            shards = [Shard(i, redacted_address(h), layer_class(**{**options, "hosts": [h]})) for i, h in enumerate(hosts)]
        else:
            address = redacted_address(hosts[0]) if hosts else "local"
            shards = [Shard(0, address, get_channel_layer())]
        bus = _buses[key] = Bus(shards, prefix)
    _remember(config, bus)
    return bus


_last_bus: tuple | None = None  # (the config dict object, its bus): current_bus's identity cache


def _remember(config: dict, bus: Bus) -> None:
    global _last_bus
    _last_bus = (config, bus)  # keeps ``config`` alive, so its identity cannot be reused


# ---- publishing (after commit; best effort) -----------------------------------------------------


async def publish(group: str, message: dict, bus: Bus | None = None) -> None:
    """Send ``message`` to every worker listening on ``group``: on the group's shard, or on every
    shard for ``BROADCAST_GROUPS``, concurrently. Fire-and-forget: the layer may drop it, and a
    failure is logged and counted, never raised (the caller's write is already committed)."""
    bus = bus or current_bus()
    if not bus.enabled:
        return
    targets = bus.shards_of_group(group)
    if len(targets) == 1:
        await _publish_on(bus, targets[0], group, message)
    else:
        await asyncio.gather(*(_publish_on(bus, shard, group, message) for shard in targets))


async def _publish_on(bus: Bus, shard: Shard, group: str, message: dict) -> None:
    if bus.clock() < shard.down_until:
        BUS_PUBLISHES.labels(shard=shard.label, outcome="skipped").inc()
        return
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await shard.layer.group_send(group, message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        shard.down_until = bus.clock() + PUBLISH_RETRY_SECONDS
        BUS_PUBLISHES.labels(shard=shard.label, outcome="failed").inc()
        log.warning("bus: could not publish %s to %s on shard %s (%s) (%s); skipping the shard for %.1fs",
                    message.get("type"), group, shard.label, shard.address, _brief(exc), PUBLISH_RETRY_SECONDS)
        return
    BUS_PUBLISHES.labels(shard=shard.label, outcome="sent").inc()


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
                 probe_timeout: float = 3.0, retry_initial: float = 0.2, retry_max: float = 5.0, attach_timeout: float = 3.0,
                 shard: str = "0", address: str = ""):
        self.layer = layer if layer is not None else get_channel_layer()
        self.shard = shard  # the metrics label and log name of the shard this subscription is on
        self.address = address
        if self.layer is not None:
            BUS_SHARD_ATTACHED.labels(shard=shard).set(0)
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
                log.warning("bus: cannot attach to shard %s %s (%s); its topics are delivered through the database checks",
                            self.shard, self.address, _brief(exc))
                await self._reset()
                await self.sleep(next(delays))
                continue
            delays = self.retry_delays()
            self.attachments += 1
            BUS_ATTACHES.labels(shard=self.shard).inc()
            BUS_SHARD_ATTACHED.labels(shard=self.shard).set(1)
            log.info("bus: attached to shard %s %s (%d topic groups)", self.shard, self.address, len(self.topics))
            if on_attached is not None:
                on_attached()
            try:
                await self._serve(on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus: subscription on shard %s %s failed (%s); re-attaching", self.shard, self.address, _brief(exc))
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
                    log.warning("bus: probe on shard %s %s not back after %.1fs", self.shard, self.address, now - probe_sent)
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
        BUS_SHARD_ATTACHED.labels(shard=self.shard).set(0)
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


class ShardedSubscription:
    """A worker's subscriptions on every shard of the bus: one ``Subscription`` per shard, each
    attaching, probing and re-attaching on its own, so a dead shard detaches only the topics routed
    to it (hints on the others keep flowing) and re-attaches alone when it is back.

    Every shard, not only the shards of the followed topics: the revocation group is on every shard
    (``BROADCAST_GROUPS``), so every shard's subscription exists anyway; a shard without followed
    topics then costs one idle connection and a probe per ``probe_interval``, and following a new
    topic is one SUBSCRIBE on an already attached connection (no attach on the join path).
    With one shard this is exactly one ``Subscription``."""

    def __init__(self, bus: Bus, **options):
        self.bus = bus
        self.parts = [Subscription(shard.layer, shard=shard.label, address=shard.address, **options) for shard in bus.shards]

    @property
    def enabled(self) -> bool:
        return self.bus.enabled

    @property
    def attached(self) -> bool:
        """Attached on every shard."""
        return all(part.attached for part in self.parts)

    @property
    def attachments(self) -> int:
        return sum(part.attachments for part in self.parts)

    @property
    def topics(self) -> set[str]:
        return set().union(*(part.topics for part in self.parts))

    def part_of(self, topic: str) -> Subscription:
        return self.parts[self.bus.shard_of_topic(topic).index]

    async def run(self, on_message, on_attached=None) -> None:
        """Every shard's ``Subscription.run`` at once, until cancelled (``on_attached`` after each
        shard's (re)attach)."""
        tasks = [asyncio.ensure_future(part.run(on_message, on_attached)) for part in self.parts]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def follow(self, topic: str) -> None:
        await self.part_of(topic).follow(topic)

    async def unfollow(self, topic: str) -> None:
        await self.part_of(topic).unfollow(topic)

    async def close(self) -> None:
        await asyncio.gather(*(part.close() for part in self.parts))


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation some awaited library call swallowed (the Redis client can, when
    a cancel lands inside a command), so that ``run`` ends when its task is cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


# ---- presence records (plain Redis keys, best effort) -------------------------------------------


class PresenceWriteError(RuntimeError):
    """Some shards could not be written; ``unsent`` are the stale-cursor increments not counted."""

    def __init__(self, message: str, unsent: dict):
        super().__init__(message)
        self.unsent = unsent


class PresenceWriter:
    """A worker's Redis connections (one per shard it writes to) for its presence record and
    stale-cursor counters. The record goes to the shard of its key, each topic's counters to the
    topic's shard (``topic_shard``, where its hints go). The caller serialises writes
    (``sync.presence`` runs one flush at a time) and handles failures."""

    def __init__(self, urls, prefix: str, *, timeout: float):
        self.redis_urls = redis_urls(urls) if isinstance(urls, str) else list(urls)
        self.prefix = prefix
        self.timeout = timeout
        self._clients: dict[int, object] = {}

    def _redis(self, shard: int):
        client = self._clients.get(shard)
        if client is None:
            import redis.asyncio as aioredis

            client = self._clients[shard] = aioredis.Redis.from_url(
                self.redis_urls[shard],
                single_connection_client=True,  # one connection per worker and shard; flushes are serialised
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
        return client

    def record_shard(self, worker_id: str) -> int:
        return shard_index(presence_key(self.prefix, worker_id), len(self.redis_urls))

    async def write(self, worker_id: str, record: str | None, ttl_ms: int, stale: dict, stale_ttl_seconds: int) -> None:
        """Set the record (with its TTL) and add ``stale`` — ``{(topic, minute): n}`` — to the
        per-minute counters: one pipeline per shard, all shards at once. Raises
        ``PresenceWriteError`` naming the shards that failed, with their increments (the others
        are written)."""
        count = len(self.redis_urls)
        work: dict[int, list] = {}
        if record is not None:
            work.setdefault(self.record_shard(worker_id), []).append(("record", record))
        for (topic, minute), n in stale.items():
            work.setdefault(topic_shard(topic, count, self.prefix), []).append(("stale", (topic, minute), n))

        async def write_shard(shard: int, items: list) -> None:
            pipe = self._redis(shard).pipeline(transaction=False)
            for item in items:
                if item[0] == "record":
                    pipe.set(presence_key(self.prefix, worker_id), item[1], px=ttl_ms)
                else:
                    key = stale_key(self.prefix, *item[1])
                    pipe.incrby(key, item[2])
                    pipe.expire(key, stale_ttl_seconds)
            await pipe.execute()

        shards = sorted(work)
        outcomes = await asyncio.gather(*(write_shard(shard, work[shard]) for shard in shards), return_exceptions=True)
        failed = [(shard, exc) for shard, exc in zip(shards, outcomes) if isinstance(exc, BaseException)]
        for _, exc in failed:
            if isinstance(exc, asyncio.CancelledError):
                raise exc
        if failed:
            unsent = {item[1]: item[2] for shard, _ in failed for item in work[shard] if item[0] == "stale"}
            raise PresenceWriteError(
                "; ".join(f"shard {shard} {redacted_address(self.redis_urls[shard])}: {_brief(exc)}" for shard, exc in failed), unsent
            )

    async def close(self, worker_id: str) -> None:
        """Delete the record (the worker is leaving) and the connections; best effort."""
        clients, self._clients = self._clients, {}
        if not clients:
            return
        record_client = clients.get(self.record_shard(worker_id))
        if record_client is not None:
            try:
                await asyncio.wait_for(record_client.delete(presence_key(self.prefix, worker_id)), self.timeout)
            except Exception:
                pass
        for client in clients.values():
            try:
                await client.aclose()
            except Exception:
                pass


class ShardReadError(Exception):
    """One of several Redis shards could not be read; the message names it (no credentials)."""


def read_presence(urls, prefix: str, topics, minutes) -> tuple[list[bytes], dict[str, int]]:
    """The raw presence records of the live workers (from every shard), and per topic the sum of its
    stale-cursor counters over ``minutes`` (from the topic's shard). Raises the client's error (with
    several shards: ``ShardReadError`` naming the shard) when a shard cannot be read: partial
    figures would undercount silently."""
    import redis

    urls = redis_urls(urls) if isinstance(urls, str) else list(urls)
    topics = list(topics)
    raw: list[bytes] = []
    stale: dict[str, int] = {}
    for shard, url in enumerate(urls):
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            keys = sorted(client.scan_iter(match=presence_key(prefix, "*"), count=1000))
            raw += [value for value in (client.mget(keys) if keys else []) if value is not None]  # None: expired meanwhile
            mine = [topic for topic in topics if topic_shard(topic, len(urls), prefix) == shard]
            if mine:
                pipe = client.pipeline(transaction=False)
                for topic in mine:
                    pipe.mget([stale_key(prefix, topic, m) for m in minutes])
                for topic, values in zip(mine, pipe.execute()):
                    stale[topic] = sum(int(v) for v in values if v is not None)
        except redis.RedisError as exc:
            if len(urls) == 1:
                raise
            raise ShardReadError(f"{type(exc).__name__} on shard {shard} ({redacted_address(url)})") from exc
        finally:
            client.close()
    return raw, stale

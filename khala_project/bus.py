"""The cross-worker bus: every message one Khala process sends to the others, in one place.

Three kinds of traffic cross process boundaries, all through Redis:

- **Watermark hints** ``{type: "sync.hint", topic, watermark, stream_epoch}`` on the channel-layer
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

import logging

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


def hint_message(topic: str, watermark: int, stream_epoch: str) -> dict:
    """"``topic`` is now at ``watermark``" — never document data."""
    return {"type": HINT_TYPE, "topic": topic, "watermark": watermark, "stream_epoch": stream_epoch}


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


class Subscription:
    """A worker's ONE channel on the bus: the revocation group from the start, plus one topic
    group per followed topic. ``receive`` returns the next hint; errors propagate so the caller
    can back off (hints missed meanwhile are covered by its database re-checks)."""

    def __init__(self, layer=None):
        self.layer = layer if layer is not None else get_channel_layer()
        self.channel: str | None = None

    @property
    def enabled(self) -> bool:
        return self.layer is not None

    async def open(self) -> None:
        if self.layer is None:
            return
        self.channel = await self.layer.new_channel(HUB_CHANNEL_PREFIX)
        await self.layer.group_add(REVOCATIONS_GROUP, self.channel)

    async def follow(self, topic: str) -> None:
        if self.channel is not None:
            await self.layer.group_add(topic_group(topic), self.channel)

    async def unfollow(self, topic: str) -> None:
        if self.channel is not None:
            await self.layer.group_discard(topic_group(topic), self.channel)

    async def receive(self) -> dict:
        return await self.layer.receive(self.channel)

    async def close(self, topics) -> None:
        if self.channel is None:
            return
        for group in [REVOCATIONS_GROUP] + [topic_group(topic) for topic in topics]:
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception:
                pass
        self.channel = None


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

"""Worker presence in Redis: what the admin sums to show cluster-wide delivery figures.

Delivery keeps no shared state (sockets never touch the database; the channel layer carries only
hints), so an admin page served by one worker could only show that worker's sockets. Each worker's
hub therefore publishes, on its head-check tick, a small presence record (with several Redis shards:
on the shard of its key; each topic's stale counters on the topic's shard; the admin reads them all)::

    <KHALA_CHANNEL_PREFIX>:presence:<worker id>  (a string, TTL = PRESENCE_TTL_TICKS head-check ticks)
    {"worker_id", "pid", "host", "server", "connections", "subscribers": {topic: n},
     "started_at", "updated_at"}

and counts refused stale cursors per topic in per-minute buckets::

    <KHALA_CHANNEL_PREFIX>:stale:<topic>:<minute>  (an integer; minute = unix time // 60; INCRBY +
    EXPIRE STALE_BUCKET_TTL_SECONDS)

A worker that dies stops refreshing its record, which expires within a few ticks: the live workers
are exactly the records present. The admin (``read_cluster``, sync client) sums the records and the
last ``STALE_WINDOW_MINUTES`` buckets of each topic.

The key names and the Redis reads and writes are the bus's (``khala_project.bus``: ``presence_key``,
``stale_key``, ``PresenceWriter``, ``read_presence``); this module decides what the record says and
when it is written. Presence is best effort and never touches delivery: the hub only calls ``beat`` / ``stale_cursor``,
which record in memory and schedule ONE flush task at a time (coalescing whatever accumulated
meanwhile into one pipeline) on one Redis connection per worker; a failed flush is logged and the
stale counts are kept for the next one. Without ``REDIS_URL`` (the embedded default) nothing is
published and the admin falls back to the figures of its own process (``local_stale_last_hour``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings

from khala_project.bus import PresenceWriter, presence_key, read_presence
from khala_project.conf import khala_setting

log = logging.getLogger(__name__)

PRESENCE_TTL_TICKS = 3  # a record outlives its worker by at most this many head-check ticks
PRESENCE_TTL_MIN_SECONDS = 2.0
STALE_WINDOW_MINUTES = 60  # "last hour" = the current minute bucket and the 59 before it
STALE_BUCKET_TTL_SECONDS = 2 * 3600
REDIS_TIMEOUT_SECONDS = 1.0


def presence_ttl_seconds() -> float:
    return max(PRESENCE_TTL_TICKS * float(khala_setting("HEAD_CHECK_INTERVAL_SECONDS")), PRESENCE_TTL_MIN_SECONDS)


def server_name() -> str:
    """``daphne`` / ``uvicorn`` (the executable that runs the worker), else its name."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "asgi"


class WorkerPresence:
    """The presence publisher of one hub (one per worker event loop). See the module docstring."""

    def __init__(self, redis_url: str | None, prefix: str, *, clock=time.time):
        self.redis_url = redis_url or None  # one URL, or several comma-separated (shards)
        self.prefix = prefix
        self.clock = clock
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = clock()
        self._writer = PresenceWriter(self.redis_url, prefix, timeout=REDIS_TIMEOUT_SECONDS) if self.redis_url else None
        self._record: str | None = None  # the latest record not yet written
        self._stale: Counter = Counter()  # (topic, minute) -> increments not yet written
        self._local_stale: Counter = Counter()  # (topic, minute) -> count (this worker, pruned to the window)
        self._flush_task: asyncio.Task | None = None
        self._again = False
        self.failing = False  # the last write to Redis failed (logged once per failure streak)

    @classmethod
    def from_settings(cls) -> "WorkerPresence":
        return cls(getattr(settings, "REDIS_URL", "") or None, getattr(settings, "KHALA_CHANNEL_PREFIX", "khala"))

    @property
    def key(self) -> str:
        return presence_key(self.prefix, self.worker_id)

    # ---- what the hub and sessions call (synchronous, never wait for Redis) ----------------------

    def record_for(self, hub) -> dict:
        subscribers = {topic: len(feed.followers) for topic, feed in list(hub.feeds.items())}
        return {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "server": server_name(),
            "connections": len(hub.sessions),
            "subscribers": subscribers,
            "started_at": self.started_at,
            "updated_at": self.clock(),
        }

    def beat(self, hub) -> None:
        """The head-check tick: publish this worker's record (best effort)."""
        if self.redis_url is None:
            return
        self._record = json.dumps(self.record_for(hub), separators=(",", ":"))
        self._kick()

    def stale_cursor(self, topic: str) -> None:
        """A stale cursor of ``topic`` was refused on this worker."""
        minute = int(self.clock() // 60)
        self._local_stale[(topic, minute)] += 1
        if len(self._local_stale) > 1000:  # topics are few; keep only the window
            self._prune_local(minute)
        if self.redis_url is not None:
            self._stale[(topic, minute)] += 1
            self._kick()

    def local_stale_last_hour(self) -> dict[str, int]:
        minute = int(self.clock() // 60)
        out: Counter = Counter()
        for (topic, bucket), n in list(self._local_stale.items()):
            if minute - STALE_WINDOW_MINUTES < bucket <= minute:
                out[topic] += n
        return dict(out)

    def _prune_local(self, minute: int) -> None:
        for key in [k for k in self._local_stale if k[1] <= minute - STALE_WINDOW_MINUTES]:
            del self._local_stale[key]

    # ---- the flush (one task at a time) -----------------------------------------------------------

    def _kick(self) -> None:
        if self._flush_task is not None and not self._flush_task.done():
            self._again = True  # the running flush takes it on its next round
            return
        try:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush(), name="khala-presence-flush")
        except RuntimeError:  # no running loop (e.g. called from a test's thread): nothing to do
            self._flush_task = None

    async def _flush(self) -> None:
        while True:
            self._again = False
            record, self._record = self._record, None
            stale, self._stale = self._stale, Counter()
            if record is None and not stale:
                return
            try:
                await self._writer.write(self.worker_id, record, int(presence_ttl_seconds() * 1000), stale, STALE_BUCKET_TTL_SECONDS)
                if self.failing:
                    log.info("presence: Redis reachable again")
                self.failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Best effort: delivery never depends on this. Keep the counts that were not
                # written for the next try (the record is rebuilt on the next tick anyway).
                self._stale.update(getattr(exc, "unsent", stale))
                if not self.failing:
                    log.warning("presence: could not write to Redis (%s); admin figures will lag", exc)
                self.failing = True
                return
            if not self._again:
                return

    async def stop(self) -> None:
        task, self._flush_task = self._flush_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close(self.worker_id)


# --- the admin's side (synchronous) --------------------------------------------------------------


@dataclass(frozen=True)
class ClusterFigures:
    workers: list = field(default_factory=list)  # the live workers' records
    connections: int = 0
    subscribers: dict = field(default_factory=dict)  # topic -> subscribers on all workers
    stale_last_hour: dict = field(default_factory=dict)  # topic -> refused stale cursors, last 60 min


def read_cluster(redis_url: str, prefix: str, topics, *, now: float | None = None) -> ClusterFigures:
    """Sum the live workers' presence records and the last hour of stale-cursor buckets.
    Raises the client's error when Redis cannot be read (the caller falls back and says so)."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    raw, stale = read_presence(redis_url, prefix, topics, range(minute - STALE_WINDOW_MINUTES + 1, minute + 1))
    records = []
    for value in raw:
        try:
            records.append(json.loads(value))
        except ValueError:
            log.warning("presence: unreadable record skipped")
    subscribers: Counter = Counter()
    for record in records:
        subscribers.update({t: int(n) for t, n in (record.get("subscribers") or {}).items()})
    records.sort(key=lambda r: (str(r.get("host")), int(r.get("pid") or 0)))
    return ClusterFigures(
        workers=records,
        connections=sum(int(r.get("connections") or 0) for r in records),
        subscribers=dict(subscribers),
        stale_last_hour=stale,
    )

"""Publishing watermark hints — "topic T is now at watermark N" — through the bus
(``khala_project.bus`` owns the hint's name, shape and group; this module only decides WHEN to
publish, coalescing commits on a background thread).

A hint is only a hint. The channel layer may drop it (Redis blip, full buffer, a worker that
subscribed a moment too late); delivery always reads the journal, and a worker's periodic head
check catches up on anything a lost hint would have announced. Never put document data in a hint.
"""

import asyncio
import atexit
import logging
import os
import threading
import time

from khala_project.bus import hint_message, publish, publish_blocking, topic_group

log = logging.getLogger(__name__)


async def publish_hint_async(topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> None:
    # The bus is fire-and-forget: the layer may drop the message. That is acceptable here
    # because subscribers re-read the journal; a lost hint only delays delivery.
    await publish(topic_group(topic), hint_message(topic, watermark, stream_epoch, lsn))


def publish_hint(topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> None:
    """Publish from sync code and wait for it (one event loop and Redis connection per call).

    Fine for a management command; the sink uses ``submit_hint`` instead.
    """
    publish_blocking(topic_group(topic), hint_message(topic, watermark, stream_epoch, lsn))


class HintPublisher:
    """Background threads that publish hints from their own event loops: one per bus shard.

    Why: ``async_to_sync`` per commit would build an event loop and (with the Redis pub/sub layer)
    a Redis connection for every write, which costs more than the write itself. Here a commit
    only records ``topic -> highest watermark`` under a lock; a thread publishes the latest
    value per topic. Hints submitted while a publish is in flight are coalesced into one message
    per topic carrying the highest watermark (receivers read ``watermark > last_sent`` from the
    journal, so skipping intermediate hints loses nothing). A hint for a new ``stream_epoch``
    replaces whatever was pending for the topic. The commit's WAL position (``lsn``, with replicas
    configured) coalesces the same way: the pending hint carries the highest one submitted.

    One thread per shard (the topic's shard, ``khala_project.bus``): a shard that stalls (a host
    that stopped answering costs a publish its whole timeout) holds up only its own topics' hints,
    never the other shards'. With one Redis there is one thread, as before sharding.

    After waking up, a thread lingers ``KHALA["HINT_LINGER_SECONDS"]`` (default 2 ms) so that a
    busy topic costs one PUBLISH per linger period instead of one per commit: live delivery is
    delayed by at most that much, and the writers do not spend their CPU publishing.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._lanes: dict[int, _Lane] = {}
        self._pid = None

    def submit(self, topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> None:
        shard = _shard_of(topic)
        with self._cond:
            lane = self._lane(shard)
            current = lane.pending.get(topic)
            if current is None or current[1] != stream_epoch:
                lane.pending[topic] = (watermark, stream_epoch, lsn)
            else:
                lsns = [x for x in (current[2], lsn) if x is not None]
                lane.pending[topic] = (max(watermark, current[0]), stream_epoch, max(lsns) if lsns else None)
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was handed to the channel layer."""
        with self._cond:
            return self._cond.wait_for(lambda: all(not lane.pending and not lane.in_flight for lane in self._lanes.values()), timeout)

    def _lane(self, shard: int) -> "_Lane":
        # After os.fork() the child inherits the object but not the threads: start new ones.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            for lane in self._lanes.values():
                lane.thread = None
        lane = self._lanes.get(shard)
        if lane is None:
            lane = self._lanes[shard] = _Lane()
        if lane.thread is None or not lane.thread.is_alive():
            lane.in_flight = 0
            lane.thread = threading.Thread(target=self._run, args=(lane,), name=f"khala-hint-publisher-{shard}", daemon=True)
            lane.thread.start()
        return lane

    def _run(self, lane: "_Lane") -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: lane.pending)
                linger = _linger_seconds()
                if linger > 0:
                    time.sleep(linger)
                with self._cond:
                    batch, lane.pending = lane.pending, {}
                    lane.in_flight = len(batch)
                for topic, (watermark, stream_epoch, lsn) in batch.items():
                    loop.run_until_complete(publish_hint_async(topic, watermark, stream_epoch, lsn))
                with self._cond:
                    lane.in_flight = 0
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - publish_hint_async already swallows layer errors
            log.exception("hint publisher stopped")


class _Lane:
    """One shard's pending hints and publishing thread."""

    def __init__(self):
        self.pending: dict[str, tuple[int, str, int | None]] = {}  # topic -> (watermark, epoch, lsn)
        self.in_flight = 0
        self.thread: threading.Thread | None = None


def _shard_of(topic: str) -> int:
    try:
        from khala_project.bus import current_bus

        return current_bus().shard_of_topic(topic).index
    except Exception:  # settings not configured (a bare script): one lane
        return 0


def _linger_seconds() -> float:
    try:
        from khala_project.conf import khala_setting

        return float(khala_setting("HINT_LINGER_SECONDS"))
    except Exception:  # settings not configured (a bare script): no linger
        return 0.0


_publisher = HintPublisher()


def submit_hint(topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> None:
    """Hand a hint to the background publisher and return at once (for on_commit callbacks).
    ``lsn``: the commit's WAL position (``khala_project.replicas.commit_lsn``), None without replicas."""
    _publisher.submit(topic, watermark, stream_epoch, lsn)


def flush_hints(timeout: float = 5.0) -> bool:
    """Block until submitted hints were published (commands call this before exiting)."""
    return _publisher.flush(timeout)


atexit.register(flush_hints, 2.0)

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
    """One background thread per process that publishes hints from its own event loop.

    Why: ``async_to_sync`` per commit would build an event loop and (with the Redis pub/sub layer)
    a Redis connection for every write, which costs more than the write itself. Here a commit
    only records ``topic -> highest watermark`` under a lock; the thread publishes the latest
    value per topic. Hints submitted while a publish is in flight are coalesced into one message
    per topic carrying the highest watermark (receivers read ``watermark > last_sent`` from the
    journal, so skipping intermediate hints loses nothing). A hint for a new ``stream_epoch``
    replaces whatever was pending for the topic. The commit's WAL position (``lsn``, with replicas
    configured) coalesces the same way: the pending hint carries the highest one submitted.

    After waking up, the thread lingers ``KHALA["HINT_LINGER_SECONDS"]`` (default 2 ms) so that a
    busy topic costs one PUBLISH per linger period instead of one per commit: live delivery is
    delayed by at most that much, and the writers do not spend their CPU publishing.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[int, str, int | None]] = {}
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = None

    def submit(self, topic: str, watermark: int, stream_epoch: str, lsn: int | None = None) -> None:
        with self._cond:
            current = self._pending.get(topic)
            if current is None or current[1] != stream_epoch:
                self._pending[topic] = (watermark, stream_epoch, lsn)
            else:
                lsns = [x for x in (current[2], lsn) if x is not None]
                self._pending[topic] = (max(watermark, current[0]), stream_epoch, max(lsns) if lsns else None)
            self._ensure_thread()
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was handed to the channel layer."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._in_flight, timeout)

    def _ensure_thread(self) -> None:
        # After os.fork() the child inherits the object but not the thread: start a new one.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._in_flight = 0
            self._thread = threading.Thread(target=self._run, name="khala-hint-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending)
                linger = _linger_seconds()
                if linger > 0:
                    time.sleep(linger)
                with self._cond:
                    batch, self._pending = self._pending, {}
                    self._in_flight = len(batch)
                for topic, (watermark, stream_epoch, lsn) in batch.items():
                    loop.run_until_complete(publish_hint_async(topic, watermark, stream_epoch, lsn))
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - publish_hint_async already swallows layer errors
            log.exception("hint publisher stopped")


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

"""Per-socket bounded outbound queue and its writer (the only place frames reach the socket).

A session never writes to the socket itself: it ``offer``s encoded frames here. One writer task
per socket drains the queue through a ``SocketWriter`` (``sync.transport``) that waits until the
server's transport has room. A client that stops reading therefore stops the writer, the queue
fills, and ``offer`` returns False: the session closes the socket as ``slow_consumer``. Memory per
socket is bounded by the queue limits; fan-out never awaits a socket, so one stuck client does not
delay the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from sync import metrics


class OutboundQueue:
    """FIFO of ``(text, committed_at)`` bounded by item count and total characters."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque = deque()
        self._size = 0
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._room = asyncio.Event()  # set while the queue is at most half full
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        return self._size

    def offer(self, text: str, committed_at: float | None = None) -> bool:
        """Queue a frame; False when the queue is full (the caller closes the socket)."""
        if self.closed:
            return True  # the socket is going away; nothing to grow
        length = len(text)
        if len(self._items) >= self.max_items or (self._items and self._size + length > self.max_bytes):
            return False
        self._items.append((text, committed_at))
        self._size += length
        self._ready.set()
        self._empty.clear()
        if not self._has_room():
            self._room.clear()
        return True

    @property
    def has_room(self) -> bool:
        """At most half full (the mark replay waits for, and below which replies are sent)."""
        return self._has_room()

    def _has_room(self) -> bool:
        return len(self._items) <= self.max_items // 2 and self._size <= self.max_bytes // 2

    async def get(self) -> tuple[str, float | None]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        text, committed_at = self._items.popleft()
        self._size -= len(text)
        if not self._items:
            self._empty.set()
        if self._has_room():
            self._room.set()
        return text, committed_at

    async def wait_room(self, timeout: float) -> bool:
        """Wait until the queue is at most half full; False if that took longer than ``timeout``.
        Replay is paced this way (it may wait for the socket); live fan-out never waits."""
        if self._room.is_set():
            return True
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_empty(self) -> None:
        """Until every queued frame was taken by the writer (and handed to the transport)."""
        await self._empty.wait()

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self._size = 0
        self._empty.set()
        self._room.set()


# One (socket, live frame) pair in this many has its commit → send lag observed.
LIVE_LAG_SAMPLE_EVERY = 16


class LagSampler:
    """Observes ``khala_live_delivery_lag_seconds`` for every ``every``-th live frame handed to a
    transport, counted across all sockets of the worker (the first one included).

    Why: observing every (socket, frame) pair cost ~3 % of a worker's CPU in the fan-out profile
    (a histogram observation per frame per socket). A systematic 1-in-N sample of the same pairs
    keeps the metric's meaning (the distribution of commit → send over (socket, frame) pairs, so
    quantiles and the alert are unchanged) at 1/N of the cost; only ``_count`` is 1/N of the pairs.
    Writers of different sockets interleave on the event loop, so the sample spreads over sockets.
    """

    def __init__(self, every: int = LIVE_LAG_SAMPLE_EVERY):
        self.every = max(int(every), 1)
        self._left = 1

    def sent(self, committed_at: float, wall_clock) -> None:
        self._left -= 1
        if self._left:
            return
        self._left = self.every
        metrics.LIVE_DELIVERY_LAG.observe(max(wall_clock() - committed_at, 0.0))


LIVE_LAG_SAMPLER = LagSampler()


async def run_writer(queue: OutboundQueue, writer, wall_clock=time.time, sampler: LagSampler | None = None) -> None:
    """Drain ``queue`` into ``writer`` until cancelled. ``committed_at`` (a live frame's oldest row
    commit time) is handed to the worker's lag sampler once the frame reached the transport."""
    sampler = sampler or LIVE_LAG_SAMPLER
    while True:
        text, committed_at = await queue.get()
        await writer.send_text(text)
        if committed_at is not None:
            sampler.sent(committed_at, wall_clock)

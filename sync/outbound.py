"""Per-socket outbound path: the ONE place a socket's frames are queued and written.

- ``Outbox`` (owned by the session): every frame of the socket — replies, pushes, errors, the
  followers' replay and live batches — is queued through it (``send``/``answer``/``push_error``/
  ``refuse``), in call order, into the socket's ``OutboundQueue``. It also closes the socket
  (``close``: after the queue flushes; a slow consumer: at once) and owns the ``closed`` flag.
- ``OutboundQueue``: the bounded FIFO between the event loop and the socket.
- ``run_writer``: the consumer's one writer task per socket drains the queue through a
  ``SocketWriter`` (``sync.transport``) that waits until the server's transport has room.

A client that stops reading therefore stops the writer, the queue fills, and ``offer`` returns
False: the outbox closes the socket as ``slow_consumer``. Memory per socket is bounded by the queue
limits; fan-out never awaits a socket, so one stuck client does not delay the others. A change to
how frames are batched or coalesced on the way out belongs in ``Outbox.send`` and ``run_writer``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from sync import metrics
from sync.errors import close_code, error_payload
from sync.protocol import (
    AUTH_FRAME_TOPIC,
    CHANNEL_TOPIC,
    KIND_ERROR,
    PHOENIX_TOPIC,
    SYNC_ERROR,
    Frame,
    encode_error_reply,
    encode_frame,
    encode_khala_frame,
)


class OutboundQueue:
    """FIFO of ``(text, committed_at)`` bounded by item count and total characters.

    ``offer`` refuses a frame when the queue is full (the outbox then closes the socket as
    ``slow_consumer``); ``has_room``/``wait_room`` are the half mark replay waits for and below
    which replies are sent; ``wait_empty`` waits until every queued frame was taken. Two consumers
    take frames: the consumer's writer task (``get``, through ``run_writer``) or the loop's flusher
    (``take_nowait``; ``on_offer()`` tells it a frame was queued, ``sync.socket_flush``, whose
    ``DirectSocket`` is a queue that may also write a frame at once instead of queuing it).

    It allocates nothing while idle: the deque exists only while frames are queued and each event
    only while someone waits for it (idle sockets are most sockets; measured in bench/README.md,
    "Fan-out at the socket layer")."""

    __slots__ = ("max_items", "max_bytes", "closed", "_items", "_size", "_on_offer", "_ready", "_empty", "_room")

    def __init__(self, max_items: int, max_bytes: int, on_offer=None):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.closed = False
        self._items: deque | None = None  # only while frames are queued
        self._size = 0
        self._on_offer = on_offer
        self._ready: asyncio.Event | None = None  # only while ``get`` waits
        self._empty: asyncio.Event | None = None  # only while ``wait_empty`` waits
        self._room: asyncio.Event | None = None  # only while ``wait_room`` waits

    def __len__(self) -> int:
        items = self._items
        return len(items) if items is not None else 0

    @property
    def size(self) -> int:
        return self._size

    def offer(self, text: str, committed_at: float | None = None) -> bool:
        """Queue a frame; False when the queue is full (the caller closes the socket)."""
        if self.closed:
            return True  # the socket is going away; nothing to grow
        items = self._items
        count = len(items) if items is not None else 0
        length = len(text)
        if count >= self.max_items or (count and self._size + length > self.max_bytes):
            return False
        if items is None:
            items = self._items = deque()
        items.append((text, committed_at))
        self._size += length
        if self._ready is not None:
            self._release("_ready")
        if self._on_offer is not None:
            self._on_offer()
        return True

    # Always queues, also where a subclass's ``offer`` may write a frame at once (``sync.socket_flush``):
    # frames handed over together are then written together.
    enqueue = offer

    @property
    def has_room(self) -> bool:
        """At most half full (the mark replay waits for, and below which replies are sent)."""
        return len(self) <= self.max_items // 2 and self._size <= self.max_bytes // 2

    def take_nowait(self) -> tuple[str, float | None]:
        """The oldest frame (the queue must not be empty)."""
        items = self._items
        text, committed_at = items.popleft()
        self._size -= len(text)
        if not items:
            self._items = None
            if self._empty is not None:
                self._release("_empty")
        if self._room is not None and self.has_room:
            self._release("_room")
        return text, committed_at

    async def get(self) -> tuple[str, float | None]:
        """The oldest frame, waiting for one."""
        while not len(self):
            if self._ready is None:
                self._ready = asyncio.Event()
            await self._ready.wait()
        return self.take_nowait()

    async def wait_room(self, timeout: float) -> bool:
        """Wait until the queue is at most half full; False if that took longer than ``timeout``.
        Replay is paced this way (it may wait for the socket); live fan-out never waits."""
        if self.has_room or self.closed:
            return True
        if self._room is None:
            self._room = asyncio.Event()
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_empty(self) -> None:
        """Until every queued frame was taken (and handed to the transport)."""
        if not len(self) or self.closed:
            return
        if self._empty is None:
            self._empty = asyncio.Event()
        await self._empty.wait()

    def close(self) -> None:
        self.closed = True
        self._items = None
        self._size = 0
        self._release("_empty")
        self._release("_room")

    def _release(self, name: str) -> None:
        event = getattr(self, name)
        if event is not None:
            setattr(self, name, None)
            event.set()


class Outbox:
    """The outbound side of one socket, as the session and its followers see it.

    ``join_ref`` and ``frames`` (the client asked for ``sync:frame`` envelopes) are the framing of
    the socket's channel, set by the session at join. ``close_socket(code, flush, last_frame=None)``
    is the consumer's: it ends the connection, after the queue drained when ``flush``.
    ``full_resync_required()`` tells the slow-consumer error whether a followed topic's position
    has been pruned meanwhile. ``wait_timeout``: how long a replay may wait for room (the heartbeat
    timeout) before the client counts as a slow consumer."""

    __slots__ = ("queue", "_close_socket", "wait_timeout", "full_resync_required", "closed", "join_ref", "frames")  # one per socket

    def __init__(self, queue: OutboundQueue, close_socket, *, wait_timeout: float, full_resync_required=lambda: False):
        self.queue = queue
        self._close_socket = close_socket
        self.wait_timeout = wait_timeout
        self.full_resync_required = full_resync_required
        self.closed = False
        self.join_ref: str | None = None
        self.frames = False

    def send(self, text: str, committed_at: float | None = None) -> bool:
        """Queue a frame; False when the socket is closed or was just closed as a slow consumer."""
        if self.closed:
            return False
        if self.queue.offer(text, committed_at):
            return True
        self.slow_consumer()
        return False

    def send_many(self, frames) -> int:
        """Queue ``(text, committed_at)`` frames that go out together (one transport write on the
        direct path); how many were queued before the socket closed (as with ``send``)."""
        if self.closed:
            return 0
        enqueue = self.queue.enqueue
        for count, (text, committed_at) in enumerate(frames):
            if not enqueue(text, committed_at):
                self.slow_consumer()
                return count
        return len(frames)

    async def wait_room(self) -> bool:
        """Replay is paced by the socket: it waits while the outbound queue is over half full,
        so catching up a large backlog never grows memory. A socket that takes no frame for a
        whole heartbeat timeout is a slow consumer."""
        if self.closed:
            return False
        if await self.queue.wait_room(self.wait_timeout):
            return not self.closed
        self.slow_consumer()
        return False

    def answer(self, text: str) -> bool:
        """Send a reply the frame handler gives at once (a heartbeat's, or a refusal's), unless the
        outbound queue is more than half full: then the reply is dropped (the frame still counted
        as client activity). A client that pipelines requests faster than the server drains its
        socket thus loses replies, never its socket: a burst of requests cannot fill the queue and
        close a reading client as ``slow_consumer``. The upper half of the queue stays for updates
        and for the replies of accepted requests (the session bounds those in flight)."""
        if self.closed:
            return False
        if not self.queue.has_room:
            metrics.REPLIES_DROPPED.inc()
            return False
        return self.send(text)

    def push_error(self, payload: dict, *, frame_topic: str = AUTH_FRAME_TOPIC, channel: str = CHANNEL_TOPIC) -> None:
        """A ``sync:error`` push and, for clients that asked for ``frames``, its ``sync:frame``."""
        self.send(encode_frame(self.join_ref, None, channel, SYNC_ERROR, payload))
        if self.frames and channel == CHANNEL_TOPIC:
            self.send(encode_khala_frame(self.join_ref, frame_topic, 0, KIND_ERROR, payload))

    def refuse(self, frame: Frame | None, payload: dict, *, close: bool = False, at_once: bool = False) -> None:
        """An error reply to ``frame`` (a bare ``sync:error`` when it could not be decoded);
        ``close``: then close the socket with the code's close code; ``at_once``: a refusal by the
        frame handler itself, sent under the ``answer`` rule."""
        metrics.FRAMES_REJECTED.labels(code=payload["code"]).inc()
        if frame is None:
            self.send(encode_frame(None, None, PHOENIX_TOPIC, SYNC_ERROR, payload))
        elif at_once and not close:
            self.answer(encode_error_reply(frame, payload))
        else:
            self.send(encode_error_reply(frame, payload))
        if close:
            self.closed = True
            self._close_socket(close_code(payload["code"]), True)

    def close(self, code: str, payload: dict | None = None, *, channel: str = CHANNEL_TOPIC, flush: bool = True) -> None:
        """Send ``payload`` as ``sync:error`` (if given), then close with the code's close code
        (``flush``: once what is queued, the error included, has been written)."""
        if self.closed:
            return
        if payload is not None:
            self.push_error(payload, channel=channel)
        self.closed = True
        self._close_socket(close_code(code), flush)

    def slow_consumer(self) -> None:
        if self.closed:
            return
        metrics.SLOW_CONSUMER_CLOSES.inc()
        payload = error_payload("slow_consumer", action="disconnect", queue_limit=self.queue.max_items,
                                full_resync_required=self.full_resync_required())
        self.closed = True
        self.queue.close()
        # The queue is full and the client is not reading: the error frame goes straight to the
        # transport (best effort) and the socket is closed without flushing.
        self._close_socket(close_code("slow_consumer"), False, encode_frame(self.join_ref, None, CHANNEL_TOPIC, SYNC_ERROR, payload))

    def shutdown(self) -> None:
        """The socket is gone: nothing more is queued, and what was queued is dropped."""
        self.closed = True
        self.queue.close()


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
        self.left = 1  # pairs until the next observation: a hot path may count down itself and call ``observe`` at 0

    def sent(self, committed_at: float, wall_clock) -> None:
        self.left -= 1
        if not self.left:
            self.observe(committed_at, wall_clock)

    def observe(self, committed_at: float, wall_clock) -> None:
        self.left = self.every
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

"""Frames reach their sockets in few writes: at once when nothing waits, else once per loop turn in ONE write.

The per-socket writer task (``sync.outbound.run_writer``) wakes once per frame and hands each frame
to the server separately: a task switch, an ASGI ``send`` and a transport write per (socket,
frame). When the server's transport takes ready-made frames (``SocketWriter.direct``: daphne and
uvicorn's default implementation), sockets use this module instead:

- ``DirectSocket`` is the socket's ``OutboundQueue`` (the same bounds, ``offer`` result and waits
  as on the writer-task path, so the session's slow-consumer and backpressure rules are
  unchanged);
- a frame offered to a socket with nothing queued, whose transport is open and below its
  high-water mark, is written at once, if the socket was not already written at once in this
  flusher turn: the common case of live fan-out (one frame per socket per commit) costs one
  transport write and no queue, no pending mark and no flush. A frame can only be written at once
  when nothing waits before it, so nothing is reordered;
- any other frame is queued, which marks the socket pending with the event loop's ``Flusher``.
  It runs once per loop turn (``call_soon`` when the first socket becomes pending, or after the
  first write at once) and flushes every pending socket: everything queued for it, in order,
  becomes one transport write of WebSocket frames (``sync.wire``; a frame shared by many sockets
  is framed once), or several of about ``WRITE_BYTES`` when more is queued. So a socket gets at
  most one write at once and one flush per turn, and frames handed over together (a range the
  hub cut into several batch frames, a batch with its ``sync:frame`` envelope: ``Outbox.send_many``)
  are always queued, so they go out as one write;
- a socket whose transport is above its high-water mark (the client stopped reading) is skipped:
  its frames stay queued, one small task waits for the transport to drain and marks it pending
  again. Its queue fills while it is stuck, and the session closes it as ``slow_consumer`` as
  before. Other sockets are never delayed by it: a write never blocks, and a flush takes at most
  ``FLUSH_MAX_BYTES`` from one socket per turn before the others get theirs.

Memory: an idle socket on this path holds no task, and its ``OutboundQueue`` no deque and no
``asyncio.Event`` (they exist only while frames are queued or someone waits); the writer-task
path keeps one task per socket and its frames.

Frames are never merged or reordered: each keeps its own batch (≤ 200 updates / 2 MiB, cut by the
hub and the follower), only the writes are fewer. Batch frames above the server's message limit
(daphne's ``--websocket-max-message-size``) are refused as ``send`` would refuse them: the socket is
closed (1011), never sent a frame its server could not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref

from sync import metrics
from sync.outbound import LIVE_LAG_SAMPLER, OutboundQueue
from sync.wire import SharedFrame, websocket_text_frame

log = logging.getLogger(__name__)

# One transport write carries whole frames up to about this many bytes (at least one frame): the
# size of the servers' write buffer high-water mark (Twisted's ``bufferSize``, asyncio's default),
# so a socket whose client stopped reading gets at most about that much more buffered than with a
# ``send`` per frame, which also stopped at that mark.
WRITE_BYTES = 64 * 1024
# Most one socket gets written per loop turn; the rest goes next turn, after the other sockets.
FLUSH_MAX_BYTES = 1024 * 1024


class FrameTooLarge(Exception):
    """A frame above the server's message limit (``SocketWriter.max_message_bytes``)."""


class DirectSocket(OutboundQueue):
    """One socket's outbound queue, written by the loop's ``Flusher`` or, when nothing waits, at once
    (see module docstring). The socket is its own queue: ``offer`` is the one call per frame.

    ``on_failure()`` is called (inside the exception handler) when a write failed; the caller
    closes the socket."""

    __slots__ = ("writer", "flusher", "on_failure", "stopped", "_drain_waiter", "sampler", "wall_clock", "_is_ready", "_write",
                 "_limit", "_written_turn", "ready_now", "__weakref__")

    def __init__(self, writer, max_items: int, max_bytes: int, *, on_failure, flusher=None, sampler=None, wall_clock=time.time):
        flusher = flusher or flusher_of_running_loop()
        # Queuing a frame marks the socket pending straight away (no ``schedule`` call per frame:
        # a stopped socket marked pending is skipped by ``flush``).
        super().__init__(max_items, max_bytes, on_offer=functools.partial(flusher.add, self))
        self.writer = writer
        self.flusher = flusher
        self.on_failure = on_failure
        self.stopped = False
        self._drain_waiter: asyncio.Task | None = None
        self.sampler = sampler or LIVE_LAG_SAMPLER
        self.wall_clock = wall_clock
        # The writer's channel is fixed once the socket is accepted: its two calls of the common
        # case, and the server's message limit, bound once.
        self._is_ready = writer.ready
        self._write = writer.write_frames
        self._limit = writer.max_message_bytes
        self._written_turn = -1  # the flusher turn in which ``offer`` last wrote at once
        # ``ready()``'s answer, refreshed whenever the server changes what it reads (the transport
        # pausing or resuming, its WebSocket leaving the open state): ``offer`` reads this slot
        # instead of the server's objects, which no other step of a delivery touches.
        writer.watch_readiness(self._readiness_changed)
        self.ready_now = self._is_ready()

    def offer(self, text: str, committed_at: float | None = None) -> bool:
        """Queue a frame, or write it at once when that cannot reorder or multiply writes: nothing
        is queued, the socket was not written at once earlier in this flusher turn (a second frame
        of the turn is queued and goes out with the flusher's one write), and the transport is
        open and below its high-water mark. False when the queue is full (the caller closes the
        socket as ``slow_consumer``)."""
        if self._items is None and self._written_turn != self.flusher.turn and not self.stopped and not self.closed and self.ready_now:
            wire = text.wire if type(text) is SharedFrame else websocket_text_frame(text)
            limit = self._limit
            if not limit or len(wire) <= limit:  # a larger one is queued: ``flush`` decides exactly
                try:
                    self._write(wire)
                except Exception:
                    log.warning("socket write failed; closing the socket", exc_info=True)
                    self.fail()
                    return True  # the socket is closing: nothing to queue
                flusher = self.flusher
                self._written_turn = flusher.turn
                flusher.writes += 1
                flusher.frames += 1
                if not flusher.scheduled:
                    flusher.schedule()  # ends the turn (and publishes the counts)
                if committed_at is not None:  # ``LagSampler.sent``, inline: this runs per (socket, frame)
                    sampler = self.sampler
                    sampler.left -= 1
                    if not sampler.left:
                        sampler.observe(committed_at, self.wall_clock)
                return True
        return OutboundQueue.offer(self, text, committed_at)

    def _readiness_changed(self) -> None:
        """Called by the server's objects as they change (inside their own code: never raises)."""
        try:
            self.ready_now = self._is_ready()
        except Exception:
            self.ready_now = False  # ``flush`` asks the server itself
            log.exception("reading a socket's readiness failed")

    def schedule(self) -> None:
        if not self.stopped:
            self.flusher.add(self)

    def stop(self) -> None:
        """No more writes from here (the socket is closing or gone)."""
        self.stopped = True
        if self._drain_waiter is not None:
            self._drain_waiter.cancel()
            self._drain_waiter = None

    def fail(self) -> None:
        """A write failed (inside its exception handler): stop and have the socket closed."""
        self.stop()
        self.close()
        try:
            self.on_failure()
        except Exception:
            log.exception("closing a socket after a failed write failed")

    def flush(self) -> bool:
        """Write what is queued, in writes of about ``WRITE_BYTES``, while the transport takes them
        (at most ``FLUSH_MAX_BYTES`` this turn); False if nothing was written (nothing queued, the
        socket closing, or its transport full)."""
        writer = self.writer
        if self.stopped or self.closed or not len(self):
            return False
        ready = self.ready_now = self._is_ready()  # asked afresh: a flush is rare and must be exact
        if not ready:
            if writer.is_open() and not writer.writable():
                self._wait_for_drain()  # the client stopped reading: written once the transport drains
            return False
        limit = self._limit
        flusher = self.flusher
        total = 0
        while True:
            chunks = []
            size = 0
            committed = []
            while len(self) and size < WRITE_BYTES:
                text, committed_at = self.take_nowait()
                wire = _checked_frame(text, limit)
                chunks.append(wire)
                size += len(wire)
                if committed_at is not None:
                    committed.append(committed_at)
            self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            flusher.writes += 1
            flusher.frames += len(chunks)
            for committed_at in committed:
                self.sampler.sent(committed_at, self.wall_clock)
            total += size
            if not len(self):
                return True
            if not writer.writable():
                # Above the transport's high-water mark, as a ``send`` of the same frames would
                # have stopped: wait for it to drain (the queue fills meanwhile).
                self._wait_for_drain()
                return True
            if total >= FLUSH_MAX_BYTES:
                self.schedule()  # the next turn: the other sockets get theirs first
                return True

    def _wait_for_drain(self) -> None:
        if self._drain_waiter is None and not self.stopped:
            self._drain_waiter = asyncio.ensure_future(self._drained())

    async def _drained(self) -> None:
        try:
            await self.writer.wait_writable()
        finally:
            self._drain_waiter = None
        self.schedule()


def _checked_frame(text: str, limit: int | None) -> bytes:
    """The WebSocket frame of ``text`` (a ``SharedFrame``'s was built once, with it), refused with
    ``FrameTooLarge`` when its payload is above the server's message limit."""
    wire = text.wire if type(text) is SharedFrame else websocket_text_frame(text)
    if limit and len(wire) > limit and len(wire) - _header_length(wire) > limit:
        raise FrameTooLarge(f"a {len(wire)}-byte frame is above the server's message limit of {limit} bytes")
    return wire


def _header_length(wire: bytes) -> int:
    length = wire[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10


class Flusher:
    """The event loop's one flush per turn over every pending socket.

    A turn is the time between two runs: ``DirectSocket.offer`` writes a socket at once at most
    once per turn and schedules the run that ends the turn; what the socket is sent after that
    within the turn is queued and flushed together."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: dict = {}
        self.scheduled = False
        self.turn = 0
        self.writes = 0  # transport writes (about one per socket written in a turn)
        self.frames = 0  # frames in those writes
        self._published = (0, 0)  # ``writes``, ``frames`` as last added to the metrics

    def add(self, socket: DirectSocket) -> None:
        self.pending[socket] = None
        if not self.scheduled:
            self.schedule()

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self.scheduled = False
        self.turn += 1
        pending, self.pending = self.pending, {}
        for socket in pending:
            try:
                socket.flush()
            except Exception:
                log.warning("socket write failed; closing the socket", exc_info=True)
                socket.fail()
        writes, frames = self._published
        _WRITES.inc(self.writes - writes)
        _FRAMES.inc(self.frames - frames)
        self._published = (self.writes, self.frames)


_WRITES = metrics.TRANSPORT_WRITES.labels(path="direct")
_FRAMES = metrics.FRAMES_WRITTEN.labels(path="direct")

_flushers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher]" = weakref.WeakKeyDictionary()


def flusher_of_running_loop() -> Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = Flusher(loop)
    return flusher

"""Writing to the socket with backpressure, under uvicorn and under daphne.

What each ASGI server does when a client stops reading:

- **uvicorn** (``websockets`` and ``wsproto`` implementations): ``await send({"type":
  "websocket.send"})`` writes the frame and then waits for the asyncio transport to drain below
  its high-water mark. A writer that awaits ``send`` stops when the client stops reading.
- **daphne** (Twisted + autobahn): ``send`` is ``partial(Server.handle_reply, protocol)``; it
  hands the frame to autobahn, which writes into the Twisted transport and returns at once. The
  transport buffers without limit (django/daphne#170), so a naive writer never stops and the
  process grows. Twisted's own backpressure API is the fix: a streaming producer registered on the
  connection (``WebSocketAdapterProtocol.registerProducer``, autobahn's documented API) gets
  ``pauseProducing()`` when the transport holds more than ``bufferSize`` (64 KiB) and
  ``resumeProducing()`` when it drained. ``SocketWriter`` registers one and waits while paused,
  which gives daphne the same bounded behaviour as uvicorn. The reactor is daphne's asyncio
  reactor, so the producer callbacks run on the same event loop as the writer.

If a daphne build ever stops exposing the protocol through ``send`` (the partial's first
argument), the writer falls back to plain sends and logs a warning once: correctness is unchanged,
only the slow-consumer bound then relies on the outbound queue alone, which no longer fills.

**Direct writes** (``direct``): on daphne (with the producer attached) and on uvicorn's default
WebSocket implementation (``websockets-sansio``, no extension negotiated) the writer also reaches
the server's transport itself, so ``sync.socket_flush`` can write a frame at once when nothing is
queued, and everything queued for a socket within one loop turn as ONE transport write of ready-made WebSocket frames (``sync.wire``), the
frames many sockets share framed once. It writes only while the server's own WebSocket state is
open (daphne: autobahn ``STATE_OPEN`` with nothing in its chopped-write queue; uvicorn: no close
sent, ``websockets`` state OPEN, transport not closing), so its frames never follow a close frame;
whole frames only, so the server's own pings, pongs and close frames interleave at frame
boundaries as they do with ``send``. Backpressure is the same signal: daphne's producer, uvicorn's
``writable`` event (set by the transport's ``pause_writing``/``resume_writing``). A socket keeps
that answer (open and writable) and is told whenever anything it is made of changes
(``SocketWriter.watch_readiness``), instead of asking before each frame. Any other server
(or uvicorn's ``websockets``/``wsproto`` implementations) gets ``send`` only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket

try:  # Twisted (and zope.interface) come with daphne; uvicorn-only deployments may lack them.
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer
except ImportError:  # pragma: no cover
    IPushProducer = implementer = None

from sync import metrics
from sync.attribute_watch import watch

log = logging.getLogger(__name__)
_warned = False
_SEND_WRITES = metrics.TRANSPORT_WRITES.labels(path="send")
_SEND_FRAMES = metrics.FRAMES_WRITTEN.labels(path="send")


class _Gate:
    """``asyncio.Event``'s ``is_set``/``set``/``clear``/``wait``, allocating a waiter only while one
    is needed (an Event holds an empty deque of 64 slots: ~0.7 KiB per idle socket)."""

    __slots__ = ("_open", "_waiter")

    def __init__(self):
        self._open = True
        self._waiter: asyncio.Future | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> None:
        while not self._open:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)  # one waiter's cancellation must not wake the others


class _Writability:
    """A Twisted streaming producer that mirrors the transport's pause state into a ``_Gate`` and
    tells ``listener`` (``_DaphneChannel.watch``) after each change."""

    def __init__(self):
        self.writable = _Gate()
        self.pauses = 0
        self.listener = None

    def pauseProducing(self):
        log.debug("transport paused")
        self.pauses += 1
        self.writable.clear()
        if self.listener is not None:
            self.listener()

    def resumeProducing(self):
        self.writable.set()
        if self.listener is not None:
            self.listener()

    def stopProducing(self):  # connection lost: release any waiter
        self.resumeProducing()


if IPushProducer is not None:
    _Writability = implementer(IPushProducer)(_Writability)


def _is_stale_http_channel(producer, transport, protocol) -> bool:
    try:
        from twisted.web.http import HTTPChannel
    except ImportError:  # pragma: no cover
        return False
    handed_over = getattr(transport, "protocol", None) is protocol or getattr(transport, "wrappedProtocol", None) is protocol
    return isinstance(producer, HTTPChannel) and handed_over


def _daphne_protocol(send):
    """The autobahn protocol behind daphne's ``send`` partial, or None for other servers."""
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if hasattr(protocol, "registerProducer") and hasattr(protocol, "transport"):
            return protocol
    return None


class _DaphneChannel:
    """Direct writes to daphne's (autobahn's) transport; writable per the registered producer."""

    __slots__ = ("protocol", "producer")

    def __init__(self, protocol, producer: _Writability):
        self.protocol = protocol
        self.producer = producer

    def is_open(self) -> bool:
        protocol = self.protocol
        return protocol.state == protocol.STATE_OPEN and not protocol.send_queue and protocol.transport is not None

    def writable(self) -> bool:
        return self.producer.writable.is_set()

    def ready(self) -> bool:
        """``is_open() and writable()`` in one call (asked once per frame written at once)."""
        protocol = self.protocol
        return (
            self.producer.writable._open and protocol.state == protocol.STATE_OPEN and not protocol.send_queue
            and protocol.transport is not None
        )

    def watch(self, listener) -> None:
        """``listener()`` after every change of what ``ready()`` reads: the producer's pause state
        and autobahn's ``state`` (every close, whoever starts it, moves it off ``STATE_OPEN``; the
        connection's loss sets ``STATE_CLOSED``). The chopped-write queue is not watched: it fills
        only on ``sendData(sync=True)`` or with a ``chopsize``, which daphne never asks for."""
        self.producer.listener = listener
        watch(self.protocol, ("state",), listener)

    async def wait_writable(self) -> None:
        await self.producer.writable.wait()

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)


class _UvicornChannel:
    """Direct writes to uvicorn's asyncio transport (``websockets-sansio`` implementation)."""

    __slots__ = ("protocol",)

    def __init__(self, protocol):
        self.protocol = protocol

    def is_open(self) -> bool:
        protocol = self.protocol
        return (
            not protocol.close_sent and not protocol.disconnected and protocol.conn.state is _WS_OPEN
            and not protocol.transport.is_closing()
        )

    def writable(self) -> bool:
        return self.protocol.writable.is_set()

    def ready(self) -> bool:
        """``is_open() and writable()`` in one call (asked once per frame written at once)."""
        protocol = self.protocol
        return (
            protocol.writable._value and not protocol.close_sent and not protocol.disconnected
            and protocol.conn.state is _WS_OPEN and not protocol.transport.is_closing()
        )

    def watch(self, listener) -> None:
        """``listener()`` after every change of what ``ready()`` reads.

        - ``writable``: the transport calls the protocol's ``pause_writing``/``resume_writing`` by
          name, so wrappers set on the instance see both;
        - ``close_sent``, ``disconnected`` and the ``websockets`` state: every assignment
          (``sync.attribute_watch``);
        - the transport closing is not watched (uvloop's transport is C): uvicorn closes it only
          after one of the above changed (a close sent or received, the connection lost, a
          keepalive timeout, shutdown), or once the ASGI app returned, when the socket is gone.
        ``tests/sync/test_uvicorn_channel.py`` checks each close on both loops."""
        protocol = self.protocol

        def pause_writing() -> None:
            type(protocol).pause_writing(protocol)  # the class's: a second watch does not wrap the first
            listener()

        def resume_writing() -> None:
            type(protocol).resume_writing(protocol)
            listener()

        protocol.pause_writing, protocol.resume_writing = pause_writing, resume_writing
        watch(protocol, ("close_sent", "disconnected"), listener)
        watch(protocol.conn, ("state",), listener)

    async def wait_writable(self) -> None:
        await self.protocol.writable.wait()

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)


try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _UvicornSansIO
    from websockets.protocol import State as _WSState

    _WS_OPEN = _WSState.OPEN
except ImportError:  # pragma: no cover
    _UvicornSansIO = _WS_OPEN = None


def _uvicorn_protocol(send):
    """uvicorn's WebSocket protocol behind ``send`` (its bound method), when it can take direct writes."""
    protocol = getattr(send, "__self__", None)
    if _UvicornSansIO is None or not isinstance(protocol, _UvicornSansIO):
        return None
    if protocol.conn.extensions:  # e.g. permessage-deflate negotiated: frames must go through it
        return None
    return protocol


def _no_delay(transport) -> None:
    """Turn Nagle's algorithm off on the TCP connection under an asyncio ``transport``.

    Why: uvicorn started with ``--fd`` (how ``khala_project.serve --fd``, the test harness and the
    benchmarks start it) wraps the inherited descriptor as ``socket.fromfd(fd, AF_UNIX, …)``, so
    both uvloop and asyncio take the TCP listener for a Unix-domain one and never set
    ``TCP_NODELAY`` on what it accepts (with ``--host``/``--port`` they do). With Nagle on, a
    frame written while the previous one is still unacknowledged waits for that ACK, which Linux
    delays by 40 ms or more when it acknowledges lazily. daphne needs nothing: autobahn sets
    ``TCP_NODELAY`` itself. A Unix-domain connection refuses the option, which is then left
    alone."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class SocketWriter:
    """``send_text`` returns once the server's transport can take more (see module docstring)."""

    def __init__(self, send):
        self._send = send
        self._producer: _Writability | None = None
        self._channel = None  # direct writes (see module docstring), None: ``send`` only
        self.server = "asgi"
        # Largest message the server will send, when it has such a limit. autobahn (daphne)
        # applies --websocket-max-message-size to outgoing messages too and raises on larger
        # ones, so sessions cap their batch frames below it.
        self.max_message_bytes: int | None = None

    def attach(self) -> None:
        """Call after ``websocket.accept`` was sent."""
        global _warned
        protocol = _daphne_protocol(self._send)
        if protocol is None:
            _no_delay(getattr(getattr(self._send, "__self__", None), "transport", None))
            uvicorn = _uvicorn_protocol(self._send)
            if uvicorn is not None:
                self.server = "uvicorn"
                self._channel = _UvicornChannel(uvicorn)
                self.write_frames = uvicorn.transport.write  # see ``write_frames``
            return
        self.server = "daphne"
        limit = getattr(protocol, "maxMessagePayloadSize", 0)
        if isinstance(limit, int) and limit > 0:
            self.max_message_bytes = limit
        transport = protocol.transport
        existing = getattr(transport, "producer", None)
        if existing is not None and _is_stale_http_channel(existing, transport, protocol):
            # Twisted's HTTPChannel registered itself as the transport's producer when the
            # connection opened; daphne then handed the transport to the WebSocket protocol
            # (``transport.protocol`` is the WebSocket protocol now). That registration is dead
            # weight and blocks ours: a transport has one producer slot.
            transport.unregisterProducer()
            existing = None
        if IPushProducer is None or existing is not None:
            if not _warned:
                _warned = True
                log.warning("daphne transport backpressure unavailable; slow consumers are bounded by the queue only")
            return
        self._producer = _Writability()
        protocol.registerProducer(self._producer, True)
        log.debug("daphne transport backpressure attached to %r", protocol.transport)
        if getattr(protocol, "_perMessageCompress", None) is None:
            self._channel = _DaphneChannel(protocol, self._producer)
            self.write_frames = transport.write  # see ``write_frames``

    @property
    def paused(self) -> bool:
        if self._channel is not None:
            return not self._channel.writable()
        return self._producer is not None and not self._producer.writable.is_set()

    # ---- direct writes (``sync.socket_flush``) ----------------------------------------------

    @property
    def direct(self) -> bool:
        """The server's transport takes ready-made frames from this writer."""
        return self._channel is not None

    def is_open(self) -> bool:
        """The server's WebSocket is open for data frames (no close sent or received)."""
        return self._channel.is_open()

    def writable(self) -> bool:
        """The transport's buffer is below the server's high-water mark."""
        return self._channel.writable()

    @property
    def ready(self):
        """``() -> bool``: ``is_open() and writable()`` in one call (the channel's own method)."""
        return self._channel.ready

    def watch_readiness(self, listener) -> None:
        """Call ``listener()`` after anything ``ready()`` depends on may have changed: the
        transport pausing or resuming, the server's WebSocket leaving the open state (one
        listener per socket: the last one set). A socket that keeps ``ready()``'s answer and
        refreshes it then need not ask before each frame (``sync.socket_flush.DirectSocket``)."""
        self._channel.watch(listener)

    async def wait_writable(self) -> None:
        await self._channel.wait_writable()

    def write_frames(self, data: bytes) -> None:
        """Whole WebSocket frames, written as one transport write (only while ``is_open()``).

        ``attach`` replaces this method on the instance with the transport's own ``write``
        (a connection keeps its transport): it is called once per frame written at once, and
        two wrapper calls per delivered frame were measurable there."""
        self._channel.write(data)

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})
        _SEND_WRITES.inc()
        _SEND_FRAMES.inc()
        if self._producer is not None and not self._producer.writable.is_set():
            await self._producer.writable.wait()

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})

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
"""

from __future__ import annotations

import asyncio
import functools
import logging

try:  # Twisted (and zope.interface) come with daphne; uvicorn-only deployments may lack them.
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer
except ImportError:  # pragma: no cover
    IPushProducer = implementer = None

log = logging.getLogger(__name__)
_warned = False


class _Writability:
    """A Twisted streaming producer that mirrors the transport's pause state into an asyncio.Event."""

    def __init__(self):
        self.writable = asyncio.Event()
        self.writable.set()
        self.pauses = 0

    def pauseProducing(self):
        log.debug("transport paused")
        self.pauses += 1
        self.writable.clear()

    def resumeProducing(self):
        self.writable.set()

    def stopProducing(self):  # connection lost: release any waiter
        self.writable.set()


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


class SocketWriter:
    """``send_text`` returns once the server's transport can take more (see module docstring)."""

    def __init__(self, send):
        self._send = send
        self._producer: _Writability | None = None
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

    @property
    def paused(self) -> bool:
        return self._producer is not None and not self._producer.writable.is_set()

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})
        if self._producer is not None and not self._producer.writable.is_set():
            await self._producer.writable.wait()

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})

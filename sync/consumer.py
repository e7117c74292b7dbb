"""The Channels consumer of one sync socket: a thin adapter over ``sync.session.Session``.

It accepts the socket, creates a ``Session`` (the state machine) on the worker's hub, feeds it each
text frame, runs the writer task that drains the bounded outbound queue to the socket (where the
server's transport cannot be written directly) and closes the socket when the session asks. The
session runs its commands on a task of its own, only while it has some (``sync.command_queue``).
No ORM, no JSON, no protocol rules here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import parse_qsl

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer

from khala_project.conf import khala_setting
from sync import admission, metrics
from sync.errors import CONNECT_RATE_LIMITED_CLOSE_CODE, close_code
from sync.hub import get_hub
from sync.outbound import OutboundQueue, run_writer
from sync.protocol import SUPPORTED_VSN
from sync.session import Session, connect_params_refusal
from sync.socket_flush import DirectSocket
from sync.transport import SocketWriter

log = logging.getLogger(__name__)

# How long a closing socket may take to flush its last frames (e.g. the error that explains the close).
CLOSE_FLUSH_SECONDS = 2.0


class SyncSocket(AsyncConsumer):
    """``/sync/socket/websocket`` and ``/socket/websocket`` (route with ``SyncSocket.as_asgi()``).

    Why the channel layer is off per socket (``channel_layer_alias = None``): live fan-out is per
    worker process, not per socket. The worker's hub (``sync.hub``) holds ONE channel-layer channel,
    joins one group per followed topic, reads each new journal range once and offers it to every
    local socket. A channel per socket would mean one Redis subscription and one group membership
    per socket, the same hint delivered N times to one process, and N journal reads of the same
    rows. With the alias None, Channels creates no channel and this consumer receives only what the
    ASGI server sends it.

    Why ``__call__`` and ``dispatch`` are overridden: with no layer there is nothing to multiplex
    with the client's messages, so the base class's ``await_many_dispatch`` (a new Task per received
    message, and a trip through the event loop between two frames that are already buffered) is
    replaced by a plain receive loop: a burst of frames is handled back to back, as the request
    bound of ``Session`` assumes. And the base class turns any message type into a method name
    (``websocket.receive`` → ``websocket_receive``) and calls ``aclose_old_connections()`` — a hop
    to Django's single thread-sensitive executor — before every message. The socket never touches
    Django's database connections (the lane reads through ``sync.journal``'s own pool), so that hop
    would only serialise every frame of every socket through one thread. The three ASGI WebSocket
    events are mapped explicitly; nothing else is reachable.

    Backpressure: frames reach the socket only through ``sync.transport.SocketWriter`` over the
    server's raw ``send`` (``self.base_send``), which waits for uvicorn's transport to drain and
    registers a Twisted producer with daphne (see ``sync.transport``). Receiving is not throttled:
    each frame is handled synchronously and slow work is queued with a bound (``Session``).

    Writing: where the server's transport takes ready-made frames (``SocketWriter.direct``: daphne,
    uvicorn's default WebSocket implementation) the outbound queue is a ``DirectSocket``, which
    writes a frame at once when nothing is queued before it, and the loop's flusher writes
    everything queued for the socket within one loop turn as one transport write
    (``sync.socket_flush``); elsewhere one writer task per socket drains the queue through
    ``send`` (``sync.outbound.run_writer``). Either way every frame of the session goes through its
    one queue, in order; only the last error frame of a closing socket and the close itself are
    handed to ``send`` directly (after the queue was stopped).
    """

    channel_layer_alias = None

    def __init__(self):
        self.session: Session | None = None
        self.hub = None
        self.writer: SocketWriter | None = None
        self.outbound: OutboundQueue | None = None
        self.direct: DirectSocket | None = None  # direct writes (``sync.socket_flush``), else a writer task
        self.writer_task: asyncio.Task | None = None
        self.close_task: asyncio.Task | None = None

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message):
        handler = _HANDLERS.get(message["type"])
        if handler is not None:
            await handler(self, message)

    async def _connect(self, message) -> None:
        params = dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        await self.base_send({"type": "websocket.accept"})
        if params.get("vsn", SUPPORTED_VSN) != SUPPORTED_VSN:
            # No frame: the client's serializer is unknown. The close code says "upgrade".
            await self.base_send({"type": "websocket.close", "code": close_code("upgrade_required")})
            return
        unstorable = connect_params_refusal(params)
        if unstorable is not None:  # e.g. a NUL in the token: refused before the verifier and the hub
            await self.base_send({"type": "websocket.send", "text": unstorable})
            await self.base_send({"type": "websocket.close", "code": close_code("malformed_frame")})
            return
        refusal = await admission.connect_refusal(self.scope)
        if refusal is not None:  # a connection flood: refused before the hub (and its pool) is touched
            await self.base_send({"type": "websocket.send", "text": refusal})
            await self.base_send({"type": "websocket.close", "code": CONNECT_RATE_LIMITED_CLOSE_CODE})
            return
        self.hub = await get_hub()
        self.writer = SocketWriter(self.base_send)
        self.writer.attach()
        limit, max_bytes = int(khala_setting("OUTBOUND_QUEUE_LIMIT")), int(khala_setting("OUTBOUND_QUEUE_MAX_BYTES"))
        if self.writer.direct and khala_setting("SOCKET_DIRECT_WRITES"):  # the loop's flusher writes; no writer task
            self.direct = DirectSocket(self.writer, limit, max_bytes, on_failure=self._write_failed)
            self.outbound = self.direct  # the socket is its own queue
        else:
            self.outbound = OutboundQueue(limit, max_bytes)
        self.session = Session(
            self.hub,
            params=params,
            close_socket=self._close_requested,
            outbound=self.outbound,
            clock=self.hub.clock,
            max_message_bytes=self.writer.max_message_bytes,
            admission=admission.SocketAdmission(secrets.token_hex(12)),
        )
        self.hub.add(self.session)
        metrics.ACTIVE_CONNECTIONS.inc()
        if self.direct is None:
            self.writer_task = asyncio.create_task(self._write())

    async def _receive(self, message) -> None:
        if self.session is not None:
            self.session.handle_text(message.get("text"), message.get("bytes"))

    async def _disconnect(self, message) -> None:
        if self.session is not None:
            session = self.session
            session.shutdown()  # cancels its command task, if one runs
            self.hub.remove(session)
            metrics.ACTIVE_CONNECTIONS.dec()
            self._stop_writer()
            if self.close_task is not None and not self.close_task.done():
                self.close_task.cancel()
            self.session = None
            try:  # give the user's socket place back now (else its lease lapses on its own)
                await session.admission.release()
            except Exception:
                log.warning("releasing the socket's place failed; its lease will lapse", exc_info=True)
        raise StopConsumer

    def _stop_writer(self) -> None:
        if self.direct is not None:
            self.direct.stop()
        if self.writer_task is not None and not self.writer_task.done():
            self.writer_task.cancel()

    def _write_failed(self) -> None:
        # A direct write was refused (see ``_write`` for the same case with the writer task).
        self._close_requested(close_code("internal"), False)

    async def _write(self) -> None:
        try:
            await run_writer(self.outbound, self.writer)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The peer went away mid-send (the disconnect message follows), or the server refused
            # the frame (e.g. daphne's --websocket-max-message-size also limits what we send).
            # Either way this socket cannot continue: close it rather than leave it mute.
            log.warning("socket write failed; closing the socket", exc_info=True)
            self.outbound.close()
            try:
                await self.writer.close(close_code("internal"))
            except Exception:
                pass

    def _close_requested(self, code: int, flush: bool, last_frame: str | None = None) -> None:
        if self.close_task is None:
            self.close_task = asyncio.create_task(self._close(code, flush, last_frame))

    async def _close(self, code: int, flush: bool, last_frame: str | None) -> None:
        if flush:
            # Let the writer send what is queued (the error explaining the close) first.
            try:
                await asyncio.wait_for(self.outbound.wait_empty(), CLOSE_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
        self._stop_writer()
        self.outbound.close()
        try:
            if last_frame is not None and not self.writer.paused:
                await asyncio.wait_for(self.writer.send_text(last_frame), CLOSE_FLUSH_SECONDS)
        except (asyncio.TimeoutError, Exception):
            pass
        try:
            await self.writer.close(code)
        except Exception:
            log.debug("socket close failed", exc_info=True)


# The ASGI WebSocket events this consumer handles; anything else is ignored (see ``dispatch``).
_HANDLERS = {
    "websocket.connect": SyncSocket._connect,
    "websocket.receive": SyncSocket._receive,
    "websocket.disconnect": SyncSocket._disconnect,
}

"""The Channels-side adapter of one sync socket: a plain ASGI application, nothing more.

It accepts the socket, creates a ``Session`` (``sync.session``, the state machine) on the worker's
hub, feeds it each text frame, runs its command task and the writer task that drains the bounded
outbound queue to the socket, and closes the socket when the session asks. No ORM, no JSON, no
protocol rules here, and no message-type dispatch: channel-layer traffic goes to the hub, so no
method of this class is reachable from outside.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl

from khala_project.conf import khala_setting
from sync import metrics
from sync.errors import close_code
from sync.hub import get_hub
from sync.outbound import OutboundQueue, run_writer
from sync.protocol import SUPPORTED_VSN
from sync.session import Session
from sync.transport import SocketWriter

log = logging.getLogger(__name__)

# How long a closing socket may take to flush its last frames (e.g. the error that explains the close).
CLOSE_FLUSH_SECONDS = 2.0


class SyncSocket:
    """ASGI app for ``/sync/socket/websocket`` and ``/socket/websocket``."""

    async def __call__(self, scope, receive, send):
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        await send({"type": "websocket.accept"})
        if params.get("vsn", SUPPORTED_VSN) != SUPPORTED_VSN:
            # No frame: the client's serializer is unknown. The close code says "upgrade".
            await send({"type": "websocket.close", "code": close_code("upgrade_required")})
            await _drain_until_disconnect(receive)
            return
        await _Connection(params, receive, send).serve()


class _Connection:
    def __init__(self, params, receive, send):
        self.params = params
        self.receive = receive
        self.writer = SocketWriter(send)
        self.outbound = OutboundQueue(int(khala_setting("OUTBOUND_QUEUE_LIMIT")), int(khala_setting("OUTBOUND_QUEUE_MAX_BYTES")))
        self.writer_task: asyncio.Task | None = None
        self.close_task: asyncio.Task | None = None

    async def serve(self) -> None:
        hub = await get_hub()
        self.writer.attach()
        session = Session(
            hub,
            params=self.params,
            close_socket=self._close_requested,
            outbound=self.outbound,
            clock=hub.clock,
            max_message_bytes=self.writer.max_message_bytes,
        )
        hub.add(session)
        metrics.ACTIVE_CONNECTIONS.inc()
        self.writer_task = asyncio.create_task(self._write())
        command_task = asyncio.create_task(session.run())
        try:
            while True:
                message = await self.receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    session.handle_text(message.get("text"), message.get("bytes"))
                elif kind == "websocket.disconnect":
                    break
        finally:
            session.shutdown()
            hub.remove(session)
            metrics.ACTIVE_CONNECTIONS.dec()
            for task in (command_task, self.writer_task, self.close_task):
                if task is not None and not task.done():
                    task.cancel()

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
        self.writer_task.cancel()
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


async def _drain_until_disconnect(receive) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass

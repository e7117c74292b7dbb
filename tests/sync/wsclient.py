"""A small Phoenix-v2 test client over either a real socket (``websockets``) or Channels'
``WebsocketCommunicator``. Every wait is a condition with a timeout, never a bare sleep."""

from __future__ import annotations

import asyncio
import itertools
import json

import websockets

from sync.protocol import CHANNEL_TOPIC

DEFAULT_TIMEOUT = 10.0


class Closed(Exception):
    def __init__(self, code):
        super().__init__(f"socket closed with {code}")
        self.code = code


class PhoenixClient:
    def __init__(self, transport):
        self.transport = transport
        self._refs = itertools.count(1)
        self.join_ref: str | None = None
        self.received: list = []  # every frame received, in order
        self.close_code: int | None = None

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, **kwargs) -> "PhoenixClient":
        ws = await websockets.connect(url, max_size=None, open_timeout=10, ping_interval=None, **kwargs)
        return cls(_RealSocket(ws))

    @classmethod
    async def communicator(cls, query: str = "", path: str = "/sync/socket/websocket") -> "PhoenixClient":
        from channels.testing import WebsocketCommunicator

        from khala_project.asgi import application

        communicator = WebsocketCommunicator(application, f"{path}?{query}" if query else path)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        return cls(_Communicator(communicator))

    # ---- frames ---------------------------------------------------------------------------

    def next_ref(self) -> str:
        return str(next(self._refs))

    async def send_raw(self, text: str) -> None:
        await self.transport.send(text)

    async def push(self, event: str, payload: dict, *, topic: str = CHANNEL_TOPIC, join_ref="auto") -> str:
        ref = self.next_ref()
        jr = self.join_ref if join_ref == "auto" else join_ref
        await self.send_raw(json.dumps([jr, ref, topic, event, payload]))
        return ref

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> list:
        text = await self.transport.recv(timeout)
        if text is None:
            self.close_code = self.transport.close_code
            raise Closed(self.close_code)
        frame = json.loads(text)
        self.received.append(frame)
        return frame

    async def recv_until(self, predicate, timeout: float = DEFAULT_TIMEOUT) -> list:
        """Frames received until one matches ``predicate`` (inclusive)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        frames = []
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s; got {frames[-5:]}")
            frame = await self.recv(remaining)
            frames.append(frame)
            if predicate(frame):
                return frames

    async def reply(self, ref: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[dict, list]:
        """(reply payload, frames before it) for the push with ``ref``."""
        frames = await self.recv_until(lambda f: f[3] == "phx_reply" and f[1] == ref, timeout)
        return frames[-1][4], frames[:-1]

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.recv(max(deadline - loop.time(), 0.01))
            except Closed as closed:
                return closed.code
            if loop.time() > deadline:
                raise TimeoutError("socket still open")

    # ---- sync:v1 helpers --------------------------------------------------------------------

    async def join(self, payload: dict | None = None) -> dict:
        ref = self.next_ref()
        self.join_ref = ref
        await self.send_raw(json.dumps([ref, ref, CHANNEL_TOPIC, "phx_join", payload or {}]))
        reply, _ = await self.reply(ref)
        return reply

    async def subscribe(self, topics, resume_after=None, **extra) -> tuple[dict, list]:
        payload = {"topics": list(topics), **extra}
        if resume_after is not None:
            payload["resume_after"] = resume_after
        ref = await self.push("sync:subscribe", payload)
        return await self.reply(ref, timeout=extra.pop("_timeout", 30))

    async def close(self) -> None:
        await self.transport.close()


def updates_of(frames) -> list[dict]:
    out = []
    for frame in frames:
        if frame[3] == "sync:update_batch":
            out.extend(frame[4]["updates"])
    return out


class _RealSocket:
    def __init__(self, ws):
        self.ws = ws
        self.close_code = None

    async def send(self, text):
        try:
            await self.ws.send(text)
        except websockets.ConnectionClosed:
            pass  # the server closed while we sent; the next recv reports how

    async def recv(self, timeout):
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else 1006
            return None

    async def close(self):
        await self.ws.close()


class _Communicator:
    def __init__(self, communicator):
        self.c = communicator
        self.close_code = None

    async def send(self, text):
        await self.c.send_to(text_data=text)

    async def recv(self, timeout):
        try:
            message = await asyncio.wait_for(self.c.output_queue.get(), timeout)
        except asyncio.TimeoutError:
            if self.c.future.done():
                self.c.future.result()  # surface the application's exception
            raise
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            return None
        return message.get("text")

    async def close(self):
        await self.c.disconnect(timeout=5)

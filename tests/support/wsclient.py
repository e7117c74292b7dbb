"""THE WebSocket test client of the suite: a small Phoenix-v2 client over one of three transports.

- ``PhoenixClient.connect(url)``: a real socket (``websockets``) to a real server;
- ``PhoenixClient.communicator(query)``: Channels' ``WebsocketCommunicator`` on the in-process app;
- ``PhoenixClient.raw(url, rcvbuf=4096)``: a deliberately minimal WebSocket over a raw TCP socket
  with a small receive buffer, which can simply stop reading (a slow consumer; no library allows
  that) and can send a frame header without its payload (``send_header_only``).

Every wait is a condition with a timeout, never a bare sleep. A close without a close frame is
reported as ``Closed(None)`` — never as a made-up code — so a test naming a close code cannot be
satisfied by a dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
import urllib.parse

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
        return cls(_WebsocketsSocket(ws))

    @classmethod
    async def raw(cls, url: str, *, rcvbuf: int = 4096) -> "PhoenixClient":
        return cls(await asyncio.to_thread(_RawSocket, url, rcvbuf))

    @classmethod
    async def communicator(cls, query: str = "", path: str = "/sync/socket/websocket", *, client=None) -> "PhoenixClient":
        """In process (no server); ``client``: the scope's ``(host, port)`` peer address."""
        from channels.testing import WebsocketCommunicator

        from khala_project.asgi import application

        communicator = WebsocketCommunicator(application, f"{path}?{query}" if query else path)
        if client is not None:
            communicator.scope["client"] = client  # read by the application once it runs, i.e. on connect
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

    async def send_header_only(self, payload_length: int, prefix: bytes = b"") -> None:
        """(raw transport) A text frame header announcing ``payload_length`` bytes, and only
        ``prefix`` of them: what a server's size limit must refuse without reading the rest."""
        await self.transport.send_header_only(payload_length, prefix)

    async def close(self) -> None:
        await self.transport.close()


def updates_of(frames) -> list[dict]:
    out = []
    for frame in frames:
        if frame[3] == "sync:update_batch":
            out.extend(frame[4]["updates"])
    return out


class _WebsocketsSocket:
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
            self.close_code = exc.rcvd.code if exc.rcvd else None  # no close frame: a dropped connection
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


class _RawSocket:
    """The minimal WebSocket client behind ``PhoenixClient.raw`` (blocking socket; calls run in a
    thread). Reads only when asked, so a test can stop reading and let the server's buffers fill."""

    def __init__(self, url: str, rcvbuf: int):
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.close_code = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: fixes the window
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(1)  # byte by byte: never read past the handshake
            if not chunk:
                raise ConnectionError("handshake failed")
            self.buffer += chunk
        status = self.buffer.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(status.decode())
        self.buffer = b""

    @staticmethod
    def _header(length: int) -> bytes:
        header = bytes([0x81])  # FIN + text
        if length < 126:
            return header + bytes([0x80 | length])
        if length < 65536:
            return header + bytes([0x80 | 126]) + struct.pack("!H", length)
        return header + bytes([0x80 | 127]) + struct.pack("!Q", length)

    def _send(self, data: bytes, announced: int | None = None) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        try:
            self.sock.sendall(self._header(len(data) if announced is None else announced) + mask + masked)
        except OSError:
            pass  # the server closed while we sent; the next recv reports how

    async def send(self, text: str) -> None:
        await asyncio.to_thread(self._send, text.encode())

    async def send_header_only(self, payload_length: int, prefix: bytes) -> None:
        await asyncio.to_thread(self._send, prefix, payload_length)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _recv_text(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            while True:
                first, second = self._read_exact(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self._read_exact(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self._read_exact(8))[0]
                opcode, payload = first & 0x0F, self._read_exact(length)
                if opcode == 0x8:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return None
                if opcode == 0x1:
                    return payload.decode()
        except socket.timeout:
            raise asyncio.TimeoutError from None
        except (ConnectionError, OSError):
            return None  # dropped without a close frame: close_code stays None

    async def recv(self, timeout):
        return await asyncio.to_thread(self._recv_text, timeout)

    async def close(self):
        self.sock.close()

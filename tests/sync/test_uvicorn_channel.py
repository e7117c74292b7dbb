"""``sync.transport._UvicornChannel`` on a real, in-process uvicorn (``websockets-sansio``, on the
asyncio and the uvloop event loop): every way a socket stops being writable, the peer's or the
server's, makes ``ready()`` and ``is_open()`` false, and is told to the channel's watcher at once
(``_UvicornChannel.watch``: a direct-writing socket reads only what it was told).

Direct writes bypass uvicorn's ``send``, so these checks are all that keeps a frame from being
written after a close frame or to a lost connection: the channel must see each of these closes
at once, on both loops. Also: Nagle's algorithm is off on the connection whichever way uvicorn
was given its listening socket.
"""

import asyncio
import socket

import pytest
import uvicorn
import websockets

from sync.transport import SocketWriter, _UvicornChannel, _uvicorn_protocol
from sync.wire import websocket_text_frame


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a scenario on a fresh loop of each kind uvicorn runs on (``uvicorn[standard]`` picks
    uvloop when it is installed)."""
    if request.param == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def run_on_loop(scenario, **server_options):
        """``scenario(client, channel, protocol, send)`` on one accepted socket of a fresh server."""

        async def main():
            async with Server(**server_options) as server:
                await scenario(*await server.connect())

        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())

    return run_on_loop


class WatchedChannel(_UvicornChannel):
    """The channel with ``told``: ``ready()`` as last told by ``watch`` (what a ``DirectSocket``
    keeps and reads before each frame). It must equal ``ready()`` whenever it is asked."""

    __slots__ = ("told",)

    def __init__(self, protocol):
        super().__init__(protocol)
        self.watch(self._changed)
        self.told = self.ready()

    def _changed(self):
        self.told = self.ready()

    def consistent(self) -> bool:
        return self.told == self.ready()


def closed_by_uvicorn(protocol) -> bool:
    return protocol.close_sent or protocol.disconnected


class Server:
    """A uvicorn server in this event loop whose app hands each accepted socket's channel to the
    test and then waits until the test lets it return."""

    def __init__(self, *, fd: bool = False):
        self.accepted: asyncio.Queue = asyncio.Queue()
        self.release = asyncio.Event()
        self.fd = fd  # serve an inherited listening socket, as ``uvicorn --fd`` does

    async def app(self, scope, receive, send):
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        SocketWriter(send).attach()  # what Khala's consumer does after the accept
        protocol = _uvicorn_protocol(send)
        await self.accepted.put((WatchedChannel(protocol), protocol, send))
        await self.release.wait()

    async def __aenter__(self):
        options = dict(ws="websockets-sansio", lifespan="off", interface="asgi3", log_level="warning",
                       ws_per_message_deflate=False, ws_ping_interval=None)
        if self.fd:
            self.listener = socket.create_server(("127.0.0.1", 0))
            config = uvicorn.Config(self.app, fd=self.listener.fileno(), **options)
            port = self.listener.getsockname()[1]
        else:
            config = uvicorn.Config(self.app, host="127.0.0.1", port=0, **options)
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        await until(lambda: self.server.started or self.task.done())
        assert self.server.started, "uvicorn did not start"
        if not self.fd:
            port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc):
        self.release.set()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)
        if self.fd:
            self.listener.close()

    async def connect(self):
        client = await websockets.connect(self.url)
        channel, protocol, send = await asyncio.wait_for(self.accepted.get(), 5)
        assert channel.ready() and channel.is_open()
        return client, channel, protocol, send


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def assert_shut(channel, protocol) -> None:
    assert closed_by_uvicorn(protocol)
    assert not channel.ready()
    assert not channel.is_open()
    assert not channel.told


def test_the_server_closing_the_socket_shuts_the_channel_at_once(run):
    async def scenario(client, channel, protocol, send):
        await send({"type": "websocket.close", "code": 4000})
        assert_shut(channel, protocol)  # before the peer answers
        await client.close()

    run(scenario)


def test_a_keepalive_timeout_shuts_the_channel_at_once(run):
    async def scenario(client, channel, protocol, send):
        protocol.keepalive_timeout()  # what uvicorn calls when a ping goes unanswered
        assert_shut(channel, protocol)
        await client.close()

    run(scenario)


def test_the_peers_close_frame_is_told_as_it_arrives(run):
    """The peer's close frame moves ``websockets``' state off OPEN before uvicorn sets any flag of
    its own: the watcher must be told by that change itself."""

    async def scenario(client, channel, protocol, send):
        close_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked (key 0) close frame, code 1000
        protocol.data_received(close_1000)  # as if it had just arrived from the peer
        assert not protocol.disconnected and not protocol.close_sent
        assert not channel.ready() and not channel.told
        await client.close()

    run(scenario)


def test_a_full_transport_is_open_but_not_ready(run):
    async def scenario(client, channel, protocol, send):
        protocol.pause_writing()  # what the transport calls above its high-water mark
        assert channel.is_open() and not channel.ready() and not channel.told
        protocol.resume_writing()
        assert channel.ready() and channel.told
        await client.close()

    run(scenario)


def test_the_transport_itself_tells_the_watcher_when_it_pauses_and_resumes(run):
    """A peer that stops reading fills the transport, which calls the protocol's
    ``pause_writing`` and, once the peer reads again, ``resume_writing``, by name, on either loop:
    the wrappers ``watch`` sets on the instance see both."""

    async def scenario(client, channel, protocol, send):
        assert channel.told
        client.transport.pause_reading()
        frame = websocket_text_frame("x" * 65536)
        sent = 0
        while channel.ready() and sent < 2000:  # the kernel's buffers fill first, then the transport's
            protocol.transport.write(frame)
            sent += 1
            await asyncio.sleep(0)
        assert not channel.ready(), f"the transport never paused after {sent} frames of 64 KiB"
        assert not channel.told and channel.is_open()
        client.transport.resume_reading()
        for _ in range(sent):
            await asyncio.wait_for(client.recv(), 5)
        await until(channel.ready)
        assert channel.told
        await client.close()

    run(scenario)


def test_a_second_watch_replaces_the_listener(run):
    async def scenario(client, channel, protocol, send):
        seen = []
        channel.watch(lambda: seen.append(channel.ready()))
        protocol.pause_writing()
        assert seen == [False] and channel.told  # the first listener is no longer told
        protocol.resume_writing()
        assert seen == [False, True]
        await client.close()

    run(scenario)


@pytest.mark.parametrize("close", ["server", "peer", "reset"])
def test_a_closed_socket_never_looks_writable_again(run, close):
    """From the first of uvicorn's flags going up to the connection being lost, whoever closed."""

    async def scenario(client, channel, protocol, send):
        if close == "server":
            await send({"type": "websocket.close", "code": 1000})
        elif close == "peer":
            await client.close()
        else:
            client.transport.abort()  # no close frame: a reset
        for _ in range(50):
            await asyncio.sleep(0.005)
            assert channel.consistent()
            if closed_by_uvicorn(protocol):
                assert not channel.ready() and not channel.is_open()
        await until(lambda: protocol.disconnected)
        assert_shut(channel, protocol)

    run(scenario)


@pytest.mark.parametrize("fd", [False, True], ids=["host-port", "fd"])
def test_nagle_is_off_also_when_uvicorn_serves_an_inherited_socket(run, fd):
    """``uvicorn --fd`` takes the TCP listener for a Unix-domain one and leaves Nagle on for what
    it accepts; ``SocketWriter.attach`` turns it off (``sync.transport._no_delay``)."""

    async def scenario(client, channel, protocol, send):
        tcp = protocol.transport.get_extra_info("socket")
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await client.close()

    run(scenario, fd=fd)

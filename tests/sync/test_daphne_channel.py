"""``sync.transport._DaphneChannel`` on a real autobahn protocol (the class daphne's extends) over
Twisted's in-memory transport: every way the WebSocket stops being open or writable makes
``ready()`` false and is told to the channel's watcher at once (``_DaphneChannel.watch``: a
direct-writing socket reads only what it was told)."""

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sync.transport import _DaphneChannel, _Writability

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # a masked (key 0) close frame from the peer, code 1000


class Watched:
    def __init__(self):
        factory = WebSocketServerFactory("ws://127.0.0.1:1")
        factory.protocol = WebSocketServerProtocol
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(UPGRADE)
        assert self.protocol.state == self.protocol.STATE_OPEN
        self.producer = _Writability()
        self.protocol.registerProducer(self.producer, True)  # as ``SocketWriter.attach`` does
        self.channel = _DaphneChannel(self.protocol, self.producer)
        self.channel.watch(self._changed)
        self.told = self.channel.ready()

    def _changed(self):
        self.told = self.channel.ready()


@pytest.fixture
def watched():
    return Watched()


def test_an_open_socket_is_ready_and_its_protocol_is_still_autobahns(watched):
    assert watched.told and watched.channel.ready()
    assert isinstance(watched.protocol, WebSocketServerProtocol)
    assert type(watched.protocol).__name__ == "WebSocketServerProtocol"


def test_the_server_closing_is_told_at_once(watched):
    watched.protocol.sendClose(4000)
    assert watched.protocol.state == watched.protocol.STATE_CLOSING
    assert not watched.channel.ready() and not watched.told


def test_the_peers_close_frame_is_told_as_it_arrives(watched):
    watched.protocol.dataReceived(CLOSE_1000)
    assert watched.protocol.state != watched.protocol.STATE_OPEN
    assert not watched.channel.ready() and not watched.told


def test_a_protocol_violation_by_the_peer_is_told(watched):
    watched.protocol.dataReceived(b"\x8f\x80\x00\x00\x00\x00")  # a reserved opcode: autobahn fails the connection
    assert not watched.channel.ready() and not watched.told


def test_the_connection_lost_is_told(watched):
    watched.protocol.connectionLost(Failure(ConnectionResetError("peer gone")))
    assert watched.protocol.state == watched.protocol.STATE_CLOSED
    assert not watched.channel.ready() and not watched.told


def test_a_paused_transport_is_told_and_so_is_its_resume(watched):
    watched.producer.pauseProducing()  # what Twisted calls above the transport's buffer size
    assert watched.channel.is_open() and not watched.told
    watched.producer.resumeProducing()
    assert watched.told


def test_a_second_watch_replaces_the_listener_and_keeps_one_subclass(watched):
    cls = type(watched.protocol)
    seen = []
    watched.channel.watch(lambda: seen.append(watched.channel.ready()))
    assert type(watched.protocol) is cls
    watched.protocol.sendClose(1000)
    assert seen and seen[-1] is False
    assert watched.told  # the first listener is no longer told

"""daphne's listening port accepts at most ``ACCEPTS_PER_LOOP_TURN`` connections per loop turn
(``khala_project.daphne_accepts``), on a real Twisted TCP port with real pending connections: the
rest stay in the listen queue for the next turns, and none is lost."""

import asyncio
import socket

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor

from khala_project import daphne_accepts


class Counting(protocol.Factory):
    def __init__(self):
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return protocol.Protocol()


@pytest.fixture
def port_with_pending(monkeypatch):
    """(port, factory, connect(n)): a listening Twisted port on its own reactor (never run: the
    test calls ``doRead`` as the loop would when the socket is readable)."""
    monkeypatch.setattr(tcp.Port, "doRead", tcp.Port.doRead)  # undone after the test
    monkeypatch.setattr(daphne_accepts, "_installed_limit", None)
    loop = asyncio.new_event_loop()
    reactor = AsyncioSelectorReactor(eventloop=loop)
    factory = Counting()
    port = tcp.Port(0, factory, backlog=128, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    clients = []

    def connect(n):
        for _ in range(n):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            clients.append(client)

    yield port, factory, connect
    for client in clients:
        client.close()
    for reader in list(reactor.getReaders()):
        if isinstance(reader, tcp.Server):  # the accepted connections
            reader.socket.close()
    port.socket.close()
    loop.close()


def test_each_turn_accepts_at_most_the_limit_and_the_rest_on_later_turns(port_with_pending):
    port, factory, connect = port_with_pending
    assert daphne_accepts.install(3)
    connect(10)
    port.doRead()
    assert factory.built == 3
    port.doRead()
    assert factory.built == 6
    port.doRead()
    port.doRead()
    assert factory.built == 10  # nothing lost: the last turn took the one left
    port.doRead()
    assert factory.built == 10


def test_twisteds_own_sizing_takes_a_burst_in_one_turn(port_with_pending):
    """What the cap changes: Twisted alone asks for 100 connections per turn."""
    port, factory, connect = port_with_pending
    assert not daphne_accepts.install(0)  # 0: Twisted's sizing, nothing installed
    connect(10)
    port.doRead()
    assert factory.built == 10

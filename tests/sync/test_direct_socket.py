"""``sync.socket_flush.DirectSocket`` on a fake transport: when a frame is written at once, when it
is queued for the loop's flush, and that neither path reorders, multiplies writes or outlives a
failed write."""

import asyncio

from sync.socket_flush import DirectSocket, Flusher
from sync.wire import SharedFrame, websocket_text_frame


class FakeWriter:
    max_message_bytes = None

    def __init__(self):
        self.listener = None
        self.writes: list[bytes] = []
        self.open = True
        self.room = True
        self.fail = False
        self.drained = asyncio.Event()

    def __setattr__(self, name, value):
        """The transport pausing or resuming, or closing, tells the socket, as a server's does."""
        super().__setattr__(name, value)
        if name in ("open", "room") and self.listener is not None:
            self.listener()

    def watch_readiness(self, listener):
        self.listener = listener

    def ready(self):
        return self.open and self.room

    def is_open(self):
        return self.open

    def writable(self):
        return self.room

    async def wait_writable(self):
        await self.drained.wait()

    def write_frames(self, data: bytes):
        if self.fail:
            raise ConnectionResetError("peer gone")
        self.writes.append(data)


def frames(*texts) -> bytes:
    return b"".join(websocket_text_frame(t) for t in texts)


async def turn():
    """Let the loop run the flusher (scheduled with ``call_soon``)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def socket_on(writer, failures=None):
    flusher = Flusher(asyncio.get_running_loop())
    return DirectSocket(writer, 10, 1 << 20, on_failure=lambda: (failures if failures is not None else []).append(1), flusher=flusher)


async def test_a_frame_to_an_idle_socket_is_written_at_once_and_later_ones_of_the_turn_together():
    writer = FakeWriter()
    sock = socket_on(writer)
    shared = SharedFrame('[null,null,"sync:v1","sync:update_batch",{}]')
    assert sock.offer(shared, 1.0)
    assert writer.writes == [shared.wire]  # before the loop turned: no queue, no flush
    assert len(sock) == 0
    assert sock.offer("b") and sock.offer("c")  # the same turn: queued
    assert writer.writes == [shared.wire] and len(sock) == 2
    await turn()
    assert writer.writes == [shared.wire, frames("b", "c")]  # one write for both
    assert sock.flusher.writes == 2 and sock.flusher.frames == 3
    assert sock.offer("d")  # a new turn: at once again
    assert writer.writes[-1] == frames("d")


async def test_nothing_jumps_the_queue_and_a_full_transport_keeps_frames_queued_in_order():
    writer = FakeWriter()
    sock = socket_on(writer)
    writer.room = False
    assert sock.offer("a")
    await turn()
    assert writer.writes == [] and len(sock) == 1  # waits for the transport to drain
    writer.room = True
    await turn()
    assert sock.offer("b")  # "a" still queued: "b" goes behind it, not at once
    assert writer.writes == []
    writer.drained.set()
    await turn()
    await turn()
    assert b"".join(writer.writes) == frames("a", "b")


async def test_frames_handed_over_together_go_out_in_one_write():
    writer = FakeWriter()
    sock = socket_on(writer)
    for text in ("a", "b", "c"):
        assert sock.enqueue(text)
    assert writer.writes == []
    await turn()
    assert writer.writes == [frames("a", "b", "c")]


async def test_a_failed_write_at_once_closes_the_socket_and_nothing_more_is_written():
    writer = FakeWriter()
    failures = []
    sock = socket_on(writer, failures)
    writer.fail = True
    assert sock.offer("a")  # accepted: the socket is closing, the caller has nothing to do
    assert failures == [1] and sock.stopped and sock.closed
    writer.fail = False
    assert sock.offer("b")
    await turn()
    assert writer.writes == []


async def test_a_closed_websocket_is_not_written_at_once():
    writer = FakeWriter()
    sock = socket_on(writer)
    writer.open = False
    assert sock.offer("a")
    await turn()
    assert writer.writes == [] and len(sock) == 1


async def test_the_socket_keeps_the_transports_readiness_as_it_is_told():
    """``offer`` reads the socket's own copy of ``ready()``, refreshed by the writer's listener."""
    writer = FakeWriter()
    writer.room = False
    sock = socket_on(writer)
    assert not sock.ready_now  # created on a full transport
    assert sock.offer("a")
    assert writer.writes == [] and len(sock) == 1
    writer.room = True
    assert sock.ready_now
    writer.drained.set()
    await turn()
    await turn()
    assert writer.writes == [frames("a")]
    await turn()
    assert sock.offer("b")  # nothing queued, ready: at once
    assert writer.writes[-1] == frames("b")
    writer.open = False  # the server's WebSocket is closing
    assert not sock.ready_now
    await turn()
    assert sock.offer("c")  # not written after the close
    assert writer.writes[-1] == frames("b")

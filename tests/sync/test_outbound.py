"""``sync.outbound.Outbox`` on its own: the one place a socket's frames are queued, and how the
socket is closed (after a flush, or at once for a slow consumer). No session, no server: a real
``OutboundQueue`` and ``run_writer`` with a recording transport."""

import asyncio
import json

from sync import metrics
from sync.outbound import OutboundQueue, Outbox, run_writer
from sync.protocol import Frame


class Transport:
    """Records what ``run_writer`` hands to the socket."""

    def __init__(self):
        self.sent = []

    async def send_text(self, text):
        self.sent.append(json.loads(text))


def outbox(max_items=8, *, resync=False, wait_timeout=10.0):
    closes = []
    box = Outbox(OutboundQueue(max_items, 1 << 20), lambda code, flush, last=None: closes.append((code, flush, last)),
                 wait_timeout=wait_timeout, full_resync_required=lambda: resync)
    box.join_ref = "1"
    return box, closes


def queued(box: Outbox) -> list:
    return [json.loads(text) for text, _ in box.queue._items or ()]


async def written(box: Outbox) -> list:
    """Everything queued, as the writer task writes it to the socket."""
    transport = Transport()
    task = asyncio.create_task(run_writer(box.queue, transport))
    await asyncio.wait_for(box.queue.wait_empty(), 5)
    task.cancel()
    return transport.sent


FRAME = Frame("1", "7", "sync:v1", "sync:subscribe", {})


async def test_frames_are_written_in_the_order_they_were_queued_whatever_their_kind():
    box, closes = outbox()
    assert box.send('["update 1"]', committed_at=1.0)
    box.refuse(FRAME, {"code": "bad_topic", "message": "no"})
    assert box.answer('["heartbeat reply"]')
    box.push_error({"code": "stale_cursor"})
    assert box.send('["update 2"]')
    sent = await written(box)
    assert sent[0] == ["update 1"]
    assert sent[1][1:4] == ["7", "sync:v1", "phx_reply"] and sent[1][4]["status"] == "error"
    assert sent[2] == ["heartbeat reply"]
    assert sent[3] == ["1", None, "sync:v1", "sync:error", {"code": "stale_cursor"}]
    assert sent[4] == ["update 2"]
    assert closes == []


async def test_an_error_push_comes_with_its_frame_envelope_when_the_client_asked_for_frames():
    box, _ = outbox()
    box.frames = True
    box.push_error({"code": "stale_cursor"}, frame_topic="runtime.run_summaries")
    error, envelope = queued(box)
    assert error[3] == "sync:error" and envelope[3] == "sync:frame"
    assert envelope[4]["topic"] == "runtime.run_summaries"


async def test_answers_are_dropped_above_the_half_mark_and_sends_are_not():
    box, closes = outbox(max_items=8)
    for i in range(5):  # over half full
        assert box.send(json.dumps([f"update {i}"]))
    dropped = metrics.REPLIES_DROPPED._value.get()
    assert not box.answer('["heartbeat reply"]')
    assert metrics.REPLIES_DROPPED._value.get() == dropped + 1
    assert box.send('["update 5"]')  # updates still have the upper half
    assert [f[0] for f in queued(box)] == [f"update {i}" for i in range(6)]
    assert closes == [] and not box.closed


async def test_a_full_queue_closes_a_slow_consumer_at_once_without_flushing():
    box, closes = outbox(max_items=3, resync=True)
    for i in range(3):
        assert box.send(json.dumps([f"update {i}"]))
    assert not box.send('["one too many"]')
    assert box.closed and len(box.queue) == 0  # what was queued is dropped, never written
    [(code, flush, last)] = closes
    assert code == 4008 and flush is False
    error = json.loads(last)  # handed straight to the transport, not queued behind the backlog
    assert error[3] == "sync:error" and error[4]["code"] == "slow_consumer"
    assert error[4]["queue_limit"] == 3 and error[4]["full_resync_required"] is True
    assert not box.send('["after the close"]') and not box.answer('["after the close"]')
    box.close("heartbeat_timeout", {"code": "heartbeat_timeout"})  # already closed: nothing more
    assert len(closes) == 1 and len(box.queue) == 0


async def test_a_replay_waiting_for_room_that_never_comes_is_a_slow_consumer():
    box, closes = outbox(max_items=4, wait_timeout=0.05)
    for i in range(3):
        box.send(json.dumps([f"update {i}"]))
    assert not await box.wait_room()  # nobody reads the socket
    assert box.closed and closes[0][:2] == (4008, False)
    assert json.loads(closes[0][2])[4]["full_resync_required"] is False


async def test_a_replay_waits_until_the_writer_makes_room():
    box, closes = outbox(max_items=4)
    for i in range(3):
        box.send(json.dumps([f"update {i}"]))
    waiting = asyncio.create_task(box.wait_room())
    await asyncio.sleep(0)
    assert not waiting.done()
    sent = await written(box)
    assert await asyncio.wait_for(waiting, 5) is True
    assert len(sent) == 3 and closes == []


async def test_a_close_queues_its_error_after_what_is_queued_and_asks_for_a_flush():
    box, closes = outbox()
    box.send('["update 1"]')
    box.close("heartbeat_timeout", {"code": "heartbeat_timeout", "action": "disconnect"})
    assert box.closed and closes == [(4408, True, None)]
    assert not box.send('["after the close"]')
    sent = await written(box)  # the consumer flushes the queue before it closes the socket
    assert sent[0] == ["update 1"]
    assert sent[1][3] == "sync:error" and sent[1][4]["code"] == "heartbeat_timeout"
    assert len(sent) == 2


async def test_a_refusal_that_closes_is_sent_then_the_socket_is_closed_with_its_code():
    box, closes = outbox()
    box.refuse(None, {"code": "malformed_frame", "message": "bad"}, close=True)
    [error] = queued(box)
    assert error == [None, None, "phoenix", "sync:error", {"code": "malformed_frame", "message": "bad"}]
    assert box.closed and closes == [(4400, True, None)]


async def test_shutdown_drops_the_queue_and_refuses_further_frames():
    box, closes = outbox()
    box.send('["update 1"]')
    box.shutdown()
    assert box.closed and len(box.queue) == 0 and closes == []
    assert not box.send('["update 2"]')

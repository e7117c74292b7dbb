"""Heartbeats and the idle timeout of ``sync.session.Session``, driven by a fake clock."""

import json
import random

import pytest

from sync.outbound import OutboundQueue
from tests.support.waiting import wait_until
from sync.session import Session, Status
from tests.support.clock import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)



class NothingRevoked:
    async def revoked_reason(self, principal):
        return None


class FakeHub:
    """Just enough hub for a session that joins and is never subscribed."""

    def __init__(self):
        self.rng = random.Random(7)
        self.revocation = NothingRevoked()

    def head(self, topic):
        return 0


def drain(queue: OutboundQueue) -> list:
    frames = []
    while len(queue):
        text, _ = queue.take_nowait()
        frames.append(json.loads(text))
    return frames


async def joined_session(mint, settings_khala, *, hub=None, token=None, join_timeout=2.0):
    """A session joined on a fake clock: ``(session, clock, queue, closes)``."""
    clock = FakeClock()
    closes = []
    queue = OutboundQueue(100, 1 << 20)
    session = Session(
        hub or FakeHub(),
        params={"token": token or mint(1)},
        close_socket=lambda code, flush, last=None: closes.append(code),
        outbound=queue,
        clock=clock,
    )
    session.handle_text(json.dumps(["1", "1", "sync:v1", "phx_join", {}]))
    await wait_until(lambda: len(queue), join_timeout, interval=0.01, message="the join reply (it runs on the session's command task)")
    [reply] = drain(queue)
    assert reply[4]["status"] == "ok"
    return session, clock, queue, closes


async def test_server_heartbeats_follow_the_interval(mint, khala):
    khala(HEARTBEAT_INTERVAL_SECONDS=15.0, HEARTBEAT_TIMEOUT_SECONDS=60.0)
    session, clock, queue, closes = await joined_session(mint, khala)
    first = session.next_heartbeat
    assert 1000.0 <= first <= 1015.0  # jittered within the first interval
    session.tick(first - 0.001)
    assert drain(queue) == []
    session.tick(first)
    [beat] = drain(queue)
    assert beat[2:4] == ["sync:v1", "sync:heartbeat"] and beat[4] == {"watermarks": []}
    session.tick(first + 14.9)
    assert drain(queue) == []
    clock.now = first + 15
    session.handle_text(json.dumps([None, "9", "phoenix", "heartbeat", {}]))  # activity
    assert drain(queue)[0][3] == "phx_reply"
    session.tick(first + 15)
    assert [f[3] for f in drain(queue)] == ["sync:heartbeat"]
    assert closes == []


async def test_idle_socket_is_closed_after_the_timeout(mint, khala):
    khala(HEARTBEAT_INTERVAL_SECONDS=15.0, HEARTBEAT_TIMEOUT_SECONDS=60.0)
    session, clock, queue, closes = await joined_session(mint, khala)
    clock.now = 1050.0
    session.handle_text(json.dumps(["1", "2", "sync:v1", "sync:heartbeat", {}]))  # activity at 1050
    drain(queue)
    session.tick(1109.9)
    assert closes == []
    drain(queue)
    session.tick(1110.0)
    frames = drain(queue)
    assert frames[-1][3] == "sync:error"
    assert frames[-1][4] == {
        "code": "heartbeat_timeout",
        "message": "no client activity within the heartbeat timeout",
        "action": "disconnect",
    }
    assert closes == [4408]
    assert session.status is Status.CLOSED
    session.tick(2000.0)  # closed sessions stay quiet
    assert drain(queue) == [] and closes == [4408]

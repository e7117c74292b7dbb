"""The hub's offer of one live range to every local follower: a follower that fails does not stop
the others, and its own socket is closed as ``internal``."""

import json
import logging

import pytest

from sync.follower import LiveRange
from sync.hub import Hub, TopicFeed
from sync.outbound import OutboundQueue
from sync.session import Session

pytestmark = pytest.mark.django_db(transaction=True)


class Recording:
    def __init__(self, topic, writer=None, broken=False):
        self.topic = topic
        self.writer = writer
        self.broken = broken
        self.offered = []

    def offer(self, live):
        if self.broken:
            raise RuntimeError("a bug in one follower")
        self.offered.append(live)
        return 1


async def test_a_failing_follower_is_closed_as_internal_and_the_others_still_get_the_range(caplog):
    hub = Hub(journal=object())
    closes = []
    queue = OutboundQueue(100, 1 << 20)
    session = Session(hub, params={}, close_socket=lambda code, flush, last=None: closes.append(code), outbound=queue)
    feed = TopicFeed("t")
    before, after = Recording("t"), Recording("t")
    feed.followers.update([before, Recording("t", writer=session, broken=True), after])

    live = LiveRange(0, 3, (), "e")
    with caplog.at_level(logging.ERROR, logger="sync.hub"):
        hub._offer(feed, live)

    assert before.offered == [live] and after.offered == [live]
    assert closes == [4500]
    [error] = [json.loads(text) for text, _ in queue._items]
    assert error[3] == "sync:error" and error[4]["code"] == "internal"
    assert "offer to a follower failed" in caplog.text

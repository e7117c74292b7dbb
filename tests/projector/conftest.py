"""Fixtures of the write-path tests: declared topics, a real Redis hint subscription."""

import asyncio

import pytest
from channels.layers import get_channel_layer

from khala_project.bus import topic_group
from projector.hints import flush_hints
from projector.topics import ensure_v1_topics


@pytest.fixture
def topics(db):
    """The four v1 topics (transactional tests flush tables, so re-declare them)."""
    return {row.topic: row for row in ensure_v1_topics()}


class HintListener:
    """A real channel-layer (Redis pub/sub) subscription to topic groups, driven from a private loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.layer = get_channel_layer()
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.groups: list[str] = []

    def subscribe(self, *topic_names: str) -> None:
        for topic in topic_names:
            group = topic_group(topic)
            self.loop.run_until_complete(self.layer.group_add(group, self.channel))
            self.groups.append(group)

    def receive(self, timeout: float = 5.0) -> dict:
        flush_hints(timeout)
        return self.loop.run_until_complete(asyncio.wait_for(self.layer.receive(self.channel), timeout))

    def close(self) -> None:
        for group in self.groups:
            self.loop.run_until_complete(self.layer.group_discard(group, self.channel))
        self.loop.run_until_complete(self.layer.flush())
        self.loop.close()


@pytest.fixture
def hint_listener():
    listener = HintListener()
    yield listener
    listener.close()

"""The first-follow race, forced through the real ASGI app on real PostgreSQL.

A worker's feed for a topic learns its starting position (the topic head) when the topic gets its
first subscriber there. If a row commits after the subscriber's replay snapshot but BEFORE that
head read, the feed starts past the row; unless the feed hands its starting position to its
followers, the socket never gets the row (the head check sees the feed at the head) until another
write arrives. Each order is forced by gating the journal reads, never by timing.
"""

import asyncio

import pytest

from tests.sync.test_ws_channel import RUNS, joined, write_runs
from tests.support.wsclient import updates_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]


class HeadReadGate:
    """Holds every ``topic_states`` call after the first (the subscribe's own validation read)
    until ``release`` — so the feed's first head read happens exactly when the test says."""

    def __init__(self, monkeypatch, journal_cls):
        self.released = asyncio.Event()
        self.calls = 0
        original = journal_cls.topic_states
        gate = self

        async def topic_states(journal, topics):
            gate.calls += 1
            if gate.calls > 1:
                await gate.released.wait()
            return await original(journal, topics)

        monkeypatch.setattr(journal_cls, "topic_states", topic_states)

    def release(self):
        self.released.set()


async def heartbeat(client):
    ref = await client.push("sync:heartbeat", {})
    reply, frames = await client.reply(ref)
    return reply["response"]["watermarks"][0], frames


async def test_row_committed_between_replay_read_and_first_head_read_is_delivered(topics, mint, awrite, khala, monkeypatch):
    """Order: replay read → racing commit → feed head read → head checks (no hint: the hint is
    dropped). The row must arrive without any later write."""
    from sync.journal import Journal

    khala(HEAD_CHECK_INTERVAL_SECONDS=0.1)
    monkeypatch.setattr("projector.sink.submit_hint", lambda *a, **k: None)  # hints lost: only reads count
    await write_runs(awrite, 5)
    gate = HeadReadGate(monkeypatch, Journal)
    original = Journal.read_visible
    forced = asyncio.Event()

    async def replay_read_then_commit(journal, *args, **kwargs):
        page = await original(journal, *args, **kwargs)
        if not forced.is_set():
            forced.set()
            await write_runs(awrite, 1, start=6)  # after the replay snapshot ...
            gate.release()  # ... and before the feed's first head read
        return page

    monkeypatch.setattr(Journal, "read_visible", replay_read_then_commit)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS])
    seen = [u["watermark"] for u in updates_of(frames)]
    assert seen == [1, 2, 3, 4, 5]
    # Wait on the condition (row 6 received) — bounded, so the bug shows as a timeout, not a hang.
    # Twenty head-check intervals pass well within it.
    while seen[-1] < 6:
        seen += [u["watermark"] for u in updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch", timeout=5))]
    assert seen == [1, 2, 3, 4, 5, 6]
    position, _ = await heartbeat(client)
    assert (position["watermark"], position["head_watermark"]) == (6, 6)


async def test_head_read_before_the_replay_read_delivers_once(topics, mint, awrite, khala, monkeypatch):
    """The opposite order: feed head read → racing commit → replay read. The replay's snapshot
    has the row, and the feed offers it too: it is sent once."""
    from sync.journal import Journal

    khala(HEAD_CHECK_INTERVAL_SECONDS=0.1)
    await write_runs(awrite, 5)
    original_states = Journal.topic_states
    head_read = asyncio.Event()
    calls = {"n": 0}

    async def topic_states(journal, topics):
        result = await original_states(journal, topics)
        calls["n"] += 1
        if calls["n"] == 2:
            head_read.set()
        return result

    original_read = Journal.read_visible
    forced = asyncio.Event()

    async def wait_for_head_then_read(journal, *args, **kwargs):
        if not forced.is_set():
            forced.set()
            await asyncio.wait_for(head_read.wait(), 10)
            await write_runs(awrite, 1, start=6)
        return await original_read(journal, *args, **kwargs)

    monkeypatch.setattr(Journal, "topic_states", topic_states)
    monkeypatch.setattr(Journal, "read_visible", wait_for_head_then_read)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS])
    seen = [u["watermark"] for u in updates_of(frames)]
    assert seen == [1, 2, 3, 4, 5, 6]
    await awrite(RUNS, "runtime/run_summary:next", 1, {})
    while seen[-1] < 7:
        seen += [u["watermark"] for u in updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch", timeout=5))]
    assert seen == [1, 2, 3, 4, 5, 6, 7]

"""Retention racing a resume, on both delivery paths, and the owner filter on the first live batch.

The prune is forced at an exact point with a gate on the journal reads (never by timing). On both
paths the client must get ``stale_cursor`` with the documented payload and never a gap: no update
after its cursor is sent once rows after that cursor are gone.
"""

import asyncio

import pytest
from channels.db import database_sync_to_async

from tests.support.waiting import wait_until
from tests.support.wsclient import updates_of
from tests.sync.test_ws_channel import RUNS, joined, prune_through, write_runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]

STALE_ENTRY_KEYS = {
    "topic", "reason", "resume_after", "retention_floor", "head_watermark", "stream_epoch", "qos_tier", "replay_lag", "replay_budget_events",
}


def assert_documented_stale(error, *, resume_after, retention_floor, head):
    assert error["code"] == "stale_cursor" and error["full_resync_required"] is True
    assert error["reason_codes"] == ["retention_floor_breach"]
    [entry] = error["stale_topics"]
    assert set(entry) == STALE_ENTRY_KEYS
    assert (entry["topic"], entry["reason"], entry["resume_after"], entry["retention_floor"], entry["head_watermark"]) == (
        RUNS, "retention_floor_breach", resume_after, retention_floor, head,
    )
    assert entry["replay_lag"] == head - resume_after
    [snapshot] = error["snapshot"]["topics"]
    assert snapshot["topic"] == RUNS and snapshot["head_watermark"] == head and snapshot["list_url"] == f"/api/sync/v1/list/{RUNS}"


async def test_prune_between_the_stale_check_and_the_first_replay_page(topics, mint, awrite, monkeypatch):
    """Replay path. The cursor passes the subscribe's stale check; retention then prunes past it
    before the first replay page is read. The reply is ``ok`` (the check passed) and the topic is
    reported with a ``sync:error`` ``stale_cursor`` push; no row after the cursor is sent."""
    from sync.journal import Journal

    await write_runs(awrite, 10)
    original = Journal.read_visible
    pruned = asyncio.Event()

    async def prune_then_read(journal, *args, **kwargs):
        if not pruned.is_set():
            pruned.set()
            await database_sync_to_async(prune_through)(RUNS, 6)
        return await original(journal, *args, **kwargs)

    monkeypatch.setattr(Journal, "read_visible", prune_then_read)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS], {RUNS: 3})
    assert pruned.is_set()
    assert reply["status"] == "ok" and reply["response"]["current_watermarks"] == []
    assert updates_of(frames) == []
    [error] = [f[4] for f in frames if f[3] == "sync:error"]
    assert_documented_stale(error, resume_after=3, retention_floor=6, head=10)
    # The topic is no longer followed: a new row is not sent, the heartbeat lists no topic.
    await awrite(RUNS, "runtime/run_summary:after", 1, {})
    ref = await client.push("sync:heartbeat", {})
    reply, frames = await client.reply(ref)
    assert frames == [] and reply["response"]["watermarks"] == []


@pytest.mark.parametrize("later_row", [True, False], ids=["a-later-row", "every-new-row-pruned"])
async def test_rows_pruned_under_a_live_cursor(topics, mint, awrite, khala, monkeypatch, later_row):
    """Live path. The socket is live at 5; rows 6–8 commit without a hint reaching the hub and
    are pruned before it reads them; maybe row 9 follows. When the hub reads (its head check),
    the range starts at the floor — an empty one when every new row was pruned — so the socket
    sees the gap, reads the journal, and reports ``stale_cursor`` instead of skipping 6–8."""
    from sync.hub import get_hub

    khala(HEAD_CHECK_INTERVAL_SECONDS=600.0)  # the test runs the head check itself
    await write_runs(awrite, 5)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS])
    assert [u["watermark"] for u in updates_of(frames)] == [1, 2, 3, 4, 5]
    monkeypatch.setattr("projector.sink.submit_hint", lambda *a, **k: None)  # the hub hears nothing
    await write_runs(awrite, 3, start=6)
    await database_sync_to_async(prune_through)(RUNS, 8)
    if later_row:
        await write_runs(awrite, 1, start=9)
    await (await get_hub()).head_check()
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert updates_of(frames) == []
    assert_documented_stale(frames[-1][4], resume_after=5, retention_floor=8, head=9 if later_row else 8)
    ref = await client.push("sync:heartbeat", {})
    reply, frames = await client.reply(ref)
    assert updates_of(frames) == [] and reply["response"]["watermarks"] == []


async def test_owner_filter_on_the_first_live_batch_after_replay(topics, mint, awrite, monkeypatch):
    """Rows of several owners commit while the socket replays, so its first live delivery is a
    buffered range with mixed owners (and a public row): only its own and public rows are sent,
    and its position still covers the whole range."""
    from sync.journal import Journal

    await write_runs(awrite, 2, owner="user:2")
    original = Journal.read_visible
    raced = asyncio.Event()

    async def read_then_commit(journal, *args, **kwargs):
        page = await original(journal, *args, **kwargs)
        if not raced.is_set():
            raced.set()
            await awrite(RUNS, "runtime/run_summary:a", 1, {"who": "a"}, "user:1")
            await awrite(RUNS, "runtime/run_summary:b", 1, {"who": "b"}, "user:2")
            await awrite(RUNS, "runtime/run_summary:pub", 1, {"who": "all"}, "user:2", public=True)
            await awrite(RUNS, "runtime/run_summary:b2", 1, {"who": "b"}, "user:2")
        return page

    monkeypatch.setattr(Journal, "read_visible", read_then_commit)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS])
    assert updates_of(frames) == []  # rows 1-2 are user:2's
    live = []
    while len(live) < 2:
        live += updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch"))
    assert [(u["doc_key"], u["watermark"]) for u in live] == [("runtime/run_summary:a", 3), ("runtime/run_summary:pub", 5)]

    async def position():
        ref = await client.push("sync:heartbeat", {})
        reply, frames = await client.reply(ref)
        assert updates_of(frames) == []  # row 6 (user:2's) is never sent
        return reply["response"]["watermarks"][0]["watermark"] == 6

    await wait_until(position, 10, interval=0.05, message="the position to cover user:2's row 6")

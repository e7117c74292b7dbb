"""The journal pool keeps one connection within reach of live fan-out (``sync.journal``).

A reconnect storm is thousands of subscribes (topic states) and replays (pages) on a pool of
``DB_POOL_MAX_SIZE`` connections. If they could take every connection, the hub's read of a new
commit would queue behind them and every connected socket's next update with it. Here the other
readers are blocked inside PostgreSQL (on an advisory lock the test holds), as many as can run,
plus more waiting; the hub's live read must still be answered, on real PostgreSQL.
"""

import asyncio

import psycopg
import pytest

from sync.journal import Journal
from tests.support.servers import test_database_url as database_url

pytestmark = pytest.mark.django_db(transaction=True)

LOCK = 0x6B68616C61FF  # an advisory key no code takes


def _blocked_read(journal: Journal):
    """A non-live read (the path of topic states, replay pages and revocation checks) that waits
    inside PostgreSQL until the test releases ``LOCK``."""
    return journal._fetch("SELECT pg_advisory_lock_shared(%(key)s), pg_advisory_unlock_shared(%(key)s)", {"key": LOCK})


async def _waiting_for_lock(count: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url(), autocommit=True) as conn:
        for _ in range(500):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                [LOCK & 0xFFFFFFFF],
            )
            if (await cursor.fetchone())[0] >= count:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} reads reached the lock")


@pytest.mark.parametrize("size", [2, 4])
async def test_a_live_read_is_answered_while_every_other_reader_is_stuck(topics, size):
    journal = Journal(database_url(), max_size=size)
    await journal.open()
    holder = await psycopg.AsyncConnection.connect(database_url(), autocommit=True)
    await holder.execute("SELECT pg_advisory_lock(%s)", [LOCK])
    others = [asyncio.create_task(_blocked_read(journal)) for _ in range(size + 3)]
    try:
        await _waiting_for_lock(size - 1)  # as many as may run are stuck in PostgreSQL; the rest wait
        page = await asyncio.wait_for(journal.read_after("runtime.run_summaries", 0, 10), timeout=10)
        assert page.rows == []  # answered (an empty topic), while every other reader waits
        assert not any(task.done() for task in others)
    finally:
        await holder.execute("SELECT pg_advisory_unlock(%s)", [LOCK])
        await holder.close()
        results = await asyncio.wait_for(asyncio.gather(*others), timeout=30)
        await journal.close()
    assert len(results) == size + 3  # and every other read completes once unblocked


async def test_with_one_connection_every_read_shares_it(topics):
    journal = Journal(database_url(), max_size=1)
    await journal.open()
    try:
        page = await journal.read_after("runtime.run_summaries", 0, 10)
        states = await journal.topic_states(["runtime.run_summaries"])
        assert page.rows == [] and "runtime.run_summaries" in states
    finally:
        await journal.close()

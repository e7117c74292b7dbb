"""The allocator invariant under real concurrency: separate writer processes, one topic.

Each writer is its own OS process with its own PostgreSQL connection (the sink through Django).
Meanwhile this process reads ``watermark > last_seen`` in a loop, the way replay does, and checks
that every read returns exactly ``last_seen+1 .. k`` (a hole would mean a row with a smaller
watermark committed later and a replaying client would have skipped it for ever).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from projector import allocator
from projector.topics import declare_topic
from tests.support import servers

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "test.concurrency"
WRITERS = 8
PER_WRITER = 400


def start_writer(writer: int, mode: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": servers.test_database_url(), "KHALA_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.projector.concurrent_writer", TOPIC, str(writer), str(PER_WRITER), mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_after(cursor, last_seen: int) -> list[int]:
    cursor.execute(
        "SELECT watermark FROM sync_stream_events WHERE topic = %s AND watermark > %s ORDER BY watermark",
        [TOPIC, last_seen],
    )
    return [row[0] for row in cursor.fetchall()]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_fill_exactly_1_to_n_and_readers_never_see_a_hole():
    declare_topic(TOPIC)
    writers = [start_writer(w, "single" if w % 2 == 0 else "batch") for w in range(WRITERS)]
    expected_total = WRITERS * PER_WRITER
    seen: list[int] = []
    last_seen = 0
    reads = 0
    deadline = time.monotonic() + 240
    with connection.cursor() as cursor:  # autocommit: every read is a fresh snapshot
        while len(seen) < expected_total:
            assert time.monotonic() < deadline, f"timed out after seeing {len(seen)} of {expected_total}"
            if any(p.poll() not in (None, 0) for p in writers):
                failed = next(p for p in writers if p.poll() not in (None, 0))
                pytest.fail(f"writer failed: {failed.stderr.read()[-2000:]}")
            batch = read_after(cursor, last_seen)
            reads += 1
            if batch:
                assert batch == list(range(last_seen + 1, last_seen + 1 + len(batch))), (
                    f"hole after watermark {last_seen}: read {batch[:10]}…"
                )
                seen.extend(batch)
                last_seen = batch[-1]
    outputs = [p.communicate(timeout=60) for p in writers]
    assert [p.returncode for p in writers] == [0] * WRITERS, [err[-2000:] for _, err in outputs]
    assert sum(int(out.split()[-1]) for out, _ in outputs) == expected_total
    assert seen == list(range(1, expected_total + 1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), min(watermark), max(watermark) FROM sync_stream_events WHERE topic = %s", [TOPIC])
        assert cursor.fetchone() == (expected_total, 1, expected_total)
        cursor.execute("SELECT last_watermark FROM sync_topic_sequences WHERE topic = %s", [TOPIC])
        assert cursor.fetchone()[0] == expected_total
    assert reads > 10, "the reader must have raced the writers, not just read once at the end"


@pytest.mark.django_db(transaction=True)
def test_allocate_requires_a_transaction_and_a_declared_topic():
    declare_topic(TOPIC)
    with pytest.raises(RuntimeError):
        allocator.allocate(TOPIC)
    from django.db import transaction

    with transaction.atomic():
        first = allocator.allocate(TOPIC, 3)
        second = allocator.allocate(TOPIC)
        with pytest.raises(allocator.UnknownTopic):
            allocator.allocate("test.nope")
    assert (first.first, first.last, second.first) == (1, 3, 4)
    with transaction.atomic():
        with pytest.raises(ValueError):
            allocator.allocate(TOPIC, 0)

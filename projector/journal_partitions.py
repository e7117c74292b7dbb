"""The partition layout of the stream journal on PostgreSQL: naming, creating ahead, dropping
whole partitions below a floor.

Layout (measured choice: docs/sync/SCHEMA.md, "Partitioned journal")::

    sync_stream_events                      PARTITION BY LIST (topic)
    ├── sync_se_<h>                         one per topic, PARTITION BY RANGE (watermark)
    │   ├── sync_se_<h>_below               [MINVALUE, first range): the safety net below
    │   ├── sync_se_<h>_w1                  watermarks [1, 1 + size)
    │   ├── sync_se_<h>_w20001              [20001, 40001) …, created AHEAD of the head
    │   └── sync_se_<h>_above               [end of the last range, MAXVALUE): the safety net above
    └── sync_stream_events_default          safety net: a topic without its own partition yet

``<h>`` is a hash of the topic name (topic names are free text; identifiers are 63 bytes).

Why by topic first: each topic has its own retention window and write rate, so its floor moves on
its own; a watermark range shared by all topics could only be dropped once the slowest topic's
floor passed it. Dropping a range partition touches its topic's partition only, and queues none
of its readers or writers (``drop_through``).

Why edge ranges and not a DEFAULT partition per topic: a DEFAULT may hold any watermark, so the
planner could no longer read the ranges in order and merged one index scan per partition above a
replay's cursor (measured ~10× slower pages from old cursors). The two edge ranges leave no
watermark uncovered, so a writer never fails for lack of a partition, and the ranges stay ordered.

Nothing here runs on the write hot path. Writers never create partitions: the retention pass (and
the migration, and ``declare_topic``) keep ``JOURNAL_PARTITIONS_AHEAD`` ranges above each head. If
a writer outruns them anyway, its rows land in ``_above``; the next pass moves them into proper
ranges (``ensure_ahead``) and ``khala_journal_overflow_rows`` reports them meanwhile.

Every DDL runs in a short transaction with ``lock_timeout`` (``JOURNAL_DDL_LOCK_TIMEOUT_MS``), so
a DDL waiting behind a long reader never queues the topic's readers and writers behind it for long:
it gives up and the next pass retries.

Lock order: the sequence row first, then the topic's partition, as writers do (a writer locks the
sequence row, then its insert is routed into the partition).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from django.db import OperationalError, connection, transaction

from khala_project.conf import khala_setting
from projector import lock_timeouts

ROOT = "sync_stream_events"
ROOT_DEFAULT = "sync_stream_events_default"
LEAF_LOCK_TIMEOUT_FACTOR = 10  # doomed partitions may wait this many JOURNAL_DDL_LOCK_TIMEOUT_MS
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


@dataclass(frozen=True, slots=True)
class RangePartition:
    name: str
    first: int  # lowest watermark it holds
    last: int  # highest watermark it holds (inclusive: the partition's end)


def topic_partition(topic: str) -> str:
    return "sync_se_" + hashlib.sha256(topic.encode()).hexdigest()[:16]


def below_edge(topic: str) -> str:
    return topic_partition(topic) + "_below"


def above_edge(topic: str) -> str:
    return topic_partition(topic) + "_above"


def is_partitioned(cursor) -> bool:
    """True when the journal is a partitioned table (PostgreSQL after the migration)."""
    if connection.vendor != "postgresql":
        return False
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [ROOT])
    row = cursor.fetchone()
    return row is not None and row[0] == "p"


def range_partitions(cursor, topic: str) -> list[RangePartition]:
    """The topic's range partitions in watermark order (the two unbounded edges excluded)."""
    cursor.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s)""",
        [topic_partition(topic)],
    )
    out = []
    for name, bound in cursor.fetchall():
        match = _BOUND.search(bound or "")
        if match:
            out.append(RangePartition(name, int(match[1]), int(match[2]) - 1))
    return sorted(out, key=lambda p: p.first)


_FROM_BOUND = re.compile(r"FROM \('?(-?\d+)'?\)")
_TO_BOUND = re.compile(r"TO \('?(-?\d+)'?\)")


def _bound(cursor, partition: str, which: re.Pattern) -> int | None:
    """A finite bound of ``partition`` (an attached range partition): ``_FROM_BOUND`` for the lowest
    watermark it takes, ``_TO_BOUND`` for the first it does not; None if that side is unbounded."""
    cursor.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = to_regclass(%s)", [partition])
    row = cursor.fetchone()
    match = which.search((row and row[0]) or "")
    return int(match[1]) if match else None


def _lock_timeout(cursor) -> None:
    lock_timeouts.set_local(cursor, int(khala_setting("JOURNAL_DDL_LOCK_TIMEOUT_MS")))


def _leaf_lock_timeout() -> int:
    """How long a detach may wait (ms): autovacuum on the partition yields to a waiting lock only
    after deadlock_timeout, 1 s by default; nobody queues behind this wait."""
    return LEAF_LOCK_TIMEOUT_FACTOR * int(khala_setting("JOURNAL_DDL_LOCK_TIMEOUT_MS"))


def _exists(cursor, name: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return cursor.fetchone()[0]


def ensure_topic(topic: str) -> bool:
    """Give ``topic`` its LIST partition (its edges and first ranges) if it has none.

    The partition is built detached, filled with the topic's rows from the root DEFAULT partition,
    then attached: ATTACH takes only SHARE UPDATE EXCLUSIVE on the root, so other topics' readers
    go on (CREATE TABLE … PARTITION OF would lock the whole journal). Returns True if it created
    the partition."""
    parent = topic_partition(topic)
    with connection.cursor() as cursor:
        if not is_partitioned(cursor) or _exists(cursor, parent):
            return False
        size = int(khala_setting("JOURNAL_PARTITION_WATERMARKS"))
        with transaction.atomic():
            _lock_timeout(cursor)
            # Hold off every writer of the journal (readers go on) until COMMIT: see ensure_ahead.
            # Once per new topic, for milliseconds.
            cursor.execute(f"LOCK TABLE {ROOT} IN SHARE ROW EXCLUSIVE MODE")
            cursor.execute(
                f"CREATE TABLE {parent} (LIKE {ROOT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (watermark)"
            )
            cursor.execute(
                "SELECT pruned_through, last_watermark FROM sync_topic_sequences WHERE topic = %s", [topic]
            )
            floor, head = cursor.fetchone() or (0, 0)
            cursor.execute(f"SELECT min(watermark), max(watermark) FROM {ROOT_DEFAULT} WHERE topic = %s", [topic])
            low, high = cursor.fetchone()
            first = start = (min(floor, (low or 1) - 1) // size) * size + 1
            through = max(head, high or 0) + int(khala_setting("JOURNAL_PARTITIONS_AHEAD")) * size
            while start <= through:
                cursor.execute(
                    f"CREATE TABLE {parent}_w{start} PARTITION OF {parent} FOR VALUES FROM (%s) TO (%s)",
                    [start, start + size],
                )
                start += size
            cursor.execute(f"CREATE TABLE {below_edge(topic)} PARTITION OF {parent} FOR VALUES FROM (MINVALUE) TO (%s)", [first])
            cursor.execute(f"CREATE TABLE {above_edge(topic)} PARTITION OF {parent} FOR VALUES FROM (%s) TO (MAXVALUE)", [start])
            cursor.execute(
                f"WITH moved AS (DELETE FROM {ROOT_DEFAULT} WHERE topic = %s RETURNING *) INSERT INTO {parent} SELECT * FROM moved",
                [topic],
            )
            cursor.execute(f"ALTER TABLE {ROOT} ATTACH PARTITION {parent} FOR VALUES IN (%s)", [topic])
    return True


def _move_edge(cursor, topic: str, edge: str, bound_sql: str, bound: list) -> None:
    """Re-attach an edge partition with a new bound (it was detached in this transaction). Its rows
    outside the new bound were moved out before; the CHECK proves the rest fit, so no scan."""
    parent = topic_partition(topic)
    cursor.execute(f"ALTER TABLE {edge} DROP CONSTRAINT IF EXISTS {edge}_bound")
    if edge.endswith("_above"):
        cursor.execute(f"ALTER TABLE {edge} ADD CONSTRAINT {edge}_bound CHECK (watermark >= %s)", bound)
    else:
        cursor.execute(f"ALTER TABLE {edge} ADD CONSTRAINT {edge}_bound CHECK (watermark < %s)", bound)
    cursor.execute(f"ALTER TABLE {parent} ATTACH PARTITION {edge} {bound_sql}", bound)


def ensure_ahead(topic: str) -> int:
    """Create range partitions until ``JOURNAL_PARTITIONS_AHEAD`` empty ranges lie above the
    topic's head (and above any row that overflowed into ``_above``: those rows move into the new
    ranges). One transaction for all of them. Returns the number created."""
    size = int(khala_setting("JOURNAL_PARTITION_WATERMARKS"))
    ahead = int(khala_setting("JOURNAL_PARTITIONS_AHEAD"))
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return 0
        if not _exists(cursor, topic_partition(topic)):
            ensure_topic(topic)
        parent, above = topic_partition(topic), above_edge(topic)
        cursor.execute("SELECT last_watermark FROM sync_topic_sequences WHERE topic = %s", [topic])
        (head,) = cursor.fetchone() or (0,)
        cursor.execute(f"SELECT max(watermark) FROM {above}")
        stray = cursor.fetchone()[0] or 0
        ranges = range_partitions(cursor, topic)
        if ranges:
            start = ranges[-1].last + 1
        else:
            # Every range was dropped: writers outran the ranges ahead into the upper edge, then a
            # retention pass dropped every range below its cutoff. New ranges start where the
            # upper edge does (without them its rows would wait there for good).
            start = _bound(cursor, above, _FROM_BOUND)
            if start is None:
                return 0  # no upper edge: a hand-made layout is left alone
        first_new = start
        through = max(head, stray) + ahead * size
        if start > through:
            return 0
        with transaction.atomic():
            _lock_timeout(cursor)
            # Writers of the topic wait until COMMIT. Without this lock a writer that routed its
            # row with the partition list of before this change would insert it afterwards into a
            # table that no longer covers it and fail (the concurrent writers test caught exactly
            # that with the ATTACH below); a writer that opens the topic's partition after the lock
            # sees the new list. DETACH of the upper edge then takes ACCESS EXCLUSIVE (readers wait
            # too) until COMMIT: milliseconds, once per AHEAD ranges of writes.
            cursor.execute(f"LOCK TABLE {parent} IN SHARE ROW EXCLUSIVE MODE")
            cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {above}")
            while start <= through:
                name = f"{parent}_w{start}"
                cursor.execute(f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                cursor.execute(
                    f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (watermark >= %s AND watermark < %s)",
                    [start, start + size],
                )
                # Rows that overflowed into the upper edge move in this same transaction, so every
                # snapshot sees each row exactly once.
                cursor.execute(
                    f"WITH moved AS (DELETE FROM {above} WHERE watermark >= %s AND watermark < %s RETURNING *) "
                    f"INSERT INTO {name} SELECT * FROM moved",
                    [start, start + size],
                )
                # The CHECK proves the new table fits the range, so ATTACH skips scanning it.
                cursor.execute(f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, start + size])
                start += size
            _move_edge(cursor, topic, above, "FOR VALUES FROM (%s) TO (MAXVALUE)", [start])
    return (start - first_new) // size


@dataclass(frozen=True, slots=True)
class Dropped:
    partitions: int
    rows: int
    lock_timeout: bool  # stopped at a partition it could not lock in time


def drop_through(topic: str, cutoff_watermark: int) -> Dropped:
    """Remove, oldest first, every range partition of ``topic`` whose end is at or below
    ``cutoff_watermark``, after raising ``pruned_through`` to the highest watermark they hold.

    No reader or writer of the topic waits for it. The floor goes up first, in one short
    transaction that locks only the topic's sequence row: from that commit on, no reader is served a
    row at or below it (a cursor below the floor is ``stale_cursor``, and every read starts above
    its cursor). Then each partition is detached ``CONCURRENTLY``, which takes SHARE UPDATE
    EXCLUSIVE on the topic's partition (readers and writers go on) and then waits for the
    transactions that were using it, and is dropped in a transaction of its own. Detaching them all
    in one plain transaction instead held ACCESS EXCLUSIVE on the topic's partition until COMMIT:
    every replay page and every write of the topic queued behind it (replay at 0.75× of idle
    during a 2,000,000-row pass, bench/README.md). Last, the lower edge is moved up to the first
    range left (one short transaction, the only lock readers see).

    A detach that cannot get its locks in time (``lock_timeout``: a long reader of the partition,
    autovacuum) leaves the rest for the next pass, which first finishes what an earlier pass or a
    crash left half done (a pending detach, a detached table, an edge left low). Meanwhile those rows
    stay on disk below the floor, where no read reaches them.

    Runs outside any transaction (``DETACH … CONCURRENTLY`` cannot run inside one)."""
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return Dropped(0, 0, False)
        parent = topic_partition(topic)
        try:
            _finish_earlier_pass(cursor, topic)
        except OperationalError as exc:
            if not lock_timeouts.is_lock_timeout(exc):
                raise
            return Dropped(0, 0, True)
        doomed = [part for part in range_partitions(cursor, topic) if part.last <= cutoff_watermark]
        if not doomed:
            return Dropped(0, 0, False)
        if connection.in_atomic_block:
            raise RuntimeError("drop_through detaches partitions CONCURRENTLY: call it outside a transaction")
        removed = _raise_floor(cursor, topic, doomed)
        dropped = 0
        try:
            pause = int(khala_setting("JOURNAL_DETACH_PAUSE_MS")) / 1000
            for part in doomed:
                if dropped and pause:
                    time.sleep(pause)  # spread the readers' re-planning (see the setting)
                _detach_concurrently(cursor, parent, part.name)
                cursor.execute(f"DROP TABLE IF EXISTS {part.name}")
                dropped += 1
            _cover_below(cursor, topic)
        except OperationalError as exc:
            if not lock_timeouts.is_lock_timeout(exc):
                raise
            return Dropped(dropped, removed, True)
    return Dropped(dropped, removed, False)


def _raise_floor(cursor, topic: str, doomed: list[RangePartition]) -> int:
    """Raise ``pruned_through`` over every row of ``doomed``; the number of rows it passed.

    Every watermark at or below the cutoff is committed (commit order = watermark order), so the
    doomed partitions change no more and need no lock: only the sequence row, as writers take it."""
    with transaction.atomic():
        cursor.execute("SELECT pruned_through FROM sync_topic_sequences WHERE topic = %s FOR UPDATE", [topic])
        (floor,) = cursor.fetchone()
        removed = 0
        for part in doomed:
            # Committed rows are contiguous and those at or below the floor are not counted, so the
            # partition adds (max(floor, first-1), highest]: one index probe instead of a count.
            cursor.execute(f"SELECT max(watermark) FROM {part.name}")
            (highest,) = cursor.fetchone()
            if highest is not None and highest > floor:
                removed += highest - max(floor, part.first - 1)
                floor = highest
        cursor.execute(
            """UPDATE sync_topic_sequences
                  SET pruned_through = GREATEST(pruned_through, %s), updated_at = now()
                WHERE topic = %s""",
            [floor, topic],
        )
    return removed


def _detach_concurrently(cursor, parent: str, name: str) -> None:
    with lock_timeouts.for_session(cursor, _leaf_lock_timeout()):
        cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {name} CONCURRENTLY")


def _finish_earlier_pass(cursor, topic: str) -> None:
    """Complete what an interrupted pass left: a detach still pending (only one may be pending per
    table, and a new one would fail until it is finished), detached tables, a lower edge below the
    first range."""
    parent = topic_partition(topic)
    cursor.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s) AND i.inhdetachpending""",
        [parent],
    )
    for (name,) in cursor.fetchall():
        with lock_timeouts.for_session(cursor, _leaf_lock_timeout()):
            cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {name} FINALIZE")
    _drop_detached(cursor, topic)
    _cover_below(cursor, topic)


def _cover_below(cursor, topic: str) -> None:
    """Move the lower edge up to the first range, so no watermark is left uncovered (only a reset
    sequence would write there; no row of it is above the floor). ACCESS EXCLUSIVE on the topic's
    partition for one short transaction; nothing when the edge already reaches the first range."""
    ranges = range_partitions(cursor, topic)
    below = below_edge(topic)
    reach = _bound(cursor, below, _TO_BOUND)
    if not ranges or reach is None or reach >= ranges[0].first:
        return
    with transaction.atomic():
        _lock_timeout(cursor)
        cursor.execute(f"ALTER TABLE {topic_partition(topic)} DETACH PARTITION {below}")
        _move_edge(cursor, topic, below, "FOR VALUES FROM (MINVALUE) TO (%s)", [ranges[0].first])


def _drop_detached(cursor, topic: str) -> None:
    """Drop the topic's range tables that are no longer partitions (detached by ``drop_through``)."""
    cursor.execute(
        """SELECT relname FROM pg_class
            WHERE relkind = 'r' AND NOT relispartition AND relname LIKE %s
              AND pg_table_is_visible(oid)""",
        [topic_partition(topic) + "\\_w%"],
    )
    for (name,) in cursor.fetchall():
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def overflow_rows(topic: str, *, limit: int = 1_000_000) -> int:
    """Rows of ``topic`` outside its ranges: in its edge partitions, or in the root DEFAULT
    (capped at ``limit``: the gauge only needs to tell "none" from "some"; a normal pass finds none)."""
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return 0
        total = 0
        for table in (below_edge(topic), above_edge(topic), ROOT_DEFAULT):
            if _exists(cursor, table):
                cursor.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE topic = %s LIMIT %s) t", [topic, limit])
                total += cursor.fetchone()[0]
        return total

"""Retention on the partitioned journal: whole partitions dropped, rows deleted only in the boundary
one, ``pruned_through`` and ``stale_cursor`` exactly as with row-by-row deletes, replay gapless across
partition boundaries, partitions created ahead, nothing lost under concurrent writers.

The topic's partitions are rebuilt with 4 watermarks each, so a few rows cross several boundaries.
Delivery is checked through the WebSocket lane's own reader (``sync.journal.Journal``, on committed
data) and its pure ``stale_cursor`` rule."""

import asyncio
import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings

from projector import journal_partitions, retention, sink
from projector.models import StreamEvent, TopicSequence
from sync.journal import Journal
from sync.protocol import MAX_WATERMARK, Cursor, stale_reason

EVENTS = "runtime.codex_worker_events"  # 1-day window
NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.timezone.utc)
SIZE = 4
SMALL = {"JOURNAL_PARTITION_WATERMARKS": SIZE, "JOURNAL_PARTITIONS_AHEAD": 4, "JOURNAL_DDL_LOCK_TIMEOUT_MS": 200}


def rebuild_partitions(topic: str) -> None:
    """Drop the topic's partitions (and rows) and let ``ensure_topic`` build them with the current size."""
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE sync_stream_events DETACH PARTITION {journal_partitions.topic_partition(topic)}")
        cursor.execute(f"DROP TABLE {journal_partitions.topic_partition(topic)}")
    journal_partitions.ensure_topic(topic)


@pytest.fixture
def small_partitions(topics):
    with override_settings(KHALA=SMALL):
        rebuild_partitions(EVENTS)
        yield
    rebuild_partitions(EVENTS)  # default sizes again (transactional tests keep DDL)


def write(count: int, *, age_hours: float) -> None:
    start = TopicSequence.objects.get(topic=EVENTS).last_watermark
    for i in range(start, start + count):
        sink.project(EVENTS, f"doc:{i}", 1, {"i": i}, "user:1")
    StreamEvent.objects.filter(topic=EVENTS, watermark__gt=start).update(inserted_at=NOW - dt.timedelta(hours=age_hours))


def watermarks() -> list[int]:
    return list(StreamEvent.objects.filter(topic=EVENTS).order_by("watermark").values_list("watermark", flat=True))


def journal_snapshot() -> tuple[int, list[int]]:
    """The floor and the retained watermarks, read in ONE statement (one snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT s.pruned_through,
                      array(SELECT watermark FROM sync_stream_events e WHERE e.topic = s.topic ORDER BY watermark)
                 FROM sync_topic_sequences s WHERE s.topic = %s""",
            [EVENTS],
        )
        floor, kept = cursor.fetchone()
        return floor, list(kept)


def ranges() -> list[tuple[int, int]]:
    with connection.cursor() as cursor:
        return [(p.first, p.last) for p in journal_partitions.range_partitions(cursor, EVENTS)]


def delivery_view(cursors):
    """What the WebSocket lane sees: per cursor its stale reason (None = resumes) and the replayed
    watermarks (topic-wide and as ``user:1`` sees them), read in pages of 3 rows."""

    async def view():
        journal = Journal(max_size=1)
        await journal.open()
        try:
            state = (await journal.topic_states([EVENTS]))[EVENTS]
            out = {}
            for cursor in cursors:
                pages = {"all": [], "visible": []}
                for kind in pages:
                    after = cursor
                    while True:
                        if kind == "all":
                            page = await journal.read_after(EVENTS, after, 3)
                        else:
                            page = await journal.read_visible(EVENTS, after, MAX_WATERMARK, "user:1", 3)
                        if not page.rows:
                            break
                        pages[kind] += [row.watermark for row in page.rows]
                        after = page.rows[-1].watermark
                out[cursor] = (stale_reason(Cursor(EVENTS, cursor), state), pages["all"], pages["visible"])
            return state, out
        finally:
            await journal.close()

    return asyncio.run(view())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "old, recent, dropped, batches",
    [
        pytest.param(6, 4, 1, 1, id="floor-inside-a-partition"),
        pytest.param(8, 3, 2, 0, id="floor-equal-to-a-partition-end"),
        pytest.param(10, 0, 2, 1, id="floor-at-the-head-inside-a-partition"),
        pytest.param(12, 0, 3, 0, id="floor-at-the-head-equal-to-a-partition-end"),
    ],
)
def test_floor_and_stale_cursor_at_every_boundary(small_partitions, old, recent, dropped, batches):
    write(old, age_hours=30)  # older than the 1-day window
    write(recent, age_hours=2)
    head = old + recent
    with override_settings(KHALA=SMALL):
        [report] = retention.run_once(now=NOW, topic=EVENTS)
    # Exactly what row-by-row deletes gave: the whole old prefix, the floor at its last watermark.
    assert (report.deleted, report.pruned_through, report.head_watermark) == (old, old, head)
    assert (report.dropped_partitions, report.batches) == (dropped, batches)
    assert watermarks() == list(range(old + 1, head + 1))
    # The ranges left start at the boundary partition and reach AHEAD (4) ranges past the head.
    assert ranges()[0][0] == (old // SIZE) * SIZE + 1 and ranges()[-1][1] >= head + 4 * SIZE

    state, seen = delivery_view([0, old - 1, old, old + 1])
    assert state.pruned_through == old
    for cursor in (0, old - 1):
        assert seen[cursor][0] == "retention_floor_breach"  # stale_cursor, never a silent skip
    for cursor in {old, min(old + 1, head)}:
        expected = list(range(cursor + 1, head + 1))
        assert seen[cursor] == (None, expected, expected)  # gapless across partition boundaries

    # Writes continue above the floor, into the partitions created ahead (never an edge).
    assert sink.project(EVENTS, "next", 1, {}, "user:1").watermark == head + 1
    assert journal_partitions.overflow_rows(EVENTS) == 0
    [again] = retention.run_once(now=NOW, topic=EVENTS)
    assert (again.deleted, again.pruned_through) == (0, old)


@pytest.mark.django_db(transaction=True)
def test_whole_partitions_only_stops_the_floor_at_a_partition_end(small_partitions):
    write(6, age_hours=30)
    write(4, age_hours=2)
    with override_settings(KHALA={**SMALL, "RETENTION_BOUNDARY_DELETES": False}):
        [report] = retention.run_once(now=NOW, topic=EVENTS)
    assert (report.deleted, report.dropped_partitions, report.batches, report.pruned_through) == (4, 1, 0, 4)
    assert watermarks() == list(range(5, 11))  # 5 and 6 are past the window, kept with their partition
    _state, seen = delivery_view([3, 4])
    assert seen[3][0] == "retention_floor_breach"
    assert seen[4] == (None, list(range(5, 11)), list(range(5, 11)))


@pytest.mark.django_db(transaction=True)
def test_replay_across_many_partitions_is_gapless(small_partitions):
    write(12, age_hours=1)
    with override_settings(KHALA=SMALL):
        journal_partitions.ensure_ahead(EVENTS)  # what each retention pass does
    write(11, age_hours=1)  # 23 rows in six partitions, the last one partly filled
    assert len({wm for wm in ranges() if wm[0] <= 23}) == 6
    _state, seen = delivery_view([0, 3, 4, 5, 22, 23])
    for cursor, (reason, everything, visible) in seen.items():
        assert reason is None
        assert everything == visible == list(range(cursor + 1, 24))


@pytest.mark.django_db(transaction=True)
def test_partitions_are_created_ahead_and_a_writer_outrunning_them_loses_nothing(small_partitions):
    with override_settings(KHALA=SMALL):
        retention.run_once(now=NOW, topic=EVENTS)
        assert ranges() == [(1, 4), (5, 8), (9, 12), (13, 16)]  # AHEAD = 4 ranges above the head (0)
        write(19, age_hours=1)  # past the last range: 17..19 go to the upper edge partition
        assert journal_partitions.overflow_rows(EVENTS) == 3
        [report] = retention.run_once(now=NOW, topic=EVENTS)
    assert report.deleted == 0
    assert journal_partitions.overflow_rows(EVENTS) == 0  # moved into new ranges
    assert ranges()[0] == (1, 4) and ranges()[-1][1] >= 19 + 4 * SIZE
    _state, seen = delivery_view([0])
    assert seen[0] == (None, list(range(1, 20)), list(range(1, 20)))


@pytest.mark.django_db(transaction=True)
def test_a_partition_held_by_a_reader_stays_below_the_floor_until_the_next_pass(small_partitions):
    """A reader holds the second doomed partition: the floor passes it anyway (no read reaches a
    row at or below the floor), its detach gives way and stays pending, and the next pass finishes
    it and the boundary deletes."""
    write(10, age_hours=30)
    ready, release = threading.Event(), threading.Event()
    second = ranges()[1]

    def reader():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {journal_partitions.topic_partition(EVENTS)}_w{second[0]}")
                ready.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert ready.wait(10)
        with override_settings(KHALA=SMALL):
            [report] = retention.run_once(now=NOW, topic=EVENTS)
        assert report.partition_lock_timeout and (report.dropped_partitions, report.deleted) == (1, 8)
        assert journal_snapshot() == (8, [9, 10])  # the pending partition's rows are no longer read
        state, view = delivery_view([4, 8])
        assert view[4][0] == "retention_floor_breach" and view[8] == (None, [9, 10], [9, 10])
    finally:
        release.set()
        thread.join(10)
    with override_settings(KHALA=SMALL):
        [later] = retention.run_once(now=NOW, topic=EVENTS)
    assert (later.pruned_through, later.partition_lock_timeout) == (10, False) and watermarks() == []
    assert ranges()[0][0] == second[1] + 1  # the pending one finished; the boundary one stays
    assert sink.project(EVENTS, "after", 1, {}, "user:1").watermark == 11


@pytest.mark.django_db(transaction=True)
def test_a_pass_never_queues_the_topics_readers_behind_it(small_partitions):
    """A long transaction reads the topic, so the pass's detach has to wait for it. Meanwhile a
    new reader of the topic must not queue behind that detach: a plain DETACH (ACCESS EXCLUSIVE on
    the topic's partition) would hold every replay page and write of the topic until it gets its
    lock; DETACH … CONCURRENTLY waits without a lock that readers conflict with."""
    write(10, age_hours=30)
    write(2, age_hours=1)
    holding, release = threading.Event(), threading.Event()
    passes = []

    def long_reader():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM sync_stream_events WHERE topic = %s AND watermark > 8", [EVENTS])
                holding.set()
                release.wait(20)
        finally:
            connection.close()

    def retention_pass():
        try:
            with override_settings(KHALA={**SMALL, "JOURNAL_DDL_LOCK_TIMEOUT_MS": 2000}):
                passes.append(retention.run_once(now=NOW, topic=EVENTS))
        finally:
            connection.close()

    reader, pruner = threading.Thread(target=long_reader), threading.Thread(target=retention_pass)
    reader.start()
    try:
        assert holding.wait(10)
        pruner.start()
        with connection.cursor() as cursor:
            for _ in range(400):  # until the pass's DDL waits for the long reader
                cursor.execute(  # the long reader waits for its client: the only lock waiter is the pass
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.025)
            else:
                pytest.fail("the pass never waited for the long reader")
            with transaction.atomic():
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
                cursor.execute(
                    "SELECT watermark FROM sync_stream_events WHERE topic = %s AND watermark > 8 ORDER BY watermark", [EVENTS]
                )
                assert [w for (w,) in cursor.fetchall()] == [9, 10, 11, 12]
    finally:
        release.set()
        reader.join(20)
        pruner.join(60)
    assert passes, "the pass did not finish"
    with override_settings(KHALA=SMALL):
        [later] = retention.run_once(now=NOW, topic=EVENTS)
    assert (later.pruned_through, later.partition_lock_timeout) == (10, False) and watermarks() == [11, 12]


@pytest.mark.django_db(transaction=True)
def test_writers_that_outran_every_range_get_new_ranges_after_a_pass_drops_them_all(small_partitions):
    """Writers outran the ranges created ahead (rows in the upper edge), then a pass prunes past
    the head and drops every range: the same pass must create ranges again from the upper edge's
    start, so the next write lands in a range (not in the upper edge, for good)."""
    write(SIZE * 6, age_hours=30)  # the ranges cover 4 * SIZE (4 ahead of an empty topic): the rest overflows
    assert journal_partitions.overflow_rows(EVENTS) == SIZE * 2
    with override_settings(KHALA=SMALL):
        [report] = retention.run_once(now=NOW, topic=EVENTS)
    assert (report.pruned_through, report.partition_lock_timeout) == (SIZE * 6, False) and watermarks() == []
    assert ranges() and ranges()[0][0] == SIZE * 4 + 1  # new ranges start where the upper edge began
    assert sink.project(EVENTS, "after", 1, {}, "user:1").watermark == SIZE * 6 + 1
    assert watermarks() == [SIZE * 6 + 1] and journal_partitions.overflow_rows(EVENTS) == 0


@pytest.mark.django_db(transaction=True)
def test_dropping_partitions_under_concurrent_writers_loses_nothing(small_partitions):
    """Three writer threads on the topic while retention passes drop partitions and delete boundary
    rows as fast as it can (every committed row is past the window): at the end the journal is
    exactly (floor, head], head = every write, and no writer failed."""
    per_writer, errors = 60, []
    done = threading.Event()

    def writer(n):
        try:
            for i in range(per_writer):
                sink.project(EVENTS, f"w{n}:{i}", 1, {"i": i}, "user:1")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    floors, report, passes_after_done = [], None, 0
    with override_settings(KHALA=SMALL):
        # After the writers finished, passes with every row past the window go on until one got all
        # its locks (a pass that meets a lock held a moment too long gives way and says so) and
        # pruned up to the head. A row's ``inserted_at`` is its transaction's start, so a writer
        # that waited for the topic row commits a higher watermark with an earlier time: the cutoff
        # (the newest row by time) can then sit below the head, and the next pass takes the rest.
        while not (
            done.is_set() and report is not None and not report.partition_lock_timeout
            and (report.pruned_through == report.head_watermark or passes_after_done >= 5)
        ):
            if not any(thread.is_alive() for thread in threads) and not done.is_set():
                done.set()
            passes_after_done += done.is_set()
            # The 1-day window ends 20 ms ago, so each pass prunes all but the newest rows.
            ago = dt.timedelta(days=2 if done.is_set() else 1) - dt.timedelta(milliseconds=20)
            [report] = retention.run_once(now=dt.datetime.now(dt.timezone.utc) + ago, topic=EVENTS)
            floors.append(report.pruned_through)
            floor, kept = journal_snapshot()
            assert kept == list(range(floor + 1, floor + 1 + len(kept))), "a hole or a row at/below the floor"
    for thread in threads:
        thread.join(10)
    assert not errors
    head, floor = TopicSequence.objects.filter(topic=EVENTS).values_list("last_watermark", "pruned_through").get()
    assert head == 3 * per_writer
    assert floors == sorted(floors) and floor == floors[-1] == head  # the final pass prunes all
    assert sink.project(EVENTS, "after", 1, {}, "user:1").watermark == head + 1
    assert watermarks() == [head + 1]
    # A write that outran the ranges created ahead waits in the topic's edge partition (never
    # lost); the next pass, which prunes nothing here, creates the ranges and moves it there. A pass
    # whose DDL met a lock held a moment too long (autovacuum on a busy host) says so and leaves the
    # row where it is for the following pass: repeat until one pass got its locks.
    with override_settings(KHALA=SMALL):
        for _attempt in range(20):
            [report] = retention.run_once(now=dt.datetime.now(dt.timezone.utc), topic=EVENTS)
            if not report.partition_lock_timeout:
                break
    assert not report.partition_lock_timeout
    assert watermarks() == [head + 1]
    assert journal_partitions.overflow_rows(EVENTS) == 0


@pytest.mark.django_db
def test_table_stats_of_the_partitioned_journal_sum_its_partitions(topics):
    """The admin's journal size: a partitioned table has no storage of its own (size 0), its leaves do."""
    from projector.journal_stats import table_stats

    write(30, age_hours=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('sync_stream_events')")
        assert cursor.fetchone()[0] == 0
        cursor.execute(f"SELECT pg_total_relation_size('{journal_partitions.topic_partition(EVENTS)}_w1')")
        leaf_bytes = cursor.fetchone()[0]
    stats = table_stats("sync_stream_events")
    assert stats.total_bytes >= leaf_bytes > 0 and stats.rows_estimate >= 1
    assert table_stats("sync_read_models").total_bytes > 0  # a plain table still works


@pytest.mark.django_db
def test_a_declared_topic_gets_its_own_partition(topics):
    from projector.topics import declare_topic

    declare_topic("custom.partitioned")
    sink.project("custom.partitioned", "d", 1, {}, "user:1")
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM sync_stream_events WHERE topic = 'custom.partitioned'")
        assert cursor.fetchone()[0] == journal_partitions.topic_partition("custom.partitioned") + "_w1"
    assert journal_partitions.overflow_rows("custom.partitioned") == 0


@pytest.mark.django_db(transaction=True)
def test_replay_reads_the_ranges_in_order_not_merged(small_partitions):
    """No DEFAULT partition per topic: the planner reads the topic's ranges in order (Append) and
    stops after the page, instead of merging one index scan per partition (Merge Append)."""
    write(12, age_hours=1)
    with override_settings(KHALA=SMALL):
        journal_partitions.ensure_ahead(EVENTS)
    write(11, age_hours=1)
    with transaction.atomic(), connection.cursor() as cursor:
        # A few rows per partition: a sequential scan and a sort would win on cost; what matters is
        # which ordered path the planner has once index scans are the way (as on a real journal).
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT * FROM sync_stream_events WHERE topic = %s AND watermark > %s ORDER BY watermark LIMIT 3",
            [EVENTS, 0],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Merge Append" not in plan and "Sort" not in plan and "Append" in plan, plan

"""Retention: per-topic windows, bounded batches, the pruned_through floor and the gauges."""

import datetime as dt
import io
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from projector import retention, sink
from projector.models import StreamEvent, TopicSequence

RUNS = "runtime.run_summaries"  # 7 days
EVENTS = "runtime.codex_worker_events"  # 1 day
NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.timezone.utc)


def write(topic, count, *, age_hours: float, start=0):
    for i in range(start, start + count):
        sink.project(topic, f"doc:{i}", 1, {"i": i}, "user:1")
    StreamEvent.objects.filter(topic=topic, doc_key__in=[f"doc:{i}" for i in range(start, start + count)]).update(
        inserted_at=NOW - dt.timedelta(hours=age_hours)
    )


def gauge(name, topic=None):
    return REGISTRY.get_sample_value(name, {"topic": topic} if topic else {})


def floor(topic):
    return TopicSequence.objects.get(topic=topic).pruned_through


@pytest.mark.django_db
class TestRetention:
    def test_prunes_a_prefix_in_batches_and_advances_the_floor(self, topics):
        write(EVENTS, 10, age_hours=30)  # older than the 1-day window
        write(EVENTS, 4, age_hours=2, start=10)
        [report] = retention.run_once(now=NOW, topic=EVENTS, batch_size=3)
        assert (report.deleted, report.batches) == (10, 4)  # 3 + 3 + 3 + 1
        assert report.pruned_through == floor(EVENTS) == 10
        assert (report.oldest_watermark, report.head_watermark) == (11, 14)
        assert list(StreamEvent.objects.filter(topic=EVENTS).values_list("watermark", flat=True).order_by("watermark")) == [
            11, 12, 13, 14,
        ]
        assert gauge("khala_journal_oldest_watermark", EVENTS) == 11
        assert gauge("khala_journal_head_watermark", EVENTS) == 14
        assert gauge("khala_journal_pruned_through", EVENTS) == 10
        assert gauge("khala_retention_last_run_timestamp_seconds") > 0

    def test_per_topic_windows(self, topics):
        write(EVENTS, 3, age_hours=30)
        write(RUNS, 3, age_hours=30)  # 30 h is inside the 7-day window of run summaries
        reports = {r.topic: r for r in retention.run_once(now=NOW)}
        assert reports[EVENTS].deleted == 3 and reports[RUNS].deleted == 0
        assert floor(RUNS) == 0
        assert reports["runtime.notifications"].oldest_watermark is None  # empty topic

    def test_horizon_caps_the_window(self, topics):
        write(RUNS, 3, age_hours=30)
        [report] = retention.run_once(now=NOW, topic=RUNS, horizon_seconds=3600)
        assert report.deleted == 3 and report.retention_seconds == 3600

    def test_fully_pruned_topic_keeps_its_floor(self, topics):
        write(EVENTS, 5, age_hours=48)
        retention.run_once(now=NOW, topic=EVENTS)
        assert not StreamEvent.objects.filter(topic=EVENTS).exists()
        assert floor(EVENTS) == 5 and gauge("khala_journal_oldest_watermark", EVENTS) == 0
        # later writes continue above the floor; a second pass has nothing to do
        assert sink.project(EVENTS, "new", 1, {}, "user:1").watermark == 6
        [again] = retention.run_once(now=NOW, topic=EVENTS)
        assert again.deleted == 0 and again.pruned_through == 5

    def test_a_newer_row_with_an_old_timestamp_never_leaves_a_hole(self, topics):
        """Only a watermark prefix is deleted: the cutoff is the newest old row, and everything
        at or below it goes, even a row whose timestamp is (marginally) newer."""
        write(EVENTS, 3, age_hours=48)
        write(EVENTS, 1, age_hours=1, start=3)  # watermark 4: recent
        write(EVENTS, 1, age_hours=48, start=4)  # watermark 5: old timestamp
        [report] = retention.run_once(now=NOW, topic=EVENTS)
        assert report.deleted == 5 and floor(EVENTS) == 5

    def test_floor_never_moves_backwards(self, topics):
        write(EVENTS, 3, age_hours=48)
        TopicSequence.objects.filter(topic=EVENTS).update(pruned_through=3)
        StreamEvent.objects.filter(topic=EVENTS, watermark=3).delete()
        retention.run_once(now=NOW, topic=EVENTS)
        assert floor(EVENTS) == 3

    def test_command(self, topics):
        write(EVENTS, 2, age_hours=48)
        StreamEvent.objects.filter(topic=EVENTS).update(inserted_at=timezone.now() - dt.timedelta(days=2))
        out = io.StringIO()
        call_command("sync_retention", "--once", "--topic", EVENTS, "--batch-size", "1", stdout=out)
        assert "deleted=2 batches=2 pruned_through=2" in out.getvalue()
        with pytest.raises(CommandError, match="unknown topic"):
            call_command("sync_retention", "--once", "--topic", "nope", stdout=io.StringIO())
        with pytest.raises(CommandError):
            call_command("sync_retention", "--once", "--batch-size", "0", stdout=io.StringIO())


def lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_retention_racing_an_open_writer_keeps_the_floor_below_uncommitted_rows(topics):
    """A writer holds its allocation open while retention runs: the floor only covers committed,
    deleted rows, and the writer's row (a higher watermark) commits intact afterwards."""
    write(EVENTS, 3, age_hours=48)
    allocated = threading.Event()
    release = threading.Event()
    result = {}

    def writer():
        try:
            with transaction.atomic():
                result["write"] = sink.project(EVENTS, "in-flight", 1, {}, "user:1")
                allocated.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert allocated.wait(10)
    done = {}
    pruner = threading.Thread(target=lambda: (done.setdefault("r", retention.run_once(now=NOW, topic=EVENTS)), connection.close()))
    pruner.start()
    # The batch statement (delete + floor update) must queue behind the writer's row lock.
    deadline = time.monotonic() + 10
    while not lock_waiters():
        assert time.monotonic() < deadline, "retention never waited for the writer's lock"
        time.sleep(0.01)
    assert floor(EVENTS) == 0 and StreamEvent.objects.filter(topic=EVENTS).count() == 3
    release.set()
    thread.join(10)
    pruner.join(10)
    assert result["write"].watermark == 4
    assert done["r"][0].deleted == 3 and floor(EVENTS) == 3
    assert list(StreamEvent.objects.filter(topic=EVENTS).values_list("watermark", flat=True)) == [4]

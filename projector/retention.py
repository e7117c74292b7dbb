"""Journal retention (KHALA-009): tail-prune each topic by its window, in bounded batches.

What is deleted: a *prefix* of the topic's journal in watermark order, never a middle row. The
cutoff watermark is the watermark of the newest row inserted before ``now - retention_seconds``
(newest by ``inserted_at``, its transaction's start: a writer that waited for the topic's row
commits a higher watermark with an earlier time, and such a row above the cutoff stays until a
later pass); every row at or below it goes, oldest first, ``batch_size`` rows per statement
(each batch its own short transaction: no long locks, no per-row deletes).

The retention floor: each batch statement deletes its rows AND raises
``sync_topic_sequences.pruned_through`` to the highest watermark it deleted, atomically
(``GREATEST``: the floor never moves backwards). So in every snapshot, every row at or below
``pruned_through`` is gone and every row above it that ever committed is still there. Delivery
answers ``stale_cursor`` for ``resume_after < pruned_through``; a cursor at or above it replays
completely. (Upstream derived the floor from ``MIN(watermark)`` of the rows left, which is
undefined once a topic is fully pruned, so a client could silently skip history.)

Racing writers cannot corrupt the floor: the cutoff is chosen among *committed* rows, and because
commit order equals watermark order (``projector.allocator``) any transaction still in flight will
commit a watermark above every committed one, hence above the cutoff.

Only journal rows are deleted; read models and checkpoints are never compacted.

On the partitioned journal (PostgreSQL, ``projector.journal_partitions``) the same prefix goes in
two steps: every range partition whose end is at or below the cutoff is dropped whole (a catalog
change, no per-row WAL; the floor is raised over it first, then it is detached concurrently, so no
reader or writer waits: ``journal_partitions.drop_through``), then the batches above delete the
rest of the prefix, which now lies only in the boundary partition (and in an edge partition, if a
writer outran the partitions created ahead). The final floor and the rows left are exactly those
of deleting row by row. A partition whose detach must give way (a long reader of it) stays, below
the floor where no read reaches it, until the next pass finishes it; that topic's pass ends there.
Each pass also creates the partitions ahead of the head.
"""

import datetime as dt
import time
from dataclasses import dataclass

from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from khala_project.conf import khala_setting
from projector import journal_partitions, lock_timeouts, metrics
from projector.models import StreamEvent, TopicSequence

_CUTOFF_SQL = """
SELECT watermark FROM sync_stream_events
 WHERE topic = %s AND inserted_at < %s
 ORDER BY inserted_at DESC, watermark DESC
 LIMIT 1
"""

# Rows are matched on (topic, watermark) with the cutoff repeated, so that on the partitioned journal
# the planner keeps only the partitions at or below the cutoff (an ``id`` join would visit them all).
# Also the whole of retention before partitioning: bench/retention.py runs it as the baseline.
DELETE_BATCH_SQL = """
WITH doomed AS (
    SELECT watermark FROM sync_stream_events
     WHERE topic = %(topic)s AND watermark <= %(cutoff)s
     ORDER BY watermark
     LIMIT %(batch)s
),
deleted AS (
    DELETE FROM sync_stream_events AS e USING doomed AS d
     WHERE e.topic = %(topic)s AND e.watermark <= %(cutoff)s AND e.watermark = d.watermark
    RETURNING e.watermark
),
floor AS (
    UPDATE sync_topic_sequences
       SET pruned_through = GREATEST(pruned_through, (SELECT max(watermark) FROM deleted)), updated_at = now()
     WHERE topic = %(topic)s AND EXISTS (SELECT 1 FROM deleted)
    RETURNING pruned_through
)
SELECT (SELECT count(*) FROM deleted), (SELECT pruned_through FROM floor)
"""

_STATS_SQL = """
SELECT (SELECT min(watermark) FROM sync_stream_events WHERE topic = %s), last_watermark, pruned_through
  FROM sync_topic_sequences WHERE topic = %s
"""


@dataclass(frozen=True)
class TopicRetention:
    topic: str
    retention_seconds: int
    cutoff: dt.datetime
    deleted: int
    batches: int
    pruned_through: int
    oldest_watermark: int | None  # None: the journal of this topic is empty
    head_watermark: int
    dropped_partitions: int = 0  # of the ``deleted`` rows, those that went with whole partitions
    partition_lock_timeout: bool = False  # a partition could not be dropped in time: retried next pass


def prune_topic(topic: str, *, now: dt.datetime, retention_seconds: int, batch_size: int) -> TopicRetention:
    cutoff = now - dt.timedelta(seconds=retention_seconds)
    if connection.vendor != "postgresql":  # the embedded SQLite of `make run`
        return _prune_topic_portable(topic, cutoff, retention_seconds, batch_size)
    deleted = batches = dropped = 0
    timed_out = False
    with connection.cursor() as cursor:  # autocommit: each statement below is its own transaction
        cursor.execute(_CUTOFF_SQL, [topic, cutoff])
        row = cursor.fetchone()
        if row is not None:
            cutoff_watermark = row[0]
            whole = journal_partitions.drop_through(topic, cutoff_watermark)
            dropped, deleted, timed_out = whole.partitions, whole.rows, whole.lock_timeout
            if deleted:
                metrics.RETENTION_DELETED.labels(topic=topic).inc(deleted)
            if dropped:
                metrics.RETENTION_DROPPED_PARTITIONS.labels(topic=topic).inc(dropped)
            # Whole partitions only: the floor stops at the last partition end below the cutoff,
            # keeping up to one partition of rows past the window (see RETENTION_BOUNDARY_DELETES).
            boundary = khala_setting("RETENTION_BOUNDARY_DELETES") or not journal_partitions.is_partitioned(cursor)
            while boundary and not timed_out:
                cursor.execute(DELETE_BATCH_SQL, {"topic": topic, "cutoff": cutoff_watermark, "batch": batch_size})
                count, _floor = cursor.fetchone()
                if count:
                    batches += 1
                    deleted += count
                    metrics.RETENTION_DELETED.labels(topic=topic).inc(count)
                if count < batch_size:
                    break
    try:
        journal_partitions.ensure_ahead(topic)
    except OperationalError as exc:
        if not lock_timeouts.is_lock_timeout(exc):
            raise
        timed_out = True  # the upper edge partition takes the rows meanwhile; the gauge below shows them
    with connection.cursor() as cursor:
        cursor.execute(_STATS_SQL, [topic, topic])
        oldest, head, pruned_through = cursor.fetchone()
    metrics.JOURNAL_OLDEST_WATERMARK.labels(topic=topic).set(oldest or 0)
    metrics.JOURNAL_HEAD_WATERMARK.labels(topic=topic).set(head)
    metrics.JOURNAL_PRUNED_THROUGH.labels(topic=topic).set(pruned_through)
    metrics.JOURNAL_OVERFLOW_ROWS.labels(topic=topic).set(journal_partitions.overflow_rows(topic))
    return TopicRetention(
        topic, retention_seconds, cutoff, deleted, batches, pruned_through, oldest, head, dropped, timed_out
    )


def _prune_topic_portable(topic: str, cutoff: dt.datetime, retention_seconds: int, batch_size: int) -> TopicRetention:
    """``prune_topic`` through the ORM: the same prefix, batches and floor, each batch one transaction
    (delete the rows and raise ``pruned_through`` together; SQLite's write lock is held until COMMIT)."""
    deleted = batches = 0
    events = StreamEvent.objects.filter(topic=topic)
    cutoff_watermark = (
        events.filter(inserted_at__lt=cutoff).order_by("-inserted_at", "-watermark").values_list("watermark", flat=True).first()
    )
    while cutoff_watermark is not None:
        with transaction.atomic():
            doomed = list(
                events.filter(watermark__lte=cutoff_watermark).order_by("watermark").values_list("id", "watermark")[:batch_size]
            )
            if doomed:
                events.filter(id__in=[row_id for row_id, _ in doomed]).delete()
                TopicSequence.objects.filter(topic=topic).update(
                    pruned_through=Greatest(F("pruned_through"), doomed[-1][1]), updated_at=timezone.now()
                )
        if doomed:
            batches += 1
            deleted += len(doomed)
            metrics.RETENTION_DELETED.labels(topic=topic).inc(len(doomed))
        if len(doomed) < batch_size:
            break
    head, pruned_through = TopicSequence.objects.filter(topic=topic).values_list("last_watermark", "pruned_through").get()
    oldest = events.order_by("watermark").values_list("watermark", flat=True).first()
    metrics.JOURNAL_OLDEST_WATERMARK.labels(topic=topic).set(oldest or 0)
    metrics.JOURNAL_HEAD_WATERMARK.labels(topic=topic).set(head)
    metrics.JOURNAL_PRUNED_THROUGH.labels(topic=topic).set(pruned_through)
    return TopicRetention(topic, retention_seconds, cutoff, deleted, batches, pruned_through, oldest, head)


def run_once(
    *,
    now: dt.datetime | None = None,
    topic: str | None = None,
    batch_size: int | None = None,
    horizon_seconds: int | None = None,
) -> list[TopicRetention]:
    """One pass over every declared topic (or just ``topic``). Raises ``TopicSequence.DoesNotExist``.

    ``horizon_seconds`` (optional) caps every topic's window: effective = min(policy, horizon).
    """
    now = now or timezone.now()
    batch_size = batch_size or khala_setting("RETENTION_BATCH_SIZE")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    topics = TopicSequence.objects.order_by("topic")
    if topic is not None:
        topics = [TopicSequence.objects.get(topic=topic)]
    reports = []
    for row in topics:
        window = row.retention_seconds if horizon_seconds is None else min(row.retention_seconds, horizon_seconds)
        reports.append(prune_topic(row.topic, now=now, retention_seconds=window, batch_size=batch_size))
    metrics.RETENTION_LAST_RUN.set(time.time())
    return reports

"""Operator statistics of the journal that never ``COUNT(*)`` it.

The journal may hold hundreds of millions of rows; a dashboard that counts them scans the table on
every page view. Everything here is either catalogue data or watermark arithmetic on indexes:

- table rows and bytes: ``pg_class.reltuples`` (the planner's estimate, refreshed by
  ``ANALYZE``/autovacuum) and ``pg_total_relation_size`` (heap + indexes + TOAST);
- rows of one topic: ``last_watermark - pruned_through``. Watermarks are allocated without gaps
  and only retention deletes rows (always a prefix ``<= pruned_through``), so this is exact
  unless rows were removed by hand; the dashboard calls it an upper bound;
- oldest retained and head rows: one probe each on the ``(topic, watermark)`` unique index;
- throughput: for each minute boundary, the first watermark inserted at or after it (one probe on
  the ``(topic, inserted_at)`` index); rows in a minute = difference of consecutive boundaries.
  ``inserted_at`` is the transaction start time, so commit order and ``inserted_at`` order can
  differ by a transaction's duration: a per-minute figure, not an exact count.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

JOURNAL_TABLE = "sync_stream_events"
READ_MODEL_TABLE = "sync_read_models"


@dataclass(frozen=True)
class TableStats:
    table: str
    rows_estimate: int | None  # planner estimate (reltuples, or EXPLAIN before the first ANALYZE); None off PostgreSQL
    total_bytes: int | None


@dataclass(frozen=True)
class TopicStats:
    topic: str
    head_watermark: int
    pruned_through: int
    stream_epoch: str
    oldest_retained_watermark: int | None
    oldest_retained_at: dt.datetime | None
    head_inserted_at: dt.datetime | None

    @property
    def retained_rows_upper_bound(self) -> int:
        return max(self.head_watermark - self.pruned_through, 0)


def table_stats(table: str) -> TableStats:
    if connection.vendor != "postgresql":
        return TableStats(table, None, None)
    with connection.cursor() as cursor:
        # A partitioned table (the journal on PostgreSQL) has no storage of its own: its size and
        # row estimate are those of its leaf partitions. Unanalysed tables report reltuples -1.
        cursor.execute(
            """SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), 0)::bigint,
                      coalesce(sum(pg_total_relation_size(c.oid)), 0),
                      coalesce(bool_or(c.reltuples < 0), false)
                 FROM pg_class c
                WHERE c.oid = %(table)s::regclass AND c.relkind <> 'p'
                   OR c.oid IN (SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf)""",
            {"table": table},
        )
        reltuples, total_bytes, unanalysed = cursor.fetchone()
        if unanalysed:
            # Never analysed yet: the planner still estimates from the table's pages.
            cursor.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {connection.ops.quote_name(table)}")
            raw = cursor.fetchone()[0]
            plan = json.loads(raw) if isinstance(raw, str) else raw
            reltuples = plan[0]["Plan"]["Plan Rows"]
    return TableStats(table, int(reltuples), int(total_bytes))


def topic_stats() -> dict[str, TopicStats]:
    """Head, floor, epoch, oldest retained and head row time of every declared topic."""
    if connection.vendor != "postgresql":
        return _topic_stats_orm()
    sql = """
        SELECT t.topic, t.last_watermark, t.pruned_through, t.stream_epoch,
               o.watermark, o.inserted_at, h.inserted_at
        FROM sync_topic_sequences t
        LEFT JOIN LATERAL (
            SELECT e.watermark, e.inserted_at FROM sync_stream_events e
            WHERE e.topic = t.topic AND e.watermark > t.pruned_through
            ORDER BY e.watermark LIMIT 1
        ) o ON true
        LEFT JOIN LATERAL (
            SELECT e.inserted_at FROM sync_stream_events e
            WHERE e.topic = t.topic AND e.watermark = t.last_watermark
        ) h ON true
        ORDER BY t.topic
    """
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    return {row[0]: TopicStats(*row) for row in rows}


def _topic_stats_orm() -> dict[str, TopicStats]:
    # The embedded SQLite of `make run` (no LATERAL): the same probes, one query each.
    from projector.models import StreamEvent, TopicSequence

    out = {}
    for t in TopicSequence.objects.order_by("topic"):
        oldest = StreamEvent.objects.filter(topic=t.topic, watermark__gt=t.pruned_through).order_by("watermark").first()
        head = StreamEvent.objects.filter(topic=t.topic, watermark=t.last_watermark).first()
        out[t.topic] = TopicStats(
            t.topic, t.last_watermark, t.pruned_through, t.stream_epoch,
            oldest.watermark if oldest else None, oldest.inserted_at if oldest else None,
            head.inserted_at if head else None,
        )
    return out


def estimated_topic_bytes(stats: dict[str, TopicStats], journal: TableStats) -> dict[str, int | None]:
    """Split the journal's total size across topics by their share of retained rows (an estimate)."""
    total_rows = sum(s.retained_rows_upper_bound for s in stats.values())
    if journal.total_bytes is None or total_rows == 0:
        return {topic: (0 if journal.total_bytes is not None else None) for topic in stats}
    return {topic: journal.total_bytes * s.retained_rows_upper_bound // total_rows for topic, s in stats.items()}


@dataclass(frozen=True)
class ThroughputSeries:
    bucket_starts: list[dt.datetime]
    rows_per_bucket: dict[str, list[int]]  # topic -> one figure per bucket
    bucket_seconds: int


def throughput(minutes: int = 60, *, now: dt.datetime | None = None, bucket_seconds: int = 60) -> ThroughputSeries:
    """Journal rows appended per bucket and topic over the last ``minutes`` (watermark arithmetic)."""
    if minutes < 1 or bucket_seconds < 1:
        raise ValueError("minutes and bucket_seconds must be >= 1")
    now = now or timezone.now()
    epoch_seconds = int(now.timestamp())
    last_start = epoch_seconds - epoch_seconds % bucket_seconds
    count = max(minutes * 60 // bucket_seconds, 1)
    starts = [
        dt.datetime.fromtimestamp(last_start - bucket_seconds * i, tz=dt.timezone.utc) for i in range(count - 1, -1, -1)
    ]
    if connection.vendor != "postgresql":
        return _throughput_orm(starts, bucket_seconds)
    # One boundary more than buckets: the end of the last bucket is "now" (head + 1).
    sql = """
        SELECT t.topic, t.last_watermark, b.at,
               (SELECT e.watermark FROM sync_stream_events e
                WHERE e.topic = t.topic AND e.inserted_at >= b.at
                ORDER BY e.inserted_at, e.watermark LIMIT 1)
        FROM sync_topic_sequences t CROSS JOIN unnest(%s::timestamptz[]) AS b(at)
        ORDER BY t.topic, b.at
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [starts])
        rows = cursor.fetchall()
    boundaries: dict[str, list[int]] = {}
    for topic, head, _at, first_watermark in rows:
        boundaries.setdefault(topic, []).append(head + 1 if first_watermark is None else first_watermark)
    heads = {topic: head for topic, head, _at, _wm in rows}
    series: dict[str, list[int]] = {}
    for topic, marks in boundaries.items():
        marks = [*marks, heads[topic] + 1]
        series[topic] = [max(marks[i + 1] - marks[i], 0) for i in range(len(marks) - 1)]
    return ThroughputSeries(starts, series, bucket_seconds)


def _throughput_orm(starts: list[dt.datetime], bucket_seconds: int) -> ThroughputSeries:
    # The embedded SQLite of `make run`: its journal is tiny, so bucket the window's rows directly.
    from projector.models import StreamEvent, TopicSequence

    series = {t: [0] * len(starts) for t in TopicSequence.objects.values_list("topic", flat=True)}
    first = starts[0]
    for topic, inserted_at in StreamEvent.objects.filter(inserted_at__gte=first).values_list("topic", "inserted_at"):
        index = min(int((inserted_at - first).total_seconds()) // bucket_seconds, len(starts) - 1)
        if topic in series:
            series[topic][index] += 1
    return ThroughputSeries(starts, series, bucket_seconds)

"""Prometheus metrics of the write path (all ``khala_*``; label values are bounded).

``topic`` labels only ever carry declared topics (a handful of ``sync_topic_sequences`` rows);
anything a caller sent that is not a declared topic is counted under ``topic="_invalid"``, so a
typo storm cannot blow up the series count. ``code`` labels are the sink's stable error codes.
"""

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

INVALID_TOPIC_LABEL = "_invalid"

PROJECTION_WRITES = Counter(
    "khala_projection_writes_total",
    "Documents offered to the sink, by outcome (written | stale: older doc_version, a no-op).",
    ["topic", "result"],
)
JOURNAL_APPENDS = Counter(
    "khala_journal_appends_total",
    "Journal rows appended, by payload mode (inline | pointer).",
    ["topic", "mode"],
)
JOURNAL_APPEND_BYTES = Counter(
    "khala_journal_append_bytes_total",
    "Canonical JSON bytes of the documents appended to the journal (pointer mode included).",
    ["topic"],
)
SINK_DURATION = Histogram(
    "khala_sink_duration_seconds",
    "Wall time of one sink call (op = project | project_many), commit included when the sink owns it.",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SINK_DURATION_PROJECT = SINK_DURATION.labels(op="project")
SINK_DURATION_PROJECT_MANY = SINK_DURATION.labels(op="project_many")
SINK_ERRORS = Counter(
    "khala_sink_errors_total",
    "Sink calls refused or failed, by stable error code.",
    ["topic", "code"],
)
ALLOCATOR_FAILURES = Counter(
    "khala_allocator_failures_total",
    "Watermark allocations that failed (reason = unknown_topic | database).",
    ["reason"],
)
PROJECTOR_RUNS = Counter(
    "khala_projector_runs_total",
    "Projector decisions per entity (projection = run_summary | codex_worker_summary | ...).",
    ["projection", "result", "reason"],
)
PROJECTOR_DRIFT = Counter(
    "khala_projector_drift_total",
    "Checkpoints whose summary hash drifted at an unchanged authority seq.",
    ["projection"],
)
PROJECTION_FAILURES = Counter(
    "khala_projection_failures_total",
    "Projections right after an authority commit (the outbox fast path) that failed; the authority write stood and its outbox entry stays.",
    ["entity"],
)
REPROJECTIONS = Counter(
    "khala_reprojection_entities_total",
    "Entities re-projected (scope = run | codex_worker; result = written | unchanged | not_found | error).",
    ["scope", "result"],
)
REPROJECTION_DURATION = Histogram(
    "khala_reprojection_duration_seconds",
    "Wall time to re-project one entity.",
    ["scope"],
)
RETENTION_DELETED = Counter(
    "khala_retention_deleted_total",
    "Journal rows deleted by retention.",
    ["topic"],
)
JOURNAL_OLDEST_WATERMARK = Gauge(
    "khala_journal_oldest_watermark",
    "Oldest retained watermark per topic after the last retention pass (0 when the journal is empty).",
    ["topic"],
)
JOURNAL_HEAD_WATERMARK = Gauge(
    "khala_journal_head_watermark",
    "Last allocated watermark per topic at the last retention pass.",
    ["topic"],
)
JOURNAL_PRUNED_THROUGH = Gauge(
    "khala_journal_pruned_through",
    "Retention floor per topic: the highest watermark retention has deleted.",
    ["topic"],
)
RETENTION_DROPPED_PARTITIONS = Counter(
    "khala_retention_dropped_partitions_total",
    "Journal range partitions retention dropped whole (their rows also count in khala_retention_deleted_total).",
    ["topic"],
)
JOURNAL_OVERFLOW_ROWS = Gauge(
    "khala_journal_overflow_rows",
    "Journal rows of a topic outside its watermark ranges (edge partitions, root DEFAULT) at the last "
    "retention pass (0 normally: writes outran the partitions created ahead; the next pass moves them).",
    ["topic"],
)
RETENTION_LAST_RUN = Gauge(
    "khala_retention_last_run_timestamp_seconds",
    "Unix time at which the last retention pass finished.",
)


@dataclass(frozen=True, slots=True)
class SinkCounters:
    """The labelled children the sink bumps for one declared topic (``labels()`` costs a lock
    and a dict lookup per call; on the single-document path it was a measurable share)."""

    written: Counter
    stale: Counter
    inline_appends: Counter
    pointer_appends: Counter
    append_bytes: Counter


_sink_counters: dict[str, SinkCounters] = {}


def sink_counters(topic: str) -> SinkCounters:
    """The sink's counters of a DECLARED topic (callers only pass topics a write succeeded on)."""
    counters = _sink_counters.get(topic)
    if counters is None:
        counters = _sink_counters[topic] = SinkCounters(
            written=PROJECTION_WRITES.labels(topic=topic, result="written"),
            stale=PROJECTION_WRITES.labels(topic=topic, result="stale"),
            inline_appends=JOURNAL_APPENDS.labels(topic=topic, mode="inline"),
            pointer_appends=JOURNAL_APPENDS.labels(topic=topic, mode="pointer"),
            append_bytes=JOURNAL_APPEND_BYTES.labels(topic=topic),
        )
    return counters


def topic_label(topic: str, declared: bool) -> str:
    return topic if declared else INVALID_TOPIC_LABEL

# --- the projection outbox (projector.outbox, manage.py projector_worker) --------------------------
OUTBOX_PENDING = Gauge(
    "khala_outbox_pending_entries",
    "Outbox entries waiting to be projected (quarantined ones excluded), at the drainer's last look.",
)
OUTBOX_QUARANTINED = Gauge(
    "khala_outbox_quarantined_entries",
    "Outbox entries in quarantine (failed KHALA OUTBOX_MAX_ATTEMPTS times, or refused): each needs an operator.",
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "khala_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox entry not yet projected (0 when none): how far read models trail the authority.",
)
OUTBOX_LINGER = Gauge(
    "khala_outbox_linger_seconds",
    "How long this drainer now waits between passes while it drains (grows while the host's CPUs are saturated).",
)
CPU_PRESSURE = Gauge(
    "khala_host_cpu_pressure_ratio",
    "Share of recent wall time in which some task on this host waited for a CPU (Linux PSI), as the drainer last read it.",
)
OUTBOX_LAST_DRAIN = Gauge(
    "khala_outbox_last_drain_timestamp_seconds",
    "Unix time at which this drainer last completed a drain pass (empty passes included).",
)
OUTBOX_PROJECTED = Counter(
    "khala_outbox_entries_projected_total",
    "Outbox entries whose documents committed (path = worker | fast_path), each removed in that transaction.",
    ["path"],
)
OUTBOX_FAILURES = Counter(
    "khala_outbox_failures_total",
    "Outbox entries whose projection failed (outcome = retry: backed off | quarantined).",
    ["outcome"],
)
OUTBOX_FAST_PATH_YIELDED = Counter(
    "khala_outbox_fast_path_yielded_total",
    "Fast-path projections abandoned because a projector lock stayed busy (the entry went to the workers).",
)
OUTBOX_REFUSED = Counter(
    "khala_outbox_refused_total",
    "Outbox entries refused without a projection attempt (reason = unknown_entity | entity_not_found); quarantined.",
    ["reason"],
)
OUTBOX_BATCH_DURATION = Histogram(
    "khala_outbox_batch_duration_seconds",
    "Wall time of one outbox drain transaction (claim, fold, sink batch, delete, commit).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

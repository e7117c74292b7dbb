"""What a sink call reports once the database has decided, the same on every backend.

Both write paths (``projector.sink`` on PostgreSQL, ``projector.sink_portable`` on the embedded
SQLite) end the same way: each effective write gets its ``(watermark, pointer)``, refusals and
no-ops are counted, and only after COMMIT the written rows are counted and one hint per topic
(its highest watermark) goes to ``projector.hints``. A rollback therefore publishes nothing.
"""

import time

from typing import Callable

from projector import metrics
from projector.document_write import PreparedWrite, SinkError, WriteResult

# ``(topic, head watermark, stream_epoch, inline appends, pointer appends, appended bytes)``: what
# ``after_commit`` counts and hints for one topic.
TopicStats = tuple[str, int, str, int, int, int]


def count_refusal(topic, code: str) -> None:
    """Count a refused write (nothing was written) under its stable code."""
    declared = code not in ("invalid_topic", "unknown_topic")
    metrics.SINK_ERRORS.labels(topic=metrics.topic_label(str(topic), declared), code=code).inc()


def unknown_topic(topic: str, index: int | None) -> SinkError:
    """Count a write to an undeclared topic (nothing was written) and return the error to raise."""
    metrics.ALLOCATOR_FAILURES.labels(reason="unknown_topic").inc()
    count_refusal(topic, "unknown_topic")
    return SinkError("unknown_topic", f"unknown topic {topic!r}", index=index, field="topic")


def after_commit(stats: list[TopicStats], submit_hint: Callable[..., None], lsn: int | None = None) -> None:
    """Runs once the transaction committed: count what became durable, then hint.

    ``submit_hint(topic, watermark, stream_epoch[, lsn=])`` is the caller's hint publisher
    (``projector.hints.submit_hint``), named by each sink module so a test can lose every hint on
    purpose by replacing it there. ``lsn``: the primary's WAL position read right after the
    COMMIT (``khala_project.replicas.commit_lsn``; None without replicas)."""
    for topic, head, stream_epoch, inline, pointer, nbytes in stats:
        counters = metrics.sink_counters(topic)
        counters.written.inc(inline + pointer)
        if inline:
            counters.inline_appends.inc(inline)
        if pointer:
            counters.pointer_appends.inc(pointer)
        counters.append_bytes.inc(nbytes)
        if lsn is None:
            submit_hint(topic, head, stream_epoch)
        else:
            submit_hint(topic, head, stream_epoch, lsn=lsn)


def settle_topic(
    topic: str, stream_epoch: str, forced: bool, written: list[tuple[PreparedWrite, int]], outcome: dict
) -> TopicStats:
    """After one topic's effective writes (``(item, watermark)`` in watermark order) were made:
    record each one's ``(watermark, pointer)`` in ``outcome`` (input index -> …) and return the
    topic's ``after_commit`` tuple."""
    inline = pointer_count = nbytes = 0
    for item, watermark in written:
        pointer = item.over_inline_limit or forced
        outcome[item.index] = (watermark, pointer)
        if pointer:
            pointer_count += 1
        else:
            inline += 1
        nbytes += item.encoded.size
    return (topic, written[-1][1], stream_epoch, inline, pointer_count, nbytes)


def batch_results(
    prepared: list[PreparedWrite], superseded: list[PreparedWrite], outcome: dict, started: float
) -> list[WriteResult]:
    """After a batch committed: count its superseded writes as stale, time it, and return the
    results in input order (``outcome``: input index -> (watermark, pointer) of the effective writes)."""
    for item in superseded:  # the topics are declared: the batch's transaction succeeded
        metrics.sink_counters(item.write.topic).stale.inc()
    results = []
    for item in prepared:
        w = item.write
        watermark, pointer = outcome.get(item.index, (None, False))
        results.append(WriteResult(w.topic, w.doc_key, w.doc_version, watermark is not None, watermark, pointer))
    metrics.SINK_DURATION_PROJECT_MANY.observe(time.perf_counter() - started)
    return results

"""The sink's write path on databases other than PostgreSQL: the embedded SQLite of ``make run``.

``projector.sink`` validates and canonicalises every write, then hands it here when
``connection.vendor != "postgresql"``. The PostgreSQL statements (fused CTEs, ``jsonb_to_recordset``,
``now()``) stay untouched; this module does the same thing with the ORM, one topic at a time, with
the same results (``WriteResult``), the same ``SinkError`` codes and the same metrics and hints:

1. ``UPDATE sync_topic_sequences SET last_watermark = last_watermark + k`` FIRST. On SQLite the
   first write of a transaction takes the database-wide write lock and keeps it until COMMIT, so
   writers are serialised from that statement on: commit order = watermark order, and the stored
   ``doc_version``s read next cannot change under us (the same argument as the row lock on
   PostgreSQL, with the whole database as the "row");
2. read the stored versions; a write older than the stored one is a no-op (no journal row, no
   watermark), an equal one replaces; the unused watermarks are given back before COMMIT (nobody
   else can have seen them), so committed watermarks stay gap-free;
3. upsert the read models, append the journal rows (payload NULL in pointer mode);
4. after COMMIT (``transaction.on_commit``): metrics and one hint per topic.

Payloads are stored as their canonical JSON text (what the hash is computed over), so the WebSocket
lane's SQLite reader can splice the column into frames as it is.

Only one process should write (the embedded default serves one process); correctness of the
multi-worker deployment is proven on PostgreSQL only.
"""

import time

from django.db import models, transaction
from django.db.models import F, Value
from django.utils import timezone

from projector import metrics
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.document_write import PreparedWrite, WriteResult, group_by_topic
from projector.hints import submit_hint
from projector.sink_settlement import after_commit, batch_results, settle_topic, unknown_topic

# SQLite limits the number of bound parameters per statement; stay far below every build's limit.
_IN_CHUNK = 500


class _UnknownTopic(Exception):
    pass


def _json_text(text: str) -> Value:
    """The canonical JSON text as the column value (no re-encoding by ``JSONField``)."""
    return Value(text, output_field=models.TextField())


def _stored_versions(alias: str, topic: str, doc_keys: list[str]) -> dict[str, int]:
    stored: dict[str, int] = {}
    for start in range(0, len(doc_keys), _IN_CHUNK):
        chunk = doc_keys[start : start + _IN_CHUNK]
        stored.update(
            ReadModelDocument.objects.using(alias)
            .filter(topic=topic, doc_key__in=chunk)
            .values_list("doc_key", "doc_version")
        )
    return stored


def _write_topic(alias: str, topic: str, items: list[PreparedWrite]):
    """Write one topic's items (already free of in-batch superseded writes) in the open transaction.

    Returns ``(outcome, stats, stale)``: input index -> (watermark, pointer) of the effective
    writes, the ``after_commit`` tuple (None when nothing was written), the number of no-ops.
    Raises ``_UnknownTopic`` (nothing written)."""
    now = timezone.now()
    sequences = TopicSequence.objects.using(alias).filter(topic=topic)
    count = len(items)
    # The allocation is the transaction's first write: from here on this transaction holds the
    # database write lock until COMMIT (see the module docstring).
    if not sequences.update(last_watermark=F("last_watermark") + count, updated_at=now):
        raise _UnknownTopic(topic)
    last, stream_epoch, forced = sequences.values_list("last_watermark", "stream_epoch", "force_pointer_mode").get()
    first = last - count + 1

    stored = _stored_versions(alias, topic, list(dict.fromkeys(item.write.doc_key for item in items)))
    existing = set(stored)
    effective: list[tuple[PreparedWrite, int]] = []
    latest: dict[str, tuple[PreparedWrite, int]] = {}
    for item in items:
        w = item.write
        version = stored.get(w.doc_key)
        if version is not None and version > w.doc_version:
            continue  # never backwards: an older version is a no-op
        watermark = first + len(effective)
        stored[w.doc_key] = w.doc_version
        effective.append((item, watermark))
        latest[w.doc_key] = (item, watermark)
    if len(effective) < count:
        # Give back the watermarks of the no-op writes (we still hold the write lock).
        sequences.update(last_watermark=first - 1 + len(effective))
    if not effective:
        return {}, None, count

    documents = ReadModelDocument.objects.using(alias)
    new_documents = []
    for doc_key, (item, watermark) in latest.items():
        w = item.write
        values = {
            "doc_version": w.doc_version,
            "owner": w.owner,
            "public": w.public,
            "payload": _json_text(item.encoded.text),
            "payload_hash": item.encoded.digest,
            "watermark": watermark,
        }
        if doc_key in existing:
            documents.filter(topic=topic, doc_key=doc_key).update(**values, updated_at=now)
        else:
            new_documents.append(ReadModelDocument(topic=topic, doc_key=doc_key, **values, created_at=now, updated_at=now))
    if new_documents:
        documents.bulk_create(new_documents)

    StreamEvent.objects.using(alias).bulk_create(
        StreamEvent(
            topic=topic,
            watermark=watermark,
            doc_key=item.write.doc_key,
            doc_version=item.write.doc_version,
            owner=item.write.owner,
            public=item.write.public,
            payload=None if item.over_inline_limit or forced else _json_text(item.encoded.text),
            payload_hash=item.encoded.digest,
            payload_bytes=item.encoded.size,
            inserted_at=now,
        )
        for item, watermark in effective
    )
    outcome: dict[int, tuple[int, bool]] = {}
    stats = settle_topic(topic, stream_epoch, forced, effective, outcome)
    return outcome, stats, count - len(effective)


def project(prepared: PreparedWrite, alias: str, started: float) -> WriteResult:
    """``projector.sink.project`` after validation."""
    w = prepared.write
    try:
        # A savepoint inside the caller's transaction: a refused topic leaves it usable.
        with transaction.atomic(using=alias):
            outcome, stats, stale = _write_topic(alias, w.topic, [prepared])
            if stats is not None:
                transaction.on_commit(lambda: after_commit([stats], submit_hint), using=alias)
    except _UnknownTopic:
        raise unknown_topic(w.topic, None) from None
    if stale:
        metrics.sink_counters(w.topic).stale.inc()
    watermark, pointer = outcome.get(prepared.index, (None, False))
    metrics.SINK_DURATION_PROJECT.observe(time.perf_counter() - started)
    return WriteResult(w.topic, w.doc_key, w.doc_version, watermark is not None, watermark, pointer)


def project_many(prepared: list[PreparedWrite], alias: str, started: float) -> list[WriteResult]:
    """``projector.sink.project_many`` after validation: all topics in one transaction."""
    by_topic, superseded = group_by_topic(prepared)
    outcome: dict[int, tuple[int, bool]] = {}
    all_stats, stale_counts = [], {}
    topic = None
    try:
        with transaction.atomic(using=alias):
            for topic in sorted(by_topic):  # the same watermark order as the PostgreSQL path
                written, stats, stale = _write_topic(alias, topic, by_topic[topic])
                outcome.update(written)
                if stats is not None:
                    all_stats.append(stats)
                stale_counts[topic] = stale
            if all_stats:
                transaction.on_commit(lambda: after_commit(all_stats, submit_hint), using=alias)
    except _UnknownTopic:
        raise unknown_topic(topic, by_topic[topic][0].index) from None
    for topic, stale in stale_counts.items():
        if stale:
            metrics.sink_counters(topic).stale.inc(stale)
    return batch_results(prepared, superseded, outcome, started)

"""The design card's sink, written the ORM way, for ``bench/sink.py`` to measure beside the real one.

The card describes the projector as "an ORM-backed sink with ``select_for_update``". This is that
sink, written as a Django developer would write it, with the same validation, results, metrics
and hints as ``projector.sink`` (it takes them from ``projector.document_write`` and
``projector.sink_settlement``) so that only the database part differs. Per topic, in one
``transaction.atomic``:

1. ``TopicSequence.objects.select_for_update().get(topic=…)``: the row lock, held until commit
   (commit order = watermark order, the same invariant as ``projector.allocator``);
2. read the stored ``doc_version`` of the batch's documents (exact: every earlier writer of the
   topic has committed once the lock is granted, and READ COMMITTED gives each statement a fresh
   snapshot);
3. ``ReadModelDocument.objects.bulk_create(update_conflicts=True)`` upserts the newest write of
   each document; ``StreamEvent.objects.bulk_create`` appends one journal row per effective write;
4. ``TopicSequence.objects.filter(topic=…).update(last_watermark=…)`` advances the sequence by the
   number of effective writes only, so no-ops consume no watermark.

That is five statements plus COMMIT per topic (the production sink sends one query message for a
single document and one for a one-topic batch). It lives in ``bench/``, not in ``projector/``,
because it is not a production code path: see docs/adr/ADR-0004-design-card-departures.md.
PostgreSQL only (``select_for_update`` is a no-op on SQLite, where the portable sink allocates
first for that reason).
"""

from __future__ import annotations

import time
from typing import Iterable

from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone

from khala_project.conf import khala_setting
from projector import metrics
from projector.document_write import DocumentWrite, PreparedWrite, SinkError, WriteResult, group_by_topic, prepare
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.hints import submit_hint
from projector.sink_settlement import after_commit, batch_results, count_refusal, settle_topic, unknown_topic

READ_MODEL_UPDATE_FIELDS = ["doc_version", "owner", "public", "payload", "payload_hash", "watermark", "updated_at"]


class _UnknownTopic(Exception):
    pass


def _write_topic(alias: str, topic: str, items: list[PreparedWrite], outcome: dict):
    """One topic's writes in the open transaction; returns the ``after_commit`` tuple or None."""
    sequence = TopicSequence.objects.using(alias).select_for_update().filter(topic=topic).first()
    if sequence is None:
        raise _UnknownTopic(topic)
    stored = dict(
        ReadModelDocument.objects.using(alias)
        .filter(topic=topic, doc_key__in={item.write.doc_key for item in items})
        .values_list("doc_key", "doc_version")
    )
    effective: list[tuple[PreparedWrite, int]] = []
    latest: dict[str, tuple[PreparedWrite, int]] = {}
    for item in items:
        w = item.write
        version = stored.get(w.doc_key)
        if version is not None and version > w.doc_version:
            continue  # never backwards: an older version is a no-op
        watermark = sequence.last_watermark + 1 + len(effective)
        stored[w.doc_key] = w.doc_version
        effective.append((item, watermark))
        latest[w.doc_key] = (item, watermark)
    metrics_stale = len(items) - len(effective)
    if metrics_stale:
        metrics.sink_counters(topic).stale.inc(metrics_stale)
    if not effective:
        return None
    now = timezone.now()
    forced = sequence.force_pointer_mode
    ReadModelDocument.objects.using(alias).bulk_create(
        [
            ReadModelDocument(
                topic=topic,
                doc_key=item.write.doc_key,
                doc_version=item.write.doc_version,
                owner=item.write.owner,
                public=item.write.public,
                payload=item.write.payload,
                payload_hash=item.encoded.digest,
                watermark=watermark,
                created_at=now,
                updated_at=now,
            )
            for item, watermark in latest.values()
        ],
        update_conflicts=True,
        unique_fields=["topic", "doc_key"],
        update_fields=READ_MODEL_UPDATE_FIELDS,
    )
    StreamEvent.objects.using(alias).bulk_create(
        [
            StreamEvent(
                topic=topic,
                watermark=watermark,
                doc_key=item.write.doc_key,
                doc_version=item.write.doc_version,
                owner=item.write.owner,
                public=item.write.public,
                payload=None if item.over_inline_limit or forced else item.write.payload,
                payload_hash=item.encoded.digest,
                payload_bytes=item.encoded.size,
                inserted_at=now,
            )
            for item, watermark in effective
        ]
    )
    TopicSequence.objects.using(alias).filter(topic=topic).update(last_watermark=effective[-1][1], updated_at=now)
    return settle_topic(topic, sequence.stream_epoch, forced, effective, outcome)


def project_many(writes: Iterable[DocumentWrite], *, using: str | None = None) -> list[WriteResult]:
    """``projector.sink.project_many`` the ORM way (see the module docstring)."""
    started = time.perf_counter()
    alias = using or DEFAULT_DB_ALIAS
    inline_limit = khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")
    max_bytes = khala_setting("MAX_PAYLOAD_BYTES")
    prepared = []
    for index, write in enumerate(writes):
        try:
            prepared.append(prepare(write, index, inline_limit, max_bytes))
        except SinkError as exc:
            count_refusal(write.topic, exc.code)
            raise
    by_topic, superseded = group_by_topic(prepared)
    outcome: dict[int, tuple[int, bool]] = {}
    stats = []
    topic = None
    try:
        with transaction.atomic(using=alias):
            for topic in sorted(by_topic):  # the same lock order as the production sink
                settled = _write_topic(alias, topic, by_topic[topic], outcome)
                if settled is not None:
                    stats.append(settled)
            if stats:
                transaction.on_commit(lambda: after_commit(stats, submit_hint), using=alias)
    except _UnknownTopic:
        raise unknown_topic(topic, by_topic[topic][0].index) from None
    return batch_results(prepared, superseded, outcome, started)


def project(
    topic: str, doc_key: str, doc_version: int, payload: dict, owner: str, *, public: bool = False, using=None
) -> WriteResult:
    """``projector.sink.project`` the ORM way: a batch of one."""
    return project_many([DocumentWrite(topic, doc_key, doc_version, payload, owner, public)], using=using)[0]

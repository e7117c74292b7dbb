"""The projector (KHALA-006): folds runtime authority state into sync documents.

=============================  =======================================================  =========
topic                          doc_key                                                  doc_version
=============================  =======================================================  =========
runtime.run_summaries          ``runtime/run_summary:<run_id>``                         run seq
runtime.codex_worker_summaries ``runtime/codex_worker_summary:<worker_id>``             worker seq
runtime.codex_worker_events    ``runtime/codex_worker_event:<worker_id>:<seq>``         event seq
runtime.notifications          ``runtime/notification:run:<run_id>`` (terminal runs)    run seq
=============================  =======================================================  =========

``doc_version`` is the authority ``seq`` the document reflects (the latest event's seq, 0 for an
entity without events). The owner of every document is ``user:<owner_user_id>``.

Idempotency: one ``khala_projection_checkpoints`` row per (projection, entity), locked for the
decision (table: docs/sync/SCHEMA.md), so a re-run or a second projector writes nothing twice:

- no checkpoint → write;
- checkpoint seq ahead of the authority → skip (``checkpoint_ahead``);
- same seq, same ``projection_version``, same ``summary_hash`` → skip (``idempotent``);
- same seq and version, other hash → write (``summary_hash_mismatch``, counted as drift);
- same seq, other version → write (``projection_version_changed``);
- newer seq → write (``newer_seq``).

Summaries carry no ``projected_at``: a projection time inside the payload would give every
reprojection a new hash and a new journal row even when nothing had changed. Here the payload is a pure function of the authority state, ``summary_hash``
is simply the hex of its canonical ``payload_hash`` (the parity auditor can compare it with the
read model's ``payload_hash`` directly), and the projection time lives in the checkpoint's
``last_projected_at``. With ``verify_read_model=True`` (reprojection) an ``idempotent`` decision is
double-checked against the stored read-model row, so a lost or corrupted row is rewritten
(``read_model_missing`` / ``read_model_drift``) while an intact one appends nothing.
"""

import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from projector import metrics, sink
from projector.canonical import encode
from projector.models import (
    CODEX_WORKER_EVENTS,
    CODEX_WORKER_SUMMARIES,
    NOTIFICATIONS,
    RUN_SUMMARIES,
    ProjectionCheckpoint,
    ReadModelDocument,
)
from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent, owner_string

log = logging.getLogger(__name__)

PROJECTION_VERSION = "khala_summary_v1"
RUN_SUMMARY = "run_summary"
CODEX_WORKER_SUMMARY = "codex_worker_summary"
CODEX_WORKER_EVENT = "codex_worker_events"
RUN_NOTIFICATION = "run_notification"


def run_doc_key(run_id: str) -> str:
    return f"runtime/run_summary:{run_id}"


def worker_doc_key(worker_id: str) -> str:
    return f"runtime/codex_worker_summary:{worker_id}"


def worker_event_doc_key(worker_id: str, seq: int) -> str:
    return f"runtime/codex_worker_event:{worker_id}:{seq}"


def notification_doc_key(run_id: str) -> str:
    return f"runtime/notification:run:{run_id}"


def _iso(value) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Decision:
    write: bool
    reason: str


@dataclass(frozen=True)
class ProjectionResult:
    projection: str
    entity_id: str
    doc_key: str
    written: bool
    reason: str
    watermark: int | None = None


def decide(checkpoint: ProjectionCheckpoint | None, seq: int, version: str, summary_hash: str) -> Decision:
    """The checkpoint rules listed in the module docstring, as a pure function."""
    if checkpoint is None or checkpoint.last_runtime_seq < 0:
        return Decision(True, "no_checkpoint")
    if checkpoint.last_runtime_seq > seq:
        return Decision(False, "checkpoint_ahead")
    if checkpoint.last_runtime_seq == seq:
        if checkpoint.projection_version != version:
            return Decision(True, "projection_version_changed")
        if checkpoint.summary_hash != summary_hash:
            return Decision(True, "summary_hash_mismatch")
        return Decision(False, "idempotent")
    return Decision(True, "newer_seq")


# --- summaries (pure functions of authority state) ---------------------------------------------


def run_summary(run: Run, event_count: int, latest_event: RunEvent | None) -> dict:
    return {
        "document_id": run_doc_key(run.id),
        "kind": "run_summary",
        "run_id": run.id,
        "thread_id": run.thread_id,
        "status": run.status,
        "owner_user_id": run.owner_id,
        "latest_seq": run.latest_seq,
        "event_count": event_count,
        "latest_event_type": latest_event.event_type if latest_event else None,
        "latest_event_at": _iso(latest_event.created_at) if latest_event else None,
        "terminal_reason_class": run.terminal_reason_class or None,
        "terminal_reason": run.terminal_reason or None,
        "terminal_at": _iso(run.terminal_at),
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "runtime_source": {"entity": "run", "run_id": run.id, "seq": run.latest_seq},
        "projection_version": PROJECTION_VERSION,
    }


def worker_summary(worker: CodexWorker, event_count: int, latest_event: CodexWorkerEvent | None) -> dict:
    return {
        "document_id": worker_doc_key(worker.id),
        "kind": "codex_worker_summary",
        "worker_id": worker.id,
        "status": worker.status,
        "owner_user_id": worker.owner_id,
        "workspace_ref": worker.workspace_ref or None,
        "codex_home_ref": worker.codex_home_ref or None,
        "adapter": worker.adapter or None,
        "metadata": worker.metadata,
        "latest_seq": worker.latest_seq,
        "event_count": event_count,
        "latest_event_type": latest_event.event_type if latest_event else None,
        "latest_event_at": _iso(latest_event.created_at) if latest_event else None,
        "started_at": _iso(worker.started_at),
        "stopped_at": _iso(worker.stopped_at),
        "last_heartbeat_at": _iso(worker.last_heartbeat_at),
        "created_at": _iso(worker.created_at),
        "updated_at": _iso(worker.updated_at),
        "runtime_source": {"entity": "codex_worker", "worker_id": worker.id, "seq": worker.latest_seq},
        "projection_version": PROJECTION_VERSION,
    }


def worker_event_document(event: CodexWorkerEvent) -> dict:
    return {
        "document_id": worker_event_doc_key(event.worker_id, event.seq),
        "kind": "codex_worker_event",
        "worker_id": event.worker_id,
        "seq": event.seq,
        "event_type": event.event_type,
        "payload": event.payload,
        "occurred_at": _iso(event.created_at),
        "runtime_source": {"entity": "codex_worker", "worker_id": event.worker_id, "seq": event.seq},
        "projection_version": PROJECTION_VERSION,
    }


def run_notification(run: Run) -> dict:
    return {
        "document_id": notification_doc_key(run.id),
        "kind": "run_terminal",
        "run_id": run.id,
        "thread_id": run.thread_id,
        "status": run.status,
        "terminal_reason_class": run.terminal_reason_class or None,
        "terminal_reason": run.terminal_reason or None,
        "terminal_at": _iso(run.terminal_at),
        "runtime_source": {"entity": "run", "run_id": run.id, "seq": run.latest_seq},
        "projection_version": PROJECTION_VERSION,
    }


# --- checkpointed projection --------------------------------------------------------------------

_CLAIM_CHECKPOINT_SQL = """
INSERT INTO khala_projection_checkpoints
       (projection_name, entity_id, document_id, last_runtime_seq, projection_version, summary_hash,
        last_projected_at, created_at, updated_at)
VALUES (%s, %s, %s, -1, '', '', now(), now(), now())
ON CONFLICT (projection_name, entity_id) DO NOTHING
"""


def _locked_checkpoint(projection: str, entity_id: str, doc_key: str) -> ProjectionCheckpoint:
    """The entity's checkpoint row, locked until commit (created as "never projected", seq -1).

    Claiming the row with INSERT … ON CONFLICT DO NOTHING first makes two concurrent first
    projections of one entity queue on the same row instead of racing to insert it.
    """
    from django.db import connection

    if connection.vendor != "postgresql":  # the embedded SQLite of `make run`: INSERT OR IGNORE
        now = timezone.now()
        claim = ProjectionCheckpoint(
            projection_name=projection, entity_id=entity_id, document_id=doc_key, last_runtime_seq=-1,
            projection_version="", summary_hash="", last_projected_at=now, created_at=now, updated_at=now,
        )
        ProjectionCheckpoint.objects.bulk_create([claim], ignore_conflicts=True)
        return ProjectionCheckpoint.objects.get(projection_name=projection, entity_id=entity_id)
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_CHECKPOINT_SQL, [projection, entity_id, doc_key])
    return ProjectionCheckpoint.objects.select_for_update().get(projection_name=projection, entity_id=entity_id)


def _advance_checkpoint(checkpoint: ProjectionCheckpoint, doc_key: str, seq: int, summary_hash: str, now) -> None:
    """Record a projection that was written, in the transaction of its sink write."""
    checkpoint.document_id = doc_key
    checkpoint.last_runtime_seq = seq
    checkpoint.projection_version = PROJECTION_VERSION
    checkpoint.summary_hash = summary_hash
    checkpoint.last_projected_at = now or timezone.now()
    checkpoint.save()


def _read_model_matches(topic: str, doc_key: str, seq: int, digest: bytes) -> tuple[bool, str]:
    row = ReadModelDocument.objects.filter(topic=topic, doc_key=doc_key).values_list("doc_version", "payload_hash")
    row = row.first()
    if row is None:
        return False, "read_model_missing"
    if row[0] != seq or bytes(row[1]) != digest:
        return False, "read_model_drift"
    return True, "idempotent"


def project_document(
    projection: str,
    entity_id: str,
    topic: str,
    doc_key: str,
    seq: int,
    owner: str,
    payload: dict,
    *,
    verify_read_model: bool = False,
    now=None,
) -> ProjectionResult:
    """Apply the checkpoint rules to one document and write it through the sink if needed.

    Runs in its own transaction (nested in the caller's if one is open): checkpoint lock, sink
    write and checkpoint update commit together, and a sink error rolls back all three.
    """
    encoded = encode(payload)
    summary_hash = encoded.digest.hex()
    with transaction.atomic():
        checkpoint = _locked_checkpoint(projection, entity_id, doc_key)
        decision = decide(checkpoint, seq, PROJECTION_VERSION, summary_hash)
        if not decision.write and decision.reason == "idempotent" and verify_read_model:
            matches, reason = _read_model_matches(topic, doc_key, seq, encoded.digest)
            if not matches:
                decision = Decision(True, reason)
        if not decision.write:
            metrics.PROJECTOR_RUNS.labels(projection=projection, result="skipped", reason=decision.reason).inc()
            return ProjectionResult(projection, entity_id, doc_key, False, decision.reason)
        if decision.reason == "summary_hash_mismatch":
            metrics.PROJECTOR_DRIFT.labels(projection=projection).inc()
            log.warning("projection drift %s %s at seq %s", projection, entity_id, seq)
        result = sink.project(topic, doc_key, seq, payload, owner)
        _advance_checkpoint(checkpoint, doc_key, seq, summary_hash, now)
    metrics.PROJECTOR_RUNS.labels(projection=projection, result="written", reason=decision.reason).inc()
    return ProjectionResult(projection, entity_id, doc_key, result.written, decision.reason, result.watermark)


def _wanted(topics, topic: str) -> bool:
    return topics is None or topic in topics


def project_run(run_id: str, *, verify_read_model: bool = False, now=None, topics=None) -> list[ProjectionResult]:
    """Project a run's summary (and, once terminal, its notification). Raises ``Run.DoesNotExist``.

    ``topics`` (a set) limits which documents are considered (reprojection of one topic).
    """
    results = []
    with transaction.atomic():
        run = Run.objects.get(id=run_id)
        events = RunEvent.objects.filter(run_id=run_id)
        event_count = events.count()
        latest_event = events.order_by("-seq").first()
        owner = owner_string(run.owner_id)
        if _wanted(topics, RUN_SUMMARIES):
            results.append(project_document(
                RUN_SUMMARY,
                run.id,
                RUN_SUMMARIES,
                run_doc_key(run.id),
                run.latest_seq,
                owner,
                run_summary(run, event_count, latest_event),
                verify_read_model=verify_read_model,
                now=now,
            ))
        if run.is_terminal and _wanted(topics, NOTIFICATIONS):
            results.append(
                project_document(
                    RUN_NOTIFICATION,
                    run.id,
                    NOTIFICATIONS,
                    notification_doc_key(run.id),
                    run.latest_seq,
                    owner,
                    run_notification(run),
                    verify_read_model=verify_read_model,
                    now=now,
                )
            )
    return results


def project_codex_worker(
    worker_id: str, *, verify_read_model: bool = False, now=None, topics=None
) -> list[ProjectionResult]:
    """Project a worker's summary and its events not yet projected. Raises ``CodexWorker.DoesNotExist``."""
    results = []
    with transaction.atomic():
        worker = CodexWorker.objects.get(id=worker_id)
        events = CodexWorkerEvent.objects.filter(worker_id=worker_id)
        stats = events.aggregate(count=Count("id"), latest=Max("seq"))
        latest_event = events.order_by("-seq").first()
        owner = owner_string(worker.owner_id)
        if _wanted(topics, CODEX_WORKER_SUMMARIES):
            results.append(project_document(
                CODEX_WORKER_SUMMARY,
                worker.id,
                CODEX_WORKER_SUMMARIES,
                worker_doc_key(worker.id),
                worker.latest_seq,
                owner,
                worker_summary(worker, stats["count"], latest_event),
                verify_read_model=verify_read_model,
                now=now,
            ))
        if _wanted(topics, CODEX_WORKER_EVENTS):
            results.extend(_project_worker_events(worker, owner, verify_read_model=verify_read_model, now=now))
    return results


def _project_worker_events(worker: CodexWorker, owner: str, *, verify_read_model: bool, now) -> list[ProjectionResult]:
    """Each worker event is its own document; the checkpoint remembers the last projected seq.

    Normal path: events after the checkpoint, in one ``project_many`` batch (so a projection that
    failed earlier is caught up by the next one). Reprojection: every event, writing only those
    whose read-model row is missing or differs.
    """
    checkpoint = _locked_checkpoint(CODEX_WORKER_EVENT, worker.id, worker_event_doc_key(worker.id, 0))
    after = -1 if verify_read_model else checkpoint.last_runtime_seq
    events = list(CodexWorkerEvent.objects.filter(worker_id=worker.id, seq__gt=max(after, 0)).order_by("seq"))
    documents = [(event, worker_event_document(event)) for event in events]
    if verify_read_model and documents:
        keys = [worker_event_doc_key(worker.id, e.seq) for e, _ in documents]
        stored = dict(
            ReadModelDocument.objects.filter(topic=CODEX_WORKER_EVENTS, doc_key__in=keys).values_list(
                "doc_key", "payload_hash"
            )
        )
        documents = [
            (event, doc)
            for event, doc in documents
            if bytes(stored.get(doc["document_id"]) or b"") != encode(doc).digest
        ]
    if not documents:
        return []
    writes = [
        sink.DocumentWrite(CODEX_WORKER_EVENTS, doc["document_id"], event.seq, doc, owner) for event, doc in documents
    ]
    written = sink.project_many(writes)
    newest = max(checkpoint.last_runtime_seq, events[-1].seq)
    summary_hash = encode(documents[-1][1]).digest.hex()
    _advance_checkpoint(checkpoint, worker_event_doc_key(worker.id, newest), newest, summary_hash, now)
    metrics.PROJECTOR_RUNS.labels(projection=CODEX_WORKER_EVENT, result="written", reason="new_events").inc(len(writes))
    return [
        ProjectionResult(CODEX_WORKER_EVENT, worker.id, w.doc_key, r.written, "new_events", r.watermark)
        for w, r in zip(writes, written)
    ]


# --- best-effort trigger after an authority commit ---------------------------------------------


def project_after_commit(entity: str, entity_id: str) -> None:
    """Called from ``transaction.on_commit`` by the runtime: never raises.

    The authority write already committed; a projection failure must not turn it into an error.
    It is logged and counted (``khala_projection_failures_total``); the next write to the entity,
    or ``manage.py reproject``, catches the documents up.
    """
    try:
        if entity == "run":
            project_run(entity_id)
        else:
            project_codex_worker(entity_id)
    except Exception:
        metrics.PROJECTION_FAILURES.labels(entity=entity).inc()
        log.exception("projection of %s %s failed after the authority commit", entity, entity_id)

"""The projector (KHALA-006): folds runtime authority state into sync documents.

=============================  =======================================================  =========
topic                          doc_key                                                  doc_version
=============================  =======================================================  =========
runtime.run_summaries          ``runtime/run_summary:<run_id>``                         run seq
runtime.codex_worker_summaries ``runtime/codex_worker_summary:<worker_id>``             worker seq
runtime.codex_worker_events    ``runtime/codex_worker_event:<worker_id>:<seq>``         event seq
runtime.notifications          ``runtime/notification:run:<run_id>`` (terminal runs)    run seq
=============================  =======================================================  =========

Entities are projected in batches (``project_entities``: one ``sink.project_many`` call and one
transaction for many entities), fed by the projection outbox (``projector.outbox``); the
single-entity ``project_run`` / ``project_codex_worker`` (reprojection) are batches of one.

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
from django.db.models import Count, Q
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


# --- checkpointed projection, in batches ----------------------------------------------------------

RUN = "run"
CODEX_WORKER = "codex_worker"
ENTITIES = (RUN, CODEX_WORKER)


@dataclass(frozen=True)
class _Candidate:
    """A summary-like document (one per entity and projection) the authority currently implies."""

    projection: str
    entity_id: str
    topic: str
    doc_key: str
    seq: int
    owner: str
    payload: dict


@dataclass
class BatchProjection:
    """What ``project_entities`` did: results per ``(entity, entity_id)`` in input order, and the
    entities the authority does not have (nothing was written for those)."""

    results: dict[tuple[str, str], list[ProjectionResult]]
    missing: list[tuple[str, str]]

    @property
    def written_documents(self) -> int:
        return sum(1 for rs in self.results.values() for r in rs if r.written)


_CLAIM_CHECKPOINTS_SQL = """
INSERT INTO khala_projection_checkpoints
       (projection_name, entity_id, document_id, last_runtime_seq, projection_version, summary_hash,
        last_projected_at, created_at, updated_at)
SELECT p, e, d, -1, '', '', now(), now(), now()
  FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(p, e, d)
ON CONFLICT (projection_name, entity_id) DO NOTHING
"""


def _in_lock_order(wanted: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Checkpoint rows are locked by entity id, then projection name DESCENDING (a summary before
    the run's notification or the worker's event stream), both in bytewise ("C") order. Every
    projecting transaction (outbox worker, fast path, reprojection) claims and locks in this one
    order, so two of them sharing entities queue instead of deadlocking; the sink's topic-row
    locks come after all checkpoint locks."""
    by_projection = sorted(wanted, key=lambda w: w[0].encode(), reverse=True)
    return sorted(by_projection, key=lambda w: w[1].encode())  # stable: projection order kept


_LOCK_CHECKPOINTS_SQL = """
SELECT c.* FROM khala_projection_checkpoints AS c
  JOIN unnest(%s::text[], %s::text[]) AS t(p, e) ON c.projection_name = t.p AND c.entity_id = t.e
 ORDER BY c.entity_id COLLATE "C", c.projection_name COLLATE "C" DESC
   FOR UPDATE OF c
"""


def _locked_checkpoints(wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], ProjectionCheckpoint]:
    """The checkpoint rows of ``(projection, entity_id, doc_key)``, locked until commit (a missing
    one is created as "never projected", seq -1).

    Claiming the rows with INSERT … ON CONFLICT DO NOTHING first makes two concurrent first
    projections of one entity queue on the same row instead of racing to insert it.
    """
    from django.db import connection

    wanted = _in_lock_order(wanted)
    if not wanted:
        return {}
    if connection.vendor != "postgresql":  # the embedded SQLite of `make run`: INSERT OR IGNORE
        now = timezone.now()
        claims = [
            ProjectionCheckpoint(
                projection_name=p, entity_id=e, document_id=d, last_runtime_seq=-1, projection_version="",
                summary_hash="", last_projected_at=now, created_at=now, updated_at=now,
            )
            for p, e, d in wanted
        ]
        ProjectionCheckpoint.objects.bulk_create(claims, ignore_conflicts=True)
        match = Q()
        for projection, entity_id, _doc_key in wanted:
            match |= Q(projection_name=projection, entity_id=entity_id)
        rows = ProjectionCheckpoint.objects.filter(match)  # SQLite: the write lock is the database's
    else:
        names, ids = [w[0] for w in wanted], [w[1] for w in wanted]
        with connection.cursor() as cursor:
            cursor.execute(_CLAIM_CHECKPOINTS_SQL, [names, ids, [w[2] for w in wanted]])
        # Locked and read in one statement (raw SQL: this runs in every batch, and building the
        # ORM query cost more than running it).
        rows = ProjectionCheckpoint.objects.raw(_LOCK_CHECKPOINTS_SQL, [names, ids])
    return {(row.projection_name, row.entity_id): row for row in rows}


def _advance(checkpoint: ProjectionCheckpoint, doc_key: str, seq: int, summary_hash: str, now) -> None:
    """Record a projection that was written (saved with the batch, in the transaction of its sink write)."""
    checkpoint.document_id = doc_key
    checkpoint.last_runtime_seq = seq
    checkpoint.projection_version = PROJECTION_VERSION
    checkpoint.summary_hash = summary_hash
    checkpoint.last_projected_at = now
    checkpoint.updated_at = now


def _read_model_matches(topic: str, doc_key: str, seq: int, digest: bytes) -> tuple[bool, str]:
    row = ReadModelDocument.objects.filter(topic=topic, doc_key=doc_key).values_list("doc_version", "payload_hash")
    row = row.first()
    if row is None:
        return False, "read_model_missing"
    if row[0] != seq or bytes(row[1]) != digest:
        return False, "read_model_drift"
    return True, "idempotent"


def _wanted(topics, topic: str) -> bool:
    return topics is None or topic in topics


def _event_stats(event_model, fk: str, entities: dict) -> tuple[dict[str, int], dict[str, object]]:
    """Per entity: the number of its events up to its ``latest_seq`` as read, and that latest event.

    Bounded by the ``latest_seq`` read with the entity, so the fold is of ONE authority state even
    if an event commits between the two reads. On PostgreSQL one join against ``unnest`` arrays
    per query (an ORM OR of one clause per entity cost more to build than to run).
    """
    from django.db import connection

    if not entities:
        return {}, {}
    if connection.vendor == "postgresql":
        table = event_model._meta.db_table
        ids = list(entities)
        seqs = [entities[i].latest_seq for i in ids]
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT e.{fk}, count(*) FROM {table} AS e JOIN unnest(%s::text[], %s::bigint[]) AS t(id, s) "
                f"ON e.{fk} = t.id AND e.seq <= t.s GROUP BY e.{fk}",
                [ids, seqs],
            )
            counts = dict(cursor.fetchall())
        latest_events = {
            getattr(e, fk): e
            for e in event_model.objects.raw(
                f"SELECT e.* FROM {table} AS e JOIN unnest(%s::text[], %s::bigint[]) AS t(id, s) "
                f"ON e.{fk} = t.id AND e.seq = t.s",
                [ids, seqs],
            )
        }
        return counts, latest_events
    upto = Q()
    latest = Q()
    for entity_id, entity in entities.items():
        upto |= Q(**{fk: entity_id, "seq__lte": entity.latest_seq})
        if entity.latest_seq > 0:
            latest |= Q(**{fk: entity_id, "seq": entity.latest_seq})
    counts = {row[fk]: row["n"] for row in event_model.objects.filter(upto).values(fk).annotate(n=Count("id"))}
    latest_events = {getattr(e, fk): e for e in event_model.objects.filter(latest)} if latest else {}
    return counts, latest_events


_SAVE_CHECKPOINTS_SQL = """
UPDATE khala_projection_checkpoints AS c
   SET document_id = t.d, last_runtime_seq = t.s, projection_version = %s, summary_hash = t.h,
       last_projected_at = %s, updated_at = %s
  FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[]) AS t(id, d, s, h)
 WHERE c.id = t.id
"""


def _save_checkpoints(advanced: list[ProjectionCheckpoint], now) -> None:
    """One UPDATE for the batch's checkpoints (the ORM's bulk_update builds a CASE per row and per
    field, which cost more Python time than the rest of a 200-entity batch together)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        ProjectionCheckpoint.objects.bulk_update(
            advanced, ["document_id", "last_runtime_seq", "projection_version", "summary_hash", "last_projected_at", "updated_at"]
        )
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _SAVE_CHECKPOINTS_SQL,
            [
                PROJECTION_VERSION, now, now,
                [c.id for c in advanced], [c.document_id for c in advanced],
                [c.last_runtime_seq for c in advanced], [c.summary_hash for c in advanced],
            ],
        )


def _by_ids(model, ids: list[str]):
    """The rows of ``model`` with these ids (raw SQL on PostgreSQL: this runs in every batch, and
    building the ORM query cost more than running it)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return model.objects.raw(f"SELECT * FROM {model._meta.db_table} WHERE id = ANY(%s)", [list(ids)])
    return model.objects.filter(id__in=ids)


def _authority_candidates(run_ids: list[str], worker_ids: list[str], topics) -> tuple[dict, dict, list[_Candidate]]:
    """Read the runs and workers and build their summary / notification documents (pure folds)."""
    runs = {r.id: r for r in _by_ids(Run, run_ids)} if run_ids else {}
    workers = {w.id: w for w in _by_ids(CodexWorker, worker_ids)} if worker_ids else {}
    run_counts, run_latest = _event_stats(RunEvent, "run_id", runs)
    worker_counts, worker_latest = _event_stats(CodexWorkerEvent, "worker_id", workers)
    candidates = []
    for run in runs.values():
        owner = owner_string(run.owner_id)
        if _wanted(topics, RUN_SUMMARIES):
            summary = run_summary(run, run_counts.get(run.id, 0), run_latest.get(run.id))
            candidates.append(_Candidate(RUN_SUMMARY, run.id, RUN_SUMMARIES, run_doc_key(run.id), run.latest_seq, owner, summary))
        if run.is_terminal and _wanted(topics, NOTIFICATIONS):
            candidates.append(_Candidate(
                RUN_NOTIFICATION, run.id, NOTIFICATIONS, notification_doc_key(run.id), run.latest_seq, owner,
                run_notification(run),
            ))
    for worker in workers.values():
        if _wanted(topics, CODEX_WORKER_SUMMARIES):
            summary = worker_summary(worker, worker_counts.get(worker.id, 0), worker_latest.get(worker.id))
            candidates.append(_Candidate(
                CODEX_WORKER_SUMMARY, worker.id, CODEX_WORKER_SUMMARIES, worker_doc_key(worker.id), worker.latest_seq,
                owner_string(worker.owner_id), summary,
            ))
    return runs, workers, candidates


def _new_worker_events(workers: dict, checkpoints: dict, verify_read_model: bool, rewrite) -> dict[str, list[tuple]]:
    """Per worker: ``(event, document)`` of the events to write.

    Normal path: the events after the checkpoint (so a projection that failed earlier is caught up
    by the next one). Reprojection: every event whose read-model row is missing or differs.
    """
    if not workers:
        return {}
    from django.db import connection

    after = {
        wid: max(-1 if verify_read_model else checkpoints[(CODEX_WORKER_EVENT, wid)].last_runtime_seq, 0) for wid in workers
    }
    if connection.vendor == "postgresql":
        events = CodexWorkerEvent.objects.raw(
            "SELECT e.* FROM runtime_codex_worker_events AS e JOIN unnest(%s::text[], %s::bigint[]) AS t(id, s) "
            "ON e.worker_id = t.id AND e.seq > t.s ORDER BY e.worker_id, e.seq",
            [list(after), list(after.values())],
        )
    else:
        match = Q()
        for worker_id, seq in after.items():
            match |= Q(worker_id=worker_id, seq__gt=seq)
        events = CodexWorkerEvent.objects.filter(match).order_by("worker_id", "seq")
    by_worker: dict[str, list[tuple]] = {}
    for event in events:
        by_worker.setdefault(event.worker_id, []).append((event, worker_event_document(event)))
    if verify_read_model and by_worker:
        keys = [doc["document_id"] for docs in by_worker.values() for _e, doc in docs]
        stored = dict(
            ReadModelDocument.objects.filter(topic=CODEX_WORKER_EVENTS, doc_key__in=keys).values_list("doc_key", "payload_hash")
        )
        by_worker = {
            wid: [
                (e, doc)
                for e, doc in docs
                if doc["document_id"] in rewrite or bytes(stored.get(doc["document_id"]) or b"") != encode(doc).digest
            ]
            for wid, docs in by_worker.items()
        }
    return by_worker


def project_entities(
    refs,
    *,
    verify_read_model: bool = False,
    now=None,
    topics=None,
    rewrite=frozenset(),
    before_write=None,
    savepoint: bool = True,
) -> BatchProjection:
    """Project the documents of many entities (``(entity, entity_id)``, entity in ``ENTITIES``) in
    ONE transaction (the caller's, if one is open) and ONE ``sink.project_many`` call: one
    topic-row lock per topic for the whole batch instead of one commit per document.

    Per document, the checkpoint rules of the module docstring decide; a write and its checkpoint
    update commit together, and any error rolls the whole batch back. ``verify_read_model``
    (reprojection) double-checks ``idempotent`` decisions against the stored read-model row;
    ``topics`` (a set) limits which documents are considered; documents whose doc_key is in
    ``rewrite`` are written even when nothing looks wrong (``parity_repair``: the parity audit saw
    them missing from the journal). ``before_write`` (optional) runs in the same transaction right
    before the sink call (the outbox deletes its entries there, outside the topic-row lock). Raises ``ValueError`` for an entity
    kind outside ``ENTITIES`` and ``sink.SinkError`` when a document is refused (nothing written).
    ``savepoint=False``: inside the caller's transaction, no savepoint of its own (two round trips
    less); for a caller that rolls back its whole transaction when this raises (the outbox drain).

    Why repeats are harmless (the outbox fast path and its workers may fold the same entity
    concurrently): the checkpoint row is locked before the decision, so two folds of one entity
    serialise on it; the second sees the first's seq and hash and skips (``idempotent``), or
    skips an older fold (``checkpoint_ahead``). The sink's ``doc_version`` guard is the backstop:
    no older version is ever journaled after a newer one.
    """
    refs = list(dict.fromkeys((str(e), str(i)) for e, i in refs))
    unknown = sorted({e for e, _ in refs if e not in ENTITIES})
    if unknown:
        raise ValueError(f"unknown entity kind(s) {unknown}; the projector folds {list(ENTITIES)}")
    now = now or timezone.now()
    run_ids = [i for e, i in refs if e == RUN]
    worker_ids = [i for e, i in refs if e == CODEX_WORKER]
    results: dict[tuple[str, str], list[ProjectionResult]] = {}
    with transaction.atomic(savepoint=savepoint):
        runs, workers, candidates = _authority_candidates(run_ids, worker_ids, topics)
        want_events = _wanted(topics, CODEX_WORKER_EVENTS)
        lock = [(c.projection, c.entity_id, c.doc_key) for c in candidates]
        if want_events:
            lock += [(CODEX_WORKER_EVENT, wid, worker_event_doc_key(wid, 0)) for wid in workers]
        checkpoints = _locked_checkpoints(lock)

        writes: list[sink.DocumentWrite] = []
        pending: list[tuple] = []  # per write: (ref, projection, entity_id, reason, checkpoint update or None)
        for c in candidates:
            ref = (RUN if c.projection in (RUN_SUMMARY, RUN_NOTIFICATION) else CODEX_WORKER, c.entity_id)
            encoded = encode(c.payload)
            summary_hash = encoded.digest.hex()
            checkpoint = checkpoints[(c.projection, c.entity_id)]
            decision = decide(checkpoint, c.seq, PROJECTION_VERSION, summary_hash)
            if not decision.write and decision.reason == "idempotent" and verify_read_model:
                matches, reason = _read_model_matches(c.topic, c.doc_key, c.seq, encoded.digest)
                if not matches:
                    decision = Decision(True, reason)
            if not decision.write and decision.reason == "idempotent" and c.doc_key in rewrite:
                decision = Decision(True, "parity_repair")
            if not decision.write:
                metrics.PROJECTOR_RUNS.labels(projection=c.projection, result="skipped", reason=decision.reason).inc()
                results.setdefault(ref, []).append(ProjectionResult(c.projection, c.entity_id, c.doc_key, False, decision.reason))
                continue
            if decision.reason == "summary_hash_mismatch":
                metrics.PROJECTOR_DRIFT.labels(projection=c.projection).inc()
                log.warning("projection drift %s %s at seq %s", c.projection, c.entity_id, c.seq)
            writes.append(sink.DocumentWrite(c.topic, c.doc_key, c.seq, c.payload, c.owner))
            pending.append((ref, c.projection, c.entity_id, decision.reason, (checkpoint, c.doc_key, c.seq, summary_hash)))
        if want_events:
            for worker_id, docs in _new_worker_events(workers, checkpoints, verify_read_model, rewrite).items():
                if not docs:
                    continue
                checkpoint = checkpoints[(CODEX_WORKER_EVENT, worker_id)]
                owner = owner_string(workers[worker_id].owner_id)
                newest = max(checkpoint.last_runtime_seq, docs[-1][0].seq)
                for n, (event, doc) in enumerate(docs):
                    writes.append(sink.DocumentWrite(CODEX_WORKER_EVENTS, doc["document_id"], event.seq, doc, owner))
                    update = None
                    if n == len(docs) - 1:  # the stream's checkpoint moves to its newest event
                        update = (checkpoint, worker_event_doc_key(worker_id, newest), newest, encode(doc).digest.hex())
                    pending.append(((CODEX_WORKER, worker_id), CODEX_WORKER_EVENT, worker_id, "new_events", update))

        # Checkpoints first, the sink last: the topic-row lock that project_many takes is then held
        # for that one statement and the COMMIT only (the checkpoint rows are locked already, so
        # writing them before the documents changes nothing for anyone else).
        advanced = []
        for ref, projection, entity_id, reason, update in pending:
            if update is not None:
                _advance(*update, now)
                advanced.append(update[0])
        if advanced:
            _save_checkpoints(advanced, now)
        if before_write is not None:
            before_write()
        written = sink.project_many(writes) if writes else []
        for (ref, projection, entity_id, reason, _update), write, result in zip(pending, writes, written):
            metrics.PROJECTOR_RUNS.labels(projection=projection, result="written", reason=reason).inc()
            results.setdefault(ref, []).append(
                ProjectionResult(projection, entity_id, write.doc_key, result.written, reason, result.watermark)
            )
    present = {(RUN, i) for i in runs} | {(CODEX_WORKER, i) for i in workers}
    ordered = {ref: _in_projection_order(results.get(ref, [])) for ref in refs if ref in present}
    return BatchProjection(ordered, [ref for ref in refs if ref not in present])


_PROJECTION_ORDER = {RUN_SUMMARY: 0, RUN_NOTIFICATION: 1, CODEX_WORKER_SUMMARY: 0, CODEX_WORKER_EVENT: 1}


def _in_projection_order(results: list[ProjectionResult]) -> list[ProjectionResult]:
    """An entity's results as its single-entity projection lists them: summary first."""
    return sorted(results, key=lambda r: _PROJECTION_ORDER[r.projection])


def project_run(
    run_id: str, *, verify_read_model: bool = False, now=None, topics=None, rewrite=frozenset()
) -> list[ProjectionResult]:
    """Project a run's summary (and, once terminal, its notification). Raises ``Run.DoesNotExist``.

    ``topics`` (a set) limits which documents are considered (reprojection of one topic).
    """
    batch = project_entities([(RUN, run_id)], verify_read_model=verify_read_model, now=now, topics=topics, rewrite=rewrite)
    if batch.missing:
        raise Run.DoesNotExist(f"run {run_id} does not exist")
    return batch.results[(RUN, run_id)]


def project_codex_worker(
    worker_id: str, *, verify_read_model: bool = False, now=None, topics=None, rewrite=frozenset()
) -> list[ProjectionResult]:
    """Project a worker's summary and its events not yet projected. Raises ``CodexWorker.DoesNotExist``."""
    batch = project_entities(
        [(CODEX_WORKER, worker_id)], verify_read_model=verify_read_model, now=now, topics=topics, rewrite=rewrite
    )
    if batch.missing:
        raise CodexWorker.DoesNotExist(f"codex worker {worker_id} does not exist")
    return batch.results[(CODEX_WORKER, worker_id)]


# --- the pre-outbox path (KHALA RUNTIME_PROJECTION="after_commit"; bench/commands.py baseline) ---


def project_best_effort(entity: str, entity_id: str) -> None:
    """Project an entity at once, never raising: how the runtime projected before the outbox.

    Not durable (a process dying before this runs loses the projection until the entity's next
    write); kept only so ``bench/commands.py`` can measure the outbox against it. Failures are
    logged and counted (``khala_projection_failures_total``).
    """
    try:
        if entity == RUN:
            project_run(entity_id)
        else:
            project_codex_worker(entity_id)
    except Exception:
        metrics.PROJECTION_FAILURES.labels(entity=entity).inc()
        log.exception("projection of %s %s failed after the authority commit", entity, entity_id)

"""Parity auditor (KHALA-021): does what clients see match what the authority says?

For a sample of authority entities (runs, codex workers) the auditor re-folds the authority into
the documents the projector would write on all four v1 topics (run summary, a terminal run's
notification, worker summary, the worker's newest event documents; ``projector.projector``'s pure
builders, nothing is written) and compares each one's ``doc_version`` and hash with two surfaces:

- **read_model**: the ``sync_read_models`` row (what HTTP hydration serves);
- **journal**: the state a client reconstructs from the journal: the latest row of the doc_key
  (highest watermark; the sink never journals a lower ``doc_version`` after a higher one, so this is
  also the highest version a client applies). Pointer-mode rows carry no payload: the client
  hydrates the read model and checks it against the row's ``payload_hash``, and so does the
  auditor. A document whose latest row was pruned (read-model watermark ``<= pruned_through``)
  reaches clients through a snapshot, i.e. the read model.

Each surface can show three problems, reported under these stable names (metric labels and
report keys):

- ``khala_missing``: no document at all;
- ``lag_drift``: ``authority seq - doc_version`` is not 0 (positive: the surface is behind);
- ``hash_mismatch``: same version, different content (summary hash without ``projected_at``, or
  a pointer row whose hash does not match the payload a client would hydrate).

A mismatch seen once may be a write in flight (projection runs right after the authority commit),
so mismatching documents are checked again after ``recheck_delay`` seconds and only the ones that
persist are reported. ``mismatch_rate`` = documents with a persisting mismatch / documents sampled.

``repair(report)`` (``sync_parity_audit --repair``) re-projects the entities behind persisting
findings through ``projector.reprojection`` (checkpoint rules plus a read-model check), so a
missing or drifted document is rewritten with one new journal row and an intact one is left alone.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from django.db import connection
from prometheus_client import Counter, Gauge

from projector.payload_hash import payload_hash
from projector.models import CODEX_WORKER_EVENTS, CODEX_WORKER_SUMMARIES, NOTIFICATIONS, RUN_SUMMARIES

SURFACES = ("read_model", "journal")
REASONS = ("khala_missing", "lag_drift", "hash_mismatch")

PARITY_MISMATCH_RATE = Gauge(
    "khala_parity_mismatch_rate", "Share of the last parity cycle's sampled documents with a persisting mismatch."
)
PARITY_SAMPLED = Counter("khala_parity_sampled", "Documents sampled by the parity auditor.", ["projection"])
PARITY_MISMATCHES = Counter(
    "khala_parity_mismatches",
    "Persisting parity mismatches by surface (read_model | journal) and reason (khala_missing | lag_drift | hash_mismatch).",
    ["surface", "reason"],
)
PARITY_CYCLES = Counter("khala_parity_cycles", "Parity audit cycles by status (ok | mismatch | empty).", ["status"])
PARITY_MAX_ABS_LAG_DRIFT = Gauge("khala_parity_max_abs_lag_drift", "Largest |authority seq - doc_version| of the last cycle.")
PARITY_LAST_RUN = Gauge("khala_parity_last_run_timestamp_seconds", "Unix time at which the last parity cycle finished.")


@dataclass(frozen=True)
class ExpectedDocument:
    """What the authority says a document must be."""

    projection: str  # run_summary | run_notification | codex_worker_summary | codex_worker_events
    entity_id: str
    topic: str
    doc_key: str
    doc_version: int
    summary_hash: str  # hex sha-256 of the canonical document without projected_at


@dataclass(frozen=True)
class Finding:
    doc_key: str
    surface: str
    reason: str
    expected_version: int
    observed_version: int | None
    detail: str = ""

    @property
    def lag_drift(self) -> int | None:
        return None if self.observed_version is None else self.expected_version - self.observed_version


@dataclass
class ParityReport:
    sampled: int = 0
    findings: list[Finding] = field(default_factory=list)
    started_at: dt.datetime | None = None
    duration_seconds: float = 0.0
    # ("run" | "codex_worker", id) of every entity with a persisting finding: what --repair reprojects.
    mismatched_entities: list[tuple[str, str]] = field(default_factory=list)

    @property
    def mismatched_documents(self) -> int:
        return len({f.doc_key for f in self.findings})

    @property
    def mismatch_rate(self) -> float:
        return self.mismatched_documents / self.sampled if self.sampled else 0.0

    @property
    def status(self) -> str:
        if not self.sampled:
            return "empty"
        return "mismatch" if self.findings else "ok"

    @property
    def max_abs_lag_drift(self) -> int:
        drifts = [abs(f.lag_drift) for f in self.findings if f.reason == "lag_drift" and f.lag_drift is not None]
        return max(drifts, default=0)

    def counts(self) -> dict[str, int]:
        """``{"<surface>.<reason>": n}`` for every pair (zeros included)."""
        out = {f"{s}.{r}": 0 for s in SURFACES for r in REASONS}
        for f in self.findings:
            out[f"{f.surface}.{f.reason}"] += 1
        return out

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "sampled": self.sampled,
            "mismatched_documents": self.mismatched_documents,
            "mismatch_rate": round(self.mismatch_rate, 6),
            "max_abs_lag_drift": self.max_abs_lag_drift,
            "counts": self.counts(),
            "findings": [
                {
                    "doc_key": f.doc_key,
                    "surface": f.surface,
                    "reason": f.reason,
                    "expected_version": f.expected_version,
                    "observed_version": f.observed_version,
                    "detail": f.detail,
                }
                for f in self.findings
            ],
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def summary_hash_of(payload: dict) -> str:
    """Hex SHA-256 of the canonical summary without ``projected_at`` (the checkpoint's hash)."""
    stripped = {k: v for k, v in payload.items() if k != "projected_at"} if isinstance(payload, dict) else payload
    return payload_hash(stripped).hex()


# --- the two surfaces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadModelRow:
    doc_version: int
    payload: dict
    payload_hash: bytes
    watermark: int


@dataclass(frozen=True)
class _JournalRow:
    doc_version: int
    payload: dict | None
    payload_hash: bytes
    watermark: int


def _load_read_models(topic: str, doc_keys: list[str]) -> dict[str, _ReadModelRow]:
    from projector.models import ReadModelDocument

    rows = ReadModelDocument.objects.filter(topic=topic, doc_key__in=doc_keys).values_list(
        "doc_key", "doc_version", "payload", "payload_hash", "watermark"
    )
    return {r[0]: _ReadModelRow(r[1], r[2], bytes(r[3]), r[4]) for r in rows}


def _load_latest_journal_rows(topic: str, doc_keys: list[str]) -> dict[str, _JournalRow]:
    if connection.vendor != "postgresql":  # the embedded SQLite of `make run`: one query per key
        from projector.models import StreamEvent

        out = {}
        for key in doc_keys:
            row = StreamEvent.objects.filter(topic=topic, doc_key=key).order_by("-watermark").first()
            if row is not None:
                out[key] = _JournalRow(row.doc_version, row.payload, bytes(row.payload_hash), row.watermark)
        return out
    # One probe per doc_key on the (topic, doc_key, watermark) index, newest first.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT k.doc_key, e.doc_version, e.payload, e.payload_hash, e.watermark "
            "FROM unnest(%s::text[]) AS k(doc_key) "
            "JOIN LATERAL (SELECT doc_version, payload, payload_hash, watermark FROM sync_stream_events "
            "  WHERE topic = %s AND doc_key = k.doc_key ORDER BY watermark DESC LIMIT 1) e ON true",
            [doc_keys, topic],
        )
        rows = cursor.fetchall()
    return {r[0]: _JournalRow(r[1], _json(r[2]), bytes(r[3]), r[4]) for r in rows}


def _pruned_through(topic: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pruned_through FROM sync_topic_sequences WHERE topic = %s", [topic])
        row = cursor.fetchone()
    return row[0] if row else 0


def _json(value):
    if value is None or isinstance(value, (dict, list)):
        return value
    import json

    return json.loads(value)


def _compare(expected: ExpectedDocument, observed_version: int | None, observed_hash: str | None, surface: str, detail="") -> Finding | None:
    if observed_version is None:
        return Finding(expected.doc_key, surface, "khala_missing", expected.doc_version, None, detail)
    if observed_version != expected.doc_version:
        return Finding(expected.doc_key, surface, "lag_drift", expected.doc_version, observed_version, detail)
    if observed_hash != expected.summary_hash:
        return Finding(expected.doc_key, surface, "hash_mismatch", expected.doc_version, observed_version, detail)
    return None


def compare_documents(expected_docs: list[ExpectedDocument]) -> list[Finding]:
    """Compare each expected document with its read model and its journal reconstruction."""
    findings: list[Finding] = []
    by_topic: dict[str, list[ExpectedDocument]] = {}
    for doc in expected_docs:
        by_topic.setdefault(doc.topic, []).append(doc)
    for topic, docs in by_topic.items():
        keys = [d.doc_key for d in docs]
        read_models = _load_read_models(topic, keys)
        journal = _load_latest_journal_rows(topic, keys)
        floor = _pruned_through(topic)
        for doc in docs:
            rm = read_models.get(doc.doc_key)
            finding = _compare(doc, rm.doc_version if rm else None, summary_hash_of(rm.payload) if rm else None, "read_model")
            if finding:
                findings.append(finding)
            findings.extend(_journal_findings(doc, journal.get(doc.doc_key), rm, floor))
    return findings


def _journal_findings(doc: ExpectedDocument, row: _JournalRow | None, rm: _ReadModelRow | None, floor: int) -> list[Finding]:
    if row is None:
        if rm is not None and rm.watermark <= floor:
            # The document's last journal row was pruned: clients get it from a snapshot.
            finding = _compare(doc, rm.doc_version, summary_hash_of(rm.payload), "journal", "from snapshot (row pruned)")
        else:
            finding = Finding(doc.doc_key, "journal", "khala_missing", doc.doc_version, None,
                              "no journal row although the read model is above the retention floor" if rm else "")
        return [finding] if finding else []
    if row.payload is not None:
        if payload_hash(row.payload) != row.payload_hash:
            return [Finding(doc.doc_key, "journal", "hash_mismatch", doc.doc_version, row.doc_version,
                            "payload_hash does not match the journaled payload")]
        finding = _compare(doc, row.doc_version, summary_hash_of(row.payload), "journal")
        return [finding] if finding else []
    # Pointer mode: a client hydrates the read model and verifies it against the row's hash.
    if rm is None:
        return [Finding(doc.doc_key, "journal", "khala_missing", doc.doc_version, row.doc_version,
                        "pointer-mode row but nothing to hydrate")]
    if rm.doc_version == row.doc_version and rm.payload_hash != row.payload_hash:
        return [Finding(doc.doc_key, "journal", "hash_mismatch", doc.doc_version, row.doc_version,
                        "pointer-mode row hash differs from the hydrated read model")]
    finding = _compare(doc, row.doc_version, summary_hash_of(rm.payload), "journal", "pointer mode (hydrated)")
    return [finding] if finding else []


# --- sampling the authority ---------------------------------------------------------------------


def sample_entity_ids(table: str, sample: int, rng: random.Random) -> list[str]:
    """Half the most recently updated entities of ``table``, half a random sample of the rest.

    Recent entities are where projection lag shows; the random half catches old documents that
    were corrupted or lost. The random half uses ``TABLESAMPLE BERNOULLI`` sized from the
    planner's row estimate, so it never sorts or counts the table.
    """
    if sample <= 0:
        return []
    recent_n = (sample + 1) // 2
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} ORDER BY updated_at DESC, id LIMIT %s", [recent_n])
        ids = [r[0] for r in cursor.fetchall()]
        remaining = sample - len(ids)
        if remaining > 0 and len(ids) == recent_n and connection.vendor != "postgresql":
            cursor.execute(f"SELECT id FROM {table} ORDER BY random() LIMIT %s", [sample])  # tiny dev database
            ids.extend(r[0] for r in cursor.fetchall() if r[0] not in ids)
            ids = ids[:sample]
        elif remaining > 0 and len(ids) == recent_n:
            cursor.execute("SELECT GREATEST(reltuples, 1)::bigint FROM pg_class WHERE oid = %s::regclass", [table])
            estimate = cursor.fetchone()[0]
            percent = min(100.0, 100.0 * 3 * remaining / max(estimate, 1))
            cursor.execute(
                f"SELECT id FROM {table} TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) WHERE NOT (id = ANY(%s)) LIMIT %s",
                [percent, rng.randrange(2**31), ids, remaining],
            )
            ids.extend(r[0] for r in cursor.fetchall())
    return ids


AuthorityFold = Callable[[int, random.Random], list[ExpectedDocument]]


# Worker events are one document each; the audit folds each sampled worker's newest ones.
EVENTS_PER_WORKER = 50


def expected_summaries(run_ids: list[str], worker_ids: list[str]) -> list[ExpectedDocument]:
    """Fold the given runs and workers into every document of the four v1 topics they imply (run
    summary, the notification of a terminal run, worker summary, the worker's newest
    ``EVENTS_PER_WORKER`` event documents) with the projector's own pure builders; write nothing."""
    from django.db.models import Count, Max

    from projector import projector as folds
    from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent

    docs: list[ExpectedDocument] = []
    for model, event_model, fk, ids, build, doc_key, projection, topic in (
        (Run, RunEvent, "run_id", run_ids, folds.run_summary, folds.run_doc_key, folds.RUN_SUMMARY, RUN_SUMMARIES),
        (CodexWorker, CodexWorkerEvent, "worker_id", worker_ids, folds.worker_summary, folds.worker_doc_key,
         folds.CODEX_WORKER_SUMMARY, CODEX_WORKER_SUMMARIES),
    ):
        if not ids:
            continue
        entities = {e.id: e for e in model.objects.filter(id__in=ids)}
        stats = {
            row[fk]: row
            for row in event_model.objects.filter(**{f"{fk}__in": ids}).values(fk).annotate(n=Count("id"), top=Max("seq"))
        }
        latest = {}
        if stats:
            from django.db.models import Q

            match = Q()
            for entity_id, row in stats.items():
                match |= Q(**{fk: entity_id, "seq": row["top"]})
            latest = {getattr(e, fk): e for e in event_model.objects.filter(match)}
        for entity_id, entity in entities.items():
            count = stats.get(entity_id, {}).get("n", 0)
            payload = build(entity, count, latest.get(entity_id))
            docs.append(
                ExpectedDocument(projection, entity_id, topic, doc_key(entity_id), entity.latest_seq, summary_hash_of(payload))
            )
            if model is Run and entity.is_terminal:
                docs.append(ExpectedDocument(
                    folds.RUN_NOTIFICATION, entity_id, NOTIFICATIONS, folds.notification_doc_key(entity_id),
                    entity.latest_seq, summary_hash_of(folds.run_notification(entity)),
                ))
            if model is CodexWorker:
                newest = CodexWorkerEvent.objects.filter(worker_id=entity_id).order_by("-seq")[:EVENTS_PER_WORKER]
                for event in newest:
                    docs.append(ExpectedDocument(
                        folds.CODEX_WORKER_EVENT, entity_id, CODEX_WORKER_EVENTS,
                        folds.worker_event_doc_key(entity_id, event.seq), event.seq,
                        summary_hash_of(folds.worker_event_document(event)),
                    ))
    return docs


def authority_documents(sample: int, rng: random.Random) -> list[ExpectedDocument]:
    """Sample runs and codex workers (about half each) and re-fold them."""
    run_ids = sample_entity_ids("runtime_runs", (sample + 1) // 2, rng)
    worker_ids = sample_entity_ids("runtime_codex_workers", sample - len(run_ids), rng)
    if len(run_ids) + len(worker_ids) < sample:  # few workers: give their share to runs
        more = sample_entity_ids("runtime_runs", sample - len(worker_ids), rng)
        run_ids = list(dict.fromkeys([*run_ids, *more]))
    return expected_summaries(run_ids, worker_ids)


RUN_TOPICS = (RUN_SUMMARIES, NOTIFICATIONS)


def entity_of(doc: ExpectedDocument) -> tuple[str, str]:
    """``("run" | "codex_worker", id)``: the authority entity a document is folded from."""
    return ("run" if doc.topic in RUN_TOPICS else "codex_worker", doc.entity_id)


def refold(expected: list[ExpectedDocument]) -> list[ExpectedDocument]:
    """Fold the same entities again (used to confirm a suspected mismatch)."""
    keys = {d.doc_key for d in expected}
    entities = {entity_of(d) for d in expected}
    docs = expected_summaries(
        sorted(i for e, i in entities if e == "run"), sorted(i for e, i in entities if e == "codex_worker")
    )
    return [d for d in docs if d.doc_key in keys]


authority_documents.refold = refold


def run_audit(
    sample: int = 200,
    *,
    rng: random.Random | None = None,
    fold: AuthorityFold | None = None,
    recheck_delay: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    record_metrics: bool = True,
) -> ParityReport:
    """One audit cycle; updates the ``khala_parity_*`` metrics unless ``record_metrics`` is False."""
    if sample < 0:
        raise ValueError("sample must be >= 0")
    rng = rng or random.Random()
    fold = fold or authority_documents
    started = clock()
    report = ParityReport(started_at=dt.datetime.fromtimestamp(started, tz=dt.timezone.utc))
    expected = fold(sample, rng)
    report.sampled = len(expected)
    findings = compare_documents(expected)
    if findings and recheck_delay > 0:
        # Re-fold and compare only the suspects: a write in flight has landed by now.
        sleep(recheck_delay)
        suspects = {f.doc_key for f in findings}
        refold = {d.doc_key: d for d in fold_subset(fold, expected, suspects, rng)}
        findings = compare_documents(list(refold.values()))
    report.findings = findings
    by_key = {d.doc_key: d for d in expected}
    report.mismatched_entities = sorted({entity_of(by_key[f.doc_key]) for f in findings if f.doc_key in by_key})
    report.duration_seconds = clock() - started
    if record_metrics:
        _record(report, expected, clock())
    return report


def fold_subset(fold: AuthorityFold, expected: list[ExpectedDocument], doc_keys: set[str], rng) -> list[ExpectedDocument]:
    """The expected documents of ``doc_keys``, folded again when the fold knows how (``fold.refold``)."""
    suspects = [d for d in expected if d.doc_key in doc_keys]
    refold_fn = getattr(fold, "refold", None)
    return refold_fn(suspects) if refold_fn is not None else suspects


def _record(report: ParityReport, expected: list[ExpectedDocument], now: float) -> None:
    for doc in expected:
        PARITY_SAMPLED.labels(doc.projection).inc()
    for finding in report.findings:
        PARITY_MISMATCHES.labels(finding.surface, finding.reason).inc()
    PARITY_CYCLES.labels(report.status).inc()
    PARITY_MISMATCH_RATE.set(report.mismatch_rate)
    PARITY_MAX_ABS_LAG_DRIFT.set(report.max_abs_lag_drift)
    PARITY_LAST_RUN.set(now)


def audit_entities(entities: list[tuple[str, str]]) -> ParityReport:
    """Compare every document of the given entities now (no sampling, no recheck, no metrics)."""
    report = ParityReport(started_at=dt.datetime.now(dt.timezone.utc))
    started = time.time()
    expected = expected_summaries(
        sorted(i for e, i in entities if e == "run"), sorted(i for e, i in entities if e == "codex_worker")
    )
    report.sampled = len(expected)
    report.findings = compare_documents(expected)
    by_key = {d.doc_key: d for d in expected}
    report.mismatched_entities = sorted({entity_of(by_key[f.doc_key]) for f in report.findings})
    report.duration_seconds = time.time() - started
    return report


def repair(report: ParityReport):
    """Re-project every entity with a persisting finding; returns ``reprojection.Progress``."""
    from projector.reprojection import reproject

    return reproject(
        run_ids=[i for e, i in report.mismatched_entities if e == "run"],
        worker_ids=[i for e, i in report.mismatched_entities if e == "codex_worker"],
        # A document missing from (or stale in) the journal while its read model is intact is
        # invisible to the read-model check of reprojection: name it, so it is journaled again.
        rewrite_doc_keys=frozenset(f.doc_key for f in report.findings if f.surface == "journal"),
    )

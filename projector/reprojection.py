"""Reprojection (KHALA-010): rebuild read models from the authority, idempotently.

The runtime's event log is the truth; the journal is never repaired by hand: documents are
re-projected and the fix travels as new journal rows, so clients converge through the lane they
already follow.

Reprojection does not delete checkpoints and append a row per entity (that would wake every
client for documents that did not change): every entity goes through the normal checkpoint rules plus a check of the stored read-model row
(``verify_read_model=True``). A document is rewritten, with exactly one new journal row, only if
its authority changed, the projection version changed, the checkpoint disagrees, or its read-model
row is missing or differs. Re-running on unchanged authority appends nothing.

Each entity is projected in its own transaction; one failing entity is reported and counted, and
the rest continue.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from projector import metrics
from projector.models import CODEX_WORKER_EVENTS, CODEX_WORKER_SUMMARIES, NOTIFICATIONS, RUN_SUMMARIES
from projector.projector import ProjectionResult, project_codex_worker, project_run
from runtime.models import CodexWorker, Run

log = logging.getLogger(__name__)

RUN_TOPICS = {RUN_SUMMARIES, NOTIFICATIONS}
WORKER_TOPICS = {CODEX_WORKER_SUMMARIES, CODEX_WORKER_EVENTS}
TOPICS = RUN_TOPICS | WORKER_TOPICS


@dataclass
class Progress:
    total: int
    done: int = 0
    written_documents: int = 0
    skipped_documents: int = 0
    failed_entities: list[tuple[str, str, str]] = field(default_factory=list)  # (scope, id, error)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _entities(run_ids, worker_ids, all_entities: bool, topics) -> tuple[int, Iterable[tuple[str, str]]]:
    want_runs = topics is None or bool(topics & RUN_TOPICS)
    want_workers = topics is None or bool(topics & WORKER_TOPICS)
    if all_entities:
        runs = Run.objects.order_by("id").values_list("id", flat=True) if want_runs else Run.objects.none()
        workers = (
            CodexWorker.objects.order_by("id").values_list("id", flat=True)
            if want_workers
            else CodexWorker.objects.none()
        )
        return runs.count() + workers.count(), _iter_all(runs, workers)
    pairs = [("run", i) for i in run_ids or () if want_runs] + [
        ("codex_worker", i) for i in worker_ids or () if want_workers
    ]
    return len(pairs), pairs


def _iter_all(runs, workers):
    for run_id in runs.iterator(chunk_size=500):
        yield "run", run_id
    for worker_id in workers.iterator(chunk_size=500):
        yield "codex_worker", worker_id


def reproject(
    *,
    run_ids: Iterable[str] | None = None,
    worker_ids: Iterable[str] | None = None,
    all_entities: bool = False,
    topics: set[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: int = 100,
    now=None,
    rewrite_doc_keys=frozenset(),
) -> Progress:
    """Re-project the given entities (or all); returns the counts. Unknown ids count as failures.

    ``rewrite_doc_keys``: documents to write even if read model and checkpoint look right (the
    parity repair of a document missing from the journal only)."""
    if topics is not None and not topics <= TOPICS:
        raise ValueError(f"unknown topic(s) {sorted(topics - TOPICS)}; reprojection knows {sorted(TOPICS)}")
    total, entities = _entities(run_ids, worker_ids, all_entities, topics)
    progress = Progress(total=total)
    for scope, entity_id in entities:
        started = time.monotonic()
        try:
            if scope == "run":
                results: list[ProjectionResult] = project_run(
                    entity_id, verify_read_model=True, now=now, topics=topics, rewrite=rewrite_doc_keys
                )
            else:
                results = project_codex_worker(
                    entity_id, verify_read_model=True, now=now, topics=topics, rewrite=rewrite_doc_keys
                )
        except (Run.DoesNotExist, CodexWorker.DoesNotExist):
            progress.failed_entities.append((scope, entity_id, "not_found"))
            metrics.REPROJECTIONS.labels(scope=scope, result="not_found").inc()
        except Exception as exc:
            log.exception("reprojection of %s %s failed", scope, entity_id)
            progress.failed_entities.append((scope, entity_id, type(exc).__name__))
            metrics.REPROJECTIONS.labels(scope=scope, result="error").inc()
        else:
            written = sum(1 for r in results if r.written)
            progress.written_documents += written
            progress.skipped_documents += len(results) - written
            metrics.REPROJECTIONS.labels(scope=scope, result="written" if written else "unchanged").inc()
        metrics.REPROJECTION_DURATION.labels(scope=scope).observe(time.monotonic() - started)
        progress.done += 1
        if on_progress and (progress.done % progress_every == 0 or progress.done == progress.total):
            on_progress(progress)
    return progress

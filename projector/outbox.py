"""The projection outbox: every committed authority change reaches the read models and the journal.

Design (the argument is in docs/sync/SCHEMA.md, "Projection outbox"): an append-only table
``khala_projection_outbox``, one row per authority change, inserted in the SAME transaction as the
change: on PostgreSQL by a trigger on the authority's tables, in the writing statement itself
(migration ``runtime/0003_projection_intent_triggers``), elsewhere by ``runtime.commands`` through
``record_change``. No commit can exist without its projection intent, whatever happens to the
process afterwards. Two alternatives were rejected:

- a dirty mark on the entity row: a worker holding the mark's row lock would block the next
  authority write of that entity (the writer waits on the drainer), and clearing the mark needs a
  compare-and-clear against a concurrent re-mark;
- comparing each entity's ``latest_seq`` with its projection checkpoint: needs a scan of all
  entities (or a new index over both tables) to find work, and has no place for attempts, errors
  or quarantine.

An append-only row costs one INSERT per change (inside the writer's own statement, by trigger),
never blocks a writer, and carries the retry bookkeeping. The entity's state is folded when the
entry is drained (not when it was recorded), so several entries of one entity in a batch become
one fold.

Draining (``drain_once``, the body of ``manage.py projector_worker``), in ONE transaction:

1. claim due entries ``SELECT … FOR UPDATE SKIP LOCKED`` (several workers on several hosts never
   take the same entry; a claimed entry is invisible to them until the claim ends);
2. fold their entities and write every document in one ``sink.project_many`` call
   (``projector.project_entities``: one topic-row lock per batch instead of one per document);
3. delete the entries. They disappear with exactly the commit that wrote their documents; a
   crash anywhere before COMMIT rolls back documents and deletion together, and the entries are
   claimed again.

The fast path (``project_after_commit``, in the writer's own process right after its COMMIT)
claims the entity's entries the same way; whoever holds an entry projects it, the other skips it.
Two entries of ONE entity may still be folded concurrently (one by the fast path, one by a
worker): the projection checkpoint row serialises them and the second fold is a no-op (see
``projector.project_entities``), and the sink never journals an older ``doc_version`` after a
newer one. So no document is written twice and none regresses.

Failures: a batch that raises is rolled back and its entities are retried one by one, so one
poison entity never holds back the others of its topic. A failing entity's entries get
``attempts + 1`` and ``available_at`` pushed out by a capped exponential backoff; after
``KHALA["OUTBOX_MAX_ATTEMPTS"]`` attempts, or at once when a document was refused (``SinkError``,
``PayloadHashError``: retrying cannot change a deterministic refusal), they are quarantined with the
error, kept and retryable in the admin. Entries naming an unknown entity kind or an entity the
authority does not have are refused: quarantined at once and logged with the entry id.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from khala_project.conf import khala_setting
from projector import lock_timeouts, metrics, outbox_draining
from projector.models import OutboxEntity, ProjectionOutboxEntry
from projector.payload_hash import PayloadHashError
from projector.sink import SinkError

log = logging.getLogger(__name__)

# The LISTEN/NOTIFY channel that wakes idle workers (``projector.outbox_worker``).
NOTIFY_CHANNEL = "khala_projection_outbox"
MAX_ERROR_CHARS = 2000

Clock = Callable[[], dt.datetime]


def record_change(
    entity: str, entity_id: str, authority_seq: int, *, wake_workers: bool = True, now: dt.datetime | None = None
) -> int:
    """Record "``entity`` needs projecting" in the caller's open transaction; returns the entry id.

    On PostgreSQL the authority's own tables record their changes by trigger (migration
    ``runtime/0003_projection_intent_triggers``); this is how ``runtime.commands`` records them
    elsewhere (SQLite), and how a tool or test records an entry by hand. The row commits or rolls
    back with the caller's transaction. With ``wake_workers``, the workers are woken after the
    COMMIT (``notify_workers``).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_change must run inside the authority transaction")
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {ProjectionOutboxEntry._meta.db_table} "
            "(entity, entity_id, authority_seq, created_at, available_at, attempts, last_error) "
            "VALUES (%s, %s, %s, %s, %s, 0, '') RETURNING id",
            [entity, entity_id, authority_seq, now, now],
        )
        entry_id = cursor.fetchone()[0]
    if wake_workers:
        transaction.on_commit(notify_workers)
    return entry_id


class _WorkerWaker:
    """Sends ``NOTIFY khala_projection_outbox`` from one background thread per process, unless a
    worker is draining anyway (``projector.outbox_draining``).

    Why a thread: a NOTIFY is a transaction of its own with a commit record to flush, and
    PostgreSQL serialises the commits of notifying transactions on one lock. Sent inline after
    every command it cost each writer a second, serialised commit; sent inside the authority
    transaction it would serialise every authority commit. Here a commit only sets a flag; the
    thread clears the flag, then sends one statement that NOTIFYs unless the draining flag is up,
    so every commit is followed by a NOTIFY (or a look at the flag) that started after it, and
    commits that land meanwhile share the next one.

    When the statement finds the flag up, the process trusts that for
    ``outbox_draining.LEASE_SECONDS``: commits until then neither wake the thread nor send
    anything (the draining worker polls, and keeps polling for longer than that after it lowers
    the flag). So under a steady load a writer process sends a few statements a second, not one
    per command. A NOTIFY that never arrives (this process died) costs at most one poll interval
    of the workers.
    """

    IDLE_CLOSE_SECONDS = 0.5

    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self._cond = threading.Condition()
        self._pending = False
        self._thread: threading.Thread | None = None
        self._pid = None
        self.monotonic = monotonic
        self.draining_until = 0.0  # ``monotonic()`` time until which a seen draining flag is trusted

    def request(self) -> None:
        if self.monotonic() < self.draining_until:
            return
        with self._cond:
            self._pending = True
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()  # a forked child starts its own thread
                self._thread = threading.Thread(target=self._run, name="khala-outbox-notify", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._cond.wait_for(lambda: self._pending, self.IDLE_CLOSE_SECONDS):
                    connection.close()  # idle: hold no database connection between bursts
                    self._cond.wait_for(lambda: self._pending)
                self._pending = False
            if self.monotonic() < self.draining_until:
                continue  # requested before the flag was seen: that worker's polls cover it
            try:
                with connection.cursor() as cursor:
                    cursor.execute(outbox_draining.NOTIFY_UNLESS_DRAINING, [NOTIFY_CHANNEL])
                    notified = cursor.fetchone()[0]
                if not notified:
                    self.draining_until = self.monotonic() + outbox_draining.LEASE_SECONDS
            except Exception:  # a wake-up is only a hint; the workers poll
                log.warning("could not NOTIFY %s", NOTIFY_CHANNEL, exc_info=True)
                connection.close()


_waker = _WorkerWaker()


def notify_workers() -> None:
    """Wake idle ``projector_worker`` processes after a COMMIT (``on_commit``; returns at once).

    The NOTIFY is sent after the authority COMMIT by a background thread (``_WorkerWaker``),
    never inside the authority transaction. No-op off PostgreSQL (the in-process drain polls).
    """
    if connection.vendor == "postgresql":
        _waker.request()


@dataclass
class DrainResult:
    claimed: int = 0
    projected: int = 0  # entries removed with their documents
    documents: int = 0  # documents written (journal rows appended)
    retried: int = 0  # entries backed off after a failure
    quarantined: int = 0  # entries quarantined (failures and refusals)

    def add(self, other: "DrainResult") -> None:
        for name in ("claimed", "projected", "documents", "retried", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _default_project(refs, *, before_write=None):
    from projector.projector import project_entities

    # No savepoint: the drain's transaction rolls back as a whole when this raises.
    return project_entities(refs, before_write=before_write, savepoint=False)


def retry_delay(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: ``BASE * 2**(attempts-1)``, capped at ``MAX``."""
    base = float(khala_setting("OUTBOX_RETRY_BASE_SECONDS"))
    cap = float(khala_setting("OUTBOX_RETRY_MAX_SECONDS"))
    return min(cap, base * 2 ** min(max(attempts - 1, 0), 30))


def _due(now: dt.datetime):
    return ProjectionOutboxEntry.objects.select_for_update(skip_locked=True).filter(
        quarantined_at__isnull=True, available_at__lte=now
    )


def _claim_due(now: dt.datetime, batch_size: int) -> list[ProjectionOutboxEntry]:
    """Claim up to ``batch_size`` due entries, oldest first (``SELECT … FOR UPDATE SKIP LOCKED``).

    On PostgreSQL one raw statement also answers whether each entry's entity exists
    (``entity_present``), which ``_project_claimed`` would otherwise ask in a second round trip:
    this runs once per batch, and the ORM query cost more to build than to run.
    """
    if connection.vendor != "postgresql":
        return list(_due(now).order_by("available_at", "id")[:batch_size])
    from runtime.models import CodexWorker, Run

    table = ProjectionOutboxEntry._meta.db_table
    return list(
        ProjectionOutboxEntry.objects.raw(
            f"SELECT o.*, (EXISTS (SELECT 1 FROM {Run._meta.db_table} AS r WHERE o.entity = %s AND r.id = o.entity_id)"
            f" OR EXISTS (SELECT 1 FROM {CodexWorker._meta.db_table} AS w WHERE o.entity = %s AND w.id = o.entity_id))"
            f" AS entity_present FROM {table} AS o"
            " WHERE o.quarantined_at IS NULL AND o.available_at <= %s"
            " ORDER BY o.available_at, o.id LIMIT %s FOR UPDATE OF o SKIP LOCKED",
            [OutboxEntity.RUN.value, OutboxEntity.CODEX_WORKER.value, now, batch_size],
        )
    )


def _refuse(entries: list[ProjectionOutboxEntry], reason: str, message: str, now: dt.datetime) -> None:
    """Quarantine entries that can never be projected as they are (in the caller's transaction)."""
    ids = [e.id for e in entries]
    ProjectionOutboxEntry.objects.filter(id__in=ids).update(
        quarantined_at=now, last_error=f"{reason}: {message}"[:MAX_ERROR_CHARS]
    )
    metrics.OUTBOX_REFUSED.labels(reason=reason).inc(len(ids))
    for entry in entries:
        log.error("outbox entry %s refused (%s): %s %r", entry.id, reason, entry.entity, entry.entity_id)


def _project_claimed(
    entries: list[ProjectionOutboxEntry], project, now: dt.datetime, path: str
) -> DrainResult:
    """Inside the claiming transaction: refuse what cannot be projected, fold the rest, and delete
    its entries in that same transaction (just before the sink call, so the topic-row lock is
    held for the sink's statement and the COMMIT only)."""
    result = DrainResult(claimed=len(entries))
    known = {e.value for e in OutboxEntity}
    unknown = [e for e in entries if e.entity not in known]
    if unknown:
        _refuse(unknown, "unknown_entity", f"entity kind must be one of {sorted(known)}", now)
        result.quarantined += len(unknown)
    entries = [e for e in entries if e.entity in known]
    if not entries:
        return result
    if all(hasattr(e, "entity_present") for e in entries):  # answered by the claim (``_claim_due``)
        present = {(e.entity, e.entity_id) for e in entries if e.entity_present}
    else:
        present = _existing_entities({(e.entity, e.entity_id) for e in entries})
    gone = [e for e in entries if (e.entity, e.entity_id) not in present]
    if gone:
        _refuse(gone, "entity_not_found", "the authority has no such entity", now)
        result.quarantined += len(gone)
        entries = [e for e in entries if (e.entity, e.entity_id) in present]
    if not entries:
        return result

    def remove_entries():
        ids = [e.id for e in entries]
        if connection.vendor == "postgresql":  # one statement, no ORM query to build (every batch)
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {ProjectionOutboxEntry._meta.db_table} WHERE id = ANY(%s)", [ids])
        else:
            ProjectionOutboxEntry.objects.filter(id__in=ids).delete()

    batch = project([(e.entity, e.entity_id) for e in entries], before_write=remove_entries)
    if batch.missing:  # deleted since the check above: nothing to project, the entries go too
        log.warning("outbox entries %s: entities deleted while projecting: %s", [e.id for e in entries], batch.missing)
    result.projected = len(entries)
    result.documents = batch.written_documents
    metrics.OUTBOX_PROJECTED.labels(path=path).inc(len(entries))
    return result


def _existing_entities(refs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    from runtime.models import CodexWorker, Run

    runs = [i for e, i in refs if e == OutboxEntity.RUN]
    workers = [i for e, i in refs if e == OutboxEntity.CODEX_WORKER]
    found = {(OutboxEntity.RUN.value, i) for i in Run.objects.filter(id__in=runs).values_list("id", flat=True)} if runs else set()
    if workers:
        found |= {(OutboxEntity.CODEX_WORKER.value, i) for i in CodexWorker.objects.filter(id__in=workers).values_list("id", flat=True)}
    return found


# Refusals that no retry can change: the same authority state folds to the same refused document.
DETERMINISTIC_ERRORS = (SinkError, PayloadHashError)


def _describe(exc: BaseException) -> str:
    """The error an entry keeps: the sink's stable code first when there is one."""
    if isinstance(exc, SinkError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, PayloadHashError):
        return f"invalid_payload: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _record_failure(ids: list[int], exc: BaseException, now: dt.datetime) -> DrainResult:
    """In its own transaction: count an attempt on each entry, back it off or quarantine it."""
    result = DrainResult()
    deterministic = isinstance(exc, DETERMINISTIC_ERRORS)
    max_attempts = int(khala_setting("OUTBOX_MAX_ATTEMPTS"))
    error = _describe(exc)[:MAX_ERROR_CHARS]
    with transaction.atomic():
        for entry in ProjectionOutboxEntry.objects.select_for_update(skip_locked=True).filter(
            id__in=ids, quarantined_at__isnull=True
        ):
            entry.attempts += 1
            entry.last_error = error
            if deterministic or entry.attempts >= max_attempts:
                entry.quarantined_at = now
                result.quarantined += 1
                metrics.OUTBOX_FAILURES.labels(outcome="quarantined").inc()
                log.error(
                    "outbox entry %s (%s %s) quarantined after %s attempt(s): %s",
                    entry.id, entry.entity, entry.entity_id, entry.attempts, error,
                )
            else:
                entry.available_at = now + dt.timedelta(seconds=retry_delay(entry.attempts))
                result.retried += 1
                metrics.OUTBOX_FAILURES.labels(outcome="retry").inc()
                log.warning(
                    "outbox entry %s (%s %s) failed (attempt %s), retry at %s: %s",
                    entry.id, entry.entity, entry.entity_id, entry.attempts, entry.available_at.isoformat(), error,
                )
            entry.save(update_fields=["attempts", "last_error", "available_at", "quarantined_at"])
    return result


class _LockBusy(Exception):
    """The fast path met a lock held by another projector: the entry is left to the workers."""


def _drain_entity(
    entity: str, entity_id: str, ids: list[int] | None, project, now: dt.datetime, path: str, *, lock_timeout_ms: int = 0
) -> DrainResult:
    """Claim and project the due entries of one entity (all of them, or only ``ids``) in one
    transaction; a failure is recorded on exactly those entries. With ``lock_timeout_ms`` (the fast
    path) a lock that stays busy longer raises ``_LockBusy`` instead, recording nothing."""
    claimed: list[int] = []
    started = time.perf_counter()
    try:
        with transaction.atomic():
            if lock_timeout_ms and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    lock_timeouts.set_local(cursor, lock_timeout_ms)
            query = _due(now).filter(entity=entity, entity_id=entity_id)
            if ids is not None:
                query = query.filter(id__in=ids)
            entries = list(query.order_by("id"))
            claimed = [e.id for e in entries]
            if not entries:
                return DrainResult()
            result = _project_claimed(entries, project, now, path)
    except Exception as exc:
        if lock_timeout_ms and lock_timeouts.is_lock_timeout(exc):
            raise _LockBusy() from exc
        if not claimed:
            raise
        failed = _record_failure(claimed, exc, now)
        failed.claimed = len(claimed)
        return failed
    finally:
        metrics.OUTBOX_BATCH_DURATION.observe(time.perf_counter() - started)
    return result


def drain_once(
    *, batch_size: int | None = None, project=None, clock: Clock = timezone.now
) -> DrainResult:
    """Claim up to ``batch_size`` due entries and project them in one transaction (see the module
    docstring). If that transaction fails, its entities are retried one by one, each in its own
    transaction, so only the failing ones are backed off. Database errors that hit the claim itself
    propagate (the caller waits and tries again)."""
    batch_size = batch_size or int(khala_setting("OUTBOX_BATCH_SIZE"))
    project = project or _default_project
    now = clock()
    claimed: list[ProjectionOutboxEntry] = []
    started = time.perf_counter()
    try:
        with transaction.atomic():
            claimed = _claim_due(now, batch_size)
            if not claimed:
                return DrainResult()
            result = _project_claimed(claimed, project, now, "worker")
        metrics.OUTBOX_BATCH_DURATION.observe(time.perf_counter() - started)
        return result
    except Exception as exc:
        if not claimed:
            raise
        log.warning("outbox batch of %s entries failed (%s); retrying its entities one by one", len(claimed), _describe(exc))
    # The batch rolled back and released its claims; other drainers may take some meanwhile
    # (SKIP LOCKED again), which is fine: each entity below is claimed afresh.
    result = DrainResult()
    groups: dict[tuple[str, str], list[int]] = {}
    for entry in claimed:
        groups.setdefault((entry.entity, entry.entity_id), []).append(entry.id)
    for (entity, entity_id), ids in groups.items():
        result.add(_drain_entity(entity, entity_id, ids, project, now, "worker"))
    return result


def project_after_commit(entity: str, entity_id: str, *, project=None, clock: Clock = timezone.now) -> None:
    """The fast path, run by ``transaction.on_commit`` in the writer's process: never raises.

    Projects the entity's due entries at once if no worker holds them (SKIP LOCKED); a failure is
    recorded on the entries (backoff, then quarantine) and a worker takes them from there.

    It gives way under contention: if a checkpoint or topic-row lock stays busy longer than
    ``KHALA["OUTBOX_FAST_PATH_LOCK_TIMEOUT_MS"]`` (another writer's fast path or a worker batch
    holds it), the transaction is abandoned, the entry stays and the workers are woken. So on a
    quiet topic a change is projected in the writer's own process at once, and on a busy one the
    writers stop queueing one commit each behind the topic lock and the workers group-commit.
    """
    try:
        result = _drain_entity(
            entity, entity_id, None, project or _default_project, clock(), "fast_path",
            lock_timeout_ms=int(khala_setting("OUTBOX_FAST_PATH_LOCK_TIMEOUT_MS")),
        )
        if result.retried or result.quarantined:
            metrics.PROJECTION_FAILURES.labels(entity=entity).inc()
    except _LockBusy:
        metrics.OUTBOX_FAST_PATH_YIELDED.inc()
        notify_workers()
    except Exception:
        metrics.PROJECTION_FAILURES.labels(entity=entity).inc()
        log.exception("fast-path projection of %s %s failed; the outbox entry stays for the workers", entity, entity_id)
        notify_workers()


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    quarantined: int
    oldest_pending_age_seconds: float


def stats(*, clock: Clock = timezone.now) -> OutboxStats:
    """Depths and the oldest pending entry's age; also sets the ``khala_outbox_*`` gauges.

    One aggregate over the outbox, which is small when healthy (entries live for milliseconds);
    when it is not small, that is exactly what the gauges are there to show.
    """
    row = ProjectionOutboxEntry.objects.aggregate(
        pending=Count("id", filter=Q(quarantined_at__isnull=True)),
        quarantined=Count("id", filter=Q(quarantined_at__isnull=False)),
        oldest=Min("created_at", filter=Q(quarantined_at__isnull=True)),
    )
    age = max(0.0, (clock() - row["oldest"]).total_seconds()) if row["oldest"] else 0.0
    metrics.OUTBOX_PENDING.set(row["pending"])
    metrics.OUTBOX_QUARANTINED.set(row["quarantined"])
    metrics.OUTBOX_OLDEST_PENDING_AGE.set(age)
    return OutboxStats(row["pending"], row["quarantined"], age)


def retry_quarantined(ids, *, clock: Clock = timezone.now) -> int:
    """Give quarantined entries a fresh start (the admin's "retry" action); returns how many."""
    now = clock()
    count = ProjectionOutboxEntry.objects.filter(id__in=list(ids), quarantined_at__isnull=False).update(
        quarantined_at=None, attempts=0, available_at=now
    )
    if count:
        transaction.on_commit(notify_workers)
    return count

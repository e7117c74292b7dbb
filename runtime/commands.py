"""Authority commands: the only code that writes runs, codex workers and their events.

Each command is one short transaction. ``seq`` is allocated under a row lock on the parent
(``SELECT … FOR UPDATE``): concurrent appends to one run queue on that lock, so seqs are
unique and gap-free; the (parent, seq) unique constraint is the backstop.

Projection is durable: each change is recorded in the projection outbox INSIDE its transaction,
so no change can commit without its projection intent. On PostgreSQL a trigger on the runs and
workers tables records it in the very statement that writes the entity (migration
``runtime/0003_projection_intent_triggers``: no round trip of its own, and writes made outside
these commands are covered too); elsewhere (SQLite) the command calls
``projector.outbox.record_change``. ``manage.py projector_worker`` drains the outbox; the fast path
(``KHALA["OUTBOX_FAST_PATH"]``) projects the entity from this process right after COMMIT when no
worker holds its entry. Either way the authority write never fails because projection did.
``KHALA["RUNTIME_PROJECTION"]`` keeps two non-durable modes for the benchmarks only
(``khala_project.conf``).
"""

from django.db import connection, transaction
from django.utils import timezone

from khala_project.api_errors import CodedError
from khala_project.conf import khala_setting
from runtime.models import (
    TERMINAL_RUN_STATUSES,
    CodexWorker,
    CodexWorkerEvent,
    Run,
    RunEvent,
    RunStatus,
    WorkerStatus,
)

# Run events with a meaning for the run's status; any other well-formed type is just recorded.
RUN_STARTED = "run.started"
RUN_TERMINAL_EVENTS = {
    "run.completed": RunStatus.COMPLETED,
    "run.failed": RunStatus.FAILED,
    "run.canceled": RunStatus.CANCELED,
}
WORKER_HEARTBEAT = "worker.heartbeat"
WORKER_STATUS = "worker.status"  # payload {"status": one of WorkerStatus}
WORKER_STOPPED_STATUSES = {WorkerStatus.STOPPED, WorkerStatus.FAILED}


class CommandError(CodedError):
    """A refused command; ``code`` is stable and ``http_status`` is what the API answers."""

    def __init__(self, code: str, message: str, http_status: int = 409):
        super().__init__(code, message, http_status)


def _record_projection_intent(entity: str, entity_id: str, authority_seq: int) -> None:
    """Called inside the command's transaction, after its authority writes."""
    mode = khala_setting("RUNTIME_PROJECTION")
    if mode == "outbox":
        from projector import outbox

        fast_path = khala_setting("OUTBOX_FAST_PATH")
        if connection.vendor != "postgresql":  # PostgreSQL's trigger has recorded it already
            outbox.record_change(entity, entity_id, authority_seq, wake_workers=False)
        if fast_path:
            transaction.on_commit(lambda: outbox.project_after_commit(entity, entity_id))
        else:  # the workers are woken after COMMIT (unless one is draining anyway)
            transaction.on_commit(outbox.notify_workers)
    elif mode == "after_commit":  # the pre-outbox baseline of bench/commands.py: not durable
        from projector.projector import project_best_effort

        transaction.on_commit(lambda: project_best_effort(entity, entity_id))
    elif mode != "off":  # "off": the authority-only ceiling of bench/commands.py
        raise ValueError(f"KHALA RUNTIME_PROJECTION must be outbox, after_commit or off, not {mode!r}")


def _append_next_event(parent, event_type: str, payload: dict, now):
    """Create the next event of ``parent`` (a run or a worker) and advance its ``latest_seq``.

    The caller holds ``parent``'s row lock (``select_for_update``) until commit, so
    ``latest_seq + 1`` is unique and gap-free; the caller saves ``parent``.
    """
    seq = parent.latest_seq + 1
    event = parent.events.create(seq=seq, event_type=event_type, payload=payload, created_at=now)
    parent.latest_seq = seq
    return event


def create_run(owner, *, thread_id: str = "", now=None) -> Run:
    with transaction.atomic():
        run = Run.objects.create(owner=owner, thread_id=thread_id)
        _record_projection_intent("run", run.id, run.latest_seq)
    return run


def append_run_event(run_id: str, owner, event_type: str, payload: dict, *, now=None) -> RunEvent:
    """Append the next event of a run owned by ``owner``. Raises ``Run.DoesNotExist`` or ``CommandError``."""
    now = now or timezone.now()
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id, owner=owner)
        if run.status in TERMINAL_RUN_STATUSES:
            raise CommandError("run_terminal", f"run {run_id} is {run.status}; it takes no more events")
        event = _append_next_event(run, event_type, payload, now)
        if event_type == RUN_STARTED and run.status == RunStatus.CREATED:
            run.status = RunStatus.RUNNING
        elif event_type in RUN_TERMINAL_EVENTS:
            run.status = RUN_TERMINAL_EVENTS[event_type]
            run.terminal_at = now
            run.terminal_reason_class = str(payload.get("reason_class") or "")[:64]
            run.terminal_reason = str(payload.get("reason") or "")[:2000]
        run.save()
        _record_projection_intent("run", run.id, run.latest_seq)
    return event


def create_codex_worker(owner, *, workspace_ref="", codex_home_ref="", adapter="", metadata=None) -> CodexWorker:
    with transaction.atomic():
        worker = CodexWorker.objects.create(
            owner=owner,
            workspace_ref=workspace_ref,
            codex_home_ref=codex_home_ref,
            adapter=adapter,
            metadata=metadata or {},
        )
        _record_projection_intent("codex_worker", worker.id, worker.latest_seq)
    return worker


def append_worker_event(worker_id: str, owner, event_type: str, payload: dict, *, now=None) -> CodexWorkerEvent:
    """Append the next event of a worker owned by ``owner`` (heartbeats and status changes included)."""
    now = now or timezone.now()
    with transaction.atomic():
        worker = CodexWorker.objects.select_for_update().get(id=worker_id, owner=owner)
        if worker.status in WORKER_STOPPED_STATUSES:
            raise CommandError("worker_stopped", f"worker {worker_id} is {worker.status}; it takes no more events")
        new_status = None
        if event_type == WORKER_STATUS:
            new_status = payload.get("status")
            if new_status not in WorkerStatus.values:
                raise CommandError(
                    "invalid_status",
                    f"worker.status needs payload.status in {sorted(WorkerStatus.values)}",
                    http_status=422,
                )
        event = _append_next_event(worker, event_type, payload, now)
        if event_type == WORKER_HEARTBEAT:
            worker.last_heartbeat_at = now
            if worker.status == WorkerStatus.STARTING:
                new_status = WorkerStatus.RUNNING
        if new_status:
            worker.status = new_status
            if new_status == WorkerStatus.RUNNING and worker.started_at is None:
                worker.started_at = now
            if new_status in WORKER_STOPPED_STATUSES:
                worker.stopped_at = now
        worker.save()
        _record_projection_intent("codex_worker", worker.id, worker.latest_seq)
    return event

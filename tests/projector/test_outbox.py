"""The projection outbox and ``manage.py projector_worker``, on real PostgreSQL and real processes.

- writers that die right after COMMIT (before any after-commit callback) lose nothing;
- two workers drain 10,000 entries, each projected exactly once;
- poison entries are quarantined after N attempts while the rest of the topic flows;
- a worker killed with -9 mid-batch loses and doubles nothing;
- the fast path and a worker side by side never write a document twice nor regress one;
- bad input (an unencodable payload, unknown entities and topics) is quarantined with its error.
"""

import datetime as dt
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from projector import outbox, outbox_draining, outbox_worker, parity
from projector.models import (
    CODEX_WORKER_EVENTS,
    NOTIFICATIONS,
    RUN_SUMMARIES,
    ProjectionOutboxEntry,
    ReadModelDocument,
    StreamEvent,
    TopicSequence,
)
from projector.projector import notification_doc_key, project_entities, run_doc_key, worker_doc_key
from runtime import commands
from runtime.apps import set_session_projection_intent
from runtime.models import CodexWorker, Run
from tests.support.clock import FakeClock as MonotonicClock
from tests.support.servers import REPO_ROOT, test_database_url as database_url_of_this_test_run


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**khala) -> dict:
    import json

    env = dict(os.environ, DATABASE_URL=database_url_of_this_test_run(), DJANGO_SETTINGS_MODULE="khala_project.settings")
    if khala:
        env["KHALA_SETTINGS_JSON"] = json.dumps(khala)
    return env


@pytest.fixture
def projector_worker():
    """Start ``manage.py projector_worker`` processes; yields start(*args) -> (process, log, port)."""
    started = []

    def start(*args):
        port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="khala-projector-", suffix=".log", delete=False)
        process = subprocess.Popen(
            [sys.executable, "manage.py", "projector_worker", "--metrics-port", str(port), "--poll-interval", "0.5", *args],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started.append(process)
        path = Path(log.name)
        wait_for(lambda: "projector worker ready" in path.read_text() or process.poll() is not None, "the worker to start")
        assert process.poll() is None, path.read_text()
        return process, path, port

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def stop(process, log: Path) -> dict[str, int]:
    """SIGTERM the worker; it must exit 0 with its totals, which are returned."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, log.read_text()
    last = log.read_text().rstrip().splitlines()[-1]
    assert last.startswith("projector worker stopped"), last
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last)}


def metric(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def pending() -> int:
    return ProjectionOutboxEntry.objects.filter(quarantined_at__isnull=True).count()


def worker_blocked_on_topic_row() -> bool:
    """A projector is waiting for a topic's sequence row (held by the test), i.e. mid-batch."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            ["%sync_topic_sequences%"],
        )
        return cursor.fetchone()[0] == 1


def worker_listening(besides) -> bool:
    """A worker's LISTEN connection is up (it LISTENs lazily, when its first wait begins).
    ``besides``: the test's own LISTENing connection, which must not count as the worker's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle' AND query = %s "
            "AND pid <> %s",
            [f"LISTEN {outbox.NOTIFY_CHANNEL}", besides.info.backend_pid],
        )
        return cursor.fetchone()[0] > 0


def assert_journal_exact() -> None:
    """No (topic, doc_key, doc_version) journaled twice, and no doc_version lower than an earlier one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT topic, doc_key, doc_version, count(*) FROM sync_stream_events "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1 LIMIT 5"
        )
        assert cursor.fetchall() == [], "a document version was journaled twice"
        cursor.execute(
            "SELECT topic, doc_key, doc_version, previous FROM ("
            "  SELECT topic, doc_key, doc_version,"
            "         lag(doc_version) OVER (PARTITION BY topic, doc_key ORDER BY watermark) AS previous"
            "    FROM sync_stream_events) AS t WHERE previous > doc_version LIMIT 5"
        )
        assert cursor.fetchall() == [], "a document version regressed in the journal"


def assert_parity_clean() -> parity.ParityReport:
    report = parity.run_audit(100_000, recheck_delay=0, record_metrics=False)
    assert report.status == "ok", report.as_dict()["findings"][:10]
    return report


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="outbox-writer", password="pw")


def crash(*specs: str) -> None:
    """Run each runtime command in a process that dies right after its COMMIT."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.projector.crashing_writer", *specs],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("crashed ") == len(specs), out.stdout


@pytest.mark.django_db(transaction=True)
def test_writers_dying_after_commit_lose_nothing_once_a_worker_runs(topics, user, projector_worker):
    uid = user.id
    crash(f"create_run:{uid}:crash-run", f"create_worker:{uid}:crash-adapter")
    run = Run.objects.get(thread_id="crash-run")
    worker = CodexWorker.objects.get(adapter="crash-adapter")
    crash(
        f"run_event:{uid}:{run.id}:run.started",
        f"run_event:{uid}:{run.id}:run.delta",
        f"run_event:{uid}:{run.id}:run.completed",
        f"worker_event:{uid}:{worker.id}:worker.heartbeat",
        f"worker_event:{uid}:{worker.id}:worker.heartbeat",
        f"worker_event:{uid}:{worker.id}:worker.note",
    )
    # Every writer died between COMMIT and its callbacks: the authority moved, projection did not,
    # and each change left its intent behind.
    assert (Run.objects.get(id=run.id).latest_seq, CodexWorker.objects.get(id=worker.id).latest_seq) == (3, 3)
    assert not ReadModelDocument.objects.exists()
    assert pending() == 8

    process, log, port = projector_worker()
    wait_for(lambda: pending() == 0, "the worker to drain the outbox")
    versions = dict(ReadModelDocument.objects.values_list("doc_key", "doc_version"))
    assert versions == {
        run_doc_key(run.id): 3,
        notification_doc_key(run.id): 3,
        worker_doc_key(worker.id): 3,
        f"runtime/codex_worker_event:{worker.id}:1": 1,
        f"runtime/codex_worker_event:{worker.id}:2": 2,
        f"runtime/codex_worker_event:{worker.id}:3": 3,
    }
    assert StreamEvent.objects.count() == len(versions)  # each document reached the journal once
    assert_journal_exact()
    report = assert_parity_clean()
    assert report.sampled == len(versions)  # the audit covers all four topics
    assert wait_for(lambda: metric(port, "khala_outbox_pending_entries") == 0, "the depth gauge")
    assert metric(port, "khala_outbox_oldest_pending_age_seconds") == 0
    totals = stop(process, log)
    assert totals["projected"] == 8 and totals["quarantined"] == 0


@pytest.mark.django_db(transaction=True)
def test_two_workers_drain_10000_entries_each_projected_exactly_once(topics, user, projector_worker):
    first = projector_worker("--batch-size", "100")
    second = projector_worker("--batch-size", "100")
    with transaction.atomic():  # the trigger records one entry per inserted run, in the same statements
        Run.objects.bulk_create([Run(owner=user, thread_id=f"bulk-{i}") for i in range(10_000)], batch_size=2000)
    assert pending() == 10_000
    outbox.notify_workers()
    wait_for(lambda: pending() == 0, "two workers to drain 10,000 entries", timeout=300)
    a, b = stop(*first[:2]), stop(*second[:2])
    assert a["projected"] + b["projected"] == 10_000
    assert a["projected"] > 0 and b["projected"] > 0, (a, b)  # both really drained
    summaries = StreamEvent.objects.filter(topic=RUN_SUMMARIES)
    assert summaries.count() == 10_000
    assert summaries.values("doc_key").distinct().count() == 10_000
    assert TopicSequence.objects.get(topic=RUN_SUMMARIES).last_watermark == 10_000
    assert_journal_exact()


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_batch_loses_and_doubles_nothing(topics, user, projector_worker, settings):
    settings.KHALA = {"OUTBOX_FAST_PATH": False}
    runs = [commands.create_run(user, thread_id=f"k{i}") for i in range(50)]
    assert pending() == 50
    # Hold the topic's sequence row: the worker claims its batch, folds it, then blocks inside
    # project_many, i.e. in the middle of its batch transaction.
    blocker = psycopg.connect(database_url_of_this_test_run())
    blocker.execute("SELECT 1 FROM sync_topic_sequences WHERE topic = %s FOR UPDATE", [RUN_SUMMARIES])
    process, log, _port = projector_worker()
    wait_for(worker_blocked_on_topic_row, "the worker to block mid-batch")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    blocker.rollback()
    blocker.close()
    # The killed batch never committed: no document, every entry still there.
    assert ProjectionOutboxEntry.objects.count() == 50
    assert not StreamEvent.objects.exists()

    process, log, _port = projector_worker()
    wait_for(lambda: pending() == 0, "a new worker to drain after the kill")
    stop(process, log)
    assert StreamEvent.objects.filter(topic=RUN_SUMMARIES).count() == 50
    assert set(ReadModelDocument.objects.values_list("doc_key", flat=True)) == {run_doc_key(r.id) for r in runs}
    assert_journal_exact()


@pytest.mark.django_db(transaction=True)
def test_fast_path_and_worker_together_never_write_twice_or_regress(topics, user, projector_worker):
    """Writers with the fast path on, a worker draining beside them, all on the same few entities."""
    runs = [commands.create_run(user, thread_id=f"shared-{i}") for i in range(3)]
    worker = commands.create_codex_worker(user, adapter="shared")
    process, log, _port = projector_worker("--batch-size", "5")
    errors = []

    def writer(n: int):
        try:
            for i in range(25):
                commands.append_run_event(runs[(n + i) % 3].id, user, "run.delta", {"n": n, "i": i})
                commands.append_worker_event(worker.id, user, "worker.heartbeat", {})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    wait_for(lambda: pending() == 0, "the outbox to drain")
    stop(process, log)
    assert not ProjectionOutboxEntry.objects.exists()
    assert_journal_exact()
    assert_parity_clean()
    assert StreamEvent.objects.filter(topic=CODEX_WORKER_EVENTS).count() == 100


class FakeClock:
    """Starts an hour ahead, so entries the test writes later (stamped with the real clock) are due."""

    def __init__(self):
        self.now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        self.now += dt.timedelta(seconds=seconds)


def entry_of(entity_id: str) -> ProjectionOutboxEntry:
    return ProjectionOutboxEntry.objects.get(entity_id=entity_id)


@pytest.mark.django_db
def test_poison_entity_is_quarantined_after_n_attempts_while_others_flow(topics, user, settings):
    settings.KHALA = {"OUTBOX_MAX_ATTEMPTS": 3, "OUTBOX_RETRY_BASE_SECONDS": 10, "OUTBOX_RETRY_MAX_SECONDS": 15}
    poison = commands.create_run(user, thread_id="poison")
    healthy = [commands.create_run(user, thread_id=f"ok{i}") for i in range(3)]
    clock = FakeClock()

    def project(refs, before_write=None):
        if any(entity_id == poison.id for _, entity_id in refs):
            raise RuntimeError("this fold always fails")
        return project_entities(refs, before_write=before_write)

    result = outbox.drain_once(project=project, clock=clock)
    assert (result.claimed, result.projected, result.retried, result.quarantined) == (4, 3, 1, 0)
    entry = entry_of(poison.id)
    assert entry.attempts == 1 and "RuntimeError: this fold always fails" in entry.last_error
    assert entry.available_at == clock.now + dt.timedelta(seconds=10)

    # While the poison waits, new writes on the same topic flow.
    later = commands.create_run(user, thread_id="later")
    assert outbox.drain_once(project=project, clock=clock).projected == 1
    assert entry_of(poison.id).attempts == 1
    assert ReadModelDocument.objects.filter(doc_key=run_doc_key(later.id)).exists()

    clock.advance(10)
    outbox.drain_once(project=project, clock=clock)
    entry = entry_of(poison.id)
    assert entry.attempts == 2 and entry.available_at == clock.now + dt.timedelta(seconds=15)  # capped
    clock.advance(15)
    assert outbox.drain_once(project=project, clock=clock).quarantined == 1
    assert entry_of(poison.id).quarantined_at == clock.now
    clock.advance(3600)
    assert outbox.drain_once(project=project, clock=clock).claimed == 0  # never retried on its own
    stats = outbox.stats(clock=clock)
    assert (stats.pending, stats.quarantined) == (0, 1)
    assert {r.id for r in healthy} <= {d.split(":")[1] for d in ReadModelDocument.objects.values_list("doc_key", flat=True)}

    # An operator retries it once the bug is fixed.
    assert outbox.retry_quarantined([entry_of(poison.id).id], clock=clock) == 1
    assert outbox.drain_once(clock=clock).projected == 1
    assert ReadModelDocument.objects.filter(doc_key=run_doc_key(poison.id)).exists()
    assert not ProjectionOutboxEntry.objects.exists()


@pytest.mark.django_db
def test_unencodable_payload_is_quarantined_with_its_error_and_never_retried(topics, user):
    # PostgreSQL's jsonb refuses NaN at the authority write itself; an integer beyond 2**53-1 is
    # what a buggy writer can commit and the canonical encoding cannot represent.
    worker = commands.create_codex_worker(user, adapter="bad")
    commands.append_worker_event(worker.id, user, "worker.note", {"counter": 2**60})
    fine = commands.create_run(user, thread_id="fine")
    clock = FakeClock()
    result = outbox.drain_once(clock=clock)
    assert (result.projected, result.quarantined) == (1, 2)  # both entries of the bad worker
    for entry in ProjectionOutboxEntry.objects.all():
        assert entry.quarantined_at is not None and entry.attempts == 1
        assert entry.last_error.startswith("invalid_payload:") and "2**53" in entry.last_error
    clock.advance(10**6)
    assert outbox.drain_once(clock=clock).claimed == 0
    assert ProjectionOutboxEntry.objects.count() == 2  # kept, never silently dropped
    assert ReadModelDocument.objects.filter(doc_key=run_doc_key(fine.id)).exists()


@pytest.mark.django_db
def test_unknown_entities_and_topics_are_refused_and_logged_with_the_entry_id(topics, user, caplog):
    banana = ProjectionOutboxEntry.objects.create(entity="banana", entity_id="b1")
    ghost = ProjectionOutboxEntry.objects.create(entity="run", entity_id="run_does_not_exist")
    run = commands.create_run(user, thread_id="undeclared")
    TopicSequence.objects.filter(topic=RUN_SUMMARIES).delete()
    result = outbox.drain_once()
    assert (result.claimed, result.projected, result.quarantined) == (3, 0, 3)
    errors = dict(ProjectionOutboxEntry.objects.values_list("id", "last_error"))
    assert errors[banana.id].startswith("unknown_entity:")
    assert errors[ghost.id].startswith("entity_not_found:")
    assert errors[entry_of(run.id).id].startswith("unknown_topic:")
    for entry_id in errors:
        assert f"outbox entry {entry_id} " in caplog.text
    assert not ProjectionOutboxEntry.objects.filter(quarantined_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_record_change_needs_the_authority_transaction():
    with pytest.raises(RuntimeError, match="inside the authority transaction"):
        outbox.record_change("run", "run_x", 0)


@pytest.mark.django_db
def test_a_command_and_its_outbox_entry_commit_or_roll_back_together(topics, user):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            commands.create_run(user, thread_id="rolled-back")
            raise RuntimeError("the authority transaction fails after the command")
    assert not Run.objects.filter(thread_id="rolled-back").exists()
    assert not ProjectionOutboxEntry.objects.exists()
    run = commands.create_run(user, thread_id="kept")
    assert list(ProjectionOutboxEntry.objects.values_list("entity", "entity_id", "authority_seq")) == [("run", run.id, 0)]


@pytest.mark.django_db
def test_every_authority_write_records_its_intent_by_trigger_even_outside_the_commands(topics, user, settings):
    """On PostgreSQL the runs and workers tables record their own changes (migration
    ``runtime/0003_projection_intent_triggers``): a write that bypasses ``runtime.commands`` (an
    ORM update, the admin, a data fix) is projected too. An UPDATE that changes nothing records
    nothing, and a session that switched intents off (the benchmarks' non-durable baselines)
    records nothing."""
    def entries():
        return list(ProjectionOutboxEntry.objects.order_by("id").values_list("entity", "entity_id", "authority_seq"))

    run = commands.create_run(user, thread_id="by command")
    worker = commands.create_codex_worker(user, workspace_ref="ws")
    assert entries() == [("run", run.id, 0), ("codex_worker", worker.id, 0)]
    ProjectionOutboxEntry.objects.all().delete()

    Run.objects.filter(id=run.id).update(latest_seq=7, status="running")  # not through the commands
    Run.objects.filter(id=run.id).update(status="running")  # changes nothing
    with connection.cursor() as cursor:
        cursor.execute("UPDATE runtime_codex_workers SET adapter = 'by hand' WHERE id = %s", [worker.id])
    assert entries() == [("run", run.id, 7), ("codex_worker", worker.id, 0)]
    ProjectionOutboxEntry.objects.all().delete()

    # A process whose mode is a non-durable baseline switches intents off as its sessions open
    # (``runtime.apps``; the SET is undone with this test's transaction).
    settings.KHALA = {"RUNTIME_PROJECTION": "off"}
    set_session_projection_intent(sender=None, connection=connection)
    commands.create_run(user, thread_id="baseline without intents")
    assert entries() == []


@pytest.mark.django_db
def test_worker_command_argument_errors():
    with pytest.raises(CommandError, match="--batch-size"):
        call_command("projector_worker", "--once", "--batch-size", "0")
    with pytest.raises(CommandError, match="--poll-interval"):
        call_command("projector_worker", "--once", "--poll-interval", "0")
    with pytest.raises(CommandError, match="--metrics-port"):
        call_command("projector_worker", "--once", "--metrics-port", "70000")


@pytest.mark.django_db
def test_worker_once_drains_and_reports(topics, user, capsys):
    commands.create_run(user, thread_id="once")
    call_command("projector_worker", "--once")
    assert "projector worker drained: batches=1 projected=1 documents=1" in capsys.readouterr().out
    assert not ProjectionOutboxEntry.objects.exists()
    assert ReadModelDocument.objects.filter(topic=RUN_SUMMARIES).count() == 1
    assert not ReadModelDocument.objects.filter(topic=NOTIFICATIONS).exists()


@pytest.mark.django_db
def test_admin_shows_quarantined_entries_and_retries_them(topics, user, admin_client):
    from django.urls import reverse

    run = commands.create_run(user, thread_id="admin-retry")
    entry = entry_of(run.id)
    ProjectionOutboxEntry.objects.filter(id=entry.id).update(
        attempts=8, quarantined_at=dt.datetime.now(dt.timezone.utc), last_error="RuntimeError: boom"
    )
    url = reverse("admin:projector_projectionoutboxentry_changelist")
    page = admin_client.get(url + "?state=quarantined").content.decode()
    assert run.id in page and "quarantined" in page and "RuntimeError: boom" in page
    assert admin_client.get(reverse("admin:projector_projectionoutboxentry_change", args=[entry.id])).status_code == 200
    response = admin_client.post(url, {"action": "retry_now", "_selected_action": [entry.id]}, follow=True)
    assert "1 quarantined entry released" in response.content.decode()
    entry.refresh_from_db()
    assert (entry.quarantined_at, entry.attempts) == (None, 0)
    assert outbox.drain_once().projected == 1
    assert ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).exists()


@pytest.mark.django_db(transaction=True)
def test_fast_path_gives_way_to_a_busy_topic_and_leaves_the_entry_to_the_workers(topics, user):
    run = commands.create_run(user, thread_id="busy")  # fast path on: projected at once
    assert not ProjectionOutboxEntry.objects.exists()
    blocker = psycopg.connect(database_url_of_this_test_run())
    blocker.execute("SELECT 1 FROM sync_topic_sequences WHERE topic = %s FOR UPDATE", [RUN_SUMMARIES])
    def command():
        try:
            commands.append_run_event(run.id, user, "run.started", {})
        finally:
            connection.close()

    writer = threading.Thread(target=command)
    try:
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "the command waited for the busy topic row"
        entry = entry_of(run.id)
        assert (entry.attempts, entry.quarantined_at) == (0, None)  # not a failure: just deferred
    finally:
        blocker.rollback()  # (without the lock timeout, this is what lets the command finish)
        blocker.close()
        writer.join(30)
    assert outbox.drain_once().projected == 1
    assert ReadModelDocument.objects.get(doc_key=run_doc_key(run.id)).doc_version == 1


@pytest.mark.django_db(transaction=True)
def test_worker_wakes_on_notify_long_before_its_poll_interval(topics, user, projector_worker, settings):
    settings.KHALA = {"OUTBOX_FAST_PATH": False}  # commands NOTIFY after COMMIT instead
    process, log, _port = projector_worker("--poll-interval", "60")
    wait_for(lambda: "projector worker ready" in log.read_text(), "the worker")
    time.sleep(0.5)  # let its first (empty) pass finish and the wait begin: the NOTIFY is what must wake it
    run = commands.create_run(user, thread_id="woken")
    wait_for(lambda: ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).exists(), "a NOTIFY wake-up", timeout=20)
    stop(process, log)


def notifications(listener) -> int:
    """How many NOTIFYs on the outbox channel ``listener`` (a LISTENing psycopg connection) got."""
    return sum(1 for _ in listener.notifies(timeout=0.2))


@pytest.mark.django_db(transaction=True)
def test_commands_that_commit_while_a_worker_drains_skip_their_notify_and_are_projected_by_its_polls(
    topics, user, projector_worker, settings
):
    """The draining flag (``projector.outbox_draining``): commands that commit while the worker
    drains send no NOTIFY (their process sees the flag, and then trusts it for a lease), and the
    draining worker's own polls project them, long before its poll interval of 60 s."""
    settings.KHALA = {"OUTBOX_FAST_PATH": False}  # commands NOTIFY after COMMIT
    outbox._waker.draining_until = 0.0  # no lease left over from another test
    url = database_url_of_this_test_run()
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as blocker:
        listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
        process, log, _port = projector_worker("--poll-interval", "60")
        wait_for(lambda: worker_listening(besides=listener), "the worker to LISTEN")  # a NOTIFY sent before would be lost
        # Hold the topic's sequence row: the woken worker raises its flag and blocks mid-batch.
        blocker.execute("SELECT 1 FROM sync_topic_sequences WHERE topic = %s FOR UPDATE", [RUN_SUMMARIES])
        first = commands.create_run(user, thread_id="wakes the worker")
        wait_for(worker_blocked_on_topic_row, "the worker to block mid-batch")
        assert wait_for(lambda: notifications(listener), "the first command's NOTIFY") == 1

        later = [commands.create_run(user, thread_id=f"recorded while the worker drains {i}") for i in range(3)]
        assert notifications(listener) == 0  # they saw the flag (or trusted it) and sent nothing
        blocker.rollback()  # the worker finishes its batch, and its next polls find the others
        runs = [first, *later]
        wait_for(
            lambda: ReadModelDocument.objects.filter(doc_key__in=[run_doc_key(r.id) for r in runs]).count() == len(runs),
            "the entries committed without a NOTIFY to be projected",
            timeout=20,
        )
    totals = stop(process, log)
    assert totals["projected"] == len(runs)


@pytest.mark.django_db(transaction=True)
def test_a_writer_trusts_a_draining_flag_it_saw_for_the_lease_and_no_longer():
    """The writer's side of the draining flag, on real PostgreSQL: while a worker holds the flag
    the NOTIFY thread's statement sends nothing, and for ``LEASE_SECONDS`` after it saw the flag
    the process does not even ask; once the lease is over it asks again, and with the flag down
    it NOTIFYs."""
    url = database_url_of_this_test_run()
    clock = MonotonicClock()
    waker = outbox._WorkerWaker(monotonic=clock)
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as drainer:
        listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
        drainer.execute("SELECT pg_advisory_lock(%s)", [outbox_draining.DRAINING_LOCK])  # a worker drains

        waker.request()
        wait_for(lambda: waker.draining_until, "the NOTIFY thread to see the flag")
        assert waker.draining_until == clock.now + outbox_draining.LEASE_SECONDS
        assert notifications(listener) == 0

        drainer.execute("SELECT pg_advisory_unlock(%s)", [outbox_draining.DRAINING_LOCK])  # the drain ends
        clock.now += outbox_draining.LEASE_SECONDS / 2
        waker.request()  # within the lease: nothing is sent (the worker's cooldown polls cover it)
        assert notifications(listener) == 0

        clock.now += outbox_draining.LEASE_SECONDS
        waker.request()  # the lease is over: the flag is down, so it NOTIFYs
        assert wait_for(lambda: notifications(listener), "a NOTIFY once the lease is over") == 1
    # The worker keeps polling after lowering its flag for longer than a writer trusts the flag.
    assert outbox_draining.COOLDOWN_SECONDS >= outbox_draining.LEASE_SECONDS + 0.1


class ScriptedDrainLoop(outbox_worker.OutboxDrainLoop):
    """The drain loop with scripted passes (how many entries each pass claims), a fake draining
    flag and a fake clock that a poll advances by its wait; records what the loop did."""

    def __init__(self, claims: list[int], clock: MonotonicClock, linger: float):
        class Flag:
            held = False

            def raise_flag(flag):
                if not flag.held:
                    flag.held = True
                    self.events.append("raise")
                return True

            def lower(flag):
                if flag.held:
                    flag.held = False
                    self.events.append("lower")

        class Waiter:
            listens = True

            def wait(waiter, timeout):
                self.events.append("wait_for_notify")
                if not self.claims:
                    self.stop()

            def wake(waiter):
                pass

            def close(waiter):
                pass

        super().__init__(batch_size=10, poll_interval=60, waiter=Waiter(), monotonic=clock, linger=lambda: linger)
        self.claims = list(claims)
        self.clock = clock
        self.events: list[str] = []
        self.draining = Flag()
        self._stop = self._ClockedStop(self, clock)

    class _ClockedStop:
        def __init__(self, loop, clock):
            self.loop, self.clock, self.stopped = loop, clock, False

        def is_set(self):
            return self.stopped

        def set(self):
            self.stopped = True

        def wait(self, seconds):
            self.clock.now += seconds
            return self.stopped

    def pass_once(self) -> bool:
        claimed = self.claims.pop(0) if self.claims else 0
        self.events.append(f"pass:{claimed}")
        self.last_claimed = claimed
        return False


def test_after_lowering_its_flag_the_worker_passes_at_once_then_polls_through_the_cooldown():
    """The worker's side of the draining flag: once a pass finds nothing it lowers the flag, passes
    once more at once (commits made before the lowering), then keeps polling for
    ``COOLDOWN_SECONDS`` (writers may still trust the flag for a lease) before it waits for a
    NOTIFY; work found during the cooldown raises the flag again."""
    linger = 0.125  # the gap between polls; a binary fraction, so the fake clock adds up exactly
    polls = math.ceil(outbox_draining.COOLDOWN_SECONDS / linger)

    quiet = ScriptedDrainLoop([0, 3, 0], MonotonicClock(), linger)  # woken: a pass of 3, then nothing more
    quiet.run()
    assert quiet.events[:6] == ["pass:0", "wait_for_notify", "raise", "pass:3", "pass:0", "lower"]
    # Then the pass right after lowering and the cooldown's polls, all without the flag, and only
    # then a wait for a NOTIFY.
    assert quiet.events[6:6 + polls + 2] == ["pass:0"] * (polls + 1) + ["wait_for_notify"]

    late = ScriptedDrainLoop([0, 3, 0, 0, 0, 2, 0], MonotonicClock(), linger)  # an entry turns up during the cooldown
    late.run()
    lowered = late.events.index("lower")
    assert late.events[lowered + 1:lowered + 6] == ["pass:0", "pass:0", "pass:2", "raise", "pass:0"]
    relowered = late.events.index("lower", lowered + 1)  # that work done, a full cooldown again
    assert late.events[relowered + 1:relowered + polls + 3] == ["pass:0"] * (polls + 1) + ["wait_for_notify"]


def draining_flag_holders() -> set[int]:
    """Backend pids holding the draining flag (``outbox_draining.DRAINING_LOCK``, exclusive)."""
    key = outbox_draining.DRAINING_LOCK
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' "
            "AND classid = %s AND objid = %s",
            [key >> 32, key & 0xFFFFFFFF],
        )
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_holding_the_draining_flag_leaves_nothing_unprojected(topics, user, projector_worker, settings):
    """The draining worker dies (kill -9) mid-batch after commands skipped their NOTIFY because of
    its flag: the flag goes with its session, and another worker's next poll projects every entry,
    once."""
    settings.KHALA = {"OUTBOX_FAST_PATH": False}  # commands NOTIFY after COMMIT
    url = database_url_of_this_test_run()
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as blocker:
        listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
        drainer, drainer_log, _ = projector_worker("--poll-interval", "60")
        wait_for(lambda: worker_listening(besides=listener), "the first worker to LISTEN")
        blocker.execute("SELECT 1 FROM sync_topic_sequences WHERE topic = %s FOR UPDATE", [RUN_SUMMARIES])
        first = commands.create_run(user, thread_id="wakes the first worker")
        wait_for(worker_blocked_on_topic_row, "the first worker to block mid-batch")
        holders = draining_flag_holders()
        assert len(holders) == 1  # the blocked worker's session holds the flag
        assert wait_for(lambda: notifications(listener), "the first command's NOTIFY") == 1

        skipped = [commands.create_run(user, thread_id=f"recorded under the flag {i}") for i in range(3)]
        assert notifications(listener) == 0  # they saw the flag and sent no NOTIFY

        # Another worker, polling every 2 s; a NOTIFY will not come for the entries above.
        other, other_log, _ = projector_worker("--poll-interval", "2")
        os.killpg(drainer.pid, signal.SIGKILL)
        drainer.wait(10)
        blocker.rollback()  # the killed batch never committed; the topic row is free again

        # Its backend ends once it finds its client gone, and the flag with it.
        wait_for(lambda: not (draining_flag_holders() & holders), "the dead worker's flag to go with its session")
        wait_for(lambda: pending() == 0, "the other worker's poll to project what the dead drainer left", timeout=30)
        later = commands.create_run(user, thread_id="after the kill")
        wait_for(lambda: pending() == 0, "the later command's entry")
    totals = stop(other, other_log)
    runs = [first, *skipped, later]
    assert totals["projected"] == len(runs)  # each entry once, all by the survivor
    assert set(ReadModelDocument.objects.values_list("doc_key", flat=True)) == {run_doc_key(r.id) for r in runs}
    assert StreamEvent.objects.filter(topic=RUN_SUMMARIES).count() == len(runs)
    assert_journal_exact()


@pytest.mark.django_db
def test_an_unknown_runtime_projection_mode_is_refused(topics, user, settings):
    settings.KHALA = {"RUNTIME_PROJECTION": "sometimes"}
    with pytest.raises(ValueError, match="RUNTIME_PROJECTION"):
        commands.create_run(user, thread_id="x")

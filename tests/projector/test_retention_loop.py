"""``manage.py sync_retention`` in loop mode, as a real process against the test database:
it keeps pruning pass after pass, survives a failing pass, exports its gauges and stops on SIGTERM."""

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from projector import sink
from projector.models import StreamEvent, TopicSequence
from tests.support.servers import REPO_ROOT, test_database_url as database_url_of_this_test_run
from tests.support.waiting import wait_until_blocking

EVENTS = "runtime.codex_worker_events"  # 1-day window


def write_old(start: int, count: int) -> None:
    for i in range(start, start + count):
        sink.project(EVENTS, f"doc:{i}", 1, {"i": i}, "user:1")
    StreamEvent.objects.filter(topic=EVENTS, watermark__gt=start).update(
        inserted_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    )


def floor() -> int:
    return TopicSequence.objects.get(topic=EVENTS).pruned_through


def wait_for(predicate, what: str, timeout: float = 20.0):
    return wait_until_blocking(predicate, timeout, message=what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def retention_loop():
    """Start the loop; yields (process, log path, metrics port); always stops it."""
    started = []

    def start(*args):
        port = free_port()
        env = dict(os.environ, DATABASE_URL=database_url_of_this_test_run(), DJANGO_SETTINGS_MODULE="khala_project.settings")
        log = tempfile.NamedTemporaryFile(prefix="khala-retention-", suffix=".log", delete=False)
        process = subprocess.Popen(
            [sys.executable, "manage.py", "sync_retention", "--topic", EVENTS, "--metrics-port", str(port), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started.append(process)
        return process, Path(log.name), port

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def metric(port: int, line_prefix: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.django_db(transaction=True)
def test_loop_prunes_pass_after_pass_exports_gauges_and_stops_on_sigterm(topics, retention_loop):
    write_old(0, 3)
    process, log, port = retention_loop("--interval", "0.2", "--batch-size", "2")
    wait_for(lambda: floor() == 3, "the first pass to prune 3 rows")
    # Rows that age out later are pruned by a later pass of the same process.
    write_old(3, 2)
    wait_for(lambda: floor() == 5, "a later pass to prune 2 more rows")
    assert not StreamEvent.objects.filter(topic=EVENTS).exists()
    assert wait_for(lambda: metric(port, f'khala_journal_pruned_through{{topic="{EVENTS}"}}') == 5, "the floor gauge")
    assert metric(port, f'khala_journal_head_watermark{{topic="{EVENTS}"}}') == 5
    assert metric(port, "khala_retention_last_run_timestamp_seconds") > time.time() - 60

    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, log.read_text()
    output = log.read_text()
    assert "deleted=3 batches=2 pruned_through=3" in output
    assert "deleted=2 batches=1 pruned_through=5" in output
    assert output.rstrip().endswith("retention loop stopped")


@pytest.mark.django_db(transaction=True)
def test_a_failing_pass_is_reported_and_the_loop_carries_on(topics, retention_loop):
    write_old(0, 2)
    # Every pass fails while the journal table is missing (as during a botched restore).
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE sync_stream_events RENAME TO sync_stream_events_away")
    try:
        process, log, _port = retention_loop("--interval", "0.2")
        wait_for(lambda: log.read_text().count("retention pass failed") >= 2, "two failed passes")
        assert process.poll() is None, log.read_text()  # still looping
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE sync_stream_events_away RENAME TO sync_stream_events")
    wait_for(lambda: floor() == 2, "the first pass after the repair")
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0, log.read_text()
    assert "ProgrammingError" in log.read_text()


@pytest.mark.django_db
def test_bad_metrics_port_is_refused():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--metrics-port"):
        call_command("sync_retention", "--once", "--metrics-port", "70000")

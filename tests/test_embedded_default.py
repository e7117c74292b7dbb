"""The embedded default of ``make run`` (SQLite + in-memory channel layer) works end to end.

Correctness is proven on PostgreSQL everywhere else; this module only checks that a bare laptop
gets a working single-process Khala: a REAL daphne started without DATABASE_URL and REDIS_URL,
driven over HTTP and the WebSocket lane, and the portable sink / retention / hydration paths
(``projector.sink_portable``, ``sync.journal_sqlite``) run in a subprocess on their own SQLite
file. The pytest process itself stays on PostgreSQL (``tests/conftest.py``).
"""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from projector.payload_hash import payload_hash, to_wire
from tests.support.servers import REPO_ROOT, start_server
from tests.support.wsclient import PhoenixClient, updates_of

pytestmark = pytest.mark.slow

RUNS = "runtime.run_summaries"


def embedded_env(var_dir: Path) -> dict:
    """The environment of a bare laptop: no DATABASE_URL, no REDIS_URL, no Khala overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE") and not k.startswith("KHALA_")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="khala_project.settings",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        KHALA_VAR_DIR=str(var_dir),
        KHALA_SIGNING_KEYS=f"embedded-k1:{secrets.token_hex(32)}",
        KHALA_LOG_LEVEL="WARNING",
    )
    return env


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def migrated(tmp_path: Path) -> dict:
    env = embedded_env(tmp_path / "var")
    manage(env, "migrate", "--noinput")
    assert (tmp_path / "var" / "khala.sqlite3").is_file()
    return env


def run_on_sqlite(tmp_path: Path, script: str, *, timeout: float) -> dict:
    """Run ``script`` in a new interpreter on a freshly migrated SQLite default; its last stdout line as JSON."""
    env = migrated(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def embedded_server(tmp_path):
    """``(server, api_token)``: daphne on the embedded default, migrated, with the demo user."""
    env = migrated(tmp_path)
    out = manage(env, "ensure_demo_user")
    api_token = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("API token: "))
    # start_server copies this process's environment (which points at PostgreSQL and Redis) and
    # then applies `env`: empty values are what the settings treat as unset.
    overrides = {k: env[k] for k in ("KHALA_VAR_DIR", "KHALA_SIGNING_KEYS")}
    overrides.update(DATABASE_URL="", REDIS_URL="", KHALA_SETTINGS_JSON="", KHALA_SIGNING_KEYS_FILE="")
    server = start_server("daphne", env=overrides)
    try:
        yield server, api_token
    finally:
        server.stop()


def http(server, method: str, path: str, *, token: str | None = None, bearer: str | None = None, body=None):
    """``(status, json)`` of one request."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.http_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def test_runs_reach_a_websocket_client_live_on_the_embedded_default(embedded_server):
    server, api_token = embedded_server
    status, ready = http(server, "GET", "/readyz")
    assert status == 200, ready
    assert ready["checks"] == {"database": "ok", "channel_layer": "ok"}

    status, run = http(server, "POST", "/api/runtime/runs", token=api_token, body={"thread_id": "embedded-1"})
    assert status == 201, run
    run_id = run["id"]
    status, event = http(
        server, "POST", f"/api/runtime/runs/{run_id}/events", token=api_token, body={"event_type": "run.started"}
    )
    assert (status, event["seq"]) == (201, 1), event

    status, minted = http(server, "POST", "/api/sync/token", token=api_token, body={"scopes": [RUNS]})
    assert status == 200, minted
    sync_token = minted["data"]["token"]
    doc_key = f"runtime/run_summary:{run_id}"

    client = await PhoenixClient.connect(server.ws_url(token=sync_token))
    try:
        joined = await client.join()
        assert joined["status"] == "ok", joined
        assert joined["response"]["allowed_topics"] == [RUNS]
        reply, frames = await client.subscribe([RUNS])
        assert reply["status"] == "ok", reply
        replayed = [u for u in updates_of(frames) if u["doc_key"] == doc_key]
        # Creating the run projected version 0, the event version 1: two journal rows, in order.
        assert [u["doc_version"] for u in replayed] == [0, 1]
        assert [u["watermark"] for u in replayed] == sorted(u["watermark"] for u in replayed)
        latest = replayed[-1]
        assert latest["payload"]["status"] == "running" and latest["payload"]["latest_event_type"] == "run.started"
        assert latest["payload_hash"] == to_wire(payload_hash(latest["payload"]))
        assert frames[-1][4]["replay_complete"] is True
        head = frames[-1][4]["head_watermarks"][0]
        assert head["watermark"] == latest["watermark"]

        status, event = http(
            server,
            "POST",
            f"/api/runtime/runs/{run_id}/events",
            token=api_token,
            body={"event_type": "run.delta", "payload": {"text": "hello from the embedded default"}},
        )
        assert (status, event["seq"]) == (201, 2), event
        frames = await client.recv_until(
            lambda f: f[3] == "sync:update_batch" and any(u["doc_version"] == 2 for u in f[4]["updates"]), timeout=15
        )
        live = [u for u in updates_of(frames) if u["doc_key"] == doc_key]
        assert [u["doc_version"] for u in live] == [2]
        assert live[0]["watermark"] == latest["watermark"] + 1
        assert live[0]["payload"]["event_count"] == 2 and live[0]["payload"]["latest_event_type"] == "run.delta"
        assert live[0]["payload_hash"] == to_wire(payload_hash(live[0]["payload"]))
        assert frames[-1][4]["head_watermarks"][0]["stream_epoch"] == head["stream_epoch"]
    finally:
        await client.close()

    status, doc = http(server, "GET", f"/api/sync/v1/doc/{RUNS}/{doc_key}", bearer=sync_token)
    assert status == 200, doc
    assert (doc["doc_version"], doc["watermark"]) == (2, live[0]["watermark"])
    assert doc["payload"] == live[0]["payload"] and doc["payload_hash"] == live[0]["payload_hash"]
    status, page = http(server, "GET", f"/api/sync/v1/list/{RUNS}", bearer=sync_token)
    assert status == 200, page
    assert [d["doc_key"] for d in page["documents"]] == [doc_key]
    assert (page["head_watermark"], page["stream_epoch"]) == (live[0]["watermark"], head["stream_epoch"])


# The portable write path, retention and hydration through their Python APIs, in a process of its
# own whose default database is the embedded SQLite. It prints what it observed as JSON.
_PORTABLE_CHECK = r"""
import datetime as dt, json
import django
django.setup()
from django.db import connection, transaction
from django.test.utils import override_settings
from projector import retention
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.sink import DocumentWrite, SinkError, project, project_many
from sync.hydration import list_page
assert connection.vendor == "sqlite", connection.vendor

T, N = "runtime.run_summaries", "runtime.notifications"
out = {}
def head(topic): return TopicSequence.objects.get(topic=topic).last_watermark
def journal(topic): return list(StreamEvent.objects.filter(topic=topic).order_by("watermark").values_list("watermark", "doc_key", "doc_version"))
def doc(topic, key): return ReadModelDocument.objects.filter(topic=topic, doc_key=key).values_list("doc_version", "watermark", "payload").first()
def res(w): return [w.written, w.watermark, w.pointer]
def code(fn):
    try:
        fn()
    except SinkError as exc:
        return [exc.code, exc.index, exc.field]

out["first"] = res(project(T, "a", 5, {"v": 5}, "user:1"))
out["older"] = res(project(T, "a", 4, {"v": 4}, "user:1"))
out["equal"] = res(project(T, "a", 5, {"v": "5b"}, "user:1"))
out["after_single"] = [head(T), journal(T), doc(T, "a")]
out["unknown_one"] = code(lambda: project("no.such.topic", "a", 1, {}, "user:1"))
out["invalid_owner"] = code(lambda: project(T, "a", 6, {}, "bad owner"))

batch = project_many([
    DocumentWrite(T, "b", 1, {"b": 1}, "user:1"),
    DocumentWrite(T, "a", 3, {"stale": True}, "user:1"),   # older than the stored 5: no-op
    DocumentWrite(N, "n", 7, {"n": 7}, "user:1", public=True),
    DocumentWrite(T, "b", 3, {"b": 3}, "user:1"),
    DocumentWrite(T, "b", 2, {"b": 2}, "user:1"),          # older than the batch's b@3: no-op
])
out["batch"] = [res(r) for r in batch]
out["after_batch"] = [head(T), head(N), journal(T), journal(N), doc(T, "b")]
out["unknown_in_batch"] = code(lambda: project_many([DocumentWrite(T, "c", 1, {}, "user:1"), DocumentWrite("zz.unknown", "c", 1, {}, "user:1")]))
out["after_unknown_batch"] = [head(T), doc(T, "c")]

try:
    with transaction.atomic():
        project(T, "d", 1, {"d": 1}, "user:1")
        raise RuntimeError("caller rolls back")
except RuntimeError:
    pass
out["after_rollback"] = [head(T), doc(T, "d")]

with override_settings(KHALA={"INLINE_PAYLOAD_LIMIT_BYTES": 16}):
    big = project(T, "big", 1, {"pad": "x" * 64}, "user:1")
out["pointer"] = [big.pointer, StreamEvent.objects.get(topic=T, watermark=big.watermark).payload, doc(T, "big")[2]]

page = list_page(T, "user:1", limit=2)
out["list_page"] = [[d["doc_key"] for d in page.documents], page.head_watermark, page.next_cursor is not None]

later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
reports = retention.run_once(now=later, topic=T, batch_size=2)
seq = TopicSequence.objects.get(topic=T)
out["retention"] = [reports[0].deleted, reports[0].batches, seq.pruned_through, seq.last_watermark, journal(T)]
print(json.dumps(out))
"""


def test_portable_write_path_retention_and_hydration_on_sqlite(tmp_path):
    out = run_on_sqlite(tmp_path, _PORTABLE_CHECK, timeout=180)

    # WriteResult fields from `written` on: (written, watermark, pointer)
    assert out["first"] == [True, 1, False]
    assert out["older"] == [False, None, False]  # never backwards, no watermark consumed
    assert out["equal"] == [True, 2, False]  # equal replaces and appends
    head, journal, doc = out["after_single"]
    assert head == 2
    assert journal == [[1, "a", 5], [2, "a", 5]]
    assert doc == [5, 2, {"v": "5b"}]
    assert out["unknown_one"] == ["unknown_topic", None, "topic"]
    assert out["invalid_owner"][0] == "invalid_owner"

    assert out["batch"] == [[True, 3, False], [False, None, False], [True, 1, False], [True, 4, False], [False, None, False]]
    head_t, head_n, journal_t, journal_n, doc_b = out["after_batch"]
    assert (head_t, head_n) == (4, 1)  # the two no-ops gave their watermarks back: no gaps
    assert journal_t == [[1, "a", 5], [2, "a", 5], [3, "b", 1], [4, "b", 3]]
    assert journal_n == [[1, "n", 7]]
    assert doc_b[:2] == [3, 4]
    # A batch naming an unknown topic writes nothing at all, its known topics included.
    assert out["unknown_in_batch"] == ["unknown_topic", 1, "topic"]
    assert out["after_unknown_batch"] == [4, None]
    assert out["after_rollback"] == [4, None]  # the caller's rollback undoes the sink write

    pointer, journal_payload, stored_payload = out["pointer"]
    assert pointer is True and journal_payload is None  # pointer mode: hydrate over HTTP
    assert stored_payload == {"pad": "x" * 64}

    assert out["list_page"] == [["a", "b"], 5, True]

    deleted, batches, pruned_through, last, remaining = out["retention"]
    assert (deleted, batches, pruned_through, last, remaining) == (5, 3, 5, 5, [])


# Several writer threads (each its own SQLite connection) on one topic, single and batch writes.
_CONCURRENT_WRITERS = r"""
import json, threading
import django
django.setup()
from django.db import connection
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.sink import DocumentWrite, project, project_many

T = "runtime.run_summaries"
errors = []

def writer(n):
    try:
        for i in range(20):
            project(T, f"doc-{i % 5}", n * 100 + i + 1, {"writer": n, "i": i}, "user:1")
            project_many([DocumentWrite(T, f"batch-{n}-{i}", 1, {"i": i}, "user:1"),
                          DocumentWrite(T, f"doc-{i % 5}", 0, {"stale": True}, "user:1")])
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

# Runtime commands read before they write (select_for_update is a no-op on SQLite): they must
# queue for the database lock, not fail with "database is locked" (BEGIN IMMEDIATE in settings).
from django.contrib.auth.models import User
from projector.projector import run_doc_key
from runtime.commands import append_run_event, create_run
from runtime.models import Run
owner = User.objects.create(username="writer")
run = create_run(owner)

def appender():
    try:
        for i in range(10):
            append_run_event(run.id, owner, "run.delta", {"i": i})
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [threading.Thread(target=appender) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join(120)
summary = ReadModelDocument.objects.get(topic=T, doc_key=run_doc_key(run.id))
rows = list(StreamEvent.objects.filter(topic=T).order_by("watermark").values_list("watermark", "doc_key", "doc_version"))
docs = {k: (v, w) for k, v, w in ReadModelDocument.objects.filter(topic=T).values_list("doc_key", "doc_version", "watermark")}
newest = {}
for wm, key, version in rows:
    newest[key] = (version, wm)
print(json.dumps({
    "errors": errors,
    "alive": sum(t.is_alive() for t in threads),
    "head": TopicSequence.objects.get(topic=T).last_watermark,
    "watermarks": [r[0] for r in rows],
    "versions_by_doc": {k: [v for _, key, v in rows if key == k] for k in {r[1] for r in rows}},
    "read_models_match_last_journal_row": docs == newest,
    "run": [Run.objects.get(id=run.id).latest_seq, summary.doc_version, summary.payload["event_count"]],
}))
"""


def test_concurrent_writers_on_sqlite_get_gap_free_watermarks_and_never_go_backwards(tmp_path):
    out = run_on_sqlite(tmp_path, _CONCURRENT_WRITERS, timeout=300)
    assert out["errors"] == [] and out["alive"] == 0
    # 4 writers x 20 batches: 20 batch documents each, plus the shared documents' effective writes.
    assert out["watermarks"] == list(range(1, out["head"] + 1))  # unique, gap-free, nothing past the head
    for doc_key, versions in out["versions_by_doc"].items():
        assert versions == sorted(versions), doc_key  # journal order never moves a document backwards
        assert 0 not in versions or not doc_key.startswith("doc-"), doc_key  # the stale batch writes were no-ops
    assert sum(1 for k in out["versions_by_doc"] if k.startswith("batch-")) == 80
    assert out["run"] == [30, 30, 30]  # 3 threads x 10 events, each committed and projected
    assert out["read_models_match_last_journal_row"] is True


def test_the_embedded_server_drains_changes_whose_writer_died_after_commit(embedded_server, tmp_path):
    """`make run` is one command: its daphne drains the projection outbox in-process (no worker)."""
    server, api_token = embedded_server
    status, run = http(server, "POST", "/api/runtime/runs", token=api_token, body={"thread_id": "survivor"})
    assert status == 201, run
    env = embedded_env(tmp_path / "var")
    import sqlite3

    with sqlite3.connect(tmp_path / "var" / "khala.sqlite3", timeout=20) as db:
        [user_id] = db.execute("SELECT owner_id FROM runtime_runs WHERE id = ?", [run["id"]]).fetchone()
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.projector.crashing_writer", f"run_event:{user_id}:{run['id']}:run.started"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert crashed.returncode == 0 and "crashed" in crashed.stdout, crashed.stdout + crashed.stderr
    doc_key = f"runtime/run_summary:{run['id']}"

    def projected_version():
        with sqlite3.connect(tmp_path / "var" / "khala.sqlite3", timeout=20) as db:
            row = db.execute("SELECT doc_version FROM sync_read_models WHERE topic = ? AND doc_key = ?", [RUNS, doc_key]).fetchone()
        return row and row[0]

    # The writer died before its fast path could run: only the server's in-process drain projects it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and projected_version() != 1:
        time.sleep(0.2)
    assert projected_version() == 1

"""Harness of the WebSocket benchmarks (replay, fanout, connections): environment and load client.

Environment: every benchmark runs on its OWN database on the ``DATABASE_URL`` server (default
``postgres://root@127.0.0.1:5432/khala``; the database name is replaced by ``khala_bench_<name>``,
created and migrated here), its own Redis channel prefix and a fresh random signing key, so a
benchmark never touches the test databases of a concurrent ``make test``. Servers are real daphne /
uvicorn processes started with ``tests.support.servers.start_server`` on loopback.

Load client: a minimal Phoenix-v2 ``sync:v1`` client over ``websockets`` (no compression: daphne
does not negotiate permessage-deflate, and uvicorn is started with it off, so both servers send
the same bytes). Frames are parsed with orjson; the client's own cost is part of every figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/khala"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SERVER_KINDS = ("daphne", "uvicorn")
# uvicorn: permessage-deflate off (per-socket compression of small JSON frames costs CPU for
# nothing on loopback and daphne does not offer it), explicit uvloop/httptools.
UVICORN_ARGS = ("--ws-per-message-deflate", "false", "--loop", "uvloop", "--http", "httptools")


# --- environment -------------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise this process's (and its children's) open-file soft limit towards ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bench_database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise SystemExit(f"DATABASE_URL must be PostgreSQL, got {parts.scheme!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/khala_bench_{name}", parts.query, ""))


def _ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    admin = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        name = parts.path.lstrip("/")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup(name: str) -> dict:
    """Point this process at the benchmark's database/prefix/key, set up Django, migrate."""
    database_url = bench_database_url(name)
    _ensure_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    os.environ["KHALA_CHANNEL_PREFIX"] = f"khala_bench_{name}"
    os.environ["KHALA_SIGNING_KEYS"] = f"bench:{secrets.token_urlsafe(48)}"
    os.environ["KHALA_LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    return {"database_url": database_url, "redis_url": os.environ["REDIS_URL"], "channel_prefix": os.environ["KHALA_CHANNEL_PREFIX"]}


def reset_topic(topic: str, **policy) -> None:
    """Empty one topic of the benchmark database (journal, read models, watermark back to 0)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DELETE FROM sync_stream_events WHERE topic = %s", [topic])
        cur.execute("DELETE FROM sync_read_models WHERE topic = %s", [topic])
        sets = ["last_watermark = 0", "pruned_through = 0"] + [f"{k} = %s" for k in policy]
        cur.execute(f"UPDATE sync_topic_sequences SET {', '.join(sets)} WHERE topic = %s", [*policy.values(), topic])
    with connection.cursor() as cur:  # outside a transaction block: refresh planner stats
        cur.execute("ANALYZE sync_stream_events")
        cur.execute("ANALYZE sync_read_models")


def bench_user(username: str = "bench"):
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def mint(user, topics, ttl_seconds: int | None = None) -> str:
    from tokens.issuer import issue_token

    return issue_token(user, scopes=list(topics), ttl_seconds=ttl_seconds).token


def payload_of_size(i: int, size: int = 300) -> dict:
    """A run-summary-like payload whose canonical JSON is ``size`` bytes (± a few)."""
    base = {"run_id": f"run_{i:08d}", "status": "running", "seq": i, "owner_user_id": 1, "latest_event_type": "run.step"}
    pad = size - len(orjson.dumps({**base, "note": ""}, option=orjson.OPT_SORT_KEYS))
    return {**base, "note": "x" * max(pad, 0)}


def start(kind: str, env_info: dict, *, khala: dict | None = None, extra_args=(), env=None):
    from tests.support.servers import start_server

    args = tuple(extra_args) + (UVICORN_ARGS if kind == "uvicorn" else ())
    return start_server(
        kind,
        database_url=env_info["database_url"],
        redis_url=env_info["redis_url"],
        channel_prefix=env_info["channel_prefix"],
        khala=khala,
        env={"KHALA_LOG_LEVEL": "WARNING", **(env or {})},
        extra_args=args,
        startup_timeout=60,
    )


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_profiler(pid: int, out_dir: str, name: str) -> tuple[subprocess.Popen, Path]:
    """``py-spy record`` of ``pid`` (raw collapsed stacks, idle frames dropped) until stopped."""
    out = Path(out_dir) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    proc = subprocess.Popen(
        [str(py_spy), "record", "-p", str(pid), "-r", "250", "--format", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches asynchronously; give it a moment before the measured work
    return proc, out


def stop_profiler(profiler) -> Path:
    import signal as _signal

    proc, out = profiler
    proc.send_signal(_signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return out


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # The box is shared: a load average well above the core count means other work competed
        # with the benchmark, and its figures are pessimistic.
        "loadavg_at_write": os.getloadavg(),
    }


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[index]


def write_result(name: str, result: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    result = {"benchmark": name, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- load client ---------------------------------------------------------------------------------


class SyncSocket:
    """One ``sync:v1`` connection: join, subscribe, then read pushes. Not a general client."""

    def __init__(self, ws):
        self.ws = ws
        self._ref = 0
        self.join_ref: str | None = None

    @classmethod
    async def connect(cls, ws_url: str, *, open_timeout: float = 30.0) -> "SyncSocket":
        import websockets

        ws = await websockets.connect(
            ws_url, compression=None, max_size=None, open_timeout=open_timeout, ping_interval=None, close_timeout=2
        )
        return cls(ws)

    def _next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def push(self, topic: str, event: str, payload: dict) -> str:
        ref = self._next_ref()
        await self.ws.send(orjson.dumps([self.join_ref, ref, topic, event, payload]).decode())
        return ref

    async def call(self, event: str, payload: dict, *, on_push=None, timeout: float = 120.0) -> dict:
        """Push on ``sync:v1`` and wait for its reply; other frames go to ``on_push(frame)``."""
        ref = await self.push("sync:v1", event, payload)
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.001, deadline - time.monotonic()))
            frame = orjson.loads(raw)
            if frame[3] == "phx_reply" and frame[1] == ref:
                return frame[4]
            if on_push is not None:
                on_push(frame)

    async def join(self, payload: dict | None = None) -> dict:
        ref = self._next_ref()
        self.join_ref = ref
        await self.ws.send(orjson.dumps([ref, ref, "sync:v1", "phx_join", payload or {}]).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if frame[3] == "phx_reply" and frame[1] == ref:
                if frame[4]["status"] != "ok":
                    raise RuntimeError(f"join refused: {frame[4]}")
                return frame[4]["response"]

    async def heartbeat(self) -> None:
        """The Phoenix socket heartbeat (what the phoenix JS client sends every 30 s)."""
        await self.ws.send(orjson.dumps([None, self._next_ref(), "phoenix", "heartbeat", {}]).decode())

    async def close(self) -> None:
        await self.ws.close()

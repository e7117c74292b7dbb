"""Harness of the benchmarks: environment (all of them), the paced writer of live updates (fanout,
connections --storm), load-client processes and load client (the WebSocket ones: replay, fanout,
connections).

Environment: every benchmark runs on its OWN database on the ``DATABASE_URL`` server (default
``postgres://root@127.0.0.1:5432/khala``; the database name is replaced by ``khala_bench_<name>``,
created and migrated here), its own Redis channel prefix and a fresh random signing key, so a
benchmark never touches the test databases of a concurrent ``make test``. ``KHALA_BENCH_PREFIX``
(default ``khala_bench``) replaces the ``khala_bench`` part of both names, so two checkouts on one
server can run the same benchmark without emptying each other's topics. Servers are real daphne /
uvicorn processes started with ``tests.support.servers.start_server`` on loopback.

Load client: a minimal Phoenix-v2 ``sync:v1`` client over ``websockets`` (no compression: daphne
does not negotiate permessage-deflate, and uvicorn is started with it off, so both servers send
the same bytes). Frames are parsed with orjson; the client's own cost is part of every figure.

Load-client processes (fanout, connections): the script re-runs itself with ``--client``; the two
sides talk in lines: the client prints ``READY <subscribed> <failed>``, reads commands on stdin
(``MARK``, ``STOP``, ``DONE <watermark>``: the script's own), writes its figures to a JSON file and
prints ``RESULT <path>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
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


def bench_name(name: str) -> str:
    """``name`` plus ``KHALA_BENCH_SUFFIX`` (e.g. ``_a``): benchmarks run by several people on one
    machine then use distinct databases and channel prefixes."""
    return name + os.environ.get("KHALA_BENCH_SUFFIX", "")


def bench_database_url(name: str) -> str:
    name = bench_name(name)
    base = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise SystemExit(f"DATABASE_URL must be PostgreSQL, got {parts.scheme!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{bench_prefix()}_{name}", parts.query, ""))


def bench_prefix() -> str:
    """``KHALA_BENCH_PREFIX`` (default ``khala_bench``): the benchmark's database and channel prefix."""
    return os.environ.get("KHALA_BENCH_PREFIX") or "khala_bench"


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
    os.environ["KHALA_CHANNEL_PREFIX"] = f"{bench_prefix()}_{bench_name(name)}"
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


class PacedWriter:
    """Writes updates to one topic through the real write path (``projector.sink.project``, public
    documents of ~300 bytes) at ``rate`` per second, and keeps each one's commit time.

    The commit time is taken in an ``on_commit`` callback registered before the sink's own, so
    after COMMIT returned and before the hint is published: a receive time minus it is the
    commit→receive latency (same host, same wall clock). ``commits`` maps watermark → commit time.
    Writes are paced on a schedule (slot ``i`` at ``start + i / rate``); a write that starts after
    its slot counts in ``late`` and the next ones follow at once, so a slow commit is caught up.
    ``on_write(watermark, doc_key, payload)`` runs after each commit (the raw fan-out ceiling feeds
    its servers there). Document ``n`` is ``<key_prefix>:<n % 100>`` at version ``n + 1``, ``n``
    counting from ``first``, so successive runs on one topic keep versions increasing.
    """

    def __init__(self, topic: str, rate: float, *, key_prefix: str, first: int = 0, on_write=None):
        if rate <= 0:
            raise ValueError(f"the write rate must be positive, got {rate}")
        self.topic = topic
        self.interval = 1.0 / rate
        self.key_prefix = key_prefix
        self.next = first
        self.on_write = on_write
        self.commits: dict[int, float] = {}
        self.late = 0
        self.seconds = 0.0

    def run(self, count: int | None = None, stopping=None) -> None:
        """Write ``count`` updates, or until ``stopping`` (a ``threading.Event``) is set."""
        from django.db import transaction

        from projector.sink import project

        started = time.monotonic()
        i = 0
        while (count is None or i < count) and not (stopping is not None and stopping.is_set()):
            delay = started + i * self.interval - time.monotonic()
            if delay > 0:
                if stopping is not None:
                    stopping.wait(delay)  # pacing the writer to the requested rate
                    if stopping.is_set():
                        break
                else:
                    time.sleep(delay)  # pacing the writer to the requested rate
            else:
                self.late += 1
            n = self.next
            doc_key = f"{self.key_prefix}:{n % 100}"
            payload = payload_of_size(n)
            stamp = []
            with transaction.atomic():
                transaction.on_commit(lambda: stamp.append(time.time()))  # runs before the sink's hint
                result = project(self.topic, doc_key, n + 1, payload, "", public=True)
            self.commits[result.watermark] = stamp[0]
            if self.on_write is not None:
                self.on_write(result.watermark, doc_key, payload)
            self.next += 1
            i += 1
        self.seconds = time.monotonic() - started


def start(kind: str, env_info: dict, *, khala: dict | None = None, extra_args=(), env=None, root=None):
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
        root=root,
    )


def lower_priority(nice: int):
    """A ``preexec_fn`` that runs a load-generating child below the servers' priority.

    ``os.nice`` alone does not do it: with the kernel's autogroup scheduling on (the default of most
    distributions, ``/proc/sys/kernel/sched_autogroup_enabled``), CPU is shared fairly between
    sessions first, and nice only orders the processes of one session. The servers run in sessions
    of their own (``start_new_session``), so a niced client in the benchmark's session still got an
    equal share against each of them. The child therefore gets a session of its own, and that
    session's autogroup the same nice value (``/proc/self/autogroup``; absent when the kernel has no
    autogroup, where plain nice is enough).
    """

    def lower() -> None:
        os.setsid()
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
        except OSError:
            pass
        os.nice(nice)

    return lower


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


def scrape_metrics(http_url: str, prefixes=("khala_hub_", "khala_live_", "khala_slow_")) -> dict:
    """Khala counters of one server process from ``/metrics`` (sample name with labels -> value)."""
    import urllib.request

    try:
        with urllib.request.urlopen(http_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:
        return {"error": str(exc)}
    found = {}
    for line in text.splitlines():
        if line.startswith(prefixes) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            if name.endswith(("_created", "_bucket")) or "_created{" in name:
                continue
            found[name] = float(value)
    return found


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # The box is shared: a load average well above the core count means other work competed
        # with the benchmark, and its figures are pessimistic.
        "loadavg_at_write": os.getloadavg(),
    }


def postgres_settings() -> dict:
    """The PostgreSQL settings the figures depend on (durability must stay on)."""
    from django.db import connection

    names = ["synchronous_commit", "fsync", "full_page_writes", "shared_buffers", "max_wal_size", "wal_compression"]
    with connection.cursor() as cur:
        cur.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", [names])
        found = dict(cur.fetchall())
        cur.execute("SHOW server_version")
        found["server_version"] = cur.fetchone()[0]
    connection.close()
    return found


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[index]


def write_result(name: str, result: dict, argv=None, script: str | None = None) -> Path:
    """``bench/results/<name>.json``: what ran (``bench/<script or name>.py`` with ``argv``, default
    the process's arguments), where and on which revision, then ``result``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    result = {
        "benchmark": name,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": f"python bench/{script or name}.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_revision": git_revision(),
        **result,
    }
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def server_kinds(servers: str) -> list[str]:
    """The ``--servers`` option (``daphne,uvicorn``) as a list, in its order."""
    return [kind.strip() for kind in servers.split(",") if kind.strip()]


def install_uvloop() -> str:
    """Run this process's asyncio loops on uvloop when it is installed; the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


# --- load-client processes (protocol in the module docstring) ------------------------------------


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The hidden options ``start_clients`` gives every load-client process (scripts add their own)."""
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-sockets", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def start_clients(clients: list, script: str, sockets: int, processes: int, *args: str) -> None:
    """Start ``processes`` load clients of ``script`` sharing ``sockets`` evenly; each gets ``args``,
    its own ``--client-sockets`` and a result file. Appended to ``clients`` one by one, so the
    caller's cleanup kills whatever started even if a later start fails.

    Each client runs in a session of its own, like each server: with the kernel's autogroup
    scheduling on (``/proc/sys/kernel/sched_autogroup_enabled``, the default of most distributions)
    CPU is shared fairly between sessions first. Left in the benchmark's session, all the clients
    and the writer shared one session's share against each server process's. At 2,000 sockets ×
    50/s (``fanout.py``) each client was then on the CPU about 40 % of the time and waiting for it
    about half of the time; their late receive stamps counted as delivery latency, and the writer
    missed a fifth of its slots."""
    tmpdir = tempfile.mkdtemp(prefix=f"khala-{Path(script).stem}-")
    for i in range(processes):
        n = sockets // processes + (1 if i < sockets % processes else 0)
        out = os.path.join(tmpdir, f"client{i}.json")
        clients.append(
            subprocess.Popen(
                [sys.executable, script, "--client", *args, "--client-sockets", str(n), "--out", out],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, start_new_session=True,
            )
        )


def wait_ready(clients: list) -> list[tuple[int, ...]]:
    """Each client's ``READY`` figures (subscribed, failed)."""
    ready = []
    for proc in clients:
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"client did not get ready: {line!r}")
        ready.append(tuple(int(x) for x in line.split()[1:]))
    return ready


def tell_clients(clients: list, line: str) -> None:
    for proc in clients:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def collect_results(clients: list, timeout: float) -> list[dict]:
    """Each client's result file, waiting up to ``timeout`` s for each process to exit after it."""
    results = []
    for proc in clients:
        line = proc.stdout.readline()
        if not line.startswith("RESULT"):
            raise RuntimeError(f"client failed: {line!r}")
        results.append(orjson.loads(Path(line.split(maxsplit=1)[1].strip()).read_bytes()))
        proc.wait(timeout=timeout)
    return results


def kill_clients(clients: list) -> None:
    for proc in clients:
        if proc.poll() is None:
            proc.kill()


def report_ready(subscribed: int, failed: int) -> None:
    """Client side: the ``READY`` line."""
    print(f"READY {subscribed} {failed}", flush=True)


def report_result(out_path: str, result: dict) -> None:
    """Client side: write the figures, then the ``RESULT`` line."""
    Path(out_path).write_bytes(orjson.dumps(result))
    print(f"RESULT {out_path}", flush=True)


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


async def join_and_subscribe(sock: "SyncSocket | RawSyncSocket", topic: str) -> None:
    """Join ``sync:v1`` and subscribe to ``topic``; raise if the subscription is refused."""
    await sock.join()
    reply = await sock.call("sync:subscribe", {"topics": [topic]}, timeout=120)
    if reply["status"] != "ok":
        raise RuntimeError(str(reply))


class RawSyncSocket(asyncio.Protocol):
    """A lean ``sync:v1`` client for fan-out load: a plain asyncio Protocol that parses WebSocket
    frames itself and calls ``on_push(frame, received_at)`` from ``data_received``.

    Why not ``websockets`` here: on this 2-core box the load clients share the CPU with the
    servers they measure. ``websockets`` costs about as much CPU per received frame as the server
    spends sending it (a task switch and several objects per message); this parser is a few
    slicing operations, so the servers get the CPU and the figures describe them, not the client.
    The receive time is taken when the bytes arrive, before any parsing.
    """

    def __init__(self, on_push=None):
        self.on_push = on_push
        self.transport = None
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._handshake: asyncio.Future | None = None
        self._replies: dict[str, asyncio.Future] = {}
        self._ref = 0
        self.join_ref: str | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    # -- connection ------------------------------------------------------------------------
    @classmethod
    async def connect(cls, ws_url: str, on_push=None, timeout: float = 60.0, local_address: str | None = None) -> "RawSyncSocket":
        """``local_address``: the source address to connect from (e.g. ``127.2.0.1``: the server's
        per-IP admission limit counts each loopback address on its own)."""
        import base64 as _b64

        parts = urllib.parse.urlsplit(ws_url)
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_push), parts.hostname, parts.port,
                                   local_addr=(local_address, 0) if local_address else None), timeout
        )
        proto._handshake = loop.create_future()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        key = _b64.b64encode(os.urandom(16)).decode()
        proto.transport.write(
            (
                f"GET {target} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await asyncio.wait_for(proto._handshake, timeout)
        return proto

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed.set()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError("socket closed"))
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("closed during handshake"))

    # -- receiving -------------------------------------------------------------------------
    def data_received(self, data):
        now = time.time()
        buf = self._buf
        buf += data
        if self._handshake is not None and not self._handshake.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self._handshake.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                return
            self._handshake.set_result(None)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length, pos = b1 & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.transport.close()
                return
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                if not fin:
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    payload = b"".join(self._fragments) + payload
                    self._fragments.clear()
                self._on_text(payload, now)

    def _on_text(self, payload: bytes, now: float) -> None:
        frame = orjson.loads(payload)
        if frame[3] == "phx_reply":
            future = self._replies.pop(frame[1], None)
            if future is not None and not future.done():
                future.set_result(frame[4])
                return
        if self.on_push is not None:
            self.on_push(frame, now)

    # -- sending ---------------------------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
        self.transport.write(header + mask + masked)

    def push(self, topic: str, event: str, payload: dict, *, join_ref: str | None) -> str:
        self._ref += 1
        ref = str(self._ref)
        self._send_frame(0x1, orjson.dumps([join_ref, ref, topic, event, payload]))
        return ref

    async def call(self, event: str, payload: dict, timeout: float = 120.0) -> dict:
        future = asyncio.get_running_loop().create_future()
        self._ref += 1
        ref = str(self._ref)
        if event == "phx_join":
            self.join_ref = ref
        self._replies[ref] = future
        self._send_frame(0x1, orjson.dumps([self.join_ref, ref, "sync:v1", event, payload]))
        return await asyncio.wait_for(future, timeout)

    async def join(self, payload: dict | None = None) -> dict:
        reply = await self.call("phx_join", payload or {}, timeout=60)
        if reply["status"] != "ok":
            raise RuntimeError(f"join refused: {reply}")
        return reply["response"]

    def heartbeat(self) -> None:
        self.push("phoenix", "heartbeat", {}, join_ref=None)

    async def close(self) -> None:
        self._send_frame(0x8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(self.closed.wait(), 2)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.close()

"""Soak: two daphne workers, N resuming sockets, a steady writer and a fault every few minutes.

    python bench/soak.py                                  # 30 min, 1,000 sockets, a fault every 2 min
    python bench/soak.py --minutes 4 --sockets 200 --fault-seconds 60

What runs (all real processes on loopback):

- two daphne workers (``bench.harness.start``) on the benchmark's own database (``harness.setup``)
  and a Redis of the soak's own (``tests.support.private_services.RedisServer``), so the soak can
  stop it without touching the shared one;
- load-client processes (``--client``, ``harness.start_clients``) holding ``--sockets`` sockets,
  half on each worker. Each socket joins, subscribes to one topic and, whenever its connection
  ends, reconnects (jittered 0.5–3 s) and resumes from the last watermark it applied. It applies
  an update only if it is the next watermark (a repeat is counted as delivered again, not applied;
  a jump is counted as missing updates). Every socket sends the Phoenix heartbeat every 20 s;
- a writer (4 threads, each its own document keys) ingesting ``--writes-per-second`` documents in
  total through the ingest API (``POST /api/internal/sync/projections``), alternating workers and
  retrying an unanswered or refused write until it is acknowledged. Each document carries its send time, so a client's
  delivery lag is ``received - sent`` (ingest included);
- a fault every ``--fault-seconds``, cycling through: ``kill -9`` of one worker (alternating) and
  its restart on the same port; Redis stopped for 10 s and started again; every connection to the
  benchmark database cut (``pg_terminate_backend``).

Every 10 s it samples each worker's RSS and open fds, the database connections
(``pg_stat_activity`` of the benchmark database, this process's own sampling connection excluded)
and the clients' delivery lag over the last 10 s (p50/p99, merged from per-process histograms).

At the end the writer stops, the journal is read (its watermarks must be 1..head) and every
socket must reach the head; the clients report missing updates (watermarks never applied),
repeats, reconnects and sockets that did not catch up. Targets printed against:

- RSS and fds flat: within each worker process's life (a killed worker restarts as a new
  process), growth from 5 minutes after its start (or half the run, if shorter) to its last
  sample: RSS < 5 %, fds < 10 %;
- database connections <= the bounds: per worker ``DB_POOL_MAX_SIZE`` (the delivery pool), plus
  one per ingest request in flight (Django runs each request in its own thread and, with
  ``CONN_MAX_AGE`` 0, closes its connection when the request ends), i.e. the writer's 4 lanes;
- no missing update, every socket at the head;
- lag p99 back under 1 s within 30 s of each fault's end (resolution: the 10 s samples, by
  receive time);
- lag p99 under 100 ms for the updates SENT from 5 s to 15 s after each fault's end, whenever they
  arrived (clients keep a histogram per second of sending); also printed: the p50/p99 between
  faults by the same measure, and when the receive-time samples fell under 100 ms (not a target:
  the first sample after a fault also holds what was sent during it).

``--report FILE`` prints the verdicts of a saved result again.

Figures go to ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import queue
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

TOPIC = "runtime.run_summaries"
SERVICE_TOKEN = "soak-service-token-" + "s" * 24
SAMPLE_SECONDS = 10.0
SAMPLE_ALIGN_DELAY = 1.5  # the parent samples this long after each 10 s boundary of the clients' windows
REDIS_OUTAGE_SECONDS = 10.0
HEARTBEAT_SECONDS = 20.0
DOC_KEYS = 500
WRITER_LANES = 4
FAULTS = ("kill_worker", "redis_outage", "db_terminate")
# Lag histogram: bucket upper edges in milliseconds, 0.5 ms … ~5 min, 25 % apart (mergeable across
# client processes; a percentile is reported as its bucket's upper edge, so at most 25 % high).
LAG_EDGES_MS = [0.5 * 1.25**i for i in range(62)]
SETTLE_SECONDS = 300.0  # growth is measured from this long after a worker (re)started
TARGET_RSS_GROWTH = 0.05
TARGET_FD_GROWTH = 0.10
TARGET_RECOVERY_S = 30.0
RECOVERED_AFTER_S = 5.0  # the 100 ms target holds for updates sent this long after a fault's end


# ---- lag histograms -----------------------------------------------------------------------------


def lag_bucket(seconds: float) -> int:
    return min(bisect.bisect_left(LAG_EDGES_MS, seconds * 1000.0), len(LAG_EDGES_MS) - 1)


def histogram_percentile(counts: list[int], q: float) -> float | None:
    """Seconds: the upper edge of the bucket holding the ``q``-th percentile (None: no samples)."""
    total = sum(counts)
    if not total:
        return None
    rank = q / 100.0 * total
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return LAG_EDGES_MS[index] / 1000.0
    return LAG_EDGES_MS[-1] / 1000.0


def sparse_histograms(by_second: dict[int, list[int]]) -> dict[str, list[list[int]]]:
    """``{second: [[bucket, count], ...]}`` with the empty buckets left out (JSON keys are strings)."""
    return {str(second): [[b, c] for b, c in enumerate(counts) if c] for second, counts in by_second.items()}


def merge_sparse(into: dict[int, list[int]], sparse: dict[str, list[list[int]]]) -> None:
    for second, pairs in sparse.items():
        histogram = into.setdefault(int(second), [0] * len(LAG_EDGES_MS))
        for bucket, count in pairs:
            histogram[bucket] += count


def sent_window_percentile(by_sent: dict[int, list[int]], start: float, end: float, q: float) -> tuple[float | None, int]:
    """Seconds: the ``q``-th percentile of the lag of the updates SENT in ``[start, end)`` (wall
    clock; whole seconds), and how many there were."""
    window = [0] * len(LAG_EDGES_MS)
    for second, counts in by_sent.items():
        if start <= second and second + 1 <= end:
            window = [a + b for a, b in zip(window, counts)]
    return histogram_percentile(window, q), sum(window)


# ---- client process -----------------------------------------------------------------------------


class Stats:
    def __init__(self):
        self.window = [0] * len(LAG_EDGES_MS)  # by receive time: the current 10 s window
        self.by_sent: dict[int, list[int]] = {}  # by send time: wall-clock second -> histogram

    def record(self, sent: float, received_at: float) -> None:
        bucket = lag_bucket(received_at - sent)
        self.window[bucket] += 1
        second = int(sent)
        histogram = self.by_sent.get(second)
        if histogram is None:
            histogram = self.by_sent[second] = [0] * len(LAG_EDGES_MS)
        histogram[bucket] += 1


class Resumer:
    """One socket that keeps itself subscribed and applies updates in watermark order."""

    def __init__(self, url: str, stats: Stats, stopping: asyncio.Event):
        self.url = url
        self.stats = stats
        self.stopping = stopping
        self.applied = 0
        self.repeats = 0
        self.missing = 0
        self.gaps: list = []
        self.reconnects = 0
        self.subscribed = asyncio.Event()
        self.failed: str | None = None
        self.sock = None

    def on_push(self, frame, received_at: float) -> None:
        if frame[3] != "sync:update_batch":
            return
        for update in frame[4]["updates"]:
            if update["topic"] != TOPIC:
                continue
            watermark = update["watermark"]
            if watermark <= self.applied:
                self.repeats += 1  # at-least-once: delivered again after a resume, not applied
                continue
            if watermark != self.applied + 1:
                self.missing += watermark - self.applied - 1
                if len(self.gaps) < 10:
                    self.gaps.append((self.applied, watermark))
            self.applied = watermark
            sent = (update.get("payload") or {}).get("t")
            if sent is not None:
                self.stats.record(sent, received_at)

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sock = sock = await harness.RawSyncSocket.connect(self.url, self.on_push, timeout=30)
                try:
                    await sock.join()
                    payload = {"topics": [TOPIC]}
                    if self.applied:
                        payload["resume_after"] = [{"topic": TOPIC, "watermark": self.applied}]
                    reply = await sock.call("sync:subscribe", payload, timeout=120)
                    if reply["status"] != "ok":
                        raise RuntimeError(f"subscribe refused: {reply['response']}")
                    self.subscribed.set()
                    while not sock.closed.is_set() and not self.stopping.is_set():
                        try:
                            await asyncio.wait_for(sock.closed.wait(), HEARTBEAT_SECONDS)
                        except asyncio.TimeoutError:
                            sock.heartbeat()
                finally:
                    if sock.transport is not None:
                        sock.transport.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a worker killed, restarting, or refusing during an outage
                self.failed = f"{type(exc).__name__}: {exc}"[:200]
            if self.stopping.is_set():
                return
            self.reconnects += 1
            await asyncio.sleep(random.uniform(0.5, 3.0))


async def client_main(args) -> None:
    harness.install_uvloop()
    urls = args.urls.split(",")
    stats = Stats()
    stopping = asyncio.Event()
    sockets = [Resumer(urls[i % len(urls)], stats, stopping) for i in range(args.client_sockets)]  # half on each worker
    tasks = [asyncio.create_task(s.run()) for s in sockets]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in sockets)), 300)
    except asyncio.TimeoutError:
        pass
    harness.report_ready(sum(s.subscribed.is_set() for s in sockets), sum(not s.subscribed.is_set() for s in sockets))

    async def sampler():
        while True:  # windows aligned on the wall clock, so every process's window is the same 10 s
            await asyncio.sleep(SAMPLE_SECONDS - time.time() % SAMPLE_SECONDS)
            window, stats.window = stats.window, [0] * len(LAG_EDGES_MS)
            by_sent, stats.by_sent = stats.by_sent, {}
            line = {"at": time.time(), "lag_histogram": window, "lag_by_sent": sparse_histograms(by_sent),
                    "reconnects": sum(s.reconnects for s in sockets),
                    "missing": sum(s.missing for s in sockets)}
            print("SAMPLE " + json.dumps(line), flush=True)

    sampling = asyncio.create_task(sampler())
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)  # "DONE <head>"
    head = int(line.split()[1])
    deadline = time.monotonic() + args.catch_up_seconds
    while time.monotonic() < deadline and any(s.applied < head for s in sockets):
        await asyncio.sleep(0.5)
    stopping.set()
    sampling.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    harness.report_result(args.out, {
        "sockets": len(sockets),
        "head": head,
        "behind": sum(s.applied < head for s in sockets),
        "missing": sum(s.missing for s in sockets),
        "sockets_with_missing": sum(s.missing > 0 for s in sockets),
        "gaps": [g for s in sockets for g in s.gaps][:20],
        "repeats": sum(s.repeats for s in sockets),
        "reconnects": sum(s.reconnects for s in sockets),
        "last_errors": sorted({s.failed for s in sockets if s.failed})[:5],
    })


# ---- writer -------------------------------------------------------------------------------------


def http_post(url: str, body: dict, timeout: float = 10.0) -> int | None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {SERVICE_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


class Writer:
    """``rate`` acknowledged writes per second in total from ``lanes`` threads (each its own document
    keys, paced on a schedule so a slow or refused write is followed by a quicker one), alternating
    workers, retrying a write until it is acknowledged. One lane alone cannot keep 20/s when an
    ingest takes longer than 50 ms on a loaded machine."""

    def __init__(self, urls: list[str], owner: str, rate: float, lanes: int = WRITER_LANES):
        self.urls = urls
        self.owner = owner
        self.interval = lanes / rate
        self.acked = 0
        self.failed_attempts = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._lane, args=(lane,), daemon=True) for lane in range(lanes)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def _lane(self, lane: int) -> None:
        versions: dict[str, int] = {}
        next_at = time.monotonic() + random.uniform(0, self.interval)
        attempt = lane
        written = 0
        while not self.stopping.is_set():
            key = f"soak/{lane}/{written % DOC_KEYS}"
            version = versions.get(key, 0) + 1
            # One body for every attempt, so its lag counts from the first. A retry of a write whose
            # answer was lost (a worker killed after the commit) is the same document at the same
            # version, which the sink replaces and appends again by design: the journal may then
            # hold a few more rows than acknowledged writes, all of them delivered.
            body = {"topic": TOPIC, "doc_key": key, "doc_version": version, "owner": self.owner,
                    "payload": {"t": time.time(), "n": written}}
            while not self.stopping.is_set():
                attempt += 1
                if http_post(self.urls[attempt % len(self.urls)] + "/api/internal/sync/projections", body) == 200:
                    break
                with self.lock:
                    self.failed_attempts += 1
                self.stopping.wait(0.2)
            else:
                return
            versions[key] = version
            written += 1
            with self.lock:
                self.acked += 1
            next_at = max(next_at + self.interval, time.monotonic() - 1.0)  # catch up at most 1 s
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


# ---- the soak -----------------------------------------------------------------------------------


class ClientLines(threading.Thread):
    """Reads one client process's stdout: SAMPLE lines to ``samples``, the others to ``lines``."""

    def __init__(self, proc, samples: queue.Queue):
        super().__init__(daemon=True)
        self.proc = proc
        self.samples = samples
        self.lines: queue.Queue = queue.Queue()

    def run(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("SAMPLE "):
                self.samples.put(json.loads(line[7:]))
            else:
                self.lines.put(line)
        self.lines.put("")

    def next_line(self, timeout: float) -> str:
        return self.lines.get(timeout=timeout)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Soak:
    def __init__(self, args):
        from tests.support.private_services import RedisServer, free_port

        self.args = args
        self.redis = RedisServer()
        self.redis.start()
        self.env = {**ENV, "redis_url": self.redis.url}
        self.ports = [free_port(), free_port()]
        self.khala = {"SERVICE_TOKEN": SERVICE_TOKEN, "TOKEN_TTL_MAX_SECONDS": TOKEN_TTL}
        self.workers = [None, None]
        for index in range(2):
            self.workers[index] = self.start_worker(index)
        self.faults: list[dict] = []
        self.fault_lock = threading.Lock()

    def start_worker(self, index: int):
        from tests.support.servers import start_server

        return start_server(
            "daphne", database_url=self.env["database_url"], redis_url=self.env["redis_url"],
            channel_prefix=self.env["channel_prefix"], khala=self.khala, env={"KHALA_LOG_LEVEL": "WARNING"},
            port=self.ports[index], startup_timeout=90,
        )

    def db_connections(self, conn) -> int:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        return int(row[0])

    def inject(self, kind: str, number: int) -> None:
        started = time.time()
        detail = ""
        if kind == "kill_worker":
            index = (number // len(FAULTS)) % 2
            self.workers[index].kill()
            self.workers[index] = self.start_worker(index)
            detail = f"worker {index} killed (-9) and restarted"
        elif kind == "redis_outage":
            self.redis.stop()
            time.sleep(REDIS_OUTAGE_SECONDS)  # the outage itself (a duration, not a wait for a condition)
            self.redis.start()
            detail = f"Redis stopped {REDIS_OUTAGE_SECONDS:.0f} s"
        elif kind == "db_terminate":
            import psycopg

            with psycopg.connect(self.env["database_url"], autocommit=True) as conn:
                cut = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()[0]
            detail = f"{cut} database connections terminated"
        with self.fault_lock:
            self.faults.append({"kind": kind, "started": started, "ended": time.time(), "detail": detail})

    def close(self) -> None:
        for worker in self.workers:
            if worker is not None and worker.alive():
                worker.stop()
        self.redis.close()


def run(args) -> dict:
    import psycopg

    soak = Soak(args)
    clients: list = []
    readers: list[ClientLines] = []
    samples_in: queue.Queue = queue.Queue()
    writer = None
    try:
        ws_urls = ",".join(w.ws_url(token=TOKEN) for w in soak.workers)
        processes = max(1, min(args.client_processes, args.sockets))
        harness.start_clients(clients, __file__, args.sockets, processes, "--urls", ws_urls,
                              "--catch-up-seconds", str(args.catch_up_seconds))
        for proc in clients:
            reader = ClientLines(proc, samples_in)
            reader.start()
            readers.append(reader)
        ready = [reader.next_line(timeout=600) for reader in readers]
        if not all(line.startswith("READY") for line in ready):
            raise RuntimeError(f"clients did not get ready: {ready}")
        subscribed = sum(int(line.split()[1]) for line in ready)
        print(f"{subscribed}/{args.sockets} sockets subscribed; writing {args.writes_per_second}/s for {args.minutes} min", flush=True)

        writer = Writer([w.http_url for w in soak.workers], OWNER, args.writes_per_second)
        writer.start()
        started = time.time()
        end = started + args.minutes * 60
        samples: list[dict] = []
        fault_thread = None
        fault_number = 0
        next_fault = started + args.fault_seconds
        pending_client_samples: list[dict] = []
        lag_by_sent: dict[int, list[int]] = {}  # wall-clock second of sending -> lag histogram
        with psycopg.connect(soak.env["database_url"], autocommit=True) as conn:
            # just after a wall-clock multiple of 10 s: each client process has printed that window
            next_sample = started - started % SAMPLE_SECONDS + SAMPLE_SECONDS + SAMPLE_ALIGN_DELAY
            while True:
                now = time.time()
                if now >= next_fault and now < end - 5 and (fault_thread is None or not fault_thread.is_alive()):
                    kind = FAULTS[fault_number % len(FAULTS)]
                    print(f"[{now - started:6.0f}s] fault: {kind}", flush=True)
                    fault_thread = threading.Thread(target=soak.inject, args=(kind, fault_number), daemon=True)
                    fault_thread.start()
                    fault_number += 1
                    next_fault += args.fault_seconds
                if now >= next_sample:
                    while not samples_in.empty():
                        pending_client_samples.append(samples_in.get())
                    window = [0] * len(LAG_EDGES_MS)
                    used = [s for s in pending_client_samples if s["at"] <= now]
                    pending_client_samples = [s for s in pending_client_samples if s["at"] > now]
                    for s in used:
                        window = [a + b for a, b in zip(window, s["lag_histogram"])]
                        merge_sparse(lag_by_sent, s.get("lag_by_sent", {}))
                    try:
                        db = soak.db_connections(conn)
                    except psycopg.Error:
                        conn = psycopg.connect(soak.env["database_url"], autocommit=True)  # cut by our own fault
                        db = soak.db_connections(conn)
                    sample = {
                        "t": round(now - started, 1),
                        "rss_mb": [round(harness.proc_rss_bytes(w.pid) / 2**20, 1) if w.alive() else None for w in soak.workers],
                        "fds": [fd_count(w.pid) if w.alive() else None for w in soak.workers],
                        "worker_pids": [w.pid for w in soak.workers],
                        "db_connections": db,
                        "lag_p50_s": histogram_percentile(window, 50),
                        "lag_p99_s": histogram_percentile(window, 99),
                        "updates_in_window": sum(window),
                        "client_samples": len(used),
                        "writes_acked": writer.acked,
                        "missing_so_far": sum(s["missing"] for s in used[-processes:]) if used else None,
                        "loadavg_1m": os.getloadavg()[0],
                    }
                    samples.append(sample)
                    print(f"[{sample['t']:6.0f}s] rss {sample['rss_mb']} MB fds {sample['fds']} db {db} "
                          f"lag p50 {fmt(sample['lag_p50_s'])} p99 {fmt(sample['lag_p99_s'])} "
                          f"updates {sample['updates_in_window']} writes {writer.acked} load {sample['loadavg_1m']:.1f}", flush=True)
                    next_sample += SAMPLE_SECONDS
                if now >= end and (fault_thread is None or not fault_thread.is_alive()):
                    break
                time.sleep(0.2)  # the loop's tick: faults and samples are due on the wall clock
        writer.stop()

        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SELECT watermark FROM sync_stream_events WHERE topic = %s ORDER BY watermark", [TOPIC])
            journal = [row[0] for row in cur.fetchall()]
        connection.close()
        head = journal[-1] if journal else 0
        harness.tell_clients(clients, f"DONE {head}")
        results = []
        for reader in readers:
            line = reader.next_line(timeout=args.catch_up_seconds + 120)
            if not line.startswith("RESULT"):
                raise RuntimeError(f"client failed: {line!r}")
            results.append(json.loads(Path(line.split(maxsplit=1)[1].strip()).read_text()))
        for proc in clients:
            proc.wait(timeout=60)
        while not samples_in.empty():  # windows printed after the last sample was taken
            pending_client_samples.append(samples_in.get())
        for s in pending_client_samples:
            merge_sparse(lag_by_sent, s.get("lag_by_sent", {}))
        return summarize(args, soak, samples, journal, results, writer, subscribed, started, lag_by_sent)
    finally:
        if writer is not None and writer.is_alive():
            writer.stop()
        harness.kill_clients(clients)
        soak.close()


def fmt(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def summarize(args, soak: Soak, samples, journal, results, writer, subscribed, started, lag_by_sent) -> dict:
    head = journal[-1] if journal else 0
    pool = int(soak.khala.get("DB_POOL_MAX_SIZE") or DB_POOL_MAX_SIZE)
    faults = [{**f, "started": round(f["started"] - started, 1), "ended": round(f["ended"] - started, 1)} for f in soak.faults]
    totals = {k: sum(r[k] for r in results) for k in ("sockets", "behind", "missing", "sockets_with_missing", "repeats", "reconnects")}
    result = {
        "parameters": {"minutes": args.minutes, "sockets": args.sockets, "writes_per_second": args.writes_per_second,
                       "fault_seconds": args.fault_seconds, "client_processes": args.client_processes,
                       "sample_seconds": SAMPLE_SECONDS, "redis_outage_seconds": REDIS_OUTAGE_SECONDS},
        "subscribed_at_start": subscribed,
        "writes_acked": writer.acked,
        "writes_per_second_achieved": round(writer.acked / (args.minutes * 60), 1),
        "write_attempts_failed": writer.failed_attempts,
        "journal_head": head,
        "journal_contiguous": journal == list(range(1, head + 1)),
        "clients": totals,
        "client_details": results,
        "db_connection_bound": 2 * pool + WRITER_LANES,
        "db_connections_max": max((s["db_connections"] for s in samples), default=None),
        "faults": faults,
        "samples": samples,
        "started_at": started,  # wall clock; the faults' and samples' times are relative to it
        # wall-clock second -> [[bucket, count], ...]: the lag of the updates sent in that second
        "lag_by_sent_second": sparse_histograms(dict(sorted(lag_by_sent.items()))),
    }
    return evaluate(result, args.minutes)


def worker_lives(samples, index: int) -> list[list[dict]]:
    """The samples of worker ``index`` split by process: a worker killed and restarted is a new
    process whose memory starts afresh, so growth is measured within each life."""
    lives: list[list[dict]] = []
    for sample in samples:
        pid = sample["worker_pids"][index]
        if not lives or lives[-1][-1]["worker_pids"][index] != pid:
            lives.append([])
        lives[-1].append(sample)
    return lives


def life_growth(life: list[dict], key: str, index: int, settle_s: float) -> dict | None:
    """Growth of ``key`` from ``settle_s`` after the life's first sample to its last one, or None
    when the life is shorter than that (nothing settled to compare)."""
    baseline = next((s for s in life if s["t"] >= life[0]["t"] + settle_s), None)
    last = life[-1]
    if baseline is None or baseline is last or baseline[key][index] in (None, -1, 0) or last[key][index] in (None, -1):
        return None
    return {"pid": last["worker_pids"][index], "from_t": baseline["t"], "to_t": last["t"],
            "growth": (last[key][index] - baseline[key][index]) / baseline[key][index]}


def evaluate(result: dict, minutes: float) -> dict:
    """The per-target verdicts of a soak result (also ``--report FILE`` on a saved one)."""
    samples = result["samples"]
    settle = min(SETTLE_SECONDS, minutes * 60 / 2)
    growth = {}
    for index in range(2):
        for key in ("rss_mb", "fds"):
            growth[f"{key}_worker{index}"] = [g for life in worker_lives(samples, index) if (g := life_growth(life, key, index, settle))]
    by_sent: dict[int, list[int]] = {}
    merge_sparse(by_sent, result.get("lag_by_sent_second") or {})
    for fault in result["faults"]:
        after = [s for s in samples if s["t"] >= fault["ended"] and s["lag_p99_s"] is not None]
        for name, bound in (("p99_under_1s_after_s", 1.0), ("p99_under_100ms_after_s", 0.1)):
            back = next((s for s in after if s["lag_p99_s"] < bound), None)
            fault[name] = None if back is None else round(back["t"] - fault["ended"], 1)
        if by_sent:
            # The target exactly: the updates sent from 5 s after the fault's end (for the
            # next 10 s), whenever they were received.
            start = result["started_at"] + fault["ended"] + RECOVERED_AFTER_S
            p99, count = sent_window_percentile(by_sent, start, start + SAMPLE_SECONDS, 99)
            fault["p99_sent_5_to_15s_after_end_s"] = p99
            fault["updates_sent_5_to_15s_after_end"] = count
    totals = result["clients"]
    checks = {
        "journal_contiguous": result.get("journal_contiguous", result.get("checks", {}).get("journal_contiguous")),
        "no_missing_updates": totals["missing"] == 0,
        "every_socket_at_head": totals["behind"] == 0,
        "db_connections_within_pools": bool(samples) and result["db_connections_max"] <= result["db_connection_bound"],
    }
    for name, lives in growth.items():
        limit = TARGET_RSS_GROWTH if name.startswith("rss") else TARGET_FD_GROWTH
        checks[f"{name}_growth_under_{limit * 100:.0f}pct_in_every_life"] = (
            all(g["growth"] < limit for g in lives) if lives else None)
    checks["lag_p99_back_under_1s_within_30s_of_each_fault"] = all(
        f["p99_under_1s_after_s"] is not None and f["p99_under_1s_after_s"] <= TARGET_RECOVERY_S for f in result["faults"])
    # The 100 ms target is judged by send time (below). The receive-time samples cannot judge it:
    # the first sample after a fault's end also holds the updates sent DURING the fault and
    # delivered after it, whatever happens once the fault is over; their figure
    # (``p99_under_100ms_after_s``) is kept for the report. A result without send-time histograms
    # (older runs) is judged by the samples, as it was recorded.
    if not by_sent:
        checks["lag_p99_back_under_100ms_by_the_next_sample_after_each_fault"] = all(
            f["p99_under_100ms_after_s"] is not None and f["p99_under_100ms_after_s"] <= SAMPLE_SECONDS for f in result["faults"])
    else:
        checks["lag_p99_under_100ms_for_updates_sent_5s_after_each_fault"] = all(
            f["updates_sent_5_to_15s_after_end"] and f["p99_sent_5_to_15s_after_end_s"] < 0.1 for f in result["faults"])
        # Between faults: every second sent outside [fault start, fault end + 15 s).
        quiet = {second: h for second, h in by_sent.items()
                 if not any(result["started_at"] + f["started"] - 1 <= second < result["started_at"] + f["ended"] + RECOVERED_AFTER_S + SAMPLE_SECONDS
                            for f in result["faults"])}
        p50, _ = sent_window_percentile(quiet, 0, float("inf"), 50)
        p99, updates = sent_window_percentile(quiet, 0, float("inf"), 99)
        result["lag_between_faults"] = {"p50_s": p50, "p99_s": p99, "updates": updates}
    result["settle_seconds"] = settle
    result["growth"] = growth
    result["checks"] = checks
    return result


def print_report(result: dict) -> None:
    print()
    print(f"{'t(s)':>6} {'rss w0/w1 MB':>16} {'fds w0/w1':>11} {'db':>4} {'p50':>8} {'p99':>8} {'updates':>8} {'load':>5}")
    for s in result["samples"]:
        rss = "/".join("-" if v is None else f"{v:.0f}" for v in s["rss_mb"])
        fds = "/".join("-" if v is None else str(v) for v in s["fds"])
        print(f"{s['t']:>6.0f} {rss:>16} {fds:>11} {s['db_connections']:>4} {fmt(s['lag_p50_s']):>8} {fmt(s['lag_p99_s']):>8} "
              f"{s['updates_in_window']:>8} {s['loadavg_1m']:>5.1f}")
    print()
    for fault in result["faults"]:
        back, fast = fault["p99_under_1s_after_s"], fault["p99_under_100ms_after_s"]
        print(f"fault {fault['kind']:<13} at {fault['started']:>6.0f}s–{fault['ended']:>4.0f}s ({fault['detail']}): "
              f"p99 < 1 s again {'never' if back is None else f'{back:.0f} s'} after its end (target <= {TARGET_RECOVERY_S:.0f} s), "
              f"< 100 ms {'never' if fast is None else f'after {fast:.0f} s'}"
              + (f"; updates sent 5–15 s after its end: p99 {fmt(fault['p99_sent_5_to_15s_after_end_s'])} "
                 f"({fault['updates_sent_5_to_15s_after_end']})" if "p99_sent_5_to_15s_after_end_s" in fault else ""))
    if "lag_between_faults" in result:
        quiet = result["lag_between_faults"]
        print(f"between faults (by send time): p50 {fmt(quiet['p50_s'])} p99 {fmt(quiet['p99_s'])} ({quiet['updates']} updates)")
    c = result["clients"]
    print(f"\nwrites acked {result['writes_acked']} ({result['writes_per_second_achieved']}/s) (failed attempts {result['write_attempts_failed']}), journal head {result['journal_head']}")
    print(f"sockets {c['sockets']}: behind {c['behind']}, missing updates {c['missing']} (on {c['sockets_with_missing']} sockets), "
          f"repeats (delivered again, not applied) {c['repeats']}, reconnects {c['reconnects']}")
    print(f"db connections max {result['db_connections_max']} (bound {result['db_connection_bound']} = 2 workers x DB_POOL_MAX_SIZE + {WRITER_LANES} ingest requests in flight)")
    print(f"growth within each worker life, from {result['settle_seconds']:.0f} s after its (re)start to its last sample "
          f"(targets: RSS < {TARGET_RSS_GROWTH * 100:.0f} %, fds < {TARGET_FD_GROWTH * 100:.0f} %):")
    for name, lives in result["growth"].items():
        figures = ", ".join(f"{g['growth'] * 100:+.1f}% (pid {g['pid']}, {g['from_t']:.0f}–{g['to_t']:.0f} s)" for g in lives)
        print(f"  {name}: {figures or 'no life long enough'}")
    print()
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else ('n/a ' if ok is None else 'FAIL')}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--writes-per-second", type=float, default=20.0)
    parser.add_argument("--fault-seconds", type=float, default=120.0, help="a fault every this many seconds")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--catch-up-seconds", type=float, default=120.0, help="how long sockets may take to reach the head at the end")
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--report", metavar="FILE", help="print the verdicts of a saved result (e.g. bench/results/soak.json) and exit")
    harness.add_client_options(parser)
    args = parser.parse_args()
    if args.report:
        with open(args.report) as saved:
            result = json.load(saved)
        print_report(evaluate(result, result["parameters"]["minutes"]))
        return
    if args.client:
        asyncio.run(client_main(args))
        return

    global ENV, TOKEN, OWNER, TOKEN_TTL, DB_POOL_MAX_SIZE
    harness.raise_nofile(args.sockets * 2 + 1024)
    TOKEN_TTL = int(args.minutes * 60) + 1800  # no socket reaches its token's expiry during the run
    os.environ["KHALA_SETTINGS_JSON"] = json.dumps({"TOKEN_TTL_MAX_SECONDS": TOKEN_TTL})
    ENV = harness.setup("soak")
    harness.reset_topic(TOPIC)
    from khala_project.conf import khala_setting

    DB_POOL_MAX_SIZE = int(khala_setting("DB_POOL_MAX_SIZE"))
    user = harness.bench_user("soak")
    TOKEN = harness.mint(user, [TOPIC], ttl_seconds=TOKEN_TTL)
    OWNER = f"user:{user.id}"
    from django.db import connection

    connection.close()
    result = run(args)
    print_report(result)
    path = harness.write_result("soak", result)
    print(f"\nwrote {path}")


ENV: dict = {}
TOKEN = OWNER = ""
TOKEN_TTL = 0
DB_POOL_MAX_SIZE = 4

if __name__ == "__main__":
    main()

"""Idle connections: 5,000 subscribed sockets on ONE worker; database connections, RSS, heartbeat cost.

    .venv/bin/python bench/connections.py [--sockets 5000] [--client-processes 2] [--idle 45]
                                          [--servers daphne,uvicorn]

For each server kind (daphne, then uvicorn, in the same run) one server process with the default
settings (``DB_POOL_MAX_SIZE`` 4, server heartbeat every 15 s, idle timeout 60 s) on a Postgres at
its default ``max_connections`` (the figure is read and reported). Load-client processes (separate
from the server) open ``--sockets`` sockets; each joins ``sync:v1``, subscribes to one topic, then
stays idle except for the Phoenix socket heartbeat every 25 s (the phoenix JS client's is 30 s;
without any frame the server closes a socket after 60 s).

Measured:
- database connections of the benchmark database (``pg_stat_activity``, every backend except this
  process's own), sampled every 0.25 s from before the first connect to the end: the maximum, and
  the maximum by ``application_name``. A socket never holding a connection means this stays at the
  worker's pool bound however many sockets there are (5,000 sockets vs ``max_connections`` 100);
- server RSS: after a warm-up (a few sockets opened and closed) and with all sockets subscribed;
  per socket = (subscribed − warm) / sockets. Target < 32 KiB;
- with ``--tracemalloc``: where that memory goes. The server runs with ``KHALA_TRACEMALLOC_DIR``
  (``khala_project.heap_snapshots``) and is sent SIGUSR2 after the warm-up and again after the idle
  window; the JSON gets the difference of the two snapshots per socket, by file and by allocating
  line (Python allocations only: the kernel's socket buffers and the allocator's own overhead are
  not in it). tracemalloc slows the server and inflates its RSS: take RSS figures from a run
  without it;
- heartbeat cost: server CPU seconds over the idle window, minus the worker's own no-socket CPU
  (measured for ``--baseline`` s after the warm-up), divided by the heartbeats in the window
  (server ``sync:heartbeat`` pushes counted by the clients + Phoenix heartbeats answered); and
  the idle CPU share of one core.

Prints a table and writes ``bench/results/connections.json``. Bounded: every phase has a deadline.

``--storm`` runs the reconnect-storm scenario instead (``bench/connections_storm.py``): N SDK
clients on 2 workers drop their sockets at once and rejoin through the socket admission limits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import connections_storm, harness  # noqa: E402

TARGET_RSS_PER_SOCKET_BYTES = 32 * 1024  # issue 16 (was 40 KiB)
CLIENT_HEARTBEAT_SECONDS = 25.0


# --- client process ------------------------------------------------------------------------------


async def client_main(url: str, sockets: int, token: str, topic: str, out_path: str) -> None:
    limiter = asyncio.Semaphore(100)
    conns: list[harness.SyncSocket] = []
    failures: list[str] = []
    counts = {"server_heartbeats": 0, "phoenix_replies": 0, "other": 0, "closed": 0}
    readers: list[asyncio.Task] = []

    async def open_one() -> None:
        async with limiter:
            try:
                sock = await harness.SyncSocket.connect(url, open_timeout=60)
                await harness.join_and_subscribe(sock, topic)
                conns.append(sock)
                readers.append(asyncio.create_task(reader(sock)))  # read from the start, like a client
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    async def reader(sock: harness.SyncSocket) -> None:
        try:
            async for raw in sock.ws:
                frame = orjson.loads(raw)
                if frame[3] == "sync:heartbeat":
                    counts["server_heartbeats"] += 1
                elif frame[2] == "phoenix" and frame[3] == "phx_reply":
                    counts["phoenix_replies"] += 1
                else:
                    counts["other"] += 1
        except Exception:
            pass
        counts["closed"] += 1

    async def heartbeats() -> None:
        # Spread evenly over the interval, like many independent phoenix clients, kept on the clock
        # (a sleep per socket overshoots on a loaded box and the cycle drifted past the server's
        # 60 s idle timeout), and running from the first socket on: connecting 5,000 sockets can
        # take longer than the idle timeout, and the first ones must not be closed meanwhile.
        while True:
            order = list(conns)
            random.shuffle(order)
            started = time.monotonic()
            for i, sock in enumerate(order):
                delay = started + i * CLIENT_HEARTBEAT_SECONDS / len(order) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await sock.heartbeat()
                except Exception:
                    pass
            await asyncio.sleep(max(started + CLIENT_HEARTBEAT_SECONDS - time.monotonic(), 0))

    beat = asyncio.create_task(heartbeats())
    await asyncio.gather(*(open_one() for _ in range(sockets)))
    harness.report_ready(len(conns), len(failures))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "MARK": start of the idle window
    mark = dict(counts)
    print("MARKED", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "STOP"
    window = {k: counts[k] - mark[k] for k in counts}
    beat.cancel()
    for c in conns:
        try:
            await asyncio.wait_for(c.close(), 2)
        except Exception:
            pass
    for r in readers:
        r.cancel()
    harness.report_result(
        out_path,
        {"subscribed": len(conns), "failed": len(failures), "failures": failures[:20], "window": window, "cpu_seconds": time.process_time()},
    )


# --- orchestrator -------------------------------------------------------------------------------


class DbSampler(threading.Thread):
    """Samples pg_stat_activity of the benchmark database every ``interval`` seconds."""

    def __init__(self, database_url: str, interval: float = 0.25):
        super().__init__(daemon=True)
        self.database_url = database_url
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int, dict]] = []

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, application_name="khala-bench-sampler") as conn:
            while not self.stop_event.is_set():
                rows = conn.execute(
                    "SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
                ).fetchall()
                by_app = {app or "(none)": n for app, n in rows}
                self.samples.append((time.monotonic(), sum(by_app.values()), by_app))
                self.stop_event.wait(self.interval)

    def max_between(self, start: float, end: float, *, exclude_prefix: str | None = None) -> tuple[int, dict]:
        """The peak count between ``start`` and ``end`` (monotonic), and the peak per application;
        ``exclude_prefix``: leave out the connections whose application name starts with it."""
        peak, by_app = 0, {}
        for t, total, apps in self.samples:
            if start <= t <= end:
                if exclude_prefix is not None:
                    apps = {app: n for app, n in apps.items() if not app.startswith(exclude_prefix)}
                    total = sum(apps.values())
                peak = max(peak, total)
                for app, n in apps.items():
                    by_app[app] = max(by_app.get(app, 0), n)
        return peak, by_app


def heap_snapshot(server, directory: str, number: int):
    """Ask the server for its ``number``-th tracemalloc snapshot and load it."""
    import os
    import signal
    import tracemalloc

    path = Path(directory) / f"{server.pid}-{number}.snapshot"
    os.kill(server.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 300
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no heap snapshot {path}")
        time.sleep(0.2)  # waiting for the server's signal handler to write it
    return tracemalloc.Snapshot.load(str(path))


def heap_breakdown(before, after, sockets: int, top: int = 25) -> dict:
    """Python allocations per socket between two snapshots, by file and by allocating line."""
    def rows(key_type):
        stats = after.compare_to(before, key_type)
        out = []
        for stat in stats[:top]:
            frame = stat.traceback[0]
            out.append({
                "where": f"{frame.filename}:{frame.lineno}" if key_type == "lineno" else frame.filename,
                "bytes_per_socket": round(stat.size_diff / max(sockets, 1), 1),
                "blocks_per_socket": round(stat.count_diff / max(sockets, 1), 2),
            })
        return out

    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {"traced_bytes_per_socket": round(total / max(sockets, 1), 1), "by_file": rows("filename"), "by_line": rows("lineno")}


def run_kind(kind: str, env: dict, args, user, topic: str) -> dict:
    import tempfile

    heap_dir = tempfile.mkdtemp(prefix="khala-heap-") if args.tracemalloc else None
    server = harness.start(kind, env, khala=args.khala, env={"KHALA_TRACEMALLOC_DIR": heap_dir} if heap_dir else None)
    heap = None
    clients = []
    sampler = DbSampler(env["database_url"])
    sampler.start()
    try:
        token = harness.mint(user, [topic])
        url = server.ws_url(token=token)

        async def warm_up():
            socks = []
            for _ in range(20):
                s = await harness.SyncSocket.connect(url)
                await s.join()
                await s.call("sync:subscribe", {"topics": [topic]})
                socks.append(s)
            for s in socks:
                await s.close()

        asyncio.run(warm_up())
        time.sleep(2)  # let the server finish closing the warm-up sockets before reading RSS
        rss_warm = server.rss_bytes()
        heap_before = heap_snapshot(server, heap_dir, 1) if heap_dir else None
        # The worker's own background cost with no socket (hub head checks, …), subtracted below
        # so that the heartbeat figure is the marginal cost of sockets.
        cpu_base_start = harness.proc_cpu_seconds(server.pid)
        time.sleep(args.baseline)
        base_cpu_per_second = (harness.proc_cpu_seconds(server.pid) - cpu_base_start) / args.baseline
        t_connect = time.monotonic()

        profiler = harness.start_profiler(server.pid, args.py_spy, f"connections-{kind}-connect") if args.py_spy else None
        harness.start_clients(clients, __file__, args.sockets, args.client_processes, "--url", url, "--topic", topic)
        ready = harness.wait_ready(clients)
        connect_seconds = time.monotonic() - t_connect
        if profiler is not None:
            print(f"  profile: {harness.stop_profiler(profiler)}")
            profiler = harness.start_profiler(server.pid, args.py_spy, f"connections-{kind}-idle")
        subscribed = sum(r[0] for r in ready)
        print(f"  {kind}: {subscribed}/{args.sockets} sockets subscribed in {connect_seconds:.1f} s", flush=True)

        harness.tell_clients(clients, "MARK")
        for proc in clients:
            assert proc.stdout.readline().startswith("MARKED")
        t_idle = time.monotonic()
        cpu_idle_start = harness.proc_cpu_seconds(server.pid)
        time.sleep(args.idle)  # the idle window being measured (not waiting for an event)
        cpu_idle = harness.proc_cpu_seconds(server.pid) - cpu_idle_start
        idle_seconds = time.monotonic() - t_idle
        rss_subscribed = server.rss_bytes()
        if heap_dir:
            heap = heap_breakdown(heap_before, heap_snapshot(server, heap_dir, 2), sum(r[0] for r in ready))
        if profiler is not None:
            print(f"  profile: {harness.stop_profiler(profiler)}")
        harness.tell_clients(clients, "STOP")
        results = harness.collect_results(clients, timeout=60)
        t_end = time.monotonic()
        time.sleep(1)
    finally:
        sampler.stop_event.set()
        sampler.join(timeout=5)
        harness.kill_clients(clients)
        server.stop()

    db_peak, db_by_app = sampler.max_between(t_connect, t_end)
    db_idle_peak, _ = sampler.max_between(t_idle, t_idle + idle_seconds)
    window = {k: sum(r["window"][k] for r in results) for k in results[0]["window"]}
    heartbeats = window["server_heartbeats"] + window["phoenix_replies"]
    data = {
        "sockets_requested": args.sockets,
        "sockets_subscribed": subscribed,
        "connect_failures": sum(r["failed"] for r in results),
        "connect_seconds": round(connect_seconds, 2),
        "db_connections_peak": db_peak,
        "db_connections_peak_by_application": db_by_app,
        "db_connections_peak_while_idle": db_idle_peak,
        "rss_warm_bytes": rss_warm,
        "rss_subscribed_bytes": rss_subscribed,
        "rss_per_socket_bytes": round((rss_subscribed - rss_warm) / max(subscribed, 1)),
        "idle_window_seconds": round(idle_seconds, 2),
        "idle_server_cpu_seconds": round(cpu_idle, 3),
        "idle_server_cpu_share_of_one_core": round(cpu_idle / idle_seconds, 4),
        "idle_window_counts": window,
        "no_socket_server_cpu_share_of_one_core": round(base_cpu_per_second, 4),
        "server_cpu_us_per_heartbeat": (
            round(max(cpu_idle - base_cpu_per_second * idle_seconds, 0) / heartbeats * 1e6, 1) if heartbeats else None
        ),
        "sockets_closed_during_window": window["closed"],
        "tracemalloc": heap,
    }
    data["meets_rss_target"] = data["rss_per_socket_bytes"] < TARGET_RSS_PER_SOCKET_BYTES
    print(
        f"  {kind}: db connections peak {db_peak} {db_by_app}, RSS/socket {data['rss_per_socket_bytes'] / 1024:.1f} KiB, "
        f"idle CPU {data['idle_server_cpu_share_of_one_core'] * 100:.1f}% of a core, "
        f"{data['server_cpu_us_per_heartbeat']} µs CPU/heartbeat ({heartbeats} heartbeats)",
        flush=True,
    )
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=5000, help="sockets in total, all on one worker")
    parser.add_argument("--client-processes", type=int, default=2, help="load-client processes")
    parser.add_argument("--idle", type=float, default=45.0, help="seconds of the measured idle window")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of the no-socket CPU baseline")
    parser.add_argument("--servers", default="daphne,uvicorn", help="comma-separated: daphne,uvicorn")
    parser.add_argument("--py-spy", metavar="DIR", help="profile the server (connect phase, idle window) into DIR")
    parser.add_argument("--tracemalloc", action="store_true", help="where the per-socket memory goes (see the docstring)")
    parser.add_argument("--khala", type=orjson.loads, default=None, metavar="JSON", help="Khala settings for the server")
    parser.add_argument("--result-name", help="bench/results/<name>.json (default connections, with --storm connections_storm)")
    harness.add_client_options(parser)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    connections_storm.add_options(parser)
    args = parser.parse_args(argv)

    if args.storm:
        if args.client:
            harness.raise_nofile(args.client_sockets * 2 + 1024)
            harness.install_uvloop()
            asyncio.run(connections_storm.client_main(args))
            return 0
        return connections_storm.run(args, __file__, argv)

    limit = harness.raise_nofile((args.client_sockets if args.client else args.sockets) * 2 + 1024)
    if args.client:
        harness.install_uvloop()
        asyncio.run(client_main(args.url, args.client_sockets, None, args.topic, args.out))
        return 0

    env = harness.setup("connections")
    from django.db import connection

    from projector.models import RUN_SUMMARIES

    with connection.cursor() as cur:
        cur.execute("SHOW max_connections")
        max_connections = int(cur.fetchone()[0])
    connection.close()
    from khala_project.conf import khala_setting

    topic = RUN_SUMMARIES
    harness.reset_topic(topic)
    user = harness.bench_user()
    results = {}
    for kind in harness.server_kinds(args.servers):
        results[kind] = run_kind(kind, env, args, user, topic)

    print()
    print(f"{args.sockets} idle subscribed sockets on one worker; Postgres max_connections = {max_connections}; "
          f"DB_POOL_MAX_SIZE = {khala_setting('DB_POOL_MAX_SIZE')}; open-file limit {limit}")
    print(f"{'server':10s} {'subscribed':>10s} {'db conns peak':>14s} {'KiB/socket':>11s} {'idle CPU %':>11s} {'µs/heartbeat':>13s}")
    for kind, d in results.items():
        print(
            f"{kind:10s} {d['sockets_subscribed']:>10} {d['db_connections_peak']:>14} {d['rss_per_socket_bytes'] / 1024:>11.1f} "
            f"{d['idle_server_cpu_share_of_one_core'] * 100:>11.2f} {str(d['server_cpu_us_per_heartbeat']):>13s}"
        )
    for kind, d in results.items():
        if d["tracemalloc"]:
            print(f"{kind}: Python allocations per socket {d['tracemalloc']['traced_bytes_per_socket'] / 1024:.1f} KiB; by file:")
            for row in d["tracemalloc"]["by_file"][:12]:
                print(f"  {row['bytes_per_socket']:>9.0f} B  {row['blocks_per_socket']:>6.2f} blocks  {row['where']}")
    path = harness.write_result(
        args.result_name or "connections",
        {
            "target_rss_per_socket_bytes": TARGET_RSS_PER_SOCKET_BYTES,
            "postgres_max_connections": max_connections,
            "db_pool_max_size": khala_setting("DB_POOL_MAX_SIZE"),
            "open_file_limit": limit,
            "khala_settings": args.khala,
            "servers": results,
        },
        argv,
        script="connections",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

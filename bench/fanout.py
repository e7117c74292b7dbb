"""Live fan-out: commit→receive latency and delivered messages/s across several worker processes.

    .venv/bin/python bench/fanout.py [--sockets 1000] [--workers 2] [--rate 20] [--duration 30]
                                     [--client-processes 2] [--servers daphne,uvicorn]

For each server kind (daphne, then uvicorn, in the same run): start ``--workers`` server processes
on loopback, start ``--client-processes`` load-client processes (separate from the servers and from
this writer process) that open ``--sockets`` sockets in total, spread evenly over the workers; each
socket joins ``sync:v1`` and subscribes to one topic. Then this process writes ``--rate`` updates/s
for ``--duration`` s through ``projector.sink.project`` (public documents, ~300-byte payloads, so
every socket may see every update). The commit time of each write is taken in an ``on_commit``
callback registered before the sink's own (so before the hint is published); each client stamps
every update it receives with the wall clock (same host, same clock). Latency = receive − commit,
per (socket, update). Every update must reach every socket: missing deliveries are counted and
reported, never dropped from the figures silently.

Targets (issue 5): p50 < 25 ms, p99 < 100 ms. Prints a table, writes ``bench/results/fanout.json``.
Bounded: the writer stops after ``--duration`` s; clients give up 20 s after the last write.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

TARGET_P50_MS = 25.0
TARGET_P99_MS = 100.0
CLIENT_HEARTBEAT_SECONDS = 25.0  # under the server's 60 s idle timeout, like the phoenix client's 30 s


# --- client process ------------------------------------------------------------------------------


async def client_main(urls: list[str], sockets: int, token: str, topic: str, out_path: str) -> None:
    received: list[dict] = [dict() for _ in range(sockets)]  # per socket: watermark -> receive time
    limiter = asyncio.Semaphore(50)
    conns: list[harness.RawSyncSocket | None] = [None] * sockets
    failures: list[str] = []

    def recorder(mine: dict):
        def on_push(frame, received_at):
            if frame[3] == "sync:update_batch":
                for update in frame[4]["updates"]:
                    mine.setdefault(update["watermark"], received_at)

        return on_push

    async def open_one(i: int) -> None:
        async with limiter:
            try:
                sock = await harness.RawSyncSocket.connect(urls[i % len(urls)], on_push=recorder(received[i]))
                await harness.join_and_subscribe(sock, topic)
                conns[i] = sock
            except Exception as exc:  # counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(i) for i in range(sockets)))

    async def heartbeats() -> None:
        live = [c for c in conns if c is not None]
        while True:
            random.shuffle(live)
            for sock in live:
                sock.heartbeat()
                await asyncio.sleep(CLIENT_HEARTBEAT_SECONDS / max(len(live), 1))

    beat = asyncio.create_task(heartbeats())
    harness.report_ready(sum(c is not None for c in conns), len(failures))

    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)  # "DONE <last watermark>"
    last = int(line.split()[1]) if line.startswith("DONE") else 0
    deadline = time.monotonic() + 20
    live_idx = [i for i, c in enumerate(conns) if c is not None]
    while time.monotonic() < deadline and not all(last in received[i] for i in live_idx):
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    beat.cancel()
    closed_early = [i for i in live_idx if conns[i].closed.is_set()]
    await asyncio.gather(*(conns[i].close() for i in live_idx), return_exceptions=True)
    harness.report_result(
        out_path,
        {
            "received": [{str(k): v for k, v in received[i].items()} for i in live_idx],
            "failures": failures[:20],
            "failed": len(failures),
            "closed_early": [f"socket {i} closed with {conns[i].close_code}" for i in closed_early][:20],
            "cpu_seconds": time.process_time(),
        },
    )


# --- orchestrator / writer ------------------------------------------------------------------------


def run_kind(kind: str, env: dict, args, user, topic: str) -> dict:
    from django.db import close_old_connections, transaction

    from projector.sink import project

    if args.compare_tree:
        # Paired comparison: one worker of this tree, one of another checkout (e.g. the previous
        # revision), same writes, same client processes; sockets alternate between them.
        servers = [harness.start(kind, env), harness.start(kind, env, root=args.compare_tree)]
    else:
        servers = [harness.start(kind, env) for _ in range(args.workers)]
    clients = []
    try:
        token = harness.mint(user, [topic])
        urls = [s.ws_url(token=token) for s in servers]
        harness.start_clients(
            clients, __file__, args.sockets, args.client_processes, "--urls", ",".join(urls), "--token", token, "--topic", topic
        )
        connect_started = time.monotonic()
        ready = harness.wait_ready(clients)
        connected = sum(r[0] for r in ready)
        print(f"  {kind}: {connected}/{args.sockets} sockets subscribed over {args.workers} workers in {time.monotonic() - connect_started:.1f} s", flush=True)

        profilers = [harness.start_profiler(s.pid, args.py_spy, f"fanout-{kind}-worker{n}") for n, s in enumerate(servers)] if args.py_spy else []
        cpu_before = {s.pid: harness.proc_cpu_seconds(s.pid) for s in servers}
        commits: dict[int, float] = {}
        interval = 1.0 / args.rate
        total = int(args.rate * args.duration)
        started = time.monotonic()
        late = 0
        for i in range(total):
            slot = started + i * interval
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the writer to the requested rate
            else:
                late += 1
            stamp = []
            with transaction.atomic():
                transaction.on_commit(lambda: stamp.append(time.time()))  # runs before the sink's hint
                result = project(topic, f"fanout:{i % 100}", i + 1, harness.payload_of_size(i), "", public=True)
            commits[result.watermark] = stamp[0]
        write_seconds = time.monotonic() - started
        for profiler in profilers:
            print(f"  profile: {harness.stop_profiler(profiler)}")
        last_wm = max(commits)
        harness.tell_clients(clients, f"DONE {last_wm}")
        results = harness.collect_results(clients, timeout=30)
        cpu_after = {s.pid: harness.proc_cpu_seconds(s.pid) for s in servers}
        rss = [s.rss_bytes() for s in servers]
        # Why a row was read (hint vs periodic head check) tells lost/late hints from slow sends.
        server_metrics = [harness.scrape_metrics(s.http_url) for s in servers]
    finally:
        harness.kill_clients(clients)
        for s in servers:
            s.stop()
        close_old_connections()

    latencies = []
    by_server: list[list[float]] = [[] for _ in servers]  # socket i is on server i % len(servers)
    missing = 0
    sockets_seen = 0
    for res in results:
        for index, per_socket in enumerate(res["received"]):
            sockets_seen += 1
            for wm, commit_at in commits.items():
                got = per_socket.get(str(wm))
                if got is None:
                    missing += 1
                else:
                    latencies.append((got - commit_at) * 1000)
                    by_server[index % len(servers)].append((got - commit_at) * 1000)
    # p50 per 5-second slice of commit time: a rising series means a backlog (the servers or the
    # clients could not keep up), a flat one means steady per-message cost.
    first_commit = min(commits.values())
    slices: dict[int, list[float]] = {}
    for res in results:
        for per_socket in res["received"]:
            for wm, commit_at in commits.items():
                got = per_socket.get(str(wm))
                if got is not None:
                    slices.setdefault(int((commit_at - first_commit) // 5), []).append((got - commit_at) * 1000)
    p50_by_slice = [round(harness.percentile(sorted(v), 50), 1) for _, v in sorted(slices.items())]
    latencies.sort()
    delivered = len(latencies)
    data = {
        "workers": args.workers,
        "sockets_requested": args.sockets,
        "sockets_subscribed": sockets_seen,
        "connect_failures": sum(r["failed"] for r in results),
        "closed_early": sum(len(r["closed_early"]) for r in results),
        "closed_early_examples": [c for r in results for c in r["closed_early"]][:5],
        "updates_written": total,
        "writer_late_slots": late,
        "write_seconds": round(write_seconds, 3),
        "deliveries_expected": sockets_seen * total,
        "deliveries": delivered,
        "deliveries_missing": missing,
        "messages_delivered_per_second": round(delivered / write_seconds),
        "latency_ms": {
            "p50": round(harness.percentile(latencies, 50), 2),
            "p90": round(harness.percentile(latencies, 90), 2),
            "p99": round(harness.percentile(latencies, 99), 2),
            "max": round(latencies[-1], 2) if latencies else None,
            "min": round(latencies[0], 2) if latencies else None,
        },
        "latency_p50_ms_by_5s_slice": p50_by_slice,
        "server_cpu_seconds_during_writes": {str(pid): round(cpu_after[pid] - cpu_before[pid], 2) for pid in cpu_before},
        "server_rss_bytes": rss,
        "server_metrics": server_metrics,
        "client_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results],
    }
    if args.compare_tree:
        cpu = list(data["server_cpu_seconds_during_writes"].values())
        data["compare"] = {
            label: {
                "tree": tree,
                "latency_ms": {q: round(harness.percentile(sorted(values), q), 2) for q in (50, 90, 99)},
                "deliveries": len(values),
                "server_cpu_seconds_during_writes": cpu[n],
            }
            for n, (label, tree, values) in enumerate(
                [("this_tree", str(harness.REPO_ROOT), by_server[0]), ("compare_tree", args.compare_tree, by_server[1])]
            )
        }
        for label, figures in data["compare"].items():
            print(f"  {kind} {label}: p50 {figures['latency_ms'][50]} ms, p99 {figures['latency_ms'][99]} ms, "
                  f"server CPU {figures['server_cpu_seconds_during_writes']} s ({figures['tree']})", flush=True)
    data["meets_target"] = (
        missing == 0 and data["latency_ms"]["p50"] < TARGET_P50_MS and data["latency_ms"]["p99"] < TARGET_P99_MS
    )
    print(
        f"  {kind}: p50 {data['latency_ms']['p50']} ms, p99 {data['latency_ms']['p99']} ms, max {data['latency_ms']['max']} ms, "
        f"{data['messages_delivered_per_second']:,} msgs/s delivered, missing {missing}",
        flush=True,
    )
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1000, help="sockets in total")
    parser.add_argument("--workers", type=int, default=2, help="server processes per kind")
    parser.add_argument("--rate", type=float, default=20.0, help="updates written per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writing")
    parser.add_argument("--client-processes", type=int, default=2, help="load-client processes")
    parser.add_argument("--servers", default="daphne,uvicorn", help="comma-separated: daphne,uvicorn")
    parser.add_argument("--py-spy", metavar="DIR", help="profile each server process during the writes into DIR")
    parser.add_argument(
        "--compare-tree", metavar="DIR",
        help="another checkout (e.g. `git worktree add /tmp/base <rev>`): run one worker of this tree and one of DIR "
        "side by side on the same writes and report each (--workers is then 2)",
    )
    # internal: a load-client process
    harness.add_client_options(parser)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    harness.raise_nofile(args.sockets * 2 + 1024 if not args.client else (args.client_sockets or 0) * 2 + 1024)
    if args.client:
        harness.install_uvloop()
        asyncio.run(client_main(args.urls.split(","), args.client_sockets, args.token, args.topic, args.out))
        return 0

    env = harness.setup("fanout")
    from projector.models import RUN_SUMMARIES

    topic = RUN_SUMMARIES
    user = harness.bench_user()
    results = {}
    for kind in harness.server_kinds(args.servers):
        harness.reset_topic(topic)
        results[kind] = run_kind(kind, env, args, user, topic)

    print()
    print(f"fan-out: {args.sockets} sockets over {args.workers} workers, {args.rate:g} updates/s for {args.duration:g} s")
    print(f"{'server':10s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'msgs/s':>10s} {'missing':>8s}  target (p50<{TARGET_P50_MS:g}, p99<{TARGET_P99_MS:g})")
    for kind, d in results.items():
        lat = d["latency_ms"]
        print(
            f"{kind:10s} {lat['p50']:>8} {lat['p99']:>8} {lat['max']:>8} {d['messages_delivered_per_second']:>10,} "
            f"{d['deliveries_missing']:>8}  {'met' if d['meets_target'] else 'MISSED'}"
        )
    path = harness.write_result(
        "fanout_compare" if args.compare_tree else "fanout",
        {
            "targets_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
            "sockets": args.sockets,
            "workers": args.workers,
            "rate_per_second": args.rate,
            "duration_seconds": args.duration,
            "client_processes": args.client_processes,
            "servers": results,
        },
        argv,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live fan-out: commit→receive latency, delivered messages/s and server CPU per delivery, each
Khala server next to a raw ``websockets.broadcast`` ceiling measured in the same run.

    .venv/bin/python bench/fanout.py [--sockets 1000] [--workers 2] [--rate 20] [--duration 30]
                                     [--rounds 3] [--client-processes 2] [--servers daphne,uvicorn,raw]

For each kind (``daphne``, ``uvicorn``: Khala; ``raw``: ``bench/fanout_raw.py``, one
``websockets.broadcast`` process per worker): start ``--workers`` server processes on loopback and
``--client-processes`` load-client processes (separate from the servers and from this writer
process) that open ``--sockets`` sockets, spread evenly over that kind's workers; each socket joins
``sync:v1`` and subscribes to the kind's topic (each kind has its own, so a write wakes only the
servers of the kind being measured). All kinds stay up for the whole run; then, ``--rounds``
times, each kind in turn gets ``--duration`` s of writes at ``--rate`` updates/s through
``projector.sink.project`` (public documents, ~300-byte payloads, so every socket may see every
update). For ``raw`` the same commit is followed by the frame Khala would send, written to each raw
process's stdin. The commit time of each write is taken in an ``on_commit`` callback registered
before the sink's own (so before the hint is published); each client stamps every update it
receives with the wall clock (same host, same clock). Latency = receive − commit, per (socket,
update). Every update must reach every socket: missing deliveries are counted and reported, never
dropped from the figures silently. Before the next kind writes, the clients confirm every socket
got the round's last update (or 20 s passed): rounds do not overlap.

Server CPU per delivery: utime + stime of the kind's server processes (``/proc/<pid>/stat``) over
the round, from its first write until its last update reached every socket, divided by the
(socket, update) deliveries of the round. Khala's figures are also given as ratios to the raw
ceiling's of the same round (then the median over rounds), which is what a noisy shared box can
compare.

Targets (issue 16): 1,000 × 20/s: p50 < 25 ms, p99 < 100 ms, daphne/uvicorn p99 ≤ 1.3; 2,000 × 50/s:
p99 < 150 ms; CPU per delivery ≤ 1.5 × raw. Prints a table, writes ``bench/results/fanout.json``
(``--result-name`` to keep several). Bounded: clients give up 20 s after a round's last write.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

CLIENT_HEARTBEAT_SECONDS = 25.0  # under the server's 60 s idle timeout, like the phoenix client's 30 s
KINDS = ("daphne", "uvicorn", "raw")
ROUND_DRAIN_SECONDS = 20.0
# Scraped from each Khala server after the run: why rows were read, live lag, slow consumers, and
# the collector's pauses (a full collection stalls every socket of the worker: a latency tail).
FANOUT_METRICS = ("khala_hub_", "khala_live_", "khala_slow_", "khala_gc_")


# --- client process ------------------------------------------------------------------------------


async def client_main(urls: list[str], sockets: int, token: str, topic: str, out_path: str,
                      source_addresses: list[str] | None = None) -> None:
    """``sockets`` sockets, socket ``i`` on ``urls[i % len(urls)]`` (from ``source_addresses[i % …]``
    when given), each recording when every update of ``topic`` first arrived, in arrival order
    (``received``: watermark → receive time; a dict keeps insertion order, so the order of its keys
    is the order of arrival)."""
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
                sock = await harness.RawSyncSocket.connect(
                    urls[i % len(urls)], on_push=recorder(received[i]),
                    local_address=source_addresses[i % len(source_addresses)] if source_addresses else None)
                await harness.join_and_subscribe(sock, topic)
                conns[i] = sock
            except Exception as exc:  # counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(i) for i in range(sockets)))

    async def heartbeats() -> None:
        # Every socket once per CLIENT_HEARTBEAT_SECONDS, spread evenly and kept on the clock: on a
        # loaded box every sleep overshoots, and a sleep per socket summed over 500 sockets used to
        # stretch the cycle past the server's 60 s idle timeout (sockets closed with 4408).
        live = [c for c in conns if c is not None]
        while live:
            random.shuffle(live)
            started = time.monotonic()
            for i, sock in enumerate(live):
                delay = started + i * CLIENT_HEARTBEAT_SECONDS / len(live) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sock.heartbeat()
            await asyncio.sleep(max(started + CLIENT_HEARTBEAT_SECONDS - time.monotonic(), 0))

    beat = asyncio.create_task(heartbeats())
    harness.report_ready(sum(c is not None for c in conns), len(failures))

    loop = asyncio.get_running_loop()
    live_idx = [i for i, c in enumerate(conns) if c is not None]
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)  # "MARK <watermark>" or "DONE"
        if not line.startswith("MARK"):
            break
        last = int(line.split()[1])
        deadline = time.monotonic() + ROUND_DRAIN_SECONDS
        while time.monotonic() < deadline and not all(last in received[i] for i in live_idx):
            await asyncio.sleep(0.01)  # polling a condition with a deadline
        print(f"SEEN {sum(last not in received[i] for i in live_idx)}", flush=True)
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


# --- the raw ceiling's processes ----------------------------------------------------------------


class RawServer:
    """One ``bench/fanout_raw.py`` process (the shape of ``tests.support.servers.ServerProcess``
    that this script uses)."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fanout_raw.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=harness.REPO_ROOT, start_new_session=True,
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("PORT"):
            self.process.kill()
            raise RuntimeError(f"raw server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.process.pid
        self.http_url = None

    def ws_url(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/sync/socket/websocket?token={token}&vsn=2.0.0"

    def send(self, frame: bytes) -> None:
        self.process.stdin.write(b"F " + frame + b"\n")
        self.process.stdin.flush()

    def rss_bytes(self) -> int:
        return harness.proc_rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def raw_frame(topic: str, watermark: int, doc_key: str, payload: dict, stream_epoch: str) -> bytes:
    """The live frame Khala sends for one public update (``sync.protocol``'s own encoders)."""
    from sync.protocol import encode_batch

    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    update = orjson.dumps({
        "topic": topic, "doc_key": doc_key, "doc_version": 1, "payload": orjson.Fragment(canonical),
        "payload_hash": base64.b64encode(hashlib.sha256(canonical).digest()).decode(), "watermark": watermark,
        "hydration_required": False,
    })
    return encode_batch(None, topic, [update], True, watermark, stream_epoch)[0].encode()


# --- orchestrator / writer ------------------------------------------------------------------------


class Kind:
    """One kind's servers, load clients and per-round figures."""

    def __init__(self, name: str, topic: str):
        self.name = name
        self.topic = topic
        self.servers: list = []
        self.clients: list = []
        self.connected = 0
        self.rounds: list[dict] = []  # {"commits": {wm: t}, "cpu_seconds": s, "write_seconds": s, "late": n, ...}
        self.stream_epoch = ""


def start_kind(kind: Kind, env: dict, args, user) -> None:
    if kind.name == "raw":
        kind.servers = [RawServer() for _ in range(args.workers)]
    elif args.compare_tree:
        # Paired comparison: one worker of this tree, one of another checkout (e.g. the previous
        # revision), same writes, same client processes; sockets alternate between them.
        kind.servers = [harness.start(kind.name, env, khala=args.khala), harness.start(kind.name, env, khala=args.khala, root=args.compare_tree)]
    else:
        kind.servers = [harness.start(kind.name, env, khala=args.khala) for _ in range(args.workers)]
    token = harness.mint(user, [kind.topic])
    urls = [s.ws_url(token=token) for s in kind.servers]
    harness.start_clients(
        kind.clients, __file__, args.sockets, args.client_processes, "--urls", ",".join(urls), "--token", token, "--topic", kind.topic
    )
    started = time.monotonic()
    kind.connected = sum(r[0] for r in harness.wait_ready(kind.clients))
    print(f"  {kind.name}: {kind.connected}/{args.sockets} sockets subscribed over {len(kind.servers)} workers "
          f"in {time.monotonic() - started:.1f} s", flush=True)


def server_cpu(kind: Kind) -> list[float]:
    """CPU seconds of each of the kind's server processes so far."""
    return [harness.proc_cpu_seconds(s.pid) for s in kind.servers]


def write_round(kind: Kind, args, number: int, first_doc: int) -> None:
    profilers = (
        [harness.start_profiler(s.pid, args.py_spy, f"fanout-{kind.name}-worker{n}-round{number}") for n, s in enumerate(kind.servers)]
        if args.py_spy else []
    )
    load_before = os.getloadavg()
    cpu_before = server_cpu(kind)

    def to_raw_servers(watermark: int, doc_key: str, payload: dict) -> None:
        frame = raw_frame(kind.topic, watermark, doc_key, payload, kind.stream_epoch)
        for server in kind.servers:
            server.send(frame)

    writer = harness.PacedWriter(kind.topic, args.rate, key_prefix="fanout", first=first_doc,
                                 on_write=to_raw_servers if kind.name == "raw" else None)
    writer.run(count=int(args.rate * args.duration))
    commits, late, write_seconds = writer.commits, writer.late, writer.seconds
    harness.tell_clients(kind.clients, f"MARK {max(commits)}")
    not_seen = sum(int(proc.stdout.readline().split()[1]) for proc in kind.clients)
    cpu_by_server = [after - before for after, before in zip(server_cpu(kind), cpu_before)]
    cpu_seconds = sum(cpu_by_server)
    for profiler in profilers:
        print(f"  profile: {harness.stop_profiler(profiler)}")
    kind.rounds.append({
        "commits": commits, "cpu_seconds": cpu_seconds, "cpu_by_server": cpu_by_server, "write_seconds": write_seconds, "writer_late_slots": late,
        "sockets_without_last_update": not_seen, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    })


def round_figures(kind: Kind, results: list[dict], rnd: dict) -> dict:
    commits = rnd["commits"]
    latencies = []
    by_server: list[list[float]] = [[] for _ in kind.servers]  # socket i is on server i % len(servers)
    missing = 0
    for res in results:
        for index, per_socket in enumerate(res["received"]):
            for wm, commit_at in commits.items():
                got = per_socket.get(str(wm))
                if got is None:
                    missing += 1
                else:
                    latencies.append((got - commit_at) * 1000)
                    by_server[index % len(kind.servers)].append((got - commit_at) * 1000)
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
    latencies.sort()
    delivered = len(latencies)
    figures = {
        "updates_written": len(commits),
        "writer_late_slots": rnd["writer_late_slots"],
        "write_seconds": round(rnd["write_seconds"], 3),
        "deliveries": delivered,
        "deliveries_missing": missing,
        "messages_delivered_per_second": round(delivered / rnd["write_seconds"]),
        "latency_ms": {
            "p50": round(harness.percentile(latencies, 50), 2),
            "p90": round(harness.percentile(latencies, 90), 2),
            "p99": round(harness.percentile(latencies, 99), 2),
            "max": round(latencies[-1], 2) if latencies else None,
        },
        "latency_p50_ms_by_5s_slice": [round(harness.percentile(sorted(v), 50), 1) for _, v in sorted(slices.items())],
        "server_cpu_seconds": round(rnd["cpu_seconds"], 3),
        "server_cpu_us_per_delivery": round(rnd["cpu_seconds"] * 1e6 / max(delivered, 1), 2),
        "loadavg_before": rnd["loadavg_before"],
        "loadavg_after": rnd["loadavg_after"],
    }
    if len(kind.servers) == 2 and getattr(kind, "compare_tree", None):
        figures["by_tree"] = {
            label: {q: round(harness.percentile(sorted(values), q), 2) for q in (50, 90, 99)}
            for label, values in (("this_tree", by_server[0]), ("compare_tree", by_server[1]))
        }
        # Each tree's worker serves half the sockets of the same writes: its CPU compares directly.
        figures["by_tree"]["this_tree"]["cpu_seconds"] = round(rnd["cpu_by_server"][0], 3)
        figures["by_tree"]["compare_tree"]["cpu_seconds"] = round(rnd["cpu_by_server"][1], 3)
    return figures


def finish_kind(kind: Kind) -> dict:
    harness.tell_clients(kind.clients, "DONE")
    results = harness.collect_results(kind.clients, timeout=30)
    rounds = [round_figures(kind, results, rnd) for rnd in kind.rounds]
    median = lambda key, sub=None: statistics.median(r[key][sub] if sub else r[key] for r in rounds)  # noqa: E731
    return {
        "workers": len(kind.servers),
        "topic": kind.topic,
        "sockets_subscribed": sum(len(r["received"]) for r in results),
        "connect_failures": sum(r["failed"] for r in results),
        "closed_early": sum(len(r["closed_early"]) for r in results),
        "closed_early_examples": [c for r in results for c in r["closed_early"]][:5],
        "deliveries_missing": sum(r["deliveries_missing"] for r in rounds),
        "median": {
            "p50_ms": median("latency_ms", "p50"),
            "p99_ms": median("latency_ms", "p99"),
            "messages_delivered_per_second": median("messages_delivered_per_second"),
            "server_cpu_us_per_delivery": median("server_cpu_us_per_delivery"),
        },
        "rounds": rounds,
        "server_rss_bytes": [s.rss_bytes() for s in kind.servers],
        # Why a row was read (hint vs periodic head check) tells lost/late hints from slow sends.
        "server_metrics": [harness.scrape_metrics(s.http_url, FANOUT_METRICS) for s in kind.servers if s.http_url],
        "client_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results],
    }


def stop_kind(kind: Kind) -> None:
    harness.kill_clients(kind.clients)
    for server in kind.servers:
        server.stop()


def ratios(data: dict) -> dict:
    """Each Khala kind's figures ÷ the raw ceiling's, per round (same round = same minutes of the
    machine's load), then the median over rounds; and daphne ÷ uvicorn the same way."""
    out = {}
    pairs = [(k, "raw") for k in ("daphne", "uvicorn") if k in data and "raw" in data]
    if "daphne" in data and "uvicorn" in data:
        pairs.append(("daphne", "uvicorn"))
    for a, b in pairs:
        per_round = []
        for ra, rb in zip(data[a]["rounds"], data[b]["rounds"]):
            per_round.append({
                "p50": ra["latency_ms"]["p50"] / rb["latency_ms"]["p50"],
                "p99": ra["latency_ms"]["p99"] / rb["latency_ms"]["p99"],
                "cpu_per_delivery": ra["server_cpu_us_per_delivery"] / max(rb["server_cpu_us_per_delivery"], 1e-9),
            })
        out[f"{a}/{b}"] = {
            key: round(statistics.median(r[key] for r in per_round), 3) for key in ("p50", "p99", "cpu_per_delivery")
        } | {"per_round": [{k: round(v, 3) for k, v in r.items()} for r in per_round]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1000, help="sockets in total, per kind")
    parser.add_argument("--workers", type=int, default=2, help="server processes per kind")
    parser.add_argument("--rate", type=float, default=20.0, help="updates written per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writing per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per kind (kinds alternate within a round)")
    parser.add_argument("--client-processes", type=int, default=2, help="load-client processes per kind")
    parser.add_argument("--servers", default="daphne,uvicorn,raw", help="comma-separated kinds: daphne,uvicorn,raw")
    parser.add_argument("--result-name", default="fanout", help="bench/results/<name>.json")
    parser.add_argument("--khala", type=orjson.loads, default=None, metavar="JSON",
                        help='Khala settings for the servers, e.g. \'{"SOCKET_DIRECT_WRITES": false}\'')
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
    parser.add_argument("--source-addresses", help=argparse.SUPPRESS)  # comma-separated, for connections --storm
    args = parser.parse_args(argv)

    harness.raise_nofile(args.sockets * 6 + 1024 if not args.client else (args.client_sockets or 0) * 2 + 1024)
    if args.client:
        harness.install_uvloop()
        asyncio.run(client_main(args.urls.split(","), args.client_sockets, args.token, args.topic, args.out,
                                args.source_addresses.split(",") if args.source_addresses else None))
        return 0

    env = harness.setup("fanout")
    from django.db import close_old_connections

    from projector.models import CODEX_WORKER_SUMMARIES, NOTIFICATIONS, RUN_SUMMARIES, TopicSequence

    topics = {"daphne": RUN_SUMMARIES, "uvicorn": CODEX_WORKER_SUMMARIES, "raw": NOTIFICATIONS}
    names = harness.server_kinds(args.servers)
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; expected some of {KINDS}")
    user = harness.bench_user()
    kinds = [Kind(name, topics[name]) for name in names]
    for kind in kinds:
        harness.reset_topic(kind.topic)
        kind.stream_epoch = TopicSequence.objects.get(topic=kind.topic).stream_epoch
        kind.compare_tree = args.compare_tree if kind.name != "raw" else None
    results = {}
    try:
        for kind in kinds:
            start_kind(kind, env, args, user)
        for number in range(args.rounds):
            for kind in kinds:
                write_round(kind, args, number, number * int(args.rate * args.duration))
                last = kind.rounds[-1]
                print(f"  round {number + 1} {kind.name}: written in {last['write_seconds']:.1f} s, server CPU {last['cpu_seconds']:.2f} s, "
                      f"sockets without the last update {last['sockets_without_last_update']}, load {last['loadavg_after']}", flush=True)
                if getattr(kind, "compare_tree", None):
                    this, other = last["cpu_by_server"]
                    print(f"    CPU of this tree's worker {this:.2f} s, the compare tree's {other:.2f} s (×{this / other:.3f})", flush=True)
        for kind in kinds:
            results[kind.name] = finish_kind(kind)
    finally:
        for kind in kinds:
            stop_kind(kind)
        close_old_connections()

    print()
    print(f"fan-out: {args.sockets} sockets over {args.workers} workers per kind, {args.rate:g} updates/s, "
          f"{args.rounds} rounds of {args.duration:g} s; medians over rounds")
    print(f"{'kind':8s} {'p50 ms':>8s} {'p99 ms':>8s} {'msgs/s':>10s} {'missing':>8s} {'CPU µs/delivery':>16s}")
    for name, d in results.items():
        m = d["median"]
        print(f"{name:8s} {m['p50_ms']:>8} {m['p99_ms']:>8} {m['messages_delivered_per_second']:>10,} {d['deliveries_missing']:>8} "
              f"{m['server_cpu_us_per_delivery']:>16}")
    compared = ratios(results)
    for pair, r in compared.items():
        print(f"{pair:16s} p50 ×{r['p50']}  p99 ×{r['p99']}  CPU/delivery ×{r['cpu_per_delivery']}  (median of per-round ratios)")
    path = harness.write_result(
        args.result_name,
        {
            "sockets": args.sockets,
            "workers": args.workers,
            "rate_per_second": args.rate,
            "duration_seconds": args.duration,
            "rounds": args.rounds,
            "client_processes": args.client_processes,
            "compare_tree": args.compare_tree,
            "khala_settings": args.khala,
            "ratios": compared,
            "kinds": results,
        },
        argv,
        script="fanout",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replay throughput: ONE client catching up N updates (default 100,000 of ~300-byte payloads).

    .venv/bin/python bench/replay.py [--updates 100000] [--payload-bytes 300] [--runs 3]
                                     [--servers daphne,uvicorn]

Seeds one topic of the benchmark database with ``project_many`` (batches of 1,000), starts each
server in turn (daphne, then uvicorn: the same run, the same data), and for every run opens a new
socket, joins ``sync:v1`` and subscribes without a cursor (replay of the whole retained window).
Time = from sending ``sync:subscribe`` to receiving its reply, which the server sends after the
last ``sync:update_batch``; figure = updates received / time (end to end: server reads, encodes,
sends; the client receives and parses every frame with orjson). The client checks it got exactly
the seeded watermarks, ascending. Target (issue 5): >= 80,000 updates/s.

Prints a table and writes ``bench/results/replay.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

TARGET_UPDATES_PER_SECOND = 80_000


async def replay_once(ws_url: str, topic: str, expected: int, batch_size: int | None) -> dict:
    sock = await harness.SyncSocket.connect(ws_url)
    try:
        await sock.join()
        state = {"updates": 0, "batches": 0, "last": 0, "ordered": True, "first_batch_at": None, "bytes": 0}

        def on_push(frame):
            if frame[3] != "sync:update_batch":
                return
            if state["first_batch_at"] is None:
                state["first_batch_at"] = time.perf_counter()
            updates = frame[4]["updates"]
            for update in updates:
                if update["watermark"] <= state["last"]:
                    state["ordered"] = False
                state["last"] = update["watermark"]
            state["updates"] += len(updates)
            state["batches"] += 1

        request = {"topics": [topic]}
        if batch_size:
            request["replay_batch_size"] = batch_size
        started = time.perf_counter()
        reply = await sock.call("sync:subscribe", request, on_push=on_push, timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        await sock.close()
    if reply.get("status") != "ok":
        raise RuntimeError(f"subscribe failed: {reply}")
    if state["updates"] != expected or not state["ordered"] or state["last"] != expected:
        raise RuntimeError(f"replay incomplete or out of order: {state} (expected {expected})")
    return {
        "updates": state["updates"],
        "batches": state["batches"],
        "seconds": round(elapsed, 4),
        "updates_per_second": round(state["updates"] / elapsed),
        "first_batch_ms": round((state["first_batch_at"] - started) * 1000, 2),
    }


def seed(topic: str, owner: str, count: int, payload_bytes: int) -> dict:
    from django.db import connection

    from projector.sink import DocumentWrite, project_many

    started = time.perf_counter()
    chunk = 1000
    for first in range(0, count, chunk):
        if first and first % (20 * chunk) == 0:
            # The topic was just emptied, so the planner's statistics say "no rows": refresh them
            # as a real bulk load would. (The worst plan this used to avoid, the version probe
            # scanning an owner range per row, is gone since projector migration 0003.)
            with connection.cursor() as cur:
                cur.execute("ANALYZE sync_read_models")
                cur.execute("ANALYZE sync_stream_events")
        project_many(
            DocumentWrite(topic, f"run_summary:run_{i:08d}", 1, harness.payload_of_size(i, payload_bytes), owner)
            for i in range(first, min(first + chunk, count))
        )
    elapsed = time.perf_counter() - started
    return {"documents": count, "seconds": round(elapsed, 2), "documents_per_second": round(count / elapsed)}


def compare(args, env, user, topic, avg_payload, seeded, argv) -> int:
    """Paired runs: this tree's server and the compare tree's, both up at once, runs alternating
    (which one goes first alternates too), so machine load moves both figures alike."""
    token = harness.mint(user, [topic])
    results = {}
    for kind in harness.server_kinds(args.servers):
        trees = {"this_tree": None, "compare_tree": args.compare_tree}
        servers = {label: harness.start(kind, env, root=root) for label, root in trees.items()}
        runs = {label: [] for label in trees}
        try:
            for run in range(args.runs):
                order = list(trees) if run % 2 == 0 else list(reversed(trees))
                for label in order:
                    result = asyncio.run(replay_once(servers[label].ws_url(token=token), topic, args.updates, args.batch_size))
                    runs[label].append(result["updates_per_second"])
                    print(f"  {kind:8s} run {run + 1} {label:12s}: {result['updates_per_second']:,} updates/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        medians = {label: statistics.median(rates) for label, rates in runs.items()}
        results[kind] = {
            "runs_updates_per_second": runs,
            "median_updates_per_second": {k: round(v) for k, v in medians.items()},
            "ratio_this_to_compare": round(medians["this_tree"] / medians["compare_tree"], 3),
            "compare_tree": args.compare_tree,
        }
        print(f"  {kind}: median this tree {medians['this_tree']:,.0f}/s, compare tree {medians['compare_tree']:,.0f}/s, "
              f"ratio {results[kind]['ratio_this_to_compare']}", flush=True)
    path = harness.write_result(
        "replay_compare",
        {"updates": args.updates, "avg_payload_bytes": avg_payload, "seed": seeded, "servers": results},
        argv,
    )
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=100_000, help="journal rows to replay")
    parser.add_argument("--payload-bytes", type=int, default=300, help="canonical JSON size of each payload")
    parser.add_argument("--runs", type=int, default=3, help="replays per server (a new socket each)")
    parser.add_argument("--servers", default="daphne,uvicorn", help="comma-separated: daphne,uvicorn")
    parser.add_argument("--batch-size", type=int, default=None, help="replay_batch_size to ask for (server caps it)")
    parser.add_argument("--py-spy", metavar="DIR", help="profile each server with py-spy during its runs; raw stacks go to DIR")
    parser.add_argument(
        "--compare-tree", metavar="DIR",
        help="another checkout (e.g. `git worktree add /tmp/base <rev>`): also serve it and alternate the runs "
        "between the two servers on the same data; reports each and the ratio",
    )
    args = parser.parse_args(argv)

    client_loop = harness.install_uvloop()

    env = harness.setup("replay")
    from projector.models import RUN_SUMMARIES

    topic = RUN_SUMMARIES
    harness.reset_topic(topic)
    user = harness.bench_user()
    owner = f"user:{user.pk}"
    print(f"seeding {args.updates} updates of ~{args.payload_bytes} B on {topic} ...", flush=True)
    seeded = seed(topic, owner, args.updates, args.payload_bytes)
    print(f"  seeded in {seeded['seconds']} s ({seeded['documents_per_second']} docs/s via project_many)")
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE sync_stream_events")
        cur.execute("SELECT avg(payload_bytes)::int FROM sync_stream_events WHERE topic = %s", [topic])
        avg_payload = cur.fetchone()[0]
    connection.close()

    if args.compare_tree:
        return compare(args, env, user, topic, avg_payload, seeded, argv)

    servers = {}
    for kind in harness.server_kinds(args.servers):
        server = harness.start(kind, env)
        try:
            token = harness.mint(user, [topic])
            runs = []
            profiler = harness.start_profiler(server.pid, args.py_spy, f"replay-{kind}") if args.py_spy else None
            for run in range(args.runs):
                result = asyncio.run(replay_once(server.ws_url(token=token), topic, args.updates, args.batch_size))
                runs.append(result)
                print(
                    f"  {kind:8s} run {run + 1}: {result['updates']} updates in {result['seconds']:.3f} s = "
                    f"{result['updates_per_second']:,} updates/s ({result['batches']} batches, first after "
                    f"{result['first_batch_ms']} ms)",
                    flush=True,
                )
            if profiler is not None:
                print(f"  profile: {harness.stop_profiler(profiler)}")
            rates = [r["updates_per_second"] for r in runs]
            servers[kind] = {
                "runs": runs,
                "best_updates_per_second": max(rates),
                "median_updates_per_second": round(statistics.median(rates)),
                "server_rss_bytes_after": server.rss_bytes(),
                "meets_target": statistics.median(rates) >= TARGET_UPDATES_PER_SECOND,
            }
        finally:
            server.stop()

    print()
    print(f"replay of {args.updates} updates (avg payload {avg_payload} B), target >= {TARGET_UPDATES_PER_SECOND:,}/s")
    print(f"{'server':10s} {'median/s':>12s} {'best/s':>12s}  target")
    for kind, data in servers.items():
        print(
            f"{kind:10s} {data['median_updates_per_second']:>12,} {data['best_updates_per_second']:>12,}  "
            f"{'met' if data['meets_target'] else 'MISSED'}"
        )
    path = harness.write_result(
        "replay",
        {
            "target_updates_per_second": TARGET_UPDATES_PER_SECOND,
            "updates": args.updates,
            "avg_payload_bytes": avg_payload,
            "requested_batch_size": args.batch_size,
            "client_loop": client_loop,
            "seed": seeded,
            "servers": servers,
        },
        argv,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

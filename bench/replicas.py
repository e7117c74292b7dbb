"""Read replicas: primary CPU and reads saved when replay and live reads go to a streaming replica.

    .venv/bin/python bench/replicas.py [--updates 20000] [--clients 8] [--rounds 3]
                                       [--sockets 100] [--writes-per-second 20] [--live-seconds 10]

Builds a private primary and a ``pg_basebackup -R`` hot standby on free ports
(``tests.support.private_services``; the shared server is not touched), seeds one topic with
``--updates`` journal rows, and serves it with one daphne worker in two configurations, each on
the same data: ``primary`` (no replica) and ``replica`` (``DATABASE_REPLICA_URLS`` = the standby).
Per configuration:

- replay: ``--rounds`` rounds of ``--clients`` concurrent sockets each replaying the whole topic;
- live: ``--sockets`` sockets subscribed while this process writes ``--writes-per-second`` single
  documents for ``--live-seconds`` (hints carry the commit LSN; each hint costs the worker one
  journal read), timing every write's delivery to one socket (commit → receipt).

Figures per phase: CPU seconds of every process of the primary cluster and of the standby
(``/proc``, utime + stime), the primary database's tuples returned + fetched
(``pg_stat_database``: rows read), updates delivered, primary CPU per 1,000 delivered updates,
the live delivery p50/p99, and the worker's ``khala_replica_*`` counters (which target served).
The writes themselves cost primary CPU in both configurations alike. Machines here are 2 shared
cores: compare the two configurations of ONE run (ratios), and read the load average recorded.

Prints a table and writes ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from bench.replay import replay_once, seed  # noqa: E402
from tests.support.private_services import PostgresCluster, PostgresReplica  # noqa: E402


def cluster_cpu_seconds(cluster: PostgresCluster) -> float:
    """utime + stime of the cluster's postmaster and all its children (Linux /proc)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = harness.proc_cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += harness.proc_cpu_seconds(int(entry))
    return total


def rows_read(cluster: PostgresCluster) -> int:
    return int(cluster.sql("SELECT tup_returned + tup_fetched FROM pg_stat_database WHERE datname = 'khala'"))


STATS_FLUSH_SECONDS = 11.0


class Meter:
    """CPU of both clusters and rows read on the primary, over one phase."""

    def __init__(self, primary, replica):
        self.primary, self.replica = primary, replica

    def __enter__(self):
        self.start = (cluster_cpu_seconds(self.primary), cluster_cpu_seconds(self.replica), rows_read(self.primary), time.perf_counter())
        return self

    def __exit__(self, *exc):
        p, r, reads, t = self.start
        self.seconds = time.perf_counter() - t
        self.primary_cpu = cluster_cpu_seconds(self.primary) - p
        self.replica_cpu = cluster_cpu_seconds(self.replica) - r
        # Backends report their table statistics when idle, at most ~10 s after their last
        # statement (PostgreSQL's pgstat idle interval): wait for that before counting rows read.
        time.sleep(STATS_FLUSH_SECONDS)
        self.primary_rows_read = rows_read(self.primary) - reads


async def read_frames(sock, on_frame) -> None:
    import orjson

    while True:
        on_frame(orjson.loads(await sock.ws.recv()))


async def live_phase(server, token, topic, owner, head: int, sockets: int, rate: float, seconds: float, first_doc: int) -> dict:
    """``sockets`` subscribed sockets; writes at ``rate``/s from a thread; delivery timed on socket 0."""
    from projector.sink import project

    socks = []
    for _ in range(sockets):  # resuming at the head: no replay, live only
        sock = await harness.SyncSocket.connect(server.ws_url(token=token))
        await sock.join()
        reply = await sock.call("sync:subscribe", {"topics": [topic], "resume_after": [{"topic": topic, "watermark": head}]})
        if reply["status"] != "ok":
            raise RuntimeError(str(reply))
        socks.append(sock)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    delivered = [0]

    def on_push(frame):
        if frame[3] == "sync:update_batch":
            now = time.perf_counter()
            for update in frame[4]["updates"]:
                at = sent.get(update["watermark"])
                if at is not None:
                    latencies.append(now - at)

    def counter(frame):
        if frame[3] == "sync:update_batch":
            delivered[0] += len(frame[4]["updates"])

    readers = [asyncio.create_task(read_frames(sock, on_push if n == 0 else counter)) for n, sock in enumerate(socks)]

    def write(i):
        started = time.perf_counter()
        watermark = project(topic, f"live:{i}", 1, harness.payload_of_size(i), owner).watermark
        sent[watermark] = started
        from django.db import connection

        connection.close()

    count = int(rate * seconds)
    began = time.perf_counter()
    for i in range(count):
        await asyncio.to_thread(write, first_doc + i)
        delay = began + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the writer
    deadline = time.perf_counter() + 20
    while len(latencies) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # until socket 0 has every write (bounded)
    for task in readers:
        task.cancel()
    for sock in socks:
        await sock.close()
    latencies.sort()
    return {
        "writes": count,
        "delivered_to_socket_0": len(latencies),
        "delivered_updates": len(latencies) + delivered[0],
        "p50_ms": round(harness.percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(harness.percentile(latencies, 99) * 1000, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=20_000, help="journal rows each replay reads")
    parser.add_argument("--clients", type=int, default=8, help="concurrent replaying sockets per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sockets", type=int, default=100, help="live sockets")
    parser.add_argument("--writes-per-second", type=float, default=20.0)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    primary = PostgresCluster()
    primary.start()
    replica = None
    try:
        database_url = primary.create_database("khala")
        os.environ.update({
            "DATABASE_URL": database_url,
            "REDIS_URL": os.environ.get("REDIS_URL") or harness.DEFAULT_REDIS_URL,
            "KHALA_CHANNEL_PREFIX": f"{harness.bench_prefix()}_{harness.bench_name('replicas')}",
            "KHALA_SIGNING_KEYS": f"bench:{secrets.token_urlsafe(48)}",
            "KHALA_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "khala_project.settings",
        })
        os.environ.pop("DATABASE_REPLICA_URLS", None)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        from projector.models import RUN_SUMMARIES

        topic = RUN_SUMMARIES
        user = harness.bench_user()
        owner = f"user:{user.pk}"
        print(f"seeding {args.updates} updates on {topic} ...", flush=True)
        seeded = seed(topic, owner, args.updates, 300)
        primary.sql("ANALYZE", "khala")
        token = harness.mint(user, [topic], ttl_seconds=900)
        from django.db import connection

        connection.close()
        replica = PostgresReplica(primary)
        replica.start()
        replica.wait_replayed(primary)
        env = {"database_url": database_url, "redis_url": os.environ["REDIS_URL"], "channel_prefix": os.environ["KHALA_CHANNEL_PREFIX"]}

        configs = {"primary": {}, "replica": {"DATABASE_REPLICA_URLS": replica.url("khala")}}
        results = {}
        next_doc = 0
        for name, server_env in configs.items():
            server = harness.start("daphne", env, env=server_env)
            try:
                head = args.updates + next_doc  # the journal: the seed plus earlier live phases
                asyncio.run(replay_once(server.ws_url(token=token), topic, head, None))  # warm up
                replica.wait_replayed(primary)
                with Meter(primary, replica) as replay_meter:
                    async def rounds():
                        out = []
                        for _ in range(args.rounds):
                            out += await asyncio.gather(*[
                                replay_once(server.ws_url(token=token), topic, head, None) for _ in range(args.clients)
                            ])
                        return out
                    runs = asyncio.run(rounds())
                replayed = sum(r["updates"] for r in runs)
                with Meter(primary, replica) as live_meter:
                    live = asyncio.run(live_phase(server, token, topic, owner, head, args.sockets, args.writes_per_second, args.live_seconds, next_doc))
                next_doc += live["writes"]
                results[name] = {
                    "replay": {
                        "replays": len(runs), "updates": replayed, "seconds": round(replay_meter.seconds, 2),
                        "updates_per_second": round(replayed / replay_meter.seconds),
                        "primary_cpu_seconds": round(replay_meter.primary_cpu, 2),
                        "replica_cpu_seconds": round(replay_meter.replica_cpu, 2),
                        "primary_rows_read": replay_meter.primary_rows_read,
                        "primary_cpu_ms_per_1000_updates": round(replay_meter.primary_cpu * 1e6 / replayed, 2),
                    },
                    "live": {
                        **live, "seconds": round(live_meter.seconds, 2),
                        "primary_cpu_seconds": round(live_meter.primary_cpu, 2),
                        "replica_cpu_seconds": round(live_meter.replica_cpu, 2),
                        "primary_rows_read": live_meter.primary_rows_read,
                        "primary_cpu_ms_per_1000_delivered": round(live_meter.primary_cpu * 1e6 / max(live["delivered_updates"], 1), 2),
                    },
                    "worker_counters": harness.scrape_metrics(server.http_url, prefixes=("khala_replica_",)),
                }
            finally:
                server.stop()
        p, r = results["primary"], results["replica"]
        ratios = {
            "replay_primary_cpu_replica_over_primary_only": round(r["replay"]["primary_cpu_seconds"] / max(p["replay"]["primary_cpu_seconds"], 1e-9), 3),
            "replay_primary_rows_read_replica_over_primary_only": round(r["replay"]["primary_rows_read"] / max(p["replay"]["primary_rows_read"], 1), 3),
            "live_primary_cpu_replica_over_primary_only": round(r["live"]["primary_cpu_seconds"] / max(p["live"]["primary_cpu_seconds"], 1e-9), 3),
            "live_p99_replica_over_primary_only": round(r["live"]["p99_ms"] / max(p["live"]["p99_ms"], 1e-9), 3),
        }
        print()
        print(f"{'config':8s} {'phase':6s} {'updates':>9s} {'s':>6s} {'prim CPU s':>10s} {'repl CPU s':>10s} {'prim rows':>10s} {'p99 ms':>7s}")
        for name, data in results.items():
            rp, lv = data["replay"], data["live"]
            print(f"{name:8s} replay {rp['updates']:>9,} {rp['seconds']:>6} {rp['primary_cpu_seconds']:>10} {rp['replica_cpu_seconds']:>10} {rp['primary_rows_read']:>10,} {'':>7s}")
            print(f"{name:8s} live   {lv['delivered_updates']:>9,} {lv['seconds']:>6} {lv['primary_cpu_seconds']:>10} {lv['replica_cpu_seconds']:>10} {lv['primary_rows_read']:>10,} {lv['p99_ms']:>7}")
        print(ratios)
        path = harness.write_result("replicas", {"seed": seeded, "args": vars(args), "results": results, "ratios": ratios}, argv)
        print(f"wrote {path}")
    finally:
        if replica is not None:
            replica.close()
        primary.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

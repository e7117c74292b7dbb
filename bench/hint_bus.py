"""Hint bus capacity: how many hint PUBLISHes one Redis process serves, with 0 and with K subscribed
connections (each subscribed connection = one worker process receiving every hint of a topic), and
how that grows with the number of Redis shards.

    .venv/bin/python bench/hint_bus.py [--publishes 200000] [--subscribers 0,8] [--clients 20] [--shards 1,2]

For each shard count N (``--shards``): runs N Redis servers of its own on free ports (persistence
off, like a pub/sub-only deployment); on EVERY shard starts K ``redis-cli SUBSCRIBE`` processes on
that shard's hint channel (a worker subscribes on every shard: ``khala_project.bus``); then runs N
``redis-benchmark`` processes at once, one per shard (the topics, hence the hints, are spread over
the shards), each PUBLISHing ``--publishes`` ÷ N hint-sized messages (~120 bytes: the channel
layer's msgpack of ``{type, topic, watermark, stream_epoch}``) from ``--clients`` ÷ N connections.
Reported: publishes/s (all shards' publishes ÷ wall time from the first start to the last end) and
messages delivered/s (publishes/s × K), and each Redis server's own CPU seconds (per publish and per
delivered message: what a shard on a core of its own would serve). Everything runs on this machine: with N shards the Redis
servers, the publishers and the subscribers share its cores, so the N-shard figure is a lower bound
of N separate Redis machines. Used by ``bench/capacity_model.py`` for the number of Redis shards
(the one-shard rows). Writes ``bench/results/hint_bus.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from tests.support.private_services import RedisServer, wait_for  # noqa: E402

CHANNEL = "khala_bench_hint"
MESSAGE = "x" * 120


def subscribers_ready(port: int, count: int) -> bool:
    out = subprocess.run(["redis-cli", "-p", str(port), "PUBSUB", "NUMSUB", CHANNEL], capture_output=True, text=True, timeout=10)
    lines = out.stdout.split()
    return len(lines) == 2 and int(lines[1]) >= count


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(servers: list, publishes: int, clients: int, subscribers: int) -> dict:
    ports = [server.port for server in servers]
    shards = len(ports)
    subs = [
        subprocess.Popen(["redis-cli", "-p", str(port), "SUBSCRIBE", CHANNEL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports
        for _ in range(subscribers)
    ]
    per_shard = publishes // shards
    try:
        for port in ports:
            wait_for(lambda port=port: subscribers_ready(port, subscribers), 20, f"{subscribers} subscribers on port {port}")
        started = time.perf_counter()
        cpu_before = [cpu_seconds(server.process.pid) for server in servers]
        runs = [
            subprocess.Popen(
                ["redis-benchmark", "-p", str(port), "-n", str(per_shard), "-c", str(max(1, clients // shards)), "--csv",
                 "PUBLISH", CHANNEL, MESSAGE],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for port in ports
        ]
        outputs = [run.communicate(timeout=600) for run in runs]
        seconds = time.perf_counter() - started
        redis_cpu = [cpu_seconds(server.process.pid) - before for server, before in zip(servers, cpu_before)]
        for run, (_, err) in zip(runs, outputs):
            if run.returncode != 0:
                raise RuntimeError(f"redis-benchmark failed: {err}")
    finally:
        for sub in subs:
            sub.kill()
            sub.wait(10)
    # Each redis-benchmark reports its own rate (CSV: header, then "PUBLISH ...","<requests per second>",...).
    per_shard_rps = [float(list(csv.reader(io.StringIO(out)))[-1][1]) for out, _ in outputs]
    rps = per_shard * shards / seconds
    return {
        "shards": shards,
        "subscribers": subscribers,
        "publishes_per_second": round(rps),
        "messages_delivered_per_second": round(rps * subscribers),
        "per_shard_publishes_per_second": [round(r) for r in per_shard_rps],
        "seconds": round(seconds, 2),
        # Each Redis server's own CPU over the run: what one shard costs per message, whatever the
        # other processes on the machine took (the figure that scales to one core per shard).
        "redis_cpu_seconds": [round(c, 3) for c in redis_cpu],
        "redis_cpu_us_per_publish": round(sum(redis_cpu) / (per_shard * shards) * 1e6, 3),
        "redis_cpu_us_per_delivered_message": round(sum(redis_cpu) / (per_shard * shards * subscribers) * 1e6, 3) if subscribers else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishes", type=int, default=200_000, help="PUBLISH commands per measurement (over all shards).")
    parser.add_argument("--subscribers", default="0,8", help="Comma-separated subscriber counts (per shard).")
    parser.add_argument("--clients", type=int, default=20, help="Concurrent publishing connections (over all shards).")
    parser.add_argument("--shards", default="1", help="Comma-separated numbers of Redis servers, e.g. 1,2.")
    args = parser.parse_args()
    shard_counts = [int(n) for n in args.shards.split(",")]
    results = []
    servers = [RedisServer() for _ in range(max(shard_counts))]
    try:
        for server in servers:
            server.start()
        for shards in shard_counts:
            for count in [int(c) for c in args.subscribers.split(",")]:
                results.append(measure(servers[:shards], args.publishes, args.clients, count))
                print(results[-1], flush=True)
    finally:
        for server in servers:
            server.close()
    path = harness.write_result("hint_bus", {"publishes": args.publishes, "clients": args.clients, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

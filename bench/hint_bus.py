"""Hint bus capacity: how many hint PUBLISHes one Redis process serves, with 0 and with K subscribed
connections (each subscribed connection = one worker process receiving every hint of a topic).

    .venv/bin/python bench/hint_bus.py [--publishes 200000] [--subscribers 0,8] [--clients 20]

Runs a Redis of its own on a free port (persistence off, like a pub/sub-only deployment), starts K
``redis-cli SUBSCRIBE`` processes on the hint channel, then ``redis-benchmark`` PUBLISHes a hint-sized
message (~120 bytes: the channel layer's msgpack of ``{type, topic, watermark, stream_epoch}``) from
``--clients`` connections. Reported: publishes/s and messages delivered/s (publishes × K). Used by
``bench/capacity_model.py`` for the number of Redis shards. Writes ``bench/results/hint_bus.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
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


def measure(port: int, publishes: int, clients: int, subscribers: int) -> dict:
    subs = [
        subprocess.Popen(["redis-cli", "-p", str(port), "SUBSCRIBE", CHANNEL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(subscribers)
    ]
    try:
        wait_for(lambda: subscribers_ready(port, subscribers), 20, f"{subscribers} subscribers")
        started = time.perf_counter()
        out = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-n", str(publishes), "-c", str(clients), "--csv", "PUBLISH", CHANNEL, MESSAGE],
            capture_output=True, text=True, check=True, timeout=600,
        )
        seconds = time.perf_counter() - started
    finally:
        for sub in subs:
            sub.kill()
            sub.wait(10)
    rows = list(csv.reader(io.StringIO(out.stdout)))
    rps = float(rows[-1][1])  # header, then "PUBLISH ...","<requests per second>",...
    return {
        "subscribers": subscribers,
        "publishes_per_second": round(rps),
        "messages_delivered_per_second": round(rps * subscribers),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishes", type=int, default=200_000, help="PUBLISH commands per measurement.")
    parser.add_argument("--subscribers", default="0,8", help="Comma-separated subscriber counts.")
    parser.add_argument("--clients", type=int, default=20, help="Concurrent publishing connections.")
    args = parser.parse_args()
    results = []
    with RedisServer() as redis:
        for count in [int(c) for c in args.subscribers.split(",")]:
            results.append(measure(redis.port, args.publishes, args.clients, count))
            print(results[-1], flush=True)
    path = harness.write_result("hint_bus", {"publishes": args.publishes, "clients": args.clients, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

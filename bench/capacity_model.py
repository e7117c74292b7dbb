"""Capacity model: from the measured per-worker figures in ``bench/results/*.json``, predict the
workers, read replicas, pool sizes and Redis shards for 10k–1M sockets and 1k–100k writes/s, and
name the resource that saturates first. Needs no services: it only reads the committed results.

    .venv/bin/python bench/capacity_model.py

Prints two Markdown tables (the measured inputs with their commands, then the predictions);
docs/sync/CAPACITY.md shows the same output between its ``capacity-model`` markers and a test
checks they are equal. Re-run a benchmark, then this script, then paste its output into the doc.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# --- the workload and the deployment: ASSUMPTIONS, stated here and in the doc (not measurements) ---
SOCKETS = (10_000, 100_000, 1_000_000)
WRITES_PER_SECOND = (1_000, 10_000, 100_000)
DELIVERIES_PER_WRITE = 2  # a write reaches its owner's open sockets (two devices)
TOPICS = 4  # the v1 topics; every worker has subscribers on each
WORKER_CPU_TARGET = 0.6  # of one core: headroom for reconnect storms and replay bursts
WORKER_MEMORY_BYTES = 2 * 2**30  # per worker process
DB_CORES = 16  # per PostgreSQL machine (primary or replica)
DB_CPU_TARGET = 0.6
REDIS_CPU_TARGET = 0.5
HEARTBEAT_INTERVAL_SECONDS = 15.0  # KHALA HEARTBEAT_INTERVAL_SECONDS (a setting)
HINT_LINGER_SECONDS = 0.002  # KHALA HINT_LINGER_SECONDS: at most one hint per topic per linger per writer


@dataclass(frozen=True)
class Input:
    name: str
    value: float
    unit: str
    source: str  # result file and field
    command: str  # the command that measured it


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def measured_inputs() -> dict[str, Input]:
    fanout, connections, replay, sink, tokens, hint_bus = (
        _load(n) for n in ("fanout", "connections", "replay", "sink", "tokens", "hint_bus")
    )
    f = fanout["servers"]["daphne"]
    c = connections["servers"]["daphne"]
    r = replay["servers"]["daphne"]
    median_run = sorted(r["runs"], key=lambda run: run["seconds"])[len(r["runs"]) // 2]
    batch = next(x for x in sink["results"] if x["scenario"] == "batch100_4topics")
    single = next(x for x in sink["results"] if x["scenario"] == "single_4topics")
    hint_reads = sum(m['khala_hub_journal_reads_total{trigger="hint"}'] for m in f["server_metrics"])
    # The hint bus: Redis CPU per delivered hint message, at the most shards measured (any cost of
    # sharding included); a shard is one Redis process on a core of its own.
    busy = [x for x in hint_bus["results"] if x["subscribers"] and x.get("redis_cpu_us_per_delivered_message")]
    bus = max(busy, key=lambda x: (x.get("shards", 1), x["subscribers"]))
    inputs = [
        Input("cpu_per_delivery_us", sum(f["server_cpu_seconds_during_writes"].values()) / f["deliveries"] * 1e6,
              "µs of worker CPU per delivered update", "fanout.json servers.daphne (cpu seconds ÷ deliveries)", fanout["command"]),
        Input("cpu_per_idle_socket_us_s", c["idle_server_cpu_seconds"] / c["idle_window_seconds"] / c["sockets_subscribed"] * 1e6,
              "µs of worker CPU per idle socket per second (heartbeats)", "connections.json servers.daphne", connections["command"]),
        Input("rss_per_socket_bytes", c["rss_per_socket_bytes"], "bytes per subscribed socket",
              "connections.json servers.daphne.rss_per_socket_bytes", connections["command"]),
        Input("rss_base_bytes", c["rss_warm_bytes"], "bytes per worker without sockets",
              "connections.json servers.daphne.rss_warm_bytes", connections["command"]),
        Input("db_connections_per_worker", c["db_connections_peak"], "PostgreSQL connections per worker (pool 4 + 1)",
              "connections.json servers.daphne.db_connections_peak", connections["command"]),
        Input("journal_reads_per_hint", hint_reads / (f["updates_written"] * f["workers"]), "journal reads per hint per worker",
              "fanout.json khala_hub_journal_reads_total{trigger=hint} ÷ (updates × workers)", fanout["command"]),
        Input("journal_reads_per_s_per_core", median_run["batches"] / median_run["seconds"],
              "journal page reads/s one connection served (lower bound: the worker was the bottleneck)",
              "replay.json servers.daphne median run (batches ÷ seconds)", replay["command"]),
        Input("replay_updates_per_s", r["median_updates_per_second"], "updates/s one worker replays to one client",
              "replay.json servers.daphne.median_updates_per_second", replay["command"]),
        Input("primary_batched_writes_per_s", batch["sink_docs_per_s"], "documents/s, project_many of 100, 4 writers (2-core box)",
              "sink.json batch100_4topics.sink_docs_per_s", sink["command"]),
        Input("primary_single_writes_per_s", single["sink_docs_per_s"], "documents/s, one per transaction, 4 writers (2-core box)",
              "sink.json single_4topics.sink_docs_per_s", sink["command"]),
        Input("token_verify_us", tokens["scenarios"]["HS256"]["verify_us_per_join_median"], "µs per socket join (HS256 verify)",
              "tokens.json scenarios.HS256.verify_us_per_join_median", tokens["command"]),
        Input("redis_cpu_us_per_message", bus["redis_cpu_us_per_delivered_message"],
              f"µs of one Redis process's CPU per delivered hint message ({bus['shards']} shards, {bus['subscribers']} subscribers each)",
              f"hint_bus.json results[shards={bus['shards']}, subscribers={bus['subscribers']}].redis_cpu_us_per_delivered_message",
              hint_bus["command"]),
        Input("postgres_max_connections", connections["postgres_max_connections"], "max_connections of the measured server",
              "connections.json postgres_max_connections", connections["command"]),
    ]
    return {i.name: i for i in inputs}


@dataclass(frozen=True)
class Prediction:
    sockets: int
    writes: int
    workers: int
    worker_bound: str  # cpu | memory
    pool_size: int
    db_connections: int
    journal_reads: float
    replicas: int
    primaries_for_writes: int
    redis_shards: int
    first_to_saturate: str


def predict(m: dict[str, float], sockets: int, writes: int) -> Prediction:
    deliveries = writes * DELIVERIES_PER_WRITE
    cpu = (sockets * m["cpu_per_idle_socket_us_s"] + deliveries * m["cpu_per_delivery_us"]) / 1e6  # cores
    by_cpu = math.ceil(cpu / WORKER_CPU_TARGET)
    per_worker_memory = WORKER_MEMORY_BYTES - m["rss_base_bytes"]
    by_memory = math.ceil(sockets * m["rss_per_socket_bytes"] / per_worker_memory)
    workers = max(by_cpu, by_memory, 1)
    # Hints: one per topic per linger per writer process; never more than the writes.
    writer_processes = max(1, math.ceil(writes / (m["primary_batched_writes_per_s"] / 4)))
    hints = min(writes, TOPICS * writer_processes / HINT_LINGER_SECONDS)
    reads = workers * hints * m["journal_reads_per_hint"]  # every worker reads once per hint
    read_seconds = 1 / m["journal_reads_per_s_per_core"]
    pool = max(1, math.ceil(hints * m["journal_reads_per_hint"] * read_seconds / 0.5))  # connections ≤ 50 % busy
    db_cores_for_reads = reads * read_seconds / DB_CPU_TARGET
    replicas = max(0, math.ceil(db_cores_for_reads / DB_CORES) - 1)  # the primary serves one machine's worth
    primaries = math.ceil(writes / m["primary_batched_writes_per_s"])
    redis_messages = hints * workers
    redis_cores = redis_messages * m["redis_cpu_us_per_message"] / 1e6  # shards scale out: one core each
    shards = max(1, math.ceil(redis_cores / REDIS_CPU_TARGET))
    # Load on ONE unit of each resource, relative to what it serves: the largest saturates first.
    load = {
        "worker CPU": cpu / WORKER_CPU_TARGET,
        "worker memory": sockets * m["rss_per_socket_bytes"] / per_worker_memory,
        "primary writes": writes / m["primary_batched_writes_per_s"],
        "primary journal reads": db_cores_for_reads / DB_CORES,
        "primary connections": workers * (pool + 1) / m["postgres_max_connections"],
        "Redis": redis_cores / REDIS_CPU_TARGET,
    }
    first = max(load, key=load.get)
    return Prediction(sockets, writes, workers, "cpu" if by_cpu >= by_memory else "memory", pool,
                      workers * (pool + 1), reads, replicas, primaries, shards, first)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")


def render() -> str:
    inputs = measured_inputs()
    m = {name: i.value for name, i in inputs.items()}
    lines = ["| input | value | unit | source | command |", "|---|---|---|---|---|"]
    lines += [f"| `{i.name}` | {_fmt(i.value)} | {i.unit} | {i.source} | `{i.command}` |" for i in inputs.values()]
    lines += ["", "| sockets | writes/s | workers (bound) | pool/worker | DB connections | journal reads/s | read replicas | primaries (writes) | Redis shards | saturates first |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for sockets in SOCKETS:
        for writes in WRITES_PER_SECOND:
            p = predict(m, sockets, writes)
            lines.append(
                f"| {sockets:,} | {writes:,} | {p.workers:,} ({p.worker_bound}) | {p.pool_size} | {p.db_connections:,} | "
                f"{_fmt(p.journal_reads)} | {p.replicas:,} | {p.primaries_for_writes:,} | {p.redis_shards:,} | {p.first_to_saturate} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

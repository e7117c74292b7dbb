"""What recording a command's projection intent costs the writer, one writer and no contention.

    .venv/bin/python bench/intent_cost.py [--commands 800] [--rounds 8]

One process appends run events (``runtime.commands.append_run_event``) to one run on its own
database (``khala_bench_intent_cost``), alternating two modes round by round: ``off`` (nothing
recorded: ``KHALA RUNTIME_PROJECTION=off``, which also switches the trigger off for the session) and
``outbox`` (the intent recorded, fast path off). A second connection holds the draining flag
throughout, as a draining worker would: the writer then sends no NOTIFY, so what differs between
the modes is the recording of the intent alone. Measured per command: the writer's CPU
(``process_time``, all its threads) and its PostgreSQL backend's (``/proc/<pid>/stat``); printed as
the medians over the rounds, and written to ``bench/results/intent_cost.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402


def measure(mode: str, commands: int, user) -> dict:
    from django.conf import settings
    from django.db import connection

    from runtime import commands as runtime_commands

    settings.KHALA = {**getattr(settings, "KHALA", {}), "RUNTIME_PROJECTION": mode, "OUTBOX_FAST_PATH": False}
    connection.close()  # a new session: the mode reaches the trigger when it opens (runtime.apps)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runtime_run_events, runtime_runs, khala_projection_outbox CASCADE")
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    run = runtime_commands.create_run(user)
    for i in range(100):  # warm: first-use costs out of the measurement
        runtime_commands.append_run_event(run.id, user, "run.delta", {"n": i})
    backend_before, cpu_before = harness.proc_cpu_seconds(backend), time.process_time()
    for i in range(commands):
        runtime_commands.append_run_event(run.id, user, "run.delta", {"n": i})
    cpu, backend_cpu = time.process_time() - cpu_before, harness.proc_cpu_seconds(backend) - backend_before
    return {"mode": mode, "writer_ms": cpu / commands * 1e3, "backend_ms": backend_cpu / commands * 1e3}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=800, help="commands per mode and round (default 800)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds, the two modes alternating (default 8)")
    args = parser.parse_args(argv)

    env = harness.setup("intent_cost")
    import psycopg

    from projector.outbox_draining import DRAINING_LOCK

    user = harness.bench_user()
    with psycopg.connect(env["database_url"], autocommit=True) as drainer:
        drainer.execute("SELECT pg_advisory_lock(%s)", [DRAINING_LOCK])  # a worker is draining
        runs = [measure(mode, args.commands, user) for _ in range(args.rounds) for mode in ("off", "outbox")]
    summary = {}
    for mode in ("off", "outbox"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {key: round(statistics.median(r[key] for r in mine), 3) for key in ("writer_ms", "backend_ms")}
        print(f"{mode:7} writer {summary[mode]['writer_ms']:.3f} ms/command, its backend {summary[mode]['backend_ms']:.3f} ms/command")
    extra = {key: round(summary["outbox"][key] - summary["off"][key], 3) for key in ("writer_ms", "backend_ms")}
    print(f"recording the intent: writer +{extra['writer_ms']:.3f} ms, backend +{extra['backend_ms']:.3f} ms per command")
    path = harness.write_result("intent_cost", {
        "commands_per_round": args.commands, "rounds": args.rounds, "medians": summary, "intent_extra_ms": extra,
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

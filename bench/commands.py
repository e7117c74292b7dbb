"""Benchmark of the authority command path on ONE busy topic: how projection caps the command rate.

    .venv/bin/python bench/commands.py [--seconds 10] [--writers 16] [--transports inprocess,http] [--rate R]
                                       [--rounds N] [--result-name NAME]

Runs on its own database (``khala_bench_commands``; created and migrated here). ``--writers``
processes append run events (``runtime.commands.append_run_event``), each to its own run, so every
command changes one document of ``runtime.run_summaries``: one topic, one sequence row, the case the
outbox is for. Each mode runs for ``--seconds`` in the same run of this script, on freshly emptied
tables, with a fresh daphne server (the subscriber's, and the command API's for ``http``):

- ``authority_only``: ``KHALA RUNTIME_PROJECTION=off``, nothing projected: the ceiling;
- ``after_commit``: the pre-outbox path, one projection transaction per command in ``on_commit``;
- ``outbox``: the outbox with the fast path off, one ``manage.py projector_worker`` draining it in
  batches (``project_many``: one topic-row lock per batch), its wait between passes growing with
  the host's CPU pressure (``projector.linger``; the default);
- ``outbox_fixed_linger``: the same with that wait fixed at 10 ms (``OUTBOX_LINGER_MAX_SECONDS=0``;
  the mode's settings reach the worker too);
- ``outbox_half_rate``: the same, writers paced to half the ``authority_only`` rate (latency target);
- ``outbox_fast_path_half_rate``: the default configuration (fast path on, worker running) at that
  same rate.

Transports: ``inprocess`` (each writer process calls the command functions) and ``http`` (each
writer is a keep-alive HTTP client of ``POST /api/runtime/runs/<id>/events`` on the daphne server,
started as every benchmark here starts its servers). The half-rate modes run in-process only.
``--rate`` paces the in-process writers of every mode to one fixed total rate instead: on a machine
loaded by others, throughput says little, while CPU per command at one rate still compares modes.

Measured per mode:

- commands/s committed, and journal rows/s of the topic while the writers ran;
- outbox depth sampled every 0.5 s (max, last) and the seconds the backlog took to drain after
  the writers stopped;
- COMMIT -> journal-visible latency: the COMMIT time is taken inside each writer right after the
  COMMIT returned and before any ``on_commit`` callback ran (in-process only: an HTTP client only
  sees the response, which in ``after_commit`` mode comes after the projection); "visible" is the
  first time a poller of the journal (every 10 ms, its own connection) saw the run's summary at
  that version or later (the outbox folds an entity once per batch, so consecutive versions may
  share one journal row);
- COMMIT -> subscriber receive: the same, seen by a WebSocket client subscribed to the topic;
- CPU ms per command by process kind: the writers (in-process: their own ``process_time``), the
  projector worker, the daphne server, the backends of this benchmark's database
  (``postgres_backends``), their sum (``own_total``: the figure to compare modes by on a shared
  machine) and, for reference, every ``postgres`` process of the machine (``postgres``).

With ``--rounds N`` every mode runs N times, the modes taking turns, each round with its own
``authority_only`` ceiling (and half rate): on a noisy machine the ceiling of a single run moves by
a quarter, so the summary gives each mode's median over the rounds.

Prints a table and writes ``bench/results/commands.json`` (``--result-name``). The targets (16
writers): the outbox path sustains >= 0.8x the ``authority_only`` command rate with a bounded outbox
depth, and at half that rate commit -> subscriber p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

TOPIC = "runtime.run_summaries"
CPU_SAMPLE_LEAD_SECONDS = 0.2
# The writers start together this long after they are forked: time to connect and run their
# warm-up command (``_writer_inprocess``) first, even 16 of them on 2 slow cores.
WRITER_LEAD_SECONDS = 4.0
MODES = {
    "authority_only": {"RUNTIME_PROJECTION": "off"},
    "after_commit": {"RUNTIME_PROJECTION": "after_commit"},
    "outbox": {"RUNTIME_PROJECTION": "outbox", "OUTBOX_FAST_PATH": False},
    # The worker's wait between passes fixed at its minimum (10 ms), as before it grew with the
    # host's CPU pressure (projector.linger): the comparison for the default "outbox" mode.
    "outbox_fixed_linger": {"RUNTIME_PROJECTION": "outbox", "OUTBOX_FAST_PATH": False, "OUTBOX_LINGER_MAX_SECONDS": 0},
    "outbox_half_rate": {"RUNTIME_PROJECTION": "outbox", "OUTBOX_FAST_PATH": False},
    "outbox_fast_path_half_rate": {"RUNTIME_PROJECTION": "outbox", "OUTBOX_FAST_PATH": True},
}
WORKER_MODES = {"outbox", "outbox_fixed_linger", "outbox_half_rate", "outbox_fast_path_half_rate"}
HALF_RATE_MODES = {"outbox_half_rate", "outbox_fast_path_half_rate"}


# --- writers (forked processes) ------------------------------------------------------------------


def _writer_inprocess(run_id: str, user_id: int, khala: dict, start_at: float, stop_at: float, interval: float, out):
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.backends.base.base import BaseDatabaseWrapper

    from runtime import commands

    settings.KHALA = {**getattr(settings, "KHALA", {}), **khala}
    committed = []
    original = BaseDatabaseWrapper.run_and_clear_commit_hooks

    def stamp_then_callbacks(self):  # right after COMMIT returned, before any on_commit callback
        committed.append(time.time())
        original(self)

    BaseDatabaseWrapper.run_and_clear_commit_hooks = stamp_then_callbacks
    user = get_user_model().objects.get(id=user_id)
    # One command before the measured window: a process's first command pays its first-use costs
    # (imports, query compilation) for about a second of CPU, and 16 writers paying it at once
    # would saturate the machine for the window's first seconds in every mode.
    commands.append_run_event(run_id, user, "run.delta", {"warm_up": True})
    records = []
    errors = 0
    _wait_until(start_at)
    cpu_at_start = time.process_time()  # this process, every thread (the NOTIFY thread too)
    next_slot = time.time()
    while time.time() < stop_at:
        if interval:
            next_slot += interval
        try:
            event = commands.append_run_event(run_id, user, "run.delta", {"n": len(records)})
            records.append((event.seq, committed[-1]))
        except Exception:
            errors += 1
        if interval:
            _wait_until(next_slot)
    cpu_seconds = time.process_time() - cpu_at_start  # includes the fast path's on_commit work
    from projector.hints import flush_hints

    flush_hints(5.0)  # a forked process exits without atexit: publish the last hints first
    connection.close()
    out.put({"records": [(run_id, seq, t) for seq, t in records], "errors": errors, "cpu_seconds": cpu_seconds})


def _writer_http(run_id: str, api_url: str, api_token: str, start_at: float, stop_at: float, out):
    parts = urllib.parse.urlsplit(api_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": f"Token {api_token}", "Content-Type": "application/json"}
    body = json.dumps({"event_type": "run.delta", "payload": {}})
    records, errors = [], 0
    _wait_until(start_at)
    while time.time() < stop_at:
        try:
            conn.request("POST", f"/api/runtime/runs/{run_id}/events", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status == 201:
                records.append((run_id, json.loads(data)["seq"], time.time()))
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    out.put({"records": records, "errors": errors})


def _wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


# --- the subscriber (a forked process with its own event loop) ----------------------------------


def _subscriber(ws_url: str, ready, stop, out):
    received: dict[str, list[tuple[int, float]]] = {}

    def on_push(frame, received_at):
        if frame[3] == "sync:update_batch":
            for update in frame[4]["updates"]:
                received.setdefault(update["doc_key"], []).append((update["doc_version"], received_at))

    async def main():
        sock = await harness.RawSyncSocket.connect(ws_url, on_push=on_push)
        await harness.join_and_subscribe(sock, TOPIC)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await sock.close()

    asyncio.run(main())
    out.put(received)


# --- one mode --------------------------------------------------------------------------------------


def _postgres_cpu_seconds() -> float:
    """CPU seconds of every ``postgres`` process on this machine (backends, WAL writer, …). On a
    shared machine this includes other users' work: read it on a quiet one."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() != "postgres":
                    continue
            total += harness.proc_cpu_seconds(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile
    return total


def _database_backend_cpu(cursor) -> dict[int, float]:
    """CPU seconds per backend connected to this benchmark's database (writers, worker, NOTIFY
    threads, daphne, the monitor): the part of ``postgres`` that other users of a shared machine
    cannot inflate. A backend that exits between two samples is lost, one that starts between
    them counts from its start; the benchmark's connections live through a mode, so both are rare."""
    cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    cpu = {}
    for (pid,) in cursor.fetchall():
        try:
            cpu[pid] = harness.proc_cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return cpu


def _cpu_sample(server, worker, cursor) -> dict:
    return {
        "server": harness.proc_cpu_seconds(server.pid),
        "projector_worker": harness.proc_cpu_seconds(worker.pid) if worker is not None else 0.0,
        "postgres": _postgres_cpu_seconds(),
        "postgres_backends": _database_backend_cpu(cursor),
    }


def _cpu_delta(start: dict, stop: dict) -> dict[str, float]:
    delta = {kind: stop[kind] - start[kind] for kind in start if kind != "postgres_backends"}
    before, after = start["postgres_backends"], stop["postgres_backends"]
    delta["postgres_backends"] = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return delta


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runtime_run_events, runtime_runs, khala_projection_outbox, khala_projection_checkpoints CASCADE")
    harness.reset_topic(TOPIC)


def _first_seen_at_or_after(seen: dict[str, list[tuple[int, float]]], doc_key: str, version: int) -> float | None:
    times = [t for v, t in seen.get(doc_key, ()) if v >= version]
    return min(times) if times else None


def _latency(records, seen) -> dict:
    from projector.projector import run_doc_key

    lat, missing = [], 0
    for run_id, seq, committed_at in records:
        t = _first_seen_at_or_after(seen, run_doc_key(run_id), seq)
        if t is None:
            missing += 1
        else:
            lat.append(max(0.0, t - committed_at) * 1000)
    lat.sort()
    return {
        "p50_ms": round(harness.percentile(lat, 50), 2) if lat else None,
        "p99_ms": round(harness.percentile(lat, 99), 2) if lat else None,
        "max_ms": round(lat[-1], 2) if lat else None,
        "never_seen": missing,
    }


def run_mode(mode: str, transport: str, args, env: dict, user, api_token: str, rate: float | None) -> dict:
    from django.db import connection, connections

    from runtime.models import Run

    _reset()
    runs = [Run.objects.create(owner=user, thread_id=f"bench-{i}").id for i in range(args.writers)]
    with connection.cursor() as cursor:  # the setup's runs are not measured commands: no entries of theirs
        cursor.execute("DELETE FROM khala_projection_outbox")
    khala = MODES[mode]
    server = harness.start("daphne", env, khala=khala)
    worker = None
    ctx = mp.get_context("fork")
    stop_sub, ready_sub, sub_out = ctx.Event(), ctx.Event(), ctx.Queue()
    subscriber = None
    writers = []
    try:
        if mode in WORKER_MODES:
            worker_log = Path(tempfile.mkstemp(prefix="khala-bench-projector-", suffix=".log")[1])
            with worker_log.open("w") as log_file:
                worker = subprocess.Popen(
                    [sys.executable, "manage.py", "projector_worker", "--batch-size", str(args.batch_size)],
                    cwd=harness.REPO_ROOT,
                    env=dict(os.environ, KHALA_LOG_LEVEL="WARNING", KHALA_SETTINGS_JSON=json.dumps(khala)),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while "projector worker ready" not in worker_log.read_text():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"projector_worker did not start: {worker_log.read_text()}")
                time.sleep(0.1)
        connections.close_all()  # no shared sockets across fork
        subscriber = ctx.Process(
            target=_subscriber, args=(server.ws_url(token=harness.mint(user, [TOPIC])), ready_sub, stop_sub, sub_out)
        )
        connections.close_all()
        subscriber.start()
        if not ready_sub.wait(60):
            raise RuntimeError("the subscriber did not subscribe")
        start_at = time.time() + WRITER_LEAD_SECONDS
        stop_at = start_at + args.seconds
        out = ctx.Queue()
        interval = args.writers / rate if rate else 0.0
        for run_id in runs:
            if transport == "inprocess":
                target, wargs = _writer_inprocess, (run_id, user.id, khala, start_at, stop_at, interval, out)
            else:
                target, wargs = _writer_http, (run_id, server.http_url, api_token, start_at, stop_at, out)
            writers.append(ctx.Process(target=target, args=wargs))
        for w in writers:
            w.start()

        # Monitor: poll the journal (visibility times) and sample the outbox depth.
        seen: dict[str, list[tuple[int, float]]] = {}
        depth: list[tuple[float, int]] = []
        cursor_wm = 0
        next_depth = start_at
        rows_in_window = 0
        drained_at = None
        results = []
        give_up = stop_at + args.drain_timeout
        cpu_start = cpu_stop = None
        cpu_start_at = cpu_stop_at = 0.0
        with connection.cursor() as cur:
            while True:
                now = time.time()
                if cpu_start is None and now >= start_at:
                    cpu_start, cpu_start_at = _cpu_sample(server, worker, cur), now
                # A little before the writers stop: they close their connections right after.
                if cpu_stop is None and now >= stop_at - CPU_SAMPLE_LEAD_SECONDS:
                    cpu_stop, cpu_stop_at = _cpu_sample(server, worker, cur), now
                cur.execute(
                    "SELECT watermark, doc_key, doc_version FROM sync_stream_events WHERE topic = %s AND watermark > %s ORDER BY watermark",
                    [TOPIC, cursor_wm],
                )
                rows = cur.fetchall()
                seen_at = time.time()
                for wm, key, version in rows:
                    seen.setdefault(key, []).append((version, seen_at))
                    cursor_wm = wm
                    if start_at <= seen_at <= stop_at:
                        rows_in_window += 1
                while len(results) < len(writers):  # read as they come: a child cannot exit before
                    try:  # its queued records are read
                        results.append(out.get_nowait())
                    except queue.Empty:
                        break
                if now >= next_depth:
                    cur.execute("SELECT count(*) FROM khala_projection_outbox WHERE quarantined_at IS NULL")
                    pending = cur.fetchone()[0]
                    depth.append((round(now - start_at, 2), pending))
                    next_depth += 0.5
                    if now > stop_at and (len(results) == len(writers) or now > give_up):
                        if pending == 0 and drained_at is None:
                            drained_at = now
                        if drained_at is not None or mode not in WORKER_MODES or now > give_up:
                            break
                time.sleep(0.01)
        for w in writers:
            w.join(10)
        time.sleep(1.0)  # let the last live frames reach the subscriber
        stop_sub.set()
        received = sub_out.get(timeout=30)
        subscriber.join(10)
    finally:
        for w in writers:
            if w.is_alive():
                w.kill()
        if subscriber is not None and subscriber.is_alive():
            subscriber.kill()
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.stop()
        connections.close_all()

    records = [r for res in results for r in res["records"]]
    errors = sum(res["errors"] for res in results)
    committed_in_window = sum(1 for _run, _seq, t in records if start_at <= t <= stop_at)
    result = {
        "mode": mode,
        "transport": transport,
        "writers": args.writers,
        "target_rate": round(rate, 1) if rate else None,
        "commands": len(records),
        "errors": errors,
        "commands_per_s": round(committed_in_window / args.seconds, 1),
        "journal_rows_per_s": round(rows_in_window / args.seconds, 1),
        "outbox_depth_max": max((d for _, d in depth), default=0),
        "outbox_depth_at_stop": next((d for t, d in depth if t >= args.seconds), 0),
        "drain_seconds_after_stop": round(drained_at - stop_at, 2) if drained_at and mode in WORKER_MODES else None,
        "outbox_depth_series": depth,
    }
    committed_in_sample = sum(1 for _run, _seq, t in records if cpu_start_at <= t <= cpu_stop_at) if cpu_stop else 0
    if cpu_start and cpu_stop and committed_in_window and committed_in_sample:
        # CPU per command committed while the writers ran, by process kind: where a mode's cost goes
        # when the 2 cores are the bound. (The server is the subscriber's daphne, and the HTTP API's.)
        # Sampled kinds are divided by the commands of their sampling window, the writers' own
        # figure by those of the whole window.
        ms = {kind: 1000 * sec / committed_in_sample for kind, sec in _cpu_delta(cpu_start, cpu_stop).items()}
        if transport == "inprocess":
            ms["writers"] = 1000 * sum(res.get("cpu_seconds", 0.0) for res in results) / committed_in_window
        # What this benchmark's own processes spent (machine-wide ``postgres`` left out): the figure
        # to compare between modes when other users load the machine.
        ms["own_total"] = sum(v for kind, v in ms.items() if kind != "postgres")
        result["cpu_ms_per_command"] = {kind: round(v, 3) for kind, v in ms.items()}
    if transport == "inprocess" and mode != "authority_only":
        result["commit_to_journal_visible"] = _latency(records, seen)
        result["commit_to_subscriber"] = _latency(records, received)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each mode's writers run (default 10)")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writer processes (default 16)")
    parser.add_argument("--transports", default="inprocess,http", help="inprocess, http or both (default both)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"modes to run, in order (default {','.join(MODES)})")
    parser.add_argument("--batch-size", type=int, default=200, help="projector_worker --batch-size (default 200)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the in-process writers of every mode to this many commands/s in total (default: as fast as they can); "
        "CPU per command at one fixed rate compares modes on a machine too loaded for their throughput to",
    )
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to wait for the backlog after the writers stop")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every mode this many times, in turn (each round measures its own authority_only ceiling); "
        "the summary gives each mode's median over the rounds",
    )
    parser.add_argument("--result-name", default="commands", help="bench/results/<name>.json")
    args = parser.parse_args(argv)

    env = harness.setup("commands")
    from rest_framework.authtoken.models import Token

    user = harness.bench_user()
    api_token = Token.objects.get_or_create(user=user)[0].key
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    out = {"seconds": args.seconds, "writers": args.writers, "batch_size": args.batch_size, "runs": []}
    for number in range(args.rounds):
        ceiling: dict[str, float] = {}
        for transport in [t.strip() for t in args.transports.split(",") if t.strip()]:
            for mode in modes:
                if mode in HALF_RATE_MODES and transport != "inprocess":
                    continue
                rate = args.rate if args.rate and transport == "inprocess" else None
                if mode in HALF_RATE_MODES:
                    if transport not in ceiling:
                        continue
                    rate = ceiling[transport] / 2
                print(f"round {number + 1} {transport} {mode} …", flush=True)
                result = run_mode(mode, transport, args, env, user, api_token, rate)
                result["round"] = number + 1
                if mode == "authority_only":
                    ceiling[transport] = result["commands_per_s"]
                if transport in ceiling and ceiling[transport]:
                    result["ratio_to_authority_only"] = round(result["commands_per_s"] / ceiling[transport], 3)
                out["runs"].append(result)
                print("  " + _row(result), flush=True)
    out["rounds"] = args.rounds
    out["medians"] = medians(out["runs"])
    print(f"medians over {args.rounds} round(s):")
    for row in out["medians"]:
        print("  " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    out["postgres"] = harness.postgres_settings()
    path = harness.write_result(args.result_name, out, script="commands")
    print(f"wrote {path}")
    return 0


def medians(runs: list[dict]) -> list[dict]:
    """Per (transport, mode), in order of first appearance: the median over rounds of the command
    rate, the ratio to the same round's ``authority_only`` and the commit -> subscriber p50/p99."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["transport"], run["mode"]), []).append(run)

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    rows = []
    for (transport, mode), group in groups.items():
        latency = [r.get("commit_to_subscriber") or {} for r in group]
        rows.append({
            "transport": transport,
            "mode": mode,
            "rounds": len(group),
            "commands_per_s": median([r["commands_per_s"] for r in group]),
            "ratio_to_authority_only": median([r.get("ratio_to_authority_only") for r in group]),
            "commit_to_subscriber_p50_ms": median([v.get("p50_ms") for v in latency]),
            "commit_to_subscriber_p99_ms": median([v.get("p99_ms") for v in latency]),
        })
    return rows


def _row(r: dict) -> str:
    text = (
        f"cmd/s={r['commands_per_s']} journal rows/s={r['journal_rows_per_s']} "
        f"ratio={r.get('ratio_to_authority_only', '-')} depth max={r['outbox_depth_max']} "
        f"at stop={r['outbox_depth_at_stop']} drain={r['drain_seconds_after_stop']}s errors={r['errors']}"
    )
    for key in ("commit_to_journal_visible", "commit_to_subscriber"):
        if key in r:
            v = r[key]
            text += f" {key} p50={v['p50_ms']}ms p99={v['p99_ms']}ms never={v['never_seen']}"
    if "cpu_ms_per_command" in r:
        text += " cpu ms/command " + " ".join(f"{k}={v}" for k, v in r["cpu_ms_per_command"].items())
    return text


if __name__ == "__main__":
    sys.exit(main())

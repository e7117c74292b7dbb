"""Retention cost: advance one topic's floor over N journal rows by row-by-row DELETE (the journal
before partitioning) and by dropping whole partitions (the partitioned journal), and measure what
the other work of the server sees meanwhile.

    .venv/bin/python bench/retention.py [--rows 2000000] [--tail 50000] [--partition-watermarks 20000]
                                        [--modes delete,partitions] [--passes 1] [--idle-seconds 5]

Runs on a PostgreSQL cluster of its own (initdb of the machine's binaries, default durability:
fsync, synchronous_commit and full_page_writes on), because WAL is counted cluster-wide with
``pg_current_wal_lsn()`` and a shared server's other sessions would be counted too. For each mode:

1. the journal is put in the mode's shape: ``delete`` migrates ``projector`` back to 0004 (one
   plain table, retention = ``projector.retention``'s DELETE batches, exactly as before
   partitioning); ``partitions`` migrates forward and rebuilds the topic's partitions with
   ``--partition-watermarks`` each (retention = the same ``retention.run_once``, which now drops
   whole partitions and deletes only in the boundary one); ``partitions-whole`` is the same with
   ``RETENTION_BOUNDARY_DELETES`` off (whole partitions only, the floor stops at a partition end);
2. N old rows (2 days old, ~300-byte payloads, made by the server) and ``--tail`` recent ones are
   written to ``runtime.codex_worker_events`` (1-day window), then ``CHECKPOINT`` (both modes pay
   the first-touch full-page images alike);
   ``--passes K`` > 1 makes the floor cross the old rows in K passes (steady state: a pass every
   interval advances the cutoff a little) and writes ``bench/results/retention_steady.json``;
3. a replay reader (``sync.journal.Journal.read_after``, pages of 200, the lane's own statement)
   loops over the recent tail for ``--idle-seconds`` (idle), then while ``retention.run_once`` runs;
4. reported: retention wall time, WAL bytes (LSN delta over the retention call), rows removed,
   partitions dropped, and the reader's rows/s and slowest page idle vs during the retention call
   (``replay_ratio``), and vs a window as long as the idle one from the start of the call
   (``replay_ratio_from_pass_start``: for a pass shorter than the window, the rest is idle again).

Targets (issue 15): WAL ≥ 50× less than DELETE; replay during retention ≥ 0.9× idle.
Prints a table and writes ``bench/results/retention.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from tests.support.private_services import PostgresCluster  # noqa: E402

TOPIC = "runtime.codex_worker_events"
PAGE = 200
FILL_CHUNK = 100_000
TARGET_WAL_RATIO = 50
TARGET_REPLAY_RATIO = 0.9

FILL_SQL = """
INSERT INTO sync_stream_events (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)
SELECT %(topic)s, g, 'doc:' || (g %% 10000), g, 'user:' || (g %% 50), g %% 10 = 0,
       jsonb_build_object('i', g, 'pad', repeat('x', 270)), sha256(g::text::bytea), 300,
       %(at)s + (g - %(lo)s) * interval '1 microsecond'  -- inserted_at grows with the watermark
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""


def shape(mode: str, partition_watermarks: int) -> None:
    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings

    from projector import journal_partitions

    with connection.cursor() as cur:
        cur.execute("TRUNCATE sync_stream_events")
        cur.execute("UPDATE sync_topic_sequences SET last_watermark = 0, pruned_through = 0")
    if mode == "delete":
        call_command("migrate", "projector", "0004", interactive=False, verbosity=0)
        return
    call_command("migrate", interactive=False, verbosity=0)
    with override_settings(KHALA={"JOURNAL_PARTITION_WATERMARKS": partition_watermarks}):
        with connection.cursor() as cur:
            parent = journal_partitions.topic_partition(TOPIC)
            cur.execute(f"ALTER TABLE sync_stream_events DETACH PARTITION {parent}")
            cur.execute(f"DROP TABLE {parent}")
        journal_partitions.ensure_topic(TOPIC)


def fill(rows: int, tail: int, partition_watermarks: int) -> dt.datetime:
    from django.db import connection
    from django.test import override_settings

    from projector import journal_partitions

    now = dt.datetime.now(dt.timezone.utc)
    head = rows + tail
    with connection.cursor() as cur:
        cur.execute("UPDATE sync_topic_sequences SET last_watermark = %s WHERE topic = %s", [head, TOPIC])
    with override_settings(KHALA={"JOURNAL_PARTITION_WATERMARKS": partition_watermarks}):
        journal_partitions.ensure_ahead(TOPIC)  # what the retention loop keeps doing (no-op on a plain table)
    with connection.cursor() as cur:
        for lo in range(1, head + 1, FILL_CHUNK):
            hi = min(head, lo + FILL_CHUNK - 1)
            if lo <= rows < hi:  # a chunk straddling old and recent rows: split it
                cur.execute(FILL_SQL, {"topic": TOPIC, "lo": lo, "hi": rows, "at": old_at(lo, now)})
                lo = rows + 1
            cur.execute(FILL_SQL, {"topic": TOPIC, "lo": lo, "hi": hi, "at": old_at(lo, now) if hi <= rows else now})
        cur.execute("ANALYZE sync_stream_events")
        cur.execute("CHECKPOINT")
    return now


def old_at(watermark: int, now: dt.datetime) -> dt.datetime:
    """inserted_at of old row ``watermark``: 3 days ago plus one microsecond per watermark, so a pass
    can put its cutoff after any given old row."""
    return now - dt.timedelta(days=3) + dt.timedelta(microseconds=watermark - 1)


class Reader(threading.Thread):
    """Replays the recent tail in a loop, page after page, recording (finished_at, rows, seconds)."""

    def __init__(self, conninfo: str, after: int, head: int):
        super().__init__(daemon=True)
        self.conninfo, self.start_after, self.head = conninfo, after, head
        self.pages: list[tuple[float, int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from sync.journal import Journal

        journal = Journal(self.conninfo, max_size=1)
        await journal.open()
        try:
            after = self.start_after
            while not self.stop.is_set():
                began = time.perf_counter()
                page = await journal.read_after(TOPIC, after, PAGE)
                ended = time.perf_counter()
                self.pages.append((ended, len(page.rows), ended - began))
                after = page.rows[-1].watermark if page.rows and page.rows[-1].watermark < self.head else self.start_after
        finally:
            await journal.close()

    def window(self, start: float, end: float) -> dict:
        pages = [p for p in self.pages if start <= p[0] <= end]
        seconds = max(end - start, 1e-9)
        return {
            "seconds": round(seconds, 3),
            "pages": len(pages),
            "rows_per_second": round(sum(p[1] for p in pages) / seconds),
            "slowest_page_ms": round(max((p[2] for p in pages), default=0) * 1000, 2),
        }


def wal_lsn() -> str:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        return cur.fetchone()[0]


def wal_delta(start: str, end: str) -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", [end, start])
        return cur.fetchone()[0]


def run_mode(mode: str, args) -> dict:
    from django.db import connection
    from django.test import override_settings

    from projector import retention
    from sync.journal import django_conninfo

    shape(mode, args.partition_watermarks)
    started = time.perf_counter()
    fill_now_of_this_run = fill(args.rows, args.tail, args.partition_watermarks)
    fill_seconds = time.perf_counter() - started
    head = args.rows + args.tail
    reader = Reader(django_conninfo(), args.rows, head)
    reader.start()
    time.sleep(args.idle_seconds)  # the idle window: a duration to measure, not an event to wait for
    idle_end = time.perf_counter()
    lsn0 = wal_lsn()
    t0 = time.perf_counter()
    khala = {"JOURNAL_PARTITION_WATERMARKS": args.partition_watermarks, "RETENTION_BOUNDARY_DELETES": mode != "partitions-whole"}
    deleted = dropped = 0
    with override_settings(KHALA=khala):
        if args.passes == 1:
            [report] = retention.run_once(topic=TOPIC)
            deleted, dropped = report.deleted, report.dropped_partitions
        else:  # steady state: the cutoff moves up by rows/passes old rows per pass
            for i in range(1, args.passes + 1):
                through = args.rows * i // args.passes
                now = old_at(through, fill_now_of_this_run) + dt.timedelta(days=1, microseconds=1)  # 1-day window
                [report] = retention.run_once(topic=TOPIC, now=now)
                deleted, dropped = deleted + report.deleted, dropped + report.dropped_partitions
    t1 = time.perf_counter()
    lsn1 = wal_lsn()
    while time.perf_counter() < t0 + args.idle_seconds:  # the window "as long as the idle one, from the pass start"
        time.sleep(0.05)
    reader.stop.set()
    reader.join(30)
    with connection.cursor() as cur:
        cur.execute("SELECT pruned_through FROM sync_topic_sequences WHERE topic = %s", [TOPIC])
        floor = cur.fetchone()[0]
    expected = args.rows if mode != "partitions-whole" else args.rows // args.partition_watermarks * args.partition_watermarks
    assert floor == expected and deleted == expected, (floor, deleted, report)
    idle = reader.window(idle_end - args.idle_seconds, idle_end)
    during = reader.window(t0, t1)
    from_start = reader.window(t0, t0 + args.idle_seconds)
    return {
        "mode": mode,
        "rows_removed": deleted,
        "partitions_dropped": dropped,
        # the partitions start at watermark 1 and hold partition_watermarks rows each
        "rows_deleted_one_by_one": deleted - dropped * args.partition_watermarks if args.passes == 1 else None,
        "pruned_through": floor,
        "retention_seconds": round(t1 - t0, 3),
        "wal_bytes": wal_delta(lsn0, lsn1),
        "fill_seconds": round(fill_seconds, 1),
        "replay_idle": idle,
        "replay_during_retention": during,
        "replay_ratio": round(during["rows_per_second"] / max(idle["rows_per_second"], 1), 3),
        # the same length as the idle window, from the start of the pass (what a replaying client sees)
        "replay_from_pass_start": from_start,
        "replay_ratio_from_pass_start": round(from_start["rows_per_second"] / max(idle["rows_per_second"], 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="Old rows the floor advances over.")
    parser.add_argument("--tail", type=int, default=50_000, help="Recent rows kept (the replay reader reads them).")
    parser.add_argument("--partition-watermarks", type=int, default=20_000, help="Watermarks per range partition.")
    parser.add_argument("--modes", default="delete,partitions", help="Comma-separated: delete, partitions.")
    parser.add_argument("--passes", type=int, default=1,
                        help="Retention passes the floor takes to cross the old rows (1: one catch-up pass; more: steady state).")
    parser.add_argument("--server-log", help="Copy the private cluster's server log to this path at the end.")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="Length of the idle replay window.")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"delete", "partitions", "partitions-whole"}:
        parser.error("--modes takes delete, partitions, partitions-whole")

    # Slow statements, lock waits and autovacuum runs go to the cluster's log (--server-log keeps it).
    logging = {"log_min_duration_statement": "100", "log_lock_waits": "on", "log_autovacuum_min_duration": "0"}
    # No WAL- or time-triggered checkpoint inside a measurement: each mode starts right after its own
    # CHECKPOINT, so both pay the same first-touch full-page images.
    wal = {"max_wal_size": "16GB", "checkpoint_timeout": "30min"}
    with PostgresCluster(settings={**wal, **logging}) as cluster:
        os.environ["DATABASE_URL"] = cluster.url("khala")
        harness.setup("retention")
        settings = harness.postgres_settings()
        results = {}
        for mode in modes:
            results[mode] = run_mode(mode, args)
            r = results[mode]
            print(
                f"{mode:>10}: removed {r['rows_removed']:,} rows in {r['retention_seconds']:.2f}s "
                f"({r['partitions_dropped']} partitions dropped), WAL {r['wal_bytes'] / 2**20:,.1f} MiB, "
                f"replay {r['replay_during_retention']['rows_per_second']:,}/s during vs "
                f"{r['replay_idle']['rows_per_second']:,}/s idle ({r['replay_ratio']:.2f}x; "
                f"{r['replay_ratio_from_pass_start']:.2f}x over {args.idle_seconds:g}s from the pass start), slowest page "
                f"{r['replay_during_retention']['slowest_page_ms']} ms during vs {r['replay_idle']['slowest_page_ms']} ms idle",
                flush=True,
            )
        from django.db import connection

        connection.close()
        if args.server_log:
            shutil.copy(cluster.log, args.server_log)
    summary = {"target_wal_ratio": TARGET_WAL_RATIO, "target_replay_ratio": TARGET_REPLAY_RATIO}
    for mode in ("partitions", "partitions-whole"):
        if {"delete", mode} <= results.keys():
            summary[f"wal_ratio_delete_to_{mode}"] = round(results["delete"]["wal_bytes"] / max(results[mode]["wal_bytes"], 1), 1)
            summary[f"time_ratio_delete_to_{mode}"] = round(
                results["delete"]["retention_seconds"] / max(results[mode]["retention_seconds"], 1e-6), 1
            )
            print(f"{mode}: WAL ratio {summary[f'wal_ratio_delete_to_{mode}']}x (target >= {TARGET_WAL_RATIO}x), "
                  f"time ratio {summary[f'time_ratio_delete_to_{mode}']}x")
    path = harness.write_result(
        "retention" if args.passes == 1 else "retention_steady",
        {"parameters": vars(args), "postgres": settings, "results": results, "summary": summary},
        script="retention",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

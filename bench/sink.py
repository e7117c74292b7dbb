"""Benchmark of the write path: ProjectorSink vs a raw psycopg ceiling measured in the same run.

    .venv/bin/python bench/sink.py [--seconds 5] [--payload-bytes 300]

Runs on its own database (``khala_bench_sink`` on the ``DATABASE_URL`` server; created and
migrated here) and its own Redis channel prefix, so it never touches a test database. Each
scenario runs its clients as separate processes (one connection each) for ``--seconds`` after a
short warm-up, alternating with its raw ceiling (``--rounds`` pairs, medians reported) on freshly
emptied topics:

- ``single_1topic``: 1 client, one ``project()`` per transaction, one topic.
- ``single_1topic_4clients``: 4 clients on the SAME topic (they queue on the topic's row lock).
- ``single_4topics``: 4 clients, each on its own topic.
- ``batch100_1topic``: 1 client, ``project_many`` of 100 documents per transaction.
- ``batch100_4topics``: 4 clients, each on its own topic, ``project_many`` of 100 documents.

Every scenario also runs, in the same rounds:

- ``orm``: the design card's sink written with the ORM (``bench/sink_orm.py``:
  ``select_for_update()`` on the topic's sequence row, ``bulk_create(update_conflicts=True)``
  upserts of the read models, ``bulk_create`` of the journal rows), reported as ``orm_to_sink``;
- ``returning`` (batch scenarios): the production batch statement with the other allocation form,
  ``UPDATE … RETURNING`` of the whole block then giving back the no-ops' watermarks, instead of
  ``SELECT … FOR UPDATE`` then advancing by the effective writes, reported as ``returning_to_sink``.

Raw ceiling = psycopg 3 without Django or the ORM (prepared statements, one connection per client):
per transaction ``UPDATE sync_topic_sequences … RETURNING`` then ``INSERT INTO sync_stream_events``
(for batches: UPDATE by 100, one multi-row INSERT via unnest). It does less than the sink: no
read-model upsert, no hashing/canonical JSON, no validation, no hint. Durability is the server's
default (synchronous_commit stays on) for all of them.

Batch scenarios also measure two server-only ceilings, rows made by the database itself
(``generate_series``, no client work at all), with the same clients and topics:

- ``server_schema``: the sink's own work per 100 documents (allocate, upsert the read models,
  append the journal rows, every migrated index): what no client code can beat;
- ``server_minimal``: allocate and insert 100 ``(topic, watermark)`` rows into an index-free
  table: the cheapest row this server can write, to compare the machine with published figures.

Prints a table and writes ``bench/results/sink.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402

REPO_ROOT = harness.REPO_ROOT
TOPICS = [f"bench.sink_{i}" for i in range(4)]
WARMUP_SECONDS = 0.5


def setup() -> str:
    """The benchmark database ``khala_bench_sink`` (``harness.setup``), with the measured topics."""
    url = harness.setup("sink")["database_url"]
    from projector.topics import declare_topic

    for topic in TOPICS:
        declare_topic(topic)
    return url


def reset_topics() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DELETE FROM sync_stream_events WHERE topic = ANY(%s)", [TOPICS])
        cur.execute("DELETE FROM sync_read_models WHERE topic = ANY(%s)", [TOPICS])
        cur.execute("UPDATE sync_topic_sequences SET last_watermark = 0, pruned_through = 0 WHERE topic = ANY(%s)", [TOPICS])
        cur.execute("VACUUM ANALYZE sync_stream_events")
        cur.execute("VACUUM ANALYZE sync_read_models")
        cur.execute("VACUUM ANALYZE sync_topic_sequences")
    connection.close()


_PAD: dict[tuple[int, int], int] = {}


def payload(i: int, size: int) -> dict:
    """A run-summary-like document of ``size`` canonical bytes (the padding is computed once per
    digit count of ``i``, so building documents costs the sink's clients almost nothing)."""
    base = {
        "kind": "run_summary",
        "run_id": f"run_{i:010d}",
        "status": "running",
        "latest_seq": i,
        "owner_user_id": 42,
        "latest_event_type": "run.delta",
        "runtime_source": {"entity": "run", "seq": i},
    }
    key = (len(str(i)), size)
    pad = _PAD.get(key)
    if pad is None:
        pad = _PAD[key] = max(size - len(json.dumps({**base, "note": ""}, separators=(",", ":"))), 0)
    base["note"] = "x" * pad
    return base


# --- client loops (run in child processes) ------------------------------------------------------


def _timed_loop(step, seconds: float, start_at: float) -> tuple[int, float]:
    """Run ``step() -> docs`` until ``seconds`` after ``start_at`` (warm-up before it is not counted)."""
    while time.monotonic() < start_at:
        step()
    done, t0 = 0, time.monotonic()
    end = t0 + seconds
    while True:
        done += step()
        now = time.monotonic()
        if now >= end:
            return done, now - t0


def sink_client(kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, out) -> None:
    from projector import sink

    _sink_loop(sink, kind, topic, client, seconds, start_at, size, out)


def orm_client(kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, out) -> None:
    """The design card's ORM sink (``bench/sink_orm.py``): select_for_update + bulk upserts."""
    from bench import sink_orm

    _sink_loop(sink_orm, kind, topic, client, seconds, start_at, size, out)


# The batch path with the other allocation form, ``UPDATE … RETURNING`` of the whole block first,
# then the batch statement gives the no-ops' watermarks back (the form the sink used before it
# adopted SELECT … FOR UPDATE, see docs/adr/ADR-0004-design-card-departures.md). The sink no longer
# sends the batch's size as a parameter, so here both statements read it from the batch's JSON
# (``jsonb_array_length``): two extra parses of ~35 kB per 100 documents, a small handicap for
# this form (well under the 10 % the decision turns on; the decision run had none, see README).
ALLOCATE_BLOCK_NAMED_SQL = """
UPDATE sync_topic_sequences
   SET last_watermark = last_watermark + jsonb_array_length(%(docs)s::jsonb), updated_at = now()
 WHERE topic = %(topic)s
RETURNING last_watermark, stream_epoch, force_pointer_mode
"""
_SWAPS = (
    (
        "SELECT last_watermark + 1 AS first, force_pointer_mode AS forced",
        "SELECT last_watermark - jsonb_array_length(%(docs)s::jsonb) + 1 AS first, last_watermark AS last,"
        " force_pointer_mode AS forced",
    ),
    (
        "AND EXISTS (SELECT 1 FROM effective)",
        "AND (SELECT last FROM block) <> (SELECT first FROM block) - 1 + (SELECT count(*) FROM effective)",
    ),
)


def returning_batch_client(kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, out) -> None:
    """``projector.sink`` with the batch allocation swapped to UPDATE … RETURNING (this child
    process only)."""
    from projector import allocator, sink

    batch_sql = sink.PROJECT_BATCH_SQL
    for production, variant in _SWAPS:
        if production not in batch_sql:
            raise SystemExit("bench/sink.py: the sink's batch statement changed; update returning_batch_client")
        batch_sql = batch_sql.replace(production, variant)
    sink.PROJECT_BATCH_SQL = batch_sql
    allocator.LOCK_SEQUENCE_NAMED_SQL = ALLOCATE_BLOCK_NAMED_SQL
    _sink_loop(sink, kind, topic, client, seconds, start_at, size, out)


def _sink_loop(sink, kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, out) -> None:
    """Drive ``sink.project`` / ``sink.project_many`` (any module with the sink's interface)."""
    from django.db import connection

    from projector.document_write import DocumentWrite
    from projector.hints import flush_hints

    counter = iter(range(10**12))
    owner = f"user:{client}"

    if kind == "single":

        def step():
            i = next(counter)
            sink.project(topic, f"c{client}:doc:{i}", 1, payload(i, size), owner)
            return 1

    else:

        def step():
            base = next(counter) * 100
            sink.project_many(
                [DocumentWrite(topic, f"c{client}:doc:{base + j}", 1, payload(base + j, size), owner) for j in range(100)]
            )
            return 100

    out.put(_timed_loop(step, seconds, start_at))
    flush_hints()
    connection.close()


RAW_UPDATE = "UPDATE sync_topic_sequences SET last_watermark = last_watermark + %s, updated_at = now() WHERE topic = %s RETURNING last_watermark"
RAW_INSERT = (
    "INSERT INTO sync_stream_events (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)"
    " VALUES (%s, %s, %s, 1, %s, false, %s::jsonb, %s, %s, now())"
)
RAW_INSERT_MANY = (
    "INSERT INTO sync_stream_events (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)"
    " SELECT %s, w, k, 1, %s, false, p::jsonb, h, b, now() FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[], %s::int[]) AS t(w, k, p, h, b)"
)


def raw_client(kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, url: str, out) -> None:
    import psycopg

    conn = psycopg.connect(url)
    counter = iter(range(10**12))
    owner = f"user:{client}"
    text = json.dumps(payload(0, size), separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(text.encode()).digest()

    if kind == "single":

        def step():
            i = next(counter)
            with conn.cursor() as cur:
                cur.execute(RAW_UPDATE, [1, topic])
                (wm,) = cur.fetchone()
                cur.execute(RAW_INSERT, [topic, wm, f"c{client}:doc:{i}", owner, text, digest, len(text)])
            conn.commit()
            return 1

    else:

        def step():
            base = next(counter) * 100
            with conn.cursor() as cur:
                cur.execute(RAW_UPDATE, [100, topic])
                (last,) = cur.fetchone()
                cur.execute(
                    RAW_INSERT_MANY,
                    [
                        topic,
                        owner,
                        list(range(last - 99, last + 1)),
                        [f"c{client}:doc:{base + j}" for j in range(100)],
                        [text] * 100,
                        [digest] * 100,
                        [len(text)] * 100,
                    ],
                )
            conn.commit()
            return 100

    out.put(_timed_loop(step, seconds, start_at))
    conn.close()


# Server-only ceilings of a 100-document transaction, for the batch scenarios: the rows are made
# by the database itself (generate_series; one constant payload, parsed once), so no client
# encodes, hashes, validates or ships anything. "schema" does the sink's work (allocate 100,
# upsert 100 read models, append 100 journal rows, all indexes as migrated); "minimal" allocates
# 100 and inserts 100 (topic, watermark) rows into an index-free table: what the server can do
# for a row that costs almost nothing, to compare this machine with the figures the issue gives.
SERVER_SCHEMA_BATCH = """
WITH seq AS (
    UPDATE sync_topic_sequences SET last_watermark = last_watermark + 100, updated_at = now()
     WHERE topic = %(topic)s RETURNING last_watermark
),
input AS (
    SELECT (SELECT last_watermark FROM seq) - 100 + g AS watermark, %(prefix)s || g AS doc_key
      FROM generate_series(1, 100) AS g
),
upserted AS (
    INSERT INTO sync_read_models AS rm
           (topic, doc_key, doc_version, owner, public, payload, payload_hash, watermark, created_at, updated_at)
    SELECT %(topic)s, doc_key, 1, %(owner)s, false, %(payload)s::jsonb, %(digest)s, watermark, now(), now() FROM input
    ON CONFLICT (topic, doc_key) DO UPDATE
       SET doc_version = EXCLUDED.doc_version, payload = EXCLUDED.payload, payload_hash = EXCLUDED.payload_hash,
           watermark = EXCLUDED.watermark, updated_at = EXCLUDED.updated_at
     WHERE rm.doc_version <= EXCLUDED.doc_version
    RETURNING 1
)
INSERT INTO sync_stream_events
       (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)
SELECT %(topic)s, watermark, doc_key, 1, %(owner)s, false, %(payload)s::jsonb, %(digest)s, %(size)s, now() FROM input
"""
SERVER_MINIMAL_TABLE = "bench_minimal_rows"
SERVER_MINIMAL_BATCH = f"""
WITH seq AS (
    UPDATE sync_topic_sequences SET last_watermark = last_watermark + 100 WHERE topic = %(topic)s RETURNING last_watermark
)
INSERT INTO {SERVER_MINIMAL_TABLE} (topic, watermark)
SELECT %(topic)s, (SELECT last_watermark FROM seq) - 100 + g FROM generate_series(1, 100) AS g
"""


def server_client(kind: str, topic: str, client: int, seconds: float, start_at: float, size: int, url: str, out) -> None:
    import psycopg

    conn = psycopg.connect(url)
    counter = iter(range(10**12))
    text = json.dumps(payload(0, size), separators=(",", ":"), sort_keys=True)
    params = {
        "topic": topic,
        "owner": f"user:{client}",
        "payload": text,
        "digest": hashlib.sha256(text.encode()).digest(),
        "size": len(text),
    }
    sql = SERVER_SCHEMA_BATCH if kind == "server_schema" else SERVER_MINIMAL_BATCH

    def step():
        params["prefix"] = f"c{client}:batch:{next(counter)}:"
        conn.execute(sql, params, prepare=True)
        conn.commit()
        return 100

    out.put(_timed_loop(step, seconds, start_at))
    conn.close()


def ensure_minimal_table() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {SERVER_MINIMAL_TABLE} (topic text NOT NULL, watermark bigint NOT NULL)")
        cur.execute(f"TRUNCATE {SERVER_MINIMAL_TABLE}")
    connection.close()


def run_clients(target, args_per_client: list[tuple]) -> float:
    """Start one process per client, return total docs/s (sum of per-client rates)."""
    from django.db import connections

    connections.close_all()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.monotonic() + WARMUP_SECONDS + 0.5  # + process start-up
    procs = [ctx.Process(target=target, args=(*a[:4], start_at, *a[4:], out)) for a in args_per_client]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"client process failed with exit code {p.exitcode}")
    return sum(done / elapsed for done, elapsed in results)


def check_journal(topics: list[str]) -> None:
    """Sanity: every measured topic's journal is exactly 1..head (no holes, no duplicates)."""
    from django.db import connection

    with connection.cursor() as cur:
        for topic in topics:
            cur.execute(
                "SELECT count(*), coalesce(min(watermark), 0), coalesce(max(watermark), 0) FROM sync_stream_events WHERE topic = %s",
                [topic],
            )
            count, low, high = cur.fetchone()
            cur.execute("SELECT last_watermark FROM sync_topic_sequences WHERE topic = %s", [topic])
            (head,) = cur.fetchone()
            if count and (low, high, head) != (1, count, count):
                raise SystemExit(f"journal of {topic} is not 1..{count}: min={low} max={high} head={head}")
    connection.close()


SINK_TARGETS = {"sink": sink_client, "orm": orm_client, "returning": returning_batch_client}

SCENARIOS = [
    # name, kind, topics used by the clients (one entry per client)
    ("single_1topic", "single", [TOPICS[0]]),
    ("single_1topic_4clients", "single", [TOPICS[0]] * 4),
    ("single_4topics", "single", TOPICS),
    ("batch100_1topic", "batch", [TOPICS[0]]),
    ("batch100_4topics", "batch", TOPICS),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario and ceiling")
    parser.add_argument("--payload-bytes", type=int, default=300, help="canonical JSON size of each document")
    parser.add_argument("--only", help="run just this scenario")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating sink/raw rounds per scenario; the median of each is reported (other load on "
        "the shared server moves fsync latency, so a single back-to-back pair is noisy)",
    )
    args = parser.parse_args()
    url = setup()
    rows = []
    for name, kind, topics in SCENARIOS:
        if args.only and name != args.only:
            continue
        if kind == "single":
            measures = ("sink", "orm", "raw")
        else:
            measures = ("sink", "orm", "returning", "raw", "server_schema", "server_minimal")
        rates: dict[str, list[float]] = {m: [] for m in measures}
        for round_no in range(args.rounds):
            # Rotate the order each round: drift on the shared server (fsync latency, autovacuum,
            # checkpoints) must not always favour the same measure.
            shift = round_no % len(measures)
            for which in measures[shift:] + measures[:shift]:
                reset_topics()
                if which in SINK_TARGETS:
                    target, extra = SINK_TARGETS[which], ()
                elif which == "raw":
                    target, extra = raw_client, (url,)
                else:
                    ensure_minimal_table()
                    target, extra = server_client, (url,)
                client_kind = kind if which in ("sink", "orm", "returning", "raw") else which
                rate = run_clients(
                    target,
                    [(client_kind, topic, c, args.seconds, args.payload_bytes, *extra) for c, topic in enumerate(topics)],
                )
                rates[which].append(rate)
                check_journal(sorted(set(topics)))
        median = {m: statistics.median(r) for m, r in rates.items()}
        row = {
            "scenario": name,
            "clients": len(topics),
            "topics": len(set(topics)),
            "docs_per_txn": 100 if kind == "batch" else 1,
            "sink_docs_per_s": round(median["sink"]),
            "raw_docs_per_s": round(median["raw"]),
            "ratio": round(median["sink"] / median["raw"], 3),
            "orm_docs_per_s": round(median["orm"]),
            "orm_to_sink": round(median["orm"] / median["sink"], 3),
            "sink_rounds": [round(r) for r in rates["sink"]],
            "orm_rounds": [round(r) for r in rates["orm"]],
            "raw_rounds": [round(r) for r in rates["raw"]],
        }
        line = (
            f"{name:26s} clients={row['clients']} sink={row['sink_docs_per_s']:>8,} docs/s "
            f"raw={row['raw_docs_per_s']:>8,} docs/s ratio={row['ratio']:.2f} "
            f"orm={row['orm_docs_per_s']:>8,} docs/s orm/sink={row['orm_to_sink']:.2f}"
        )
        if kind == "batch":
            row["returning_docs_per_s"] = round(median["returning"])
            row["returning_to_sink"] = round(median["returning"] / median["sink"], 3)
            row["returning_rounds"] = [round(r) for r in rates["returning"]]
            line += f" returning={row['returning_docs_per_s']:>8,} docs/s returning/sink={row['returning_to_sink']:.2f}"
            row["server_schema_docs_per_s"] = round(median["server_schema"])
            row["server_minimal_rows_per_s"] = round(median["server_minimal"])
            row["server_schema_rounds"] = [round(r) for r in rates["server_schema"]]
            row["server_minimal_rounds"] = [round(r) for r in rates["server_minimal"]]
            line += (
                f" | server-only: sink's schema={row['server_schema_docs_per_s']:>7,} docs/s"
                f" minimal rows={row['server_minimal_rows_per_s']:>8,} rows/s"
            )
        rows.append(row)
        print(line, flush=True)
    reset_topics()
    ensure_minimal_table()  # leaves it empty
    if args.only:
        return  # a partial run never replaces the recorded figures
    path = harness.write_result(
        "sink",
        {
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "payload_bytes": args.payload_bytes,
            "server_settings": harness.postgres_settings(),
            "targets": {"single_ratio_min": 0.5, "batch_docs_per_s_min": 50000},
            "results": rows,
        },
    )
    print(f"wrote {path.relative_to(REPO_ROOT)}")

if __name__ == "__main__":
    main()

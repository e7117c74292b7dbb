"""What each part of the write path's schema costs the database, with no client in the way.

    .venv/bin/python bench/sink_schema.py [--seconds 6] [--clients 1,4] [--payload-bytes 300]

``bench/sink.py`` measures the sink against ceilings; this script answers the next question:
*where does the server's time per document go?* It copies the migrated tables
(``CREATE TABLE … (LIKE … INCLUDING ALL)``: same columns, defaults, constraints and indexes) into
a scratch database, drops parts of them per variant, and runs ``pgbench`` (C clients, prepared
statements) with one transaction per 100 documents whose rows PostgreSQL makes itself
(``generate_series``; fresh doc keys, one constant ~300-byte payload), so nothing is encoded,
hashed or shipped by a client. Every transaction allocates 100 watermarks with
``UPDATE … RETURNING`` on its client's topic row, as the sink does; synchronous_commit stays on.

Variants (documents/s = 100 × transactions/s):

- ``minimal``: 100 ``(topic, watermark)`` rows into an index-free table (the machine's floor);
- ``journal``: journal rows only, every migrated index;
- ``journal_no_inserted_idx``: … without ``(topic, inserted_at)`` (retention cutoff, admin per-minute figures);
- ``journal_no_inserted_doc_idx``: … and without ``(topic, doc_key, watermark)`` (parity auditor);
- ``sink``: read-model upsert + journal append, as migrated (the sink's whole server-side work);
- ``sink_slim``: the same with the two journal indexes above dropped and no ``id`` primary keys
  (composite keys instead), the smallest schema that still serves replay and owner filtering.

Runs on ``khala_bench_sink_schema`` (created and migrated here). Prints a table and writes
``bench/results/sink_schema.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402


# Per variant: which copies exist and what is dropped from them after copying.
VARIANTS = {
    "minimal": {"tables": [], "drop": []},
    "journal": {"tables": ["journal"], "drop": []},
    "journal_no_inserted_idx": {"tables": ["journal"], "drop": ["(topic, inserted_at)"]},
    "journal_no_inserted_doc_idx": {"tables": ["journal"], "drop": ["(topic, inserted_at)", "(topic, doc_key, watermark)"]},
    "sink": {"tables": ["journal", "read_model"], "drop": []},
    "sink_slim": {
        "tables": ["journal", "read_model"],
        "drop": ["(topic, inserted_at)", "(topic, doc_key, watermark)", "pkey"],
    },
}


def pgbench_script(variant: str, payload: str) -> str:
    literal = "'" + payload.replace("'", "''") + "'"
    head = (
        "\\set batch random(1, 1000000000)\n"
        "BEGIN;\n"
        "UPDATE v_seq SET last_watermark = last_watermark + 100 WHERE topic = 't' || :client_id"
        " RETURNING last_watermark \\gset\n"
    )
    rows = (
        "SELECT 't' || :client_id AS topic, :last_watermark - 100 + g AS watermark,"
        " 'c' || :client_id || ':' || :batch || ':' || g AS doc_key, 'user:' || (g % 7) AS owner,"
        f" {literal}::jsonb AS payload FROM generate_series(1, 100) AS g"
    )
    journal = (
        "INSERT INTO v_journal (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash,"
        " payload_bytes, inserted_at) SELECT topic, watermark, doc_key, 1, owner, false, payload,"
        f" sha256(doc_key::bytea), {len(payload)}, now() FROM input"
    )
    if variant == "minimal":
        body = (
            "INSERT INTO v_minimal (topic, watermark) SELECT 't' || :client_id, :last_watermark - 100 + g"
            " FROM generate_series(1, 100) AS g;\n"
        )
    elif VARIANTS[variant]["tables"] == ["journal"]:
        body = f"WITH input AS ({rows}) {journal};\n"
    else:
        body = (
            f"WITH input AS ({rows}),"
            " upserted AS (INSERT INTO v_read_model AS rm (topic, doc_key, doc_version, owner, public, payload,"
            " payload_hash, watermark, created_at, updated_at) SELECT topic, doc_key, 1, owner, false, payload,"
            " sha256(doc_key::bytea), watermark, now(), now() FROM input"
            " ON CONFLICT (topic, doc_key) DO UPDATE SET doc_version = EXCLUDED.doc_version, payload = EXCLUDED.payload,"
            " payload_hash = EXCLUDED.payload_hash, watermark = EXCLUDED.watermark, updated_at = EXCLUDED.updated_at"
            " WHERE rm.doc_version <= EXCLUDED.doc_version RETURNING 1)"
            f" {journal};\n"
        )
    return head + body + "COMMIT;\n"


def prepare_variant(cur, variant: str, clients: int) -> None:
    for table in ("v_seq", "v_minimal", "v_journal", "v_read_model"):
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute("CREATE TABLE v_seq (topic text PRIMARY KEY, last_watermark bigint NOT NULL DEFAULT 0)")
    cur.execute("INSERT INTO v_seq (topic) SELECT 't' || g FROM generate_series(0, %s) AS g", [clients])
    cur.execute("CREATE TABLE v_minimal (topic text NOT NULL, watermark bigint NOT NULL)")
    spec = VARIANTS[variant]
    sources = {"journal": ("v_journal", "sync_stream_events"), "read_model": ("v_read_model", "sync_read_models")}
    for part in spec["tables"]:
        copy, source = sources[part]
        cur.execute(f"CREATE TABLE {copy} (LIKE {source} INCLUDING ALL)")
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [copy])
        for name, definition in cur.fetchall():
            if "pkey" in spec["drop"] and name.endswith("_pkey"):
                cur.execute(f"ALTER TABLE {copy} DROP CONSTRAINT {name}")
                continue
            columns = re.search(r"\((.*)\)", definition).group(0)
            if columns in spec["drop"]:
                cur.execute(f"DROP INDEX {name}")
        if "pkey" in spec["drop"]:
            key = "(topic, watermark)" if part == "journal" else "(topic, doc_key)"
            cur.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'u'", [copy]
            )
            for (unique,) in cur.fetchall():
                cur.execute(f"ALTER TABLE {copy} DROP CONSTRAINT {unique}")
            cur.execute(f"ALTER TABLE {copy} ADD PRIMARY KEY {key}")
    cur.execute("CHECKPOINT")


def run_pgbench(url: str, script: str, clients: int, seconds: float) -> float:
    parts = urllib.parse.urlparse(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [
                "pgbench", "-n", "-M", "prepared", "-f", handle.name, "-T", str(int(seconds)), "-c", str(clients),
                "-j", str(min(clients, os.cpu_count() or 1)),
                "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
                "-U", urllib.parse.unquote(parts.username or "postgres"), parts.path.lstrip("/"),
            ],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    return tps * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts (one topic each)")
    parser.add_argument("--payload-bytes", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench not found (Debian: postgresql-client / postgresql-contrib)")
    url = harness.setup("sink_schema")["database_url"]
    from bench.sink import payload as make_payload
    from django.db import connection

    text = json.dumps(make_payload(0, args.payload_bytes), separators=(",", ":"), sort_keys=True)
    client_counts = [int(c) for c in args.clients.split(",")]
    rows = []
    for variant in VARIANTS:
        row = {"variant": variant}
        for clients in client_counts:
            with connection.cursor() as cur:
                prepare_variant(cur, variant, clients)
            rate = run_pgbench(url, pgbench_script(variant, text), clients, args.seconds)
            row[f"docs_per_s_{clients}_clients"] = round(rate)
        rows.append(row)
        print(f"{variant:28s} " + "  ".join(f"{c} clients: {row[f'docs_per_s_{c}_clients']:>8,} docs/s" for c in client_counts), flush=True)
    with connection.cursor() as cur:
        for table in ("v_seq", "v_minimal", "v_journal", "v_read_model"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    path = harness.write_result(
        "sink_schema",
        {
            "seconds_per_run": args.seconds,
            "payload_bytes": args.payload_bytes,
            "docs_per_txn": 100,
            "server_settings": harness.postgres_settings(),
            "results": rows,
        },
    )
    print(f"wrote {path.relative_to(harness.REPO_ROOT)}")

if __name__ == "__main__":
    main()

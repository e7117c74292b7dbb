"""ProjectorSink (KHALA-008): the only writer of read models and the stream journal.

``project()`` and ``project_many()`` do, in ONE transaction (the caller's, if one is open):

1. upsert the read-model row, never moving ``doc_version`` backwards (an older version is a
   no-op that consumes no watermark and appends nothing; an equal version replaces and appends);
2. allocate the watermark(s) on the topic's ``sync_topic_sequences`` row: ``SELECT … FOR UPDATE``
   takes the row lock, then the row is advanced by the effective writes only
   (``projector.allocator``; the lock lasts until commit, so commit order = watermark order);
3. append one ``sync_stream_events`` row per effective write (payload NULL in pointer mode);

and only after COMMIT (``transaction.on_commit``) count the writes and hand a hint
``{topic, watermark, stream_epoch}`` to ``projector.hints`` (one per topic, highest watermark).
A rollback (of the caller's transaction too) therefore publishes nothing.

Round trips: ``project()`` is one statement (lock, upsert, advance and append fused in CTEs); a
``project_many()`` batch is two statements per topic however many documents it holds (lock the
sequence row, then one statement over the batch's JSON for upsert + advance + append), all in one
query message. Each payload is canonicalised once (``projector.document_write.prepare``): the same
bytes give the hash, the size and the pointer-mode decision.

On any database but PostgreSQL (the embedded SQLite of ``make run``) the validated writes go to
``projector.sink_portable`` instead: same semantics through the ORM, none of the SQL below. Both
paths share validation and batch ordering (``projector.document_write``) and what they report
after the database decided (``projector.sink_settlement``); neither imports the other's internals.
"""

import re
import time
from contextlib import contextmanager
from typing import Iterable

import orjson
import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from khala_project.conf import khala_setting
from projector import allocator, metrics
from projector.document_write import (  # the sink's public API is re-exported here
    ERROR_STATUS,
    DocumentWrite,
    PreparedWrite,
    SinkError,
    WriteResult,
    group_by_topic,
    prepare,
)
from projector.hints import submit_hint  # the hint publisher handed to after_commit (tests replace it here)
from khala_project.replicas import commit_lsn  # the commit's WAL position, for replica reads
from projector.sink_settlement import after_commit, batch_results, count_refusal, settle_topic, unknown_topic

__all__ = ["ERROR_STATUS", "DocumentWrite", "SinkError", "WriteResult", "project", "project_many"]

@contextmanager
def _transaction(conn, *, single_statement: bool):
    """The transaction a sink call runs in.

    - Inside the caller's transaction, one query message: join it without a savepoint (two round
      trips saved). A database error aborts the caller's transaction, which must roll back, so
      nothing half-done can commit; an unknown topic wrote nothing and is raised after the block,
      leaving the caller's transaction usable. Several query messages: a savepoint.
    - In autocommit, when the call sends ONE query message (the fused single-document statement,
      or a one-topic batch whose statements travel in one simple-protocol message): PostgreSQL
      runs that message as one implicit transaction, so BEGIN and COMMIT round trips are not
      needed; the row lock is still held until that transaction commits. ``on_commit`` callbacks
      then run at once, i.e. after the commit.
    - Otherwise: an ordinary ``transaction.atomic``.
    """
    alias = conn.alias
    if conn.in_atomic_block and single_statement:
        with transaction.atomic(using=alias, savepoint=False):
            yield
    elif conn.in_atomic_block:
        with transaction.atomic(using=alias):  # a savepoint: a refused topic undoes only this call
            yield
    elif single_statement and conn.get_autocommit():
        yield
    else:
        with transaction.atomic(using=alias):
            yield


PROJECT_ONE_SQL = (
    "WITH"
    + allocator.LOCKED_SEQUENCE_CTE
    + """,
written AS (
    INSERT INTO sync_read_models AS rm
           (topic, doc_key, doc_version, owner, public, payload, payload_hash, watermark, created_at, updated_at)
    SELECT %(topic)s, %(doc_key)s, %(doc_version)s, %(owner)s, %(public)s, %(payload)s::jsonb, %(payload_hash)s,
           ls.watermark, now(), now()
      FROM locked_sequence AS ls
    ON CONFLICT (topic, doc_key) DO UPDATE
       SET doc_version = EXCLUDED.doc_version, owner = EXCLUDED.owner, public = EXCLUDED.public,
           payload = EXCLUDED.payload, payload_hash = EXCLUDED.payload_hash, watermark = EXCLUDED.watermark,
           updated_at = EXCLUDED.updated_at
     WHERE rm.doc_version <= EXCLUDED.doc_version  -- never backwards; equal replaces
    RETURNING rm.watermark, rm.payload
),"""
    + allocator.ADVANCED_SEQUENCE_CTE.format(written="written")
    + """,
appended AS (
    INSERT INTO sync_stream_events
           (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)
    SELECT %(topic)s, w.watermark, %(doc_key)s, %(doc_version)s, %(owner)s, %(public)s,
           CASE WHEN %(pointer)s OR ls.force_pointer_mode THEN NULL ELSE w.payload END,
           %(payload_hash)s, %(payload_bytes)s, now()
      FROM written AS w CROSS JOIN locked_sequence AS ls
    RETURNING watermark
)
SELECT ls.stream_epoch, ls.force_pointer_mode,
       (SELECT watermark FROM appended), (SELECT last_watermark FROM advanced_sequence)
  FROM locked_sequence AS ls
"""
)


def _execute_prepared(wrapper, sql: str, params: dict):
    """Run ``sql`` as a server-side prepared statement on the Django connection and fetch one row.

    Django's cursors bind parameters on the client (``ClientCursor``), so PostgreSQL parses and
    plans the statement on every call. For the fused single-document statement planning costs
    about as much server CPU as running it (≈0.4 ms each, measured with EXPLAIN ANALYZE); with
    several writers on a 2-core machine that CPU is the bottleneck. A plain psycopg ``Cursor`` on
    the same connection (same transaction) binds on the server, and psycopg prepares a statement
    once it has run ``prepare_threshold`` times on the connection, then reuses the plan. The
    cursor is wrapped the way Django wraps its own, so errors are ``django.db`` exceptions,
    ``execute_wrapper`` hooks (tracing) see the statement and the DEBUG query log times it
    (without its SQL text, which Django cannot render for a server-bound statement).
    ``KHALA["SINK_PREPARED_STATEMENTS"] = False`` turns this off (for poolers that move a session
    between server connections, where a prepared statement vanishes).
    """
    wrapper.ensure_connection()
    wrapper.validate_thread_sharing()
    raw = wrapper.connection
    if raw.prepare_threshold is None:
        # Django turns preparation off on its connections (prepare_threshold=None). Its own
        # cursors bind on the client and never prepare, so turning it back on (psycopg's default)
        # changes nothing for them.
        raw.prepare_threshold = 5
    cursor = psycopg.Cursor(raw)
    with wrapper.make_debug_cursor(cursor) if wrapper.queries_logged else wrapper.make_cursor(cursor) as wrapped:
        wrapped.execute(sql, params)
        return wrapped.fetchone()


def project(
    topic: str,
    doc_key: str,
    doc_version: int,
    payload: dict,
    owner: str,
    *,
    public: bool = False,
    using: str | None = None,
) -> WriteResult:
    """Write one document (see the module docstring). Raises ``SinkError`` (nothing written)."""
    started = time.perf_counter()
    alias = using or DEFAULT_DB_ALIAS
    write = DocumentWrite(topic, doc_key, doc_version, payload, owner, public)
    try:
        prepared = prepare(
            write, None, khala_setting("INLINE_PAYLOAD_LIMIT_BYTES"), khala_setting("MAX_PAYLOAD_BYTES")
        )
    except SinkError as exc:
        count_refusal(topic, exc.code)
        raise
    conn = connections[alias]
    if conn.vendor != "postgresql":  # the embedded SQLite of `make run`
        from projector import sink_portable

        return sink_portable.project(prepared, alias, started)
    write, encoded = prepared.write, prepared.encoded
    params = {
        "topic": write.topic,
        "doc_key": write.doc_key,
        "doc_version": write.doc_version,
        "owner": write.owner,
        "public": write.public,
        "payload": encoded.text,
        "payload_hash": encoded.digest,
        "payload_bytes": encoded.size,
        "pointer": prepared.over_inline_limit,
    }
    with _transaction(conn, single_statement=True):
        if khala_setting("SINK_PREPARED_STATEMENTS"):
            row = _execute_prepared(conn, PROJECT_ONE_SQL, params)
        else:
            with conn.cursor() as cursor:
                cursor.execute(PROJECT_ONE_SQL, params)
                row = cursor.fetchone()
        watermark = None
        if row is not None:
            stream_epoch, forced, watermark, advanced_to = row
        if row is None:
            pass  # unknown topic: nothing was written (raised below, outside the transaction block)
        elif watermark is not None:
            # Defence in depth for the fused statement: the journal row must carry exactly the
            # watermark the sequence row was advanced to.
            if watermark != advanced_to:  # pragma: no cover - would be a bug in the SQL above
                raise RuntimeError(f"allocator mismatch on {topic}: appended {watermark}, advanced {advanced_to}")
            pointer = prepared.over_inline_limit or forced
            stats = [(write.topic, watermark, stream_epoch, 0 if pointer else 1, 1 if pointer else 0, encoded.size)]
            conn.on_commit(lambda: after_commit(stats, submit_hint, commit_lsn(conn)))
        else:
            metrics.sink_counters(write.topic).stale.inc()
    if row is None:
        raise unknown_topic(topic, None)
    if watermark is None:
        pointer = False
    metrics.SINK_DURATION_PROJECT.observe(time.perf_counter() - started)
    return WriteResult(write.topic, write.doc_key, write.doc_version, watermark is not None, watermark, pointer)


PROJECT_BATCH_SQL = """
WITH block AS (
    -- The head of the sequence row the previous statement locked (FOR UPDATE, held until commit):
    -- nobody else can move it, and this statement's snapshot has its latest committed value.
    SELECT last_watermark + 1 AS first, force_pointer_mode AS forced
      FROM sync_topic_sequences
     WHERE topic = %(topic)s
),
input AS (
    -- One JSON array carries the whole batch: the canonical payload text is embedded verbatim
    -- (no re-encoding, no per-element array escaping on the client), parsed once by the server.
    SELECT t.k AS doc_key, t.v AS doc_version, t.o AS owner, t.u AS public, t.p AS payload,
           decode(t.h, 'hex') AS payload_hash, t.b AS payload_bytes, t.x AS pointer, t.ord
      FROM ROWS FROM (
               jsonb_to_recordset(%(docs)s::jsonb)
               AS (k text, v bigint, o text, u boolean, p jsonb, h text, b integer, x boolean)
           ) WITH ORDINALITY AS t(k, v, o, u, p, h, b, x, ord)
),
effective AS (
    -- This statement runs after the previous one took the topic's row lock, so its snapshot
    -- already contains every earlier writer of this topic: the doc_version comparison is exact.
    SELECT i.*, b.forced, b.first - 1 + row_number() OVER (ORDER BY i.ord) AS watermark
      FROM input AS i
     CROSS JOIN block AS b
      -- LATERAL: one unique-index probe per input row. A plain join let the planner (with stats
      -- from when the table was small) hash-join every read model of the topic per batch, a cost
      -- that grows with the table.
      LEFT JOIN LATERAL (
          SELECT stored.doc_version FROM sync_read_models AS stored
           WHERE stored.topic = %(topic)s AND stored.doc_key = i.doc_key
           LIMIT 1  -- (topic, doc_key) is unique; LIMIT also keeps the planner from flattening this
      ) AS r ON true
     WHERE r.doc_version IS NULL OR r.doc_version <= i.doc_version
),
latest AS (
    SELECT DISTINCT ON (doc_key) * FROM effective ORDER BY doc_key, ord DESC
),
upserted AS (
    INSERT INTO sync_read_models AS rm
           (topic, doc_key, doc_version, owner, public, payload, payload_hash, watermark, created_at, updated_at)
    SELECT %(topic)s, doc_key, doc_version, owner, public, payload, payload_hash, watermark, now(), now()
      FROM latest
    ON CONFLICT (topic, doc_key) DO UPDATE
       SET doc_version = EXCLUDED.doc_version, owner = EXCLUDED.owner, public = EXCLUDED.public,
           payload = EXCLUDED.payload, payload_hash = EXCLUDED.payload_hash, watermark = EXCLUDED.watermark,
           updated_at = EXCLUDED.updated_at
     WHERE rm.doc_version <= EXCLUDED.doc_version
    RETURNING 1
),
appended AS (
    INSERT INTO sync_stream_events
           (topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at)
    SELECT %(topic)s, watermark, doc_key, doc_version, owner, public,
           CASE WHEN pointer OR forced THEN NULL ELSE payload END, payload_hash, payload_bytes, now()
      FROM effective
    RETURNING 1
),
advanced AS (
    -- Allocate exactly the effective writes' watermarks: a no-op consumes none, so committed
    -- watermarks stay gap-free. Commit order = watermark order because the lock lasts until commit.
    UPDATE sync_topic_sequences
       SET last_watermark = (SELECT first FROM block) - 1 + (SELECT count(*) FROM effective), updated_at = now()
     WHERE topic = %(topic)s
       AND EXISTS (SELECT 1 FROM effective)
    RETURNING last_watermark
)
SELECT ord, watermark, (SELECT count(*) FROM upserted), (SELECT count(*) FROM appended)
  FROM effective
 ORDER BY ord
"""


def _batch_json(items: list[PreparedWrite]) -> str:
    """The rows of one topic's batch as a JSON array (payloads embedded as their canonical text)."""
    dumps = orjson.dumps
    parts = []
    for item in items:
        w = item.write
        parts.append(
            '{"k":%s,"v":%d,"o":%s,"u":%s,"p":%s,"h":"%s","b":%d,"x":%s}'
            % (
                dumps(w.doc_key).decode(),
                w.doc_version,
                dumps(w.owner).decode(),
                "true" if w.public else "false",
                item.encoded.text,
                item.encoded.digest.hex(),
                item.encoded.size,
                "true" if item.over_inline_limit else "false",
            )
        )
    return "[" + ",".join(parts) + "]"


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _for_topic(sql: str, n: int) -> str:
    """Give a statement's named placeholders the prefix of the n-th topic of a batch."""
    return _PLACEHOLDER.sub(lambda m: f"%(t{n}_{m.group(1)})s", sql)


def project_many(writes: Iterable[DocumentWrite], *, using: str | None = None) -> list[WriteResult]:
    """Write a batch atomically: all documents or none. Results are in input order.

    Writes are applied as if one after another: a write older than the stored version, or than
    an earlier write of the same document in the batch, is a no-op (``written=False``).
    """
    started = time.perf_counter()
    alias = using or DEFAULT_DB_ALIAS
    inline_limit = khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")
    max_bytes = khala_setting("MAX_PAYLOAD_BYTES")
    prepared = []
    for index, write in enumerate(writes):
        if not isinstance(write, DocumentWrite):
            count_refusal("", "invalid_document")
            raise SinkError("invalid_document", "each item must be a DocumentWrite", index=index)
        try:
            prepared.append(prepare(write, index, inline_limit, max_bytes))
        except SinkError as exc:
            count_refusal(write.topic, exc.code)
            raise
    if not prepared:
        return []
    conn = connections[alias]
    if conn.vendor != "postgresql":  # the embedded SQLite of `make run`
        from projector import sink_portable

        return sink_portable.project_many(prepared, alias, started)
    by_topic, superseded = group_by_topic(prepared)

    # Sorted topics: two batches that span the same topics lock the rows in the same order.
    topics = sorted(by_topic)
    sql_parts, params = [], {}
    for n, topic in enumerate(topics):
        items = by_topic[topic]
        sql_parts.append(_for_topic(allocator.LOCK_SEQUENCE_NAMED_SQL, n))
        sql_parts.append(_for_topic(PROJECT_BATCH_SQL, n))
        for name, value in {"topic": topic, "docs": _batch_json(items)}.items():
            params[f"t{n}_{name}"] = value

    outcome: dict[int, tuple[int, bool]] = {}  # input index -> (watermark, pointer)
    stats = []
    unknown = None
    # All statements travel in ONE query message (client-side binding, simple protocol): a batch
    # costs one round trip whatever its size and topic count.
    with _transaction(conn, single_statement=len(topics) == 1):
        with conn.cursor() as cursor:
            cursor.execute(";\n".join(sql_parts), params)
            for n, topic in enumerate(topics):
                if n:
                    cursor.nextset()
                locked = cursor.fetchone()
                cursor.nextset()
                rows = cursor.fetchall()
                items = by_topic[topic]
                if locked is None:
                    unknown = unknown_topic(topic, items[0].index)
                    if len(topics) > 1:
                        raise unknown  # other topics were written: roll back the (savepoint) block
                    break  # nothing was written for the only topic
                _head, stream_epoch, forced = locked
                if rows:
                    written = [(items[ordinal - 1], watermark) for ordinal, watermark, _upserted, _appended in rows]
                    stats.append(settle_topic(topic, stream_epoch, forced, written, outcome))
                stale = len(items) - len(rows)
                if stale:
                    metrics.sink_counters(topic).stale.inc(stale)
        if stats and unknown is None:
            conn.on_commit(lambda: after_commit(stats, submit_hint, commit_lsn(conn)))
    if unknown is not None:
        raise unknown
    return batch_results(prepared, superseded, outcome, started)

"""The WebSocket lane's journal reader on the embedded SQLite of ``make run``.

Implements ``sync.journal_reader.JournalReader`` like ``sync.journal.Journal`` (the PostgreSQL reader, which stays
the only one tested for multi-worker correctness); ``sync.journal.default_journal`` picks this one
when the default database is not PostgreSQL.

- One dedicated worker thread (a one-thread executor) owns one ``sqlite3`` connection: sqlite3
  objects must stay on the thread that made them, and the event loop never blocks on the file.
  Calls queue on that thread, which is plenty for one process.
- Every read that delivers rows runs in ONE read transaction (``BEGIN`` … ``COMMIT``): the topic's
  sequence row and the journal rows come from the same snapshot (WAL: the snapshot taken by the
  first SELECT lasts until COMMIT; rollback journal: the shared lock does). Retention raises
  ``pruned_through`` in the transaction that deletes the rows, so a reader can prove that nothing
  after its cursor was pruned under it, exactly as with PostgreSQL.
- Payloads come out as the stored JSON text (the sink stores the canonical text), spliced into
  frames unparsed like ``payload::text``; hashes in wire form (base64); ``inserted_at`` as POSIX
  seconds.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from django.db import connections

from sync.journal_reader import JournalPage, JournalReader
from sync.protocol import JournalRow, TopicState

_SEQUENCE = "SELECT last_watermark, pruned_through, stream_epoch FROM sync_topic_sequences WHERE topic = ?"

# Stored datetimes are UTC text ('YYYY-MM-DD HH:MM:SS[.ffffff]'); julianday() turns them into days.
_ROW_COLUMNS = (
    "watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, "
    "(julianday(inserted_at) - 2440587.5) * 86400.0"
)

_READ_AFTER = f"""
SELECT {_ROW_COLUMNS} FROM sync_stream_events
 WHERE topic = ? AND watermark > ?
 ORDER BY watermark LIMIT ?
"""

_READ_VISIBLE = f"""
SELECT {_ROW_COLUMNS} FROM sync_stream_events
 WHERE topic = ? AND watermark > ? AND watermark <= ? AND (owner = ? OR public)
 ORDER BY watermark LIMIT ?
"""

_TOPIC_STATES = """
SELECT topic, last_watermark, pruned_through, stream_epoch, replay_budget_events, qos_tier, snapshot_enabled
  FROM sync_topic_sequences WHERE topic IN ({placeholders})
"""

_ALL_TOPICS = "SELECT topic FROM sync_topic_sequences ORDER BY topic"

# SQLite limits bound parameters per statement; topic lists are short, chunk anyway.
_IN_CHUNK = 500


def stored_datetime(at: dt.datetime) -> str:
    """``at`` as Django's SQLite backend stores and compares datetimes (USE_TZ, UTC): ``str()`` of
    the naive UTC value (``DatabaseOperations.adapt_datetimefield_value``). SQLite compares the
    text, so a bound instant must have exactly this form."""
    return str(at.astimezone(dt.timezone.utc).replace(tzinfo=None))


def sqlite_path(alias: str = "default") -> str:
    return str(connections[alias].settings_dict["NAME"])


class SQLiteJournal(JournalReader):
    """Async reader over one sqlite3 connection on one dedicated thread. One per event loop."""

    def __init__(self, path: str | None = None, *, timeout: float = 20.0):
        self._path = path or sqlite_path()
        self._timeout = timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the executor's thread

    async def _call(self, fn, *args):
        if self._executor is None:
            raise RuntimeError("journal is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="khala-sqlite-journal")
        await self._call(self._connect)

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await self._call(self._disconnect)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    # ---- on the worker thread -----------------------------------------------------------------

    def _connect(self) -> None:
        if self._conn is None:
            # isolation_level=None: transactions are exactly the BEGIN/COMMIT written below.
            conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            conn.execute("PRAGMA query_only = 1")  # the lane never writes
            self._conn = conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _snapshot(self, statements: list[tuple[str, tuple]]) -> list[list[tuple]]:
        """Run ``statements`` in one read transaction; their results in order."""
        self._connect()
        conn = self._conn
        conn.execute("BEGIN")
        try:
            return [conn.execute(sql, params).fetchall() for sql, params in statements]
        finally:
            conn.execute("COMMIT")

    def _page(self, topic: str, rows_sql: str, params: tuple) -> JournalPage:
        seq_rows, rows = self._snapshot([(_SEQUENCE, (topic,)), (rows_sql, params)])
        if not seq_rows:
            return JournalPage([], None, None, None)
        head, pruned, epoch = seq_rows[0]
        b64 = base64.b64encode
        out = [
            JournalRow(
                topic,
                wm,
                doc_key,
                version,
                owner,
                bool(public),
                payload,
                b64(digest).decode("ascii") if digest is not None else None,
                size,
                ts or 0.0,
            )
            for wm, doc_key, version, owner, public, payload, digest, size, ts in rows
        ]
        return JournalPage(out, head, pruned, epoch)

    def _topic_states(self, topics: list[str]) -> dict[str, TopicState]:
        statements = [
            (_TOPIC_STATES.format(placeholders=",".join("?" * len(chunk))), tuple(chunk))
            for chunk in (topics[i : i + _IN_CHUNK] for i in range(0, len(topics), _IN_CHUNK))
        ]
        if not statements:
            return {}
        return {
            topic: TopicState(topic, head, pruned, epoch, budget, qos, bool(snapshot))
            for result in self._snapshot(statements)
            for topic, head, pruned, epoch, budget, qos, snapshot in result
        }

    def _revocations(self, session_ids: list[str], device_ids: list[str], at) -> list[tuple]:
        from tokens.revocation import revocation_lookups

        statements = revocation_lookups(session_ids, device_ids, stored_datetime(at), placeholder="?")
        if not statements:
            return []
        return [row for result in self._snapshot([(sql, tuple(params)) for sql, params in statements]) for row in result]

    def _known_topics(self) -> tuple[str, ...]:
        return tuple(row[0] for row in self._snapshot([(_ALL_TOPICS, ())])[0])

    # ---- the Journal interface ----------------------------------------------------------------

    async def known_topics(self) -> tuple[str, ...]:
        return await self._call(self._known_topics)

    async def topic_states(self, topics) -> dict[str, TopicState]:
        return await self._call(self._topic_states, list(topics))

    async def read_after(self, topic: str, after: int, limit: int) -> JournalPage:
        """Topic-wide rows with ``watermark > after``, ascending, at most ``limit``."""
        return await self._call(self._page, topic, _READ_AFTER, (topic, after, limit))

    async def read_visible(self, topic: str, after: int, through: int, owner: str, limit: int) -> JournalPage:
        """Rows ``after < watermark <= through`` that ``owner`` may see (its own or public)."""
        return await self._call(self._page, topic, _READ_VISIBLE, (topic, after, through, owner, limit))

    async def revocations(self, session_ids, device_ids, at) -> list[tuple]:
        """``(kind, value, reason)`` of the unexpired revocations among the ids at ``at``, newest
        first (``tokens.revocation.revocation_lookups``, as ``sync.journal.Journal``)."""
        return await self._call(self._revocations, list(session_ids), list(device_ids), at)

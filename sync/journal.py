"""The PostgreSQL journal reader (``sync.journal_reader.JournalReader``): the ONLY database access
of the WebSocket lane on PostgreSQL.

Why not the ORM through ``sync_to_async``: ``thread_sensitive=True`` (the default) runs every call
on one shared thread, serialising all sockets' replays, and each executor thread would hold its own
connection — with thousands of sockets, thousands of connections. Here one bounded ``psycopg_pool.AsyncConnectionPool`` per worker process
(event loop) serves every socket: at most ``DB_POOL_MAX_SIZE`` connections whatever the number of
sockets; a socket never holds a connection, it borrows one for a single statement.

One of those connections is kept for live fan-out: the hub's reads of new rows (``read_after``)
may use any connection of the pool, every other read (subscribes' topic states, replay and
catch-up pages, revocation checks) at most ``DB_POOL_MAX_SIZE - 1`` at a time. So a reconnect storm
of thousands of subscribes and replays queues behind itself, never in front of the next live update
of the sockets already connected (measured in bench/README.md, the reconnect storm). With
``DB_POOL_MAX_SIZE`` 1 there is nothing to keep and all reads share the one connection.

Every read that delivers rows returns the topic's ``pruned_through`` and ``stream_epoch`` from the
SAME statement (one snapshot), as the interface requires.

Payloads are selected as ``payload::text`` and spliced into frames unparsed (``sync.protocol``).
"""

from __future__ import annotations

import asyncio

from django.db import connections
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from khala_project.conf import khala_setting
from sync.journal_reader import JournalPage, JournalReader
from sync.protocol import JournalRow, TopicState

# payload as JSON text (spliced into frames unparsed), payload_hash already in wire form (base64 of
# 32 bytes: 44 characters, no line breaks), inserted_at as POSIX seconds.
# Connections of the pool that only the hub's live reads may take when every other reader is busy.
LIVE_RESERVED_CONNECTIONS = 1

_ROW_COLUMNS = (
    "e.watermark, e.doc_key, e.doc_version, e.owner, e.public, e.payload::text, encode(e.payload_hash, 'base64'), "
    "e.payload_bytes, extract(epoch from e.inserted_at)::float8"
)

# All rows after a cursor, topic-wide (the hub's live read).
_READ_AFTER = f"""
WITH seq AS (SELECT last_watermark, pruned_through, stream_epoch FROM sync_topic_sequences WHERE topic = %(topic)s)
SELECT seq.last_watermark, seq.pruned_through, seq.stream_epoch, {_ROW_COLUMNS}
FROM seq LEFT JOIN LATERAL (
    SELECT * FROM sync_stream_events
    WHERE topic = %(topic)s AND watermark > %(after)s
    ORDER BY watermark LIMIT %(limit)s
) e ON true
ORDER BY e.watermark
"""

# Rows a principal may see in (after, through]: its org's rows merged with the public ones, each
# branch an ordered scan of its own index (topic, owner, watermark) / partial (topic, watermark).
_READ_VISIBLE = f"""
WITH seq AS (SELECT last_watermark, pruned_through, stream_epoch FROM sync_topic_sequences WHERE topic = %(topic)s)
SELECT seq.last_watermark, seq.pruned_through, seq.stream_epoch, {_ROW_COLUMNS}
FROM seq LEFT JOIN LATERAL (
    (SELECT * FROM sync_stream_events
     WHERE topic = %(topic)s AND owner = %(owner)s AND NOT public
       AND watermark > %(after)s AND watermark <= %(through)s
     ORDER BY watermark LIMIT %(limit)s)
    UNION ALL
    (SELECT * FROM sync_stream_events
     WHERE topic = %(topic)s AND public
       AND watermark > %(after)s AND watermark <= %(through)s
     ORDER BY watermark LIMIT %(limit)s)
    ORDER BY watermark LIMIT %(limit)s
) e ON true
ORDER BY e.watermark
"""

_TOPIC_STATES = """
SELECT topic, last_watermark, pruned_through, stream_epoch, replay_budget_events, qos_tier, snapshot_enabled
FROM sync_topic_sequences WHERE topic = ANY(%(topics)s)
"""

_ALL_TOPICS = "SELECT topic FROM sync_topic_sequences ORDER BY topic"


def django_conninfo(alias: str = "default") -> str:
    """libpq conninfo of a Django database (the test database under pytest-django)."""
    db = connections[alias].settings_dict
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": str(db["PORT"]) if db.get("PORT") else None,
        "application_name": "khala-sync",
        "connect_timeout": str(db["OPTIONS"]["connect_timeout"]) if db.get("OPTIONS", {}).get("connect_timeout") else None,
    }
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


class Journal(JournalReader):
    """Async reader over a bounded pool. Create one per event loop (``sync.hub`` does)."""

    def __init__(self, conninfo: str | None = None, *, max_size: int | None = None, timeout: float = 30.0,
                 wait_open: bool = True, name: str = "khala-sync"):
        self._conninfo = conninfo or django_conninfo()
        size = int(max_size or khala_setting("DB_POOL_MAX_SIZE"))
        self._wait_open = wait_open
        # Every read but the hub's live ones holds one of these while it waits for and uses a
        # connection: one connection always stays within reach of live fan-out (module docstring).
        self._others = asyncio.Semaphore(max(1, size - LIVE_RESERVED_CONNECTIONS))
        self.pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            name=name,
            timeout=timeout,  # the longest a read waits for a connection
        )

    async def open(self) -> None:
        # A replica's pool does not wait: a worker must start (on the primary) while a replica is down.
        await self.pool.open(wait=self._wait_open, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def scalar(self, query: str) -> object:
        """The one value of a one-row statement (the replica probes: WAL positions)."""
        rows = await self._fetch(query, {})
        return rows[0][0] if rows else None

    async def _fetch(self, query: str, params: dict, *, live: bool = False) -> list[tuple]:
        if live:
            return await self._run(query, params)
        async with self._others:
            return await self._run(query, params)

    async def _run(self, query: str, params: dict) -> list[tuple]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query, params, binary=True)
            return await cursor.fetchall()

    async def known_topics(self) -> tuple[str, ...]:
        return tuple(row[0] for row in await self._fetch(_ALL_TOPICS, {}))

    async def topic_states(self, topics) -> dict[str, TopicState]:
        rows = await self._fetch(_TOPIC_STATES, {"topics": list(topics)})
        return {
            topic: TopicState(topic, head, pruned, epoch, budget, qos, snapshot)
            for topic, head, pruned, epoch, budget, qos, snapshot in rows
        }

    async def read_after(self, topic: str, after: int, limit: int) -> JournalPage:
        """The hub's live read: never queued behind subscribes and replays (module docstring)."""
        return self._page(topic, await self._fetch(_READ_AFTER, {"topic": topic, "after": after, "limit": limit}, live=True))

    async def read_visible(self, topic: str, after: int, through: int, owner: str, limit: int) -> JournalPage:
        params = {"topic": topic, "after": after, "through": through, "owner": owner, "limit": limit}
        return self._page(topic, await self._fetch(_READ_VISIBLE, params))

    async def revocations(self, session_ids, device_ids, at) -> list[tuple]:
        """The statements of ``tokens.revocation.revocation_lookups`` (one source for the semantics)
        on this pool instead of Django's thread-sensitive executor."""
        from tokens.revocation import revocation_lookups

        rows: list[tuple] = []
        statements = revocation_lookups(list(session_ids), list(device_ids), at)
        if not statements:
            return rows
        async with self._others, self.pool.connection() as conn:
            for sql, params in statements:
                cursor = await conn.execute(sql, params)
                rows.extend(await cursor.fetchall())
        return rows

    @staticmethod
    def _page(topic: str, rows: list[tuple]) -> JournalPage:
        if not rows:
            return JournalPage([], None, None, None)
        head, pruned, epoch = rows[0][0], rows[0][1], rows[0][2]
        out = [
            JournalRow(topic, wm, doc_key, version, owner, public, payload, digest, size, ts)
            for _h, _p, _e, wm, doc_key, version, owner, public, payload, digest, size, ts in rows
            if wm is not None
        ]
        return JournalPage(out, head, pruned, epoch)


def default_journal() -> JournalReader:
    """The worker's journal reader for the default database: ``Journal`` (a psycopg pool) on
    PostgreSQL — wrapped in ``sync.journal_replicas.RoutedJournal`` when ``DATABASE_REPLICA_URLS``
    configures replicas; on the embedded SQLite of ``make run``, ``sync.journal_sqlite.SQLiteJournal``
    (same interface, one reader thread)."""
    if connections["default"].vendor != "postgresql":
        from sync.journal_sqlite import SQLiteJournal

        return SQLiteJournal()
    from khala_project.replicas import replica_aliases

    aliases = replica_aliases()
    if not aliases:
        return Journal()
    from sync.journal_replicas import RoutedJournal

    return RoutedJournal.for_aliases(Journal(), aliases)

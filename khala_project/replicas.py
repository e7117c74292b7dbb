"""Streaming read replicas: which Django aliases they are, and the WAL position a commit needs.

``DATABASE_REPLICA_URLS`` adds the aliases ``replica_1``, ``replica_2``… (``khala_project.settings``).
Only two readers use them, each checking freshness itself: the WebSocket lane's journal
(``sync.journal_replicas``) and HTTP hydration (``sync.hydration``). Everything else — writes,
watermark allocation, tokens, revocation, the admin — uses ``default``, the primary.

A position in the WAL (an LSN) is handled as an integer: the byte offset ``pg_lsn - '0/0'``.
After the sink's COMMIT, ``pg_current_wal_lsn()`` on the same connection is at or past the end of
the commit record (the commit waited for its WAL flush: ``synchronous_commit`` is never off for
Khala's writes), so a replica whose ``pg_last_wal_replay_lsn()`` is at or past it shows the commit
to every snapshot it takes afterwards. That position rides in the watermark hint
(``khala_project.bus.hint_message``) so a worker knows which replica may serve the read the hint
triggers.
"""

from __future__ import annotations

from django.conf import settings

REPLICA_ALIAS_PREFIX = "replica_"

# Integer LSNs straight from SQL (pg_lsn minus pg_lsn is a numeric byte count).
CURRENT_LSN_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
REPLAY_LSN_SQL = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"


def replica_aliases() -> list[str]:
    """The configured replica aliases, in ``DATABASE_REPLICA_URLS`` order (empty: none)."""
    names = [alias for alias in settings.DATABASES if alias.startswith(REPLICA_ALIAS_PREFIX)]
    return sorted(names, key=lambda alias: int(alias[len(REPLICA_ALIAS_PREFIX):]))


def commit_lsn(connection) -> int | None:
    """The primary's WAL position right after a COMMIT on ``connection`` (a Django connection, in
    an ``on_commit`` callback), or None when no replica is configured (the hint then carries none
    and no round trip is spent). A failure to read it only costs the readers a check: None."""
    if connection.vendor != "postgresql" or not replica_aliases():
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute(CURRENT_LSN_SQL)
            return int(cursor.fetchone()[0])
    except Exception:
        return None


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form (``16/B374D848``) of an integer LSN, for logs and docs."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"

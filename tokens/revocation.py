"""Session and device revocation, shared by every worker through the database.

``revoke()`` writes one row per revoked id (``RevokedSession``) in one transaction; after COMMIT it
sends ``{"type": "sync.revoked", "session_ids", "device_ids", "reason"}`` through the bus
(``khala_project.bus``: names, shape and publish seam) to the channel-layer group
``khala.revocations``. That message is a hint: the layer may drop it, so delivery also re-checks
``revoked_among()`` on its heartbeat tick and ``revoked_reason()`` on every join.

A row is kept until ``expires_at`` = revocation time + ``REVOCATION_TTL_SECONDS`` (default
``TOKEN_TTL_MAX_SECONDS`` + ``TOKEN_CLOCK_SKEW_SECONDS``: no token minted before the revocation can
outlive it). Re-revoking an id refreshes its row. Expired rows are ignored and pruned on the next
``revoke()``.

The lookups (``revoked_reason``, ``revoked_among``) are ONE statement, ``revocation_lookups()``,
shared by every reader: the functions here run it through Django's connection (HTTP views,
commands), and the WebSocket lane runs the very same statements on its own bounded async reader
(``sync.journal.Journal.revocations`` on PostgreSQL, ``sync.journal_sqlite`` on the embedded
SQLite) so that a join never waits for Django's single thread-sensitive executor or opens a fresh
connection. ``reason_from_rows`` / ``among_from_rows`` turn the rows into the answers for both.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable

from django.db import connection, transaction

from khala_project.bus import REVOCATIONS_GROUP, REVOKED_TYPE, publish_blocking, revoked_message  # noqa: F401 (re-exported names)
from khala_project.conf import khala_setting
from tokens.metrics import REVOCATIONS
from tokens.models import RevokedSession

log = logging.getLogger(__name__)

DEFAULT_REASON = "user_requested"
MAX_IDS_PER_KIND = 1000
MAX_ID_LENGTH = 128
REASON_PATTERN = re.compile(r"^[a-z0-9_.:-]{1,64}\Z")

# Used when a caller passes no `now`; tests patch it or pass `now=`.
clock = time.time


class InvalidRevocation(ValueError):
    """The revocation request is unusable (no ids, too many, a malformed id or reason)."""


def revocation_ttl_seconds() -> int:
    configured = khala_setting("REVOCATION_TTL_SECONDS")
    if configured is not None:
        return int(configured)
    return int(khala_setting("TOKEN_TTL_MAX_SECONDS")) + int(khala_setting("TOKEN_CLOCK_SKEW_SECONDS"))


def normalize_reason(reason: str | None) -> str:
    """Lower-case, trimmed; ``user_requested`` when absent. A reason is a code, not prose."""
    if reason is None or not str(reason).strip():
        return DEFAULT_REASON
    normalized = str(reason).strip().lower()
    if not REASON_PATTERN.match(normalized):
        raise InvalidRevocation("reason must be 1-64 characters of [a-z0-9_.:-]")
    return normalized


def _normalize_ids(ids: Iterable[str] | None, kind: str) -> list[str]:
    result: list[str] = []
    for value in ids or ():
        if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_ID_LENGTH:
            raise InvalidRevocation(f"every {kind} id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
        result.append(value.strip())
    result = list(dict.fromkeys(result))
    if len(result) > MAX_IDS_PER_KIND:
        raise InvalidRevocation(f"at most {MAX_IDS_PER_KIND} {kind} ids per request")
    return result


def _as_datetime(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


def revoke(
    session_ids: Iterable[str] | None,
    device_ids: Iterable[str] | None,
    reason: str | None = None,
    *,
    now: float | None = None,
) -> dict:
    """Record the revocation of ``session_ids`` and ``device_ids``; return what was recorded.

    Returns ``{"revoked_session_ids", "revoked_device_ids", "reason", "revoked_at"}`` (datetime).
    Raises ``InvalidRevocation`` when both lists are empty or an id/reason is malformed.
    """
    sessions = _normalize_ids(session_ids, "session")
    devices = _normalize_ids(device_ids, "device")
    if not sessions and not devices:
        raise InvalidRevocation("give at least one session id or device id")
    reason = normalize_reason(reason)
    revoked_at = _as_datetime(clock() if now is None else now)
    expires_at = revoked_at + dt.timedelta(seconds=revocation_ttl_seconds())
    rows = [
        RevokedSession(kind=kind, value=value, reason=reason, revoked_at=revoked_at, expires_at=expires_at)
        for kind, values in ((RevokedSession.Kind.SESSION, sessions), (RevokedSession.Kind.DEVICE, devices))
        for value in values
    ]
    with transaction.atomic():
        RevokedSession.objects.filter(expires_at__lte=revoked_at).delete()
        RevokedSession.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["kind", "value"],
            update_fields=["reason", "revoked_at", "expires_at"],
        )
        # Only after COMMIT: a worker that reacts to the hint must find the rows.
        transaction.on_commit(lambda: _announce(sessions, devices, reason))
    REVOCATIONS.labels(kind="session").inc(len(sessions))
    REVOCATIONS.labels(kind="device").inc(len(devices))
    return {
        "revoked_session_ids": sessions,
        "revoked_device_ids": devices,
        "reason": reason,
        "revoked_at": revoked_at,
    }


def _announce(session_ids: list[str], device_ids: list[str], reason: str) -> None:
    # The bus may drop it (and never raises: the revocation is committed); workers also re-check
    # the database on their heartbeat tick, so a lost hint only delays the close.
    publish_blocking(REVOCATIONS_GROUP, revoked_message(session_ids, device_ids, reason))


# At most this many ids of each kind per statement: keeps every statement under SQLite's
# bound-parameter limit (999 on old builds) and its text reusable.
LOOKUP_CHUNK_IDS = 400


def revocation_lookups(session_ids: list[str], device_ids: list[str], at, *, placeholder: str = "%s") -> list[tuple[str, list]]:
    """The statements answering "which of these ids are revoked at ``at``", as ``[(sql, params)]``.

    Each selects ``(kind, value, reason)`` of the rows that are not expired (``expires_at > at``),
    newest revocation first. ``at`` must already be adapted for the database (an aware datetime
    for PostgreSQL; SQLite compares the stored text form: ``connection.ops.adapt_datetimefield_value``,
    ``sync.journal_sqlite.stored_datetime``);
    ``placeholder`` is the driver's (``%s``: psycopg and Django cursors, ``?``: sqlite3). No
    statement when both lists are empty.
    """
    table = RevokedSession._meta.db_table
    out = []
    sessions, devices = list(session_ids), list(device_ids)
    while sessions or devices:
        chunk_s, sessions = sessions[:LOOKUP_CHUNK_IDS], sessions[LOOKUP_CHUNK_IDS:]
        chunk_d, devices = devices[:LOOKUP_CHUNK_IDS], devices[LOOKUP_CHUNK_IDS:]
        matches = []
        for kind, chunk in ((RevokedSession.Kind.SESSION, chunk_s), (RevokedSession.Kind.DEVICE, chunk_d)):
            if chunk:
                matches.append(f"(kind = '{kind.value}' AND value IN ({', '.join([placeholder] * len(chunk))}))")
        sql = (
            f"SELECT kind, value, reason FROM {table} "
            f"WHERE expires_at > {placeholder} AND ({' OR '.join(matches)}) ORDER BY revoked_at DESC"
        )
        out.append((sql, [at, *chunk_s, *chunk_d]))
    return out


def reason_from_rows(rows) -> str | None:
    """``revoked_reason``'s answer from the rows of ``revocation_lookups`` (newest first)."""
    return rows[0][2] if rows else None


def among_from_rows(rows) -> dict:
    """``revoked_among``'s answer from the rows of ``revocation_lookups``."""
    result: dict = {"session_ids": {}, "device_ids": {}}
    for kind, value, reason in rows:
        result["session_ids" if kind == RevokedSession.Kind.SESSION else "device_ids"][value] = reason
    return result


def _lookup(session_ids: list[str], device_ids: list[str], now: float | None) -> list[tuple]:
    at = connection.ops.adapt_datetimefield_value(_as_datetime(clock() if now is None else now))
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        for sql, params in revocation_lookups(session_ids, device_ids, at):
            cursor.execute(sql, params)
            rows.extend(cursor.fetchall())
    return rows


def revoked_reason(session_id: str | None, device_id: str | None, *, now: float | None = None) -> str | None:
    """The reason ``session_id`` or ``device_id`` was revoked, or None when neither is (any longer)."""
    if not session_id and not device_id:
        return None
    return reason_from_rows(_lookup([session_id] if session_id else [], [device_id] if device_id else [], now))


def revoked_among(
    session_ids: Iterable[str], device_ids: Iterable[str], *, now: float | None = None
) -> dict:
    """Batch check for a worker: ``{"session_ids": {id: reason}, "device_ids": {id: reason}}``.

    Only revoked ids appear; one query whatever the number of ids (up to ``LOOKUP_CHUNK_IDS``
    of each kind; one more per further chunk).
    """
    sessions = sorted({s for s in session_ids if s})
    devices = sorted({d for d in device_ids if d})
    if not sessions and not devices:
        return {"session_ids": {}, "device_ids": {}}
    return among_from_rows(_lookup(sessions, devices, now))

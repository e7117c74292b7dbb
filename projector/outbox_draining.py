"""The draining flag: commands skip their NOTIFY while a ``projector_worker`` is draining anyway.

A NOTIFY per command costs the writer a wake-up of its NOTIFY thread and PostgreSQL a transaction,
and it is useless while a worker is already draining (it polls again right after each batch). So
the worker that drains raises a flag and the commands that see it skip their NOTIFY. Two advisory
locks make the flag (PostgreSQL only):

- ``DRAINING_LOCK``: held exclusively (session lock) by the one worker that is draining. A command
  probes it in the same statement that inserts its outbox row (``record_change``): it takes and
  at once releases a shared session lock on it; if that fails, a worker is draining.
- ``RECORDING_LOCK``: held shared (transaction lock) by every command from its outbox row to its
  COMMIT, taken BEFORE the probe.

The race to close: a command sees the flag and skips its NOTIFY, the worker's last pass runs before
that command commits, the worker lowers the flag and waits for a NOTIFY that never comes. So
lowering (``DrainingFlag.lower``) is: release ``DRAINING_LOCK``, then try ``RECORDING_LOCK``
exclusively without waiting. If that succeeds, no command is between its outbox row and its COMMIT:
every command that saw the flag has committed (its entry is visible to the worker's next pass), and
every later command probes after the release, sees no flag and sends its NOTIFY. If it fails, some
command is in flight: the worker takes the flag again and keeps polling. Neither side ever waits
for the other's lock (the writer's shared lock conflicts only with an exclusive holder, and the
worker only ever tries); under a steady load the worker simply stays the drainer and no command
sends a NOTIFY.

If the draining worker dies, its session ends and the flag goes with it; entries whose commands
skipped the NOTIFY are then found by the next poll of another worker (or of the restarted one),
as any entry whose NOTIFY was lost.
"""

from __future__ import annotations

import logging

from django.db import Error as DatabaseError, connection

log = logging.getLogger(__name__)

# Two bigint advisory-lock keys of their own ("khala" + 1 / + 2); nothing else in Khala takes
# advisory locks.
DRAINING_LOCK = 0x6B68616C6101
RECORDING_LOCK = 0x6B68616C6102

# For ``record_change``'s INSERT: the CTE takes the recording lock before the row is inserted, and
# the RETURNING expression probes the flag after; true if a worker is draining. (A probe that got
# the shared lock releases it in the same expression.)
RECORDING_CTE = f"WITH recording AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({RECORDING_LOCK}))"
DRAINING_PROBE = (
    f"CASE WHEN pg_try_advisory_lock_shared({DRAINING_LOCK}) "
    f"THEN NOT pg_advisory_unlock_shared({DRAINING_LOCK}) ELSE true END"
)


def _scalar(sql: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return bool(cursor.fetchone()[0])


class DrainingFlag:
    """The worker's side, on the worker's (Django) connection: ``raise_flag`` before draining,
    ``lower`` when a pass found nothing. Never raises: after a database error the flag is down (the
    connection, and with it the session lock, is dropped) and the caller falls back to polling."""

    def __init__(self):
        self.held = False

    def raise_flag(self) -> bool:
        """Try to become the draining worker; True if this worker holds the flag."""
        if not self.held:
            try:
                self.held = _scalar(f"SELECT pg_try_advisory_lock({DRAINING_LOCK})")
            except DatabaseError:
                self._lost()
        return self.held

    def lower(self) -> bool:
        """Release the flag; True if every command that saw it has committed since (see the module
        docstring). False: some command may still commit without a NOTIFY; keep polling."""
        if not self.held:
            return True
        try:
            _scalar(f"SELECT pg_advisory_unlock({DRAINING_LOCK})")
            self.held = False
            return _scalar(
                f"SELECT CASE WHEN pg_try_advisory_lock({RECORDING_LOCK}) "
                f"THEN pg_advisory_unlock({RECORDING_LOCK}) ELSE false END"
            )
        except DatabaseError:
            self._lost()
            return False

    def forget(self) -> None:
        """The connection was closed (and the session lock with it)."""
        self.held = False

    def _lost(self) -> None:
        log.warning("draining flag: database error; dropping the connection", exc_info=True)
        connection.close()
        self.held = False

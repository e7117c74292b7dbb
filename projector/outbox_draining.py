"""The draining flag: writers skip their NOTIFY while a ``projector_worker`` is draining anyway.

A NOTIFY per command costs the writer a statement and PostgreSQL a transaction, and it is useless
while a worker is already draining (it polls again right after each batch). So the worker that
drains raises a flag, and writers that see it skip their NOTIFY for a while.

The flag is ``DRAINING_LOCK``, an advisory lock held exclusively (session lock) by the one worker
that is draining. A writer process looks at it after a COMMIT, from its NOTIFY thread
(``projector.outbox._WorkerWaker``), in the statement that would NOTIFY
(``NOTIFY_UNLESS_DRAINING``): if the flag is down it NOTIFYs; if it is up it sends nothing and
trusts the flag for ``LEASE_SECONDS``: the process's commits until then skip the NOTIFY without
asking. Under a steady load a writer process thus sends a few statements a second, whatever its
command rate, and the commands themselves send nothing (their outbox row is written by trigger
inside their own statement).

The race to close: a commit that skipped its NOTIFY must still be seen by a drain pass, also
when the worker lowers its flag and goes back to waiting for NOTIFYs. The worker's side
(``projector.outbox_worker.OutboxDrainLoop``):

1. after lowering the flag it always makes one more pass: every commit that happened before the
   lowering is visible to it;
2. then it keeps polling for ``COOLDOWN_SECONDS`` before it waits for NOTIFYs again. A commit
   after the lowering that still skipped its NOTIFY did so because its process saw the flag up
   less than ``LEASE_SECONDS`` before (so before the lowering): it committed less than
   ``LEASE_SECONDS`` after the lowering, inside the cooldown, and one of those polls sees it.

The margin between the two (``COOLDOWN_SECONDS - LEASE_SECONDS``) covers the probe's answer in
flight: the lease starts when the answer is read, a little after the flag was seen. A writer
process stalled for longer than that margin between the two could skip one NOTIFY too many; that
entry then waits for the next poll (``OUTBOX_POLL_INTERVAL_SECONDS``), like an entry whose NOTIFY
was lost. No entry is ever left behind: NOTIFY is only a wake-up, and workers poll.

If the draining worker dies, its session ends and the flag goes with it; entries whose commands
skipped the NOTIFY are found by the next poll of another worker (or of the restarted one), as any
entry whose NOTIFY was lost.
"""

from __future__ import annotations

import logging

from django.db import Error as DatabaseError, connection

log = logging.getLogger(__name__)

# A bigint advisory-lock key of its own ("khala" + 1); nothing else in Khala takes advisory locks.
DRAINING_LOCK = 0x6B68616C6101

# How long a writer process trusts a draining flag it saw, and how long the worker keeps polling
# after lowering it (see the module docstring: the cooldown must be longer than the lease).
LEASE_SECONDS = 0.2
COOLDOWN_SECONDS = 0.35

# The writer's statement (one parameter: the channel). True: it NOTIFYed; false: a worker is
# draining. A shared try-lock on the flag succeeds only while no worker holds it exclusively, and
# is released in the same statement.
NOTIFY_UNLESS_DRAINING = (
    f"SELECT CASE WHEN pg_try_advisory_lock_shared({DRAINING_LOCK}) "
    f"THEN pg_advisory_unlock_shared({DRAINING_LOCK}) AND (SELECT true FROM pg_notify(%s, '')) "
    "ELSE false END"
)


def _scalar(sql: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return bool(cursor.fetchone()[0])


class DrainingFlag:
    """The worker's side, on the worker's (Django) connection: ``raise_flag`` before draining,
    ``lower`` when a pass found nothing (then the cooldown of the module docstring). Never raises:
    after a database error the flag is down (the connection, and with it the session lock, is
    dropped) and the caller falls back to polling."""

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

    def lower(self) -> None:
        """Release the flag. Writers that saw it may skip NOTIFYs for up to ``LEASE_SECONDS``
        more: the caller polls for ``COOLDOWN_SECONDS`` before relying on NOTIFYs again."""
        if not self.held:
            return
        try:
            _scalar(f"SELECT pg_advisory_unlock({DRAINING_LOCK})")
            self.held = False
        except DatabaseError:
            self._lost()

    def forget(self) -> None:
        """The connection was closed (and the session lock with it)."""
        self.held = False

    def _lost(self) -> None:
        log.warning("draining flag: database error; dropping the connection", exc_info=True)
        connection.close()
        self.held = False

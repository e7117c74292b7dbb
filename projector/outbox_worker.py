"""The drain loop of the projection outbox: ``manage.py projector_worker`` and the in-process drain.

The loop calls ``projector.outbox.drain_once`` back to back while batches come back full, then
waits for a wake-up:

- ``NotifyWaiter`` (PostgreSQL): a dedicated autocommit connection LISTENs on
  ``outbox.NOTIFY_CHANNEL``; the wait is a ``select()`` on that socket and on a self-pipe, with the
  poll interval as timeout. A NOTIFY is only a wake-up: one lost (sent by a process that died
  right after its COMMIT, or while the listener reconnected) costs at most one poll interval,
  because the loop drains on every timeout too. Entries backed off after a failure become due
  without any NOTIFY; the poll finds them.
- ``PollWaiter``: just the poll interval (SQLite, or ``--no-listen``).

With ``NotifyWaiter`` the loop raises the draining flag (``projector.outbox_draining``) when a
wake-up starts a drain: while it holds the flag, writers skip their NOTIFY and the loop polls
after the linger instead, as long as passes find work; it lowers the flag once a pass finds
nothing, keeps polling for ``outbox_draining.COOLDOWN_SECONDS`` (writers may still skip their
NOTIFY for a lease after they saw the flag), then waits for NOTIFYs again.

``stop()`` (SIGTERM/SIGINT in the command) ends the wait at once through the self-pipe; a batch
in progress finishes (its transaction commits or rolls back as a whole), then the loop returns.
Killing the process outright is safe as well: an uncommitted batch rolls back and its entries
are claimed again by the next drainer.

A database error (server restart, lost connection) is logged, the connection dropped, and the
loop tries again after the poll interval instead of exiting.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from django.db import Error as DatabaseError, connection

from khala_project.conf import khala_setting
from projector import metrics, outbox
from projector.linger import Linger
from projector.outbox_draining import COOLDOWN_SECONDS, DrainingFlag

log = logging.getLogger(__name__)

STATS_INTERVAL_SECONDS = 1.0
# While it holds the draining flag the loop polls after the linger, but never more often than this.
DRAINING_POLL_MIN_SECONDS = 0.005


class PollWaiter:
    """Wait for the poll interval, or until ``wake()``."""

    def __init__(self):
        self._event = threading.Event()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        pass


class NotifyWaiter:
    """Wait for a NOTIFY on the outbox channel, the poll interval, or ``wake()`` (see the module
    docstring). The listening connection is its own (autocommit), never Django's."""

    listens = True  # commands wake it with NOTIFY: the loop raises the draining flag

    def __init__(self):
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._conn = None

    def _listen(self):
        if self._conn is None:
            params = connection.get_connection_params()
            conn = connection.get_new_connection(params)
            conn.autocommit = True
            conn.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")
            self._conn = conn
        return self._conn

    def wait(self, timeout: float) -> None:
        try:
            conn = self._listen()
        except Exception:
            log.warning("cannot LISTEN on %s; polling every %gs", outbox.NOTIFY_CHANNEL, timeout, exc_info=True)
            select.select([self._read_fd], [], [], timeout)
            self._drain_pipe()
            return
        try:
            if self._pending_notifies(conn):
                return
            readable, _, _ = select.select([conn.pgconn.socket, self._read_fd], [], [], timeout)
            if conn.pgconn.socket in readable:
                self._pending_notifies(conn)
        except Exception:
            log.warning("LISTEN connection lost; reconnecting at the next wait", exc_info=True)
            self._drop()
        self._drain_pipe()

    @staticmethod
    def _pending_notifies(conn) -> bool:
        """Read what the server sent; True if it held at least one notification."""
        pgconn = conn.pgconn
        if not pgconn.consume_input():  # pragma: no cover - psycopg raises on a broken connection
            pass
        got = False
        while pgconn.notifies() is not None:
            got = True
        if pgconn.status != 0:  # CONNECTION_OK
            raise ConnectionError("listener connection is not OK")
        return got

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        """Safe from a signal handler: one non-blocking write."""
        try:
            os.write(self._write_fd, b"x")
        except BlockingIOError:
            pass

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        self._drop()
        os.close(self._read_fd)
        os.close(self._write_fd)


@dataclass
class WorkerTotals:
    batches: int = 0
    result: outbox.DrainResult = field(default_factory=outbox.DrainResult)


class OutboxDrainLoop:
    """Drain until stopped. ``waiter``: ``NotifyWaiter`` or ``PollWaiter``; ``on_batch`` (optional)
    sees each non-empty ``DrainResult``."""

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        waiter=None,
        project=None,
        on_batch: Callable[[outbox.DrainResult], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        linger: Callable[[], float] | None = None,
    ):
        self.batch_size = batch_size or int(khala_setting("OUTBOX_BATCH_SIZE"))
        self.poll_interval = poll_interval if poll_interval is not None else float(khala_setting("OUTBOX_POLL_INTERVAL_SECONDS"))
        self.waiter = waiter or PollWaiter()
        self.project = project
        self.on_batch = on_batch
        self.monotonic = monotonic
        # The wait between passes (``projector.linger``; default: from the settings, growing with
        # the host's CPU pressure).
        self.linger = linger
        self.totals = WorkerTotals()
        # The draining flag (``projector.outbox_draining``) only pays where commands NOTIFY, i.e.
        # with a LISTENing waiter; a polling loop leaves it alone.
        self.draining = DrainingFlag() if getattr(self.waiter, "listens", False) else None
        self.last_claimed = 0
        self._stop = threading.Event()
        self._stats_due = 0.0

    def stop(self) -> None:
        self._stop.set()
        self.waiter.wake()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> WorkerTotals:
        linger = self.linger or Linger(float(khala_setting("OUTBOX_WAKE_LINGER_SECONDS")), float(khala_setting("OUTBOX_LINGER_MAX_SECONDS")))
        cooling_until: float | None = None  # polling after lowering the flag (``outbox_draining``)
        try:
            while not self._stop.is_set():
                full = self.pass_once()
                if full or self._stop.is_set():
                    continue
                if self.draining is not None and (self.draining.held or cooling_until is not None):
                    # Writers skip their NOTIFY while we hold the flag, and for a lease after they
                    # saw it: poll after the linger while passes find work; lower the flag once a
                    # pass finds nothing, pass once more at once (it sees every commit made before
                    # the lowering), then keep polling through the cooldown.
                    if self.last_claimed:
                        if self.draining.raise_flag():
                            cooling_until = None
                        self._stop.wait(max(linger(), DRAINING_POLL_MIN_SECONDS))
                        continue
                    if self.draining.held:
                        self.draining.lower()
                        cooling_until = self.monotonic() + COOLDOWN_SECONDS
                        continue
                    if self.monotonic() < cooling_until:
                        self._stop.wait(max(linger(), DRAINING_POLL_MIN_SECONDS))
                        continue
                    cooling_until = None
                self.waiter.wait(self.poll_interval)
                if self.draining is not None:
                    self.draining.raise_flag()
                wait = linger()
                if wait > 0:
                    # Group commit: let the writers that commit right behind the one that woke
                    # us join this batch (one fold and one topic-row lock for all of them).
                    self._stop.wait(wait)
        finally:
            if self.draining is not None:
                self.draining.lower()
            self.waiter.close()
        return self.totals

    def pass_once(self) -> bool:
        """One drain transaction (and the gauges, at most once a second). True if the batch was
        full, i.e. more entries are probably due right now."""
        self.last_claimed = 0
        try:
            result = outbox.drain_once(batch_size=self.batch_size, project=self.project)
            if self.monotonic() >= self._stats_due:
                outbox.stats()
                self._stats_due = self.monotonic() + STATS_INTERVAL_SECONDS
        except DatabaseError as exc:
            log.error("outbox drain failed (%s: %s); retrying in %gs", type(exc).__name__, exc, self.poll_interval)
            connection.close()  # drop a broken connection; the next pass opens a new one
            if self.draining is not None:
                self.draining.forget()  # its session lock went with the connection
            self._stop.wait(self.poll_interval)
            return False
        self.last_claimed = result.claimed
        metrics.OUTBOX_LAST_DRAIN.set(time.time())
        if result.claimed:
            self.totals.batches += 1
            self.totals.result.add(result)
            if self.on_batch:
                self.on_batch(result)
        return result.claimed >= self.batch_size


def in_process_drain_enabled() -> bool:
    setting = khala_setting("OUTBOX_IN_PROCESS_DRAIN")
    if setting is None:
        return connection.vendor != "postgresql"
    return bool(setting)


_in_process: OutboxDrainLoop | None = None


def start_in_process_drain() -> OutboxDrainLoop | None:
    """Start the drain loop on a daemon thread of this (web) process, once, if enabled.

    This is how the one-command embedded server (`make run`) catches up entries whose writer died
    after COMMIT: nothing else to start. A deployment runs ``manage.py projector_worker``
    processes instead (the setting defaults to off on PostgreSQL); running both is safe (SKIP
    LOCKED), only redundant.
    """
    global _in_process
    if _in_process is not None or not in_process_drain_enabled():
        return _in_process
    loop = OutboxDrainLoop(waiter=PollWaiter())

    def run():
        try:
            loop.run()
        finally:
            connection.close()

    threading.Thread(target=run, name="khala-outbox-drain", daemon=True).start()
    _in_process = loop
    return loop

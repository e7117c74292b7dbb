"""``manage.py projector_worker``: drain the projection outbox into read models and the journal.

Run one or more per deployment (several hosts are fine: entries are claimed with
``SELECT … FOR UPDATE SKIP LOCKED``, so no two workers take the same one). Each batch is one
transaction: claim, fold, ``sink.project_many`` (one topic-row lock per batch), delete the
entries, commit (``projector.outbox``). The worker wakes on LISTEN/NOTIFY and polls every
``--poll-interval`` seconds as a fallback (``projector.outbox_worker``).

SIGTERM or SIGINT stop it cleanly: the batch in progress finishes, the command prints its totals
and exits with status 0. ``kill -9`` is safe too: the open batch rolls back and its entries are
claimed again. ``--metrics-port`` serves ``khala_outbox_*`` (depths, oldest pending age, failures)
and the sink's counters for Prometheus. ``--once`` drains until nothing is due, then exits.
"""

import signal

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from projector.outbox_worker import NotifyWaiter, OutboxDrainLoop, PollWaiter


class Command(BaseCommand):
    help = "Drain the projection outbox (batches, SKIP LOCKED, LISTEN/NOTIFY wake-up) until stopped."

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Entries per drain transaction (default: KHALA OUTBOX_BATCH_SIZE)."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="Seconds between drains without a NOTIFY (default: KHALA OUTBOX_POLL_INTERVAL_SECONDS).",
        )
        parser.add_argument("--no-listen", action="store_true", help="Poll only; do not LISTEN for NOTIFY wake-ups.")
        parser.add_argument("--once", action="store_true", help="Drain until no entry is due, then exit.")
        parser.add_argument(
            "--metrics-port", type=int, default=0, help="Serve this process's khala_* metrics on this port (0 = off)."
        )

    def handle(self, *args, batch_size=None, poll_interval=None, no_listen=False, once=False, metrics_port=0, **options):
        if batch_size is not None and not 1 <= batch_size <= 10_000:
            raise CommandError("--batch-size must be between 1 and 10000")
        if poll_interval is not None and poll_interval <= 0:
            raise CommandError("--poll-interval must be > 0")
        if not 0 <= metrics_port <= 65535:
            raise CommandError("--metrics-port must be between 0 and 65535")
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        listen = not no_listen and not once and connection.vendor == "postgresql"
        loop = OutboxDrainLoop(
            batch_size=batch_size,
            poll_interval=poll_interval,
            waiter=NotifyWaiter() if listen else PollWaiter(),
            on_batch=self._report,
        )
        if once:
            while loop.pass_once():
                pass
            self._totals(loop, "projector worker drained")
            return
        previous = {sig: signal.signal(sig, lambda *_: loop.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.stdout.write(
            f"projector worker ready (batch_size={loop.batch_size} poll_interval={loop.poll_interval:g}s "
            f"wake={'listen/notify' if listen else 'poll'})"
        )
        self.stdout.flush()
        try:
            loop.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._totals(loop, "projector worker stopped")

    def _report(self, result) -> None:
        self.stdout.write(
            f"batch: claimed={result.claimed} projected={result.projected} documents={result.documents} "
            f"retried={result.retried} quarantined={result.quarantined}"
        )
        self.stdout.flush()

    def _totals(self, loop, what: str) -> None:
        r = loop.totals.result
        self.stdout.write(
            f"{what}: batches={loop.totals.batches} projected={r.projected} documents={r.documents} "
            f"retried={r.retried} quarantined={r.quarantined}"
        )
        self.stdout.flush()

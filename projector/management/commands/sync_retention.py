"""``manage.py sync_retention``: prune the stream journal by each topic's window (KHALA-009/010).

``--once`` runs one pass and exits. Without it the command is the retention *loop* that a
deployment runs beside its workers (docs/sync/OPERATIONS.md):

- a pass every ``--interval`` seconds (default ``KHALA["RETENTION_INTERVAL_SECONDS"]``);
- SIGTERM or SIGINT stop it cleanly: a pass in progress finishes, the sleep is cut short and the
  command exits with status 0. Killing it outright is safe too: every batch (delete + floor) is
  its own short transaction, so a killed pass leaves whole batches and the next pass resumes;
- a pass that fails on the database (server restarting, connection lost, lock timeout) is
  reported on stderr and retried at the next interval, instead of ending the loop: an outage
  would otherwise need a human to restart retention. ``khala_retention_last_run_timestamp_seconds``
  only moves on passes that completed, so ``KhalaRetentionStalled`` still fires if every pass fails;
- ``--metrics-port`` serves this process's ``khala_journal_*`` and ``khala_retention_*`` metrics for
  Prometheus (the gauges are set here, in the retention process, not in the web workers).
"""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db import Error as DatabaseError, connection

from khala_project.conf import khala_setting
from projector import retention
from projector.models import TopicSequence


class Command(BaseCommand):
    help = "Prune the stream journal by each topic's retention window and advance pruned_through."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one pass and exit (default: loop).")
        parser.add_argument("--topic", help="Only this topic (default: every declared topic).")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between passes in loop mode (default: KHALA RETENTION_INTERVAL_SECONDS).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Rows per DELETE (default: KHALA RETENTION_BATCH_SIZE)."
        )
        parser.add_argument(
            "--horizon-seconds",
            type=int,
            default=None,
            help="Cap every topic's window at this many seconds (effective = min(policy, horizon)).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help="Serve this process's khala_journal_* / khala_retention_* metrics on this port (0 = off).",
        )

    def handle(self, *args, once=False, topic=None, interval=None, batch_size=None, horizon_seconds=None, **options):
        interval = interval if interval is not None else khala_setting("RETENTION_INTERVAL_SECONDS")
        if interval <= 0:
            raise CommandError("--interval must be > 0")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be >= 1")
        if horizon_seconds is not None and horizon_seconds < 1:
            raise CommandError("--horizon-seconds must be >= 1")
        metrics_port = options.get("metrics_port") or 0
        if not 0 <= metrics_port <= 65535:
            raise CommandError("--metrics-port must be between 0 and 65535")
        if topic is not None and not TopicSequence.objects.filter(topic=topic).exists():
            raise CommandError(f"unknown topic {topic!r}")
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        if once:
            self._pass(topic, batch_size, horizon_seconds)
            return

        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.is_set():
                try:
                    self._pass(topic, batch_size, horizon_seconds)
                except DatabaseError as exc:
                    self.stderr.write(f"retention pass failed ({type(exc).__name__}: {exc}); retrying in {interval:g}s")
                connection.close()  # never hold a connection across the sleep (and drop a broken one)
                stop.wait(interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("retention loop stopped")

    def _pass(self, topic, batch_size, horizon_seconds) -> None:
        for r in retention.run_once(topic=topic, batch_size=batch_size, horizon_seconds=horizon_seconds):
            self.stdout.write(
                f"{r.topic}: deleted={r.deleted} batches={r.batches} pruned_through={r.pruned_through} "
                f"oldest={r.oldest_watermark if r.oldest_watermark is not None else '-'} head={r.head_watermark} "
                f"window={r.retention_seconds}s"
            )
        self.stdout.flush()

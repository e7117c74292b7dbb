import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

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

    def handle(self, *args, once=False, topic=None, interval=None, batch_size=None, horizon_seconds=None, **options):
        interval = interval if interval is not None else khala_setting("RETENTION_INTERVAL_SECONDS")
        if interval <= 0:
            raise CommandError("--interval must be > 0")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be >= 1")
        if horizon_seconds is not None and horizon_seconds < 1:
            raise CommandError("--horizon-seconds must be >= 1")
        if topic is not None and not TopicSequence.objects.filter(topic=topic).exists():
            raise CommandError(f"unknown topic {topic!r}")
        while True:
            reports = retention.run_once(topic=topic, batch_size=batch_size, horizon_seconds=horizon_seconds)
            for r in reports:
                self.stdout.write(
                    f"{r.topic}: deleted={r.deleted} batches={r.batches} pruned_through={r.pruned_through} "
                    f"oldest={r.oldest_watermark if r.oldest_watermark is not None else '-'} head={r.head_watermark} "
                    f"window={r.retention_seconds}s"
                )
            if once:
                return
            connection.close()  # do not hold a connection across the sleep
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return

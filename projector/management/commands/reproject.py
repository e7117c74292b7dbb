from django.core.management.base import BaseCommand, CommandError

from projector.hints import flush_hints
from projector.reprojection import TOPICS, reproject


class Command(BaseCommand):
    help = (
        "Rebuild sync read models from the runtime authority. Idempotent: documents whose authority, "
        "projection version and stored read model already agree append nothing."
    )

    def add_arguments(self, parser):
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--run-id", action="append", dest="run_ids", help="Run to re-project (repeatable).")
        scope.add_argument(
            "--worker-id", action="append", dest="worker_ids", help="Codex worker to re-project (repeatable)."
        )
        scope.add_argument("--all", action="store_true", dest="all_entities", help="Every run and codex worker.")
        parser.add_argument(
            "--topic",
            action="append",
            dest="topics",
            choices=sorted(TOPICS),
            help="Only documents of this topic (repeatable; default: all four).",
        )
        parser.add_argument(
            "--progress-every", type=int, default=100, help="Print a progress line every N entities (default 100)."
        )

    def handle(self, *args, run_ids=None, worker_ids=None, all_entities=False, topics=None, progress_every=100, **opts):
        if progress_every < 1:
            raise CommandError("--progress-every must be >= 1")

        def report(p):
            self.stdout.write(
                f"reprojected {p.done}/{p.total} entities: written={p.written_documents} "
                f"unchanged={p.skipped_documents} failed={len(p.failed_entities)} ({p.elapsed:.1f}s)"
            )

        result = reproject(
            run_ids=run_ids,
            worker_ids=worker_ids,
            all_entities=all_entities,
            topics=set(topics) if topics else None,
            on_progress=report,
            progress_every=progress_every,
        )
        flush_hints()
        if result.total == 0:
            self.stdout.write("nothing to reproject")
        for scope, entity_id, error in result.failed_entities:
            self.stderr.write(f"failed: {scope} {entity_id}: {error}")
        if result.failed_entities:
            raise CommandError(f"{len(result.failed_entities)} of {result.total} entities failed")

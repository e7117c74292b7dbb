from django.core.management.base import BaseCommand, CommandError

from projector.models import TopicSequence
from projector.topics import bump_stream_epoch


class Command(BaseCommand):
    help = (
        "Give a topic a new stream_epoch (after a journal reset or a restore from backup): every client "
        "cursor of the old epoch is then answered with a full resync instead of a replay."
    )

    def add_arguments(self, parser):
        parser.add_argument("--topic", required=True, help="The declared topic whose epoch changes.")

    def handle(self, *args, topic, **options):
        try:
            epoch = bump_stream_epoch(topic)
        except TopicSequence.DoesNotExist:
            raise CommandError(f"unknown topic {topic!r}") from None
        self.stdout.write(f"{topic}: stream_epoch={epoch}")

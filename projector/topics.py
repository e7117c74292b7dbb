"""Declaring topics and changing their stream epoch.

Topics are declared, never invented by a write: the sink refuses a topic without a
``sync_topic_sequences`` row (``unknown_topic``). ``ensure_v1_topics()`` re-creates the four v1
topics with their policy defaults (the table in docs/sync/SCHEMA.md); the data migration
``0002_seed_v1_topics`` does the same at migrate time, and tests that flush tables call this.
"""

from dataclasses import dataclass

from django.db import transaction

from projector import journal_partitions
from projector.models import (
    CODEX_WORKER_EVENTS,
    CODEX_WORKER_SUMMARIES,
    NOTIFICATIONS,
    RUN_SUMMARIES,
    TopicSequence,
    new_stream_epoch,
)


@dataclass(frozen=True)
class TopicPolicy:
    topic_class: str
    qos_tier: str
    replay_budget_events: int
    retention_seconds: int
    snapshot_enabled: bool


V1_TOPIC_POLICIES: dict[str, TopicPolicy] = {
    RUN_SUMMARIES: TopicPolicy("durable_summary", "warm", 20000, 604800, True),
    CODEX_WORKER_SUMMARIES: TopicPolicy("durable_summary", "warm", 10000, 259200, True),
    CODEX_WORKER_EVENTS: TopicPolicy("high_churn_events", "hot", 3000, 86400, False),
    NOTIFICATIONS: TopicPolicy("ephemeral_notifications", "cold", 500, 43200, False),
}
# The policy of a topic declared without one: the sequence row's own column defaults, so the
# defaults have one definition (projector.models.TopicSequence) and a row created any other way
# (the admin, raw SQL through the ORM) gets the same policy.
DEFAULT_POLICY = TopicPolicy(
    *(TopicSequence._meta.get_field(name).default for name in TopicPolicy.__dataclass_fields__)
)


def declare_topic(topic: str, policy: TopicPolicy | None = None, *, force_pointer_mode: bool = False) -> TopicSequence:
    """Create the topic row if missing (an existing row, and its policy, are left alone)."""
    policy = policy or V1_TOPIC_POLICIES.get(topic, DEFAULT_POLICY)
    row, created = TopicSequence.objects.get_or_create(
        topic=topic,
        defaults={
            "stream_epoch": new_stream_epoch(),
            "topic_class": policy.topic_class,
            "qos_tier": policy.qos_tier,
            "replay_budget_events": policy.replay_budget_events,
            "retention_seconds": policy.retention_seconds,
            "snapshot_enabled": policy.snapshot_enabled,
            "force_pointer_mode": force_pointer_mode,
        },
    )
    if created:  # its own journal partition now, not on the first write (no-op on SQLite)
        journal_partitions.ensure_topic(topic)
    return row


def ensure_v1_topics() -> list[TopicSequence]:
    return [declare_topic(topic) for topic in V1_TOPIC_POLICIES]


def bump_stream_epoch(topic: str) -> str:
    """Give the topic a new ``stream_epoch`` (after a journal reset or a restore from backup).

    Clients holding a cursor of the old epoch must resync from a snapshot: their watermarks
    refer to another history. Takes the sequence row lock, so no write of the old epoch can
    commit after the new epoch is visible. Raises ``TopicSequence.DoesNotExist``.
    """
    with transaction.atomic():
        row = TopicSequence.objects.select_for_update().get(topic=topic)
        row.stream_epoch = new_stream_epoch()
        row.save(update_fields=["stream_epoch", "updated_at"])
        return row.stream_epoch

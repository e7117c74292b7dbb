"""Seed the four sync v1 topics with their policy defaults (listed in docs/sync/SCHEMA.md).

Existing rows are left alone (an operator may have tuned them): the equivalent of
``INSERT … ON CONFLICT (topic) DO NOTHING``.
"""

import secrets

from django.db import migrations

V1_TOPIC_POLICIES = [
    # topic, topic_class, qos_tier, replay_budget_events, retention_seconds, snapshot_enabled
    ("runtime.run_summaries", "durable_summary", "warm", 20000, 604800, True),
    ("runtime.codex_worker_summaries", "durable_summary", "warm", 10000, 259200, True),
    ("runtime.codex_worker_events", "high_churn_events", "hot", 3000, 86400, False),
    ("runtime.notifications", "ephemeral_notifications", "cold", 500, 43200, False),
]


def seed_topics(apps, schema_editor):
    TopicSequence = apps.get_model("projector", "TopicSequence")
    for topic, topic_class, qos_tier, budget, retention, snapshot in V1_TOPIC_POLICIES:
        TopicSequence.objects.get_or_create(
            topic=topic,
            defaults={
                "stream_epoch": secrets.token_hex(16),
                "topic_class": topic_class,
                "qos_tier": qos_tier,
                "replay_budget_events": budget,
                "retention_seconds": retention,
                "snapshot_enabled": snapshot,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("projector", "0001_initial")]

    # Reversing keeps the rows: deleting a topic row would lose its watermark history.
    operations = [migrations.RunPython(seed_topics, migrations.RunPython.noop)]

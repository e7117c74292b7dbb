"""Storage of the write path: topic sequences, the stream journal, read models and checkpoints.

Invariants (the full argument is in docs/sync/SCHEMA.md):

- ``TopicSequence.last_watermark`` is the last *allocated* watermark of a topic. Watermarks are
  allocated only by ``projector.allocator`` with ``UPDATE … RETURNING`` inside the writer's
  transaction; the row lock is held until commit, so on one topic commit order equals watermark
  order and a reader of ``watermark > cursor`` can never miss a row that commits later.
- ``TopicSequence.pruned_through`` is the highest watermark retention has deleted (the retention
  floor). It only grows, and is updated in the same transaction as the rows it accounts for.
- ``StreamEvent`` rows are immutable once written; only retention deletes them.
- ``ReadModelDocument.doc_version`` never moves backwards (the sink's upsert guards it).

Raw SQL elsewhere relies on the database defaults (``db_default``) declared here, so that
``INSERT``s that omit ``public``, ``inserted_at`` … stay correct.
"""

import secrets

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

# The four topics of sync v1 (policies: docs/sync/SCHEMA.md). The data migration seeds them.
RUN_SUMMARIES = "runtime.run_summaries"
CODEX_WORKER_SUMMARIES = "runtime.codex_worker_summaries"
CODEX_WORKER_EVENTS = "runtime.codex_worker_events"
NOTIFICATIONS = "runtime.notifications"
V1_TOPICS = (RUN_SUMMARIES, CODEX_WORKER_SUMMARIES, CODEX_WORKER_EVENTS, NOTIFICATIONS)


def new_stream_epoch() -> str:
    """A fresh random epoch token (32 hex chars)."""
    return secrets.token_hex(16)


class TopicSequence(models.Model):
    """One row per declared topic: watermark allocator state plus the topic's policy."""

    topic = models.CharField(max_length=160, primary_key=True)
    last_watermark = models.BigIntegerField(default=0, db_default=0)
    pruned_through = models.BigIntegerField(default=0, db_default=0)
    # Changes when the journal is reset or restored so clients can tell "your cursor belongs to
    # another history" from "your cursor is old". See projector.topics.bump_stream_epoch.
    stream_epoch = models.CharField(max_length=64, default=new_stream_epoch)
    retention_seconds = models.IntegerField(default=86400)
    replay_budget_events = models.IntegerField(default=10000)
    qos_tier = models.CharField(max_length=16, default="warm")
    topic_class = models.CharField(max_length=40, default="unspecified")
    snapshot_enabled = models.BooleanField(default=False)
    force_pointer_mode = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        db_table = "sync_topic_sequences"
        ordering = ["topic"]
        constraints = [
            models.CheckConstraint(condition=Q(last_watermark__gte=0), name="sync_topic_seq_last_wm_gte_0"),
            models.CheckConstraint(
                condition=Q(pruned_through__gte=0) & Q(pruned_through__lte=models.F("last_watermark")),
                name="sync_topic_seq_pruned_within_head",
            ),
            models.CheckConstraint(condition=Q(retention_seconds__gt=0), name="sync_topic_seq_retention_gt_0"),
            models.CheckConstraint(condition=Q(replay_budget_events__gt=0), name="sync_topic_seq_budget_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}@{self.last_watermark}"


class StreamEvent(models.Model):
    """The replay journal: one row per projected write, keyed by (topic, watermark)."""

    id = models.BigAutoField(primary_key=True)
    topic = models.CharField(max_length=160)  # plain column: retention must not cascade
    watermark = models.BigIntegerField()
    doc_key = models.CharField(max_length=255)
    doc_version = models.BigIntegerField()
    # Org id string as sync tokens carry it in ``oa_org_id`` (e.g. ``user:42``).
    owner = models.CharField(max_length=160)
    public = models.BooleanField(default=False, db_default=False)
    payload = models.JSONField(null=True, blank=True)  # NULL = pointer mode (hydrate over HTTP)
    payload_hash = models.BinaryField(max_length=32)
    payload_bytes = models.IntegerField()  # length of the canonical JSON, even in pointer mode
    inserted_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "sync_stream_events"
        ordering = ["topic", "watermark"]
        constraints = [
            models.UniqueConstraint(fields=["topic", "watermark"], name="sync_stream_events_topic_watermark_uniq"),
            models.CheckConstraint(condition=Q(watermark__gte=1), name="sync_stream_events_watermark_gte_1"),
            models.CheckConstraint(condition=Q(doc_version__gte=0), name="sync_stream_events_doc_version_gte_0"),
        ]
        indexes = [
            # owner-filtered replay: rows of one owner after a cursor …
            models.Index(fields=["topic", "owner", "watermark"], name="sync_se_topic_owner_wm_idx"),
            # … merged with the public rows after the same cursor
            models.Index(fields=["topic", "watermark"], condition=Q(public=True), name="sync_se_topic_public_wm_idx"),
            models.Index(fields=["topic", "doc_key", "watermark"], name="sync_se_topic_doc_wm_idx"),
            models.Index(fields=["topic", "inserted_at"], name="sync_se_topic_inserted_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}#{self.watermark} {self.doc_key}@{self.doc_version}"


class ReadModelDocument(models.Model):
    """Latest state of each document; what HTTP hydration serves."""

    id = models.BigAutoField(primary_key=True)
    topic = models.CharField(max_length=160)
    doc_key = models.CharField(max_length=255)
    doc_version = models.BigIntegerField()
    owner = models.CharField(max_length=160)
    public = models.BooleanField(default=False, db_default=False)
    payload = models.JSONField()
    payload_hash = models.BinaryField(max_length=32)
    watermark = models.BigIntegerField()  # watermark of the journal row of the latest write
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        db_table = "sync_read_models"
        ordering = ["topic", "doc_key"]
        constraints = [
            models.UniqueConstraint(fields=["topic", "doc_key"], name="sync_read_models_topic_doc_uniq"),
            models.CheckConstraint(condition=Q(doc_version__gte=0), name="sync_read_models_doc_version_gte_0"),
        ]
        indexes = [
            # owner FIRST: an index led by (topic, ...) would compete with the unique (topic, doc_key)
            # one, and the planner, with stale statistics (a topic just emptied), took it for the
            # sink's per-document version probe and scanned a whole owner range per row.
            models.Index(fields=["owner", "topic", "doc_key"], name="sync_rm_owner_topic_doc_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.doc_key}@{self.doc_version}"


class ProjectionCheckpoint(models.Model):
    """Projector idempotency: what each entity's document last reflected (rules: ``projector.projector``)."""

    projection_name = models.CharField(max_length=64)
    entity_id = models.CharField(max_length=160)
    document_id = models.CharField(max_length=255)
    last_runtime_seq = models.BigIntegerField(default=0, db_default=0)
    projection_version = models.CharField(max_length=64)
    # Lowercase hex SHA-256 of the canonical summary WITHOUT ``projected_at``.
    summary_hash = models.CharField(max_length=64)
    last_projected_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        db_table = "khala_projection_checkpoints"
        ordering = ["projection_name", "entity_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["projection_name", "entity_id"], name="khala_proj_ckpt_name_entity_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["projection_name", "last_runtime_seq"], name="khala_proj_ckpt_name_seq_idx"),
            models.Index(fields=["document_id"], name="khala_proj_ckpt_doc_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.projection_name}:{self.entity_id}@{self.last_runtime_seq}"


class OutboxEntity(models.TextChoices):
    """The authority entities whose changes the outbox records (what ``projector_worker`` folds)."""

    RUN = "run"
    CODEX_WORKER = "codex_worker"


class ProjectionOutboxEntry(models.Model):
    """One committed authority change that still has to reach the read models and the journal.

    Written by ``runtime.commands`` in the SAME transaction as the authority change, deleted in the
    SAME transaction as the documents it produced (``projector.outbox``): a commit can never exist
    without its projection intent, and an intent disappears only with its effect.
    """

    id = models.BigAutoField(primary_key=True)
    entity = models.CharField(max_length=32)  # OutboxEntity; anything else is refused by the drain
    entity_id = models.CharField(max_length=64)
    # The authority ``seq`` the change committed (0 for a creation): the entity's state is folded
    # at projection time, so this is what the change guarantees the documents will reach, at least.
    authority_seq = models.BigIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    # Retry bookkeeping: a failed projection pushes ``available_at`` out (capped backoff); after
    # KHALA["OUTBOX_MAX_ATTEMPTS"] attempts, or at once for a deterministic refusal, the entry is
    # quarantined: kept, visible and retryable in the admin, skipped by the drain.
    attempts = models.IntegerField(default=0, db_default=0)
    available_at = models.DateTimeField(default=timezone.now, db_default=Now())
    last_error = models.TextField(blank=True, default="", db_default="")
    quarantined_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "khala_projection_outbox"
        ordering = ["id"]
        verbose_name = "projection outbox entry"
        verbose_name_plural = "projection outbox"
        indexes = [
            # The drain: due entries, oldest first (quarantined ones never enter this index).
            models.Index(
                fields=["available_at", "id"], condition=Q(quarantined_at__isnull=True), name="khala_outbox_due_idx"
            ),
            # The fast path claims the entries of one entity.
            models.Index(fields=["entity", "entity_id"], name="khala_outbox_entity_idx"),
            models.Index(
                fields=["quarantined_at"], condition=Q(quarantined_at__isnull=False), name="khala_outbox_quarantine_idx"
            ),
        ]

    def __str__(self) -> str:
        state = " (quarantined)" if self.quarantined_at else ""
        return f"#{self.id} {self.entity}:{self.entity_id}@{self.authority_seq}{state}"

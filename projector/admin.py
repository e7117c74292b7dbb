"""Operator pages of the write path: topics (policy, actions), journal, read models, checkpoints.

The cross-app overview page belongs to the site (``khala_project.admin_site``), not to this app.

Nothing here counts journal rows: sizes come from ``projector.journal_stats`` (catalogue estimates
and watermark arithmetic) and list pages from ``EstimatedCountAdminMixin`` (planner estimates,
one page per query). Every figure that is an estimate says so on the page.
"""

from __future__ import annotations

import logging
import os

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from khala_project.admin_site import EstimatedCountAdminMixin, ReadOnlyAdminMixin, delivery_status, format_age, pretty_json
from projector import journal_stats, outbox
from projector.models import ProjectionCheckpoint, ProjectionOutboxEntry, ReadModelDocument, StreamEvent, TopicSequence

log = logging.getLogger(__name__)

# Bounds of the editable retention policy. A window under a minute would prune rows before most
# clients could read them; over a year the journal is a second copy of the authority.
RETENTION_SECONDS_MIN = 60
RETENTION_SECONDS_MAX = 366 * 86400
REPLAY_BUDGET_MIN = 1
REPLAY_BUDGET_MAX = 10_000_000
QOS_TIERS = [("hot", "hot"), ("warm", "warm"), ("cold", "cold")]
POLICY_FIELDS = ("retention_seconds", "replay_budget_events", "qos_tier", "snapshot_enabled", "force_pointer_mode")


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover - loop always returns


def _fmt_duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class TopicPolicyForm(forms.ModelForm):
    """The editable part of a topic: its retention policy. Allocator state is never editable here."""

    qos_tier = forms.ChoiceField(choices=QOS_TIERS)
    retention_seconds = forms.IntegerField(
        min_value=RETENTION_SECONDS_MIN,
        max_value=RETENTION_SECONDS_MAX,
        help_text=(
            f"Journal rows older than this are pruned ({RETENTION_SECONDS_MIN} s … {RETENTION_SECONDS_MAX // 86400} d). "
            "Shortening it turns the cursors of clients offline longer than the new window stale: they re-snapshot."
        ),
    )
    replay_budget_events = forms.IntegerField(
        min_value=REPLAY_BUDGET_MIN,
        max_value=REPLAY_BUDGET_MAX,
        help_text="A client further behind than this many events gets stale_cursor and re-snapshots instead of replaying.",
    )

    class Meta:
        model = TopicSequence
        fields = POLICY_FIELDS


@admin.register(TopicSequence)
class TopicSequenceAdmin(admin.ModelAdmin):
    form = TopicPolicyForm
    list_display = (
        "topic",
        "head_watermark",
        "pruned_through",
        "oldest_retained",
        "journal_rows",
        "journal_bytes",
        "live_connections",
        "subscribers",
        "stale_cursors_last_hour",
        "retention",
        "replay_budget_events",
        "epoch",
    )
    readonly_fields = (
        "topic",
        "last_watermark",
        "pruned_through",
        "stream_epoch",
        "topic_class",
        "oldest_retained",
        "journal_rows",
    )
    fieldsets = (
        ("Allocator state (read-only)", {"fields": ("topic", "topic_class", "last_watermark", "pruned_through", "oldest_retained", "journal_rows", "stream_epoch")}),
        ("Retention policy", {"fields": POLICY_FIELDS}),
    )
    actions = ("run_retention_now", "reproject_topic", "bump_epoch")
    change_list_template = "admin/projector/topicsequence/change_list.html"
    list_display_links = ("topic",)

    # --- page-level data: one query for every topic, cached on the request -------------------

    def _stats(self, request) -> dict[str, journal_stats.TopicStats]:
        if not hasattr(request, "_khala_topic_stats"):
            request._khala_topic_stats = journal_stats.topic_stats()
        return request._khala_topic_stats

    def _journal_table(self, request) -> journal_stats.TableStats:
        if not hasattr(request, "_khala_journal_table"):
            request._khala_journal_table = journal_stats.table_stats(journal_stats.JOURNAL_TABLE)
        return request._khala_journal_table

    def _delivery(self, request):
        if not hasattr(request, "_khala_delivery"):
            request._khala_delivery = delivery_status()
        return request._khala_delivery

    def get_queryset(self, request):
        self._request = request  # list_display callables only receive the object
        return super().get_queryset(request)

    def get_object(self, request, object_id, from_field=None):
        self._request = request
        return super().get_object(request, object_id, from_field)

    def has_add_permission(self, request):
        return False  # topics are declared by migrations, never invented in a form

    def has_delete_permission(self, request, obj=None):
        return False  # deleting a sequence row would lose the topic's watermark history

    # --- columns -------------------------------------------------------------------------------

    @admin.display(description="head watermark", ordering="last_watermark")
    def head_watermark(self, obj):
        return obj.last_watermark

    @admin.display(description="oldest retained")
    def oldest_retained(self, obj):
        stats = self._stats(self._request).get(obj.topic)
        if stats is None or stats.oldest_retained_watermark is None:
            return "— (empty)"
        return format_html(
            "{} <small>({})</small>",
            stats.oldest_retained_watermark,
            format_age(stats.oldest_retained_at, timezone.now()),
        )

    @admin.display(description="journal rows (≤)")
    def journal_rows(self, obj):
        return max(obj.last_watermark - obj.pruned_through, 0)

    @admin.display(description="journal bytes (est.)")
    def journal_bytes(self, obj):
        request = self._request
        estimates = journal_stats.estimated_topic_bytes(self._stats(request), self._journal_table(request))
        return _fmt_bytes(estimates.get(obj.topic))

    # The scope of the three delivery columns (all workers, or this process without Redis) is
    # stated in the page header (``DeliveryStatus.source``).
    @admin.display(description="connections (all topics)")
    def live_connections(self, obj):
        status = self._delivery(self._request)
        return "n/a" if status is None else status.connections

    @admin.display(description="subscribers")
    def subscribers(self, obj):
        status = self._delivery(self._request)
        return "n/a" if status is None else status.subscribers.get(obj.topic, 0)

    @admin.display(description="stale cursors (last hour)")
    def stale_cursors_last_hour(self, obj):
        status = self._delivery(self._request)
        return "n/a" if status is None else status.stale_cursors_last_hour.get(obj.topic, 0)

    @admin.display(description="retention", ordering="retention_seconds")
    def retention(self, obj):
        return _fmt_duration(obj.retention_seconds)

    @admin.display(description="stream epoch")
    def epoch(self, obj):
        return format_html('<code title="{}">{}…</code>', obj.stream_epoch, obj.stream_epoch[:8])

    # --- saving: policy columns only ---------------------------------------------------------

    def save_model(self, request, obj, form, change):
        # The form was loaded earlier; writers have moved last_watermark since. A full save()
        # would write the stale value back and make the allocator hand out watermarks twice.
        obj.save(update_fields=[*POLICY_FIELDS, "updated_at"])

    # --- the page header: table-level estimates and what the delivery figures mean -----------

    def changelist_view(self, request, extra_context=None):
        journal = self._journal_table(request)
        read_models = journal_stats.table_stats(journal_stats.READ_MODEL_TABLE)
        delivery = self._delivery(request)
        context = {
            "journal_table": journal,
            "journal_bytes_h": _fmt_bytes(journal.total_bytes),
            "read_model_table": read_models,
            "read_model_bytes_h": _fmt_bytes(read_models.total_bytes),
            "delivery": delivery,
            "delivery_pid": os.getpid(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    # --- actions -------------------------------------------------------------------------------

    @admin.action(description="Run retention now", permissions=["change"])
    def run_retention_now(self, request, queryset):
        from projector import retention

        for topic in queryset:
            (report,) = retention.run_once(topic=topic.topic)
            self.log_change(request, topic, f"retention run by hand: deleted {report.deleted} rows")
            self.message_user(
                request,
                f"{report.topic}: deleted {report.deleted} journal rows in {report.batches} batch(es) "
                f"(window {_fmt_duration(report.retention_seconds)}); pruned_through {report.pruned_through}, "
                f"oldest retained {report.oldest_watermark if report.oldest_watermark is not None else '— (empty)'}, "
                f"head {report.head_watermark}.",
                messages.SUCCESS,
            )

    @admin.action(description="Reproject topic (rebuild read models from the authority)", permissions=["change"])
    def reproject_topic(self, request, queryset):
        # Runs inside the request: fine for the reference authority's sizes; for millions of
        # entities use `manage.py reproject --all --topic T` (progress output, same function).
        from projector import reprojection

        for topic in queryset:
            if topic.topic not in reprojection.TOPICS:
                self.message_user(request, f"{topic.topic}: no projection writes this topic; nothing to rebuild.", messages.ERROR)
                continue
            progress = reprojection.reproject(all_entities=True, topics={topic.topic})
            self.log_change(request, topic, f"reprojected: {progress.written_documents} documents rewritten")
            level = messages.WARNING if progress.failed_entities else messages.SUCCESS
            self.message_user(
                request,
                f"{topic.topic}: {progress.done} entities checked, {progress.written_documents} documents rewritten "
                f"(one journal row each), {progress.skipped_documents} unchanged, {len(progress.failed_entities)} failed.",
                level,
            )

    @admin.action(description="Bump stream epoch (every client re-snapshots)", permissions=["change"])
    def bump_epoch(self, request, queryset):
        if request.POST.get("confirm") == "yes":
            from projector.topics import bump_stream_epoch

            for topic in queryset:
                new_epoch = bump_stream_epoch(topic.topic)
                log.warning("stream epoch of %s bumped by %s: %s -> %s", topic.topic, request.user, topic.stream_epoch, new_epoch)
                self.log_change(request, topic, f"stream epoch bumped {topic.stream_epoch} -> {new_epoch}")
                self.message_user(
                    request,
                    f"{topic.topic}: stream epoch {topic.stream_epoch[:8]}… → {new_epoch[:8]}…; every client of the topic re-snapshots.",
                    messages.WARNING,
                )
            return None
        delivery = self._delivery(request)
        context = {
            **self.admin_site.each_context(request),
            "title": "Bump stream epoch?",
            "opts": self.model._meta,
            "topics": list(queryset),
            "delivery": delivery,
            "subscribers": {t.topic: (delivery.subscribers.get(t.topic, 0) if delivery else None) for t in queryset},
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/projector/topicsequence/bump_epoch_confirmation.html", context)


class TopicFilter(admin.SimpleListFilter):
    """Topics from ``sync_topic_sequences`` (a handful of rows), never ``SELECT DISTINCT`` on the journal."""

    title = "topic"
    parameter_name = "topic"

    def lookups(self, request, model_admin):
        return [(t, t) for t in TopicSequence.objects.order_by("topic").values_list("topic", flat=True)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(topic=self.value())
        return queryset


class JournalBrowserFilters(admin.ListFilter):
    """doc_key (exact) and a watermark range, typed into a small form in the sidebar.

    Exact ``doc_key`` uses the ``(topic, doc_key, watermark)`` index; a substring search would
    scan the journal, so there is none.
    """

    title = "doc_key / watermark range"
    template = "admin/projector/journal_filter.html"
    params = ("doc_key", "watermark_from", "watermark_to")

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.values = {}
        for name in self.params:
            if name in params:
                value = params.pop(name)
                value = value[-1] if isinstance(value, list) else value
                self.used_parameters[name] = value
                self.values[name] = value

    def has_output(self):
        return True

    def choices(self, changelist):
        # The form submits by GET: carry the other active filters (topic, ordering) along.
        others = {k: v for k, v in changelist.params.items() if k not in self.params}
        return [
            {
                "values": self.values,
                "others": sorted(others.items()),
                "clear_query_string": changelist.get_query_string(remove=list(self.params)),
            }
        ]

    def expected_parameters(self):
        return list(self.params)

    def queryset(self, request, queryset):
        from django.contrib.admin.options import IncorrectLookupParameters

        doc_key = self.values.get("doc_key", "").strip()
        if doc_key:
            queryset = queryset.filter(doc_key=doc_key)
        for name, lookup in (("watermark_from", "watermark__gte"), ("watermark_to", "watermark__lte")):
            raw = self.values.get(name, "").strip()
            if raw:
                try:
                    value = int(raw)
                except ValueError:
                    # The admin answers this with its "invalid filter" page (?e=1), not a 500.
                    raise IncorrectLookupParameters(f"{name} must be an integer watermark") from None
                queryset = queryset.filter(**{lookup: value})
        return queryset


def _payload_mode(obj) -> str:
    if obj.payload is None:
        return format_html('<span class="khala-pointer" title="payload NULL: clients hydrate over HTTP">{}</span>', "pointer")
    return "inline"


@admin.register(StreamEvent)
class StreamEventAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("watermark", "topic", "doc_key", "doc_version", "owner", "public", "mode", "payload_bytes", "inserted_at")
    list_filter = (TopicFilter, JournalBrowserFilters)
    # The (topic, watermark) unique index serves this order, filtered or not.
    ordering = ("topic", "-watermark")
    sortable_by = ()
    list_per_page = 50
    fields = ("topic", "watermark", "doc_key", "doc_version", "owner", "public", "mode", "payload_bytes", "payload_hash_hex", "inserted_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="mode")
    def mode(self, obj):
        return _payload_mode(obj)

    @admin.display(description="payload_hash (sha-256)")
    def payload_hash_hex(self, obj):
        return bytes(obj.payload_hash).hex()

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        if obj.payload is None:
            return format_html(
                '<span class="khala-pointer">{}</span>',
                "pointer mode: the journal stores no payload; clients hydrate it from the read model over HTTP",
            )
        return pretty_json(obj.payload)


@admin.register(ReadModelDocument)
class ReadModelDocumentAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("doc_key", "topic", "doc_version", "owner", "public", "watermark", "updated_at")
    list_filter = (TopicFilter, JournalBrowserFilters)
    ordering = ("topic", "doc_key")
    sortable_by = ()
    list_per_page = 50
    fields = ("topic", "doc_key", "doc_version", "owner", "public", "watermark", "payload_hash_hex", "created_at", "updated_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="payload_hash (sha-256)")
    def payload_hash_hex(self, obj):
        return bytes(obj.payload_hash).hex()

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)


class ProjectionNameFilter(admin.SimpleListFilter):
    title = "projection"
    parameter_name = "projection_name"

    def lookups(self, request, model_admin):
        names = ("run_summary", "run_notification", "codex_worker_summary", "codex_worker_events")
        return [(n, n) for n in names]

    def queryset(self, request, queryset):
        return queryset.filter(projection_name=self.value()) if self.value() else queryset


@admin.register(ProjectionCheckpoint)
class ProjectionCheckpointAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("projection_name", "entity_id", "document_id", "last_runtime_seq", "projection_version", "summary_hash", "last_projected_at")
    list_filter = (ProjectionNameFilter,)
    ordering = ("projection_name", "entity_id")
    sortable_by = ()
    list_per_page = 50


# --- projection outbox: pending and quarantined entries ----------------------------------------


class OutboxStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("quarantined", "quarantined"), ("retrying", "backing off after a failure"), ("pending", "pending")]

    def queryset(self, request, queryset):
        if self.value() == "quarantined":
            return queryset.filter(quarantined_at__isnull=False)
        if self.value() == "retrying":
            return queryset.filter(quarantined_at__isnull=True, attempts__gt=0)
        if self.value() == "pending":
            return queryset.filter(quarantined_at__isnull=True)
        return queryset


@admin.register(ProjectionOutboxEntry)
class ProjectionOutboxEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Authority changes not projected yet. A quarantined entry failed ``OUTBOX_MAX_ATTEMPTS``
    times (or was refused): its error says why; once the cause is fixed, "retry" hands it back to
    the projector workers. Quarantine never blocks other entries, so nothing else waits on it."""

    list_display = ("id", "entity", "entity_id", "authority_seq", "state", "attempts", "available_at", "created_at", "error")
    list_filter = (OutboxStateFilter, "entity")
    search_fields = ("=entity_id",)
    ordering = ("id",)
    sortable_by = ()
    list_per_page = 100
    actions = ["retry_now"]
    readonly_fields = (
        "entity", "entity_id", "authority_seq", "created_at", "attempts", "available_at", "quarantined_at", "last_error"
    )

    @admin.display(description="state")
    def state(self, obj):
        if obj.quarantined_at:
            return format_html('<strong class="khala-quarantined">{}</strong>', "quarantined")
        return "backing off" if obj.attempts else "pending"

    @admin.display(description="last error")
    def error(self, obj):
        return (obj.last_error[:120] + "…") if len(obj.last_error) > 120 else obj.last_error

    def has_change_permission(self, request, obj=None):
        # Every field is read-only; "change" is the permission of the retry action.
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # an entry is the only record that a change still needs projecting

    @admin.action(description="Retry the selected entries now (quarantined ones get a fresh start)", permissions=["change"])
    def retry_now(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        revived = outbox.retry_quarantined(ids)
        waiting = ProjectionOutboxEntry.objects.filter(id__in=ids, quarantined_at__isnull=True).update(
            available_at=timezone.now()
        )
        log.info("admin %s retried outbox entries %s", request.user, ids)
        self.message_user(
            request, f"{revived} quarantined entr{'y' if revived == 1 else 'ies'} released; {waiting} due now.", messages.SUCCESS
        )

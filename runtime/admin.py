"""Read-only browsers of the reference authority.

Runs and workers change only through the command API (``runtime.commands``), which allocates the
per-entity ``seq`` under a row lock and projects after commit. An admin form would bypass both, so
these pages only show. Event tables grow like the journal: estimated counts, one page per query.
"""

from django.contrib import admin

from khala_project.admin_site import EstimatedCountAdminMixin, ReadOnlyAdminMixin, pretty_json
from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent


class _EntityAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Runs and workers: newest first, filtered by status."""

    list_select_related = ("owner",)
    list_filter = ("status",)
    ordering = ("-created_at",)
    sortable_by = ()
    list_per_page = 50


class _EventAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Events of a run or a worker: newest first, the payload pretty-printed."""

    ordering = ("-id",)
    sortable_by = ()
    list_per_page = 50

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)


@admin.register(Run)
class RunAdmin(_EntityAdmin):
    list_display = ("id", "owner", "status", "latest_seq", "thread_id", "created_at", "terminal_at")


@admin.register(RunEvent)
class RunEventAdmin(_EventAdmin):
    list_display = ("run_id", "seq", "event_type", "created_at")
    fields = ("run", "seq", "event_type", "created_at", "payload_pretty")
    readonly_fields = fields


@admin.register(CodexWorker)
class CodexWorkerAdmin(_EntityAdmin):
    list_display = ("id", "owner", "status", "adapter", "latest_seq", "last_heartbeat_at", "created_at")


@admin.register(CodexWorkerEvent)
class CodexWorkerEventAdmin(_EventAdmin):
    list_display = ("worker_id", "seq", "event_type", "created_at")
    fields = ("worker", "seq", "event_type", "created_at", "payload_pretty")
    readonly_fields = fields

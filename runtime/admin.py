"""Read-only browsers of the reference authority.

Runs and workers change only through the command API (``runtime.commands``), which allocates the
per-entity ``seq`` under a row lock and projects after commit. An admin form would bypass both, so
these pages only show. Event tables grow like the journal: estimated counts, one page per query.
"""

from django.contrib import admin

from khala_project.admin_site import EstimatedCountAdminMixin, ReadOnlyAdminMixin, pretty_json
from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent


@admin.register(Run)
class RunAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "owner", "status", "latest_seq", "thread_id", "created_at", "terminal_at")
    list_select_related = ("owner",)
    list_filter = ("status",)
    ordering = ("-created_at",)
    sortable_by = ()
    list_per_page = 50


@admin.register(RunEvent)
class RunEventAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("run_id", "seq", "event_type", "created_at")
    ordering = ("-id",)
    sortable_by = ()
    list_per_page = 50
    fields = ("run", "seq", "event_type", "created_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)


@admin.register(CodexWorker)
class CodexWorkerAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "owner", "status", "adapter", "latest_seq", "last_heartbeat_at", "created_at")
    list_select_related = ("owner",)
    list_filter = ("status",)
    ordering = ("-created_at",)
    sortable_by = ()
    list_per_page = 50


@admin.register(CodexWorkerEvent)
class CodexWorkerEventAdmin(EstimatedCountAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("worker_id", "seq", "event_type", "created_at")
    ordering = ("-id",)
    sortable_by = ()
    list_per_page = 50
    fields = ("worker", "seq", "event_type", "created_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)

"""Khala's admin site: Django's admin plus an operator overview and a signing-key page.

Two rules hold for every admin page that lists journal-sized tables (journal, read models,
checkpoints, runtime events):

- **Never ``COUNT(*)``.** Django's changelist counts the filtered rows (to paginate) and, unless
  told otherwise, the whole table. On a journal of a few hundred million rows that is a sequential
  scan per page view. ``EstimatedCountAdminMixin`` replaces both with PostgreSQL's planner
  estimate (``EXPLAIN``) and every page labels the figure as an estimate.
- **Always ``LIMIT``.** Django fetches the *whole* queryset when the count says it fits on one
  page; with an estimate that could be wrong by orders of magnitude, so ``EstimatedChangeList``
  always slices to one page.

The site itself is installed by ``KhalaAdminConfig`` (``INSTALLED_APPS``), so ``admin.site`` and
``@admin.register`` keep working unchanged. Like Django's index page, the operator overview is a
page of the site (it spans the journal, the topics and live delivery), so the site owns it; the
apps' admin modules import the shared pieces below and nothing imports them back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from functools import cached_property

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html


class KhalaAdminConfig(AdminConfig):
    default_site = "khala_project.admin_site.KhalaAdminSite"


class KhalaAdminSite(admin.AdminSite):
    site_header = "Khala operations"
    site_title = "Khala admin"
    index_title = "Sync engine"
    index_template = "admin/khala_index.html"
    enable_nav_sidebar = False  # the Topics table is wide; the index page links everything

    def each_context(self, request):
        from khala_project import ratelimit

        context = super().each_context(request)
        # A callable: the template evaluates it only on the page that shows it (the overview).
        context["admission_limits"] = ratelimit.overview
        return context

    # Pages the index's "Khala operations" table links already (under their operator names,
    # "Topics" and "Journal"); the app list below it leaves them out: one entry per page.
    index_operations_models = frozenset({("projector", "TopicSequence"), ("projector", "StreamEvent")})

    def index(self, request, extra_context=None):
        response = super().index(request, extra_context)
        response.context_data["app_list"] = [
            {**app, "models": models}
            for app in response.context_data["app_list"]
            if (models := [m for m in app["models"]
                           if (app["app_label"], m["object_name"]) not in self.index_operations_models])]
        return response

    def get_urls(self):
        # Imported here: this module is loaded while apps are still being registered.
        from tokens.admin import signing_keys_view

        return [
            path("khala/overview/", self.admin_view(self.overview_view), name="khala_overview"),
            path("khala/signing-keys/", self.admin_view(signing_keys_view), name="khala_signing_keys"),
            *super().get_urls(),
        ]

    def overview_view(self, request):
        """Per-topic head, lag and throughput of the last hour, and this process's live delivery."""
        # Imported here: this module is loaded while apps are still being registered.
        from projector import journal_stats

        now = timezone.now()
        stats = journal_stats.topic_stats()
        series = journal_stats.throughput(60, now=now)
        delivery = delivery_status()
        topics = []
        for topic, s in stats.items():
            head_age = (now - s.head_inserted_at).total_seconds() if s.head_inserted_at else None
            topics.append(
                {
                    "stats": s,
                    "head_age": format_age(s.head_inserted_at, now),
                    "head_age_seconds": head_age,
                    "rows_last_hour": sum(series.rows_per_bucket.get(topic, [])),
                    "rows_last_minute": (series.rows_per_bucket.get(topic) or [0])[-1],
                    "subscribers": delivery.subscribers.get(topic, 0) if delivery else None,
                }
            )
        context = {
            **self.each_context(request),
            "title": "Khala overview",
            "topics": topics,
            "chart": throughput_chart(series),
            "delivery": delivery,
            "delivery_pid": os.getpid(),
            "journal_table": journal_stats.table_stats(journal_stats.JOURNAL_TABLE),
            "now": now,
        }
        return TemplateResponse(request, "admin/khala/overview.html", context)


CHART_WIDTH = 640
CHART_HEIGHT = 160
CHART_COLORS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#4a5568")


def throughput_chart(series) -> dict:
    """Polyline points of a rows-per-bucket chart (a ``journal_stats.ThroughputSeries``); drawn
    as inline SVG by the overview template."""
    peak = max((max(v) for v in series.rows_per_bucket.values() if v), default=0) or 1
    buckets = len(series.bucket_starts)
    step = CHART_WIDTH / max(buckets - 1, 1)
    lines = []
    for index, (topic, values) in enumerate(sorted(series.rows_per_bucket.items())):
        points = " ".join(
            f"{i * step:.1f},{CHART_HEIGHT - (value / peak) * (CHART_HEIGHT - 10):.1f}" for i, value in enumerate(values)
        )
        lines.append(
            {
                "topic": topic,
                "points": points,
                "color": CHART_COLORS[index % len(CHART_COLORS)],
                "total": sum(values),
                "last": values[-1] if values else 0,
                "per_second": round(sum(values) / (buckets * series.bucket_seconds), 2),
            }
        )
    return {
        "lines": lines,
        "peak": peak,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "first": series.bucket_starts[0] if series.bucket_starts else None,
        "minutes": buckets * series.bucket_seconds // 60,
    }


def format_age(at: dt.datetime | None, now: dt.datetime) -> str:
    """How long ago ``at`` was, in the largest whole unit an operator reads at a glance."""
    if at is None:
        return "—"
    seconds = max(int((now - at).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def delivery_status():
    """The live-delivery figures the admin pages show (``sync.delivery_status``), or None when the
    delivery app is not installed. The admin site is the project's wiring layer and may reach every
    app; ``projector``'s pages, a lower layer than delivery, ask through it instead of importing
    ``sync``."""
    from django.apps import apps

    if not apps.is_installed("sync"):
        return None
    from sync.delivery_status import delivery_status as figures

    return figures()


def estimated_row_count(queryset) -> int:
    """PostgreSQL's planner estimate of ``len(queryset)`` (``EXPLAIN``; no rows are read).

    Unfiltered, this is ``pg_class.reltuples`` scaled to the table's current size; filtered, the
    planner's selectivity estimate. Good to an order of magnitude, which is what a paginator and an
    operator glancing at a table need. Never 0 for a non-empty plan (PostgreSQL plans >= 1 row).
    """
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":  # the embedded SQLite dev default: tables are tiny
        return queryset.count()
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        raw = cursor.fetchone()[0]
    plan = json.loads(raw) if isinstance(raw, str) else raw
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """A paginator whose ``count`` is the planner's estimate, never ``COUNT(*)``."""

    @cached_property
    def count(self) -> int:
        return estimated_row_count(self.object_list)


class EstimatedChangeList(ChangeList):
    """A changelist that never counts and never fetches more than one page."""

    def get_results(self, request):
        paginator = self.model_admin.get_paginator(request, self.queryset, self.list_per_page)
        result_count = paginator.count
        offset = max(self.page_num - 1, 0) * self.list_per_page
        # Always sliced: the estimate may be far off, and an unsliced queryset on the journal
        # would read every row.
        self.result_list = self.queryset[offset : offset + self.list_per_page]
        self.result_count = result_count
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.full_result_count = None
        self.can_show_all = False
        self.multi_page = result_count > self.list_per_page or self.page_num > 1
        self.paginator = paginator


class EstimatedCountAdminMixin:
    """ModelAdmin mixin for journal-sized tables: estimated counts, one page at a time."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_max_show_all = 0
    estimated_count = True  # read by the pagination template to label the figure

    def get_changelist(self, request, **kwargs):
        return EstimatedChangeList


class ReadOnlyAdminMixin:
    """Browsers of data that only the write path may change (journal, read models, authority)."""

    actions = None

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def pretty_json(value) -> str:
    """A payload as indented JSON inside ``<pre>`` (escaped)."""
    if value is None:
        return format_html('<span class="khala-pointer">{}</span>', "NULL (pointer mode)")
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return format_html('<pre class="khala-json">{}</pre>', text)

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
``@admin.register`` keep working unchanged.
"""

from __future__ import annotations

import json
from functools import cached_property

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.urls import path
from django.utils.html import format_html


class KhalaAdminConfig(AdminConfig):
    default_site = "khala_project.admin_site.KhalaAdminSite"


class KhalaAdminSite(admin.AdminSite):
    site_header = "Khala operations"
    site_title = "Khala admin"
    index_title = "Sync engine"
    index_template = "admin/khala_index.html"
    enable_nav_sidebar = False  # the Topics table is wide; the index page links everything

    def get_urls(self):
        # Imported here: this module is loaded while apps are still being registered.
        from projector.admin import overview_view
        from tokens.admin import signing_keys_view

        return [
            path("khala/overview/", self.admin_view(overview_view), name="khala_overview"),
            path("khala/signing-keys/", self.admin_view(signing_keys_view), name="khala_signing_keys"),
            *super().get_urls(),
        ]


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

"""HTTP routes of the sync app: the hydration API (WebSocket routes are in ``sync.routing``).

Doc keys contain ``/`` and ``:`` (``run:42``, ``worker/abc:events``), so the key is routed as a
``path`` and must be the last segment; a topic never contains ``/``.
"""

from django.urls import path, re_path

from sync.hydration_views import DocumentView, ListView, NotFoundView

urlpatterns = [
    path("api/sync/v1/doc/<str:topic>/<path:doc_key>", DocumentView.as_view(), name="sync-hydration-doc"),
    path("api/sync/v1/list/<str:topic>", ListView.as_view(), name="sync-hydration-list"),
    re_path(r"^api/sync/v1/(?:doc|list)(?:/.*)?$", NotFoundView.as_view(), name="sync-hydration-not-found"),
]

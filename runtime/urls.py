from django.urls import path

from runtime import views

urlpatterns = [
    path("api/runtime/runs", views.RunListView.as_view(), name="runtime-runs"),
    path("api/runtime/runs/<str:run_id>", views.RunDetailView.as_view(), name="runtime-run"),
    path("api/runtime/runs/<str:run_id>/events", views.RunEventsView.as_view(), name="runtime-run-events"),
    path("api/runtime/codex/workers", views.WorkerListView.as_view(), name="runtime-workers"),
    path("api/runtime/codex/workers/<str:worker_id>", views.WorkerDetailView.as_view(), name="runtime-worker"),
    path(
        "api/runtime/codex/workers/<str:worker_id>/events",
        views.WorkerEventsView.as_view(),
        name="runtime-worker-events",
    ),
]

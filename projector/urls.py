from django.urls import path

from projector import views

urlpatterns = [
    path("api/internal/sync/projections", views.ProjectionIngestView.as_view(), name="sync-projections-ingest"),
]

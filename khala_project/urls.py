from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from khala_project import health, landing
from sync import live_view

urlpatterns = [
    path("", landing.landing_page, name="landing"),
    path("docs/<path:path>", landing.docs_file, name="docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),  # GET /metrics
    path("admin/", admin.site.urls),
    # The OpenAPI 3 schema of every HTTP API (also committed as docs/api/openapi.yaml).
    path("api/schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="openapi-schema"),
    path("live/", live_view.live_page, name="live"),
    path("live/login/", live_view.LiveLoginView.as_view(), name="live-login"),
    path("live/state.json", live_view.live_state_view, name="live-state"),
    path("", include("runtime.urls")),
    path("", include("projector.urls")),
    path("", include("tokens.urls")),
    path("", include("sync.urls")),
]

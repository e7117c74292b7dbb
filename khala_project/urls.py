from django.contrib import admin
from django.urls import include, path

from khala_project import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),  # GET /metrics
    path("admin/", admin.site.urls),
    path("", include("runtime.urls")),
    path("", include("projector.urls")),
    path("", include("tokens.urls")),
    path("", include("sync.urls")),
]

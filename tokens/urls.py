from django.urls import path

from tokens import views

urlpatterns = [
    path("api/sync/token", views.SyncTokenView.as_view(), name="sync-token"),
    path("api/khala/token", views.LegacyTokenView.as_view(), name="khala-token"),
    path(".well-known/jwks.json", views.JWKSView.as_view(), name="jwks"),
    path("api/internal/sync/sessions/revoke", views.RevokeSessionsView.as_view(), name="sync-sessions-revoke"),
]

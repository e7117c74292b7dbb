"""Authentication of the internal service endpoints (``Authorization: Bearer <KHALA_SERVICE_TOKEN>``).

The user-facing issuers use DRF's session and API-token authentication (project defaults).
"""

import hmac

from rest_framework import authentication, exceptions, permissions

from khala_project.api_errors import ApiError
from khala_project.conf import khala_setting


class ServicePrincipal:
    """``request.user`` of a request authenticated with the service token."""

    is_authenticated = True
    is_anonymous = False
    username = "khala-service"

    def __str__(self) -> str:
        return self.username


class ServiceTokenAuthentication(authentication.BaseAuthentication):
    """Bearer service token, compared in constant time. Unset token: every call is a 503."""

    keyword = "bearer"

    def authenticate(self, request):
        configured = khala_setting("SERVICE_TOKEN") or ""
        if not configured:
            raise ApiError(
                "service_token_unconfigured",
                "internal endpoints are disabled: KHALA_SERVICE_TOKEN is not set",
                http_status=503,
            )
        scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        if scheme.lower() != self.keyword or not presented.strip():
            raise exceptions.NotAuthenticated("send 'Authorization: Bearer <service token>'")
        # compare_digest: the time taken does not reveal how many leading characters matched.
        if not hmac.compare_digest(presented.strip().encode(), configured.encode()):
            raise exceptions.AuthenticationFailed("invalid service token")
        return ServicePrincipal(), None

    def authenticate_header(self, request):
        return 'Bearer realm="khala-internal"'


class IsService(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, ServicePrincipal)

"""DRF throttles over ``khala_project.ratelimit``: a refused request is HTTP 429 ``rate_limited``
with ``Retry-After`` (whole seconds, rounded up) and ``retry_after`` in the error body.

Throttles run after authentication, so each limit keys on the authenticated identity, never on
anything the client can vary freely.
"""

from rest_framework.throttling import BaseThrottle

from khala_project import ratelimit


class NamedLimitThrottle(BaseThrottle):
    """Applies ``limit_name`` to ``subject(request)``; a subclass says what the subject is."""

    limit_name: str = ""

    def subject(self, request, view) -> str | None:
        raise NotImplementedError("a NamedLimitThrottle says which identity it limits")

    def allow_request(self, request, view) -> bool:
        subject = self.subject(request, view)
        if subject is None:
            return True
        self.decision = ratelimit.admit(self.limit_name, subject)
        return self.decision.allowed

    def wait(self):
        return self.decision.retry_after_seconds


class TokenMintThrottle(NamedLimitThrottle):
    """``LIMIT_TOKEN_MINTS_PER_USER`` on ``/api/sync/token`` and ``/api/khala/token`` (one budget for both)."""

    limit_name = "token_mints_per_user"

    def subject(self, request, view):
        user = request.user
        return f"user:{user.pk}" if user is not None and user.is_authenticated else None


class HydrationThrottle(NamedLimitThrottle):
    """``LIMIT_HYDRATIONS_PER_TOKEN`` on the hydration API, keyed by the sync token's ``jti``."""

    limit_name = "hydrations_per_token"

    def subject(self, request, view):
        claims = getattr(request.user, "claims", None)
        return f"jti:{claims['jti']}" if claims else None

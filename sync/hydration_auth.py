"""Authentication and topic entitlement of the HTTP hydration API.

Hydration is authenticated with the *same* sync token as the WebSocket (``Authorization: Bearer
<token>``), verified by the same verifier and subject to the same session revocation, so a client
that may not join ``sync:v1`` may not hydrate either. Each failure is a 401 whose ``code`` is the
verifier's stable reason (``token_expired``, ``unknown_kid`` …) or ``reauth_required``.

Topic policy, in this order:
  unknown topic (no row in ``sync_topic_sequences``) → 404 ``unknown_topic``;
  topic not in the token's ``allowed_topics``        → 403 ``forbidden_topic``.
Document ownership is not a permission here: a document owned by someone else answers 404 like a
missing one (see ``sync.hydration``), so its existence does not leak.
"""

from rest_framework import authentication, exceptions, permissions

from khala_project.api_errors import ApiError
from projector.models import TopicSequence
from tokens.revocation import revoked_reason
from tokens.verifier import SyncPrincipal, TokenRejected, verify_sync_token

BEARER = "bearer"


class SyncAuthenticationFailed(ApiError, exceptions.AuthenticationFailed):
    """401 with a stable ``code``. Being an ``AuthenticationFailed``, DRF adds ``WWW-Authenticate``."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(code, message, http_status=401, **extra)


class SyncTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <sync token>`` → ``request.user`` is the ``SyncPrincipal``.

    A missing header is *not* "try the next authenticator": these views accept nothing else, so it
    fails with the verifier's own ``missing_token`` code.
    """

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.strip():
            raise SyncAuthenticationFailed("missing_token", "send the sync token as 'Authorization: Bearer <token>'")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != BEARER or not token.strip():
            raise SyncAuthenticationFailed(
                "invalid_token_format", "the Authorization header must be 'Bearer <sync token>'"
            )
        try:
            principal = verify_sync_token(token.strip())
        except TokenRejected as exc:
            raise SyncAuthenticationFailed(exc.reason, f"sync token rejected: {exc.reason}") from None
        reason = revoked_reason(principal.session_id, principal.device_id)
        if reason is not None:
            raise SyncAuthenticationFailed(
                "reauth_required", "session access was revoked; sign in again", reauth_required=True, reason=reason
            )
        return principal, token.strip()

    def authenticate_header(self, request):
        return 'Bearer realm="khala-sync"'


class TopicEntitlement(permissions.BasePermission):
    """The URL's ``topic`` must be a declared topic and one of the token's ``allowed_topics``."""

    def has_permission(self, request, view):
        principal = request.user
        if not isinstance(principal, SyncPrincipal):  # only reachable if the view is misconfigured
            raise SyncAuthenticationFailed("missing_token", "a sync token is required")
        topic = view.kwargs["topic"]
        if not TopicSequence.objects.filter(topic=topic).exists():
            raise ApiError("unknown_topic", f"unknown topic {topic!r}", http_status=404, topic=topic)
        if topic not in principal.allowed_topics:
            raise ApiError(
                "forbidden_topic",
                f"the sync token does not grant topic {topic!r}",
                http_status=403,
                forbidden_topics=[topic],
            )
        return True

"""One error shape for every HTTP API: ``{"error": {"code": <stable string>, "message": ...}}``.

Views raise ``ApiError`` (or any DRF exception); this handler renders both in the same shape so
clients can switch on ``code`` and never parse free text. The error types themselves live in
``khala_project.coded_errors``, which imports no DRF views, so parsers and middleware can use them.
"""

from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from khala_project.coded_errors import ApiError, CodedError, error_body  # noqa: F401 (ApiError and CodedError: re-exported for the views)


_DRF_CODES = {
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.ParseError: "malformed_json",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_request",
}


def database_unavailable_response(response_class=Response):
    """503 ``database_unavailable`` with ``Retry-After``: PostgreSQL could not be reached (down,
    restarting, failing over, or the connection was lost mid-request). Nothing was written: every
    write view runs in one transaction, which the lost connection rolled back."""
    from khala_project.conf import khala_setting

    retry_after = int(khala_setting("UNAVAILABLE_RETRY_AFTER_SECONDS"))
    body = error_body("database_unavailable", "the database is unavailable; retry later", retry_after=retry_after)
    return response_class(body, status=503, headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"})


def khala_exception_handler(exc, context):
    # OperationalError: the server is down or refuses connections; InterfaceError: the connection
    # died under an open cursor. Both are outages, not bugs: a JSON 503 the client can retry.
    if isinstance(exc, (OperationalError, InterfaceError)):
        return database_unavailable_response()
    if isinstance(exc, ApiError):
        response = Response(error_body(exc.code, exc.message, **exc.extra), status=exc.status_code)
        return response
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real bug: let Django log it and answer 500
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(code, "request validation failed", fields=exc.detail)
    elif isinstance(exc, exceptions.Throttled):
        # DRF already set the Retry-After header (whole seconds); the body carries the same figure.
        response.data = error_body(code, "too many requests; retry later", retry_after=exc.wait)
    else:
        response.data = error_body(code, str(exc.detail))
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        response.status_code = status.HTTP_401_UNAUTHORIZED
    return response

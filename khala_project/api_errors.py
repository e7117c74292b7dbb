"""One error shape for every HTTP API: ``{"error": {"code": <stable string>, "message": ...}}``.

Views raise ``ApiError`` (or any DRF exception); this handler renders both in the same shape so
clients can switch on ``code`` and never parse free text.
"""

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class CodedError(Exception):
    """A refusal raised below the views (ingest decoding, hydration reads, runtime commands): the
    same ``code``, ``message``, ``http_status`` and ``extra`` an ``ApiError`` carries, without DRF.
    A view re-raises it with ``ApiError.from_coded(exc)``."""

    def __init__(self, code: str, message: str, http_status: int = 400, **extra):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.extra = extra


class ApiError(exceptions.APIException):
    """An API failure with a stable ``code``; ``extra`` is merged into the error object."""

    def __init__(self, code: str, message: str, http_status: int = 400, **extra):
        super().__init__(detail=message, code=code)
        self.status_code = http_status
        self.code = code
        self.message = message
        self.extra = extra

    @classmethod
    def from_coded(cls, exc: CodedError) -> "ApiError":
        return cls(exc.code, exc.message, exc.http_status, **exc.extra)


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


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def khala_exception_handler(exc, context):
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

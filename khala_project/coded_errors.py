"""The error types of every HTTP API, with a stable ``code`` (rendered by ``khala_project.api_errors``).

Kept apart from the DRF exception handler because DRF imports its default parser classes while
``rest_framework.views`` is being imported: a parser that refuses input with ``ApiError`` could not
import the handler's module without a cycle.
"""

from rest_framework import exceptions


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


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}

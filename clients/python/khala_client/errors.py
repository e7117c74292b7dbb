"""Client exceptions and the one table that decides what the retry loop does with a server error.

- **fatal** codes stop the retry loop: retrying cannot help until a person acts (sign in again,
  upgrade the client, fix the requested topics);
- **auth** codes (a rejected token) are retried once with a fresh token from ``token_provider``,
  because tokens expire during long sessions; a second consecutive rejection is fatal;
- everything else is transient: reconnect with backoff.
"""

from __future__ import annotations

from typing import Any

FATAL_CODES = frozenset(
    {
        "reauth_required",
        "upgrade_required",
        "invalid_client_build",
        "unsupported_protocol_version",
        "unsupported_schema_version",
        "unsupported_client_build",
        "bad_topic",
        "forbidden_topic",
        "bad_subscription",
    }
)

# "unauthorized" plus the token verifier's reason codes (tokens.verifier).
AUTH_CODES = frozenset(
    {
        "unauthorized",
        "unauthenticated",
        "missing_token",
        "invalid_token_format",
        "invalid_token_encoding",
        "unsupported_alg",
        "missing_kid",
        "unknown_kid",
        "invalid_signature",
        "invalid_claims",
        "token_expired",
        "token_not_yet_valid",
        "claim_mismatch",
    }
)


class KhalaError(Exception):
    """Base class; ``code`` is the stable error code, ``details`` the server's error payload."""

    def __init__(self, code: str, message: str = "", details: Any = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.details = details if details is not None else {}


class FatalError(KhalaError):
    """The retry loop stopped: the client cannot make progress without outside action."""


class AuthError(FatalError):
    """The server refused the token twice in a row (the second one freshly minted)."""


class TransientError(KhalaError):
    """The connection failed or was closed; the client reconnects with backoff."""


class DeadSocket(TransientError):
    """No heartbeat reply within the timeout: the socket is open but nobody answers."""


def retry_after(exc: BaseException) -> float | None:
    """The server's hint (seconds) of when a refused request may be made again, or None.

    A socket refusal carries ``retry_after_ms`` in its payload (the ``details``); an HTTP 429 a
    ``Retry-After`` header (``HttpError.retry_after``)."""
    hint = getattr(exc, "retry_after", None)
    if hint is None:
        details = getattr(exc, "details", None)
        ms = details.get("retry_after_ms") if isinstance(details, dict) else None
        hint = ms / 1000 if isinstance(ms, (int, float)) and not isinstance(ms, bool) else None
    return hint if hint is not None and hint > 0 else None


def classify(code: str) -> str:
    """``"fatal"``, ``"auth"`` or ``"transient"`` for a server error code."""
    if code in FATAL_CODES:
        return "fatal"
    if code in AUTH_CODES:
        return "auth"
    return "transient"

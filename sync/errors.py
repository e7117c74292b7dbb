"""THE error table of the sync WebSocket lane.

Every error a socket can receive has a row here: a stable ``code`` (the lowercase ``error_code``
option of ``openagents.sync.v1.SyncErrorCode``), a default message, the WebSocket close code the
server uses after sending it (``None``: the socket stays open), and what a client should do.
``docs/protocol/OA_SYNC_WS_MAPPING.md`` §7 lists exactly these codes (a test checks both ways).

Nothing else in ``sync`` invents an error code: build payloads with ``error_payload``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    message: str
    close_code: int | None
    client_action: str


_SPECS = (
    ErrorSpec("unauthorized", "sync token rejected", 4401,
              "get a fresh token, reconnect with backoff; `reason` says why"),
    ErrorSpec("reauth_required", "session access was revoked; sign in again", 4403,
              "sign in again, mint a new token, reconnect"),
    ErrorSpec("upgrade_required", "this client version is not supported; upgrade it", 4426,
              "upgrade the client; do not retry with the same build"),
    ErrorSpec("bad_topic", "unknown channel topic; join sync:v1", None,
              "join `sync:v1` (and join before sending `sync:*` events)"),
    ErrorSpec("unknown_event", "unknown event", None,
              "client bug: stop sending that event"),
    ErrorSpec("bad_subscription", "invalid subscription request", None,
              "fix the request (`message` names the field)"),
    ErrorSpec("forbidden_topic", "topic not allowed", None,
              "drop the `forbidden_topics` or get a token with those scopes"),
    ErrorSpec("stale_cursor", "cursor is older than retention floor", None,
              "drop cursors and documents of `stale_topics`, hydrate over HTTP, resubscribe"),
    ErrorSpec("malformed_frame", "frame must be a JSON array of 5 elements", 4400,
              "client bug: fix the framing; reconnect"),
    ErrorSpec("payload_too_large", "frame exceeds the size limit", 4413,
              "send smaller frames; reconnect"),
    ErrorSpec("heartbeat_timeout", "no client activity within the heartbeat timeout", 4408,
              "send heartbeats (Phoenix clients do); reconnect and resume"),
    ErrorSpec("slow_consumer", "client did not read its updates in time", 4008,
              "reconnect with backoff and resume from stored cursors (hydrate first if `full_resync_required`)"),
    ErrorSpec("rate_limited", "too many requests in flight", None,
              "wait `retry_after_ms`, then retry; do not send requests before their replies"),
    ErrorSpec("token_expired", "the socket's token expired and was not refreshed", 4419,
              "mint a fresh token, reconnect and resume; send `sync:refresh` before `exp` next time"),
    ErrorSpec("internal", "internal server error", 4500,
              "reconnect with backoff and resume"),
)

# A connection flood: the socket is refused before any database work with a `rate_limited` push and
# this close code (`rate_limited` itself is a reply that leaves the socket open, hence no close code
# in its row). Reconnect after `retry_after_ms`, with jitter.
CONNECT_RATE_LIMITED_CLOSE_CODE = 4429

ERRORS: dict[str, ErrorSpec] = {spec.code: spec for spec in _SPECS}

# Codes of the proto enum that this server never sends (kept out of ERRORS on purpose).
PROTO_CODES_NOT_SENT: frozenset = frozenset()


def spec(code: str) -> ErrorSpec:
    return ERRORS[code]


def error_payload(code: str, message: str | None = None, **extra) -> dict:
    """``{"code", "message", **extra}`` for a code of the table (KeyError for any other)."""
    entry = ERRORS[code]
    return {"code": code, "message": message or entry.message, **extra}


def close_code(code: str) -> int | None:
    return ERRORS[code].close_code

"""Phoenix Channels v2 framing and the sync:v1 message shapes, as pure functions.

Nothing here does I/O or touches asyncio: frames go in as text and come out as values, so the
property tests can round-trip them and the client state machine stays small.

A v2 frame is the JSON array ``[join_ref, ref, topic, event, payload]``. ``join_ref`` names the
channel join the frame belongs to (the ``ref`` of the ``phx_join`` push); ``ref`` pairs a push with
its ``phx_reply``. Server pushes carry ``ref: null``.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

VSN = "2.0.0"
SYNC_CHANNEL = "sync:v1"
PHOENIX_TOPIC = "phoenix"

# Phoenix events
PHX_JOIN = "phx_join"
PHX_LEAVE = "phx_leave"
PHX_REPLY = "phx_reply"
PHX_ERROR = "phx_error"
PHX_CLOSE = "phx_close"
HEARTBEAT = "heartbeat"

# sync:v1 events
SUBSCRIBE = "sync:subscribe"
UNSUBSCRIBE = "sync:unsubscribe"
UPDATE_BATCH = "sync:update_batch"
SYNC_HEARTBEAT = "sync:heartbeat"
SYNC_ERROR = "sync:error"
SYNC_FRAME = "sync:frame"
REFRESH = "sync:refresh"

DEFAULT_SOCKET_PATH = "/sync/socket/websocket"


class ProtocolError(ValueError):
    """A frame or message the client cannot interpret (stable ``code`` for the error event)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def encode_frame(join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
    return json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":"), ensure_ascii=False)


def decode_frame(text: str | bytes) -> Frame:
    """Parse one v2 frame; ``ProtocolError('bad_frame')`` for anything that is not one."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("bad_frame", f"frame is not JSON: {exc}") from None
    if not isinstance(data, list) or len(data) != 5:
        raise ProtocolError("bad_frame", "frame must be a 5-element array [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = data
    for name, value in (("join_ref", join_ref), ("ref", ref)):
        if value is not None and not isinstance(value, str):
            raise ProtocolError("bad_frame", f"{name} must be a string or null")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ProtocolError("bad_frame", "topic and event must be strings")
    return Frame(join_ref, ref, topic, event, payload)


def reply_status(payload: Any) -> tuple[str, Any]:
    """``(status, response)`` of a ``phx_reply`` payload."""
    if not isinstance(payload, dict) or not isinstance(payload.get("status"), str):
        raise ProtocolError("bad_reply", "phx_reply payload must be {status, response}")
    return payload["status"], payload.get("response")


# --- URLs -----------------------------------------------------------------------------------------


def http_base(url: str) -> str:
    """``scheme://host[:port]`` over HTTP(S) for a server URL given as http(s):// or ws(s)://."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"server URL must be http(s):// or ws(s)://host[:port], got {url!r}")
    return f"{scheme}://{parts.netloc}"


def socket_url(url: str, token: str, *, path: str = DEFAULT_SOCKET_PATH, params: dict | None = None) -> str:
    """The WebSocket URL with ``token`` and ``vsn=2.0.0`` (plus optional connect params)."""
    base = urllib.parse.urlsplit(http_base(url))
    scheme = "wss" if base.scheme == "https" else "ws"
    query = {"token": token, "vsn": VSN}
    for key, value in (params or {}).items():
        if value is not None:
            query[key] = str(value)
    return urllib.parse.urlunsplit((scheme, base.netloc, path, urllib.parse.urlencode(query), ""))


# --- sync:v1 payloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """One document update as the wire carries it (``payload`` is None when hydration is required)."""

    topic: str
    doc_key: str
    doc_version: int
    payload: Any
    payload_hash: str | None
    watermark: int
    hydration_required: bool


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_update(raw: Any) -> Update:
    """Validate one update; ``ProtocolError('bad_update')`` if a field is missing or mistyped."""
    if not isinstance(raw, dict):
        raise ProtocolError("bad_update", "update must be an object")
    topic, doc_key = raw.get("topic"), raw.get("doc_key")
    doc_version, watermark = raw.get("doc_version"), raw.get("watermark")
    if not isinstance(topic, str) or not topic or not isinstance(doc_key, str) or not doc_key:
        raise ProtocolError("bad_update", "update needs non-empty string topic and doc_key")
    if not _is_int(doc_version) or doc_version < 0 or not _is_int(watermark) or watermark < 1:
        raise ProtocolError("bad_update", "update needs integer doc_version >= 0 and watermark >= 1")
    payload_hash = raw.get("payload_hash")
    if payload_hash is not None and not isinstance(payload_hash, str):
        raise ProtocolError("bad_update", "payload_hash must be a base64 string or null")
    payload = raw.get("payload")
    hydration_required = bool(raw.get("hydration_required")) or payload is None
    return Update(topic, doc_key, doc_version, payload, payload_hash, watermark, hydration_required)


def parse_watermarks(raw: Any) -> dict[str, int]:
    """``[{topic, watermark}]`` (or a ``{topic: watermark}`` map) → ``{topic: watermark}``."""
    if isinstance(raw, dict):
        items = [{"topic": k, "watermark": v} for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    elif raw is None:
        return {}
    else:
        raise ProtocolError("bad_watermarks", "watermarks must be a list of {topic, watermark}")
    out: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("topic"), str) or not _is_int(item.get("watermark")):
            raise ProtocolError("bad_watermarks", "each watermark entry needs a string topic and an integer watermark")
        out[item["topic"]] = item["watermark"]
    return out


@dataclass(frozen=True)
class UpdateBatch:
    updates: tuple[Update, ...]
    replay_complete: bool
    head_watermarks: dict[str, int]


def parse_update_batch(payload: Any) -> UpdateBatch:
    if not isinstance(payload, dict) or not isinstance(payload.get("updates"), list):
        raise ProtocolError("bad_update_batch", "sync:update_batch payload needs an updates list")
    updates = tuple(parse_update(u) for u in payload["updates"])
    return UpdateBatch(updates, bool(payload.get("replay_complete")), parse_watermarks(payload.get("head_watermarks")))


def subscribe_payload(
    topics: list[str],
    resume_after: dict[str, int],
    *,
    stream_epochs: dict[str, str] | None = None,
    replay_batch_size: int | None = None,
    request_id: str | None = None,
) -> dict:
    """The ``sync:subscribe`` payload. Cursors go as a list of ``{topic, watermark[, stream_epoch]}``.

    Only topics with a cursor appear in ``resume_after``: a topic without one replays its whole
    retained window, which is what a fresh cache needs.
    """
    entries = []
    for topic in topics:
        if topic in resume_after:
            entry: dict[str, Any] = {"topic": topic, "watermark": int(resume_after[topic])}
            epoch = (stream_epochs or {}).get(topic)
            if epoch:
                entry["stream_epoch"] = epoch
            entries.append(entry)
    payload: dict[str, Any] = {"topics": list(topics), "resume_after": entries}
    if replay_batch_size is not None:
        payload["replay_batch_size"] = int(replay_batch_size)
    if request_id is not None:
        payload["request_id"] = request_id
    return payload


def error_code(payload: Any, default: str = "unknown_error") -> str:
    """The stable ``code`` of an error reply/push (``{code, ...}`` or ``{reason: ...}``)."""
    if isinstance(payload, dict):
        for key in ("code", "reason"):
            if isinstance(payload.get(key), str) and payload[key]:
                return payload[key]
    return default

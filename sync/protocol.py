"""Phoenix Channels v2 framing and the ``sync:v1`` message rules, as pure functions.

No Channels, ORM, Redis or asyncio here: everything is data in, data out, so the rules can be
property-tested and reused by benchmarks. The wire contract is
``docs/protocol/OA_SYNC_WS_MAPPING.md``; error codes come from ``sync.errors``.

Encoding is orjson. A journal payload arrives as the JSON text Postgres produced for the jsonb
column and is spliced into frames with ``orjson.Fragment``, never parsed and re-serialised; a live
batch is encoded once and the same string goes to every socket that may see it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

import orjson

from sync.errors import error_payload

CHANNEL_TOPIC = "sync:v1"
PHOENIX_TOPIC = "phoenix"
SUPPORTED_VSN = "2.0.0"
PROTOCOL_VERSION = "khala.ws.v1"
SNAPSHOT_FORMAT = "openagents.sync.snapshot.v1"
FRAME_SCHEMA_VERSION = 1
AUTH_FRAME_TOPIC = "sync.auth"

# Client events
PHX_JOIN = "phx_join"
PHX_LEAVE = "phx_leave"
HEARTBEAT = "heartbeat"
SUBSCRIBE = "sync:subscribe"
UNSUBSCRIBE = "sync:unsubscribe"
SYNC_HEARTBEAT = "sync:heartbeat"
REFRESH = "sync:refresh"
# Server events
PHX_REPLY = "phx_reply"
UPDATE_BATCH = "sync:update_batch"
SYNC_FRAME = "sync:frame"
SYNC_ERROR = "sync:error"

KIND_UPDATE_BATCH = "KHALA_FRAME_KIND_UPDATE_BATCH"
KIND_ERROR = "KHALA_FRAME_KIND_ERROR"

MAX_WATERMARK = 2**63 - 1
MAX_REQUEST_ID_LENGTH = 128
TOPIC_ENUM_PREFIX = "SYNC_TOPIC_"
# Room reserved for a batch frame's envelope (refs, topic, event, head_watermarks) so that the
# whole frame, not only its updates, stays within REPLAY_BATCH_MAX_BYTES.
BATCH_ENVELOPE_RESERVE_BYTES = 1024
_DIGITS = re.compile(r"^[0-9]{1,19}\Z")


class ProtocolError(Exception):
    """A client input the protocol refuses: ``code`` from the error table, plus payload extras."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.extra = extra

    def payload(self) -> dict:
        return error_payload(self.code, self.message, **self.extra)


# --------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, slots=True)
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict


def frame_size_ok(text: str, max_bytes: int) -> bool:
    """True when the UTF-8 size of ``text`` is within ``max_bytes`` (cheap for ASCII-sized text)."""
    if len(text) > max_bytes:  # characters <= bytes
        return False
    if len(text) * 4 <= max_bytes:  # even all-4-byte characters fit
        return True
    return len(text.encode("utf-8", "surrogatepass")) <= max_bytes


def decode_frame(text: str | None, *, max_bytes: int, binary: bytes | None = None) -> Frame:
    """Parse one client text message; raise ``ProtocolError`` (``malformed_frame`` /
    ``payload_too_large``) for anything that is not a well-formed Phoenix v2 frame."""
    if text is None:
        if binary is not None and len(binary) > max_bytes:
            raise ProtocolError("payload_too_large", "frame exceeds the size limit", limit_bytes=max_bytes)
        raise ProtocolError("malformed_frame", "frames must be JSON text messages, not binary")
    if not frame_size_ok(text, max_bytes):
        raise ProtocolError("payload_too_large", "frame exceeds the size limit", limit_bytes=max_bytes)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("malformed_frame", "frame is not valid JSON") from None
    if not isinstance(data, list) or len(data) != 5:
        raise ProtocolError("malformed_frame", "frame must be a JSON array of 5 elements")
    join_ref, ref, topic, event, payload = data
    if not (join_ref is None or isinstance(join_ref, str)) or not (ref is None or isinstance(ref, str)):
        raise ProtocolError("malformed_frame", "join_ref and ref must be strings or null")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ProtocolError("malformed_frame", "topic and event must be strings")
    if not isinstance(payload, dict):
        raise ProtocolError("malformed_frame", "payload must be a JSON object")
    return Frame(join_ref, ref, topic, event, payload)


def encode_frame(join_ref: str | None, ref: str | None, topic: str, event: str, payload) -> str:
    return orjson.dumps([join_ref, ref, topic, event, payload]).decode()


def encode_reply(frame: Frame, status: str, response: dict) -> str:
    return encode_frame(frame.join_ref, frame.ref, frame.topic, PHX_REPLY, {"status": status, "response": response})


def encode_ok(frame: Frame, response: dict | None = None) -> str:
    return encode_reply(frame, "ok", response or {})


def encode_error_reply(frame: Frame, error: dict) -> str:
    return encode_reply(frame, "error", error)


def encode_push(join_ref: str | None, event: str, payload) -> str:
    return encode_frame(join_ref, None, CHANNEL_TOPIC, event, payload)


# --------------------------------------------------------------------------------------------
# Topics


def topic_enum_name(topic: str) -> str:
    """``runtime.run_summaries`` -> ``SYNC_TOPIC_RUNTIME_RUN_SUMMARIES`` (proto SyncTopic value name)."""
    return TOPIC_ENUM_PREFIX + topic.upper().replace(".", "_")


def normalize_topic(name: str, known_topics) -> str:
    """Trimmed dotted name; an enum value name of a known topic is replaced by its dotted name.
    Unknown names are returned trimmed (the caller reports them as forbidden)."""
    name = name.strip()
    if name.startswith(TOPIC_ENUM_PREFIX):
        for topic in known_topics:
            if topic_enum_name(topic) == name:
                return topic
    return name


# --------------------------------------------------------------------------------------------
# sync:subscribe / sync:unsubscribe


@dataclass(frozen=True, slots=True)
class Cursor:
    topic: str
    watermark: int
    stream_epoch: str | None = None


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    topics: tuple[str, ...]
    cursors: dict = field(hash=False)  # topic -> Cursor, only for requested topics
    replay_batch_size: int
    request_id: str | None = None


def parse_watermark(value, where: str) -> int:
    """An int64 watermark >= 0: a JSON integer, or a decimal string (proto-JSON writes int64 so)."""
    if type(value) is int:
        if 0 <= value <= MAX_WATERMARK:
            return value
    elif isinstance(value, str) and _DIGITS.match(value):
        parsed = int(value)
        if parsed <= MAX_WATERMARK:
            return parsed
    raise ProtocolError("bad_subscription", f"{where} must be an integer between 0 and 2^63-1")


def _topic_list(payload: dict, known_topics) -> tuple[str, ...]:
    raw = payload.get("topics")
    if not isinstance(raw, list):
        raise ProtocolError("bad_subscription", "topics must be a non-empty list of strings")
    topics = []
    for item in raw:
        if not isinstance(item, str):
            raise ProtocolError("bad_subscription", "topics must be a non-empty list of strings")
        name = normalize_topic(item, known_topics)
        if name and name not in topics:
            topics.append(name)
    if not topics:
        raise ProtocolError("bad_subscription", "topics must be a non-empty list of strings")
    return tuple(topics)


def _cursor_entries(raw, known_topics) -> list[Cursor]:
    if raw is None:
        return []
    entries: list[Cursor] = []
    if isinstance(raw, dict):
        for topic, value in raw.items():
            entries.append(Cursor(normalize_topic(topic, known_topics), parse_watermark(value, f"resume_after[{topic!r}]")))
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            where = f"resume_after[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
                raise ProtocolError("bad_subscription", f"{where} must be an object {{topic, watermark[, stream_epoch]}}")
            unknown_keys = set(item) - {"topic", "watermark", "stream_epoch"}
            if unknown_keys:
                raise ProtocolError("bad_subscription", f"{where} has unknown keys {sorted(unknown_keys)}")
            if "watermark" not in item:
                raise ProtocolError("bad_subscription", f"{where}.watermark is required")
            epoch = item.get("stream_epoch")
            if epoch is not None and (not isinstance(epoch, str) or not epoch or len(epoch) > 64):
                raise ProtocolError("bad_subscription", f"{where}.stream_epoch must be a non-empty string")
            entries.append(
                Cursor(normalize_topic(item["topic"], known_topics), parse_watermark(item["watermark"], f"{where}.watermark"), epoch)
            )
    else:
        raise ProtocolError("bad_subscription", "resume_after must be a list of {topic, watermark} or a map topic -> watermark")
    seen = set()
    for entry in entries:
        if entry.topic in seen:
            raise ProtocolError("bad_subscription", f"resume_after names topic {entry.topic!r} twice")
        seen.add(entry.topic)
    return entries


def parse_subscribe(
    payload: dict, *, known_topics, allowed_topics, default_batch_size: int, max_batch_size: int
) -> SubscribeRequest:
    """Validate a ``sync:subscribe`` payload in the documented order (steps 1–4; staleness, step 5,
    needs the topics' state and is ``find_stale_cursors``). Raises ``ProtocolError``."""
    known = tuple(known_topics)
    topics = _topic_list(payload, known)
    unknown = [topic for topic in topics if topic not in known]
    if unknown:
        raise ProtocolError("forbidden_topic", "unknown topics", forbidden_topics=unknown)
    allowed = set(allowed_topics)
    forbidden = [topic for topic in topics if topic not in allowed]
    if forbidden:
        raise ProtocolError("forbidden_topic", "topics not allowed by the token", forbidden_topics=forbidden)
    cursors = {c.topic: c for c in _cursor_entries(payload.get("resume_after"), known) if c.topic in topics}
    batch = payload.get("replay_batch_size")
    if batch is None:
        batch = default_batch_size
    elif type(batch) is not int or batch < 1:
        raise ProtocolError("bad_subscription", "replay_batch_size must be a positive integer")
    request_id = payload.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_LENGTH):
        raise ProtocolError("bad_subscription", f"request_id must be a string of at most {MAX_REQUEST_ID_LENGTH} characters")
    return SubscribeRequest(topics, cursors, min(batch, max_batch_size), request_id)


def parse_unsubscribe(payload: dict, known_topics) -> tuple[str, ...]:
    return _topic_list(payload, tuple(known_topics))


# --------------------------------------------------------------------------------------------
# Stale cursors


@dataclass(frozen=True, slots=True)
class TopicState:
    """What the journal says about a topic right now (one row of ``sync_topic_sequences``). No
    defaults: the policy fields always come from that row, whose column defaults
    (``projector.models.TopicSequence``) are the one definition of a topic's default policy."""

    topic: str
    head_watermark: int
    pruned_through: int
    stream_epoch: str
    replay_budget_events: int
    qos_tier: str
    snapshot_enabled: bool


STALE_REASONS = ("stream_epoch_mismatch", "cursor_ahead_of_head", "retention_floor_breach", "replay_budget_exceeded")


def stale_reason(cursor: Cursor, state: TopicState) -> str | None:
    """Why ``cursor`` cannot be resumed on ``state``, or None. Checked in the documented order."""
    if cursor.stream_epoch is not None and cursor.stream_epoch != state.stream_epoch:
        return "stream_epoch_mismatch"
    if cursor.watermark > state.head_watermark:
        return "cursor_ahead_of_head"
    if cursor.watermark < state.pruned_through:
        return "retention_floor_breach"
    if state.head_watermark - cursor.watermark > state.replay_budget_events:
        return "replay_budget_exceeded"
    return None


def stale_topic_entry(cursor: Cursor, state: TopicState, reason: str) -> dict:
    return {
        "topic": state.topic,
        "reason": reason,
        "resume_after": cursor.watermark,
        "retention_floor": state.pruned_through,
        "head_watermark": state.head_watermark,
        "stream_epoch": state.stream_epoch,
        "qos_tier": state.qos_tier,
        "replay_lag": max(state.head_watermark - cursor.watermark, 0),
        "replay_budget_events": state.replay_budget_events,
    }


def stale_cursor_error(entries: list[tuple[Cursor, TopicState, str]]) -> dict:
    """The full ``stale_cursor`` payload (pushed as ``sync:error`` and sent as the error reply)."""
    stale_topics = [stale_topic_entry(cursor, state, reason) for cursor, state, reason in entries]
    reason_codes = list(dict.fromkeys(reason for _, _, reason in entries))
    message = (
        "cursor is older than retention floor"
        if reason_codes == ["retention_floor_breach"]
        else "cannot resume from the given cursor: " + ", ".join(reason_codes)
    )
    return error_payload(
        "stale_cursor",
        message,
        full_resync_required=True,
        reason_codes=reason_codes,
        stale_topics=stale_topics,
        snapshot={
            "format": SNAPSHOT_FORMAT,
            "topics": [
                {
                    "topic": state.topic,
                    "head_watermark": state.head_watermark,
                    "stream_epoch": state.stream_epoch,
                    "snapshot_enabled": state.snapshot_enabled,
                    "list_url": f"/api/sync/v1/list/{state.topic}",
                }
                for _, state, _ in entries
            ],
        },
    )


def find_stale_cursors(request: SubscribeRequest, states: dict) -> dict | None:
    """Step 5 of subscribe validation: the ``stale_cursor`` payload, or None if every cursor resumes."""
    entries = []
    for topic in request.topics:
        cursor = request.cursors.get(topic)
        if cursor is None:
            continue
        reason = stale_reason(cursor, states[topic])
        if reason is not None:
            entries.append((cursor, states[topic], reason))
    return stale_cursor_error(entries) if entries else None


# --------------------------------------------------------------------------------------------
# Updates and batches


@dataclass(slots=True)  # not frozen: built for every row read, and frozen __init__ costs more
class JournalRow:
    """One ``sync_stream_events`` row as delivery needs it. ``payload_json`` is the JSON text of
    the payload (None in pointer mode); ``payload_hash`` its wire form (standard base64);
    ``inserted_at`` a POSIX timestamp (commit → send lag). Treat it as immutable."""

    topic: str
    watermark: int
    doc_key: str
    doc_version: int
    owner: str
    public: bool
    payload_json: str | None
    payload_hash: str | None
    payload_bytes: int
    inserted_at: float = 0.0


def may_see(row: JournalRow, org_id: str) -> bool:
    """Owner filter: a principal sees its own org's rows and public rows."""
    return row.public or row.owner == org_id


def encode_update(row: JournalRow, inline_limit_bytes: int) -> bytes:
    """The JSON of one ``Update``. Rows without a payload, or whose canonical payload is larger
    than ``inline_limit_bytes``, go without payload and with ``hydration_required: true``. The
    stored JSON text can be a little longer than the canonical form (jsonb prints spaces), so an
    update that still comes out over the limit is sent as a pointer too."""
    inline = row.payload_json is not None and row.payload_bytes <= inline_limit_bytes
    encoded = _update_json(row, inline)
    if inline and len(encoded) > inline_limit_bytes + 1024:
        encoded = _update_json(row, False)
    return encoded


def _update_json(row: JournalRow, inline: bool) -> bytes:
    return orjson.dumps(
        {
            "topic": row.topic,
            "doc_key": row.doc_key,
            "doc_version": row.doc_version,
            "payload": orjson.Fragment(row.payload_json) if inline else None,
            "payload_hash": row.payload_hash,
            "watermark": row.watermark,
            "hydration_required": not inline,
        }
    )


def watermark_entry(topic: str, watermark: int, stream_epoch: str) -> dict:
    return {"topic": topic, "watermark": watermark, "stream_epoch": stream_epoch}


def batch_payload(topic: str, updates: list[bytes], replay_complete: bool, through: int, stream_epoch: str) -> dict:
    return {
        "updates": [orjson.Fragment(update) for update in updates],
        "replay_complete": replay_complete,
        "head_watermarks": [watermark_entry(topic, through, stream_epoch)],
    }


def encode_batch(
    join_ref: str | None,
    topic: str,
    updates: list[bytes],
    replay_complete: bool,
    through: int,
    stream_epoch: str,
    *,
    seq: int | None = None,
) -> list[str]:
    """A ``sync:update_batch`` push (``through``: the socket is complete on ``topic`` up to it)
    and, when ``seq`` is given (clients that asked for ``frames``), its ``sync:frame`` envelope
    carrying the same payload with ``seq`` = the last update's watermark. The payload is built
    once for both."""
    payload = batch_payload(topic, updates, replay_complete, through, stream_epoch)
    texts = [encode_push(join_ref, UPDATE_BATCH, payload)]
    if seq is not None:
        texts.append(encode_khala_frame(join_ref, topic, seq, KIND_UPDATE_BATCH, payload))
    return texts


def encode_khala_frame(join_ref: str | None, topic: str, seq: int, kind: str, payload: dict) -> str:
    """A ``sync:frame`` envelope whose ``payload_bytes`` is base64 of the JSON of ``payload``."""
    return encode_push(
        join_ref,
        SYNC_FRAME,
        {
            "topic": topic,
            "seq": seq,
            "kind": kind,
            "payload_bytes": base64.b64encode(orjson.dumps(payload)).decode("ascii"),
            "schema_version": FRAME_SCHEMA_VERSION,
        },
    )


def split_batches(updates: list[tuple[int, bytes]], max_count: int, max_bytes: int) -> list[list[tuple[int, bytes]]]:
    """Cut ``(watermark, update_json)`` pairs (ascending) into batches of at most ``max_count``
    updates whose frame stays within ``max_bytes``. A single update always makes a batch alone
    (``encode_update`` already turned oversized payloads into pointers)."""
    budget = max(max_bytes - BATCH_ENVELOPE_RESERVE_BYTES, 1)
    batches: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    size = 0
    for item in updates:
        item_size = len(item[1]) + 1  # the comma
        if current and (len(current) >= max_count or size + item_size > budget):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        batches.append(current)
    return batches


def inline_limit(inline_payload_limit_bytes: int, batch_max_bytes: int) -> int:
    """Largest canonical payload sent inline: it must fit a batch frame with its envelope."""
    return min(inline_payload_limit_bytes, batch_max_bytes - 2 * BATCH_ENVELOPE_RESERVE_BYTES)

"""A document write through the sink, before it touches a database.

What a caller asks for (``DocumentWrite``), how it is checked and canonicalised (``prepare`` →
``PreparedWrite``), how it is refused (``SinkError`` with a stable ``code``), what it became
(``WriteResult``), and how a batch's writes are ordered (``group_by_topic``). Both write paths,
``projector.sink`` (PostgreSQL) and ``projector.sink_portable`` (the embedded SQLite), take
``PreparedWrite``s from here, so validation and batch semantics exist once.
"""

import re
from dataclasses import dataclass
from typing import Any

from projector import canonical
from projector.payload_hash import PayloadHashError

TOPIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,87}\Z")  # the channel-layer group name must fit in 100
DOC_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@+=~-]{1,255}\Z")
OWNER_RE = re.compile(r"[A-Za-z0-9_.:/@+=~-]{1,160}\Z")
MAX_DOC_VERSION = 2**63 - 1
# jsonb cannot store U+0000; canonical JSON writes it as \u0000 (preceded by an even number of
# backslashes, otherwise it is a literal backslash followed by "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class SinkError(ValueError):
    """A refused write. ``code`` is stable (clients and the ingest API switch on it)."""

    def __init__(self, code: str, message: str, *, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.index = index
        self.field = field


# Stable codes -> HTTP status used by the ingest API (and documented in docs/sync/SCHEMA.md).
ERROR_STATUS = {
    "invalid_topic": 422,
    "unknown_topic": 422,
    "invalid_doc_key": 422,
    "invalid_doc_version": 422,
    "invalid_owner": 422,
    "invalid_public": 422,
    "invalid_payload": 422,
    "payload_too_large": 413,
    "invalid_document": 422,
}


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    topic: str
    doc_key: str
    doc_version: int
    payload: Any
    owner: str
    public: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    topic: str
    doc_key: str
    doc_version: int
    written: bool  # False: an older doc_version than the stored one (no-op)
    watermark: int | None  # the journal row's watermark when written
    pointer: bool  # journaled without payload (hydrate over HTTP)


@dataclass(slots=True)
class PreparedWrite:
    """A validated write with its canonical payload (encoded once: the same bytes give the hash,
    the size and the pointer-mode decision). ``index`` is its position in the caller's batch."""

    write: DocumentWrite
    encoded: canonical.CanonicalPayload
    over_inline_limit: bool
    index: int | None


def prepare(write: DocumentWrite, index: int | None, inline_limit: int, max_bytes: int) -> PreparedWrite:
    """Validate ``write`` and canonicalise its payload. Raises ``SinkError`` (field and index set)."""
    topic = write.topic
    if not isinstance(topic, str) or not TOPIC_RE.match(topic):
        raise SinkError("invalid_topic", "topic must be 1-88 characters of [A-Za-z0-9._-]", index=index, field="topic")
    doc_key = write.doc_key
    if not isinstance(doc_key, str) or not DOC_KEY_RE.match(doc_key):
        raise SinkError(
            "invalid_doc_key", "doc_key must be 1-255 characters of [A-Za-z0-9_.:/@+=~-]", index=index, field="doc_key"
        )
    version = write.doc_version
    if type(version) is not int or not 0 <= version <= MAX_DOC_VERSION:
        raise SinkError(
            "invalid_doc_version", "doc_version must be an integer between 0 and 2**63-1", index=index, field="doc_version"
        )
    if type(write.public) is not bool:
        raise SinkError("invalid_public", "public must be a boolean", index=index, field="public")
    owner = write.owner
    if owner is None and write.public:
        owner = ""
        write = DocumentWrite(write.topic, doc_key, version, write.payload, owner, True)
    if not isinstance(owner, str) or not (OWNER_RE.match(owner) or (owner == "" and write.public)):
        raise SinkError(
            "invalid_owner",
            "owner must be 1-160 characters of [A-Za-z0-9_.:/@+=~-] (it may be empty only for public documents)",
            index=index,
            field="owner",
        )
    if not isinstance(write.payload, dict):
        raise SinkError("invalid_payload", "payload must be a JSON object", index=index, field="payload")
    try:
        encoded = canonical.encode(write.payload)
    except PayloadHashError as exc:
        raise SinkError("invalid_payload", str(exc), index=index, field="payload") from None
    except (RecursionError, MemoryError):
        raise SinkError("invalid_payload", "payload is nested too deeply", index=index, field="payload") from None
    if encoded.size > max_bytes:
        raise SinkError(
            "payload_too_large",
            f"canonical payload is {encoded.size} bytes; the limit is {max_bytes}",
            index=index,
            field="payload",
        )
    if "u0000" in encoded.text and _NUL_ESCAPE.search(encoded.text):
        raise SinkError("invalid_payload", "payload strings must not contain U+0000", index=index, field="payload")
    return PreparedWrite(write, encoded, encoded.size > inline_limit, index)


def group_by_topic(prepared: list[PreparedWrite]) -> tuple[dict[str, list[PreparedWrite]], list[PreparedWrite]]:
    """The batch's writes grouped by topic (input order kept), without the in-batch writes older
    than an earlier write of the same document (sequential semantics), which come back second."""
    newest: dict[tuple[str, str], int] = {}
    by_topic: dict[str, list[PreparedWrite]] = {}
    dropped = []
    for item in prepared:
        key = (item.write.topic, item.write.doc_key)
        seen = newest.get(key)
        if seen is not None and item.write.doc_version < seen:
            dropped.append(item)
            continue
        newest[key] = item.write.doc_version
        by_topic.setdefault(item.write.topic, []).append(item)
    return by_topic, dropped

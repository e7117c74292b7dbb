"""Decoding of ingest requests (``POST /api/internal/sync/projections``) into sink writes.

Shape checks only (one object or a non-empty list of objects with exactly the document fields);
value checks are the sink's, so the HTTP API and the Python API refuse the same things with the
same codes. Every refusal raises ``IngestError`` with a stable code; nothing is written unless the
whole request is valid (``project_many`` is all-or-nothing).
"""

import json

import orjson

from khala_project.coded_errors import CodedError
from khala_project.conf import khala_setting
from khala_project.storable_text import UnstorableText, check_storable
from projector.sink import DocumentWrite

REQUIRED_FIELDS = ("topic", "doc_key", "doc_version", "payload", "owner")
OPTIONAL_FIELDS = ("public",)


class IngestError(CodedError, ValueError):
    """A refused ingest request; nothing was written."""


def _contains_float(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            return True
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes):
    """Parse exactly: every integer literal stays an integer, whatever its size.

    orjson turns an integer literal beyond 64 bits into a float (``18446744073709551616`` becomes
    ``1.8446744073709552e+19``), which would store a different number than the one sent. So a body
    in which orjson found any float is parsed again by the standard library, which keeps integers
    exact (and NaN/Infinity refused); the sink then refuses integers outside ±(2**53-1) with
    ``unsafe_integer``, as docs/protocol/HASHING.md says. Bodies without floats, the common case,
    keep orjson's speed.
    """
    body = orjson.loads(raw)
    if _contains_float(body):
        body = json.loads(raw, parse_constant=_refuse_constant)
    return body


def decode_body(raw: bytes) -> list[DocumentWrite]:
    """JSON body -> documents. Raises ``IngestError``."""
    try:
        body = _parse_json(raw)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise IngestError("malformed_json", f"request body is not valid JSON: {exc}") from None
    try:
        check_storable(body)
    except UnstorableText as exc:
        raise IngestError(exc.code, exc.message, exc.http_status, **exc.extra) from None
    if isinstance(body, dict):
        items = [body]
    elif isinstance(body, list):
        items = body
        if not items:
            raise IngestError("empty_batch", "the list of documents is empty")
        limit = khala_setting("INGEST_MAX_DOCUMENTS")
        if len(items) > limit:
            raise IngestError(
                "too_many_documents", f"{len(items)} documents; at most {limit} per request", 413, limit=limit
            )
    else:
        raise IngestError("invalid_request", "body must be a document object or a list of them")
    return [_document(item, index if isinstance(body, list) else None) for index, item in enumerate(items)]


def _document(item, index: int | None) -> DocumentWrite:
    if not isinstance(item, dict):
        raise IngestError("invalid_document", "each document must be a JSON object", index=index)
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    if missing:
        raise IngestError("invalid_document", f"missing field(s): {', '.join(missing)}", index=index, fields=missing)
    unknown = sorted(set(item) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise IngestError("invalid_document", f"unknown field(s): {', '.join(unknown)}", index=index, fields=unknown)
    return DocumentWrite(
        topic=item["topic"],
        doc_key=item["doc_key"],
        doc_version=item["doc_version"],
        payload=item["payload"],
        owner=item["owner"],
        public=item.get("public", False),
    )

"""Decoding of ingest requests (``POST /api/internal/sync/projections``) into sink writes.

Shape checks only (one object or a non-empty list of objects with exactly the document fields);
value checks are the sink's, so the HTTP API and the Python API refuse the same things with the
same codes. Every refusal raises ``IngestError`` with a stable code; nothing is written unless the
whole request is valid (``project_many`` is all-or-nothing).
"""

import orjson

from khala_project.api_errors import CodedError
from khala_project.conf import khala_setting
from projector.sink import DocumentWrite

REQUIRED_FIELDS = ("topic", "doc_key", "doc_version", "payload", "owner")
OPTIONAL_FIELDS = ("public",)


class IngestError(CodedError, ValueError):
    """A refused ingest request; nothing was written."""


def decode_body(raw: bytes) -> list[DocumentWrite]:
    """JSON body -> documents. Raises ``IngestError``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IngestError("malformed_json", f"request body is not valid JSON: {exc}") from None
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

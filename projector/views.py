"""``POST /api/internal/sync/projections``: the sink over HTTP, for runtimes not written in Python.

Service-token auth (``Authorization: Bearer <KHALA_SERVICE_TOKEN>``, constant-time comparison;
unset token → 503). Body: one document or a list; all-or-nothing. Refusals use the fixed error
shape with a stable ``code`` (and ``index``/``field`` of the offending document in a batch).
"""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError
from khala_project.openapi import responses
from khala_project.conf import khala_setting
from projector import sink
from projector.ingest import IngestError, decode_body
from tokens.authentication import IsService, ServiceTokenAuthentication


def _read_body(request) -> bytes:
    """Read at most the configured number of bytes (Django's own body limit is not our error shape)."""
    limit = khala_setting("INGEST_MAX_BODY_BYTES")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit():
        raise ApiError("invalid_request", "bad Content-Length")
    if int(declared) > limit:
        raise ApiError("request_too_large", f"request body over {limit} bytes", 413, limit=limit)
    raw = request._request.read(limit + 1)
    if len(raw) > limit:
        raise ApiError("request_too_large", f"request body over {limit} bytes", 413, limit=limit)
    return raw


_DOCUMENT = {
    "type": "object",
    "required": ["topic", "doc_key", "doc_version", "payload", "owner"],
    "properties": {
        "topic": {"type": "string"},
        "doc_key": {"type": "string"},
        "doc_version": {"type": "integer", "minimum": 0},
        "payload": {"type": "object"},
        "owner": {"type": "string"},
        "public": {"type": "boolean"},
    },
    "additionalProperties": False,
}
# One document, or a non-empty list of them (all-or-nothing).
INGEST_REQUEST = {"oneOf": [_DOCUMENT, {"type": "array", "items": _DOCUMENT, "minItems": 1}]}
INGEST_RESULTS = inline_serializer(
    "IngestResults",
    {
        "results": inline_serializer(
            "IngestResult",
            {
                "topic": serializers.CharField(),
                "doc_key": serializers.CharField(),
                "doc_version": serializers.IntegerField(),
                "written": serializers.BooleanField(help_text="false: an equal or newer version was already stored"),
                "watermark": serializers.IntegerField(allow_null=True),
                "hydration_required": serializers.BooleanField(),
            },
            many=True,
        )
    },
)


class ProjectionIngestView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [IsService]

    @extend_schema(operation_id="projections_ingest", request={"application/json": INGEST_REQUEST}, responses=responses(200, INGEST_RESULTS))
    def post(self, request):
        content_type = (request.META.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError("unsupported_media_type", "send Content-Type: application/json", 415)
        try:
            writes = decode_body(_read_body(request))
        except IngestError as exc:
            raise ApiError.from_coded(exc) from None
        try:
            results = sink.project_many(writes)
        except sink.SinkError as exc:
            extra = {k: v for k, v in (("index", exc.index), ("field", exc.field)) if v is not None}
            raise ApiError(exc.code, exc.message, sink.ERROR_STATUS.get(exc.code, 422), **extra) from None
        return Response(
            {
                "results": [
                    {
                        "topic": r.topic,
                        "doc_key": r.doc_key,
                        "doc_version": r.doc_version,
                        "written": r.written,
                        "watermark": r.watermark,
                        "hydration_required": r.pointer,
                    }
                    for r in results
                ]
            },
            status=status.HTTP_200_OK,
        )

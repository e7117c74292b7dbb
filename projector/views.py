"""``POST /api/internal/sync/projections``: the sink over HTTP, for runtimes not written in Python.

Service-token auth (``Authorization: Bearer <KHALA_SERVICE_TOKEN>``, constant-time comparison;
unset token → 503). Body: one document or a list; all-or-nothing. Refusals use the fixed error
shape with a stable ``code`` (and ``index``/``field`` of the offending document in a batch).
"""

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError
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


class ProjectionIngestView(APIView):
    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [IsService]

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

"""HTTP hydration endpoints (thin: auth in ``hydration_auth``, reads in ``hydration``).

``GET /api/sync/v1/doc/<topic>/<path:doc_key>`` and ``GET /api/sync/v1/list/<topic>?cursor=&limit=``.
Every response, errors included, carries ``Cache-Control: no-store``: the bodies are per-principal
and a shared cache must never serve one user's documents to another.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError, error_body
from khala_project.openapi import responses
from khala_project.conf import khala_setting
from khala_project.throttling import HydrationThrottle
from sync import hydration
from sync.hydration_auth import SyncTokenAuthentication, TopicEntitlement


class ListQuerySerializer(serializers.Serializer):
    cursor = serializers.CharField(required=False, allow_blank=False, max_length=2048, trim_whitespace=False)
    limit = serializers.IntegerField(required=False, min_value=1)

    def validate_limit(self, value):
        maximum = khala_setting("HYDRATION_PAGE_MAX_SIZE")
        if value > maximum:
            raise serializers.ValidationError(f"at most {maximum}")
        return value


class FreshnessQuerySerializer(serializers.Serializer):
    """What the client already holds of the topic (its cursor): given together, they let a
    streaming replica answer when its snapshot is at least that new (``sync.hydration``)."""

    min_watermark = serializers.IntegerField(required=False, min_value=0)
    stream_epoch = serializers.CharField(required=False, allow_blank=False, max_length=200, trim_whitespace=False)

    def validate(self, attrs):
        if ("min_watermark" in attrs) != ("stream_epoch" in attrs):
            raise serializers.ValidationError({"min_watermark": "min_watermark and stream_epoch go together"})
        return attrs


# Which stable code a failed query field maps to (first failing field wins, in this order).
_FIELD_CODES = (
    ("limit", "invalid_limit"), ("cursor", "invalid_cursor"),
    ("min_watermark", "invalid_min_watermark"), ("stream_epoch", "invalid_min_watermark"),
)
_FRESHNESS_PARAMETERS = [
    OpenApiParameter("min_watermark", int, description="watermark of what the client holds (with stream_epoch)"),
    OpenApiParameter("stream_epoch", str, description="stream epoch of that watermark (with min_watermark)"),
]


def freshness(request) -> "hydration.Need | None":
    """The ``Need`` of ``?min_watermark=&stream_epoch=`` (None without them); 400
    ``invalid_min_watermark`` when they are malformed or only one is given."""
    params = {name: request.query_params[name] for name in ("min_watermark", "stream_epoch") if request.query_params.get(name)}
    query = FreshnessQuerySerializer(data=params)
    if not query.is_valid():
        raise ApiError("invalid_min_watermark", f"{'; '.join(str(e) for errors in query.errors.values() for e in errors)}")
    if "min_watermark" not in query.validated_data:
        return None
    return hydration.Need(query.validated_data["min_watermark"], query.validated_data["stream_epoch"])


DOCUMENT = inline_serializer(
    "HydratedDocument",
    {
        "doc_key": serializers.CharField(),
        "doc_version": serializers.IntegerField(),
        "payload": serializers.JSONField(),
        "payload_hash": serializers.CharField(help_text="base64 SHA-256 of the RFC 8785 canonical payload"),
        "watermark": serializers.IntegerField(),
    },
)
PAGE = inline_serializer(
    "HydrationPage",
    {
        "topic": serializers.CharField(),
        "documents": DOCUMENT.__class__(many=True),
        "head_watermark": serializers.IntegerField(),
        "stream_epoch": serializers.CharField(),
        "next_cursor": serializers.CharField(allow_null=True),
    },
)


class NoStoreAPIView(APIView):
    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        return response


class HydrationView(NoStoreAPIView):
    authentication_classes = [SyncTokenAuthentication]
    permission_classes = [TopicEntitlement]
    # Per token (its jti), shared by every worker through Redis: 429 rate_limited + Retry-After.
    throttle_classes = [HydrationThrottle]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        # DRF puts the challenge on ``exc.auth_header``; the project handler renders ApiError
        # itself, so copy it onto the 401 here.
        auth_header = getattr(exc, "auth_header", None)
        if auth_header and response is not None and response.status_code == 401:
            response["WWW-Authenticate"] = auth_header
        return response

    def run(self, read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except hydration.HydrationError as exc:
            raise ApiError.from_coded(exc) from None


class DocumentView(HydrationView):
    @extend_schema(operation_id="hydration_document", parameters=_FRESHNESS_PARAMETERS, responses=responses(200, DOCUMENT))
    def get(self, request, topic: str, doc_key: str):
        document = self.run(hydration.get_document, topic, doc_key, request.user.org_id, freshness(request))
        return Response(document)


class ListView(HydrationView):
    @extend_schema(
        operation_id="hydration_list",
        parameters=[
            OpenApiParameter("cursor", str, description="next_cursor of the previous page"),
            OpenApiParameter("limit", int, description="page size (default HYDRATION_PAGE_SIZE)"),
            *_FRESHNESS_PARAMETERS,
        ],
        responses=responses(200, PAGE),
    )
    def get(self, request, topic: str):
        # An empty ``cursor=`` / ``limit=`` means "not given" (first page, default size).
        params = {name: request.query_params[name] for name in ("cursor", "limit") if request.query_params.get(name)}
        query = ListQuerySerializer(data=params)
        if not query.is_valid():
            field, code = next((f, c) for f, c in _FIELD_CODES if f in query.errors)
            raise ApiError(code, f"{field}: {'; '.join(str(e) for e in query.errors[field])}")
        limit = query.validated_data.get("limit", khala_setting("HYDRATION_PAGE_SIZE"))
        page = self.run(
            hydration.list_page, topic, request.user.org_id, limit=limit, cursor=query.validated_data.get("cursor"),
            need=freshness(request),
        )
        return Response(
            {
                "topic": topic,
                "documents": page.documents,
                "head_watermark": page.head_watermark,
                "stream_epoch": page.stream_epoch,
                "next_cursor": page.next_cursor,
            }
        )


@extend_schema(exclude=True)  # the 404 of malformed hydration paths, not an operation
class NotFoundView(NoStoreAPIView):
    """Malformed hydration paths (no doc key, extra segments): the API's 404 shape, not Django's page."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request, *args, **kwargs):
        return Response(error_body("not_found", "no such hydration endpoint"), status=404)

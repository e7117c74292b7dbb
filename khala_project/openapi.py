"""What the OpenAPI schema (``/api/schema/``, committed as docs/api/openapi.yaml) says that the views
cannot: the error shape every endpoint shares, and the two bearer schemes Khala defines itself.

Every non-2xx answer of every HTTP API is ``{"error": {"code": <stable string>, "message": <text>,
...extra fields}}`` (``khala_project.api_errors``), so each operation documents its success shape
and points ``default`` at ``Error``. The codes are listed per endpoint in docs/sync/TOKENS.md,
docs/sync/SCHEMA.md, docs/protocol/OA_SYNC_WS_MAPPING.md and docs/sync/OPERATIONS.md.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ERROR = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(help_text="stable, machine-readable; switch on this"),
                "message": serializers.CharField(help_text="for people; never parse it"),
            },
        )
    },
)

ERROR_RESPONSE = OpenApiResponse(ERROR, description="any refusal or failure: the stable `code` says which")


def responses(success_status: int, success, description: str = "") -> dict:
    """An operation's responses: its success shape, and the shared error shape for everything else."""
    return {success_status: OpenApiResponse(success, description=description), "default": ERROR_RESPONSE}


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tokens.authentication.ServiceTokenAuthentication"
    name = "serviceToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "KHALA_SERVICE_TOKEN (internal endpoints)"}


class SyncTokenScheme(OpenApiAuthenticationExtension):
    target_class = "sync.hydration_auth.SyncTokenAuthentication"
    name = "syncToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "a sync token from /api/sync/token"}

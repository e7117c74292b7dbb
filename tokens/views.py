"""HTTP endpoints of the tokens app. Thin: serializers validate, ``tokens.issuer``/``revocation`` decide."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError
from khala_project.conf import khala_setting
from khala_project.openapi import responses
from khala_project.throttling import TokenMintThrottle
from tokens import issuer, keyring, revocation
from tokens.authentication import IsService, ServiceTokenAuthentication
from tokens.serializers import LegacyTokenRequestSerializer, RevokeRequestSerializer, SyncTokenRequestSerializer

# Tokens are credentials: no cache may keep a response.
NO_STORE = {"Cache-Control": "no-store"}


def _mint(mint, unavailable_code: str, **kwargs) -> dict:
    try:
        return mint(**kwargs)
    except issuer.InvalidScope as exc:
        raise ApiError("invalid_scope", str(exc), http_status=422) from None
    except issuer.InvalidTTL as exc:
        raise ApiError("invalid_ttl", str(exc), http_status=422) from None
    except issuer.TokenUnavailable as exc:
        raise ApiError(unavailable_code, f"sync tokens are unavailable: {exc}", http_status=503) from None


_TOKEN_FIELDS = {
    "token": serializers.CharField(),
    "token_type": serializers.CharField(),
    "expires_in": serializers.IntegerField(),
    "issued_at": serializers.DateTimeField(),
    "expires_at": serializers.DateTimeField(),
    "issuer": serializers.CharField(),
    "audience": serializers.CharField(),
    "subject": serializers.CharField(),
    "kid": serializers.CharField(),
    "org_id": serializers.CharField(),
    "session_id": serializers.CharField(),
    "claims_version": serializers.CharField(),
}
SYNC_TOKEN = inline_serializer(
    "SyncTokenResponse",
    {
        "data": inline_serializer(
            "SyncToken",
            {**_TOKEN_FIELDS, "scopes": serializers.ListField(child=serializers.CharField()), "device_id": serializers.CharField()},
        )
    },
)
LEGACY_TOKEN = inline_serializer(
    "LegacyTokenResponse",
    {
        **_TOKEN_FIELDS,
        "scope": serializers.ListField(child=serializers.CharField()),
        "workspace_id": serializers.CharField(allow_null=True),
        "role": serializers.CharField(),
    },
)
REVOCATION = inline_serializer(
    "RevocationResponse",
    {
        "data": inline_serializer(
            "Revocation",
            {
                "revoked_session_ids": serializers.ListField(child=serializers.CharField()),
                "revoked_device_ids": serializers.ListField(child=serializers.CharField()),
                "reason": serializers.CharField(allow_null=True),
                "revoked_at": serializers.CharField(),
            },
        )
    },
)


JWKS = inline_serializer(
    "JWKS",
    {
        "keys": serializers.ListField(
            child=serializers.DictField(), help_text="RFC 7517 public keys (kty, crv or n/e, x/y, kid, alg, use)"
        )
    },
)


class SyncTokenView(APIView):
    """``POST /api/sync/token``: a sync token for the signed-in user (session or API token)."""

    throttle_classes = [TokenMintThrottle]

    @extend_schema(operation_id="sync_token_mint", request=SyncTokenRequestSerializer, responses=responses(200, SYNC_TOKEN))
    def post(self, request):
        serializer = SyncTokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = _mint(issuer.mint_sync_token, "sync_token_unavailable", user=request.user, **serializer.validated_data)
        return Response({"data": data}, headers=NO_STORE)


class LegacyTokenView(APIView):
    """``POST /api/khala/token``: legacy request and flat response; the token is a full sync token."""

    throttle_classes = [TokenMintThrottle]

    @extend_schema(operation_id="khala_token_mint", request=LegacyTokenRequestSerializer, responses=responses(200, LEGACY_TOKEN))
    def post(self, request):
        serializer = LegacyTokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = _mint(issuer.mint_legacy_token, "khala_token_unavailable", user=request.user, **serializer.validated_data)
        return Response(data, headers=NO_STORE)


class JWKSView(APIView):
    """``GET /.well-known/jwks.json``: the public keys of the ring (EdDSA/ES256/RS256 only), with kid.

    Public and cacheable: it holds no secret, and verifiers elsewhere are expected to cache it
    (``JWKS_CACHE_MAX_AGE_SECONDS``). HS256 keys are never listed. A broken ring answers 503
    ``jwks_unavailable`` with ``no-store``, so no cache keeps the failure.
    """

    authentication_classes: list = []
    permission_classes: list = []

    @extend_schema(operation_id="jwks", responses=responses(200, JWKS))
    def get(self, request):
        try:
            ring = keyring.load_keyring()
        except keyring.KeyringMisconfigured as exc:
            raise ApiError("jwks_unavailable", f"signing keys are unavailable: {exc}", http_status=503) from None
        max_age = int(khala_setting("JWKS_CACHE_MAX_AGE_SECONDS"))
        return Response(ring.jwks(), headers={"Cache-Control": f"public, max-age={max_age}"})

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        response["Cache-Control"] = "no-store"
        return response


class RevokeSessionsView(APIView):
    """``POST /api/internal/sync/sessions/revoke`` (service token)."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [IsService]

    @extend_schema(operation_id="sync_sessions_revoke", request=RevokeRequestSerializer, responses=responses(200, REVOCATION))
    def post(self, request):
        serializer = RevokeRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
        try:
            result = revocation.revoke(fields.get("session_ids"), fields.get("device_ids"), fields.get("reason"))
        except revocation.InvalidRevocation as exc:
            raise ApiError("invalid_request", str(exc), http_status=400) from None
        result["revoked_at"] = result["revoked_at"].isoformat().replace("+00:00", "Z")
        return Response({"data": result}, headers=NO_STORE)

"""Request shapes of the token endpoints. Types and syntax here; grant policy in ``tokens.issuer``."""

from rest_framework import serializers

from tokens.issuer import ID_PATTERN, LEGACY_ROLES, MAX_SCOPE_LENGTH
from tokens.revocation import MAX_ID_LENGTH, MAX_IDS_PER_KIND

_ID_MESSAGE = "must be 1-128 characters of [A-Za-z0-9._:@/-]"


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: DRF's IntegerField would accept "300", 300.0 and true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string only: DRF's CharField would turn 42 into "42"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictRegexField(serializers.RegexField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _scope_list():
    return serializers.ListField(
        child=StrictCharField(max_length=MAX_SCOPE_LENGTH),
        required=False,
        allow_empty=True,
        max_length=64,
    )


def _id_field(**kwargs):
    return StrictRegexField(ID_PATTERN, error_messages={"invalid": _ID_MESSAGE}, **kwargs)


class SyncTokenRequestSerializer(serializers.Serializer):
    scopes = _scope_list()
    ttl_seconds = StrictIntegerField(required=False)
    device_id = _id_field(required=False)
    # Continue this session (a `sync:refresh` token must name the socket's session); default: a new one.
    session_id = _id_field(required=False)


class LegacyTokenRequestSerializer(serializers.Serializer):
    scope = _scope_list()
    workspace_id = _id_field(required=False, allow_null=True)
    role = serializers.ChoiceField(choices=LEGACY_ROLES, required=False, allow_null=True)
    session_id = _id_field(required=False)


class RevokeRequestSerializer(serializers.Serializer):
    session_ids = serializers.ListField(
        child=StrictCharField(max_length=MAX_ID_LENGTH), required=False, max_length=MAX_IDS_PER_KIND
    )
    device_ids = serializers.ListField(
        child=StrictCharField(max_length=MAX_ID_LENGTH), required=False, max_length=MAX_IDS_PER_KIND
    )
    reason = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=64)

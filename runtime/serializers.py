"""Validation of the runtime command API (DRF serializers); views stay thin."""

import re

from rest_framework import serializers

from projector.payload_hash import PayloadHashError, canonical_json
from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent

EVENT_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z")
MAX_EVENT_PAYLOAD_BYTES = 64 * 1024


def _json_object(value, field: str, max_bytes: int = MAX_EVENT_PAYLOAD_BYTES) -> dict:
    if not isinstance(value, dict):
        raise serializers.ValidationError(f"{field} must be a JSON object")
    try:
        size = len(canonical_json(value))
    except PayloadHashError as exc:
        raise serializers.ValidationError(str(exc)) from None
    if size > max_bytes:
        raise serializers.ValidationError(f"{field} is {size} bytes; the limit is {max_bytes}")
    return value


class RunSerializer(serializers.ModelSerializer):
    owner_user_id = serializers.IntegerField(source="owner_id", read_only=True)

    class Meta:
        model = Run
        fields = [
            "id", "owner_user_id", "thread_id", "status", "latest_seq", "terminal_reason_class",
            "terminal_reason", "terminal_at", "created_at", "updated_at",
        ]
        read_only_fields = [
            "id", "owner_user_id", "status", "latest_seq", "terminal_reason_class", "terminal_reason",
            "terminal_at", "created_at", "updated_at",
        ]
        extra_kwargs = {"thread_id": {"required": False, "allow_blank": True, "max_length": 128}}


class RunEventSerializer(serializers.ModelSerializer):
    run_id = serializers.CharField(read_only=True)
    payload = serializers.JSONField(required=False, default=dict)

    class Meta:
        model = RunEvent
        fields = ["run_id", "seq", "event_type", "payload", "created_at"]
        read_only_fields = ["run_id", "seq", "created_at"]

    def validate_event_type(self, value: str) -> str:
        if len(value) > 64 or not EVENT_TYPE_RE.match(value):
            raise serializers.ValidationError("event_type must look like 'run.started' (lowercase, dotted, <= 64)")
        return value

    def validate_payload(self, value):
        return _json_object(value, "payload")


class CodexWorkerSerializer(serializers.ModelSerializer):
    owner_user_id = serializers.IntegerField(source="owner_id", read_only=True)
    metadata = serializers.JSONField(required=False, default=dict)

    class Meta:
        model = CodexWorker
        fields = [
            "id", "owner_user_id", "status", "workspace_ref", "codex_home_ref", "adapter", "metadata",
            "latest_seq", "started_at", "stopped_at", "last_heartbeat_at", "created_at", "updated_at",
        ]
        read_only_fields = [
            "id", "owner_user_id", "status", "latest_seq", "started_at", "stopped_at", "last_heartbeat_at",
            "created_at", "updated_at",
        ]
        extra_kwargs = {f: {"required": False, "allow_blank": True} for f in ("workspace_ref", "codex_home_ref", "adapter")}

    def validate_metadata(self, value):
        return _json_object(value, "metadata", 16 * 1024)


class CodexWorkerEventSerializer(serializers.ModelSerializer):
    worker_id = serializers.CharField(read_only=True)
    payload = serializers.JSONField(required=False, default=dict)

    class Meta:
        model = CodexWorkerEvent
        fields = ["worker_id", "seq", "event_type", "payload", "created_at"]
        read_only_fields = ["worker_id", "seq", "created_at"]

    validate_event_type = RunEventSerializer.validate_event_type
    validate_payload = RunEventSerializer.validate_payload


class EventListQuery(serializers.Serializer):
    after_seq = serializers.IntegerField(min_value=0, required=False, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=500, required=False, default=100)

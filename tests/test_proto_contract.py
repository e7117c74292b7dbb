"""The openagents.sync.v1 contract (ADR-0002): the generated modules load on the pinned protobuf
runtime, the enums carry every topic and error code the server speaks, and each message survives a
proto-JSON round trip with the snake_case field names the JSON frames use.

buf lint, buf breaking and the regeneration check run outside pytest (`make test-proto`)."""

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from openagents.sync.v1 import errors_pb2, sync_pb2, topics_pb2

WIRE_TOPICS = {
    "SYNC_TOPIC_RUNTIME_RUN_SUMMARIES": "runtime.run_summaries",
    "SYNC_TOPIC_RUNTIME_CODEX_WORKER_SUMMARIES": "runtime.codex_worker_summaries",
    "SYNC_TOPIC_RUNTIME_CODEX_WORKER_EVENTS": "runtime.codex_worker_events",
    "SYNC_TOPIC_RUNTIME_NOTIFICATIONS": "runtime.notifications",
}

REQUIRED_ERROR_CODES = {
    "unauthorized",
    "forbidden_topic",
    "bad_subscription",
    "stale_cursor",
    "payload_too_large",
    "rate_limited",
    "internal",
    "slow_consumer",
    "reauth_required",
    "upgrade_required",
    "bad_topic",
    "malformed_frame",
    "unknown_event",
    "heartbeat_timeout",
}


def enum_options(enum_type, extension):
    """{value name: option value} for every value of a generated enum."""
    return {
        value.name: value.GetOptions().Extensions[extension] for value in enum_type.DESCRIPTOR.values
    }


def test_modules_share_one_package_and_the_three_files():
    files = {module.DESCRIPTOR.name for module in (sync_pb2, topics_pb2, errors_pb2)}
    assert files == {
        "openagents/sync/v1/sync.proto",
        "openagents/sync/v1/topics.proto",
        "openagents/sync/v1/errors.proto",
    }
    assert {module.DESCRIPTOR.package for module in (sync_pb2, topics_pb2, errors_pb2)} == {"openagents.sync.v1"}


def test_sync_topic_registers_exactly_the_four_wire_names():
    names = enum_options(topics_pb2.SyncTopic, topics_pb2.topic_name)
    assert names.pop("SYNC_TOPIC_UNSPECIFIED") == ""
    assert topics_pb2.SyncTopic.Value("SYNC_TOPIC_UNSPECIFIED") == 0
    assert names == WIRE_TOPICS


def test_sync_error_code_covers_the_codes_the_server_sends():
    codes = enum_options(errors_pb2.SyncErrorCode, errors_pb2.error_code)
    assert codes.pop("SYNC_ERROR_CODE_UNSPECIFIED") == ""
    assert errors_pb2.SyncErrorCode.Value("SYNC_ERROR_CODE_UNSPECIFIED") == 0
    assert REQUIRED_ERROR_CODES <= set(codes.values())
    # The wire code is the lowercase suffix of the enum name, so either spelling identifies a code.
    for name, code in codes.items():
        assert name == "SYNC_ERROR_CODE_" + code.upper()
    assert len(set(codes.values())) == len(codes)
    numbers = [value.number for value in errors_pb2.SyncErrorCode.DESCRIPTOR.values]
    assert len(set(numbers)) == len(numbers)


def test_khala_frame_kinds():
    assert list(sync_pb2.KhalaFrameKind.keys()) == [
        "KHALA_FRAME_KIND_UNSPECIFIED",
        "KHALA_FRAME_KIND_SUBSCRIBED",
        "KHALA_FRAME_KIND_UPDATE_BATCH",
        "KHALA_FRAME_KIND_HEARTBEAT",
        "KHALA_FRAME_KIND_ERROR",
    ]


def field_types(message_cls):
    types = {}
    for field in message_cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            kind = field.message_type.name
        elif field.type == FieldDescriptor.TYPE_ENUM:
            kind = field.enum_type.name
        else:
            kind = {
                FieldDescriptor.TYPE_STRING: "string",
                FieldDescriptor.TYPE_BYTES: "bytes",
                FieldDescriptor.TYPE_INT64: "int64",
                FieldDescriptor.TYPE_INT32: "int32",
                FieldDescriptor.TYPE_BOOL: "bool",
            }[field.type]
        repeated = field.is_repeated
        types[field.name] = ("repeated " if repeated else "") + kind
    return types


# The shapes the delivery code and the clients rely on; a change here is a contract change (ADR-0002).
EXPECTED_FIELDS = {
    "TopicCursor": {"topic": "string", "watermark": "int64", "stream_epoch": "string"},
    "TopicWatermark": {"topic": "string", "watermark": "int64", "stream_epoch": "string", "head_watermark": "int64"},
    "Join": {"frames": "bool"},
    "Joined": {
        "subscription_id": "string",
        "allowed_topics": "repeated string",
        "current_watermarks": "repeated TopicWatermark",
        "heartbeat_interval_ms": "int32",
        "heartbeat_timeout_ms": "int32",
        "replay_batch_max_size": "int32",
        "protocol_version": "string",
    },
    "Subscribe": {
        "topics": "repeated string",
        "resume_after": "repeated TopicCursor",
        "request_id": "string",
        "replay_batch_size": "int32",
    },
    "Subscribed": {
        "subscription_id": "string",
        "topics": "repeated string",
        "current_watermarks": "repeated TopicWatermark",
        "request_id": "string",
    },
    "Unsubscribe": {"topics": "repeated string"},
    "Unsubscribed": {"subscription_id": "string", "topics": "repeated string"},
    "Update": {
        "topic": "string",
        "doc_key": "string",
        "doc_version": "int64",
        "payload": "bytes",
        "watermark": "int64",
        "payload_hash": "bytes",
        "hydration_required": "bool",
    },
    "UpdateBatch": {
        "updates": "repeated Update",
        "replay_complete": "bool",
        "head_watermarks": "repeated TopicWatermark",
    },
    "Heartbeat": {"watermarks": "repeated TopicWatermark"},
    "StaleTopic": {
        "topic": "string",
        "reason": "string",
        "resume_after": "int64",
        "retention_floor": "int64",
        "head_watermark": "int64",
        "replay_lag": "int64",
        "replay_budget_events": "int64",
        "stream_epoch": "string",
        "qos_tier": "string",
    },
    "SnapshotPlan": {"format": "string", "topics": "repeated SnapshotTopic"},
    "SnapshotTopic": {
        "topic": "string",
        "head_watermark": "int64",
        "stream_epoch": "string",
        "snapshot_enabled": "bool",
        "list_url": "string",
    },
    "Error": {
        "code": "SyncErrorCode",
        "message": "string",
        "retry_after_ms": "int64",
        "full_resync_required": "bool",
        "forbidden_topics": "repeated string",
        "stale_topics": "repeated StaleTopic",
        "reason_codes": "repeated string",
        "reauth_required": "bool",
        "upgrade_required": "bool",
        "action": "string",
        "queue_limit": "int32",
        "reason": "string",
        "event": "string",
        "limit_bytes": "int64",
        "snapshot": "SnapshotPlan",
        "retryable": "bool",
        "surface": "string",
        "min_client_build_id": "string",
        "max_client_build_id": "string",
        "min_schema_version": "int32",
        "max_schema_version": "int32",
        "protocol_version": "string",
    },
    "KhalaFrame": {
        "topic": "string",
        "seq": "int64",
        "kind": "KhalaFrameKind",
        "payload_bytes": "bytes",
        "schema_version": "int32",
    },
}


def test_every_message_has_the_expected_fields():
    assert set(sync_pb2.DESCRIPTOR.message_types_by_name) == set(EXPECTED_FIELDS)
    for name, fields in EXPECTED_FIELDS.items():
        assert field_types(getattr(sync_pb2, name)) == fields, name


HASH = bytes(range(32))

# One fully populated instance per message (every field non-default), used for the round trips.
SAMPLES = {
    "TopicCursor": sync_pb2.TopicCursor(topic="runtime.run_summaries", watermark=41, stream_epoch="9b1e"),
    "TopicWatermark": sync_pb2.TopicWatermark(
        topic="runtime.notifications", watermark=7, stream_epoch="9b1e", head_watermark=9
    ),
    "Join": sync_pb2.Join(frames=True),
    "Joined": sync_pb2.Joined(
        subscription_id="sub_1",
        allowed_topics=["runtime.run_summaries"],
        current_watermarks=[sync_pb2.TopicWatermark(topic="runtime.run_summaries", watermark=3)],
        heartbeat_interval_ms=15000,
        heartbeat_timeout_ms=60000,
        replay_batch_max_size=200,
        protocol_version="khala.ws.v1",
    ),
    "Subscribe": sync_pb2.Subscribe(
        topics=["runtime.run_summaries", "runtime.codex_worker_events"],
        resume_after=[sync_pb2.TopicCursor(topic="runtime.run_summaries", watermark=2**53 - 1)],
        request_id="req-1",
        replay_batch_size=200,
    ),
    "Subscribed": sync_pb2.Subscribed(
        subscription_id="sub_1",
        topics=["runtime.run_summaries"],
        current_watermarks=[sync_pb2.TopicWatermark(topic="runtime.run_summaries", watermark=12)],
        request_id="req-1",
    ),
    "Unsubscribe": sync_pb2.Unsubscribe(topics=["runtime.notifications"]),
    "Unsubscribed": sync_pb2.Unsubscribed(subscription_id="sub_1", topics=["runtime.run_summaries"]),
    "Update": sync_pb2.Update(
        topic="runtime.run_summaries",
        doc_key="runtime/run_summary:run_1",
        doc_version=9,
        payload=b'{"status":"running"}',
        watermark=12,
        payload_hash=HASH,
        hydration_required=True,
    ),
    "UpdateBatch": sync_pb2.UpdateBatch(
        updates=[sync_pb2.Update(topic="runtime.run_summaries", doc_key="k", doc_version=1, watermark=1)],
        replay_complete=True,
        head_watermarks=[sync_pb2.TopicWatermark(topic="runtime.run_summaries", watermark=1)],
    ),
    "Heartbeat": sync_pb2.Heartbeat(
        watermarks=[sync_pb2.TopicWatermark(topic="runtime.codex_worker_summaries", watermark=5)]
    ),
    "StaleTopic": sync_pb2.StaleTopic(
        topic="runtime.run_summaries",
        reason="replay_budget_exceeded",
        resume_after=1,
        retention_floor=10,
        head_watermark=50,
        replay_lag=49,
        replay_budget_events=20,
        stream_epoch="9b1e",
        qos_tier="warm",
    ),
    "SnapshotPlan": sync_pb2.SnapshotPlan(
        format="openagents.sync.snapshot.v1",
        topics=[sync_pb2.SnapshotTopic(topic="runtime.run_summaries", head_watermark=50)],
    ),
    "SnapshotTopic": sync_pb2.SnapshotTopic(
        topic="runtime.run_summaries",
        head_watermark=50,
        stream_epoch="9b1e",
        snapshot_enabled=True,
        list_url="/api/sync/v1/list/runtime.run_summaries",
    ),
    "Error": sync_pb2.Error(
        code=errors_pb2.SYNC_ERROR_CODE_STALE_CURSOR,
        message="cursor is older than retention floor",
        retry_after_ms=1500,
        full_resync_required=True,
        forbidden_topics=["runtime.notifications"],
        stale_topics=[
            sync_pb2.StaleTopic(topic="runtime.run_summaries", reason="retention_floor_breach", retention_floor=4)
        ],
        reason_codes=["retention_floor_breach"],
        reauth_required=True,
        upgrade_required=True,
        action="disconnect",
        queue_limit=256,
        reason="token_expired",
        event="sync:nope",
        limit_bytes=1048576,
        snapshot=sync_pb2.SnapshotPlan(format="openagents.sync.snapshot.v1"),
        retryable=True,
        surface="khala_websocket",
        min_client_build_id="20260221T120000Z",
        max_client_build_id="20270101T000000Z",
        min_schema_version=1,
        max_schema_version=1,
        protocol_version="khala.ws.v1",
    ),
    "KhalaFrame": sync_pb2.KhalaFrame(
        topic="runtime.run_summaries",
        seq=12,
        kind=sync_pb2.KHALA_FRAME_KIND_UPDATE_BATCH,
        payload_bytes=b'{"updates":[]}',
        schema_version=1,
    ),
}


def test_samples_cover_every_message_with_every_field_set():
    assert set(SAMPLES) == set(sync_pb2.DESCRIPTOR.message_types_by_name)
    for name, message in SAMPLES.items():
        unset = [f.name for f in message.DESCRIPTOR.fields if not _is_set(message, f)]
        assert unset == [], f"{name}: the round trip would not exercise {unset}"


def _is_set(message, field):
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message.HasField(field.name)
    return getattr(message, field.name) != field.default_value


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_proto_json_round_trip(name):
    message = SAMPLES[name]
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    # The JSON frames use the proto field names (snake_case) and enum value names.
    assert set(as_dict) == {field.name for field in message.DESCRIPTOR.fields}
    parsed = json_format.ParseDict(as_dict, type(message)())
    assert parsed == message
    text = json_format.MessageToJson(message, preserving_proto_field_name=True)
    assert json_format.Parse(text, type(message)()) == message
    assert type(message).FromString(message.SerializeToString()) == message


def test_wire_shaped_json_parses_with_numbers_and_enum_names():
    """What a JSON frame actually carries: plain JSON numbers for watermarks, base64 bytes, enum names."""
    error = json_format.ParseDict(
        {"code": "SYNC_ERROR_CODE_FORBIDDEN_TOPIC", "message": "topic not allowed", "forbidden_topics": ["x"]},
        sync_pb2.Error(),
    )
    assert error.code == errors_pb2.SYNC_ERROR_CODE_FORBIDDEN_TOPIC
    update = json_format.ParseDict(
        {"topic": "runtime.run_summaries", "doc_key": "k", "doc_version": 3, "watermark": 2**53 - 1,
         "payload_hash": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "hydration_required": False},
        sync_pb2.Update(),
    )
    assert update.watermark == 2**53 - 1
    assert update.payload_hash == HASH
    frame = json_format.ParseDict({"kind": "KHALA_FRAME_KIND_ERROR", "seq": 0, "schema_version": 1},
                                  sync_pb2.KhalaFrame())
    assert frame.kind == sync_pb2.KHALA_FRAME_KIND_ERROR


@pytest.mark.parametrize(
    "message_cls, payload",
    [
        (sync_pb2.Subscribe, {"topics": ["runtime.run_summaries"], "resumeAfterX": []}),
        (sync_pb2.Error, {"code": "stale_cursor"}),  # wire codes are mapped by the codec, not by proto-JSON
        (sync_pb2.TopicCursor, {"topic": "runtime.run_summaries", "watermark": "not-a-number"}),
        (sync_pb2.Update, {"payload_hash": 12}),  # bytes are base64 strings
    ],
)
def test_proto_json_rejects_what_is_not_in_the_schema(message_cls, payload):
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(payload, message_cls())


watermarks = st.integers(min_value=0, max_value=2**63 - 1)


@given(
    topic=st.sampled_from(sorted(WIRE_TOPICS.values())),
    doc_key=st.text(max_size=40),
    doc_version=watermarks,
    watermark=watermarks,
    payload=st.binary(max_size=64),
    payload_hash=st.binary(min_size=32, max_size=32),
    hydration_required=st.booleans(),
)
def test_update_round_trips_for_any_values(topic, doc_key, doc_version, watermark, payload, payload_hash,
                                           hydration_required):
    update = sync_pb2.Update(topic=topic, doc_key=doc_key, doc_version=doc_version, watermark=watermark,
                             payload=payload, payload_hash=payload_hash, hydration_required=hydration_required)
    text = json_format.MessageToJson(update, preserving_proto_field_name=True)
    assert json_format.Parse(text, sync_pb2.Update()) == update

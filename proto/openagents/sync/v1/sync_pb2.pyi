from openagents.sync.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KhalaFrameKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KHALA_FRAME_KIND_UNSPECIFIED: _ClassVar[KhalaFrameKind]
    KHALA_FRAME_KIND_SUBSCRIBED: _ClassVar[KhalaFrameKind]
    KHALA_FRAME_KIND_UPDATE_BATCH: _ClassVar[KhalaFrameKind]
    KHALA_FRAME_KIND_HEARTBEAT: _ClassVar[KhalaFrameKind]
    KHALA_FRAME_KIND_ERROR: _ClassVar[KhalaFrameKind]
KHALA_FRAME_KIND_UNSPECIFIED: KhalaFrameKind
KHALA_FRAME_KIND_SUBSCRIBED: KhalaFrameKind
KHALA_FRAME_KIND_UPDATE_BATCH: KhalaFrameKind
KHALA_FRAME_KIND_HEARTBEAT: KhalaFrameKind
KHALA_FRAME_KIND_ERROR: KhalaFrameKind

class TopicCursor(_message.Message):
    __slots__ = ("topic", "watermark", "stream_epoch")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    STREAM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    topic: str
    watermark: int
    stream_epoch: str
    def __init__(self, topic: _Optional[str] = ..., watermark: _Optional[int] = ..., stream_epoch: _Optional[str] = ...) -> None: ...

class TopicWatermark(_message.Message):
    __slots__ = ("topic", "watermark", "stream_epoch", "head_watermark")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    STREAM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    topic: str
    watermark: int
    stream_epoch: str
    head_watermark: int
    def __init__(self, topic: _Optional[str] = ..., watermark: _Optional[int] = ..., stream_epoch: _Optional[str] = ..., head_watermark: _Optional[int] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: bool
    def __init__(self, frames: _Optional[bool] = ...) -> None: ...

class Joined(_message.Message):
    __slots__ = ("subscription_id", "allowed_topics", "current_watermarks", "heartbeat_interval_ms", "heartbeat_timeout_ms", "replay_batch_max_size", "protocol_version")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOPICS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WATERMARKS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BATCH_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    allowed_topics: _containers.RepeatedScalarFieldContainer[str]
    current_watermarks: _containers.RepeatedCompositeFieldContainer[TopicWatermark]
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    replay_batch_max_size: int
    protocol_version: str
    def __init__(self, subscription_id: _Optional[str] = ..., allowed_topics: _Optional[_Iterable[str]] = ..., current_watermarks: _Optional[_Iterable[_Union[TopicWatermark, _Mapping]]] = ..., heartbeat_interval_ms: _Optional[int] = ..., heartbeat_timeout_ms: _Optional[int] = ..., replay_batch_max_size: _Optional[int] = ..., protocol_version: _Optional[str] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("topics", "resume_after", "request_id", "replay_batch_size")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    resume_after: _containers.RepeatedCompositeFieldContainer[TopicCursor]
    request_id: str
    replay_batch_size: int
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., resume_after: _Optional[_Iterable[_Union[TopicCursor, _Mapping]]] = ..., request_id: _Optional[str] = ..., replay_batch_size: _Optional[int] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("subscription_id", "topics", "current_watermarks", "request_id")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WATERMARKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    current_watermarks: _containers.RepeatedCompositeFieldContainer[TopicWatermark]
    request_id: str
    def __init__(self, subscription_id: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., current_watermarks: _Optional[_Iterable[_Union[TopicWatermark, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topics: _Optional[_Iterable[str]] = ...) -> None: ...

class Unsubscribed(_message.Message):
    __slots__ = ("subscription_id", "topics")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subscription_id: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("topic", "doc_key", "doc_version", "payload", "watermark", "payload_hash", "hydration_required")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DOC_KEY_FIELD_NUMBER: _ClassVar[int]
    DOC_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HASH_FIELD_NUMBER: _ClassVar[int]
    HYDRATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    topic: str
    doc_key: str
    doc_version: int
    payload: bytes
    watermark: int
    payload_hash: bytes
    hydration_required: bool
    def __init__(self, topic: _Optional[str] = ..., doc_key: _Optional[str] = ..., doc_version: _Optional[int] = ..., payload: _Optional[bytes] = ..., watermark: _Optional[int] = ..., payload_hash: _Optional[bytes] = ..., hydration_required: _Optional[bool] = ...) -> None: ...

class UpdateBatch(_message.Message):
    __slots__ = ("updates", "replay_complete", "head_watermarks")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    REPLAY_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    HEAD_WATERMARKS_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[Update]
    replay_complete: bool
    head_watermarks: _containers.RepeatedCompositeFieldContainer[TopicWatermark]
    def __init__(self, updates: _Optional[_Iterable[_Union[Update, _Mapping]]] = ..., replay_complete: _Optional[bool] = ..., head_watermarks: _Optional[_Iterable[_Union[TopicWatermark, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("watermarks",)
    WATERMARKS_FIELD_NUMBER: _ClassVar[int]
    watermarks: _containers.RepeatedCompositeFieldContainer[TopicWatermark]
    def __init__(self, watermarks: _Optional[_Iterable[_Union[TopicWatermark, _Mapping]]] = ...) -> None: ...

class StaleTopic(_message.Message):
    __slots__ = ("topic", "reason", "resume_after", "retention_floor", "head_watermark", "replay_lag", "replay_budget_events", "stream_epoch", "qos_tier")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    HEAD_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    REPLAY_LAG_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BUDGET_EVENTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    QOS_TIER_FIELD_NUMBER: _ClassVar[int]
    topic: str
    reason: str
    resume_after: int
    retention_floor: int
    head_watermark: int
    replay_lag: int
    replay_budget_events: int
    stream_epoch: str
    qos_tier: str
    def __init__(self, topic: _Optional[str] = ..., reason: _Optional[str] = ..., resume_after: _Optional[int] = ..., retention_floor: _Optional[int] = ..., head_watermark: _Optional[int] = ..., replay_lag: _Optional[int] = ..., replay_budget_events: _Optional[int] = ..., stream_epoch: _Optional[str] = ..., qos_tier: _Optional[str] = ...) -> None: ...

class SnapshotPlan(_message.Message):
    __slots__ = ("format", "topics")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    format: str
    topics: _containers.RepeatedCompositeFieldContainer[SnapshotTopic]
    def __init__(self, format: _Optional[str] = ..., topics: _Optional[_Iterable[_Union[SnapshotTopic, _Mapping]]] = ...) -> None: ...

class SnapshotTopic(_message.Message):
    __slots__ = ("topic", "head_watermark", "stream_epoch", "snapshot_enabled", "list_url")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    HEAD_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    STREAM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    LIST_URL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    head_watermark: int
    stream_epoch: str
    snapshot_enabled: bool
    list_url: str
    def __init__(self, topic: _Optional[str] = ..., head_watermark: _Optional[int] = ..., stream_epoch: _Optional[str] = ..., snapshot_enabled: _Optional[bool] = ..., list_url: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms", "full_resync_required", "forbidden_topics", "stale_topics", "reason_codes", "reauth_required", "upgrade_required", "action", "queue_limit", "reason", "event", "limit_bytes", "snapshot", "retryable", "surface", "min_client_build_id", "max_client_build_id", "min_schema_version", "max_schema_version", "protocol_version")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    FULL_RESYNC_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FORBIDDEN_TOPICS_FIELD_NUMBER: _ClassVar[int]
    STALE_TOPICS_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    REAUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    UPGRADE_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENT_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENT_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    code: _errors_pb2.SyncErrorCode
    message: str
    retry_after_ms: int
    full_resync_required: bool
    forbidden_topics: _containers.RepeatedScalarFieldContainer[str]
    stale_topics: _containers.RepeatedCompositeFieldContainer[StaleTopic]
    reason_codes: _containers.RepeatedScalarFieldContainer[str]
    reauth_required: bool
    upgrade_required: bool
    action: str
    queue_limit: int
    reason: str
    event: str
    limit_bytes: int
    snapshot: SnapshotPlan
    retryable: bool
    surface: str
    min_client_build_id: str
    max_client_build_id: str
    min_schema_version: int
    max_schema_version: int
    protocol_version: str
    def __init__(self, code: _Optional[_Union[_errors_pb2.SyncErrorCode, str]] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., full_resync_required: _Optional[bool] = ..., forbidden_topics: _Optional[_Iterable[str]] = ..., stale_topics: _Optional[_Iterable[_Union[StaleTopic, _Mapping]]] = ..., reason_codes: _Optional[_Iterable[str]] = ..., reauth_required: _Optional[bool] = ..., upgrade_required: _Optional[bool] = ..., action: _Optional[str] = ..., queue_limit: _Optional[int] = ..., reason: _Optional[str] = ..., event: _Optional[str] = ..., limit_bytes: _Optional[int] = ..., snapshot: _Optional[_Union[SnapshotPlan, _Mapping]] = ..., retryable: _Optional[bool] = ..., surface: _Optional[str] = ..., min_client_build_id: _Optional[str] = ..., max_client_build_id: _Optional[str] = ..., min_schema_version: _Optional[int] = ..., max_schema_version: _Optional[int] = ..., protocol_version: _Optional[str] = ...) -> None: ...

class KhalaFrame(_message.Message):
    __slots__ = ("topic", "seq", "kind", "payload_bytes", "schema_version")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    seq: int
    kind: KhalaFrameKind
    payload_bytes: bytes
    schema_version: int
    def __init__(self, topic: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[KhalaFrameKind, str]] = ..., payload_bytes: _Optional[bytes] = ..., schema_version: _Optional[int] = ...) -> None: ...

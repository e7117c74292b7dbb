from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class SyncTopic(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_TOPIC_UNSPECIFIED: _ClassVar[SyncTopic]
    SYNC_TOPIC_RUNTIME_RUN_SUMMARIES: _ClassVar[SyncTopic]
    SYNC_TOPIC_RUNTIME_CODEX_WORKER_SUMMARIES: _ClassVar[SyncTopic]
    SYNC_TOPIC_RUNTIME_CODEX_WORKER_EVENTS: _ClassVar[SyncTopic]
    SYNC_TOPIC_RUNTIME_NOTIFICATIONS: _ClassVar[SyncTopic]
SYNC_TOPIC_UNSPECIFIED: SyncTopic
SYNC_TOPIC_RUNTIME_RUN_SUMMARIES: SyncTopic
SYNC_TOPIC_RUNTIME_CODEX_WORKER_SUMMARIES: SyncTopic
SYNC_TOPIC_RUNTIME_CODEX_WORKER_EVENTS: SyncTopic
SYNC_TOPIC_RUNTIME_NOTIFICATIONS: SyncTopic
TOPIC_NAME_FIELD_NUMBER: _ClassVar[int]
topic_name: _descriptor.FieldDescriptor

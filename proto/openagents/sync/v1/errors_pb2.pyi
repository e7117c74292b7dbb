from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class SyncErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_ERROR_CODE_UNSPECIFIED: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_UNAUTHORIZED: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_FORBIDDEN_TOPIC: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_BAD_SUBSCRIPTION: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_STALE_CURSOR: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_PAYLOAD_TOO_LARGE: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_RATE_LIMITED: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_INTERNAL: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_SLOW_CONSUMER: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_REAUTH_REQUIRED: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_UPGRADE_REQUIRED: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_BAD_TOPIC: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_MALFORMED_FRAME: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_UNKNOWN_EVENT: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_HEARTBEAT_TIMEOUT: _ClassVar[SyncErrorCode]
    SYNC_ERROR_CODE_TOKEN_EXPIRED: _ClassVar[SyncErrorCode]
SYNC_ERROR_CODE_UNSPECIFIED: SyncErrorCode
SYNC_ERROR_CODE_UNAUTHORIZED: SyncErrorCode
SYNC_ERROR_CODE_FORBIDDEN_TOPIC: SyncErrorCode
SYNC_ERROR_CODE_BAD_SUBSCRIPTION: SyncErrorCode
SYNC_ERROR_CODE_STALE_CURSOR: SyncErrorCode
SYNC_ERROR_CODE_PAYLOAD_TOO_LARGE: SyncErrorCode
SYNC_ERROR_CODE_RATE_LIMITED: SyncErrorCode
SYNC_ERROR_CODE_INTERNAL: SyncErrorCode
SYNC_ERROR_CODE_SLOW_CONSUMER: SyncErrorCode
SYNC_ERROR_CODE_REAUTH_REQUIRED: SyncErrorCode
SYNC_ERROR_CODE_UPGRADE_REQUIRED: SyncErrorCode
SYNC_ERROR_CODE_BAD_TOPIC: SyncErrorCode
SYNC_ERROR_CODE_MALFORMED_FRAME: SyncErrorCode
SYNC_ERROR_CODE_UNKNOWN_EVENT: SyncErrorCode
SYNC_ERROR_CODE_HEARTBEAT_TIMEOUT: SyncErrorCode
SYNC_ERROR_CODE_TOKEN_EXPIRED: SyncErrorCode
ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
error_code: _descriptor.FieldDescriptor

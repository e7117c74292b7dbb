"""Python client for Khala: an asyncio ``KhalaClient``, document cache, stores and the ``khala`` CLI."""

from .backoff import Backoff
from .cache import DocumentCache, MergeResult, merge
from .client import (
    BatchApplied,
    ErrorEvent,
    HeartbeatReceived,
    KhalaClient,
    RateLimited,
    Reconnecting,
    RefreshFailed,
    SnapshotLoaded,
    StaleCursor,
    State,
    StateChanged,
    TokenRefreshed,
)
from .clock import Clock, FakeClock
from .errors import AuthError, DeadSocket, FatalError, KhalaError, TransientError
from .http import HttpApi, HttpError, api_token_provider
from .refresh import TokenClaims, TokenRefresher, token_claims
from .stores import Document, MemoryStore, SQLiteStore, TopicState, WatermarkStore
from .version import PROTOCOL_VERSION, __version__

__all__ = [
    "AuthError", "Backoff", "BatchApplied", "Clock", "DeadSocket", "Document", "DocumentCache", "ErrorEvent",
    "FakeClock", "FatalError", "HeartbeatReceived", "HttpApi", "HttpError", "KhalaClient", "KhalaError",
    "MemoryStore", "MergeResult", "RateLimited", "Reconnecting", "RefreshFailed", "SQLiteStore", "SnapshotLoaded", "StaleCursor", "State",
    "StateChanged", "TokenClaims", "TokenRefreshed", "TokenRefresher", "TopicState", "TransientError", "WatermarkStore", "PROTOCOL_VERSION", "__version__",
    "api_token_provider", "merge", "token_claims",
]


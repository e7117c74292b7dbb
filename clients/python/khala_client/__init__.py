"""Python client for Khala: an asyncio ``KhalaClient``, document cache, stores and the ``khala`` CLI."""

from .backoff import Backoff
from .cache import DocumentCache, MergeResult, merge
from .client import (
    BatchApplied,
    ErrorEvent,
    HeartbeatReceived,
    KhalaClient,
    Reconnecting,
    SnapshotLoaded,
    StaleCursor,
    State,
    StateChanged,
)
from .clock import Clock, FakeClock
from .errors import AuthError, DeadSocket, FatalError, KhalaError, TransientError
from .http import HttpApi, HttpError
from .stores import Document, MemoryStore, SQLiteStore, TopicState, WatermarkStore

__version__ = "0.1.0"

__all__ = [
    "AuthError", "Backoff", "BatchApplied", "Clock", "DeadSocket", "Document", "DocumentCache", "ErrorEvent",
    "FakeClock", "FatalError", "HeartbeatReceived", "HttpApi", "HttpError", "KhalaClient", "KhalaError",
    "MemoryStore", "MergeResult", "Reconnecting", "SQLiteStore", "SnapshotLoaded", "StaleCursor", "State",
    "StateChanged", "TopicState", "TransientError", "WatermarkStore", "api_token_provider", "merge",
]


def api_token_provider(url: str, api_token: str, *, scopes=None, http: HttpApi | None = None):
    """A ``token_provider`` that mints a fresh sync token from an API token on every call."""
    api = http or HttpApi(url)

    async def provide() -> str:
        return (await api.mint_sync_token(api_token, scopes=scopes))["token"]

    return provide

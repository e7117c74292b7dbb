"""WebSocket routes: the sync socket under its gateway path and the Phoenix default path."""

from django.urls import path

from sync.consumer import SyncSocket

websocket_urlpatterns = [
    path("sync/socket/websocket", SyncSocket.as_asgi()),
    path("socket/websocket", SyncSocket.as_asgi()),
]

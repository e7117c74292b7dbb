"""WebSocket routes (filled by the delivery engine)."""

websocket_urlpatterns: list = []

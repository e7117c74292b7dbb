"""daphne waits as long as uvicorn for a peer to answer the server's WebSocket close frame.

Why: when the server closes a socket (``slow_consumer`` 4008, ``heartbeat_timeout`` 4408,
``token_expired`` …) autobahn, under daphne, sends the close frame and drops the TCP connection
if the peer has not answered within ``closeHandshakeTimeout``, 1 s by default. The close frame is
queued behind everything the server already sent, and a client that fell behind (the very reason
for a ``slow_consumer`` close) first has to read that backlog: megabytes of kernel buffers on a
fast link, more on a slow one. After 1 s it met a reset instead of the close code, so it could not
tell *why* it was closed. uvicorn (websockets and wsproto alike) gives the peer 10 s, and so does
this: the connection is released at most 10 s after the close, whether or not the peer answers.

What: ``install()`` makes every WebSocket factory daphne creates from then on start with a 10 s
close handshake timeout. daphne sets the factory's other options after creating it
(``setProtocolOptions``), which leaves this one alone. ``khala_project.asgi`` calls it when daphne
loads the app, before daphne creates its factory.
"""

from __future__ import annotations

CLOSE_HANDSHAKE_TIMEOUT_SECONDS = 10.0  # uvicorn's close_timeout

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from daphne.ws_protocol import WebSocketFactory

    reset = WebSocketFactory.resetProtocolOptions

    def resetProtocolOptions(self):
        reset(self)
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT_SECONDS

    WebSocketFactory.resetProtocolOptions = resetProtocolOptions
    _installed = True

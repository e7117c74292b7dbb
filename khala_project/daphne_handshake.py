"""daphne's WebSocket connections skip autobahn's debug formatting when debug logging is off.

Why: autobahn's ``WebSocketProtocol._connectionMade`` formats every protocol option of the new
connection with ``pprint.pformat`` for a ``log.debug`` call, and formats it whether or not debug
logging is on (the call receives the finished string). In a reconnect storm of 5,000 clients that
was 9 % of a worker's CPU (py-spy, ``bench/connections.py --storm``), time the event loop did not
spend delivering updates to the sockets already connected.

What: ``install()`` gives autobahn's protocol module a ``pformat`` that returns a deferred
rendering: the text is built only if a log observer formats the message. The debug output is the
same when it is on. The module's one other use of ``pformat``, ``Timings.__str__``, must return a
real string, so it calls ``pprint.pformat`` itself. (autobahn 25.x: the module uses ``pformat``
in those two log calls and that method; ``tests/test_daphne_handshake.py`` checks it still does.)
"""

from __future__ import annotations

import pprint

_installed = False


class _Deferred:
    """``pprint.pformat(value)``, computed when the log message is rendered."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def install() -> None:
    global _installed
    if _installed:
        return
    from autobahn.websocket import protocol

    protocol.Timings.__str__ = lambda self: pprint.pformat(self._timings)
    protocol.pformat = _Deferred
    _installed = True

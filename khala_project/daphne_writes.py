"""daphne's TCP connections write straight to the socket when nothing is buffered.

Why: Twisted's ``FileDescriptor.write`` never sends. It appends the bytes to a buffer and calls
``startWriting()``, which registers the socket for write readiness (``reactor.addWriter`` →
``loop.add_writer`` → ``epoll_ctl``); on the next loop iteration the reactor calls ``doWrite()``
through its logging wrapper, which sends and, the buffer being empty, calls ``stopWriting()``
(``remove_writer`` → ``epoll_ctl`` again). So every frame daphne sends costs two epoll
re-registrations, a readiness callback and a loop iteration before it reaches the kernel: the
fan-out profile measured ~53 µs of worker CPU per frame on daphne against ~28 µs on uvicorn, whose
asyncio transport tries ``send()`` first and only registers the socket when the kernel buffer is
full.

What: ``WriteThroughServer`` is Twisted's server-side TCP transport (``tcp.Server``) with asyncio's
rule: when the transport has nothing buffered, ``write`` calls ``send()`` at once; whatever the
kernel does not take (a full socket buffer) goes through Twisted's own buffered path, so ordering,
``bufferSize`` producer pausing (Khala's backpressure, ``sync.transport``), ``loseConnection``
draining and error handling are Twisted's, unchanged. A send error is left to that path too: the
bytes are buffered and the next ``doWrite`` meets the error and disconnects as before. TLS
transports (``startTLS``) keep Twisted's path.

``install()`` makes it the transport of every TCP port Twisted opens from then on (``tcp.Port``,
also the one daphne adopts with ``--fd``). ``khala_project.asgi`` calls it when it is loaded by
daphne, which happens before daphne listens; under uvicorn it does nothing (no Twisted reactor).
"""

from __future__ import annotations

import sys

_installed = False


def running_under_daphne() -> bool:
    """daphne imports ``daphne.server`` (which installs the asyncio reactor) before loading the app."""
    return "daphne.server" in sys.modules


def install() -> bool:
    """Use ``WriteThroughServer`` for the TCP ports opened from now on; True if installed."""
    global _installed
    if _installed:
        return True
    from twisted.internet import tcp

    tcp.Port.transport = _write_through_server(tcp.Server)
    _installed = True
    return True


def _write_through_server(base):
    class WriteThroughServer(base):
        def write(self, data: bytes) -> None:
            if (
                type(data) is bytes
                and data
                and not self.TLS
                and self.connected
                and not self.disconnecting
                and not self._writeDisconnected
                and not self._tempDataLen
                and self.offset == len(self.dataBuffer)
            ):
                # ``writeSomeData`` without its per-call memoryview and retry wrapper: Linux takes
                # any size (Twisted's SEND_LIMIT is for Windows), an interrupted or full send is
                # tried again by Twisted's buffered path, and any other error is left to it too.
                try:
                    sent = self.socket.send(data)
                except OSError:
                    sent = 0
                if sent == len(data):
                    return
                if sent:
                    data = data[sent:]
            base.write(self, data)

        def writeSequence(self, iovec) -> None:
            if iovec and not self.TLS:
                self.write(b"".join(iovec))
            else:
                base.writeSequence(self, iovec)

    WriteThroughServer.__name__ = WriteThroughServer.__qualname__ = "WriteThroughServer"
    WriteThroughServer.__module__ = __name__
    return WriteThroughServer

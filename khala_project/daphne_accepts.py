"""daphne accepts a bounded number of new connections per event-loop turn.

Why: Twisted's listening port accepts connections in a loop each time the socket is readable, and
sizes that loop to the traffic: it starts at 100 and grows by 20 every time it took all it asked
for (``tcp.Port.doRead``). In a reconnect storm one loop turn accepts hundreds of connections, and
the next turns parse their HTTP upgrades, run their WebSocket handshakes, joins and subscribes, a
few milliseconds of CPU each, all before the loop gets back to the sockets already connected. The
reconnect-storm benchmark measured loop turns of 0.2–0.4 s on each worker, and the connected
sockets' live updates waited behind them (p99 1.4–1.7 s; bench/README.md).

What: ``install()`` caps each accept loop at ``ACCEPTS_PER_LOOP_TURN`` connections (a KHALA
setting; 0 leaves Twisted's own sizing). The rest wait in the kernel's listen queue, which costs
the worker nothing (``python -m khala_project.serve`` gives daphne a backlog of
``LISTEN_BACKLOG``, the figure uvicorn uses, instead of Twisted's 50), and are accepted on the
following turns, between which the loop runs everything else that is ready. The accept rate stays
far above what a worker can handshake: a turn with nothing else to do takes well under a
millisecond.

uvicorn accepts through asyncio (uvloop), which this does not touch.
"""

from __future__ import annotations

_installed_limit: int | None = None

# daphne's listen backlog when started by ``python -m khala_project.serve`` (uvicorn's default).
LISTEN_BACKLOG = 2048


def install(limit: int) -> bool:
    """Cap every Twisted TCP port's accept loop at ``limit`` per turn (from now on); True if
    installed, False for ``limit`` 0 (Twisted's own sizing)."""
    global _installed_limit
    limit = int(limit)
    if limit <= 0:
        return False
    from twisted.internet import tcp

    if _installed_limit is None:
        original = tcp.Port.doRead

        def doRead(self):
            # Twisted grows ``numberAccepts`` after a turn that took all it asked for; asking for
            # at most the cap keeps every turn's accept loop within it.
            if self.numberAccepts > _installed_limit:
                self.numberAccepts = _installed_limit
            return original(self)

        doRead.__wrapped__ = original
        tcp.Port.doRead = doRead
    _installed_limit = limit
    return True

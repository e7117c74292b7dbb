"""Heap snapshots of a running server process, for ``bench/connections.py --tracemalloc`` (off by default).

With ``KHALA_TRACEMALLOC_DIR`` set in its environment, the process starts ``tracemalloc`` when the
ASGI application is loaded (``khala_project.asgi``) and, each time it receives ``SIGUSR2``, writes
a snapshot to ``<dir>/<pid>-<n>.snapshot`` (n = 1, 2, …). The benchmark compares two snapshots
(after a warm-up, with all sockets open) to say where the memory of a socket goes. tracemalloc
slows the process several-fold and costs memory itself: never set it in production.
"""

from __future__ import annotations

import itertools
import os
import signal
import tracemalloc

ENV = "KHALA_TRACEMALLOC_DIR"
FRAMES = 12


def install_from_environment() -> bool:
    directory = os.environ.get(ENV)
    if not directory:
        return False
    os.makedirs(directory, exist_ok=True)
    tracemalloc.start(FRAMES)
    numbers = itertools.count(1)

    def dump(signum, frame):
        path = os.path.join(directory, f"{os.getpid()}-{next(numbers)}.snapshot")
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, dump)
    return True

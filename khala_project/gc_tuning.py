"""Garbage-collector settings of a server process: the startup heap frozen, collection pauses measured.

Why: CPython's full (generation 2) collection walks every tracked object. A worker's heap is
mostly what it imported at startup (Django, the apps, Twisted or uvicorn: several hundred thousand
objects that live as long as the process) plus a few hundred objects per socket. A full collection
then took 49–94 ms (up to 157 ms on a busy machine) in a daphne worker whose 500 sockets were
reconnecting, and every socket of that worker waited for it.

What: ``install()``, called by ``khala_project.asgi`` once the application is loaded, moves
everything allocated so far to the collector's permanent generation (``gc.freeze()``): it is
never walked again, so a full collection walks what the sockets allocated only. The objects
frozen are the startup heap, which the process keeps until it exits anyway; a cycle among them
that became garbage later would not be collected, which for modules, classes and settings does
not happen. Each collection's duration is observed in ``khala_gc_pause_seconds`` (per
generation), so a pause that delays delivery shows on the dashboard; ``khala_gc_frozen_objects``
says how many objects the freeze took. ``GC_FREEZE_AT_STARTUP`` (a KHALA setting) turns the freeze
off.

Measured (bench/README.md, "GC pauses"): full collections in a daphne worker of the soak while
its 500 sockets reconnected after a kill took 49–94 ms over ~160–185 k tracked objects without
the freeze, 21–31 ms over ~59 k with it.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import Gauge, Histogram

GC_PAUSE = Histogram(
    "khala_gc_pause_seconds",
    "Duration of the garbage collector's collections in this process (the event loop waits for them).",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FROZEN = Gauge("khala_gc_frozen_objects", "Objects moved to the collector's permanent generation at startup.")

_started: list[float] = [0.0]
_installed = False


def _observe(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    GC_PAUSE.labels(generation=str(info.get("generation"))).observe(time.perf_counter() - _started[0])


def install(freeze: bool) -> None:
    """Freeze the heap allocated so far (if ``freeze``) and measure every collection from now on."""
    global _installed
    if _installed:
        return
    _installed = True
    if freeze:
        gc.collect()  # what is garbage already is not frozen
        gc.freeze()
    FROZEN.set(gc.get_freeze_count())
    gc.callbacks.append(_observe)

"""A terminal progress bar for long catch-ups (hand-written: one line, carriage returns, no deps).

Drawn only when the stream is a terminal; redrawn at most ``max_fps`` times a second so a fast
replay is not slowed down by the terminal.
"""

from __future__ import annotations

import time
from typing import TextIO


class ProgressBar:
    def __init__(self, stream: TextIO, total: int, label: str = "", *, width: int = 30, max_fps: float = 10.0, clock=time.monotonic, force: bool = False):
        self.stream = stream
        self.total = max(0, int(total))
        self.label = label
        self.width = width
        self.clock = clock
        self.min_interval = 1.0 / max_fps
        self.enabled = force or (hasattr(stream, "isatty") and stream.isatty())
        self.done = 0
        self._started = clock()
        self._last_draw = float("-inf")
        self._drawn = False

    def render(self) -> str:
        fraction = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        filled = int(round(fraction * self.width))
        elapsed = max(self.clock() - self._started, 1e-9)
        rate = self.done / elapsed
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.label} [{bar}] {fraction * 100:5.1f}% {self.done}/{self.total} {rate:,.0f}/s"

    def update(self, done: int) -> None:
        self.done = max(0, int(done))
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last_draw < self.min_interval and self.done < self.total:
            return
        self._last_draw = now
        self.stream.write("\r" + self.render() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Erase the bar (the caller prints whatever summary it wants)."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self._drawn = False

"""Time as an injectable dependency: heartbeats, dead-socket detection and backoff use it.

Tests pass a ``FakeClock`` whose ``sleep`` advances virtual time instead of waiting.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Real time: ``monotonic()`` for intervals, ``time()`` for wall-clock (token expiry), ``sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock(Clock):
    """Virtual time for tests: ``sleep`` advances the clock and yields once, without waiting."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0):
        self.now = start
        self.wall_offset = wall_start - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

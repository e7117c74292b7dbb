"""THE wait helper of the suite: wait for a condition with a deadline, never for a fixed time.

``await wait_until(predicate, timeout=…, message=…)`` polls ``predicate`` (a plain or an async
callable) until it returns something truthy and returns that value; past ``timeout`` it fails the
test with ``message``. ``wait_until_blocking`` is the same loop for synchronous tests (which may
use the ORM, so it must not run inside an event loop).
"""

from __future__ import annotations

import asyncio
import inspect
import time


class _Deadline:
    def __init__(self, timeout: float, message: str, clock):
        self.timeout, self.message, self.clock = timeout, message, clock
        self.at = clock() + timeout

    def check(self) -> None:
        if self.clock() > self.at:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.message}")


async def wait_until(predicate, timeout: float = 30.0, *, interval: float = 0.02, message: str = "condition", clock=time.monotonic):
    deadline = _Deadline(timeout, message, clock)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(interval)  # polling a condition with a deadline


def wait_until_blocking(predicate, timeout: float = 30.0, *, interval: float = 0.05, message: str = "condition", clock=time.monotonic):
    deadline = _Deadline(timeout, message, clock)
    while True:
        value = predicate()
        if value:
            return value
        deadline.check()
        time.sleep(interval)  # polling a condition with a deadline

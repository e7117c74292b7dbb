"""Reconnect delays: exponential, capped, then FULL jitter ("cap first, then jitter").

    ceiling = min(cap, base * 2 ** attempt)
    delay   = rng() * ceiling            # uniform in [0, ceiling)

Full jitter is what spreads a reconnect storm: when a server drops N sockets at once, the N
clients' first retries land uniformly over ``[0, base)`` instead of all at ``base``. Jitter is
applied after the cap, so a long outage still spreads retries over ``[0, cap)`` rather than
pinning them all to exactly ``cap``.

The attempt counter resets only after a *stable* connection (one that stayed up for
``stable_after`` seconds), so a server that accepts and immediately drops sockets cannot pull
every client back to the smallest delay in a tight loop.
"""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        *,
        rng: Callable[[], float] | None = None,
        stable_after: float = 10.0,
    ):
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.rng = rng or random.random
        self.attempt = 0
        self._connected_at: float | None = None

    def ceiling(self, attempt: int | None = None) -> float:
        attempt = self.attempt if attempt is None else attempt
        # 2**attempt overflows float for huge attempts; the cap is reached long before.
        return min(self.cap, self.base * (2 ** min(attempt, 62)))

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        delay = self.rng() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def connected(self, now: float) -> None:
        """A connection was established at ``now`` (monotonic seconds)."""
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection ended at ``now``; reset the attempts if it had been stable."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_after:
            self.reset()
        self._connected_at = None

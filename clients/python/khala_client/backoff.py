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

A refusal that says when to come back (``rate_limited`` with ``retry_after_ms``, an HTTP 429's
``Retry-After``) overrides the jitter from below: the wait is at least the hint, spread over
``[hint, hint * (1 + HINT_SPREAD))``. Coming back exactly at the hint would put every client refused
in the same window at the next window's start in lockstep, to be refused again together.
"""

from __future__ import annotations

import random
from typing import Callable

HINT_SPREAD = 0.25


def hinted_delay(retry_after: float, rng: Callable[[], float]) -> float:
    """A wait of at least ``retry_after`` seconds (the server's hint), spread by up to ``HINT_SPREAD``."""
    return retry_after * (1 + HINT_SPREAD * rng())


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

    def next_delay(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt (and count the attempt); never less than the server's
        ``retry_after`` hint (seconds) when the last attempt was refused with one."""
        delay = self.rng() * self.ceiling()
        self.attempt += 1
        if retry_after is not None and retry_after > 0:
            delay = max(delay, hinted_delay(retry_after, self.rng))
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

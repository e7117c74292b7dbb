"""In-band token refresh: keep an open socket's session alive past its token's ``exp``.

The server ends a socket's session at its token's ``exp`` (plus a small grace) with ``sync:error``
``token_expired`` and close code 4419, unless the client sends ``sync:refresh {token}`` first with
a fresh token for the same subject and session. ``TokenRefresher`` is that schedule, for one socket:

- It reads ``exp`` (and ``iat``, ``sub``, ``oa_session_id``) from the token's JWT claims, without
  verifying them (the server verifies; the client only needs to know *when*). A token without a
  readable ``exp`` schedules nothing: the socket then lives until the server says otherwise.
- The remaining lifetime is ``exp - now`` on the client's wall clock, capped by ``exp - iat``: a
  client clock running behind the server's cannot push the refresh past the real expiry (one
  running ahead only makes it earlier).
- The refresh fires at a jittered fraction of that lifetime, uniform in ``[0.75, 0.9)``: far enough
  ahead of the expiry to survive a few retries, and spread so that the sockets of one deploy (all
  joined within seconds) do not ask the token endpoint at the same instant, token after token.
- It asks the token provider for a token *for the current session* (``session_id``); a token for
  another subject or session is not sent (the server would refuse it and close the socket) and
  counts as a failed attempt.
- A failed attempt (the provider raised, the token was for another session, the server refused it,
  no reply in time) is reported through ``on_failed`` and retried with capped, jittered backoff,
  never later than the expiry. Past the expiry it stops: the server closes the socket with
  ``token_expired`` and the client reconnects with a fresh token through its normal path.

Time (``clock``) and randomness (``rng``) are injected, so the schedule is tested on a fake clock.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .backoff import Backoff
from .clock import Clock
from .errors import FatalError, KhalaError, TransientError

# The refresh fires at this fraction of the token's remaining lifetime, drawn uniformly per token.
REFRESH_FRACTION = (0.75, 0.9)
# Retries after a failed attempt: full-jitter backoff between these bounds (seconds), and never
# sooner than RETRY_MIN after the failure (a provider failing at once must not spin).
RETRY_BASE = 1.0
RETRY_CAP = 30.0
RETRY_MIN = 0.25


@dataclass(frozen=True)
class TokenClaims:
    """What the client reads from a sync token (unverified; the server verifies)."""

    subject: str | None
    session_id: str | None
    issued_at: float | None
    expires_at: float | None

    def remaining(self, now: float) -> float | None:
        """Seconds of lifetime left at wall-clock ``now``, capped by the token's own ``exp - iat``."""
        if self.expires_at is None:
            return None
        left = self.expires_at - now
        if self.issued_at is not None:
            left = min(left, self.expires_at - self.issued_at)
        return max(0.0, left)


async def provided_token(call: Callable[[], Awaitable[Any]]) -> str | None:
    """What the app's token provider gives (``call`` calls it): its own ``KhalaError`` passes
    through, any other exception (network, its backend) is a ``TransientError``
    (``token_provider_failed``, tried again later); None when it gave no token (the caller
    decides how bad that is)."""
    try:
        token = await call()
    except KhalaError:
        raise
    except Exception as exc:
        raise TransientError("token_provider_failed", f"token_provider raised {exc!r}") from exc
    return token if isinstance(token, str) and token else None


def token_claims(token: Any) -> TokenClaims | None:
    """The claims of a JWT (``header.payload.signature``), or None when ``token`` is not one."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    segment = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None

    def number(name):
        value = claims.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def text(name):
        value = claims.get(name)
        return value if isinstance(value, str) else None

    return TokenClaims(text("sub"), text("oa_session_id"), number("iat"), number("exp"))


def refresh_delay(remaining: float, rng: Callable[[], float], fraction: tuple[float, float] = REFRESH_FRACTION) -> float:
    """When to refresh a token with ``remaining`` seconds left: a uniform draw in the fraction band."""
    low, high = fraction
    return remaining * (low + (high - low) * rng())


@dataclass(frozen=True)
class RefreshFailure:
    """One failed attempt: the stable ``code``, and the seconds left before the token expires."""

    code: str
    message: str
    attempt: int
    expires_in: float


class TokenRefresher:
    """The refresh schedule of one socket (see the module docstring).

    ``provide(session_id)`` returns a fresh token for that session; ``send(token)`` sends
    ``sync:refresh`` and returns the server's reply (raising ``KhalaError`` on a refusal);
    ``on_refreshed(token, reply)`` and ``on_failed(RefreshFailure)`` report each outcome. A
    ``FatalError`` from ``send`` (e.g. ``reauth_required``: the session was revoked) ends the
    schedule and is raised: the socket is over.
    """

    def __init__(
        self,
        token: str,
        *,
        provide: Callable[[str | None], Awaitable[str]],
        send: Callable[[str], Awaitable[Any]],
        on_refreshed: Callable[[str, Any], None],
        on_failed: Callable[[RefreshFailure], None],
        clock: Clock,
        rng: Callable[[], float],
        fraction: tuple[float, float] = REFRESH_FRACTION,
        retry_base: float = RETRY_BASE,
        retry_cap: float = RETRY_CAP,
        retry_min: float = RETRY_MIN,
    ):
        self.token = token
        self.provide = provide
        self.send = send
        self.on_refreshed = on_refreshed
        self.on_failed = on_failed
        self.clock = clock
        self.rng = rng
        self.fraction = fraction
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.retry_min = retry_min
        self.refreshes = 0

    async def run(self) -> None:
        """Refresh ahead of every expiry until cancelled, or until an expiry passes unrefreshed."""
        while True:
            claims = token_claims(self.token)
            remaining = claims.remaining(self.clock.time()) if claims else None
            if remaining is None:
                return  # not a JWT with exp: nothing to schedule
            deadline = self.clock.monotonic() + remaining
            await self.clock.sleep(refresh_delay(remaining, self.rng, self.fraction))
            if not await self._attempt_until(claims, deadline):
                return

    async def _attempt_until(self, claims: TokenClaims, deadline: float) -> bool:
        """Attempt, retry with backoff; True once refreshed, False when the deadline passed."""
        backoff = Backoff(self.retry_base, max(self.retry_base, self.retry_cap), rng=self.rng)
        attempt = 0
        while True:
            attempt += 1
            try:
                token = await self._fresh_token(claims)
            except KhalaError as exc:
                # A provider's FatalError (e.g. scopes_not_granted) is one failed attempt too: the
                # socket still works; a reconnect would meet the same error and stop the client.
                self._failed(exc.code, exc.message, attempt, deadline)
            else:
                try:
                    reply = await self.send(token)
                except FatalError:
                    raise  # the server ended the session (e.g. reauth_required): the socket is over
                except KhalaError as exc:
                    self._failed(exc.code, exc.message, attempt, deadline)
                else:
                    self.token = token
                    self.refreshes += 1
                    self.on_refreshed(token, reply)
                    return True
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False  # expired: the server closes the socket; the client reconnects
            await self.clock.sleep(min(left, max(self.retry_min, backoff.next_delay())))

    async def _fresh_token(self, claims: TokenClaims) -> str:
        token = await provided_token(lambda: self.provide(claims.session_id))
        if token is None:
            raise TransientError("token_provider_failed", "token_provider returned no token")
        fresh = token_claims(token)
        if fresh is not None and (fresh.subject, fresh.session_id) != (claims.subject, claims.session_id):
            # Sent, it would be refused and the socket closed (a socket never changes hands).
            raise TransientError(
                "session_mismatch",
                f"the token provider returned a token for {fresh.subject} / {fresh.session_id}, "
                f"not this socket's {claims.subject} / {claims.session_id} (does it pass session_id on?)",
            )
        return token

    def _failed(self, code: str, message: str, attempt: int, deadline: float) -> None:
        self.on_failed(RefreshFailure(code, message, attempt, max(0.0, deadline - self.clock.monotonic())))

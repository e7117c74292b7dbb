"""Admission control of the sync socket: where the lane asks ``khala_project.ratelimit``.

Each refusal happens before the database work it protects, and says when to retry:

- a connection attempt, per client IP (``connects_per_ip``): checked right after the WebSocket
  handshake, before the worker's hub (and its pool) is touched. Refused: a ``sync:error``
  ``rate_limited`` push with ``retry_after_ms``, then close ``CONNECT_RATE_LIMITED_CLOSE_CODE``.
- a join, per user (``connects_per_user``) and open sockets per user (``sockets_per_user``, a lease
  renewed on the heartbeat tick and released when the socket closes or leaves): after the token is
  verified (CPU only), before the revocation read. Refused: ``rate_limited`` join error reply; the
  socket stays open and may join again after ``retry_after_ms``.
- joins and subscribes per socket (``joins_per_socket``, ``subscribes_per_socket``): counted in this
  process only (a socket lives in one process, so Redis would add a round trip and nothing else).

The IP is the ASGI scope's ``client`` address: behind a proxy, run the server with proxy headers
(``daphne --proxy-headers``, ``uvicorn --proxy-headers``) so that it is the client's, not the proxy's.
"""

from __future__ import annotations

import math

from khala_project import ratelimit
from sync.errors import error_payload
from sync.protocol import PHOENIX_TOPIC, SYNC_ERROR, encode_frame

# Per-socket limits never leave the process: a limiter without Redis.
_process_limiter = ratelimit.Limiter(None)


def rate_limited_payload(decision: ratelimit.Decision, limit: str) -> dict:
    return error_payload("rate_limited", f"too many requests ({limit})", limit=limit,
                         retry_after_ms=max(1, math.ceil(decision.retry_after * 1000)))


def client_ip(scope: dict) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def connect_refusal(scope: dict) -> str | None:
    """The frame refusing this connection attempt, or None when it is admitted."""
    ip = client_ip(scope)
    if ip is None:
        return None
    decision = await ratelimit.aadmit("connects_per_ip", ip)
    if decision.allowed:
        return None
    return encode_frame(None, None, PHOENIX_TOPIC, SYNC_ERROR, rate_limited_payload(decision, "connects_per_ip"))


class SocketAdmission:
    """The limits of one socket (``socket_id``) and the place it holds among its user's sockets."""

    def __init__(self, socket_id: str, *, limiter: ratelimit.Limiter | None = None, process_limiter=None):
        self.socket_id = socket_id
        self.limiter = limiter  # None: the process's default (Redis-backed) limiter
        self.process_limiter = process_limiter or _process_limiter
        self.holder_of: str | None = None  # the user subject whose socket place this socket holds

    async def per_socket(self, name: str) -> dict | None:
        """``joins_per_socket`` / ``subscribes_per_socket``: None when admitted, else the refusal."""
        decision = await ratelimit.aadmit(name, self.socket_id, limiter=self.process_limiter)
        return None if decision.allowed else rate_limited_payload(decision, name)

    async def admit_user(self, subject: str) -> dict | None:
        """A join of ``subject``: its connection rate, then a place among its open sockets."""
        if self.holder_of is not None and self.holder_of != subject:
            await self.release()  # a rejoin as someone else gives the previous user's place back
        decision = await ratelimit.aadmit("connects_per_user", subject, limiter=self.limiter)
        if not decision.allowed:
            return rate_limited_payload(decision, "connects_per_user")
        decision = await ratelimit.aacquire_socket(subject, self.socket_id, limiter=self.limiter)
        if not decision.allowed:
            return rate_limited_payload(decision, ratelimit.SOCKETS_PER_USER)
        if decision is not ratelimit.ALLOWED_OFF:  # the cap is off: no place held, none to renew or release
            self.holder_of = subject
        return None

    async def renew(self) -> None:
        if self.holder_of is not None:
            await ratelimit.arenew_socket(self.holder_of, self.socket_id, limiter=self.limiter)

    async def release(self) -> None:
        holder, self.holder_of = self.holder_of, None
        if holder is not None:
            await ratelimit.arelease_socket(holder, self.socket_id, limiter=self.limiter)


class NoLimits:
    """A socket without admission limits (the session's default when it is given none, e.g. in
    tests): every check admits and no place among the user's sockets is held."""

    holder_of = None

    async def per_socket(self, name: str) -> dict | None:
        return None

    async def admit_user(self, subject: str) -> dict | None:
        return None

    async def renew(self) -> None:
        pass

    async def release(self) -> None:
        pass

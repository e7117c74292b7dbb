"""``KhalaClient``: one WebSocket to a Khala server, a local document cache, and the rules that keep
the cache equal to the server's read models across disconnects.

States (``client.state``; observed through ``on_state``, ``client.states()`` or ``client.events()``)::

    idle ──start()──► connecting ──join ok──► joined ──subscribe ok──► live
                          ▲                                              │ socket lost / dead /
                          │                                              ▼ server closed channel
                     (first attempt)       reconnecting ◄────────────────┘
                                                │ backoff, fresh token, join, subscribe
                                                └──────────► joined ──► live …
    live ──refresh failed──► refresh_failed ──refreshed──► live   (the socket stays open throughout)
    any state ──close() or a fatal error──► closed

Why the pieces are arranged as they are:

- The token provider is called on **every** connect: sync tokens are short-lived, so a reconnect
  after an hour must never reuse the first token. A rejected token is retried once with a fresh
  one; a second rejection in a row stops the loop with ``AuthError`` (see ``errors.classify``).
- The token is refreshed in band ahead of its ``exp`` (``refresh.TokenRefresher``: at a jittered
  0.75–0.9 of its remaining lifetime, ``token_provider(session_id=…)`` then ``sync:refresh``):
  subscriptions and cursors are untouched. A failed refresh is the ``refresh_failed`` state (the
  socket still delivers) and is retried until the expiry; past it the server closes the socket
  with ``token_expired`` and the client reconnects with a fresh token like after any close.
- The join reply is awaited, so ``reauth_required``/``upgrade_required`` surface as exceptions
  instead of a silently dead channel (resolving on *send* would report a refused join as joined).
- One reader task decodes frames and puts them on one ordered queue; one processor task applies
  them. Replay batches are pushed before the subscribe reply, and a heartbeat's watermarks only
  say "everything up to here was sent", so cursors may only move in socket order. The reader
  answers heartbeat replies directly (liveness must not wait behind a slow HTTP hydration).
- Every cursor move goes through the cache, which writes documents and watermark atomically.
- A refusal that says when to come back is obeyed, never undercut by the jitter (a client that
  returns early in a reconnect storm is refused again, and counts against the limit once more).
  A connection flood (a ``rate_limited`` push on ``phoenix``, then close 4429) makes the next
  reconnect wait at least its ``retry_after_ms``; a join or subscribe refused with ``rate_limited``
  leaves the socket open, so it is asked again on the same socket after ``retry_after_ms``
  (``rate_limit_attempts`` times in all, then the socket is dropped and the reconnect waits the
  hint too); a hydration answered 429 is retried after its ``Retry-After`` the same way. Each hinted
  wait is spread over ``[hint, 1.25 × hint)`` (``backoff.hinted_delay``) and reported as
  ``RateLimited`` (in place) or ``Reconnecting.retry_after_ms``.
- A stale cursor is recovered once: snapshot over HTTP, replace the topic, resume from the first
  page's ``head_watermark``. A second stale cursor for the same topic within ``stale_window``
  waits a backed-off delay first, so a misbehaving server cannot put the client in a tight loop.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import websockets

from . import protocol
from .backoff import Backoff, hinted_delay
from .cache import DocumentCache, MergeResult
from .clock import Clock
from .errors import AuthError, DeadSocket, FatalError, KhalaError, TransientError, classify, retry_after
from .hashing import verify
from .http import HttpApi, HttpError
from .protocol import Frame, Update
from .refresh import RefreshFailure, TokenRefresher, provided_token
from .stores import Document, WatermarkStore

log = logging.getLogger("khala_client")

# Called with no argument to connect; with ``session_id=`` (when it accepts that keyword) for a
# ``sync:refresh`` token, which must continue the socket's session.
TokenProvider = Callable[..., Awaitable[str]]


class State(str, enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    JOINED = "joined"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    # The socket is open and delivering, but refreshing its token failed (retried until it expires).
    REFRESH_FAILED = "refresh_failed"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChanged:
    state: State
    previous: State


@dataclass(frozen=True)
class BatchApplied:
    """A batch was merged into the cache (``result`` says what was applied, ignored, dropped)."""

    topic: str
    result: MergeResult
    head_watermark: int | None
    replay_complete: bool


@dataclass(frozen=True)
class HeartbeatReceived:
    watermarks: dict[str, int]


@dataclass(frozen=True)
class SnapshotLoaded:
    topic: str
    documents: int
    head_watermark: int
    stream_epoch: str | None


@dataclass(frozen=True)
class StaleCursor:
    topics: list[str]
    payload: dict


@dataclass(frozen=True)
class Reconnecting:
    """The next connect in ``delay`` s; ``retry_after_ms`` is the server's hint when it refused the
    last attempt with one (``delay`` is then at least that)."""

    attempt: int
    delay: float
    reason: str
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class RateLimited:
    """The server refused ``request`` (``phx_join``, ``sync:subscribe`` or ``hydration``) with
    ``rate_limited``; it is asked again in ``delay`` s (at least ``retry_after_ms``), on the same
    socket. ``limit`` names the server's limit when it said which."""

    request: str
    limit: str | None
    retry_after_ms: int
    attempt: int
    delay: float


@dataclass(frozen=True)
class TokenRefreshed:
    """``sync:refresh`` was accepted: the socket's session now ends at ``expires_at`` (epoch s)."""

    expires_at: float | None
    refreshes: int


@dataclass(frozen=True)
class RefreshFailed:
    """A refresh attempt failed (``code``: ``token_provider_failed``, ``session_mismatch``, the
    server's refusal, ``reply_timeout`` …); retried until the token expires in ``expires_in`` s."""

    code: str
    message: str
    attempt: int
    expires_in: float


@dataclass(frozen=True)
class ErrorEvent:
    """Something went wrong that the client handled (or could not): ``code`` is stable."""

    code: str
    message: str
    details: dict = field(default_factory=dict)


Event = (
    StateChanged | BatchApplied | HeartbeatReceived | SnapshotLoaded | StaleCursor | Reconnecting
    | RateLimited | TokenRefreshed | RefreshFailed | ErrorEvent
)

_CLOSED = object()  # end-of-stream marker for subscribers


class _Subscriber:
    """One ``events()`` iterator: a bounded queue; when full, the oldest event is dropped.

    Events are notifications, not the data: the cache is always complete, so a slow iterator
    loses notifications (counted in ``dropped``) and never blocks the client or grows memory.
    """

    def __init__(self, maxsize: int):
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, item) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


# How long a send that failed on a socket the server closed waits for the reader to deliver that
# close (and the frames before it) in order, before it reports the failed send itself.
CLOSE_HANDOVER_SECONDS = 5.0


class _Connection:
    """One socket: refs, pending replies, the ordered inbound queue and the reason it ended."""

    def __init__(self, ws, clock: Clock, token: str):
        self.ws = ws
        self.clock = clock
        self.token = token  # the token the server holds for this socket (join, then each refresh)
        self.live = False  # subscribed (the state to return to after a failed refresh recovers)
        self.refresh_failing = False
        self._refs = itertools.count(1)
        self.join_ref: str | None = None
        self.pending: dict[str, asyncio.Future] = {}
        self.liveness_refs: set[str] = set()  # heartbeat replies, answered by the reader directly
        self.inbound: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        self.last_received = clock.monotonic()
        self.heartbeat_interval = 15.0

    def next_ref(self) -> str:
        return str(next(self._refs))

    def fail(self, exc: BaseException) -> None:
        """End this connection with ``exc`` (the first reason wins); fail every pending reply."""
        if self.error is None:
            self.error = exc
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.error)
        self.pending.clear()
        self.closed.set()

    async def send(self, topic: str, event: str, payload: Any, *, liveness: bool = False) -> asyncio.Future:
        if self.error is not None:
            raise self.error
        ref = self.next_ref()
        join_ref = ref if event == protocol.PHX_JOIN else (None if topic == protocol.PHOENIX_TOPIC else self.join_ref)
        if event == protocol.PHX_JOIN:
            self.join_ref = ref
        fut = asyncio.get_running_loop().create_future()
        self.pending[ref] = fut
        if liveness:
            self.liveness_refs.add(ref)
        try:
            await self.ws.send(protocol.encode_frame(join_ref, ref, topic, event, payload))
        except Exception as exc:
            self.pending.pop(ref, None)
            if fut.done():
                fut.exception()  # failed by a close that raced this send; the raise below reports it
            if getattr(exc, "rcvd", None) is not None:
                # The server closed the socket with a code. The reader hands that close, and what
                # the server sent before it (e.g. a ``sync:error`` saying why, with the retry
                # hint), to the ordered queue, which ends this connection with that reason: wait
                # for it instead of reporting a bare failed send first.
                try:
                    await asyncio.wait_for(self.closed.wait(), CLOSE_HANDOVER_SECONDS)
                except asyncio.TimeoutError:
                    pass
            self.fail(TransientError("socket_closed", f"send failed: {exc}"))
            raise self.error from None
        return fut


class KhalaClient:
    """Keep a local cache of Khala topics in sync over one WebSocket.

    ``url`` is the server (``http://host:port`` or ``ws://host:port``); ``token_provider`` an async
    callable returning a fresh sync token; ``store`` a ``WatermarkStore`` (``MemoryStore`` when
    omitted; use ``SQLiteStore`` to survive restarts).
    """

    def __init__(
        self,
        url: str,
        token_provider: TokenProvider,
        store: WatermarkStore | None = None,
        *,
        topics: Iterable[str] = (),
        socket_path: str = protocol.DEFAULT_SOCKET_PATH,
        connect_params: dict | None = None,
        replay_batch_size: int | None = None,
        heartbeat_interval: float = 15.0,
        heartbeat_timeout: float = 10.0,
        join_timeout: float = 15.0,
        subscribe_timeout: float = 120.0,
        stale_window: float = 30.0,
        backoff: Backoff | None = None,
        stale_backoff: Backoff | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        verify_hashes: bool = True,
        http: HttpApi | None = None,
        on_state: Callable[[State], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        event_queue_size: int = 10_000,
        connect: Callable[..., Any] | None = None,
        token_refresh: bool = True,
        rate_limit_attempts: int = 5,
    ):
        import random

        self.url = url
        self.token_provider = token_provider
        self.cache = DocumentCache(store)
        self.topics: list[str] = list(dict.fromkeys(topics))
        self.socket_path = socket_path
        self.connect_params = dict(connect_params or {})
        self.replay_batch_size = replay_batch_size
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.join_timeout = join_timeout
        self.subscribe_timeout = subscribe_timeout
        self.stale_window = stale_window
        self.clock = clock or Clock()
        self.rng = rng or random.Random().random
        self.backoff = backoff or Backoff(rng=self.rng)
        self.stale_backoff = stale_backoff or Backoff(base=1.0, cap=60.0, rng=self.rng)
        self.verify_hashes = verify_hashes
        self.http = http or HttpApi(url)
        self.on_state = on_state
        self.on_event = on_event
        self.event_queue_size = event_queue_size
        self._connect = connect or websockets.connect
        self.token_refresh = token_refresh
        if rate_limit_attempts < 1:
            raise ValueError("rate_limit_attempts must be at least 1")
        self.rate_limit_attempts = rate_limit_attempts
        self._provider_takes_session = _accepts_keyword(token_provider, "session_id")

        self.state = State.IDLE
        self.error: BaseException | None = None  # the fatal error that closed the client
        self.head_watermarks: dict[str, int] = {}
        self.connects = 0  # successful joins (diagnostics, tests)
        self.connect_attempts: list[float] = []  # monotonic time of each connect attempt
        self.applied_log: list[tuple[str, str, int, int]] | None = None  # (topic, doc_key, version, wm) if enabled
        self._subscribers: list[_Subscriber] = []
        self._conn: _Connection | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._token: str | None = None
        self._last_snapshot_at: dict[str, float] = {}
        self._subscribing = 0  # subscribe requests in flight (their reply carries any stale_cursor)
        self._stale_pushes: list[dict] = []  # stale_cursor pushes received while subscribing
        self._state_changed = asyncio.Event()

    # --- observation ------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken callback must not break sync
                log.exception("on_event callback failed")
        for sub in self._subscribers:
            sub.put(event)

    def _set_state(self, state: State) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        log.debug("state %s -> %s", previous, state)
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("on_state callback failed")
        self._emit(StateChanged(state, previous))

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on, until the client closes."""
        sub = _Subscriber(self.event_queue_size)
        self._subscribers.append(sub)
        try:
            if self.state == State.CLOSED:
                return
            while True:
                item = await sub.queue.get()
                if item is _CLOSED:
                    return
                yield item
        finally:
            self._subscribers.remove(sub)

    async def states(self) -> AsyncIterator[State]:
        """Every state change from now on, until ``closed`` (which is yielded last)."""
        async for event in self.events():
            if isinstance(event, StateChanged):
                yield event.state

    async def wait_for_state(self, *states: State | str, timeout: float | None = None) -> State:
        """Wait until the client is in one of ``states``; raises the fatal error if it closes instead."""
        wanted = {State(s) for s in states}

        async def waiter():
            while self.state not in wanted:
                if self.state == State.CLOSED:
                    raise self.error or TransientError("closed", "client closed")
                await self._state_changed.wait()
            return self.state

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_live(self, timeout: float | None = None) -> None:
        await self.wait_for_state(State.LIVE, timeout=timeout)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Run the connect/retry loop in the background (``await client.close()`` to stop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="khala-client")
        return self._task

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            self._conn.fail(TransientError("client_closed", "closed by the application"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, KhalaError):
                pass
        self._finish()

    def _finish(self) -> None:
        if self.state != State.CLOSED:
            self._set_state(State.CLOSED)
            for sub in list(self._subscribers):
                sub.put(_CLOSED)

    async def __aenter__(self) -> "KhalaClient":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def run(self) -> None:
        """Connect, sync, reconnect until ``close()``; raises ``FatalError`` when retrying cannot help."""
        auth_failures = 0  # consecutive token rejections; reset by any successful join
        try:
            while not self._closing:
                self._set_state(State.CONNECTING if self.connects == 0 else State.RECONNECTING)
                joins_before = self.connects
                reason = "socket_closed"
                hint: float | None = None
                try:
                    await self._session()
                except FatalError:
                    if self._closing:
                        break
                    raise
                except KhalaError as exc:
                    if self._closing:
                        break
                    reason = exc.code
                    hint = retry_after(exc)
                    if self.connects > joins_before:
                        auth_failures = 0
                    if classify(exc.code) == "auth":
                        auth_failures += 1
                        if auth_failures >= 2:
                            raise AuthError(exc.code, f"token refused twice in a row: {exc.message}", exc.details) from None
                        # A rejected token gets one immediate retry with a fresh token.
                        self._emit(ErrorEvent(exc.code, exc.message, _as_dict(exc.details)))
                        continue
                    self._emit(ErrorEvent(exc.code, exc.message, _as_dict(exc.details)))
                except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                    reason = type(exc).__name__
                    self._emit(ErrorEvent("connection_failed", str(exc) or reason))
                if self.connects > joins_before:
                    auth_failures = 0
                if self._closing:
                    break
                delay = self.backoff.next_delay(hint)
                self._set_state(State.RECONNECTING)
                self._emit(Reconnecting(self.backoff.attempt, delay, reason, None if hint is None else _ms(hint)))
                await self.clock.sleep(delay)
        except FatalError as exc:
            self.error = exc
            self._emit(ErrorEvent(exc.code, exc.message, _as_dict(exc.details)))
            raise
        finally:
            self._conn = None
            self._finish()

    # --- one connection ---------------------------------------------------------------------------

    async def _fresh_token(self) -> str:
        token = await provided_token(self.token_provider)
        if token is None:
            raise FatalError("token_provider_failed", "token_provider returned no token")
        self._token = token
        return token

    async def _session(self) -> None:
        self.connect_attempts.append(self.clock.monotonic())  # the attempt starts with fetching its token
        token = await self._fresh_token()
        url = protocol.socket_url(self.url, token, path=self.socket_path, params=self.connect_params)
        try:
            ws = await self._connect(url, open_timeout=self.join_timeout, ping_interval=None, max_size=64 * 1024 * 1024, close_timeout=2)
        except websockets.exceptions.InvalidStatus as exc:
            status = exc.response.status_code
            code = "unauthorized" if status in (401, 403) else f"http_{status}"
            raise TransientError(code, f"WebSocket handshake refused with HTTP {status}") from None
        conn = _Connection(ws, self.clock, token)
        self._conn = conn
        tasks = [
            asyncio.ensure_future(self._read_loop(conn)),
            asyncio.ensure_future(self._process_loop(conn)),
        ]
        connected_at = self.clock.monotonic()
        self.backoff.connected(connected_at)
        try:
            await self._join(conn)
            self.connects += 1
            self._set_state(State.JOINED)
            tasks.append(asyncio.ensure_future(self._heartbeat_loop(conn)))
            if self.token_refresh:
                tasks.append(asyncio.ensure_future(self._refresh_loop(conn)))
            if self.topics:
                await self._subscribe(conn, list(self.topics))
            conn.live = True
            self._set_state(State.REFRESH_FAILED if conn.refresh_failing else State.LIVE)
            await conn.closed.wait()
            raise conn.error or TransientError("socket_closed", "connection closed")
        finally:
            conn.fail(TransientError("socket_closed", "connection closed"))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except Exception:
                pass
            self.backoff.disconnected(self.clock.monotonic())
            if self._conn is conn:
                self._conn = None

    # --- in-band token refresh ------------------------------------------------------------------------

    async def _provide(self, session_id: str | None) -> str:
        """A token from the provider for ``session_id`` (passed when the provider takes it)."""
        if session_id is not None and self._provider_takes_session:
            return await self.token_provider(session_id=session_id)
        return await self.token_provider()

    async def _refresh_loop(self, conn: _Connection) -> None:
        async def send(token: str):
            return await self._request(conn, protocol.SYNC_CHANNEL, protocol.REFRESH, {"token": token}, self.join_timeout)

        def refreshed(token: str, reply) -> None:
            conn.token = self._token = token
            conn.refresh_failing = False
            expires_at = reply.get("expires_at") if isinstance(reply, dict) else None
            self._emit(TokenRefreshed(expires_at, refresher.refreshes))
            if self.state == State.REFRESH_FAILED:
                self._set_state(State.LIVE if conn.live else State.JOINED)

        def failed(failure: RefreshFailure) -> None:
            if conn.error is not None or self._conn is not conn:
                return  # the socket is over: the reconnect says so
            conn.refresh_failing = True
            self._emit(RefreshFailed(failure.code, failure.message, failure.attempt, failure.expires_in))
            self._set_state(State.REFRESH_FAILED)

        refresher = TokenRefresher(conn.token, provide=self._provide, send=send, on_refreshed=refreshed, on_failed=failed,
                                   clock=self.clock, rng=self.rng)
        try:
            await refresher.run()
        except asyncio.CancelledError:
            raise
        except KhalaError as exc:  # the server ended the session on a refresh (reauth_required)
            conn.fail(exc)

    async def _request(self, conn: _Connection, topic: str, event: str, payload: Any, timeout: float, *, liveness=False):
        """Push and await the matching reply: the ``response`` on ok, ``KhalaError`` otherwise."""
        fut = await conn.send(topic, event, payload, liveness=liveness)
        try:
            status, response = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            if liveness:
                raise DeadSocket("heartbeat_timeout", f"no reply to {event} within {timeout}s") from None
            raise TransientError("reply_timeout", f"no reply to {event} within {timeout}s") from None
        if status != "ok":
            code = protocol.error_code(response)
            message = response.get("message", "") if isinstance(response, dict) else ""
            kind = classify(code)
            if kind == "fatal":
                raise FatalError(code, message, response)
            raise TransientError(code, message, response)
        return response

    async def _admitted_request(self, conn: _Connection, event: str, payload: Any, timeout: float):
        """``_request`` on ``sync:v1``, asked again on the same socket while the server refuses it
        with ``rate_limited`` and a ``retry_after_ms`` (an admission limit, or too many requests in
        flight; the socket stays open). After ``rate_limit_attempts`` refusals, or when the socket
        itself ended, the refusal is raised: the reconnect then waits at least its hint."""
        for attempt in itertools.count(1):
            try:
                return await self._request(conn, protocol.SYNC_CHANNEL, event, payload, timeout)
            except TransientError as exc:
                hint = retry_after(exc)
                if exc.code != "rate_limited" or hint is None or conn.error is not None or attempt >= self.rate_limit_attempts:
                    raise
                await self._wait_out(event, exc, hint, attempt)

    async def _wait_out(self, request: str, exc: KhalaError, hint: float, attempt: int) -> None:
        """Report a ``rate_limited`` refusal of ``request`` and wait at least its hint."""
        delay = hinted_delay(hint, self.rng)
        limit = _as_dict(exc.details).get("limit")
        self._emit(RateLimited(request, limit if isinstance(limit, str) else None, _ms(hint), attempt, delay))
        await self.clock.sleep(delay)

    async def _join(self, conn: _Connection) -> None:
        response = await self._admitted_request(conn, protocol.PHX_JOIN, {"frames": False}, self.join_timeout)
        conn.heartbeat_interval = self.heartbeat_interval
        timeout_ms = response.get("heartbeat_timeout_ms") if isinstance(response, dict) else None
        if isinstance(timeout_ms, int) and timeout_ms > 0:
            # at least three heartbeats per server idle timeout, so one lost reply never idles us out
            conn.heartbeat_interval = min(self.heartbeat_interval, timeout_ms / 1000 / 3)

    async def _read_loop(self, conn: _Connection) -> None:
        try:
            async for text in conn.ws:
                conn.last_received = self.clock.monotonic()
                try:
                    frame = protocol.decode_frame(text)
                except protocol.ProtocolError as exc:
                    self._emit(ErrorEvent(exc.code, exc.message))
                    continue
                if frame.event == protocol.PHX_REPLY and frame.ref in conn.liveness_refs:
                    conn.liveness_refs.discard(frame.ref)
                    self._resolve(conn, frame)
                    if frame.topic == protocol.PHOENIX_TOPIC:
                        continue  # sync:heartbeat replies also carry watermarks: keep them in order
                conn.inbound.put_nowait(frame)
            end: KhalaError = _close_error(conn.ws.close_code, conn.ws.close_reason)
        except websockets.exceptions.ConnectionClosed as exc:
            end = _close_error(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            end = TransientError("socket_error", repr(exc))
        # The close goes through the ordered queue: a join error reply or a sync:error push sent
        # just before the close must be handled first (it says *why*; the close code only hints).
        conn.inbound.put_nowait(_EndOfStream(end))

    def _resolve(self, conn: _Connection, frame: Frame) -> None:
        fut = conn.pending.pop(frame.ref, None) if frame.ref else None
        if fut is None or fut.done():
            return
        try:
            fut.set_result(protocol.reply_status(frame.payload))
        except protocol.ProtocolError as exc:
            fut.set_exception(TransientError(exc.code, exc.message))

    async def _process_loop(self, conn: _Connection) -> None:
        """Apply frames strictly in socket order (see the module docstring)."""
        try:
            while True:
                frame = await conn.inbound.get()
                if isinstance(frame, _EndOfStream):
                    conn.fail(frame.error)
                    return
                await self._handle(conn, frame)
                # Queue.get() does not suspend while frames are waiting: yield once per frame so a
                # long replay cannot starve the reader and the heartbeat task.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except KhalaError as exc:
            conn.fail(exc)
        except Exception as exc:
            log.exception("processing a frame failed")
            conn.fail(TransientError("client_error", repr(exc)))

    async def _handle(self, conn: _Connection, frame: Frame) -> None:
        event, payload = frame.event, frame.payload
        if frame.topic == protocol.PHOENIX_TOPIC:
            if event == protocol.PHX_REPLY:
                self._resolve(conn, frame)
            elif event == protocol.SYNC_ERROR:
                # A refusal of the socket itself (a connection flood: rate_limited with
                # retry_after_ms), the close follows. It names the reason before the close code
                # does and carries the hint the reconnect must wait for.
                details = payload if isinstance(payload, dict) else {}
                conn.fail(TransientError(protocol.error_code(details), str(details.get("message", "")), details))
            return
        if frame.topic != protocol.SYNC_CHANNEL:
            return
        if event == protocol.PHX_REPLY:
            if isinstance(payload, dict) and payload.get("status") == "ok":
                response = payload.get("response")
                if isinstance(response, dict):
                    # subscribe replies carry current_watermarks; sync:heartbeat replies watermarks
                    for key in ("current_watermarks", "watermarks"):
                        if key in response:
                            self._advance(protocol.parse_watermarks(response[key]), response.get(key))
            self._resolve(conn, frame)
        elif event == protocol.UPDATE_BATCH:
            try:
                batch = protocol.parse_update_batch(payload)
            except protocol.ProtocolError as exc:
                self._emit(ErrorEvent(exc.code, exc.message, {"payload": payload}))
                return
            await self._apply_batch(batch, payload.get("head_watermarks"))
        elif event == protocol.SYNC_HEARTBEAT:
            raw = payload.get("watermarks") if isinstance(payload, dict) else None
            try:
                watermarks = protocol.parse_watermarks(raw)
            except protocol.ProtocolError as exc:
                self._emit(ErrorEvent(exc.code, exc.message))
                return
            self._advance(watermarks, raw)
            for entry in raw if isinstance(raw, list) else ():
                if isinstance(entry, dict) and isinstance(entry.get("head_watermark"), int):
                    self.head_watermarks[entry["topic"]] = entry["head_watermark"]
            self._emit(HeartbeatReceived(watermarks))
        elif event == protocol.SYNC_ERROR:
            await self._handle_sync_error(conn, payload if isinstance(payload, dict) else {})
        elif event in (protocol.PHX_ERROR, protocol.PHX_CLOSE):
            conn.fail(TransientError("channel_closed", f"server sent {event} on {frame.topic}", payload))
        # sync:frame and unknown events: ignored (the legacy events carry the same data)

    async def _handle_sync_error(self, conn: _Connection, payload: dict) -> None:
        code = protocol.error_code(payload)
        message = str(payload.get("message", ""))
        if code == "stale_cursor":
            if self._subscribing:
                # Usually the subscribe's error reply carries the same payload; but a topic can go
                # stale after the server's check (retention pruned it before the first replay
                # page) and then the reply is ok and this push is the only notice. ``_subscribe``
                # settles it once the reply is in.
                self._stale_pushes.append(payload)
                return
            # A stale push outside a subscribe (e.g. the topic's epoch changed): recover, then
            # resubscribe the stale topics, without blocking the ordered queue.
            asyncio.ensure_future(self._recover_and_resubscribe(conn, payload))
            return
        kind = classify(code)
        if kind == "fatal":
            conn.fail(FatalError(code, message, payload))
        elif kind == "auth" or payload.get("action") == "disconnect" or code in ("slow_consumer", "heartbeat_timeout"):
            conn.fail(TransientError(code, message, payload))
        else:
            self._emit(ErrorEvent(code, message, payload))

    def _advance(self, watermarks: dict[str, int], raw: Any = None) -> None:
        """Move cursors forward to what the server says it has sent us (in socket order)."""
        epochs = _epochs(raw)
        for topic, watermark in watermarks.items():
            if topic not in self.topics:
                continue
            state = self.cache.topic_state(topic)
            epoch = epochs.get(topic)
            if epoch and state.stream_epoch and epoch != state.stream_epoch:
                continue  # another history: the server flags it as stale on the next subscribe
            if watermark > state.watermark or (epoch and not state.stream_epoch):
                self.cache.store.commit(topic, (), watermark, epoch)

    # --- applying updates ---------------------------------------------------------------------------

    async def _apply_batch(self, batch: protocol.UpdateBatch, raw_heads: Any = None) -> None:
        epochs = _epochs(raw_heads)
        by_topic: dict[str, list[Update]] = {}
        for update in batch.updates:
            by_topic.setdefault(update.topic, []).append(update)
        for topic, updates in by_topic.items():
            result = self.cache.plan(topic, updates)
            # Only the documents that will be written need a payload check or a fetch.
            result.documents = [doc for doc in [await self._complete(doc) for doc in result.documents] if doc is not None]
            # head_watermarks[topic] is the position through which this socket is complete
            # (topic-wide, past rows we may not see): store it with the documents, atomically.
            complete_through = batch.head_watermarks.get(topic, 0)
            epoch = epochs.get(topic)
            stored = self.cache.topic_state(topic).stream_epoch
            if complete_through > result.watermark and not (epoch and stored and epoch != stored):
                result.watermark = complete_through
            result.watermark = self.cache.commit(result, epoch if not stored else None)
            if self.applied_log is not None:
                self.applied_log.extend((d.topic, d.doc_key, d.doc_version, d.watermark) for d in result.documents)
            self._emit(BatchApplied(topic, result, batch.head_watermarks.get(topic), batch.replay_complete))

    async def _complete(self, doc: Document) -> Document | None:
        """Verify the payload hash; fetch the document over HTTP when it is a pointer or corrupt.

        Returns the document to store, or None to leave the cached one as it is (the cursor still
        advances: the error event says which document could not be loaded).
        """
        if not doc.hydration_required:
            if not self.verify_hashes or verify(doc.payload, doc.payload_hash):
                return doc
            self._emit(
                ErrorEvent(
                    "payload_hash_mismatch",
                    f"{doc.topic} {doc.doc_key}@{doc.doc_version}: payload does not match payload_hash; refetching",
                    {"topic": doc.topic, "doc_key": doc.doc_key, "doc_version": doc.doc_version, "watermark": doc.watermark},
                )
            )
        return await self.hydrate(doc.topic, doc.doc_key, fallback=doc)

    async def _http_with_token(self, call):
        """Run ``call(token)``; on a rejected token, once more with a fresh token. A 429 is asked
        again after its ``Retry-After``, ``rate_limit_attempts`` times in all."""
        for attempt in itertools.count(1):
            try:
                token = self._token or await self._fresh_token()
                try:
                    return await call(token)
                except HttpError as exc:
                    if exc.status == 401 and classify(exc.code) == "auth":
                        return await call(await self._fresh_token())
                    raise
            except HttpError as exc:
                hint = retry_after(exc)
                if exc.status != 429 or hint is None or attempt >= self.rate_limit_attempts:
                    raise
                await self._wait_out("hydration", exc, hint, attempt)

    async def hydrate(self, topic: str, doc_key: str, *, fallback: Document | None = None) -> Document | None:
        """Fetch one document over HTTP (``hydration_required``), verifying its hash."""
        try:
            # The pointer's watermark and epoch let the server read a replica that has that write.
            epoch = self.cache.topic_state(topic).stream_epoch if fallback is not None else None
            freshness = {"min_watermark": fallback.watermark, "stream_epoch": epoch} if epoch else {}
            data = await self._http_with_token(lambda token: self.http.get_document(topic, doc_key, token, **freshness))
        except HttpError as exc:
            self._emit(ErrorEvent("hydration_failed", f"{topic} {doc_key}: {exc.code} {exc.message}", {"topic": topic, "doc_key": doc_key, "http_code": exc.code}))
            if exc.code in ("http_unreachable",) or (exc.status or 0) >= 500 or exc.status == 429:
                # The batch is not committed: the reconnect replays it (after the hint, if any).
                hint = retry_after(exc)
                raise TransientError("hydration_failed", str(exc), {} if hint is None else {"retry_after_ms": _ms(hint)}) from None
            # e.g. document_not_found: keep a pointer entry so the doc is known but empty
            return fallback if fallback is not None and fallback.hydration_required else None
        doc = Document(topic, data.get("doc_key", doc_key), int(data["doc_version"]), data.get("payload"), data.get("payload_hash"), int(data.get("watermark") or (fallback.watermark if fallback else 0)), False)
        if self.verify_hashes and not verify(doc.payload, doc.payload_hash):
            self._emit(ErrorEvent("payload_hash_mismatch", f"{topic} {doc_key}: hydrated payload does not match its payload_hash", {"topic": topic, "doc_key": doc_key, "doc_version": doc.doc_version}))
            return None
        if fallback is not None and doc.doc_version < fallback.doc_version:
            return None  # should not happen (read models never go back); keep what we have
        return doc

    # --- subscriptions ------------------------------------------------------------------------------

    async def subscribe(self, *topics: str) -> None:
        """Add topics; when connected they are subscribed at once (else on the next connect)."""
        new = [t for t in topics if t not in self.topics]
        self.topics.extend(new)
        conn = self._conn
        if new and conn is not None and self.state in (State.JOINED, State.LIVE, State.REFRESH_FAILED):
            await self._subscribe(conn, new)

    async def unsubscribe(self, *topics: str) -> None:
        self.topics = [t for t in self.topics if t not in topics]
        conn = self._conn
        if conn is not None and self.state in (State.JOINED, State.LIVE, State.REFRESH_FAILED):
            await self._request(conn, protocol.SYNC_CHANNEL, protocol.UNSUBSCRIBE, {"topics": list(topics)}, self.join_timeout)

    async def _subscribe(self, conn: _Connection, topics: list[str]) -> None:
        """Subscribe with each topic's stored cursor (0 when none: the server then says whether
        history was pruned, instead of silently replaying only the retained window)."""
        while topics:
            states = {t: self.cache.topic_state(t) for t in topics}
            payload = protocol.subscribe_payload(
                topics,
                {t: s.watermark for t, s in states.items()},
                stream_epochs={t: s.stream_epoch for t, s in states.items() if s.stream_epoch},
                replay_batch_size=self.replay_batch_size,
            )
            self._subscribing += 1
            try:
                await self._admitted_request(conn, protocol.SUBSCRIBE, payload, self.subscribe_timeout)
            except TransientError as exc:
                if exc.code != "stale_cursor":
                    raise
                self._take_stale_pushes(topics)  # the push that came with this error reply
                await self._recover_stale(_as_dict(exc.details))
                continue  # resubscribe from the snapshot's head
            finally:
                self._subscribing -= 1
            pushed = self._take_stale_pushes(topics)
            if not pushed:
                return
            # ok reply, then (or just before it) a stale_cursor push: recover those topics from a
            # snapshot and resubscribe them; the others are live already.
            stale_topics: list[str] = []
            for stale_payload in pushed:
                await self._recover_stale(stale_payload)
                stale_topics += [t["topic"] for t in stale_payload.get("stale_topics") or [] if isinstance(t, dict) and t.get("topic") in topics]
            topics = list(dict.fromkeys(stale_topics))

    def _take_stale_pushes(self, topics: list[str]) -> list[dict]:
        """Remove and return the stale_cursor pushes (received while subscribing) about ``topics``."""
        mine, others = [], []
        for payload in self._stale_pushes:
            named = {t.get("topic") for t in payload.get("stale_topics") or [] if isinstance(t, dict)}
            (mine if named & set(topics) else others).append(payload)
        self._stale_pushes = others
        return mine

    async def _recover_and_resubscribe(self, conn: _Connection, payload: dict) -> None:
        try:
            await self._recover_stale(payload)
            await self._subscribe(conn, [t["topic"] for t in payload.get("stale_topics", []) if isinstance(t, dict) and t.get("topic") in self.topics])
        except KhalaError as exc:
            conn.fail(exc)

    async def _recover_stale(self, payload: dict) -> None:
        stale = [t.get("topic") for t in payload.get("stale_topics") or [] if isinstance(t, dict)]
        stale = [t for t in stale if isinstance(t, str)]
        if not stale:
            raise TransientError("stale_cursor", "stale_cursor without stale_topics", payload)
        self._emit(StaleCursor(stale, payload))
        for topic in stale:
            last = self._last_snapshot_at.get(topic)
            if last is not None and self.clock.monotonic() - last < self.stale_window:
                # A second stale cursor right after a snapshot: something is off (a retention run
                # racing us, a server bug). Back off instead of re-downloading in a loop.
                await self.clock.sleep(self.stale_backoff.next_delay())
            else:
                self.stale_backoff.reset()
            await self.load_snapshot(topic)
            self._last_snapshot_at[topic] = self.clock.monotonic()

    async def load_snapshot(self, topic: str) -> None:
        """Replace ``topic``'s cache with the server's snapshot and resume from its head."""
        snapshot = await self._http_with_token(lambda token: self.http.snapshot(topic, token))
        documents = []
        for item in snapshot.documents:
            doc = Document(topic, item["doc_key"], int(item["doc_version"]), item.get("payload"), item.get("payload_hash"), int(item.get("watermark") or 0), item.get("payload") is None)
            if self.verify_hashes and not doc.hydration_required and not verify(doc.payload, doc.payload_hash):
                self._emit(ErrorEvent("payload_hash_mismatch", f"{topic} {doc.doc_key}: snapshot payload does not match its payload_hash", {"topic": topic, "doc_key": doc.doc_key}))
                continue
            documents.append(doc)
        self.cache.replace_topic(topic, documents, snapshot.head_watermark, snapshot.stream_epoch)
        if self.applied_log is not None:
            self.applied_log.append((topic, "*snapshot*", 0, snapshot.head_watermark))
        self._emit(SnapshotLoaded(topic, len(documents), snapshot.head_watermark, snapshot.stream_epoch))

    # --- heartbeats ---------------------------------------------------------------------------------

    async def _heartbeat_loop(self, conn: _Connection) -> None:
        """Phoenix heartbeat + ``sync:heartbeat`` every ~interval (jittered); no reply → dead socket."""
        try:
            while True:
                await self.clock.sleep(conn.heartbeat_interval * (0.75 + 0.25 * self.rng()))
                phoenix = await conn.send(protocol.PHOENIX_TOPIC, protocol.HEARTBEAT, {}, liveness=True)
                sync = await conn.send(protocol.SYNC_CHANNEL, protocol.SYNC_HEARTBEAT, {}, liveness=True)
                replies = asyncio.gather(phoenix, sync)
                while True:
                    try:
                        await asyncio.wait_for(asyncio.shield(replies), self.heartbeat_timeout)
                        break
                    except asyncio.TimeoutError:
                        # Dead = nothing at all arrived for a whole timeout. Frames still arriving
                        # mean the replies are queued behind them (a busy client, not a dead socket).
                        if self.clock.monotonic() - conn.last_received >= self.heartbeat_timeout:
                            replies.cancel()
                            raise DeadSocket("heartbeat_timeout", f"nothing received for {self.heartbeat_timeout}s after a heartbeat") from None
        except asyncio.CancelledError:
            raise
        except KhalaError as exc:
            conn.fail(exc)

    # --- convenience --------------------------------------------------------------------------------

    def documents(self, topic: str) -> dict[str, Document]:
        return self.cache.documents(topic)

    def watermark(self, topic: str) -> int:
        return self.cache.watermark(topic)


@dataclass(frozen=True)
class _EndOfStream:
    error: KhalaError


# Close codes of the error table (docs/protocol/OA_SYNC_WS_MAPPING.md §7), used when the socket
# closed without a frame saying why.
_CLOSE_CODES = {
    4401: "unauthorized",
    4403: "reauth_required",
    4426: "upgrade_required",
    4400: "malformed_frame",
    4413: "payload_too_large",
    4408: "heartbeat_timeout",
    4008: "slow_consumer",
    4419: "token_expired",
    4429: "rate_limited",  # a connection flood refused at connect (outside the table)
    4500: "internal",
}


def _close_error(code: int | None, reason: str | None) -> KhalaError:
    name = _CLOSE_CODES.get(code or 0, "socket_closed")
    message = f"socket closed (code {code}{', ' + reason if reason else ''})"
    if classify(name) == "fatal":
        return FatalError(name, message, {"close_code": code})
    return TransientError(name, message, {"close_code": code})


def _epochs(raw: Any) -> dict[str, str]:
    """``{topic: stream_epoch}`` from a list of ``{topic, watermark, stream_epoch}`` entries."""
    if not isinstance(raw, list):
        return {}
    return {e["topic"]: e["stream_epoch"] for e in raw if isinstance(e, dict) and isinstance(e.get("topic"), str) and isinstance(e.get("stream_epoch"), str)}


def _accepts_keyword(fn, name: str) -> bool:
    """Whether ``fn(name=…)`` is a valid call (a named parameter or ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
        for p in parameters
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}

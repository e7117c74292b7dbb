"""The per-socket state machine of the ``sync:v1`` channel.

Status: ``connected`` (socket open, not joined) → ``joined`` → ``replaying`` (a topic is being
replayed or caught up) / ``live`` (every followed topic is live) → ``closed``. The session does
no I/O of its own: it dispatches frames, owns the socket's lifecycle (join, leave, heartbeats,
idle timeout, revocation, slow consumer) and one ``Follower`` per followed topic
(``sync.follower``), which does the replay, the live merge and the framing and writes through the
session's narrow writer interface (``send``, ``wait_room``, ``push_error``, ``schedule``, ``end``).
It takes time from an injected clock and writes only to its bounded outbound queue;
``close_socket`` (from the consumer) ends the connection.

Concurrency: frames are handled synchronously by ``handle_text`` through ONE routing table
(``ROUTES``), so heartbeats are answered even while a replay runs; the slow parts — join (token +
revocation check), subscribe (replay), unsubscribe, leave, and a follower's catch-up after a gap —
are commands run one at a time, in arrival order, by the session's own task (``run``). Replay is
never inside the frame handler.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import secrets
import time
from dataclasses import dataclass

from khala_project.conf import khala_setting
from khala_project.storable_text import UnstorableText, find_unstorable
from sync import metrics
from sync.errors import close_code, error_payload
from sync.follower import BatchLimits, Follower, TopicStatus
from sync.admission import SocketAdmission
from sync.policies import JoinPolicy, JoinRefused, RefreshPolicy, reauth_payload, session_deadline
from sync.protocol import (
    AUTH_FRAME_TOPIC,
    CHANNEL_TOPIC,
    HEARTBEAT,
    KIND_ERROR,
    PHOENIX_TOPIC,
    PHX_JOIN,
    PHX_LEAVE,
    PROTOCOL_VERSION,
    REFRESH,
    SUBSCRIBE,
    SYNC_ERROR,
    SYNC_HEARTBEAT,
    UNSUBSCRIBE,
    Cursor,
    Frame,
    ProtocolError,
    decode_frame,
    encode_error_reply,
    encode_frame,
    encode_khala_frame,
    encode_ok,
    encode_push,
    find_stale_cursors,
    inline_limit,
    parse_subscribe,
    parse_unsubscribe,
    stale_reason,
)

log = logging.getLogger(__name__)

# Client requests (join, subscribe, unsubscribe, leave) waiting for the command task; more are
# refused with rate_limited, so a client cannot grow a socket's memory by flooding requests.
MAX_PENDING_REQUESTS = 32
RATE_LIMIT_RETRY_AFTER_MS = 1000


class Status(enum.Enum):
    CONNECTED = "connected"
    JOINED = "joined"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(frozen=True)
class Route:
    handler: str  # the Session method that handles the frame
    needs_join: bool  # refused with bad_topic ("join sync:v1 first") before a join
    queued: bool  # run by the command task in arrival order (it awaits); else answered at once


# The ONE dispatch table: (topic, event) -> route. Anything else is bad_topic / unknown_event.
ROUTES = {
    (PHOENIX_TOPIC, HEARTBEAT): Route("_phoenix_heartbeat", needs_join=False, queued=False),
    (CHANNEL_TOPIC, PHX_JOIN): Route("_join", needs_join=False, queued=True),
    (CHANNEL_TOPIC, SUBSCRIBE): Route("_subscribe", needs_join=True, queued=True),
    (CHANNEL_TOPIC, UNSUBSCRIBE): Route("_unsubscribe", needs_join=True, queued=True),
    (CHANNEL_TOPIC, PHX_LEAVE): Route("_leave", needs_join=True, queued=True),
    (CHANNEL_TOPIC, REFRESH): Route("_refresh", needs_join=True, queued=True),
    # answered at once, except behind a pending join (it must see the join's outcome)
    (CHANNEL_TOPIC, SYNC_HEARTBEAT): Route("_heartbeat", needs_join=True, queued=False),
}
CATCHUP = Route("_catchup", needs_join=True, queued=True)  # a follower's gap, queued by the session itself
RENEW = Route("_renew_socket_place", needs_join=True, queued=True)  # the heartbeat tick's lease renewal


class Session:
    def __init__(self, hub, *, params: dict, close_socket, outbound, clock=time.monotonic, rng=None, max_message_bytes=None,
                 admission: SocketAdmission | None = None):
        self.hub = hub
        self.params = params
        self.outbound = outbound
        self._close_socket = close_socket  # callable(code: int, flush: bool, last_frame=None) -> None
        self.clock = clock
        self.rng = rng or hub.rng
        self.closed = False
        self.principal = None
        self.join_ref: str | None = None
        self.subscription_id: str | None = None
        self.frames = False
        self.followers: dict[str, Follower] = {}
        self._join_pending = 0
        self._commands: asyncio.Queue = asyncio.Queue()
        self.last_activity = clock()
        self.next_heartbeat: float | None = None
        self.max_frame_bytes = int(khala_setting("MAX_FRAME_BYTES"))
        self.heartbeat_interval = float(khala_setting("HEARTBEAT_INTERVAL_SECONDS"))
        self.heartbeat_timeout = float(khala_setting("HEARTBEAT_TIMEOUT_SECONDS"))
        self.batch_max = int(khala_setting("REPLAY_BATCH_MAX_SIZE"))
        self.batch_default = min(int(khala_setting("REPLAY_BATCH_SIZE")), self.batch_max)
        self.batch_max_bytes = int(khala_setting("REPLAY_BATCH_MAX_BYTES"))
        if max_message_bytes:  # the server cannot send larger messages (daphne/autobahn)
            self.batch_max_bytes = min(self.batch_max_bytes, max_message_bytes)
        self.limits = BatchLimits(
            inline_limit(int(khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")), self.batch_max_bytes), self.batch_max_bytes, self.batch_max
        )
        # Rate limits and this socket's place among its user's sockets (None: no limits, e.g. tests).
        self.admission = admission
        self.join_policy = JoinPolicy(hub.revocation, admission)  # revocation reads go through the hub's pool
        self.refresh_policy = RefreshPolicy(hub.revocation)
        # When the session ends unless refreshed (token exp + grace, on ``clock``); set at join.
        self.expires_at: float | None = None

    # ---- status ---------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.principal is not None

    @property
    def status(self) -> Status:
        if self.closed:
            return Status.CLOSED
        if not self.joined:
            return Status.CONNECTED
        if any(f.status is TopicStatus.REPLAYING for f in self.followers.values()):
            return Status.REPLAYING
        return Status.LIVE if self.followers else Status.JOINED

    @property
    def org_id(self) -> str | None:
        return self.principal.org_id if self.principal else None

    # ---- the writer interface of the followers (``sync.follower.Writer``) -------------------

    def send(self, text: str, committed_at: float | None = None) -> bool:
        if self.closed:
            return False
        if self.outbound.offer(text, committed_at):
            return True
        self._slow_consumer()
        return False

    async def wait_room(self) -> bool:
        """Replay is paced by the socket: it waits while the outbound queue is over half full,
        so catching up a large backlog never grows memory. A socket that takes no frame for a
        whole heartbeat timeout is a slow consumer."""
        if self.closed:
            return False
        if await self.outbound.wait_room(self.heartbeat_timeout):
            return not self.closed
        self._slow_consumer()
        return False

    def push_error(self, payload: dict, *, frame_topic: str = AUTH_FRAME_TOPIC, channel: str = CHANNEL_TOPIC) -> None:
        self.send(encode_frame(self.join_ref, None, channel, SYNC_ERROR, payload))
        if self.frames and channel == CHANNEL_TOPIC:
            self.send(encode_khala_frame(self.join_ref, frame_topic, 0, KIND_ERROR, payload))

    def schedule(self, follower: Follower) -> None:
        self._commands.put_nowait((CATCHUP, follower))  # never refused: the server asked for it

    def end(self, follower: Follower, reason: str) -> None:
        if self.followers.get(follower.topic) is follower:
            del self.followers[follower.topic]
        self.hub.unfollow(follower)
        self.hub.presence.stale_cursor(follower.topic)  # the admin's per-topic last hour

    def answer(self, text: str) -> bool:
        """Send a reply the frame handler gives at once (a heartbeat's, or a refusal's), unless the
        outbound queue is more than half full: then the reply is dropped (the frame still counted
        as client activity). A client that pipelines requests faster than the server drains its
        socket thus loses replies, never its socket: a burst of requests cannot fill the queue and
        close a reading client as ``slow_consumer``. The upper half of the queue stays for updates
        and for the replies of accepted requests (at most ``MAX_PENDING_REQUESTS`` in flight)."""
        if self.closed:
            return False
        if not self.outbound.has_room:
            metrics.REPLIES_DROPPED.inc()
            return False
        return self.send(text)

    # ---- closing ----------------------------------------------------------------------------

    def close(self, code: str, payload: dict | None = None, *, channel: str = CHANNEL_TOPIC, flush: bool = True) -> None:
        """Send ``payload`` as ``sync:error`` (if given), then close with the code's close code."""
        if self.closed:
            return
        if payload is not None:
            self.push_error(payload, channel=channel)
        self.closed = True
        self._close_socket(close_code(code), flush)

    def _refuse(self, frame: Frame | None, payload: dict, *, close: bool = False, at_once: bool = False) -> None:
        """An error reply to ``frame`` (a bare ``sync:error`` when it could not be decoded);
        ``close``: then close the socket with the code's close code; ``at_once``: a refusal by the
        frame handler itself, sent under the ``answer`` rule."""
        metrics.FRAMES_REJECTED.labels(code=payload["code"]).inc()
        if frame is None:
            self.send(encode_frame(None, None, PHOENIX_TOPIC, SYNC_ERROR, payload))
        elif at_once and not close:
            self.answer(encode_error_reply(frame, payload))
        else:
            self.send(encode_error_reply(frame, payload))
        if close:
            self.closed = True
            self._close_socket(close_code(payload["code"]), True)

    # ---- inbound frames (synchronous; never awaits) ----------------------------------------

    def handle_text(self, text: str | None, binary: bytes | None = None) -> None:
        if self.closed:
            return
        self.last_activity = self.clock()
        try:
            frame = decode_frame(text, max_bytes=self.max_frame_bytes, binary=binary)
        except ProtocolError as exc:
            self._refuse(None, exc.payload(), close=True)
            return
        unstorable = find_unstorable([frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload], "frame")
        if unstorable is not None:
            # No frame text reaches PostgreSQL today (topics are matched against the journal's
            # known topics in Python before any query; cursors are integers), but text PostgreSQL
            # cannot hold (NUL, lone surrogates) is refused here, with the HTTP boundary's check,
            # so no future field can carry it into a query: such a frame is malformed.
            self._refuse(None, error_payload("malformed_frame", UnstorableText(*unstorable).message, field=unstorable[0]), close=True)
            return
        if frame.topic not in (PHOENIX_TOPIC, CHANNEL_TOPIC):
            self._refuse(frame, error_payload("bad_topic", f"unknown topic {frame.topic[:64]!r}; join sync:v1"), at_once=True)
            return
        route = ROUTES.get((frame.topic, frame.event))
        if frame.topic == CHANNEL_TOPIC and (route is None or route.needs_join) and not (self.joined or self._join_pending):
            self._refuse(frame, error_payload("bad_topic", "join sync:v1 first"), at_once=True)
        elif route is None:
            self._refuse(frame, error_payload("unknown_event", f"unknown event {frame.event[:64]!r}", event=frame.event[:64]), at_once=True)
        elif route.queued or (self._join_pending and frame.topic == CHANNEL_TOPIC):
            if self._commands.qsize() >= MAX_PENDING_REQUESTS:
                self._refuse(frame, error_payload("rate_limited", retry_after_ms=RATE_LIMIT_RETRY_AFTER_MS), at_once=True)
                return
            self._commands.put_nowait((route, frame))
            if route.handler == "_join":
                self._join_pending += 1
        else:
            getattr(self, route.handler)(frame)

    async def run(self) -> None:
        """The command loop; the consumer runs it as a task and cancels it on disconnect."""
        while not self.closed:
            route, arg = await self._commands.get()
            try:
                if route.needs_join and not self.joined:
                    if route is not CATCHUP and route is not RENEW:
                        self._refuse(arg, error_payload("bad_topic", "join sync:v1 first"))
                    continue
                result = getattr(self, route.handler)(arg)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync session command %s failed", route.handler)
                self.close("internal", error_payload("internal"))
            finally:
                # Only once the join has run: a frame that arrives while it awaits (the token and
                # revocation checks) must queue behind it, not be refused as "join first"
                # (per-socket ordering, as in Phoenix).
                if route.handler == "_join":
                    self._join_pending -= 1

    # ---- handlers -------------------------------------------------------------------------

    def _phoenix_heartbeat(self, frame: Frame) -> None:
        self.answer(encode_ok(frame))

    def _heartbeat(self, frame: Frame) -> None:
        self.answer(encode_ok(frame, {"subscription_id": self.subscription_id, "watermarks": self._watermarks()}))

    async def _leave(self, frame: Frame) -> None:
        self._drop_all()
        self.principal = None
        self.expires_at = None
        if self.admission is not None:
            await self.admission.release()
        self.send(encode_ok(frame))

    async def _catchup(self, follower: Follower) -> None:
        if self.followers.get(follower.topic) is follower and follower.status is TopicStatus.REPLAYING:
            await follower.go_live()

    async def _join(self, frame: Frame) -> None:
        if self.admission is not None:  # before anything else, the token's verification included
            refusal = await self.admission.per_socket("joins_per_socket")
            if refusal is not None:
                metrics.JOINS.labels(result="rate_limited").inc()
                self._refuse(frame, refusal)
                return
        if self.joined:  # a rejoin (Phoenix clients rejoin after a join timeout): start over
            self._drop_all()
            self.principal = None
            self.expires_at = None
        try:
            principal = await self.join_policy.admit(self.params)
        except JoinRefused as refused:
            metrics.JOINS.labels(result=refused.code).inc()
            self._refuse(frame, refused.payload, close=refused.close)
            return
        self.principal = principal
        self.expires_at = session_deadline(principal, self.clock())
        self.join_ref = frame.join_ref
        self.subscription_id = "sub_" + secrets.token_hex(8)
        self.frames = frame.payload.get("frames") is True
        self.next_heartbeat = self.clock() + self.rng.uniform(0, self.heartbeat_interval)
        metrics.JOINS.labels(result="ok").inc()
        self.send(encode_ok(frame, {
            "subscription_id": self.subscription_id, "allowed_topics": list(principal.allowed_topics), "current_watermarks": [],
            "heartbeat_interval_ms": int(self.heartbeat_interval * 1000), "heartbeat_timeout_ms": int(self.heartbeat_timeout * 1000),
            "replay_batch_max_size": self.batch_max, "protocol_version": PROTOCOL_VERSION,
        }))

    async def _subscribe(self, frame: Frame) -> None:
        if self.admission is not None:  # before the topic list and journal reads
            refusal = await self.admission.per_socket("subscribes_per_socket")
            if refusal is not None:
                metrics.SUBSCRIBES.labels(result="rate_limited").inc()
                self._refuse(frame, refusal)
                return
        started = self.clock()
        try:
            request = parse_subscribe(
                frame.payload, known_topics=await self.hub.known_topics(), allowed_topics=self.principal.allowed_topics,
                default_batch_size=self.batch_default, max_batch_size=self.batch_max,
            )
        except ProtocolError as exc:
            metrics.SUBSCRIBES.labels(result=exc.code).inc()
            self._refuse(frame, exc.payload())
            return
        states = await self.hub.journal.topic_states(request.topics)
        stale = find_stale_cursors(request, states)
        if stale is not None:
            for entry in stale["stale_topics"]:
                metrics.STALE_CURSORS.labels(reason=entry["reason"]).inc()
                self.hub.presence.stale_cursor(entry["topic"])  # the admin's per-topic last hour
            metrics.SUBSCRIBES.labels(result="stale_cursor").inc()
            metrics.CATCHUP_DURATION.labels(status="stale_cursor").observe(self.clock() - started)
            self.push_error(stale, frame_topic=stale["stale_topics"][0]["topic"])
            self._refuse(frame, stale)
            return
        if any(cursor.watermark > 0 for cursor in request.cursors.values()):
            metrics.RECONNECTS.inc()
        # The replay → live handover is the follower's (``sync.follower``, steps 1–6): it is
        # created buffering, registered with the hub, replays, and goes live after the reply.
        started_followers = []
        for topic in request.topics:
            cursor = request.cursors.get(topic)
            if topic in self.followers and cursor is None:
                continue  # already followed, no new cursor: nothing to do
            previous = self.followers.get(topic)
            if previous is not None:  # a new cursor for a followed topic: start that topic over
                previous.ended = True
                self.hub.unfollow(previous)
            state = states[topic]
            position = cursor.watermark if cursor else state.pruned_through
            follower = Follower(topic, self, self.hub.journal, position=position, state=state, limits=self.limits)
            self.followers[topic] = follower
            self.hub.follow(follower)
            started_followers.append(follower)
        for follower in started_followers:
            if self.followers.get(follower.topic) is follower:
                await follower.replay(request.replay_batch_size)
            if self.closed:
                return
        metrics.SUBSCRIBES.labels(result="ok").inc()
        metrics.CATCHUP_DURATION.labels(status="ok").observe(self.clock() - started)
        current = [self.followers[t].watermark() for t in request.topics if t in self.followers]
        reply = {"subscription_id": self.subscription_id, "topics": list(request.topics), "current_watermarks": current}
        if request.request_id is not None:
            reply["request_id"] = request.request_id
        self.send(encode_ok(frame, reply))
        for follower in started_followers:
            if self.followers.get(follower.topic) is follower:
                await follower.go_live()

    async def _refresh(self, frame: Frame) -> None:
        """``sync:refresh {token}``: the session continues on the new token (``RefreshPolicy`` says
        which tokens qualify). Only the principal and the deadline change: followers, cursors and the
        outbound queue are not touched, so no update is replayed or lost across a refresh."""
        token = frame.payload.get("token") if isinstance(frame.payload, dict) else None
        try:
            principal = await self.refresh_policy.refresh(self.principal, token)
        except JoinRefused as refused:
            metrics.REFRESHES.labels(result=refused.payload.get("reason") or refused.code).inc()
            self._refuse(frame, refused.payload, close=refused.close)
            return
        if self.closed or not self.joined:
            return
        self.principal = principal
        self.expires_at = session_deadline(principal, self.clock())
        metrics.REFRESHES.labels(result="ok").inc()
        self.send(encode_ok(frame, {"expires_at": principal.expires_at}))

    async def _renew_socket_place(self, _arg) -> None:
        if self.admission is not None:
            await self.admission.renew()

    def _unsubscribe(self, frame: Frame) -> None:
        try:
            topics = parse_unsubscribe(frame.payload, self.followers.keys())
        except ProtocolError as exc:
            self._refuse(frame, exc.payload())
            return
        for topic in topics:
            follower = self.followers.pop(topic, None)
            if follower is not None:
                follower.ended = True
                self.hub.unfollow(follower)
        self.send(encode_ok(frame, {"subscription_id": self.subscription_id, "topics": list(self.followers)}))

    def _drop_all(self) -> None:
        for follower in self.followers.values():
            follower.ended = True
            self.hub.unfollow(follower)
        self.followers.clear()

    # ---- heartbeats, revocation, liveness -----------------------------------------------------

    def _watermarks(self) -> list:
        out = []
        for topic, follower in self.followers.items():
            entry = follower.watermark()
            entry["head_watermark"] = max(self.hub.head(topic), follower.last_sent)
            out.append(entry)
        return out

    def tick(self, now: float) -> None:
        """Called by the hub's ticker (and by tests with a fake clock)."""
        if self.closed:
            return
        if now - self.last_activity >= self.heartbeat_timeout:
            metrics.HEARTBEAT_TIMEOUTS.inc()
            self.close("heartbeat_timeout", error_payload("heartbeat_timeout", action="disconnect"))
            return
        if self.joined and self.expires_at is not None and now >= self.expires_at:
            metrics.TOKEN_EXPIRY_CLOSES.inc()
            self.close("token_expired", error_payload("token_expired", action="disconnect"))
            return
        if self.joined and self.next_heartbeat is not None and now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_interval
            self.send(encode_push(self.join_ref, SYNC_HEARTBEAT, {"watermarks": self._watermarks()}))
            if self.admission is not None and self.admission.holder_of is not None:
                self._commands.put_nowait((RENEW, None))  # keeps this socket's place among its user's

    def revoke(self, reason: str) -> None:
        if self.closed:  # already closing: a revocation heard on several bus shards counts once
            return
        metrics.REVOCATION_CLOSES.inc()
        self.close("reauth_required", reauth_payload(reason))

    def _slow_consumer(self) -> None:
        if self.closed:
            return
        metrics.SLOW_CONSUMER_CLOSES.inc()
        full_resync = any(
            (state := self.hub.topic_state(f.topic)) is not None and stale_reason(Cursor(f.topic, f.last_sent), state) is not None
            for f in self.followers.values()
        )
        payload = error_payload("slow_consumer", action="disconnect", queue_limit=self.outbound.max_items, full_resync_required=full_resync)
        self.closed = True
        self.outbound.close()
        # The queue is full and the client is not reading: the error frame goes straight to the
        # transport (best effort) and the socket is closed without flushing.
        self._close_socket(close_code("slow_consumer"), False, encode_frame(self.join_ref, None, CHANNEL_TOPIC, SYNC_ERROR, payload))

    def shutdown(self) -> None:
        """The socket is gone: forget everything (called by the consumer on disconnect)."""
        self.closed = True
        self._drop_all()
        self.outbound.close()

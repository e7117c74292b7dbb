"""The per-socket state machine of the ``sync:v1`` channel.

Status: ``connected`` (socket open, not joined) → ``joined`` → ``replaying`` (a topic is being
replayed or caught up) / ``live`` (every followed topic is live) → ``closed``. The session does
no I/O of its own: it dispatches frames, owns the socket's lifecycle (join, leave, heartbeats,
idle timeout, revocation) and one ``Follower`` per followed topic (``sync.follower``), which does
the replay, the live merge and the framing. It takes time from an injected clock.

What it delegates: who may join or refresh, and until when, is decided by ``sync.policies``
(``JoinPolicy``, ``RefreshPolicy``, ``session_deadline``); rate limits and the socket's place
among its user's sockets by ``sync.admission``; every frame it or a follower sends, the replies,
the refusals, closing and the slow-consumer close by its ``sync.outbound.Outbox`` (``self.out``),
which queues them into the socket's bounded outbound queue (``close_socket``, from the consumer,
ends the connection). The followers' writer interface (``sync.follower.Writer``) is the session's
``schedule`` and ``end`` over the outbox's ``send``, ``wait_room`` and ``push_error``.

Concurrency: frames are handled synchronously by ``handle_text`` through ONE routing table
(``ROUTES``), so heartbeats are answered even while a replay runs; the slow parts — join (token +
revocation check), subscribe (replay), unsubscribe, leave, and a follower's catch-up after a gap —
are commands run one at a time, in arrival order, by the session's ``CommandQueue``
(``sync.command_queue``: a task that exists only while commands wait or run, so an idle socket
has none). Replay is never inside the frame handler.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import secrets
import time
from dataclasses import dataclass
from operator import attrgetter

from khala_project.conf import khala_setting
from khala_project.storable_text import UnstorableText, find_unstorable
from sync import metrics
from sync.admission import NoLimits, SocketAdmission
from sync.command_queue import CommandQueue
from sync.errors import error_payload
from sync.follower import BatchLimits, Follower, TopicStatus
from sync.outbound import Outbox
from sync.policies import JoinPolicy, JoinRefused, RefreshPolicy, reauth_payload, session_deadline
from sync.protocol import (
    CHANNEL_TOPIC,
    HEARTBEAT,
    PHOENIX_TOPIC,
    PHX_JOIN,
    PHX_LEAVE,
    PROTOCOL_VERSION,
    REFRESH,
    SUBSCRIBE,
    SYNC_ERROR,
    SYNC_HEARTBEAT,
    UNSUBSCRIBE,
    Frame,
    ProtocolError,
    decode_frame,
    encode_frame,
    encode_ok,
    encode_push,
    find_stale_cursors,
    parse_subscribe,
    parse_unsubscribe,
)

log = logging.getLogger(__name__)

# Client requests (join, subscribe, unsubscribe, leave) waiting for the command task; more are
# refused with rate_limited, so a client cannot grow a socket's memory by flooding requests.
MAX_PENDING_REQUESTS = 32
RATE_LIMIT_RETRY_AFTER_MS = 1000


def connect_params_refusal(params: dict) -> str | None:
    """The frame refusing a socket whose connect URL holds unstorable text in a query parameter
    (its name or value: the token, ``vsn``, the compatibility parameters), else None.

    The same check as every frame's (below) and as the HTTP boundary's: the token would otherwise
    reach the verifier, and any parameter a future join step reads could reach PostgreSQL. Such a
    socket is refused at connect, before the hub or its pool is touched, as a ``malformed_frame``
    (close 4400) whose ``field`` names the parameter: a client sending it is broken, not unlucky."""
    for name, value in params.items():
        found = find_unstorable(name, "query parameter name") or find_unstorable(value, f"query parameter {name[:64]!r}")
        if found is not None:
            payload = error_payload("malformed_frame", UnstorableText(*found).message, field=found[0])
            return encode_frame(None, None, PHOENIX_TOPIC, SYNC_ERROR, payload)
    return None


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
        self.clock = clock
        self.rng = rng or hub.rng
        self.principal = None
        self.expires_at: float | None = None  # token exp + grace, on ``clock`` (set at join): the end unless refreshed
        self.subscription_id: str | None = None
        self.followers: dict[str, Follower] = {}
        self._join_pending = 0
        self._commands = CommandQueue(self._run_command)  # allocates nothing until a command is queued
        self.last_activity = clock()
        self.next_heartbeat: float | None = None
        self.max_frame_bytes = int(khala_setting("MAX_FRAME_BYTES"))
        self.heartbeat_interval = float(khala_setting("HEARTBEAT_INTERVAL_SECONDS"))
        self.heartbeat_timeout = float(khala_setting("HEARTBEAT_TIMEOUT_SECONDS"))
        self.limits = BatchLimits.from_settings(max_message_bytes)
        # Every frame of this socket goes out through here (``outbound`` is its bounded queue).
        self.out = Outbox(outbound, close_socket, wait_timeout=self.heartbeat_timeout, full_resync_required=self._full_resync_required)
        self.send = self.out.send  # the followers' ``Writer.send``: bound once, called per live frame
        # Rate limits and this socket's place among its user's sockets (none given: no limits, e.g. tests).
        # The join and refresh policies are made when a join or refresh runs (``_join``, ``_refresh``),
        # not kept: an idle socket needs neither.
        self.admission = admission or NoLimits()

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
    def principal(self):
        return self._principal

    @principal.setter
    def principal(self, principal) -> None:
        self._principal = principal
        # Read by the followers once per live frame (the owner filter): a plain attribute, kept
        # with the principal it comes from.
        self.org_id: str | None = principal.org_id if principal else None

    # ---- the followers' writer (``sync.follower.Writer``): the outbox's, plus schedule and end --

    # ``attrgetter`` rather than a lambda: the followers read ``closed`` and ``frames`` per live
    # frame, and a C getter adds no Python call there.
    join_ref = property(attrgetter("out.join_ref"))
    frames = property(attrgetter("out.frames"))
    closed = property(attrgetter("out.closed"))
    wait_room = property(attrgetter("out.wait_room"))
    push_error = property(attrgetter("out.push_error"))

    def _full_resync_required(self) -> bool:
        return any(f.pruned_past(self.hub.topic_state(f.topic)) for f in self.followers.values())

    def send_many(self, frames: list) -> int:
        return self.out.send_many(frames)

    def fail(self) -> None:
        """Work for this socket failed on a bug: tell the client ``internal`` and close (4500)."""
        self.out.close("internal", error_payload("internal"))

    def schedule(self, follower: Follower) -> None:
        self._commands.put((CATCHUP, follower))  # never refused: the server asked for it

    def end(self, follower: Follower, reason: str) -> None:
        if self.followers.get(follower.topic) is follower:
            del self.followers[follower.topic]
        self.hub.unfollow(follower)
        self.hub.presence.stale_cursor(follower.topic)  # the admin's per-topic last hour

    # ---- inbound frames (synchronous; never awaits) ----------------------------------------

    def handle_text(self, text: str | None, binary: bytes | None = None) -> None:
        if self.closed:
            return
        self.last_activity = self.clock()
        try:
            frame = decode_frame(text, max_bytes=self.max_frame_bytes, binary=binary)
        except ProtocolError as exc:
            self.out.refuse(None, exc.payload(), close=True)
            return
        unstorable = find_unstorable([frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload], "frame")
        if unstorable is not None:
            # No frame text reaches PostgreSQL today (topics are matched against the journal's
            # known topics in Python before any query; cursors are integers), but text PostgreSQL
            # cannot hold (NUL, lone surrogates) is refused here, with the HTTP boundary's check,
            # so no future field can carry it into a query: such a frame is malformed.
            self.out.refuse(None, error_payload("malformed_frame", UnstorableText(*unstorable).message, field=unstorable[0]), close=True)
            return
        if frame.topic not in (PHOENIX_TOPIC, CHANNEL_TOPIC):
            self.out.refuse(frame, error_payload("bad_topic", f"unknown topic {frame.topic[:64]!r}; join sync:v1"), at_once=True)
            return
        route = ROUTES.get((frame.topic, frame.event))
        if frame.topic == CHANNEL_TOPIC and (route is None or route.needs_join) and not (self.joined or self._join_pending):
            self.out.refuse(frame, error_payload("bad_topic", "join sync:v1 first"), at_once=True)
        elif route is None:
            self.out.refuse(frame, error_payload("unknown_event", f"unknown event {frame.event[:64]!r}", event=frame.event[:64]), at_once=True)
        elif route.queued or (self._join_pending and frame.topic == CHANNEL_TOPIC):
            if len(self._commands) >= MAX_PENDING_REQUESTS:
                self.out.refuse(frame, error_payload("rate_limited", retry_after_ms=RATE_LIMIT_RETRY_AFTER_MS), at_once=True)
                return
            self._commands.put((route, frame))
            if route.handler == "_join":
                self._join_pending += 1
        else:
            getattr(self, route.handler)(frame)

    async def _run_command(self, command) -> None:
        """One queued command (``self._commands`` runs them one at a time, in arrival order)."""
        if self.closed:
            return
        route, arg = command
        try:
            if route.needs_join and not self.joined:
                if route is not CATCHUP and route is not RENEW:
                    self.out.refuse(arg, error_payload("bad_topic", "join sync:v1 first"))
                return
            result = getattr(self, route.handler)(arg)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sync session command %s failed", route.handler)
            self.fail()
        finally:
            # Only once the join has run: a frame that arrives while it awaits (the token and
            # revocation checks) must queue behind it, not be refused as "join first"
            # (per-socket ordering, as in Phoenix).
            if route.handler == "_join":
                self._join_pending -= 1

    # ---- handlers -------------------------------------------------------------------------

    def _phoenix_heartbeat(self, frame: Frame) -> None:
        self.out.answer(encode_ok(frame))

    def _heartbeat(self, frame: Frame) -> None:
        self.out.answer(encode_ok(frame, {"subscription_id": self.subscription_id, "watermarks": self._watermarks()}))

    async def _join(self, frame: Frame) -> None:
        try:
            policy = JoinPolicy(self.hub.revocation, self.admission)  # revocation reads go through the hub's pool
            await policy.socket_rate()
            if self.joined:  # a rejoin (Phoenix clients rejoin after a join timeout): start over
                self._forget_principal()
            principal = await policy.admit(self.params)
        except JoinRefused as refused:
            self.out.refuse(frame, refused.payload, close=refused.close)
            return
        self.principal = principal
        self.expires_at = session_deadline(principal, self.clock())
        self.out.join_ref = frame.join_ref
        self.subscription_id = "sub_" + secrets.token_hex(8)
        self.out.frames = frame.payload.get("frames") is True
        self.next_heartbeat = self.clock() + self.rng.uniform(0, self.heartbeat_interval)
        metrics.JOINS.labels(result="ok").inc()
        self.send(encode_ok(frame, {
            "subscription_id": self.subscription_id, "allowed_topics": list(principal.allowed_topics), "current_watermarks": [],
            "heartbeat_interval_ms": int(self.heartbeat_interval * 1000), "heartbeat_timeout_ms": int(self.heartbeat_timeout * 1000),
            "replay_batch_max_size": self.limits.max_size, "protocol_version": PROTOCOL_VERSION,
        }))

    async def _refresh(self, frame: Frame) -> None:
        """``sync:refresh {token}``: the session continues on the new token (``RefreshPolicy`` says
        which tokens qualify). Only the principal and the deadline change: followers, cursors and the
        outbound queue are not touched, so no update is replayed or lost across a refresh."""
        try:
            principal = await RefreshPolicy(self.hub.revocation).refresh(self.principal, frame.payload)
        except JoinRefused as refused:
            self.out.refuse(frame, refused.payload, close=refused.close)
            return
        if self.closed or not self.joined:
            return
        self.principal = principal
        self.expires_at = session_deadline(principal, self.clock())
        metrics.REFRESHES.labels(result="ok").inc()
        self.send(encode_ok(frame, {"expires_at": principal.expires_at}))

    async def _leave(self, frame: Frame) -> None:
        self._forget_principal()
        await self.admission.release()
        self.send(encode_ok(frame))

    async def _renew_socket_place(self, _arg) -> None:
        await self.admission.renew()

    def _forget_principal(self) -> None:
        self._drop_all()
        self.principal = None
        self.expires_at = None

    async def _subscribe(self, frame: Frame) -> None:
        refusal = await self.admission.per_socket("subscribes_per_socket")  # before the topic list and journal reads
        if refusal is not None:
            metrics.SUBSCRIBES.labels(result="rate_limited").inc()
            self.out.refuse(frame, refusal)
            return
        started = self.clock()
        try:
            request = parse_subscribe(
                frame.payload, known_topics=await self.hub.known_topics(), allowed_topics=self.principal.allowed_topics,
                default_batch_size=self.limits.default_size, max_batch_size=self.limits.max_size,
            )
        except ProtocolError as exc:
            metrics.SUBSCRIBES.labels(result=exc.code).inc()
            self.out.refuse(frame, exc.payload())
            return
        # A replica may answer when it refuses none of the cursors; a refusal is the primary's.
        states = await self.hub.journal.resume_states(request.topics, request.cursors)
        stale = find_stale_cursors(request, states)
        if stale is not None:
            for entry in stale["stale_topics"]:
                metrics.STALE_CURSORS.labels(reason=entry["reason"]).inc()
                self.hub.presence.stale_cursor(entry["topic"])  # the admin's per-topic last hour
            metrics.SUBSCRIBES.labels(result="stale_cursor").inc()
            metrics.CATCHUP_DURATION.labels(status="stale_cursor").observe(self.clock() - started)
            self.out.push_error(stale, frame_topic=stale["stale_topics"][0]["topic"])
            self.out.refuse(frame, stale)
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
            # The replay must reach at least where the hub's feed already is: the feed offers
            # only what comes after its cursor (a replica's older snapshot is not enough).
            follower.known_head = max(follower.known_head, self.hub.head(topic))
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

    async def _catchup(self, follower: Follower) -> None:
        if self.followers.get(follower.topic) is follower and follower.status is TopicStatus.REPLAYING:
            await follower.go_live()

    def _unsubscribe(self, frame: Frame) -> None:
        try:
            topics = parse_unsubscribe(frame.payload, self.followers.keys())
        except ProtocolError as exc:
            self.out.refuse(frame, exc.payload())
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
        return [{**f.watermark(), "head_watermark": max(self.hub.head(topic), f.last_sent)} for topic, f in self.followers.items()]

    def tick(self, now: float) -> None:
        """Called by the hub's ticker (and by tests with a fake clock)."""
        if self.closed:
            return
        if now - self.last_activity >= self.heartbeat_timeout:
            metrics.HEARTBEAT_TIMEOUTS.inc()
            self.out.close("heartbeat_timeout", error_payload("heartbeat_timeout", action="disconnect"))
            return
        if self.joined and self.expires_at is not None and now >= self.expires_at:
            metrics.TOKEN_EXPIRY_CLOSES.inc()
            self.out.close("token_expired", error_payload("token_expired", action="disconnect"))
            return
        if self.joined and self.next_heartbeat is not None and now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_interval
            self.send(encode_push(self.join_ref, SYNC_HEARTBEAT, {"watermarks": self._watermarks()}))
            if self.admission.holder_of is not None:
                self._commands.put((RENEW, None))  # keeps this socket's place among its user's

    def revoke(self, reason: str) -> None:
        if self.closed:  # already closing: a revocation heard on several bus shards counts once
            return
        metrics.REVOCATION_CLOSES.inc()
        self.out.close("reauth_required", reauth_payload(reason))

    def shutdown(self) -> None:
        """The socket is gone: forget everything (called by the consumer on disconnect); a command
        running is cancelled and the waiting ones are dropped."""
        self._commands.close()
        self.out.shutdown()
        self._drop_all()

"""The per-socket state machine of the ``sync:v1`` channel.

Status: ``connected`` (socket open, not joined) → ``joined`` → ``replaying`` (a topic is being
replayed or caught up) / ``live`` (every followed topic is live) → ``closed``. The session does
no I/O of its own: it reads the journal through ``hub.journal``, learns live rows from the hub
(``offer``), takes time from an injected clock, and writes only to its bounded outbound queue;
``close_socket`` (from the consumer) ends the connection.

Concurrency: frames are handled synchronously by ``handle_text`` (so heartbeats are answered even
while a replay runs); the slow parts — join (token + revocation check), subscribe (replay),
unsubscribe, leave, and catch-up after a gap — are commands run one at a time, in arrival order, by
the session's own task (``run``). Replay is never inside the frame handler.

Per (socket, topic) the session keeps ``last_sent``: every row of the topic with a watermark at or
below it that this socket may see has been queued (topic-wide: rows of other owners count too).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field

from khala_project.conf import khala_setting
from sync import metrics
from sync.errors import close_code, error_payload
from sync.policies import CompatibilityGate, JoinRefused, TokenAuthentication, reauth_payload
from sync.protocol import (
    AUTH_FRAME_TOPIC,
    CHANNEL_TOPIC,
    HEARTBEAT,
    KIND_ERROR,
    KIND_UPDATE_BATCH,
    MAX_WATERMARK,
    PHOENIX_TOPIC,
    PHX_JOIN,
    PHX_LEAVE,
    PROTOCOL_VERSION,
    SUBSCRIBE,
    SYNC_ERROR,
    SYNC_HEARTBEAT,
    UNSUBSCRIBE,
    Cursor,
    Frame,
    ProtocolError,
    TopicState,
    batch_payload,
    decode_frame,
    encode_error_reply,
    encode_frame,
    encode_khala_frame,
    encode_ok,
    encode_push,
    encode_update,
    find_stale_cursors,
    inline_limit,
    parse_subscribe,
    parse_unsubscribe,
    split_batches,
    stale_cursor_error,
    stale_reason,
)

log = logging.getLogger(__name__)

# Live rows buffered per topic while that topic replays; past this the buffer is dropped and the
# rows are read from the journal instead (the journal is the truth; the buffer is an optimisation).
HANDOVER_BUFFER_LIMIT_ROWS = 5000
# Client requests (join, subscribe, unsubscribe, leave) waiting for the command task; more are
# refused with rate_limited, so a client cannot grow a socket's memory by flooding requests.
MAX_PENDING_REQUESTS = 32
# Journal rows read per replay query (then cut into batches of the client's size).
REPLAY_PAGE_ROWS = 1000
RATE_LIMIT_RETRY_AFTER_MS = 1000


class Status(enum.Enum):
    CONNECTED = "connected"
    JOINED = "joined"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSED = "closed"


class TopicStatus(enum.Enum):
    REPLAYING = "replaying"  # buffering live ranges while reading the journal
    LIVE = "live"


# --------------------------------------------------------------------------------------------
# Live ranges and the handover merge (pure)


@dataclass(eq=False)
class LiveRange:
    """Every row of ``topic`` with ``start < watermark <= end``, read once by the hub.

    ``rows`` is None for a *marker*: "rows up to ``end`` exist but were not kept" (a dropped
    buffer); the merge turns a marker into a journal read. ``batch`` is the hub's shared encoder
    (``sync.hub.LiveBatch``) — None in pure tests."""

    start: int
    end: int
    rows: tuple | None
    stream_epoch: str = ""
    batch: object = None


@dataclass
class MergePlan:
    deliver: list  # [(LiveRange, after)]: send rows of the range with watermark > after, in order
    through: int  # the position once ``deliver`` is sent
    gap: tuple[int, int] | None  # (lo, hi]: read the journal for it before anything in ``pending``
    pending: list  # ranges after the gap, to merge again once the gap is read


def merge_live(last_sent: int, ranges: list) -> MergePlan:
    """Merge buffered live ranges onto a position. Ranges at or below ``last_sent`` are dropped
    (duplicates); overlapping ones are trimmed; the first hole (a range starting above the
    position, or a marker) stops the merge and is reported as ``gap`` — it is never skipped."""
    cursor = last_sent
    deliver = []
    ordered = sorted(ranges, key=lambda r: (r.start, r.end))
    for index, r in enumerate(ordered):
        if r.end <= cursor:
            continue
        if r.rows is None:
            return MergePlan(deliver, cursor, (cursor, r.end), ordered[index + 1 :])
        if r.start > cursor:
            return MergePlan(deliver, cursor, (cursor, r.start), ordered[index:])
        deliver.append((r, cursor))
        cursor = r.end
    return MergePlan(deliver, cursor, None, [])


@dataclass
class TopicSub:
    topic: str
    status: TopicStatus
    last_sent: int
    stream_epoch: str
    buffer: list = field(default_factory=list)
    buffered_rows: int = 0


# --------------------------------------------------------------------------------------------
# The session


class Session:
    def __init__(self, hub, *, params: dict, close_socket, outbound, clock=time.monotonic, rng=None, max_message_bytes=None):
        self.hub = hub
        self.params = params
        self.outbound = outbound
        self._close_socket = close_socket  # callable(code: int, flush: bool) -> None
        self.clock = clock
        self.rng = rng or hub.rng
        self.status_closed = False
        self.principal = None
        self.join_ref: str | None = None
        self.subscription_id: str | None = None
        self.frames = False
        self.subs: dict[str, TopicSub] = {}
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
        self.inline_limit = inline_limit(int(khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")), self.batch_max_bytes)
        self.gate = CompatibilityGate()
        self.auth = TokenAuthentication()
        self.revocation = hub.revocation  # reads through the hub's journal pool

    # ---- status ---------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.principal is not None

    @property
    def closed(self) -> bool:
        return self.status_closed

    @property
    def status(self) -> Status:
        if self.status_closed:
            return Status.CLOSED
        if not self.joined:
            return Status.CONNECTED
        if any(sub.status is TopicStatus.REPLAYING for sub in self.subs.values()):
            return Status.REPLAYING
        return Status.LIVE if self.subs else Status.JOINED

    @property
    def org_id(self) -> str | None:
        return self.principal.org_id if self.principal else None

    # ---- output ---------------------------------------------------------------------------

    def _send(self, text: str, committed_at: float | None = None) -> bool:
        if self.status_closed:
            return False
        if self.outbound.offer(text, committed_at):
            return True
        self._slow_consumer()
        return False

    def _push_error(self, payload: dict, *, frame_topic: str = AUTH_FRAME_TOPIC, channel: str = CHANNEL_TOPIC) -> None:
        self._send(encode_frame(self.join_ref, None, channel, SYNC_ERROR, payload))
        if self.frames and channel == CHANNEL_TOPIC:
            self._send(encode_khala_frame(self.join_ref, frame_topic, 0, KIND_ERROR, payload))

    def close(self, code: str, payload: dict | None = None, *, channel: str = CHANNEL_TOPIC, flush: bool = True) -> None:
        """Send ``payload`` as ``sync:error`` (if given), then close with the code's close code."""
        if self.status_closed:
            return
        if payload is not None:
            self._push_error(payload, channel=channel)
        self.status_closed = True
        self._close_socket(close_code(code), flush)

    def _reply_error(self, frame: Frame, payload: dict) -> None:
        metrics.FRAMES_REJECTED.labels(code=payload["code"]).inc()
        self._send(encode_error_reply(frame, payload))

    # ---- inbound frames (synchronous; never awaits) ----------------------------------------

    def handle_text(self, text: str | None, binary: bytes | None = None) -> None:
        if self.status_closed:
            return
        self.last_activity = self.clock()
        try:
            frame = decode_frame(text, max_bytes=self.max_frame_bytes, binary=binary)
        except ProtocolError as exc:
            metrics.FRAMES_REJECTED.labels(code=exc.code).inc()
            self._send(encode_frame(None, None, PHOENIX_TOPIC, SYNC_ERROR, exc.payload()))
            self.status_closed = True
            self._close_socket(close_code(exc.code), True)
            return
        if frame.topic == PHOENIX_TOPIC:
            if frame.event == HEARTBEAT:
                self._send(encode_ok(frame))
            else:
                self._reply_error(frame, error_payload("unknown_event", f"unknown event {frame.event[:64]!r}", event=frame.event[:64]))
            return
        if frame.topic != CHANNEL_TOPIC:
            self._reply_error(frame, error_payload("bad_topic", f"unknown topic {frame.topic[:64]!r}; join sync:v1"))
            return
        if frame.event == PHX_JOIN:
            if self._enqueue("join", frame):
                self._join_pending += 1
            return
        if not (self.joined or self._join_pending):
            self._reply_error(frame, error_payload("bad_topic", "join sync:v1 first"))
            return
        if frame.event in (SUBSCRIBE, UNSUBSCRIBE, PHX_LEAVE):
            self._enqueue(frame.event, frame)
        elif frame.event == SYNC_HEARTBEAT:
            if self._join_pending:
                self._enqueue(frame.event, frame)
            else:
                self._send(encode_ok(frame, {"subscription_id": self.subscription_id, "watermarks": self._watermarks()}))
        else:
            self._reply_error(frame, error_payload("unknown_event", f"unknown event {frame.event[:64]!r}", event=frame.event[:64]))

    def _enqueue(self, kind: str, frame: Frame) -> bool:
        """Queue a client request for the command task; past ``MAX_PENDING_REQUESTS`` requests in
        flight the request is refused (``rate_limited``) instead of growing the queue."""
        if self._commands.qsize() >= MAX_PENDING_REQUESTS:
            self._reply_error(frame, error_payload("rate_limited", retry_after_ms=RATE_LIMIT_RETRY_AFTER_MS))
            return False
        self._commands.put_nowait((kind, frame))
        return True

    # ---- commands (run one at a time by ``run``) --------------------------------------------

    async def run(self) -> None:
        """The session's command loop; the consumer runs it as a task and cancels it on disconnect."""
        while not self.status_closed:
            kind, arg = await self._commands.get()
            try:
                if kind == "join":
                    self._join_pending -= 1
                    await self._join(arg)
                elif not self.joined:
                    self._reply_error(arg, error_payload("bad_topic", "join sync:v1 first"))
                elif kind == SUBSCRIBE:
                    await self._subscribe(arg)
                elif kind == UNSUBSCRIBE:
                    self._unsubscribe(arg)
                elif kind == PHX_LEAVE:
                    self._drop_all()
                    self.principal = None
                    self._send(encode_ok(arg))
                elif kind == SYNC_HEARTBEAT:
                    self._send(encode_ok(arg, {"subscription_id": self.subscription_id, "watermarks": self._watermarks()}))
                elif kind == "catchup":
                    sub = self.subs.get(arg)
                    if sub is not None and sub.status is TopicStatus.REPLAYING:
                        await self._go_live(sub)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync session command %s failed", kind)
                self.close("internal", error_payload("internal"))

    async def _join(self, frame: Frame) -> None:
        if self.joined:  # a rejoin (Phoenix clients rejoin after a join timeout): start over
            self._drop_all()
            self.principal = None
        try:
            principal = self.auth.authenticate(self.params.get("token"))
            self.gate.check(self.params, principal.claims)
            reason = await self.revocation.revoked_reason(principal)
            if reason:
                raise JoinRefused(reauth_payload(reason))
        except JoinRefused as refused:
            if refused.code == "unauthorized" and self.gate.enabled():
                # The gate runs first when enforced (a client too old to mint tokens correctly
                # should hear "upgrade", not "unauthorized"); without claims only params count.
                try:
                    self.gate.check(self.params, {})
                except JoinRefused as gate_refusal:
                    refused = gate_refusal
            metrics.JOINS.labels(result=refused.code).inc()
            metrics.FRAMES_REJECTED.labels(code=refused.code).inc()
            self._send(encode_error_reply(frame, refused.payload))
            self.status_closed = True
            self._close_socket(close_code(refused.code), True)
            return
        self.principal = principal
        self.join_ref = frame.join_ref
        self.subscription_id = "sub_" + secrets.token_hex(8)
        self.frames = frame.payload.get("frames") is True
        self.next_heartbeat = self.clock() + self.rng.uniform(0, self.heartbeat_interval)
        metrics.JOINS.labels(result="ok").inc()
        self._send(
            encode_ok(
                frame,
                {
                    "subscription_id": self.subscription_id,
                    "allowed_topics": list(principal.allowed_topics),
                    "current_watermarks": [],
                    "heartbeat_interval_ms": int(self.heartbeat_interval * 1000),
                    "heartbeat_timeout_ms": int(self.heartbeat_timeout * 1000),
                    "replay_batch_max_size": self.batch_max,
                    "protocol_version": PROTOCOL_VERSION,
                },
            )
        )

    async def _subscribe(self, frame: Frame) -> None:
        started = self.clock()
        try:
            request = parse_subscribe(
                frame.payload,
                known_topics=await self.hub.known_topics(),
                allowed_topics=self.principal.allowed_topics,
                default_batch_size=self.batch_default,
                max_batch_size=self.batch_max,
            )
        except ProtocolError as exc:
            metrics.SUBSCRIBES.labels(result=exc.code).inc()
            self._reply_error(frame, exc.payload())
            return
        states = await self.hub.journal.topic_states(request.topics)
        stale = find_stale_cursors(request, states)
        if stale is not None:
            for entry in stale["stale_topics"]:
                metrics.STALE_CURSORS.labels(reason=entry["reason"]).inc()
                self.hub.presence.stale_cursor(entry["topic"])  # the admin's per-topic last hour
            metrics.SUBSCRIBES.labels(result="stale_cursor").inc()
            metrics.CATCHUP_DURATION.labels(status="stale_cursor").observe(self.clock() - started)
            self._push_error(stale, frame_topic=stale["stale_topics"][0]["topic"])
            self._reply_error(frame, stale)
            return
        if any(cursor.watermark > 0 for cursor in request.cursors.values()):
            metrics.RECONNECTS.inc()

        # The replay → live handover, per topic:
        #   1. buffer: the topic's TopicSub is created REPLAYING, so live ranges the hub offers
        #      from now on are kept in its buffer instead of being sent;
        #   2. register with the hub (it joins the topic's group and starts reading it);
        #   3. read the journal from the cursor to the head of one snapshot, sending batches;
        #   4. (after the reply) merge the buffer onto the position: drop what the journal already
        #      gave, read the journal again for any hole (``merge_live`` reports gaps);
        #   5. flush the merged rows;
        #   6. stop buffering (status LIVE) — 4 to 6 run without an await in between, so no live
        #      range can slip between the flush and the switch.
        # Rows committed during the replay are thus sent exactly once: by the replay if its
        # snapshot saw them, else from the buffer (or a gap read).
        started_topics = []
        for topic in request.topics:
            cursor = request.cursors.get(topic)
            if topic in self.subs and cursor is None:
                continue  # already followed, no new cursor: nothing to do
            state = states[topic]
            self.subs[topic] = TopicSub(
                topic, TopicStatus.REPLAYING, cursor.watermark if cursor else state.pruned_through, state.stream_epoch
            )
            self.hub.follow(self, topic)
            started_topics.append(self.subs[topic])
        for sub in started_topics:
            if self.subs.get(sub.topic) is sub:
                await self._read_journal(sub, MAX_WATERMARK, request.replay_batch_size, final=True)
            if self.status_closed:
                return
        metrics.SUBSCRIBES.labels(result="ok").inc()
        metrics.CATCHUP_DURATION.labels(status="ok").observe(self.clock() - started)
        reply = {
            "subscription_id": self.subscription_id,
            "topics": list(request.topics),
            "current_watermarks": [self._watermark(topic) for topic in request.topics if topic in self.subs],
        }
        if request.request_id is not None:
            reply["request_id"] = request.request_id
        self._send(encode_ok(frame, reply))
        for sub in started_topics:
            if self.subs.get(sub.topic) is sub:
                await self._go_live(sub)

    def _unsubscribe(self, frame: Frame) -> None:
        try:
            topics = parse_unsubscribe(frame.payload, self.subs.keys())
        except ProtocolError as exc:
            self._reply_error(frame, exc.payload())
            return
        for topic in topics:
            if self.subs.pop(topic, None) is not None:
                self.hub.unfollow(self, topic)
        self._send(encode_ok(frame, {"subscription_id": self.subscription_id, "topics": list(self.subs)}))

    def _drop_all(self) -> None:
        for topic in list(self.subs):
            self.hub.unfollow(self, topic)
        self.subs.clear()

    # ---- journal reads ----------------------------------------------------------------------

    async def _read_journal(self, sub: TopicSub, through: int, batch_size: int, *, final: bool) -> bool:
        """Send the rows this socket may see in ``(sub.last_sent, through]`` (``MAX_WATERMARK``:
        up to the head) as ``sync:update_batch`` pushes. The last batch carries
        ``replay_complete = final``. False if the topic turned out stale (it is then dropped).

        ``sub.last_sent`` only moves when a batch is queued (or when nothing visible is pending),
        so a heartbeat never reports a position ahead of what the socket was actually sent. The
        next page is read while the current one is being sent (one page in flight)."""
        position = sub.last_sent  # how far the journal has been read
        held = None  # the last batch is held back until we know whether another one follows
        pending = self._read_page(sub, position, through)
        try:
            while True:
                page = await pending
                pending = None
                if self.status_closed or self.subs.get(sub.topic) is not sub:
                    return True
                if page.stream_epoch is None or page.stream_epoch != sub.stream_epoch or page.pruned_through > position:
                    self._topic_stale(sub, page)
                    return False
                rows = page.rows
                full = len(rows) >= REPLAY_PAGE_ROWS
                end = max(rows[-1].watermark if full else min(through, page.head_watermark), position)
                more = full and end < through
                if more:
                    pending = self._read_page(sub, end, through)
                for piece in split_batches(
                    [(row.watermark, encode_update(row, self.inline_limit)) for row in rows], batch_size, self.batch_max_bytes
                ):
                    if held is not None and not await self._flush(sub, held, False):
                        return True
                    held = (piece, piece[-1][0])
                if held is not None:
                    held = (held[0], end)
                else:
                    sub.last_sent = max(sub.last_sent, end)
                position = end
                if not more:
                    break
            if held is not None:
                await self._flush(sub, held, final)
            return True
        finally:
            if pending is not None:
                pending.cancel()

    def _read_page(self, sub: TopicSub, after: int, through: int) -> asyncio.Future:
        return asyncio.ensure_future(
            self.hub.journal.read_visible(sub.topic, after, through, self.org_id, REPLAY_PAGE_ROWS)
        )

    async def _flush(self, sub: TopicSub, held: tuple, replay_complete: bool) -> bool:
        piece, through = held
        if not await self._wait_for_room():
            return False
        self._send_batch(sub, piece, through, replay_complete)
        sub.last_sent = max(sub.last_sent, through)
        return True

    async def _wait_for_room(self) -> bool:
        """Replay is paced by the socket: it waits while the outbound queue is over half full,
        so catching up a large backlog never grows memory. A socket that takes no frame for a
        whole heartbeat timeout is a slow consumer."""
        if self.status_closed:
            return False
        if await self.outbound.wait_room(self.heartbeat_timeout):
            return not self.status_closed
        self._slow_consumer()
        return False

    def _send_batch(self, sub: TopicSub, piece: list, through: int, replay_complete: bool) -> None:
        metrics.REPLAY_BATCHES.inc()
        metrics.REPLAY_ROWS.inc(len(piece))
        payload = batch_payload(sub.topic, [update for _, update in piece], replay_complete, through, sub.stream_epoch)
        if self._send(encode_push(self.join_ref, "sync:update_batch", payload)) and self.frames:
            self._send(encode_khala_frame(self.join_ref, sub.topic, piece[-1][0], KIND_UPDATE_BATCH, payload))

    def _topic_stale(self, sub: TopicSub, page) -> None:
        """A followed topic can no longer be continued (rows pruned under it, epoch changed,
        topic gone): tell the client with the full stale payload and stop following it."""
        state = TopicState(
            sub.topic,
            page.head_watermark or 0,
            page.pruned_through or 0,
            page.stream_epoch or "",
            *self.hub.topic_policy(sub.topic),
        )
        cursor = Cursor(sub.topic, sub.last_sent, sub.stream_epoch)
        reason = stale_reason(cursor, state) or "stream_epoch_mismatch"
        metrics.STALE_CURSORS.labels(reason=reason).inc()
        self.hub.presence.stale_cursor(sub.topic)
        self.subs.pop(sub.topic, None)
        self.hub.unfollow(self, sub.topic)
        self._push_error(stale_cursor_error([(cursor, state, reason)]), frame_topic=sub.topic)

    # ---- live -------------------------------------------------------------------------------

    def offer(self, topic: str, live: LiveRange) -> None:
        """Apply one live range of the hub to this socket's ``last_sent`` of ``topic``.

        A range ending at or below ``last_sent`` is dropped (already sent); one overlapping it
        is sent from ``last_sent`` on; one starting above it is a gap: the topic goes back to
        REPLAYING and the journal is read for the hole before anything newer is sent — a gap
        triggers a journal read, never a skip. While a topic replays, ranges are buffered."""
        sub = self.subs.get(topic)
        if sub is None or self.status_closed:
            return
        if live.stream_epoch and live.stream_epoch != sub.stream_epoch:
            self._topic_stale(sub, self.hub.page_for_epoch_change(topic))
            return
        if sub.status is TopicStatus.REPLAYING:
            self._buffer(sub, live)
            return
        if live.end <= sub.last_sent:
            return
        if live.rows is None or live.start > sub.last_sent:
            sub.status = TopicStatus.REPLAYING
            self._buffer(sub, live)
            self._commands.put_nowait(("catchup", topic))
            return
        self._deliver(sub, live, sub.last_sent)
        sub.last_sent = live.end

    def _buffer(self, sub: TopicSub, live: LiveRange) -> None:
        sub.buffer.append(live)
        sub.buffered_rows += len(live.rows or ())
        if sub.buffered_rows > HANDOVER_BUFFER_LIMIT_ROWS:
            start = min(r.start for r in sub.buffer)
            end = max(r.end for r in sub.buffer)
            sub.buffer = [LiveRange(start, end, None, sub.stream_epoch)]
            sub.buffered_rows = 0

    async def _go_live(self, sub: TopicSub) -> None:
        """Steps 4–6 of the handover (see ``_subscribe``); also the catch-up after a live gap."""
        while not self.status_closed and self.subs.get(sub.topic) is sub:
            plan = merge_live(sub.last_sent, sub.buffer)
            for live, after in plan.deliver:
                self._deliver(sub, live, after)
            sub.last_sent = max(sub.last_sent, plan.through)
            if plan.gap is None:
                sub.buffer, sub.buffered_rows = [], 0
                sub.status = TopicStatus.LIVE
                return
            sub.buffer = plan.pending
            sub.buffered_rows = sum(len(r.rows or ()) for r in plan.pending)
            if not await self._read_journal(sub, plan.gap[1], self.batch_max, final=False):
                return

    def _deliver(self, sub: TopicSub, live: LiveRange, after: int) -> None:
        if live.batch is not None and after == live.start:
            frames = live.batch.frames_for(self.org_id, self.frames)  # shared, encoded once
        elif live.batch is not None:
            frames = live.batch.frames_after(after, self.org_id, self.frames, self.join_ref)
        else:
            frames = []
        for text, committed_at in frames:
            if not self._send(text, committed_at):
                return
            metrics.LIVE_FRAMES.inc()

    # ---- heartbeats, revocation, liveness -----------------------------------------------------

    def _watermark(self, topic: str) -> dict:
        sub = self.subs[topic]
        return {"topic": topic, "watermark": sub.last_sent, "stream_epoch": sub.stream_epoch}

    def _watermarks(self) -> list:
        out = []
        for topic, sub in self.subs.items():
            entry = self._watermark(topic)
            entry["head_watermark"] = max(self.hub.head(topic), sub.last_sent)
            out.append(entry)
        return out

    def tick(self, now: float) -> None:
        """Called by the hub's ticker (and by tests with a fake clock)."""
        if self.status_closed:
            return
        if now - self.last_activity >= self.heartbeat_timeout:
            metrics.HEARTBEAT_TIMEOUTS.inc()
            self.close("heartbeat_timeout", error_payload("heartbeat_timeout", action="disconnect"))
            return
        if self.joined and self.next_heartbeat is not None and now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_interval
            self._send(encode_push(self.join_ref, SYNC_HEARTBEAT, {"watermarks": self._watermarks()}))

    def revoke(self, reason: str) -> None:
        metrics.REVOCATION_CLOSES.inc()
        self.close("reauth_required", reauth_payload(reason))

    def _slow_consumer(self) -> None:
        if self.status_closed:
            return
        metrics.SLOW_CONSUMER_CLOSES.inc()
        full_resync = False
        for sub in self.subs.values():
            state = self.hub.topic_state(sub.topic)
            if state is not None and stale_reason(Cursor(sub.topic, sub.last_sent), state) is not None:
                full_resync = True
        payload = error_payload(
            "slow_consumer",
            action="disconnect",
            queue_limit=self.outbound.max_items,
            full_resync_required=full_resync,
        )
        self.status_closed = True
        self.outbound.close()
        # The queue is full and the client is not reading: the error frame goes straight to the
        # transport (best effort) and the socket is closed without flushing.
        self._close_socket(close_code("slow_consumer"), False, encode_frame(self.join_ref, None, CHANNEL_TOPIC, SYNC_ERROR, payload))

    def shutdown(self) -> None:
        """The socket is gone: forget everything (called by the consumer on disconnect)."""
        self.status_closed = True
        self._drop_all()
        self.outbound.close()


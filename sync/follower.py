"""One (socket, topic) follower: everything a socket knows and does about one followed topic.

A follower owns the subscription state of its topic on its socket — ``status`` (replaying or
live), ``last_sent``, ``stream_epoch``, the topic policy seen at subscribe, the handover buffer —
and does the work on it: the replay read, the merge of live ranges offered by the hub, the journal
read of any gap, the stale-cursor verdict, and the framing of every batch it sends (replay and
live alike go through ``batch_frames``). It writes only through a narrow ``Writer`` (the session):
``send`` a frame, ``wait_room`` to pace a replay, ``push_error``, ``schedule`` a catch-up on the
socket's command task, and ``end`` itself when the topic can no longer be continued.

The flow runs one way: the hub reads a live range once per topic and offers it to each follower
(``offer``); the follower decides what to send and sends it. Nothing calls back into the hub.

Per follower ``last_sent``: every row of the topic with a watermark at or below it that this
socket may see has been queued (topic-wide: rows of other owners count too). That rule is applied
by ``offer`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Protocol

from khala_project.conf import khala_setting
from sync import metrics
from sync.journal_reader import Freshness
from sync.protocol import (
    MAX_WATERMARK,
    Cursor,
    TopicState,
    encode_batch,
    encode_update,
    inline_limit,
    may_see,
    split_batches,
    stale_cursor_error,
    stale_reason,
)
from sync.wire import SharedFrame

# Live rows buffered per topic while that topic replays; past this the buffer is dropped and the
# rows are read from the journal instead (the journal is the truth; the buffer is an optimisation).
HANDOVER_BUFFER_LIMIT_ROWS = 5000
# Journal rows read per replay query (then cut into batches of the client's size).
REPLAY_PAGE_ROWS = 1000


class TopicStatus(enum.Enum):
    REPLAYING = "replaying"  # buffering live ranges while reading the journal
    LIVE = "live"


# --------------------------------------------------------------------------------------------
# Framing: the ONE place a batch of updates becomes frames (replay and live)


def batch_frames(join_ref, topic, piece, replay_complete, through, stream_epoch, with_frames, committed_at=None) -> list:
    """``(text, committed_at)`` frames of one batch: the ``sync:update_batch`` push and, for
    clients that asked for ``frames``, its ``sync:frame`` envelope. ``piece`` is a list of
    ``(watermark, update_json)``; ``through`` the topic-wide position the batch completes."""
    texts = encode_batch(
        join_ref, topic, [update for _, update in piece], replay_complete, through, stream_epoch,
        seq=piece[-1][0] if with_frames else None,
    )
    return [(texts[0], committed_at)] + [(text, None) for text in texts[1:]]


class LiveBatch:
    """The rows of one live range, each update encoded once by the hub; frames are cached per
    distinct visible row set, so sockets that see the same rows share the same strings."""

    def __init__(self, topic, start, end, rows, stream_epoch, *, inline_limit_bytes, max_count, max_bytes):
        self.topic = topic
        self.start = start
        self.end = end
        self.rows = rows
        self.stream_epoch = stream_epoch
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.encoded = {row.watermark: encode_update(row, inline_limit_bytes) for row in rows}
        # ``frames_for``'s answers so far, by ``(org_id, with_frames)``: the follower looks here
        # first (one dict lookup per socket instead of a call).
        self.shared: dict = {}
        self._by_rows: dict = {}

    def frames_for(self, org_id: str, with_frames: bool) -> list:
        """Shared frames (``join_ref`` null) for a live socket whose position is ``start``."""
        key = (org_id, with_frames)
        frames = self.shared.get(key)
        if frames is None:
            visible = tuple(row for row in self.rows if may_see(row, org_id))
            rows_key = (tuple(row.watermark for row in visible), with_frames)
            frames = self._by_rows.get(rows_key)
            if frames is None:
                frames = self._encode(visible, with_frames, None)
                self._by_rows[rows_key] = frames
            self.shared[key] = frames
        return frames

    def frames_after(self, after: int, org_id: str, with_frames: bool, join_ref) -> list:
        """Frames for a socket already past ``start`` (rare: right after its replay)."""
        visible = tuple(row for row in self.rows if row.watermark > after and may_see(row, org_id))
        return self._encode(visible, with_frames, join_ref)

    def _encode(self, visible, with_frames, join_ref) -> list:
        out = []
        pieces = split_batches([(row.watermark, self.encoded[row.watermark]) for row in visible], self.max_count, self.max_bytes)
        committed = {row.watermark: row.inserted_at for row in visible}
        for index, piece in enumerate(pieces):
            through = self.end if index == len(pieces) - 1 else piece[-1][0]
            committed_at = min(committed[wm] for wm, _ in piece)
            out += batch_frames(join_ref, self.topic, piece, True, through, self.stream_epoch, with_frames, committed_at)
        if join_ref is None:
            # The same frames go to every socket that sees these rows: their WebSocket framing is
            # built once too (``sync.wire``).
            out = [(SharedFrame(text), committed_at) for text, committed_at in out]
        return out


# --------------------------------------------------------------------------------------------
# Live ranges and the handover merge (pure)


@dataclass(eq=False)
class LiveRange:
    """Every row of the topic with ``start < watermark <= end``, read once by the hub.

    ``rows`` is None for a *marker*: "rows up to ``end`` exist but were not kept" (a dropped
    buffer, or a feed announcing where it starts); the merge turns a marker into a journal read.
    ``batch`` is the hub's shared encoder (``LiveBatch``; None in pure tests). ``state`` is the
    topic state the hub last read, carried so a follower told of a new stream epoch can build its
    stale payload without asking anyone."""

    start: int
    end: int
    rows: tuple | None
    stream_epoch: str = ""
    batch: object = None
    state: TopicState | None = None


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


# --------------------------------------------------------------------------------------------
# The follower


class Writer(Protocol):
    """What a follower needs from its socket (``sync.session.Session`` implements it)."""

    join_ref: str | None
    org_id: str | None
    frames: bool  # the client asked for ``sync:frame`` envelopes too
    closed: bool

    def send(self, text: str, committed_at: float | None = None) -> bool:
        """Queue a frame; False when the socket is closed or was just closed as a slow consumer."""

    def send_many(self, frames: list) -> int:
        """Queue ``(text, committed_at)`` frames to go out together; how many were queued."""

    async def wait_room(self) -> bool:
        """Until the outbound queue has room (replay pacing); False when the socket is gone."""

    def push_error(self, payload: dict, *, frame_topic: str) -> None: ...

    def schedule(self, follower: "Follower") -> None:
        """Run ``follower.go_live()`` on the socket's command task (after what is queued)."""

    def end(self, follower: "Follower", reason: str) -> None:
        """The follower's topic cannot be continued (stale): stop following it."""

    def fail(self) -> None:
        """Work for this socket failed on a bug: close it as ``internal``."""


@dataclass(frozen=True)
class BatchLimits:
    inline_limit: int  # largest payload sent inline (else a hydration pointer)
    max_bytes: int  # largest batch frame
    max_size: int  # most updates per batch a client may ask for; also the batch size of a gap's catch-up
    default_size: int = 0  # updates per replay batch when the client asks for no size

    @classmethod
    def from_settings(cls, max_message_bytes: int | None = None) -> "BatchLimits":
        """The ``REPLAY_BATCH_*`` and ``INLINE_PAYLOAD_LIMIT_BYTES`` settings, with batch frames no
        larger than ``max_message_bytes`` (the largest message the server can send: daphne/autobahn)."""
        max_size = int(khala_setting("REPLAY_BATCH_MAX_SIZE"))
        max_bytes = int(khala_setting("REPLAY_BATCH_MAX_BYTES"))
        if max_message_bytes:
            max_bytes = min(max_bytes, max_message_bytes)
        inline = inline_limit(int(khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")), max_bytes)
        return cls(inline, max_bytes, max_size, min(int(khala_setting("REPLAY_BATCH_SIZE")), max_size))


class Follower:
    __slots__ = ("topic", "writer", "journal", "limits", "status", "last_sent", "stream_epoch", "state", "known_head", "buffer",
                 "buffered_rows", "ended")

    def __init__(self, topic: str, writer: Writer, journal, *, position: int, state: TopicState, limits: BatchLimits):
        self.topic = topic
        self.writer = writer
        self.journal = journal
        self.limits = limits
        self.status = TopicStatus.REPLAYING  # step 1 of the handover: buffer from the start
        self.last_sent = position
        self.stream_epoch = state.stream_epoch
        self.state = state  # the policy (budget, qos, snapshot) seen at subscribe
        # The highest topic head this follower has seen or been told of (its subscribe state, the
        # hub's position when it registered, every page it read). A read a replica serves must
        # come from a snapshot at least this new: an older one would end the replay below rows the
        # hub has already moved past, and nothing would offer them again (``sync.journal_replicas``).
        self.known_head = state.head_watermark
        self.buffer: list = []
        self.buffered_rows = 0
        self.ended = False

    # ---- the replay → live handover ------------------------------------------------------------
    #
    # 1. buffer: a follower is created REPLAYING, so live ranges the hub offers from the moment it
    #    follows are kept in its buffer instead of being sent;
    # 2. register with the hub (the session does; the hub joins the topic's group and reads it);
    # 3. ``replay``: read the journal from the cursor to the head of one snapshot, sending batches;
    # 4. ``go_live`` (after the subscribe reply): merge the buffer onto the position, dropping what
    #    the journal already gave and reading the journal again for any hole (``merge_live``);
    # 5. flush the merged rows;
    # 6. stop buffering (status LIVE) — 4 to 6 run without an await in between, so no live range
    #    can slip between the flush and the switch.
    # Rows committed during the replay are thus sent exactly once: by the replay if its snapshot
    # saw them, else from the buffer (or a gap read). Rows committed before the hub's feed learnt
    # its starting position reach the buffer as the feed's start marker (``sync.hub.TopicFeed``).

    async def replay(self, batch_size: int) -> bool:
        """Step 3. False if the topic turned out stale (the follower has then ended)."""
        return await self._read_journal(MAX_WATERMARK, batch_size, final=True)

    async def go_live(self) -> None:
        """Steps 4–6; also the catch-up after a live gap."""
        while not self.ended and not self.writer.closed:
            plan = merge_live(self.last_sent, self.buffer)
            for live, after in plan.deliver:
                metrics.LIVE_FRAMES.inc(self._deliver(live, after))
            self.last_sent = max(self.last_sent, plan.through)
            if plan.gap is None:
                self.buffer, self.buffered_rows = [], 0
                self.status = TopicStatus.LIVE
                return
            self.buffer = plan.pending
            self.buffered_rows = sum(len(r.rows or ()) for r in plan.pending)
            if not await self._read_journal(plan.gap[1], self.limits.max_size, final=False):
                return

    # ---- live ----------------------------------------------------------------------------------

    def offer(self, live: LiveRange) -> int:
        """Apply one live range of the hub to ``last_sent``; returns how many live frames it queued.

        A range ending at or below ``last_sent`` is dropped (already sent); one overlapping it is
        sent from ``last_sent`` on; one starting above it, or a marker, is a gap: the topic goes
        back to REPLAYING and the journal is read for the hole before anything newer is sent — a
        gap triggers a journal read, never a skip. While the topic replays, ranges are buffered.
        A range of another stream epoch ends the follower with ``stale_cursor``."""
        if self.ended or self.writer.closed:
            return 0
        if live.stream_epoch and live.stream_epoch != self.stream_epoch:
            state = live.state
            self._stale(state.head_watermark if state else live.end, state.pruned_through if state else 0, live.stream_epoch)
            return 0
        if self.status is TopicStatus.REPLAYING:
            self._buffer(live)
            return 0
        if live.end <= self.last_sent:
            return 0
        if live.rows is None or live.start > self.last_sent:
            self.status = TopicStatus.REPLAYING
            self._buffer(live)
            self.writer.schedule(self)
            return 0
        sent = self._deliver(live, self.last_sent)
        self.last_sent = live.end
        return sent

    def _buffer(self, live: LiveRange) -> None:
        self.buffer.append(live)
        self.buffered_rows += len(live.rows or ())
        if self.buffered_rows > HANDOVER_BUFFER_LIMIT_ROWS:
            start = min(r.start for r in self.buffer)
            end = max(r.end for r in self.buffer)
            self.buffer = [LiveRange(start, end, None, self.stream_epoch)]
            self.buffered_rows = 0

    def _deliver(self, live: LiveRange, after: int) -> int:
        """Queue the range's frames after ``after``; how many were queued (``khala_live_frames_total``,
        counted by the hub once per pass)."""
        writer = self.writer
        if live.batch is None:
            return 0
        if after == live.start:  # shared, encoded once
            frames = live.batch.shared.get((writer.org_id, writer.frames))
            if frames is None:
                frames = live.batch.frames_for(writer.org_id, writer.frames)
        else:
            frames = live.batch.frames_after(after, writer.org_id, writer.frames, writer.join_ref)
        if len(frames) == 1:  # the common case: one frame, which the socket may write at once
            text, committed_at = frames[0]
            return 1 if writer.send(text, committed_at) else 0
        return writer.send_many(frames)  # several: queued together, so they go out in one write

    # ---- journal reads ---------------------------------------------------------------------------

    async def _read_journal(self, through: int, batch_size: int, *, final: bool) -> bool:
        """Send the rows this socket may see in ``(last_sent, through]`` (``MAX_WATERMARK``: up
        to the head) as batches; the last carries ``replay_complete = final``. False if the topic
        turned out stale: rows pruned after ``last_sent``, another epoch, or the topic gone.

        ``last_sent`` only moves when a batch is queued (or when nothing visible is pending), so a
        heartbeat never reports a position ahead of what the socket was actually sent. The next
        page is read while the current one is being sent (one page in flight)."""
        position = self.last_sent  # how far the journal has been read
        held = None  # the last batch is held back until we know whether another one follows
        purpose = "replay" if final else "catchup"
        pending = self._read_page(position, through, purpose)
        try:
            while True:
                page = await pending
                pending = None
                if self.ended or self.writer.closed:
                    return True
                if page.stream_epoch is None or page.stream_epoch != self.stream_epoch or page.pruned_through > position:
                    # The snapshot proves the rows after ``position`` are no longer all there (or
                    # are another history): say so, never send what is left as if it were whole.
                    self._stale(page.head_watermark or 0, page.pruned_through or 0, page.stream_epoch or "")
                    return False
                self.known_head = max(self.known_head, page.head_watermark)
                rows = page.rows
                full = len(rows) >= REPLAY_PAGE_ROWS
                end = max(rows[-1].watermark if full else min(through, page.head_watermark), position)
                more = full and end < through
                if more:
                    pending = self._read_page(end, through, purpose)
                for piece in split_batches(
                    [(row.watermark, encode_update(row, self.limits.inline_limit)) for row in rows], batch_size, self.limits.max_bytes
                ):
                    if held is not None and not await self._flush(held, False):
                        return True
                    held = (piece, piece[-1][0])
                if held is not None:
                    held = (held[0], end)
                else:
                    self.last_sent = max(self.last_sent, end)
                position = end
                if not more:
                    break
            if held is not None:
                await self._flush(held, final)
            return True
        finally:
            if pending is not None:
                pending.cancel()

    def _read_page(self, after: int, through: int, purpose: str) -> asyncio.Future:
        # A replica may serve it only from a snapshot holding the topic at least up to what this
        # socket has been sent (``after``), has seen, or was told exists (a gap's end), in its epoch.
        need = Freshness(max(after, self.known_head, 0 if through == MAX_WATERMARK else through), self.stream_epoch)
        return asyncio.ensure_future(
            self.journal.read_visible_fresh(self.topic, after, through, self.writer.org_id, REPLAY_PAGE_ROWS, need, purpose)
        )

    async def _flush(self, held: tuple, replay_complete: bool) -> bool:
        piece, through = held
        if not await self.writer.wait_room() or self.ended:
            return False
        metrics.REPLAY_BATCHES.inc()
        metrics.REPLAY_ROWS.inc(len(piece))
        writer = self.writer
        writer.send_many(batch_frames(writer.join_ref, self.topic, piece, replay_complete, through, self.stream_epoch, writer.frames))
        self.last_sent = max(self.last_sent, through)
        return True

    # ---- the end -------------------------------------------------------------------------------

    def _stale(self, head: int, pruned_through: int, stream_epoch: str) -> None:
        """The topic can no longer be continued from ``last_sent``: tell the client with the
        full ``stale_cursor`` payload and end (the writer stops following the topic)."""
        s = self.state
        state = TopicState(self.topic, head, pruned_through, stream_epoch, s.replay_budget_events, s.qos_tier, s.snapshot_enabled)
        cursor = Cursor(self.topic, self.last_sent, self.stream_epoch)
        reason = stale_reason(cursor, state) or "stream_epoch_mismatch"
        metrics.STALE_CURSORS.labels(reason=reason).inc()
        self.ended = True
        self.writer.end(self, reason)
        self.writer.push_error(stale_cursor_error([(cursor, state, reason)]), frame_topic=self.topic)

    def pruned_past(self, state: TopicState | None) -> bool:
        """Whether ``state`` (the topic's, as the hub last read it) was pruned past ``last_sent``:
        this socket cannot be continued from there (the slow-consumer error says so)."""
        return state is not None and stale_reason(Cursor(self.topic, self.last_sent), state) is not None

    def watermark(self) -> dict:
        return {"topic": self.topic, "watermark": self.last_sent, "stream_epoch": self.stream_epoch}

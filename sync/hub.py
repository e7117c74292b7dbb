"""The per-process fan-out hub: ONE per worker event loop, shared by all its sockets.

What it does:

- owns the worker's journal reader (``sync.journal.Journal``: one bounded connection pool) and
  one channel-layer channel per Redis shard. It joins ``sync_topic.<topic>`` (on the topic's
  shard) for topics that have local followers, and ``khala.revocations`` (on every shard);
- on a hint for a followed topic — or when the periodic head check (every
  ``HEAD_CHECK_INTERVAL_SECONDS``, one query for all followed topics) finds a head beyond what it
  read — it reads the new journal rows ONCE per topic (topic-wide, no owner filter), encodes each
  update ONCE, and offers the range to every local follower (``sync.follower.Follower.offer``), which applies the
  owner filter and its ``last_sent`` rule. Frames are shared between sockets that see the same
  rows (``LiveBatch``). Hints are lossy; the head check is what makes a lost hint a delay only;
- ticks every session (heartbeats, idle timeout) and re-checks revocation of all joined sessions
  once per heartbeat interval (one query), besides reacting to ``sync.revoked`` hints;
- on each head-check tick, publishes the worker's presence record to Redis (``sync.presence``,
  best effort) so the admin can sum connections and subscribers over all workers.

The hub never awaits a socket: offers only append to bounded outbound queues.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref


from khala_project.conf import khala_setting
from khala_project.bus import HINT_TYPE, REVOKED_TYPE, ShardedSubscription, bus_for_layers, current_bus
from sync import metrics
from sync.journal import default_journal
from sync.journal_reader import Freshness, JournalReader
from sync.policies import RevocationCheck
from sync.presence import WorkerPresence
from sync.follower import LiveBatch, LiveRange
from sync.protocol import TopicState, inline_limit

log = logging.getLogger(__name__)

PUMP_READ_LIMIT = 1000
KNOWN_TOPICS_TTL_SECONDS = 10.0


class TopicFeed:
    """The worker's one reader of a topic, shared by every local follower of it.

    Invariant (enforced in ``Hub._pump``): the feed's ``cursor`` only moves by offering the range
    it moved over to every attached follower. That includes its FIRST position: when a feed learns
    the topic head (on its first follower), it offers a marker "rows up to the head exist" before
    reading on. A follower whose replay snapshot ended below that head — a row committed after the
    replay read but before the feed's head read — sees the marker as a gap and reads the journal
    for it (``sync.follower``), instead of waiting for the next write. Equivalently: every follower
    whose ``last_sent`` is below the feed's cursor has been handed a range that makes it catch up.
    """

    def __init__(self, topic: str):
        self.topic = topic
        self.followers: set = set()
        self.cursor: int | None = None  # everything <= cursor was read and offered
        self.stream_epoch: str | None = None
        self.state: TopicState | None = None
        self.pumping = False
        self.again = False
        # What the next read must reflect (a replica's older snapshot is read again on the primary,
        # ``sync.journal_replicas``): the highest head announced in the feed's epoch by a hint or the
        # head check, and the highest commit WAL position a hint carried.
        self.need_head = 0
        self.need_lsn = 0


class Hub:
    def __init__(self, *, journal: JournalReader | None = None, layer=None, clock=time.monotonic, rng=None):
        self.journal = journal or default_journal()
        self.rng = rng or random.Random()
        # The worker's channel on each Redis shard (``khala_project.bus``); each attaches whenever
        # its Redis is there. ``layer``: one given layer as the only shard (tests).
        self.bus = ShardedSubscription(
            bus_for_layers([layer]) if layer is not None else current_bus(), clock=clock, rng=self.rng,
            probe_interval=float(khala_setting("BUS_PROBE_INTERVAL_SECONDS")),
            probe_timeout=float(khala_setting("BUS_PROBE_TIMEOUT_SECONDS")),
            retry_max=float(khala_setting("BUS_RETRY_MAX_SECONDS")),
        )
        self.clock = clock
        self.sessions: set = set()
        self.feeds: dict[str, TopicFeed] = {}
        self.revocation = RevocationCheck(self.journal)
        self.presence = WorkerPresence.from_settings()  # best effort; never awaited by delivery
        self._tasks: list[asyncio.Task] = []
        self._spawned: set[asyncio.Task] = set()
        self._known_topics: tuple = ()
        self._known_at = -1e18
        self.started = False
        self.live_max_bytes = int(khala_setting("REPLAY_BATCH_MAX_BYTES"))

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.open()
        if self.bus.enabled:
            # Never awaited here: a worker started during a Redis outage serves sockets at once
            # (the head check delivers) and the bus attaches when Redis is back.
            self._tasks.append(asyncio.create_task(self.bus.run(self.on_bus_message, self._on_bus_attached), name="khala-hub-bus"))
        self._tasks.append(asyncio.create_task(self._head_check_loop(), name="khala-hub-head-check"))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="khala-hub-tick"))
        self.started = True

    async def stop(self) -> None:
        for task in self._tasks + list(self._spawned):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        self._tasks.clear()
        await self.bus.close()
        await self.presence.stop()
        await self.journal.close()
        self.started = False

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        task.add_done_callback(_log_failure)

    # ---- what sessions use ------------------------------------------------------------------

    def add(self, session) -> None:
        self.sessions.add(session)
        if session.limits.max_bytes < self.live_max_bytes:
            # The server cannot send larger messages (daphne): live frames must fit too.
            self.live_max_bytes = session.limits.max_bytes

    def remove(self, session) -> None:
        self.sessions.discard(session)

    async def known_topics(self) -> tuple:
        now = self.clock()
        if now - self._known_at > KNOWN_TOPICS_TTL_SECONDS or not self._known_topics:
            self._known_topics = await self.journal.known_topics()
            self._known_at = now
        return self._known_topics

    def follow(self, follower) -> None:
        topic = follower.topic
        feed = self.feeds.get(topic)
        if feed is None:
            feed = self.feeds[topic] = TopicFeed(topic)
            self._spawn(self.bus.follow(topic), "khala-hub-group-add")
        feed.followers.add(follower)
        if feed.cursor is None and not feed.pumping:
            # A new feed learns the head and starts reading; a known one needs nothing: the new
            # follower catches up from the journal itself and merges what the feed offers next.
            self._spawn(self._pump(feed, "follow"), "khala-hub-pump")

    def unfollow(self, follower) -> None:
        topic = follower.topic
        feed = self.feeds.get(topic)
        if feed is None:
            return
        feed.followers.discard(follower)
        if not feed.followers:
            del self.feeds[topic]
            self._spawn(self.bus.unfollow(topic), "khala-hub-group-discard")

    def head(self, topic: str) -> int:
        feed = self.feeds.get(topic)
        if feed is None:
            return 0
        head = feed.cursor or 0
        if feed.state is not None:
            head = max(head, feed.state.head_watermark)
        return head

    def topic_state(self, topic: str) -> TopicState | None:
        feed = self.feeds.get(topic)
        return feed.state if feed is not None else None

    # ---- reading and offering live rows ---------------------------------------------------------

    async def _pump(self, feed: TopicFeed, trigger: str) -> None:
        """Read the topic from the feed's cursor to the end of the journal and offer each range."""
        if feed.pumping:
            feed.again = True
            return
        feed.pumping = True
        try:
            while self.feeds.get(feed.topic) is feed:
                feed.again = False
                if feed.cursor is None:
                    states = await self.journal.topic_states([feed.topic])
                    state = states.get(feed.topic)
                    if state is None:
                        return
                    feed.state, feed.cursor, feed.stream_epoch = state, state.head_watermark, state.stream_epoch
                    # The feed's invariant (``TopicFeed``): its first position is offered too, as
                    # a marker, so a follower whose replay stopped below this head reads the rest.
                    self._offer(feed, LiveRange(0, state.head_watermark, None, state.stream_epoch, state=state))
                metrics.HUB_JOURNAL_READS.labels(trigger=trigger).inc()
                need = Freshness(max(feed.cursor, feed.need_head), feed.stream_epoch, feed.need_lsn)
                page = await self.journal.read_after_fresh(feed.topic, feed.cursor, PUMP_READ_LIMIT, need, "live")
                if page.stream_epoch is None:
                    return
                if page.stream_epoch != feed.stream_epoch:
                    # The journal was reset/restored: its watermarks are another history. Every
                    # follower gets a range of the new epoch and reports stale_cursor.
                    feed.stream_epoch = page.stream_epoch
                    feed.cursor = feed.need_head = page.head_watermark
                    feed.state = _state_of(feed, page)
                    self._offer(feed, LiveRange(page.head_watermark, page.head_watermark, (), page.stream_epoch, state=feed.state))
                    continue
                if page.rows or page.pruned_through > feed.cursor:
                    # A floor above the cursor means rows were pruned before this worker read
                    # them: the range starts at the floor, so followers behind it see a gap,
                    # read the journal, and report stale_cursor. Nothing is skipped silently —
                    # also when every new row was pruned (an empty range at the floor).
                    start = max(feed.cursor, page.pruned_through)
                    end = page.rows[-1].watermark if page.rows else start
                    batch = LiveBatch(
                        feed.topic, start, end, tuple(page.rows), feed.stream_epoch,
                        inline_limit_bytes=inline_limit(int(khala_setting("INLINE_PAYLOAD_LIMIT_BYTES")), self.live_max_bytes),
                        max_count=int(khala_setting("REPLAY_BATCH_MAX_SIZE")),
                        max_bytes=self.live_max_bytes,
                    ) if page.rows else None
                    feed.cursor = end
                    self._offer(feed, LiveRange(start, end, tuple(page.rows), feed.stream_epoch, batch))
                if len(page.rows) < PUMP_READ_LIMIT and not feed.again:
                    return
        finally:
            feed.pumping = False

    def _offer(self, feed: TopicFeed, live: LiveRange) -> None:
        frames = 0
        for follower in list(feed.followers):
            try:
                frames += follower.offer(live)
            except Exception:  # one broken socket must not stop the fan-out
                log.exception("offer to a follower failed")
                follower.writer.fail()
        if frames:
            metrics.LIVE_FRAMES.inc(frames)  # once per pass: the counter takes a lock per call

    # ---- hints, head checks, ticks ------------------------------------------------------------

    def on_hint(self, message: dict) -> None:
        feed = self.feeds.get(message.get("topic"))
        if feed is None:
            return
        watermark = message.get("watermark")
        if isinstance(watermark, int) and message.get("stream_epoch") in (None, feed.stream_epoch):
            feed.need_head = max(feed.need_head, watermark)
            lsn = message.get("lsn")
            if isinstance(lsn, int):
                feed.need_lsn = max(feed.need_lsn, lsn)
        if feed.cursor is None or not isinstance(watermark, int) or watermark > feed.cursor or (
            message.get("stream_epoch") not in (None, feed.stream_epoch)
        ):
            self._spawn(self._pump(feed, "hint"), "khala-hub-pump")

    def on_revoked(self, message: dict) -> None:
        sessions = set(message.get("session_ids") or ())
        devices = set(message.get("device_ids") or ())
        reason = message.get("reason") or "user_requested"
        for session in list(self.sessions):
            principal = session.principal
            if principal is not None and (principal.session_id in sessions or principal.device_id in devices):
                session.revoke(reason)

    def on_bus_message(self, message: dict) -> None:
        kind = message.get("type")
        if kind == HINT_TYPE:
            self.on_hint(message)
        elif kind == REVOKED_TYPE:
            self.on_revoked(message)

    def _on_bus_attached(self) -> None:
        # Hints and revocations sent while the bus was away are lost: re-check both now rather
        # than at the next tick.
        self._spawn(self.head_check(), "khala-hub-head-check-attach")
        self._spawn(self.check_revocations(), "khala-hub-revocations-attach")

    async def head_check(self) -> None:
        """One query for all followed topics; pump every topic whose head is past its cursor."""
        if not self.feeds:
            metrics.HUB_HEAD_CHECKS.inc()  # nothing followed: done at once (a bus attach before the first follow)
            return
        states = await self.journal.topic_states(list(self.feeds))
        for topic, state in states.items():
            feed = self.feeds.get(topic)
            if feed is None:
                continue
            feed.state = state
            if feed.cursor is None:
                continue
            if state.stream_epoch == feed.stream_epoch:
                feed.need_head = max(feed.need_head, state.head_watermark)
            if state.head_watermark > feed.cursor or state.stream_epoch != feed.stream_epoch:
                if not feed.pumping:
                    metrics.HUB_LOST_HINT_CATCHUPS.inc()
                self._spawn(self._pump(feed, "head_check"), "khala-hub-pump")
        metrics.HUB_HEAD_CHECKS.inc()

    def head_check_interval(self) -> float:
        """The head check is the only delivery path while the Redis subscription is down (on any
        shard): it runs more often then."""
        if self.bus.enabled and not self.bus.attached:
            return float(khala_setting("HEAD_CHECK_DETACHED_INTERVAL_SECONDS"))
        return float(khala_setting("HEAD_CHECK_INTERVAL_SECONDS"))

    async def _head_check_loop(self) -> None:
        beat_every = float(khala_setting("HEAD_CHECK_INTERVAL_SECONDS"))
        next_beat = self.clock() + beat_every
        while True:
            await asyncio.sleep(self.head_check_interval())
            if self.clock() >= next_beat:  # presence keeps its own pace whatever the check's
                next_beat = self.clock() + beat_every
                self.presence.beat(self)  # schedules its own Redis write; failures only log
            try:
                await self.head_check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("hub: head check failed", exc_info=True)

    def tick(self, now: float) -> None:
        for session in list(self.sessions):
            session.tick(now)

    async def check_revocations(self) -> None:
        joined = [s for s in self.sessions if s.principal is not None and not s.closed]
        if not joined:
            return
        revoked = await self.revocation.revoked_among({s.principal for s in joined})
        for session in joined:
            principal = session.principal
            if principal is not None:
                reason = revoked.get((principal.session_id, principal.device_id))
                if reason:
                    session.revoke(reason)

    async def _tick_loop(self) -> None:
        interval = float(khala_setting("HEARTBEAT_INTERVAL_SECONDS"))
        step = max(min(1.0, interval / 4), 0.01)
        next_revocation_check = self.clock() + interval
        while True:
            await asyncio.sleep(step)
            now = self.clock()
            self.tick(now)
            if now >= next_revocation_check:
                next_revocation_check = now + interval
                self._spawn(self.check_revocations(), "khala-hub-revocations")


def _state_of(feed: TopicFeed, page) -> TopicState:
    """The topic state a page shows, with the policy the feed read first (a feed with a cursor has
    read the topic's state)."""
    policy = feed.state
    return TopicState(
        feed.topic, page.head_watermark, page.pruned_through, page.stream_epoch,
        policy.replay_budget_events, policy.qos_tier, policy.snapshot_enabled,
    )


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("hub task %s failed", task.get_name(), exc_info=task.exception())


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future]" = weakref.WeakKeyDictionary()


async def get_hub() -> Hub:
    """The hub of the running event loop, started on first use."""
    loop = asyncio.get_running_loop()
    future = _hubs.get(loop)
    if future is None:
        future = loop.create_future()
        _hubs[loop] = future
        hub = Hub()
        try:
            await hub.start()
        except BaseException as exc:
            del _hubs[loop]
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        future.set_result(hub)
    return await asyncio.shield(future)


def running_hubs() -> list:
    """The started hubs of this process (one per event loop that serves sockets), for the admin's
    per-process figures. Read from another thread it is a racy snapshot, which is all a dashboard
    needs."""
    futures = list(_hubs.values())
    return [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]


async def stop_hub() -> None:
    """Stop the running loop's hub (tests; servers just exit)."""
    loop = asyncio.get_running_loop()
    future = _hubs.pop(loop, None)
    if future is not None and future.done() and not future.exception():
        await future.result().stop()

"""The WebSocket lane's journal reader with streaming replicas (``DATABASE_REPLICA_URLS``).

``RoutedJournal`` implements ``sync.journal_reader.JournalReader`` over the primary's ``Journal``
and one ``Journal`` (its own small pool) per replica. Only three reads may go to a replica — the
hub's live reads, the followers' replay and catch-up reads, and a resuming subscribe's topic
states — and each only under two checks:

1. before the read (routing): the replica is up, its lag measured at the last probe is within
   ``REPLICA_MAX_LAG_BYTES``, and when the reader knows the WAL position of the commit it needs
   (the hint's ``lsn``) the replica has replayed at least that far — polled for at most
   ``REPLICA_WAIT_SECONDS``, on the replica, never on the primary;
2. after the read (acceptance): the page proves its snapshot is not older than what the reader
   already holds — the topic's head at or past ``Freshness.head`` in the expected
   ``stream_epoch`` — and it refuses nothing (no floor above the cursor). Every page carries the
   topic's head, floor and epoch of its own snapshot, so this check is exact whatever the LSNs say.

Anything else reads the primary: a page that fails either check is read again there, so a replica
can delay a read by a bounded wait but never hand a reader a gap, a regression or a
``stale_cursor`` — a refusal is always the primary's verdict. Topic heads for the periodic head
check, the topic list, revocations and everything on the write side stay on the primary.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from khala_project.conf import khala_setting
from khala_project.replicas import CURRENT_LSN_SQL, REPLAY_LSN_SQL
from sync import metrics
from sync.journal import Journal, django_conninfo
from sync.journal_reader import Freshness, JournalPage, JournalReader
from sync.protocol import TopicState, stale_reason

log = logging.getLogger(__name__)

# How often a read waiting for a replica re-reads its replay position.
WAIT_POLL_SECONDS = 0.005


class Replica:
    """One replica as this worker last saw it."""

    def __init__(self, name: str, journal: Journal):
        self.name = name
        self.journal = journal
        self.replay_lsn = 0  # its replay position at the last look (0: never seen)
        self.lag_bytes: int | None = None  # primary position - replay position at the last probe
        self.down_until = 0.0  # left alone until then after a failure


class RoutedJournal(JournalReader):
    def __init__(self, primary: Journal, replicas: list[Replica], *, clock=time.monotonic):
        self.primary = primary
        self.replicas = replicas
        self.clock = clock
        self._turn = itertools.count()
        self._probe_task: asyncio.Task | None = None

    @classmethod
    def for_aliases(cls, primary: Journal, aliases: list[str]) -> "RoutedJournal":
        timeout = float(khala_setting("REPLICA_CONNECT_TIMEOUT_SECONDS"))
        return cls(primary, [
            Replica(alias, Journal(django_conninfo(alias), timeout=timeout, wait_open=False, name=f"khala-sync-{alias}"))
            for alias in aliases
        ])

    # ---- lifecycle and probes -----------------------------------------------------------------

    async def open(self) -> None:
        await self.primary.open()
        for replica in self.replicas:
            await replica.journal.open()  # does not wait: a replica may be down when a worker starts
        await self.probe()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="khala-replica-probe")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        for replica in self.replicas:
            await replica.journal.close()
        await self.primary.close()

    async def probe(self) -> None:
        """Measure every replica's lag: its replay position first, then the primary's position (so
        the figure errs on the high side). A replica that does not answer, or is not in recovery
        (NULL replay position: the URL names a primary), is left alone for REPLICA_RETRY_SECONDS."""
        replays = {}
        for replica in self.replicas:
            if replica.down_until > self.clock():
                continue
            try:
                replay = await replica.journal.scalar(REPLAY_LSN_SQL)
                if replay is None:
                    raise RuntimeError(f"{replica.name} is not a streaming replica (no replay position)")
                replays[replica.name] = int(replay)
            except Exception as exc:
                self._failed(replica, exc)
        if not replays:
            return
        primary = int(await self.primary.scalar(CURRENT_LSN_SQL))
        for replica in self.replicas:
            if replica.name in replays:
                replica.replay_lsn = max(replica.replay_lsn, replays[replica.name])
                replica.lag_bytes = max(primary - replays[replica.name], 0)
                metrics.REPLICA_LAG_BYTES.labels(replica=replica.name).set(replica.lag_bytes)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(float(khala_setting("REPLICA_PROBE_INTERVAL_SECONDS")))
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("replica probe failed", exc_info=True)

    def _failed(self, replica: Replica, exc: BaseException) -> None:
        replica.down_until = self.clock() + float(khala_setting("REPLICA_RETRY_SECONDS"))
        replica.lag_bytes = None
        metrics.REPLICA_LAG_BYTES.labels(replica=replica.name).set(-1)
        log.warning("replica %s unavailable (%s); reading the primary", replica.name, f"{type(exc).__name__}: {exc}"[:200])

    # ---- routing ------------------------------------------------------------------------------

    def _usable(self) -> tuple[list[Replica], str]:
        """The replicas a read may try, in round-robin order, and the fallback reason when none."""
        now = self.clock()
        up = [r for r in self.replicas if r.down_until <= now]
        if not up:
            return [], "unavailable"
        max_lag = int(khala_setting("REPLICA_MAX_LAG_BYTES"))
        close = [r for r in up if r.lag_bytes is not None and r.lag_bytes <= max_lag]
        if not close:
            return [], "lagging"
        start = next(self._turn) % len(close)
        return close[start:] + close[:start], ""

    async def _replayed(self, replica: Replica, lsn: int) -> bool:
        """Whether ``replica`` has replayed through ``lsn``, polling it for up to REPLICA_WAIT_SECONDS."""
        if replica.replay_lsn >= lsn:
            return True
        deadline = self.clock() + float(khala_setting("REPLICA_WAIT_SECONDS"))
        while True:
            replay = await replica.journal.scalar(REPLAY_LSN_SQL)
            replica.replay_lsn = max(replica.replay_lsn, int(replay or 0))
            if replica.replay_lsn >= lsn:
                return True
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(WAIT_POLL_SECONDS, remaining))  # polling the replica's position

    async def _route(self, purpose: str, lsn: int, read, acceptable):
        """``read(journal)`` on a replica that passes both checks (module docstring), else on the primary."""
        replicas, reason = self._usable()
        for replica in replicas:
            try:
                if lsn and not await self._replayed(replica, lsn):
                    reason = "behind"
                    continue
                answer = await read(replica.journal)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(replica, exc)
                reason = "unavailable"
                continue
            verdict = acceptable(answer)
            if verdict is None:
                metrics.REPLICA_READS.labels(purpose=purpose, target="replica").inc()
                return answer
            reason = verdict
        metrics.REPLICA_FALLBACKS.labels(purpose=purpose, reason=reason).inc()
        metrics.REPLICA_READS.labels(purpose=purpose, target="primary").inc()
        return await read(self.primary)

    # ---- reads a replica may serve --------------------------------------------------------------

    async def read_after_fresh(self, topic: str, after: int, limit: int, need: Freshness, purpose: str = "live") -> JournalPage:
        return await self._route(
            purpose, need.lsn, lambda journal: journal.read_after(topic, after, limit), lambda page: _page_verdict(page, after, need)
        )

    async def read_visible_fresh(
        self, topic: str, after: int, through: int, owner: str, limit: int, need: Freshness, purpose: str = "replay"
    ) -> JournalPage:
        return await self._route(
            purpose, need.lsn,
            lambda journal: journal.read_visible(topic, after, through, owner, limit),
            lambda page: _page_verdict(page, after, need),
        )

    async def resume_states(self, topics, cursors: dict) -> dict[str, TopicState]:
        topics = list(topics)

        def verdict(states: dict) -> str | None:
            for topic in topics:
                state = states.get(topic)
                if state is None:
                    return "behind"  # a topic the replica does not have yet
                cursor = cursors.get(topic)
                if cursor is not None and stale_reason(cursor, state) is not None:
                    return "refused"  # only the primary may refuse a cursor
            return None

        return await self._route("subscribe", 0, lambda journal: journal.topic_states(topics), verdict)

    # ---- reads that stay on the primary -------------------------------------------------------

    async def known_topics(self) -> tuple[str, ...]:
        return await self.primary.known_topics()

    async def topic_states(self, topics) -> dict[str, TopicState]:
        return await self.primary.topic_states(topics)

    async def read_after(self, topic: str, after: int, limit: int) -> JournalPage:
        return await self.primary.read_after(topic, after, limit)

    async def read_visible(self, topic: str, after: int, through: int, owner: str, limit: int) -> JournalPage:
        return await self.primary.read_visible(topic, after, through, owner, limit)

    async def revocations(self, session_ids, device_ids, at) -> list[tuple]:
        return await self.primary.revocations(session_ids, device_ids, at)


def _page_verdict(page: JournalPage, after: int, need: Freshness) -> str | None:
    """None when a replica's page may be served: its snapshot shows the topic at or past
    ``need.head`` in the expected epoch, with nothing after ``after`` pruned. Otherwise the reason
    to read the primary instead: ``behind`` (an older snapshot, or another epoch: the primary says
    which is true) or ``refused`` (the page would end the reader with ``stale_cursor``)."""
    if page.stream_epoch is None or page.head_watermark < need.head:
        return "behind"
    if need.stream_epoch is not None and page.stream_epoch != need.stream_epoch:
        return "behind"
    if page.pruned_through > after:
        return "refused"
    return None

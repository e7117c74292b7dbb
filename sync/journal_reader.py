"""The interface of the WebSocket lane's journal readers, and the page they return.

Two readers implement it: ``sync.journal.Journal`` (PostgreSQL, a bounded async pool; the one
tested for multi-worker correctness) and ``sync.journal_sqlite.SQLiteJournal`` (the embedded
SQLite of ``make run``). ``sync.journal.default_journal`` picks one by the default database. The
hub, the followers and the revocation check use only what is declared here.

Every read that delivers rows returns the topic's head, ``pruned_through`` and ``stream_epoch``
from the SAME snapshot as the rows, so a reader can prove that no row after its cursor was pruned
or replaced under it: retention raises ``pruned_through`` in the transaction that deletes the rows,
or (whole partitions) before it detaches them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync.protocol import JournalRow, TopicState


@dataclass(frozen=True, slots=True)
class JournalPage:
    """Rows read in one statement, with the topic's head, retention floor and epoch of that same
    snapshot (all rows <= ``head_watermark`` are committed and visible in it). The three are None
    when the topic does not exist."""

    rows: list[JournalRow]
    head_watermark: int | None
    pruned_through: int | None
    stream_epoch: str | None


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a read must reflect at least, so that a read served by a streaming replica can never
    take a reader backwards (``sync.journal_replicas``): the topic at ``head`` or past it, in
    ``stream_epoch`` (None: whatever the epoch), and — when a hint told it — the primary's WAL
    position ``lsn`` of the commit that made that head visible (0: not known). The primary always
    satisfies it; a reader without replicas ignores it."""

    head: int = 0
    stream_epoch: str | None = None
    lsn: int = 0


class JournalReader:
    """Async reads of the journal, topic states and revocations. One instance per event loop."""

    async def open(self) -> None:
        raise NotImplementedError("a journal reader opens its connection(s) here")

    async def close(self) -> None:
        raise NotImplementedError("a journal reader releases its connection(s) here")

    async def known_topics(self) -> tuple[str, ...]:
        raise NotImplementedError("every topic of sync_topic_sequences, sorted")

    async def topic_states(self, topics) -> dict[str, TopicState]:
        raise NotImplementedError("the sequence rows of ``topics`` (missing topics are absent)")

    async def read_after(self, topic: str, after: int, limit: int) -> JournalPage:
        """Topic-wide rows with ``watermark > after``, ascending, at most ``limit``. Committed rows
        are contiguous (commit order = watermark order), so no upper bound is needed."""
        raise NotImplementedError

    async def read_visible(self, topic: str, after: int, through: int, owner: str, limit: int) -> JournalPage:
        """Rows ``after < watermark <= through`` that ``owner`` may see (its own or public).
        Pass ``through=MAX_WATERMARK`` to read up to the head of the statement's snapshot."""
        raise NotImplementedError

    # ---- reads a replica may serve (``sync.journal_replicas.RoutedJournal``) ---------------------
    # Without replicas they are the plain reads above; ``purpose`` only labels metrics.

    async def read_after_fresh(self, topic: str, after: int, limit: int, need: Freshness, purpose: str = "live") -> JournalPage:
        """``read_after`` from a snapshot that satisfies ``need``."""
        return await self.read_after(topic, after, limit)

    async def read_visible_fresh(
        self, topic: str, after: int, through: int, owner: str, limit: int, need: Freshness, purpose: str = "replay"
    ) -> JournalPage:
        """``read_visible`` from a snapshot that satisfies ``need``."""
        return await self.read_visible(topic, after, through, owner, limit)

    async def resume_states(self, topics, cursors: dict) -> dict[str, TopicState]:
        """``topic_states`` for a subscribe resuming from ``cursors`` (topic -> ``Cursor``): a replica
        may answer only when its states refuse none of the cursors (a refusal — ``stale_cursor`` —
        is always the primary's verdict)."""
        return await self.topic_states(topics)

    async def revocations(self, session_ids, device_ids, at) -> list[tuple]:
        """``(kind, value, reason)`` of the unexpired revocations among the ids at ``at`` (an aware
        datetime), newest first: the statements of ``tokens.revocation.revocation_lookups``."""
        raise NotImplementedError

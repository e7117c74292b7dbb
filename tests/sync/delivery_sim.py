"""A deterministic scheduler around the REAL hub, session and followers (``sync.hub``,
``sync.session``, ``sync.follower``) for interleaving tests.

Every journal read the delivery code makes waits at a gate (``GatedJournal``) until the test
completes it; its answer is computed at that moment, from an in-memory journal the test commits
to and prunes. Between two steps the event loop is run until every task is blocked on a gate, so
the order of reads, commits, hints, head checks and prunes is exactly the order the test chose.

The oracle (``Client.check``) is the delivery guarantee: per subscription, the updates received
are the journal rows this principal may see after its cursor, each once and in order — a prefix of
them at any moment, and all of them up to the topic head once everything settled — unless a
``stale_cursor`` was sent, after which nothing more arrives for the topic.
"""

from __future__ import annotations

import asyncio
import json
import random

from sync.hub import Hub
from sync.journal_reader import JournalPage, JournalReader
from sync.outbound import OutboundQueue
from sync.presence import WorkerPresence
from sync.protocol import JournalRow, TopicState
from sync.session import Session

TOPIC = "runtime.run_summaries"
ORG = "user:1"
OWNERS = ("user:1", "user:2", "public")


class GatedJournal(JournalReader):
    def __init__(self):
        self.rows: list[JournalRow] = []  # retained rows
        self.committed: list[JournalRow] = []  # every row ever committed (the oracle's copy)
        self.head = 0
        self.pruned_through = 0
        self.stream_epoch = "epoch-1"
        self.pending: list = []  # [(kind, future, answer)]

    # ---- what the test does ----------------------------------------------------------------

    def commit(self, owner: str) -> int:
        self.head += 1
        public = owner == "public"
        row = JournalRow(TOPIC, self.head, f"doc:{self.head}", 1, "user:2" if public else owner, public, '{"n":1}', "h", 7)
        self.rows.append(row)
        self.committed.append(row)
        return self.head

    def prune(self, count: int) -> None:
        self.pruned_through = min(self.head, self.pruned_through + count)
        self.rows = [row for row in self.rows if row.watermark > self.pruned_through]

    def kinds(self) -> list[str]:
        return [kind for kind, future, _ in self.pending if not future.cancelled()]

    def complete(self, kind: str | None = None) -> bool:
        """Answer the oldest pending read (of ``kind``); False if there is none."""
        for index, (k, future, answer) in enumerate(self.pending):
            if future.cancelled():
                continue
            if kind is None or k == kind:
                del self.pending[index]
                future.set_result(answer())
                return True
        self.pending = [p for p in self.pending if not p[1].cancelled()]
        return False

    # ---- the JournalReader interface ---------------------------------------------------------

    def _state(self) -> TopicState:
        return TopicState(TOPIC, self.head, self.pruned_through, self.stream_epoch, 10**9, "warm", False)

    def _page(self, rows) -> JournalPage:
        return JournalPage(list(rows), self.head, self.pruned_through, self.stream_epoch)

    async def _gate(self, kind: str, answer):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((kind, future, answer))
        return await future

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def known_topics(self):
        return (TOPIC,)

    async def revocations(self, session_ids, device_ids, at):
        return []

    async def topic_states(self, topics):
        return await self._gate("states", lambda: {TOPIC: self._state()} if TOPIC in topics else {})

    async def read_after(self, topic, after, limit):
        return await self._gate("read_after", lambda: self._page([r for r in self.rows if r.watermark > after][:limit]))

    async def read_visible(self, topic, after, through, owner, limit):
        def answer():
            return self._page(
                [r for r in self.rows if after < r.watermark <= through and (r.public or r.owner == owner)][:limit]
            )

        return await self._gate("read_visible", answer)


class Segment:
    """One subscription (from one cursor) as the client sees it."""

    def __init__(self, start: int):
        self.start = start
        self.delivered: list[int] = []
        self.stale = False
        self.reply: dict | None = None


class Client:
    """The real hub and session on a gated journal, driven step by step."""

    def __init__(self, token: str):
        self.loop = asyncio.new_event_loop()
        self.journal = GatedJournal()
        self.hub = Hub(journal=self.journal, clock=lambda: 0.0, rng=random.Random(0))
        self.hub.presence = WorkerPresence(None, "sim")  # no Redis in a simulation
        self.queue = OutboundQueue(10**6, 1 << 40)
        self.closes: list = []
        self.session = Session(
            self.hub, params={"token": token}, close_socket=lambda code, flush, last=None: self.closes.append(code),
            outbound=self.queue, clock=lambda: 0.0, rng=random.Random(0),
        )
        self.hub.add(self.session)
        self.tasks: list[asyncio.Task] = []  # the head checks' (the session runs its commands itself)
        self.refs = 0
        self.replies: dict[str, dict] = {}
        self.segments: list[Segment] = []
        self._send("phx_join", {})
        assert self.replies["1"]["status"] == "ok", self.replies

    # ---- driving ---------------------------------------------------------------------------------

    def settle(self) -> None:
        """Run the loop until every task waits at a gate (or has ended)."""
        async def rounds():
            for _ in range(50):
                await asyncio.sleep(0)

        self.loop.run_until_complete(rounds())
        self._drain()

    def _run(self, fn, *args) -> None:
        """Call synchronous delivery code (it may spawn tasks) on the loop, then settle."""
        async def call():
            fn(*args)

        self.loop.run_until_complete(call())
        self.settle()

    def _send(self, event: str, payload: dict) -> str:
        self.refs += 1
        ref = str(self.refs)
        self._run(self.session.handle_text, json.dumps(["1", ref, "sync:v1", event, payload]))
        return ref

    def subscribe(self, cursor: int) -> None:
        self.segments.append(Segment(cursor))
        self._send("sync:subscribe", {"topics": [TOPIC], "resume_after": {TOPIC: cursor}})

    def unsubscribe(self) -> None:
        ref = self._send("sync:unsubscribe", {"topics": [TOPIC]})
        assert ref in self.replies, "unsubscribe runs at once when nothing else is in flight"

    def resume_cursor(self) -> int:
        """What a client resumes from: its last applied watermark, or after a stale_cursor the
        current floor (a full resync)."""
        segment = self.segments[-1]
        if segment.stale:
            return self.journal.pruned_through
        return segment.delivered[-1] if segment.delivered else segment.start

    def hint(self) -> None:
        self._run(self.hub.on_hint, {"type": "sync.hint", "topic": TOPIC, "watermark": self.journal.head, "stream_epoch": self.journal.stream_epoch})

    def head_check(self) -> None:
        self.tasks.append(self.loop.create_task(self.hub.head_check()))
        self.settle()

    def complete(self, kind: str | None = None) -> bool:
        done = self.journal.complete(kind)
        self.settle()
        return done

    def quiet(self) -> bool:
        return not self.journal.kinds() and not len(self.session._commands)

    def quiesce(self) -> None:
        """Answer every read and run head checks until nothing moves: the state the guarantee
        speaks about ("eventually", with lost hints covered by the head check)."""
        for _ in range(20):
            while self.complete():
                pass
            before = (self.journal.head, self._position())
            self.head_check()
            while self.complete():
                pass
            if not self.journal.kinds() and (self.journal.head, self._position()) == before:
                return
        raise AssertionError("delivery did not settle")

    def _position(self):
        follower = self.session.followers.get(TOPIC)
        return follower.last_sent if follower else None

    def close(self) -> None:
        async def stop():
            self.session.shutdown()
            tasks = self.tasks + list(self.hub._spawned)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.loop.run_until_complete(stop())
        self.loop.close()

    # ---- what the client received -----------------------------------------------------------------

    def _drain(self) -> None:
        while len(self.queue):
            text, _ = self.queue.take_nowait()
            frame = json.loads(text)
            event, payload = frame[3], frame[4]
            segment = self.segments[-1] if self.segments else None
            if event == "phx_reply":
                self.replies[frame[1]] = payload
                if segment is not None and payload["status"] == "error" and payload["response"].get("code") == "stale_cursor":
                    segment.stale = True
            elif event == "sync:update_batch":
                assert segment is not None and not segment.stale, f"update after stale_cursor: {payload}"
                segment.delivered += [u["watermark"] for u in payload["updates"]]
            elif event == "sync:error":
                assert payload["code"] == "stale_cursor", payload
                assert segment is not None
                segment.stale = True
        assert not self.closes, f"socket closed: {self.closes}"

    # ---- the oracle ----------------------------------------------------------------------------------

    def visible_after(self, start: int) -> list[int]:
        return [r.watermark for r in self.journal.committed if r.watermark > start and (r.public or r.owner == ORG)]

    def check(self, settled: bool = False) -> None:
        for segment in self.segments:
            expected = self.visible_after(segment.start)
            got = segment.delivered
            assert got == expected[: len(got)], f"not the journal in order (start {segment.start}): got {got}, journal {expected}"
            if settled and segment is self.segments[-1] and not segment.stale:
                assert got == expected, f"rows up to the head {self.journal.head} not delivered: got {got}, journal {expected}"

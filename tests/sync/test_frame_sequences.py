"""Hypothesis fuzzing of pipelined frame SEQUENCES against the real session.

Each example opens one socket on the in-process ASGI app (the real consumer, ``sync.session.Session``
and the worker's real hub, on real PostgreSQL and Redis) and sends bursts of frames without waiting
for any reply: joins, subscribes (valid, forbidden, malformed, stale cursors), unsubscribes, leaves,
heartbeats of both kinds, refreshes with good and bad tokens, unknown events and topics, floods of
requests, and garbage (not JSON, wrong types, binary, NUL, oversized), while a writer commits rows
of two owners to two topics.

Why bursts are deterministic: the consumer handles every frame already received back to back,
synchronously (``Session.handle_text`` never awaits), so a burst sent with no await in between is
handled entirely before any queued request runs; between bursts the test waits for every answer.
That makes the documented behaviour exact, and a reference model (``Model`` below, written from
docs/protocol/OA_SYNC_WS_MAPPING.md, not from the session's code) predicts it.

Oracle, per example:

- every frame gets exactly the documented answer: a reply ok/error with the code of ``sync.errors``
  (and the reply's documented content), or a ``sync:error`` push and the documented close code;
  a request refused as ``rate_limited`` only when more than 30 requests wait;
- per burst, the replies answered at once come in frame order, then the replies of the queued
  requests in frame order (per-socket ordering), and nothing is answered twice;
- the socket never hangs: every wait has a timeout and a timeout fails the example;
- per topic, the updates after a successful subscribe are the journal rows the principal may see,
  in watermark order, with no gap and no duplicate; rows of another owner never arrive; once the
  writes stop, every followed topic reaches its last visible row.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from sync.errors import close_code
from tests.sync.conftest import make_token
from tests.support.wsclient import Closed, PhoenixClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]

RUNS = "runtime.run_summaries"
WORKERS = "runtime.codex_worker_summaries"
NOT_GRANTED = "runtime.codex_worker_events"  # a known topic outside the token's scopes
UNKNOWN = "nope.topic"
SCOPES = [RUNS, WORKERS]
RUNS_ENUM = "SYNC_TOPIC_RUNTIME_RUN_SUMMARIES"
MAX_FRAME_BYTES = 4096
MAX_PENDING = 32  # the documented bound on waiting requests per socket
WAIT = 20.0  # seconds any single expected answer may take before the example fails as a hang
EXAMPLES = 40


# ---- what a client sends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    kind: str
    arg: object = None


CURSOR = st.sampled_from(["none", "zero", "mid", "head", "ahead", "wrong_epoch", "right_epoch"])
TOPIC_SETS = st.lists(st.sampled_from([RUNS, WORKERS, RUNS_ENUM, " " + WORKERS + " "]), min_size=1, max_size=3)
BAD_SUBSCRIBES = st.sampled_from([
    {"topics": RUNS}, {"topics": []}, {"topics": [7]}, {"topics": [""]}, {},
    {"topics": [RUNS], "replay_batch_size": 0}, {"topics": [RUNS], "replay_batch_size": 1.5},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": "5\n"}]},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": 2**64}]},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": -1}]},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": True}]},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS}]},
    {"topics": [RUNS], "resume_after": "7"},
    {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": 0}, {"topic": RUNS, "watermark": 1}]},
    {"topics": [RUNS], "request_id": 5},
])
GARBAGE = st.sampled_from([
    ("text", "not json", "malformed_frame"),
    ("text", '{"a": 1}', "malformed_frame"),
    ("text", '["1","2","sync:v1","phx_join"]', "malformed_frame"),
    ("text", '[1,"2","sync:v1","phx_join",{}]', "malformed_frame"),
    ("text", '["1","2",5,"phx_join",{}]', "malformed_frame"),
    ("text", '["1","2","sync:v1","phx_join",[]]', "malformed_frame"),
    ("text", '["1","2","sync:v1","sync:subscribe",{"topics":["a\\u0000"]}]', "malformed_frame"),
    ("text", '["1","2","sync:v1","sync:subscribe",{"topics":["\\ud800"]}]', "malformed_frame"),
    ("text", '[null,"2","phoenix","heartbeat",{"pad":"' + "x" * MAX_FRAME_BYTES + '"}]', "payload_too_large"),
    ("binary", b'["1","2","sync:v1","phx_join",{}]', "malformed_frame"),
    ("binary", b"x" * (MAX_FRAME_BYTES + 1), "payload_too_large"),
])

# Weighted by repetition: sessions mostly join, subscribe and read, with the odd mistake in between.
_FRAME_KINDS = {
    "phoenix_heartbeat": st.just(Send("phoenix_heartbeat")),
    "padded_heartbeat": st.just(Send("padded_heartbeat")),  # just under the frame limit: answered
    "sync_heartbeat": st.just(Send("sync_heartbeat")),
    "join": st.builds(Send, st.just("join"), st.booleans()),
    "leave": st.just(Send("leave")),
    "subscribe": st.builds(Send, st.just("subscribe"), st.tuples(TOPIC_SETS, st.lists(CURSOR, min_size=3, max_size=3))),
    "subscribe_forbidden": st.builds(Send, st.just("subscribe_forbidden"), st.sampled_from([[NOT_GRANTED], [RUNS, UNKNOWN], [UNKNOWN]])),
    "subscribe_bad": st.builds(Send, st.just("subscribe_bad"), BAD_SUBSCRIBES),
    "unsubscribe": st.builds(Send, st.just("unsubscribe"), st.lists(st.sampled_from([RUNS, WORKERS, UNKNOWN]), max_size=2)),
    "refresh": st.builds(Send, st.just("refresh"), st.sampled_from(["same", "garbage", "missing"])),
    "unknown_event": st.builds(Send, st.just("unknown_event"), st.sampled_from(["sync:v1", "phoenix"])),
    "unknown_topic": st.just(Send("unknown_topic")),
}
_WEIGHTS = {"subscribe": 6, "sync_heartbeat": 2, "phoenix_heartbeat": 2, "unsubscribe": 2, "join": 2}
FRAMES = st.sampled_from([kind for kind in _FRAME_KINDS for _ in range(_WEIGHTS.get(kind, 1))]).flatmap(_FRAME_KINDS.get)
OPENING = st.lists(FRAMES, max_size=3).map(lambda frames: [Send("join", False), Send("subscribe", ([RUNS, WORKERS], ["none"] * 3)), *frames])
WRITES = st.lists(st.tuples(st.sampled_from([RUNS, WORKERS]), st.sampled_from(["user:1", "user:1", "user:2"])), min_size=1, max_size=3)
STEP = st.integers(0, 19).flatmap(lambda n: (
    st.just(("burst", [Send("flood")])) if n == 0
    else WRITES.map(lambda writes: ("write", writes)) if n < 9
    else st.lists(FRAMES, min_size=1, max_size=8).map(lambda burst: ("burst", burst))
))
ENDING = st.one_of(st.just([]), st.just([]), st.just([]), GARBAGE.map(lambda garbage: [("burst", [Send("garbage", garbage)])]))
SCRIPT = st.tuples(
    st.sampled_from(["good"] * 9 + ["garbage", "expired"]),
    st.builds(lambda opening, steps, ending: [("burst", opening), *steps, *ending], OPENING, st.lists(STEP, max_size=12), ENDING),
)


# ---- the documented behaviour ---------------------------------------------------------------------


@dataclass
class Answer:
    """What one frame must get: ``status`` ok/error with ``code``; ``codes``: the set allowed when
    the outcome depends on how many requests already wait (a flood); ``check(response)``: more."""

    ref: str
    queued: bool
    status: str
    code: str | None = None
    check: object = None
    reason: str | None = None
    may_be_rate_limited: bool = False


@dataclass
class Command:
    """A queued request as the stream sees it: its reply ends it, and its effects on the topics
    (``("start", topic, position)``: a new follower from ``position``; ``("end", topic)``)."""

    ref: str
    effects: list = field(default_factory=list)


@dataclass
class Burst:
    start: int  # index in the received frames when the burst was sent
    answers: list  # Answer, in frame order
    commands: list  # Command, in queue order (only requests that are queued for sure)
    close: tuple | None = None  # (code, close code) the burst must end the socket with
    stale_pushes: int = 0


class Model:
    """The session as the protocol document describes it (not as the code is written)."""

    def __init__(self, token_kind: str, epochs: dict, heads: dict):
        self.token_kind = token_kind
        self.epochs = epochs
        self.heads = heads  # topic -> highest committed watermark (any owner), as the test wrote
        self.joined = False
        self.followers: dict[str, None] = {}  # ordered, like the session's
        self.closed = False

    def plan(self, sends: list[Send], refs) -> tuple[list, Burst]:
        """The frames to send for ``sends`` and what each must get."""
        texts, answers, commands, queued = [], [], [], []
        burst = Burst(0, answers, commands)
        join_pending = False
        for send in sends:
            ref = next(refs)
            if send.kind == "garbage":
                how, data, code = send.arg
                texts.append((how, data))
                burst.close = (code, close_code(code))
                break
            if send.kind == "flood":
                for _ in range(MAX_PENDING + 8):
                    ref = next(refs)
                    texts.append(("text", json.dumps(["1", ref, "sync:v1", "sync:unsubscribe", {"topics": [UNKNOWN]}])))
                    if not (self.joined or join_pending):
                        answers.append(Answer(ref, False, "error", "bad_topic"))
                        continue
                    waiting = len(queued)
                    answer = Answer(ref, True, "ok", may_be_rate_limited=waiting >= MAX_PENDING - len(SCOPES))
                    if waiting >= MAX_PENDING:
                        answer = Answer(ref, False, "error", "rate_limited")
                    answers.append(answer)
                    if answer.queued:
                        queued.append((Send("unsubscribe", [UNKNOWN]), answer))
                continue
            topic, event, payload = self._frame(send)
            texts.append(("text", json.dumps(["1", ref, topic, event, payload])))
            if topic not in ("phoenix", "sync:v1"):
                answers.append(Answer(ref, False, "error", "bad_topic"))
                continue
            if topic == "phoenix":
                if event == "heartbeat":
                    answers.append(Answer(ref, False, "ok", check=lambda r: r == {}))
                else:
                    answers.append(Answer(ref, False, "error", "unknown_event"))
                continue
            known = event in ("phx_join", "phx_leave", "sync:subscribe", "sync:unsubscribe", "sync:refresh", "sync:heartbeat")
            if event != "phx_join" and not (self.joined or join_pending):
                answers.append(Answer(ref, False, "error", "bad_topic"))
                continue
            if not known:
                answers.append(Answer(ref, False, "error", "unknown_event"))
                continue
            if event == "sync:heartbeat" and not join_pending:  # answered at once
                followed = list(self.followers)
                answers.append(Answer(ref, False, "ok", check=lambda r, f=followed: [w["topic"] for w in r["watermarks"]] == f))
                continue
            answer = Answer(ref, True, "?")
            answers.append(answer)
            queued.append((send, answer))
            join_pending = join_pending or event == "phx_join"
        # The queued requests run in arrival order once the burst was handled.
        for send, answer in queued:
            command = Command(answer.ref)
            if self.closed or burst.close is not None:
                answer.status = "none"  # the socket closed before this request ran: no reply
                continue
            commands.append(command)
            self._run(send, answer, command, burst)
        return texts, burst

    def _frame(self, send: Send):
        kind, arg = send.kind, send.arg
        if kind == "phoenix_heartbeat":
            return "phoenix", "heartbeat", {}
        if kind == "padded_heartbeat":
            return "phoenix", "heartbeat", {"pad": "x" * (MAX_FRAME_BYTES - 200)}
        if kind == "sync_heartbeat":
            return "sync:v1", "sync:heartbeat", {}
        if kind == "join":
            return "sync:v1", "phx_join", {"frames": arg}
        if kind == "leave":
            return "sync:v1", "phx_leave", {}
        if kind == "subscribe":
            topics, cursors = arg
            resume = []
            for topic, cursor in zip(dict.fromkeys(t.strip().replace(RUNS_ENUM, RUNS) for t in topics), cursors):
                if cursor == "none":
                    continue
                head = self.heads[topic]
                entry = {"topic": topic, "watermark": {"zero": 0, "mid": head // 2, "head": head, "ahead": head + 1000}.get(cursor, head)}
                if cursor == "wrong_epoch":
                    entry["stream_epoch"] = "another-epoch"
                elif cursor == "right_epoch":
                    entry["stream_epoch"] = self.epochs[topic]
                resume.append(entry)
            return "sync:v1", "sync:subscribe", {"topics": topics, "resume_after": resume}
        if kind == "subscribe_forbidden":
            return "sync:v1", "sync:subscribe", {"topics": arg}
        if kind == "subscribe_bad":
            return "sync:v1", "sync:subscribe", arg
        if kind == "unsubscribe":
            return "sync:v1", "sync:unsubscribe", {"topics": arg}
        if kind == "refresh":
            return "sync:v1", "sync:refresh", {"same": {"token": "__same__"}, "garbage": {"token": "abc"}, "missing": {}}[arg]
        if kind == "unknown_event":
            return arg, "sync:nonsense", {}
        if kind == "unknown_topic":
            return "room:lobby", "phx_join", {}
        raise AssertionError(kind)

    def _run(self, send: Send, answer: Answer, command: Command, burst: Burst) -> None:
        kind = send.kind
        if kind != "join" and not self.joined:
            answer.status, answer.code = "error", "bad_topic"
            return
        if kind == "join":
            if self.token_kind != "good":
                answer.status, answer.code = "error", "unauthorized"
                answer.reason = {"garbage": "invalid_token_format", "expired": "token_expired"}[self.token_kind]
                self.closed = True
                burst.close = ("unauthorized", close_code("unauthorized"))
                return
            command.effects += [("end", topic) for topic in self.followers]
            self.followers.clear()
            self.joined = True
            answer.status = "ok"
            answer.check = lambda r: r["subscription_id"].startswith("sub_") and sorted(r["allowed_topics"]) == sorted(SCOPES)
        elif kind == "leave":
            command.effects += [("end", topic) for topic in self.followers]
            self.followers.clear()
            self.joined = False
            answer.status, answer.check = "ok", (lambda r: r == {})
        elif kind == "sync_heartbeat":  # queued behind a join
            followed = list(self.followers)
            answer.status, answer.check = "ok", (lambda r, f=followed: [w["topic"] for w in r["watermarks"]] == f)
        elif kind == "unsubscribe":
            if not [t for t in send.arg if t.strip()]:
                answer.status, answer.code = "error", "bad_subscription"
                return
            for topic in send.arg:
                if topic in self.followers:
                    del self.followers[topic]
                    command.effects.append(("end", topic))
            remaining = list(self.followers)
            answer.status, answer.check = "ok", (lambda r, f=remaining: r["topics"] == f)
        elif kind == "refresh":
            if send.arg == "same":
                answer.status, answer.check = "ok", (lambda r: isinstance(r["expires_at"], int))
            else:
                answer.status, answer.code = "error", "unauthorized"
                answer.reason = {"garbage": "invalid_token_format", "missing": "missing_token"}[send.arg]
        elif kind == "subscribe_bad":
            answer.status, answer.code = "error", "bad_subscription"
        elif kind == "subscribe_forbidden":
            answer.status, answer.code = "error", "forbidden_topic"
        elif kind == "subscribe":
            topics_raw, cursors = send.arg
            topics = list(dict.fromkeys(t.strip().replace(RUNS_ENUM, RUNS) for t in topics_raw))
            chosen = {t: c for t, c in zip(topics, cursors) if c != "none"}
            if any(c in ("ahead", "wrong_epoch") for c in chosen.values()):
                answer.status, answer.code = "error", "stale_cursor"
                burst.stale_pushes += 1
                return
            for topic in topics:
                cursor = chosen.get(topic)
                if topic in self.followers and cursor is None:
                    continue
                position = 0 if cursor is None else {"zero": 0, "mid": self.heads[topic] // 2}.get(cursor, self.heads[topic])
                command.effects.append(("start", topic, position))
                self.followers[topic] = None
            answer.status = "ok"
            answer.check = lambda r, t=topics: r["topics"] == t and [w["topic"] for w in r["current_watermarks"]] == t
        else:
            raise AssertionError(kind)


# ---- checking the received stream ----------------------------------------------------------------


def check_replies(received: list, bursts: list[Burst]) -> None:
    replies = {}
    for index, frame in enumerate(received):
        if frame[3] == "phx_reply":
            assert frame[1] not in replies, f"ref {frame[1]} answered twice"
            replies[frame[1]] = (index, frame)
    for burst in bursts:
        first_queued = None
        order = []
        for answer in burst.answers:
            got = replies.pop(answer.ref, None)
            if answer.status == "none":
                assert got is None, f"ref {answer.ref} answered after the socket's close: {got}"
                continue
            assert got is not None, f"ref {answer.ref} got no answer (expected {answer.status} {answer.code})"
            index, frame = got
            reply = frame[4]
            queued = answer.queued
            if answer.may_be_rate_limited and reply == {"status": "error", "response": reply["response"]} \
                    and reply["response"].get("code") == "rate_limited":
                queued = False  # refused at once: more than the bound were waiting
            else:
                assert reply["status"] == answer.status, (answer, frame)
                if answer.status == "error":
                    assert reply["response"]["code"] == answer.code, (answer, frame)
                    if answer.reason is not None:
                        assert reply["response"]["reason"] == answer.reason, (answer, frame)
                if answer.check is not None:
                    assert answer.check(reply["response"]), (answer, frame)
            assert index >= burst.start
            order.append((queued, index))
            if queued and first_queued is None:
                first_queued = index
        at_once = [index for queued, index in order if not queued]
        in_queue = [index for queued, index in order if queued]
        assert at_once == sorted(at_once), "answers given at once came out of frame order"
        assert in_queue == sorted(in_queue), "replies of queued requests came out of request order"
        assert not at_once or not in_queue or max(at_once) < min(in_queue), "a queued reply overtook an answer given at once"
    assert not replies, f"replies to refs never sent: {list(replies)[:3]}"


class TopicStream:
    def __init__(self, visible: list[int]):
        self.visible = visible
        self.active = False
        self.position = 0
        self.pending: int | None = None  # the position of a follower started by the running request

    def next_after(self, position: int) -> int | None:
        return next((w for w in self.visible if w > position), None)


def check_updates(received: list, bursts: list[Burst], visible: dict[str, list[int]]) -> dict[str, TopicStream]:
    """Walk the stream in order: each update must continue its topic's follower or begin the one the
    running request starts; a request's reply ends its effects."""
    streams = {topic: TopicStream(rows) for topic, rows in visible.items()}
    starts = {b.start: b for b in bursts}
    running: list[Command] = []

    def begin(command: Command) -> None:
        for effect in command.effects:
            if effect[0] == "start":
                streams[effect[1]].pending = effect[2]

    for index, frame in enumerate(received):
        burst = starts.get(index)
        if burst is not None and burst.commands:
            running = list(burst.commands)  # (a flood's refused requests never reply: dropped here)
            begin(running[0])
        if frame[3] == "sync:update_batch":
            for update in frame[4]["updates"]:
                stream, w = streams[update["topic"]], update["watermark"]
                if stream.active and w == stream.next_after(stream.position):
                    stream.position = w
                elif stream.pending is not None and w == stream.next_after(stream.pending):
                    stream.active, stream.position, stream.pending = True, w, None
                else:
                    raise AssertionError(
                        f"{update['topic']}: watermark {w} at frame {index}; expected "
                        f"{stream.next_after(stream.position) if stream.active else None} (active={stream.active}) "
                        f"or a new follower's {stream.next_after(stream.pending) if stream.pending is not None else None}"
                    )
        elif frame[3] == "phx_reply" and any(c.ref == frame[1] for c in running):
            while running[0].ref != frame[1]:  # refused at once in a flood (no effects)
                assert not running[0].effects
                running.pop(0)
            command = running.pop(0)
            for effect in command.effects:
                stream = streams[effect[1]]
                if effect[0] == "end":
                    stream.active, stream.pending = False, None
                elif stream.pending is not None:  # started, and nothing new to replay
                    stream.position = max(stream.position, stream.pending) if stream.active else stream.pending
                    stream.active, stream.pending = True, None
            if running:
                begin(running[0])
    return streams


# ---- the test -------------------------------------------------------------------------------------


async def _journal(topics_: list[str]):
    from channels.db import database_sync_to_async

    from projector.models import TopicSequence

    def read():
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SELECT topic, watermark, owner FROM sync_stream_events WHERE topic = ANY(%s) ORDER BY watermark", [topics_])
            rows = cur.fetchall()
        epochs = dict(TopicSequence.objects.filter(topic__in=topics_).values_list("topic", "stream_epoch"))
        return rows, epochs

    return await database_sync_to_async(read)()


async def run_script(script, *, mint, awrite) -> None:
    token_kind, steps = script
    rows, epochs = await _journal(SCOPES)
    heads = {topic: max([w for t, w, _ in rows if t == topic], default=0) for topic in SCOPES}
    token = {"good": mint(1, SCOPES), "garbage": "abc.def", "expired": make_token(1, SCOPES, now=1_000_000, ttl=60)}[token_kind]
    model = Model(token_kind, epochs, heads)
    client = await PhoenixClient.communicator(f"token={token}&vsn=2.0.0")
    refs = (str(n) for n in range(1, 10**6))
    bursts: list[Burst] = []
    received = client.received
    close = None

    async def settle(burst: Burst) -> None:
        """Receive until every answer of ``burst`` is in (and its close, if it must close)."""
        nonlocal close
        wanted = {a.ref for a in burst.answers if a.status != "none"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while wanted or (burst.close is not None and close is None):
            try:
                frame = await client.recv(max(0.01, deadline - loop.time()))
            except Closed as closed:
                close = closed.code
                break
            except TimeoutError:
                raise AssertionError(f"hang: no answer within {WAIT}s for refs {sorted(wanted)[:5]} (close expected: {burst.close})")
            if frame[3] == "phx_reply":
                wanted.discard(frame[1])

    try:
        for step in steps:
            if step[0] == "write":  # commits while the socket replays or is live
                for topic, owner in step[1]:
                    watermark = await awrite(topic, f"fuzz/{topic}/{heads[topic]}", 1, {"n": heads[topic]}, owner)
                    heads[topic] = max(heads[topic], watermark)
                continue
            if bursts:  # the previous burst's requests ran (the writes since raced with them)
                await settle(bursts[-1])
                if close is not None or bursts[-1].close is not None:
                    break
            texts, burst = model.plan(step[1], refs)
            burst.start = len(received)
            bursts.append(burst)
            for how, data in texts:  # no await in between that could yield: one burst
                if how == "text":
                    await client.transport.c.send_to(text_data=data.replace("__same__", token))
                else:
                    await client.transport.c.send_to(bytes_data=data)
        if close is None:
            await settle(bursts[-1])

        expected_close = next((b.close for b in bursts if b.close is not None), None)
        if expected_close is not None:
            assert close == expected_close[1], f"closed with {close}, expected {expected_close}"
            pushes = [f for f in received if f[3] == "sync:error" and f[2] == "phoenix"]
            if expected_close[0] != "unauthorized":
                assert [f[4]["code"] for f in pushes] == [expected_close[0]], pushes
                assert pushes[0] is received[-1], "the error push is the last frame before the close"
        else:
            assert close is None, f"socket closed with {close}; nothing in the sequence closes it"

        check_replies(received, bursts)  # every answer is in: check them before waiting for updates
        rows, _ = await _journal(SCOPES)
        visible = {topic: [w for t, w, owner in rows if t == topic and owner == "user:1"] for topic in SCOPES}
        if close is None:
            # Writes have stopped: every followed topic must reach its last visible row.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while True:
                streams = check_updates(received, bursts, visible)
                behind = [t for t in model.followers if streams[t].next_after(streams[t].position) is not None]
                if not behind:
                    break
                assert loop.time() < deadline, f"hang: {behind} not delivered to their last visible rows"
                try:
                    await client.recv(0.2)
                except TimeoutError:
                    pass
        streams = check_updates(received, bursts, visible)
        if close is None:
            assert {t for t, s in streams.items() if s.active} == set(model.followers)
        stale = [f for f in received if f[3] == "sync:error" and f[2] == "sync:v1"]
        assert [f[4]["code"] for f in stale] == ["stale_cursor"] * sum(b.stale_pushes for b in bursts), stale
    finally:
        await client.close()


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=SCRIPT)
async def test_pipelined_frame_sequences_get_their_documented_answers(topics, khala, mint, awrite, script):
    khala(MAX_FRAME_BYTES=MAX_FRAME_BYTES)
    note(f"script: {script!r}")
    await run_script(script, mint=mint, awrite=awrite)

"""The client state machine against a scripted in-process Phoenix peer (``websockets.serve``).

These cover what a well-behaved Khala server never does on purpose: sockets that stop answering,
join refusals, endless stale cursors. End-to-end behaviour against the real server is in
``test_integration.py``.
"""

import asyncio
import json

import pytest
import websockets

from khala_client import Backoff, ErrorEvent, FatalError, HttpError, KhalaClient, RateLimited, Reconnecting, State
from khala_client.hashing import payload_hash, to_wire
from khala_client.http import Snapshot

from conftest import wait_until

TOPIC = "runtime.run_summaries"


def reply(frame, status="ok", response=None):
    join_ref, ref, topic, _event, _payload = frame
    return json.dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": response or {}}])


class Peer:
    """A tiny Phoenix v2 peer; ``on_frame(ws, frame)`` scripts the answers, ``on_connect(ws)`` (when
    given) what a new socket gets before any frame (returning False ends it there)."""

    def __init__(self, on_frame, on_connect=None):
        self.on_frame = on_frame
        self.on_connect = on_connect
        self.connections = 0
        self.urls = []

    async def __aenter__(self):
        self.server = await websockets.serve(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, ws):
        self.connections += 1
        self.urls.append(ws.request.path)
        try:
            if self.on_connect is not None and await self.on_connect(ws) is False:
                return
            async for text in ws:
                await self.on_frame(ws, json.loads(text))
        except websockets.ConnectionClosed:
            pass


def tokens(calls):
    async def provide():
        calls.append(1)
        return f"token-{len(calls)}"

    return provide


async def test_a_silent_socket_is_detected_and_replaced():
    async def on_frame(ws, frame):
        if frame[3] in ("phx_join", "sync:subscribe"):
            await ws.send(reply(frame, response={"current_watermarks": []}))
        # heartbeats are never answered: the socket looks open but is dead

    calls = []
    async with Peer(on_frame) as peer:
        client = KhalaClient(peer.url, tokens(calls), topics=[TOPIC], heartbeat_interval=0.1, heartbeat_timeout=0.3,
                             backoff=Backoff(base=0.01, cap=0.05))
        client.start()
        try:
            await wait_until(lambda: client.connects >= 3, timeout=20, message="reconnects after dead sockets")
        finally:
            await client.close()
    assert len(calls) >= 3, "a fresh token for every connect"
    assert [u.split("token=")[1].split("&")[0] for u in peer.urls[:3]] == ["token-1", "token-2", "token-3"]


async def test_join_refusal_reauth_required_is_fatal():
    async def on_frame(ws, frame):
        if frame[3] == "phx_join":
            await ws.send(reply(frame, "error", {"code": "reauth_required", "message": "sign in again", "reauth_required": True}))
            await ws.close(4403)

    calls = []
    async with Peer(on_frame) as peer:
        client = KhalaClient(peer.url, tokens(calls), topics=[TOPIC])
        states = []
        client.on_state = states.append
        with pytest.raises(FatalError) as exc:
            await asyncio.wait_for(client.run(), 10)
    assert exc.value.code == "reauth_required"
    assert states == [State.CONNECTING, State.CLOSED] and len(calls) == 1
    with pytest.raises(FatalError):
        await client.wait_live(timeout=1)


async def test_transient_errors_retry_with_backoff_and_state_sequence():
    """The server drops the first two sockets right after the join; the third one goes live."""

    async def on_frame(ws, frame):
        if frame[3] == "phx_join":
            await ws.send(reply(frame))
            if peer.connections <= 2:
                await ws.close(1001)
        elif frame[3] == "sync:subscribe":
            await ws.send(reply(frame, response={"current_watermarks": [{"topic": TOPIC, "watermark": 7, "stream_epoch": "e"}]}))
        else:
            await ws.send(reply(frame))

    async with Peer(on_frame) as peer:
        delays = []
        client = KhalaClient(peer.url, tokens([]), topics=[TOPIC], backoff=Backoff(base=0.05, cap=1, rng=lambda: 0.5))
        client.on_event = lambda e: delays.append(e.delay) if type(e).__name__ == "Reconnecting" else None
        seen = []
        client.on_state = seen.append
        client.start()
        try:
            await client.wait_live(timeout=10)
        finally:
            await client.close()
    assert delays[:2] == [0.025, 0.05], "capped exponential with (fake) full jitter"
    assert seen[:2] == [State.CONNECTING, State.JOINED] and State.RECONNECTING in seen and seen[-1] == State.CLOSED
    assert client.watermark(TOPIC) == 7 and client.cache.topic_state(TOPIC).stream_epoch == "e"


class FakeSnapshots:
    def __init__(self):
        self.calls = 0

    async def snapshot(self, topic, token, **kw):
        self.calls += 1
        payload = {"n": self.calls}
        doc = {"doc_key": "d", "doc_version": self.calls, "payload": payload, "payload_hash": to_wire(payload_hash(payload)), "watermark": 10}
        return Snapshot(topic, [doc], 10, "epoch")


async def test_a_second_stale_cursor_within_the_window_backs_off_instead_of_looping():
    stale = {"code": "stale_cursor", "message": "old", "full_resync_required": True, "reason_codes": ["retention_floor_breach"],
             "stale_topics": [{"topic": TOPIC, "reason": "retention_floor_breach", "resume_after": 0, "retention_floor": 5, "head_watermark": 10}]}
    subscribes = []

    async def on_frame(ws, frame):
        if frame[3] == "sync:subscribe":
            subscribes.append(frame[4])
            if len(subscribes) <= 3:
                await ws.send(json.dumps([frame[0], None, "sync:v1", "sync:error", stale]))  # push, then reply
                await ws.send(reply(frame, "error", stale))
                return
        await ws.send(reply(frame))

    async with Peer(on_frame) as peer:
        http = FakeSnapshots()
        client = KhalaClient(peer.url, tokens([]), topics=[TOPIC], http=http, stale_backoff=Backoff(base=0.05, cap=0.2))
        client.start()
        try:
            await client.wait_live(timeout=10)
        finally:
            await client.close()
    assert http.calls == 3, "one snapshot per stale reply (the duplicate push is ignored)"
    assert client.stale_backoff.attempt == 2, "the 2nd and 3rd stale within the window backed off first"
    assert subscribes[0]["resume_after"] == [{"topic": TOPIC, "watermark": 0}]
    assert subscribes[-1]["resume_after"] == [{"topic": TOPIC, "watermark": 10, "stream_epoch": "epoch"}]
    assert client.documents(TOPIC)["d"].payload == {"n": 3}


async def test_an_ok_reply_followed_by_a_stale_cursor_push_is_recovered():
    """Retention pruned the topic between the server's stale check and its first replay page: the
    server pushes ``stale_cursor`` and then replies ``ok``. The client must not take the ok for a
    live subscription: it loads a snapshot and resubscribes from its head."""
    stale = {"code": "stale_cursor", "message": "old", "full_resync_required": True, "reason_codes": ["retention_floor_breach"],
             "stale_topics": [{"topic": TOPIC, "reason": "retention_floor_breach", "resume_after": 3, "retention_floor": 6, "head_watermark": 10}]}
    subscribes = []

    async def on_frame(ws, frame):
        if frame[3] == "sync:subscribe":
            subscribes.append(frame[4])
            if len(subscribes) == 1:
                await ws.send(json.dumps([frame[0], None, "sync:v1", "sync:error", stale]))
                await ws.send(reply(frame, "ok", {"topics": [TOPIC], "current_watermarks": []}))
                return
        await ws.send(reply(frame, "ok", {"topics": [TOPIC], "current_watermarks": []}))

    async with Peer(on_frame) as peer:
        http = FakeSnapshots()
        client = KhalaClient(peer.url, tokens([]), topics=[TOPIC], http=http)
        client.start()
        try:
            await client.wait_live(timeout=10)
            await wait_until(lambda: len(subscribes) == 2, timeout=10, message="the resubscribe after the snapshot")
        finally:
            await client.close()
    assert http.calls == 1
    assert subscribes[1]["resume_after"] == [{"topic": TOPIC, "watermark": 10, "stream_epoch": "epoch"}]
    assert client.documents(TOPIC)["d"].payload == {"n": 1}


async def test_a_corrupt_payload_is_reported_and_refetched():
    good = {"ok": True}

    async def on_frame(ws, frame):
        if frame[3] == "sync:subscribe":
            update = {"topic": TOPIC, "doc_key": "d", "doc_version": 1, "payload": {"tampered": 1},
                      "payload_hash": to_wire(payload_hash(good)), "watermark": 1, "hydration_required": False}
            await ws.send(json.dumps([frame[0], None, "sync:v1", "sync:update_batch",
                                      {"updates": [update], "replay_complete": True, "head_watermarks": [{"topic": TOPIC, "watermark": 1}]}]))
        await ws.send(reply(frame))

    class Docs:
        async def get_document(self, topic, doc_key, token, **freshness):
            return {"doc_key": doc_key, "doc_version": 1, "payload": good, "payload_hash": to_wire(payload_hash(good)), "watermark": 1}

    async with Peer(on_frame) as peer:
        client = KhalaClient(peer.url, tokens([]), topics=[TOPIC], http=Docs())
        errors = []
        client.on_event = lambda e: errors.append(e.code) if type(e).__name__ == "ErrorEvent" else None
        client.start()
        try:
            await client.wait_live(timeout=10)
            await wait_until(lambda: client.watermark(TOPIC) == 1, timeout=5)
        finally:
            await client.close()
    assert errors == ["payload_hash_mismatch"]
    assert client.documents(TOPIC)["d"].payload == good


async def test_states_and_events_are_observable_as_async_iterators():
    async def on_frame(ws, frame):
        await ws.send(reply(frame, response={"current_watermarks": []}))

    async with Peer(on_frame) as peer:
        client = KhalaClient(peer.url, tokens([]), topics=[TOPIC])
        seen_states, seen_events = [], []

        async def watch_states():
            async for state in client.states():
                seen_states.append(state)

        async def watch_events():
            async for event in client.events():
                seen_events.append(type(event).__name__)

        watchers = [asyncio.ensure_future(watch_states()), asyncio.ensure_future(watch_events())]
        await asyncio.sleep(0)  # let the iterators register before the first state change
        client.start()
        await client.wait_live(timeout=10)
        await client.close()
        await asyncio.wait_for(asyncio.gather(*watchers), 5)  # both iterators end at `closed`
    assert seen_states == [State.CONNECTING, State.JOINED, State.LIVE, State.CLOSED]
    assert seen_events == ["StateChanged"] * 4


# --- rate-limit hints -----------------------------------------------------------------------------
# The fallback backoff here is at most 0.05 s, so a delay of at least the hint can only come from
# the hint.


def hinted_client(url, **kw):
    client = KhalaClient(url, tokens([]), topics=[TOPIC], backoff=Backoff(base=0.01, cap=0.05), **kw)
    events = []
    client.on_event = events.append
    return client, events


async def live_then_closed(peer, until=None, **kw):
    """A hinted client on ``peer``, run until live (and then until ``until(client)``, when given),
    then closed: the client and its events."""
    client, events = hinted_client(peer.url, **kw)
    client.start()
    try:
        await client.wait_live(timeout=10)
        if until is not None:
            await wait_until(lambda: until(client), timeout=5)
    finally:
        await client.close()
    return client, events


def refusing_first(event: str, error: dict):
    """A peer's ``on_frame`` that answers every request, but refuses the first ``event`` with
    ``error``; and the list of ``event`` frames it received."""
    received = []

    async def on_frame(ws, frame):
        if frame[3] == event:
            received.append(frame)
            if len(received) == 1:
                await ws.send(reply(frame, "error", error))
                return
        await ws.send(reply(frame, response={"current_watermarks": []}))

    return on_frame, received


def refusing_the_first_connection() -> Peer:
    """A peer that refuses its first socket as the server refuses a flood (a ``rate_limited`` push
    on ``phoenix`` with ``retry_after_ms`` 300, then close 4429) and answers every request after."""

    async def on_connect(ws):
        if peer.connections == 1:
            refusal = {"code": "rate_limited", "message": "too many requests (connects_per_ip)", "limit": "connects_per_ip",
                       "retry_after_ms": 300}
            await ws.send(json.dumps([None, None, "phoenix", "sync:error", refusal]))
            await ws.close(4429)
            return False

    async def on_frame(ws, frame):
        await ws.send(reply(frame, response={"current_watermarks": []}))

    peer = Peer(on_frame, on_connect)
    return peer


async def test_a_connection_flood_refusal_makes_the_reconnect_wait_its_retry_after():
    async with refusing_the_first_connection() as peer:
        client, events = await live_then_closed(peer)
    [first, *_] = [e for e in events if isinstance(e, Reconnecting)]
    assert (first.reason, first.retry_after_ms) == ("rate_limited", 300)
    assert 0.3 <= first.delay < 0.3 * 1.25, "at least the hint, spread by at most a quarter"
    assert client.connect_attempts[1] - client.connect_attempts[0] >= 0.3
    assert peer.connections == 2


async def test_a_join_refused_with_rate_limited_is_asked_again_on_the_same_socket():
    on_frame, joins = refusing_first("phx_join", {"code": "rate_limited", "message": "too many requests (connects_per_user)",
                                                  "limit": "connects_per_user", "retry_after_ms": 200})
    async with Peer(on_frame) as peer:
        client, events = await live_then_closed(peer)
    assert peer.connections == 1 and len(joins) == 2, "the socket stays open: no new connection for a refused join"
    [limited] = [e for e in events if isinstance(e, RateLimited)]
    assert (limited.request, limited.limit, limited.retry_after_ms, limited.attempt) == ("phx_join", "connects_per_user", 200, 1)
    assert 0.2 <= limited.delay < 0.25
    assert not [e for e in events if isinstance(e, Reconnecting)]


async def test_a_subscribe_refused_for_too_many_requests_in_flight_is_asked_again():
    on_frame, subscribes = refusing_first("sync:subscribe", {"code": "rate_limited", "message": "too many requests in flight",
                                                             "retry_after_ms": 150})
    async with Peer(on_frame) as peer:
        client, events = await live_then_closed(peer)
    assert peer.connections == 1 and len(subscribes) == 2
    [limited] = [e for e in events if isinstance(e, RateLimited)]
    assert (limited.request, limited.limit, limited.retry_after_ms) == ("sync:subscribe", None, 150)
    assert limited.delay >= 0.15


async def test_in_place_retries_are_bounded_then_the_reconnect_waits_the_hint():
    joins_per_socket: dict[int, int] = {}

    async def on_frame(ws, frame):
        if frame[3] == "phx_join":
            joins_per_socket[peer.connections] = joins_per_socket.get(peer.connections, 0) + 1
            if peer.connections == 1:
                await ws.send(reply(frame, "error", {"code": "rate_limited", "limit": "sockets_per_user", "retry_after_ms": 100}))
                return
        await ws.send(reply(frame, response={"current_watermarks": []}))

    async with Peer(on_frame) as peer:
        client, events = await live_then_closed(peer, rate_limit_attempts=3)
    assert joins_per_socket == {1: 3, 2: 1}
    assert [e.attempt for e in events if isinstance(e, RateLimited)] == [1, 2]
    [reconnect] = [e for e in events if isinstance(e, Reconnecting)]
    assert reconnect.reason == "rate_limited" and reconnect.retry_after_ms == 100 and reconnect.delay >= 0.1


GOOD_DOCUMENT = {"ok": True}


async def _one_pointer(ws, frame):
    """A peer that answers every request and replays one pointer (hydration required) on subscribe."""
    pointer = {"topic": TOPIC, "doc_key": "d", "doc_version": 1, "payload": None, "payload_hash": None, "watermark": 1,
               "hydration_required": True}
    if frame[3] == "sync:subscribe":
        await ws.send(json.dumps([frame[0], None, "sync:v1", "sync:update_batch",
                                  {"updates": [pointer], "replay_complete": True, "head_watermarks": [{"topic": TOPIC, "watermark": 1}]}]))
    await ws.send(reply(frame))


class FailingOnce:
    """An HTTP API whose first document request raises ``error``; later ones return the document."""

    def __init__(self, error: HttpError):
        self.error = error
        self.calls = 0

    async def get_document(self, topic, doc_key, token, **freshness):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return {"doc_key": doc_key, "doc_version": 1, "payload": GOOD_DOCUMENT,
                "payload_hash": to_wire(payload_hash(GOOD_DOCUMENT)), "watermark": 1}


async def test_a_hydration_answered_429_is_retried_after_its_retry_after():
    docs = FailingOnce(HttpError("rate_limited", "too many requests; retry later", {"code": "rate_limited", "retry_after": 0.2}, 429, 0.2))
    async with Peer(_one_pointer) as peer:
        client, events = await live_then_closed(peer, until=lambda c: c.watermark(TOPIC) == 1, http=docs)
    assert client.documents(TOPIC)["d"].payload == GOOD_DOCUMENT and docs.calls == 2
    [limited] = [e for e in events if isinstance(e, RateLimited)]
    assert (limited.request, limited.retry_after_ms) == ("hydration", 200) and limited.delay >= 0.2
    assert not [e for e in events if isinstance(e, ErrorEvent)]


async def test_a_hydration_answered_503_floors_the_reconnect_at_its_retry_after():
    # The database is down: the batch is replayed after a reconnect.
    docs = FailingOnce(HttpError("database_unavailable", "the database is unavailable; retry later", {"retry_after": 0.3}, 503, 0.3))
    async with Peer(_one_pointer) as peer:
        client, events = hinted_client(peer.url, http=docs)
        client.start()
        try:
            await wait_until(lambda: client.watermark(TOPIC) == 1, timeout=10)
        finally:
            await client.close()
    assert client.documents(TOPIC)["d"].payload == GOOD_DOCUMENT and peer.connections == 2
    [reconnect] = [e for e in events if isinstance(e, Reconnecting)]
    assert (reconnect.reason, reconnect.retry_after_ms) == ("hydration_failed", 300) and reconnect.delay >= 0.3


class _ReadsLate:
    """The SDK's socket as a starved client sees it: its first send goes out only once the server
    has closed the socket (so it fails), and the reader gets to the frames only after that."""

    def __init__(self, ws):
        self._ws = ws
        self._send_failed = asyncio.Event()
        self._first = True

    def __getattr__(self, name):
        return getattr(self._ws, name)

    async def send(self, data):
        if self._first:
            self._first = False
            await asyncio.wait_for(self._ws.wait_closed(), 5)
        try:
            await self._ws.send(data)
        except websockets.ConnectionClosed:
            self._send_failed.set()
            raise

    async def __aiter__(self):
        await asyncio.wait_for(self._send_failed.wait(), 5)
        async for text in self._ws:
            yield text


async def test_a_flood_refusal_is_reported_as_such_when_the_clients_own_send_fails_first():
    """The server refuses the socket (push + 4429) while the client's join is on its way: the join's
    send fails on the closed socket before the reader has handed over the push. The reconnect must
    still say rate_limited and wait the hint, not report a bare socket_closed."""
    async def connect(url, **kwargs):
        ws = await websockets.connect(url, **kwargs)
        return _ReadsLate(ws) if peer.connections == 1 else ws

    async with refusing_the_first_connection() as peer:
        client, events = await live_then_closed(peer, connect=connect)
    [first, *_] = [e for e in events if isinstance(e, Reconnecting)]
    assert (first.reason, first.retry_after_ms) == ("rate_limited", 300)
    assert client.connect_attempts[1] - client.connect_attempts[0] >= 0.3

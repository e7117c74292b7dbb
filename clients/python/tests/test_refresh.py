"""The in-band refresh schedule (``khala_client.refresh``) on a fake clock with a scripted rng: when
it fires (a jittered fraction of the remaining lifetime), what it asks the provider for (the socket's
session), how a failure is retried until the expiry, and how the client surfaces it as a state
(against a scripted in-process peer). The real server's side is in ``test_integration.py``."""

import asyncio
import base64
import json
import random
import time

import pytest
import websockets

from khala_client import FakeClock, KhalaClient, RefreshFailed, State, TokenRefreshed, TransientError, token_claims
from khala_client.errors import FatalError
from khala_client.refresh import REFRESH_FRACTION, TokenRefresher, refresh_delay

from conftest import wait_until

SUBJECT, SESSION = "user:7", "sess_abc"


def jwt(exp, iat=None, sub=SUBJECT, session=SESSION, **extra):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "oa_session_id": session, "exp": exp, **extra}
    if iat is not None:
        claims["iat"] = iat
    return f"{part({'alg': 'HS256', 'kid': 'k'})}.{part(claims)}.c2ln"


class Script:
    """The refresher's collaborators: a provider and a ``send`` answering from lists of outcomes."""

    def __init__(self, clock, ttl=100.0, provided=(), replies=()):
        self.clock = clock
        self.ttl = ttl
        self.provided = list(provided)  # per provider call: None = a fresh token, or an exception
        self.replies = list(replies)  # per send: None = ok, or an exception
        self.asked = []  # session ids the provider was asked for
        self.sent = []
        self.refreshed = []
        self.failures = []

    async def provide(self, session_id):
        self.asked.append(session_id)
        outcome = self.provided.pop(0) if self.provided else None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, str):
            return outcome
        now = self.clock.time()
        return jwt(now + self.ttl, iat=now, session=session_id)

    async def send(self, token):
        self.sent.append((self.clock.monotonic(), token))
        outcome = self.replies.pop(0) if self.replies else None
        if isinstance(outcome, BaseException):
            raise outcome
        return {"expires_at": token_claims(token).expires_at}

    def refresher(self, token, rng=lambda: 0.5, **kw):
        return TokenRefresher(token, provide=self.provide, send=self.send,
                              on_refreshed=lambda t, reply: self.refreshed.append((self.clock.monotonic(), t)),
                              on_failed=self.failures.append, clock=self.clock, rng=rng, **kw)


async def run_until(refresher, predicate, limit=200):
    """Run the refresher until ``predicate()`` holds (fake time: each sleep returns at once)."""
    task = asyncio.ensure_future(refresher.run())
    for _ in range(limit):
        if predicate() or task.done():
            break
        await asyncio.sleep(0)
    done = task.done()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return done


def test_claims_are_read_without_verification():
    claims = token_claims(jwt(1_700_000_300, iat=1_700_000_000))
    assert (claims.subject, claims.session_id, claims.issued_at, claims.expires_at) == (SUBJECT, SESSION, 1_700_000_000, 1_700_000_300)
    assert claims.remaining(1_700_000_100) == 200
    # a client clock running behind the issuer's cannot stretch the lifetime past exp - iat
    assert claims.remaining(1_699_999_000) == 300
    assert claims.remaining(1_700_000_400) == 0
    for opaque in ("", "not-a-jwt", "a.b", "a.!!!.c", "a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c", None):
        assert token_claims(opaque) is None


def test_the_refresh_fires_within_the_jitter_band():
    assert refresh_delay(100, lambda: 0.0) == pytest.approx(75)
    assert refresh_delay(100, lambda: 0.999999) == pytest.approx(90, abs=1e-3)
    draws = [refresh_delay(100, random.Random(seed).random) for seed in range(500)]
    low, high = REFRESH_FRACTION
    assert all(100 * low <= d < 100 * high for d in draws)
    assert max(draws) - min(draws) > 10  # spread over the band, not one instant


async def test_refreshes_ahead_of_each_expiry_for_the_same_session():
    clock = FakeClock()
    script = Script(clock, ttl=100)
    draws = iter([0.0, 0.999, 0.5] + [0.5] * 10)
    refresher = script.refresher(jwt(clock.time() + 100, iat=clock.time()), rng=lambda: next(draws))
    start = clock.monotonic()
    await run_until(refresher, lambda: len(script.refreshed) == 3)
    times = [t - start for t, _ in script.refreshed]
    # 0.75, 0.9 and 0.825 of each new token's 100 s, one after the other
    assert times == pytest.approx([75, 75 + 89.985, 75 + 89.985 + 82.5], abs=1e-6)
    assert script.asked == [SESSION] * 3
    assert not script.failures and refresher.refreshes == 3


async def test_a_failed_attempt_is_reported_and_retried_before_the_expiry():
    clock = FakeClock()
    script = Script(clock, provided=[RuntimeError("token backend down")],
                    replies=[TransientError("unauthorized", "sync token rejected", {"reason": "invalid_signature"})])
    refresher = script.refresher(jwt(clock.time() + 100, iat=clock.time()), rng=lambda: 0.0)
    start = clock.monotonic()
    await run_until(refresher, lambda: script.refreshed)
    assert [(f.code, f.attempt) for f in script.failures] == [("token_provider_failed", 1), ("unauthorized", 2)]
    assert all(0 < f.expires_in <= 25 for f in script.failures)
    # the first attempt at 75 s; retries wait at least RETRY_MIN each (rng 0: the floor)
    assert script.refreshed and 75 < script.refreshed[0][0] - start < 100
    assert len(script.sent) == 2  # the provider's failure sent nothing


async def test_a_token_for_another_session_is_never_sent():
    clock = FakeClock()
    other = jwt(clock.time() + 100, iat=clock.time(), session="sess_other")
    script = Script(clock, provided=[other])
    refresher = script.refresher(jwt(clock.time() + 100, iat=clock.time()))
    await run_until(refresher, lambda: script.refreshed)
    assert script.failures[0].code == "session_mismatch"
    assert [token_claims(t).session_id for _, t in script.sent] == [SESSION]


async def test_retries_stop_at_the_expiry():
    clock = FakeClock()
    script = Script(clock, provided=[RuntimeError("down")] * 1000)
    refresher = script.refresher(jwt(clock.time() + 100, iat=clock.time()), rng=lambda: 0.9)
    start = clock.monotonic()
    assert await run_until(refresher, lambda: False, limit=2000), "the schedule ends once the token has expired"
    assert clock.monotonic() - start == pytest.approx(100)  # the last attempt at the expiry itself
    assert script.failures[-1].expires_in == 0 and len(script.failures) > 3
    assert not script.sent


async def test_a_fatal_refusal_ends_the_schedule():
    clock = FakeClock()
    script = Script(clock, replies=[FatalError("reauth_required", "revoked")])
    refresher = script.refresher(jwt(clock.time() + 100, iat=clock.time()))
    with pytest.raises(FatalError):
        await refresher.run()
    assert not script.failures


async def test_a_token_without_exp_schedules_nothing():
    clock = FakeClock()
    script = Script(clock)
    await script.refresher("opaque-token").run()
    assert clock.sleeps == [] and not script.asked


# --- the client: sync:refresh on the open socket, refresh_failed as a state -------------------------


def reply(frame, status="ok", response=None):
    join_ref, ref, topic, _event, _payload = frame
    return json.dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": response or {}}])


async def test_the_client_refreshes_in_band_and_surfaces_a_failed_refresh_as_a_state():
    """Tokens live 2 s; the peer refuses the first refresh. The client goes refresh_failed, retries
    on the same socket, goes back to live, and never reconnects."""
    frames = []

    async def handle(ws):
        async for text in ws:
            frame = json.loads(text)
            frames.append(frame)
            if frame[3] == "sync:refresh" and sum(f[3] == "sync:refresh" for f in frames) == 1:
                await ws.send(reply(frame, "error", {"code": "unauthorized", "message": "sync token rejected", "reason": "invalid_signature"}))
            else:
                await ws.send(reply(frame, response={"current_watermarks": [], "expires_at": 0}))

    asked = []

    async def provider(session_id=None):
        asked.append(session_id)
        now = int(time.time())
        return jwt(now + 2, iat=now, session=session_id or "sess_first")

    server = await websockets.serve(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = KhalaClient(url, provider, topics=["runtime.run_summaries"], rng=lambda: 0.0)
    events = []
    client.on_event = events.append
    client.start()
    try:
        await wait_until(lambda: sum(isinstance(e, TokenRefreshed) for e in events) >= 2, timeout=20, message="two refreshes")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    states = [e.state for e in events if type(e).__name__ == "StateChanged"]
    assert states[:5] == [State.CONNECTING, State.JOINED, State.LIVE, State.REFRESH_FAILED, State.LIVE]
    failed = [e for e in events if isinstance(e, RefreshFailed)]
    assert failed[0].code == "unauthorized" and failed[0].attempt == 1
    assert client.connects == 1 and not any(f[3] == "phx_join" for f in frames[1:])
    assert asked[:3] == [None, "sess_first", "sess_first"]  # connect, then the socket's session
    refresh_tokens = [f[4]["token"] for f in frames if f[3] == "sync:refresh"]
    assert all(token_claims(t).session_id == "sess_first" for t in refresh_tokens)


async def test_a_provider_without_session_id_still_connects():
    """Providers written before refresh take no argument: connecting calls them as before."""
    calls = []

    async def old_style():
        calls.append(1)
        return "opaque"

    client = KhalaClient("http://127.0.0.1:9", old_style)
    assert await client._provide(None) == "opaque" and await client._provide("sess_x") == "opaque"
    assert len(calls) == 2

"""The Python client against a REAL Khala server: daphne processes (``tests.support``), the
pytest-django test database on PostgreSQL, real Redis, writes through the real sink.

Every test ends by comparing the client's cache with the server's read models (owner-filtered),
which is the only definition of "converged" that matters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time

import pytest

from khala_client import (
    BatchApplied,
    ErrorEvent,
    FatalError,
    KhalaClient,
    MemoryStore,
    Reconnecting,
    RefreshFailed,
    SnapshotLoaded,
    SQLiteStore,
    StaleCursor,
    State,
    TokenRefreshed,
    api_token_provider,
    token_claims,
)

from conftest import cache_state, converged, db, wait_until
from tests.support.wsclient import PhoenixClient

pytestmark = pytest.mark.slow

RUNS = "runtime.run_summaries"
WORKERS = "runtime.codex_worker_summaries"


def recorder(client):
    events = []
    client.on_event = events.append
    return events


async def test_replay_then_live_equals_read_models(khala_env):
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "alice")
    _, _, other = await db(khala_env.make_user, "bob")
    await db(khala_env.write_many, [(RUNS, f"run/{i}", 1, {"i": i}, owner) for i in range(120)])
    await db(khala_env.write_many, [(RUNS, f"bob/{i}", 1, {"i": i}, other) for i in range(30)])  # never visible
    await db(khala_env.write, RUNS, "shared", 1, {"public": True}, other, public=True)
    client = KhalaClient(khala_env.url, khala_env.token_provider(api_token), topics=[RUNS], replay_batch_size=25)
    events = recorder(client)
    client.start()
    try:
        await client.wait_live(timeout=30)
        assert await converged(client, khala_env, RUNS, owner)
        assert "shared" in client.documents(RUNS) and not any(k.startswith("bob/") for k in client.documents(RUNS))
        # live: new versions and new documents
        await db(khala_env.write, RUNS, "run/5", 2, {"i": 5, "v": 2}, owner)
        await db(khala_env.write, RUNS, "run/new", 1, {"new": True}, owner)
        await wait_until(lambda: converged(client, khala_env, RUNS, owner), message="live updates")
        assert client.documents(RUNS)["run/5"].payload == {"i": 5, "v": 2}
        assert not [e for e in events if isinstance(e, ErrorEvent)], "no hash mismatch or other error"
    finally:
        await client.close()
    assert client.state == State.CLOSED
    assert not [e for e in events if isinstance(e, ErrorEvent)], "closing is not an error"


async def test_reconnect_storm_is_spread_by_jitter_and_converges(khala_env):
    """200 clients dropped at once (the worker is killed) reconnect with full jitter and converge.

    The spread is asserted on the delays the clients CHOSE (their ``Reconnecting`` events, drawn
    from each client's injected, seeded rng), never on wall-clock times: a loaded machine cannot
    move these figures. The wall-clock spread is measured by ``bench/reconnect_jitter.py``."""
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "storm")
    await db(khala_env.write_many, [(WORKERS, f"w/{i}", 1, {"i": i}, owner) for i in range(50)])
    provider = khala_env.token_provider(api_token, scopes=[WORKERS])
    # one token for all 200 first connects keeps the token endpoint out of the measurement
    token = await provider()

    async def shared_token():
        return token

    clients = [
        KhalaClient(khala_env.url, shared_token, topics=[WORKERS], rng=random.Random(seed).random, heartbeat_interval=5)
        for seed in range(200)
    ]
    chosen: dict[int, list] = {index: [] for index in range(len(clients))}
    for index, c in enumerate(clients):
        c.on_event = lambda event, index=index: chosen[index].append(event) if isinstance(event, Reconnecting) else None
    try:
        for c in clients:
            c.start()
        await asyncio.gather(*(c.wait_live(timeout=60) for c in clients))
        assert all([await converged(c, khala_env, WORKERS, owner) for c in clients])

        before = [len(chosen[i]) for i in range(len(clients))]
        await asyncio.to_thread(khala_env.restart)  # SIGKILL: every socket drops at once; a new worker on the same port
        token = await provider()
        await db(khala_env.write_many, [(WORKERS, f"w/{i}", 2, {"i": i, "after": True}, owner) for i in range(0, 50, 5)])
        await asyncio.gather(*(c.wait_for_state(State.RECONNECTING, State.LIVE, timeout=60) for c in clients))

        async def all_converged():
            return all(c.state == State.LIVE for c in clients) and all([await converged(c, khala_env, WORKERS, owner) for c in clients])

        await wait_until(all_converged, timeout=240, interval=0.1, message="all 200 clients live and equal to the read models")

        first = [chosen[i][n] for i, n in zip(range(len(clients)), before)]
        # a client whose earlier connect had failed may be on a later attempt (larger ceiling)
        delays = sorted(e.delay for e in first if e.attempt == 1)
        assert len(delays) >= 150
        # full jitter over [0, base = 0.5 s): uniform draws, not a thundering herd at one instant
        assert 0 <= delays[0] and delays[-1] < 0.5
        assert delays[-1] - delays[0] > 0.4
        buckets = {int(d * 100) for d in delays}  # 10 ms buckets
        assert len(buckets) >= 40
        assert max(sum(1 for d in delays if int(d * 100) == b) for b in buckets) < 20
    finally:
        await asyncio.gather(*(c.close() for c in clients))


class SlowStore(MemoryStore):
    """A store on a slow disk: every commit takes a few ms, so a replay is still running when the
    server is killed (the client reads slowly, which is also how real slow clients look)."""

    def commit(self, topic, documents, watermark, stream_epoch=None):
        time.sleep(0.003)
        return super().commit(topic, documents, watermark, stream_epoch)


async def test_kill_worker_mid_replay_converges_without_going_back(khala_env):
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "replay")
    # several versions per document, so a re-replay offers older versions again
    for version in (1, 2, 3):
        await db(khala_env.write_many, [(RUNS, f"r/{i:04d}", version, {"i": i, "v": version}, owner) for i in range(1000)])
    head = await db(khala_env.head, RUNS)
    clients = []
    for seed in range(4):
        c = KhalaClient(khala_env.url, khala_env.token_provider(api_token, scopes=[RUNS]), SlowStore(),
                        topics=[RUNS], replay_batch_size=20, rng=random.Random(seed).random)
        c.applied_log = []
        clients.append(c)
    try:
        for c in clients:
            c.start()
        await wait_until(lambda: all(c.watermark(RUNS) > 0 for c in clients), message="replay under way")
        mid = [c.watermark(RUNS) for c in clients]
        await asyncio.to_thread(khala_env.restart)
        assert any(0 < w < head for w in mid), f"the kill must land mid-replay (watermarks {mid}, head {head})"
        await db(khala_env.write, RUNS, "r/0001", 4, {"i": 1, "v": 4}, owner)
        async def all_converged():
            return all(c.state == State.LIVE for c in clients) and all([await converged(c, khala_env, RUNS, owner) for c in clients])

        try:
            await wait_until(all_converged, timeout=240, message="convergence after the restart")
        except AssertionError:
            head = await db(khala_env.head, RUNS)
            raise AssertionError(
                f"head {head}; clients (state, watermark, connects, docs): "
                f"{[(str(c.state), c.watermark(RUNS), c.connects, len(c.documents(RUNS))) for c in clients]}"
            ) from None
        for c in clients:
            assert c.connects >= 2
            last_version: dict[str, int] = {}
            for _, doc_key, version, _ in c.applied_log:
                assert version >= last_version.get(doc_key, -1), f"{doc_key} applied at a lower version"
                last_version[doc_key] = version
            assert cache_state(c, RUNS) == await db(khala_env.read_models, RUNS, owner)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_stale_cursor_recovery_end_to_end(khala_env):
    from projector.models import TopicSequence
    from projector.topics import bump_stream_epoch

    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "stale")
    await db(khala_env.write_many, [(RUNS, f"s/{i}", 1, {"i": i}, owner) for i in range(40)])
    store = MemoryStore()
    provider = khala_env.token_provider(api_token, scopes=[RUNS])

    async def sync_once(expect_stale: bool):
        client = KhalaClient(khala_env.url, provider, store, topics=[RUNS])
        events = recorder(client)
        client.start()
        try:
            await client.wait_live(timeout=30)
            assert await converged(client, khala_env, RUNS, owner)
        finally:
            await client.close()
        stale = [e for e in events if isinstance(e, StaleCursor)]
        snaps = [e for e in events if isinstance(e, SnapshotLoaded)]
        assert bool(stale) == expect_stale and len(snaps) == len(stale)
        return events

    await sync_once(expect_stale=False)
    # replay budget: the cursor lags the head by more than the topic allows
    await db(lambda: TopicSequence.objects.filter(topic=RUNS).update(replay_budget_events=10))
    await db(khala_env.write_many, [(RUNS, f"s/{i}", 2, {"i": i, "v": 2}, owner) for i in range(0, 40, 2)])
    events = await sync_once(expect_stale=True)
    (stale,) = [e for e in events if isinstance(e, StaleCursor)]
    assert stale.payload["reason_codes"] == ["replay_budget_exceeded"]
    (snap,) = [e for e in events if isinstance(e, SnapshotLoaded)]
    assert snap.head_watermark == await db(khala_env.head, RUNS) and snap.documents == 40

    # another history: the journal's epoch changed under the stored cursor
    await db(bump_stream_epoch, RUNS)
    await db(khala_env.write, RUNS, "s/late", 1, {"late": True}, owner)
    events = await sync_once(expect_stale=True)
    (stale,) = [e for e in events if isinstance(e, StaleCursor)]
    assert stale.payload["reason_codes"] == ["stream_epoch_mismatch"]
    assert store.topic_state(RUNS).stream_epoch == await db(lambda: TopicSequence.objects.get(topic=RUNS).stream_epoch)


async def test_fresh_client_on_a_pruned_topic_gets_a_snapshot(khala_env):
    """A client without a cursor still gets documents whose journal rows were pruned: it sends
    cursor 0, the server says the history is gone (retention floor) and the client snapshots."""
    from projector.models import StreamEvent, TopicSequence

    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "pruned")
    await db(khala_env.write_many, [(RUNS, f"p/{i}", 1, {"i": i}, owner) for i in range(20)])
    await db(khala_env.write_many, [(RUNS, f"p/{i}", 2, {"i": i, "v": 2}, owner) for i in range(10)])
    # what retention does: delete old rows and raise the floor in one transaction
    from django.db import transaction

    def prune():
        with transaction.atomic():
            StreamEvent.objects.filter(topic=RUNS, watermark__lte=20).delete()
            TopicSequence.objects.filter(topic=RUNS).update(pruned_through=20)

    await db(prune)
    client = KhalaClient(khala_env.url, khala_env.token_provider(api_token, scopes=[RUNS]), topics=[RUNS])
    events = recorder(client)
    client.start()
    try:
        await client.wait_live(timeout=30)
        assert await converged(client, khala_env, RUNS, owner)
        assert len(client.documents(RUNS)) == 20  # p/10..p/19 exist only in the read models now
        assert any(isinstance(e, StaleCursor) and e.payload["reason_codes"] == ["retention_floor_breach"] for e in events)
    finally:
        await client.close()


async def test_pointer_mode_documents_are_hydrated_and_verified(khala_env):
    from projector.models import TopicSequence

    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "pointer")
    await db(lambda: TopicSequence.objects.filter(topic=WORKERS).update(force_pointer_mode=True))
    await db(khala_env.write_many, [(WORKERS, f"cw/{i}", 1, {"i": i, "blob": "x" * 100}, owner) for i in range(15)])
    client = KhalaClient(khala_env.url, khala_env.token_provider(api_token, scopes=[WORKERS]), topics=[WORKERS])
    client.applied_log = []
    events = recorder(client)
    client.start()
    try:
        await client.wait_live(timeout=30)
        assert await converged(client, khala_env, WORKERS, owner)
        await db(khala_env.write, WORKERS, "cw/live", 1, {"live": True}, owner)
        await wait_until(lambda: converged(client, khala_env, WORKERS, owner), message="live pointer update")
        docs = client.documents(WORKERS)
        assert all(not d.hydration_required and d.payload is not None for d in docs.values())
        assert not [e for e in events if isinstance(e, ErrorEvent)]
    finally:
        await client.close()


async def test_token_expiry_during_a_long_session(khala_env):
    """Tokens live 2 s here. The session outlives its token; hydration refreshes it after a 401,
    and the reconnect after a worker restart uses a fresh token from token_provider."""
    from projector.models import TopicSequence

    khala_env.khala.update({"TOKEN_TTL_SECONDS": 2, "TOKEN_TTL_MIN_SECONDS": 1})
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "expiry")
    await db(lambda: TopicSequence.objects.filter(topic=WORKERS).update(force_pointer_mode=True))
    calls: list[dict] = []
    client = KhalaClient(khala_env.url, khala_env.token_provider(api_token, scopes=[WORKERS], calls=calls), topics=[WORKERS])
    events = recorder(client)
    client.start()
    try:
        await client.wait_live(timeout=30)
        first = calls[-1]
        assert first["expires_in"] == 2
        expires_at = _jwt_exp(first["token"])
        await wait_until(lambda: time.time() > expires_at + 1, timeout=10, message="the first token to expire")
        # the socket stays up (the token is checked at join); a pointer update needs HTTP with a token
        assert client.state == State.LIVE
        await db(khala_env.write, WORKERS, "cw/after-expiry", 1, {"ok": True}, owner)
        await wait_until(lambda: converged(client, khala_env, WORKERS, owner), message="hydration with a refreshed token")
        # the old token is refused now, so a reconnect must use a fresh one
        assert await _join_error(khala_env, first["token"]) == ("unauthorized", "token_expired")
        n_calls, joins = len(calls), client.connects
        await asyncio.to_thread(khala_env.restart)
        await wait_until(lambda: client.connects > joins and client.state == State.LIVE, timeout=60, message="rejoin")
        assert len(calls) > n_calls
        assert _jwt_exp(calls[-1]["token"]) > expires_at
        await db(khala_env.write, WORKERS, "cw/after-rejoin", 1, {"ok": 2}, owner)
        await wait_until(lambda: converged(client, khala_env, WORKERS, owner), message="live after rejoin")
        assert not [e for e in events if isinstance(e, ErrorEvent) and e.code.startswith("payload_hash")]
    finally:
        await client.close()


async def test_the_socket_stays_open_across_three_token_lifetimes(khala_env):
    """Tokens live 3 s and the server closes an unrefreshed socket 0.5 s after exp. The client
    refreshes in band (``sync:refresh`` with a token for its own session, minted through
    ``api_token_provider``) three times on ONE socket, which keeps receiving live updates."""
    ttl = 3
    khala_env.khala.update({"TOKEN_TTL_SECONDS": ttl, "TOKEN_TTL_MIN_SECONDS": 1, "SESSION_EXPIRY_GRACE_SECONDS": 0.5})
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "refresher")
    client = KhalaClient(khala_env.url, api_token_provider(khala_env.url, api_token, scopes=[RUNS]), topics=[RUNS])
    events = recorder(client)
    client.start()
    try:
        await client.wait_live(timeout=30)
        first = token_claims(client._token)
        for round_ in range(3):
            await wait_until(lambda: sum(isinstance(e, TokenRefreshed) for e in events) > round_, timeout=ttl * 3,
                             message=f"refresh {round_ + 1}")
            await db(khala_env.write, RUNS, f"refresh/{round_}", 1, {"round": round_}, owner)
            await wait_until(lambda: converged(client, khala_env, RUNS, owner), message=f"a live update after refresh {round_ + 1}")
        assert time.time() > first.expires_at + 0.5, "the first token's session deadline has passed"
        assert client.connects == 1 and client.state == State.LIVE
        assert not [e for e in events if isinstance(e, (Reconnecting, RefreshFailed))]
        assert token_claims(client._token).session_id == first.session_id
        assert set(client.documents(RUNS)) == {"refresh/0", "refresh/1", "refresh/2"}
    finally:
        await client.close()


async def test_sqlite_store_survives_a_restart_and_resumes_from_its_cursor(khala_env, tmp_path):
    khala_env.start()
    _, api_token, owner = await db(khala_env.make_user, "sqlite")
    await db(khala_env.write_many, [(RUNS, f"q/{i}", 1, {"i": i}, owner) for i in range(100)])
    path = tmp_path / "client.sqlite3"
    provider = khala_env.token_provider(api_token, scopes=[RUNS])

    store = SQLiteStore(path)
    client = KhalaClient(khala_env.url, provider, store, topics=[RUNS])
    client.start()
    await client.wait_live(timeout=30)
    cursor = client.watermark(RUNS)
    assert cursor == 100
    await client.close()
    store.close()

    await db(khala_env.write_many, [(RUNS, f"q/{i}", 2, {"i": i, "v": 2}, owner) for i in range(5)])
    store = SQLiteStore(path)  # a new process would open the same file
    assert store.topic_state(RUNS).watermark == cursor and len(store.documents(RUNS)) == 100
    client = KhalaClient(khala_env.url, provider, store, topics=[RUNS])
    received = []
    client.on_event = lambda e: received.extend(e.result.documents) if isinstance(e, BatchApplied) else None
    client.start()
    try:
        await client.wait_live(timeout=30)
        assert await converged(client, khala_env, RUNS, owner)
        assert sorted(d.watermark for d in received) == list(range(101, 106)), "resumed, not replayed from 0"
    finally:
        await client.close()
        store.close()


async def test_revoked_session_stops_the_client_with_reauth_required(khala_env):
    from tokens import revocation

    khala_env.start()
    _, api_token, _ = await db(khala_env.make_user, "revoked")
    calls: list[dict] = []
    client = KhalaClient(khala_env.url, khala_env.token_provider(api_token, scopes=[RUNS], calls=calls), topics=[RUNS])
    client.start()
    await client.wait_live(timeout=30)
    await db(revocation.revoke, [calls[-1]["session_id"]], None, "test")
    with pytest.raises(FatalError) as exc:
        await asyncio.wait_for(client._task, 30)
    assert exc.value.code == "reauth_required"
    assert client.state == State.CLOSED


async def test_join_with_a_bad_token_stops_after_one_fresh_retry(khala_env):
    khala_env.start()
    calls = []

    async def bad_tokens():
        calls.append(1)
        return "not.a.jwt"

    client = KhalaClient(khala_env.url, bad_tokens, topics=[RUNS])
    client.start()
    with pytest.raises(FatalError) as exc:
        await asyncio.wait_for(client._task, 30)
    assert exc.value.code == "unauthorized" and len(calls) == 2
    assert client.state == State.CLOSED


# --- helpers ------------------------------------------------------------------------------------


def _jwt_exp(token: str) -> int:
    claims = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["exp"]


async def _join_error(env, token):
    client = await PhoenixClient.connect(env.server.ws_url(token=token))
    try:
        response = (await client.join())["response"]
    finally:
        await client.close()
    return response["code"], response.get("reason")

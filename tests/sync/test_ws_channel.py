"""The sync:v1 channel end to end through the real ASGI app (Channels' communicator) on real
PostgreSQL and Redis: joins, validation, replay, batching, owner filter, stale cursors, heartbeats,
revocation, compatibility gate, malformed frames."""

import asyncio
import base64
import json

import jwt
import pytest
from channels.db import database_sync_to_async

from tests.sync.conftest import SIGNING_KID, SIGNING_SECRET, make_token
from tests.support.wsclient import PhoenixClient, updates_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]

RUNS = "runtime.run_summaries"
WORKERS = "runtime.codex_worker_summaries"


async def connect(token=None, **params):
    query = "&".join(f"{k}={v}" for k, v in {"token": token, "vsn": "2.0.0", **params}.items() if v is not None)
    return await PhoenixClient.communicator(query)


async def joined(token, payload=None):
    client = await connect(token)
    reply = await client.join(payload)
    assert reply["status"] == "ok", reply
    return client


async def write_runs(awrite, n, owner="user:1", start=1, **kw):
    return [await awrite(RUNS, f"runtime/run_summary:r{i}", 1, {"run_id": f"r{i}", "n": i}, owner, **kw) for i in range(start, start + n)]


# ---- join ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token_kind, reason",
    [("missing", "missing_token"), ("garbage", "invalid_token_format"), ("expired", "token_expired"), ("bad_sig", "invalid_signature")],
)
async def test_bad_tokens_are_refused_at_join_with_the_verifier_reason(topics, signing_key, token_kind, reason):
    token = {
        "missing": None,
        "garbage": "abc",
        "expired": make_token(1, now=1_000_000, ttl=60),
        "bad_sig": jwt.encode({"sub": "x"}, "another-secret-" + "q" * 40, algorithm="HS256", headers={"kid": SIGNING_KID}),
    }[token_kind]
    client = await connect(token)
    reply = await client.join()
    assert reply == {"status": "error", "response": {"code": "unauthorized", "message": "sync token rejected", "reason": reason}}
    assert await client.wait_closed() == 4401


async def test_revoked_session_join_is_refused(topics, mint):
    from tokens.revocation import revoke

    token = mint(1)
    session_id = jwt.decode(token, SIGNING_SECRET, algorithms=["HS256"], options={"verify_aud": False})["oa_session_id"]
    await database_sync_to_async(revoke)([session_id], [], "password_changed")
    client = await connect(token)
    reply = await client.join()
    assert reply["status"] == "error"
    assert reply["response"]["code"] == "reauth_required"
    assert reply["response"]["reason"] == "password_changed"
    assert reply["response"]["reauth_required"] is True
    assert await client.wait_closed() == 4403


async def test_revocation_hint_closes_live_sockets(topics, mint):
    from tokens.revocation import revoke

    token = mint(1)
    session_id = jwt.decode(token, SIGNING_SECRET, algorithms=["HS256"], options={"verify_aud": False})["oa_session_id"]
    client = await joined(token, {"frames": True})
    other = await joined(mint(2))
    await database_sync_to_async(revoke)([session_id], [], None)
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4]["code"] == "reauth_required" and frames[-1][4]["reason"] == "user_requested"
    frame = await client.recv()
    assert frame[3] == "sync:frame" and frame[4]["topic"] == "sync.auth" and frame[4]["kind"] == "KHALA_FRAME_KIND_ERROR"
    assert await client.wait_closed() == 4403
    ref = await other.push("sync:heartbeat", {})
    reply, _ = await other.reply(ref)
    assert reply["status"] == "ok"  # the other session is untouched


async def test_join_reply_and_rejoin(topics, mint):
    client = await connect(mint(1, scopes=[RUNS, "not.a.topic"]))
    reply = await client.join()
    response = reply["response"]
    assert response["allowed_topics"] == [RUNS]
    assert response["current_watermarks"] == []
    assert response["subscription_id"].startswith("sub_")
    assert response["heartbeat_interval_ms"] == 15000 and response["replay_batch_max_size"] == 200
    again = await client.join()
    assert again["status"] == "ok" and again["response"]["subscription_id"] != response["subscription_id"]


async def test_unknown_vsn_is_closed_with_upgrade_code(topics, mint):
    client = await connect(mint(1), vsn="1.0.0")
    assert await client.wait_closed() == 4426
    assert client.received == []


async def test_compatibility_gate(topics, mint, khala):
    khala(COMPAT_ENFORCED=True, COMPAT_MIN_CLIENT_BUILD_ID="20260101T000000Z")
    client = await connect(mint(1))
    reply = await client.join()
    assert reply["response"]["code"] == "upgrade_required"
    assert reply["response"]["reason"] == "invalid_client_build"
    assert reply["response"]["upgrade_required"] is True
    assert await client.wait_closed() == 4426

    old = await connect(mint(1), client_build_id="20250101T000000Z", protocol_version="khala.ws.v1", schema_version="1")
    assert (await old.join())["response"]["reason"] == "upgrade_required"
    schema = await connect(mint(1), client_build_id="20260301T000000Z", protocol_version="khala.ws.v1", schema_version="2")
    assert (await schema.join())["response"]["reason"] == "unsupported_schema_version"
    good = await connect(mint(1), client_build_id="20260301T000000Z", protocol_version="khala.ws.v1", schema_version="1")
    assert (await good.join())["status"] == "ok"


# ---- frames and events -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"a": 1}',
        '["1","1","sync:v1"]',
        '["1","1","sync:v1","sync:subscribe",{},"extra"]',
        '[1,"1","sync:v1","sync:subscribe",{}]',
        '["1","1","sync:v1","sync:subscribe","topics"]',
        '["1","1",null,"sync:subscribe",{}]',
    ],
)
async def test_malformed_frames_close_with_4400_and_others_keep_working(topics, mint, awrite, text):
    await awrite(RUNS, "runtime/run_summary:a", 1, {"a": 1})
    bystander = await joined(mint(2))
    client = await joined(mint(1))
    await client.send_raw(text)
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][:4] == [None, None, "phoenix", "sync:error"]
    assert frames[-1][4]["code"] == "malformed_frame"
    assert await client.wait_closed() == 4400
    reply, _ = await bystander.subscribe([RUNS])
    assert reply["status"] == "ok"


@pytest.mark.parametrize(
    "text, field",
    [
        ('["1","2","sync:v1","sync:subscribe",{"topics":["runtime.run_summaries\\u0000"]}]', "frame[4].topics[0]"),
        ('["1","2","sync:v1","sync:subscribe",{"topics":["runtime.run_summaries"],"request_id":"a\\u0000"}]', "frame[4].request_id"),
        ('["1","2\\u0000","phoenix","heartbeat",{}]', "frame[1]"),
        ('["1","2","sync:v1","sync:subscribe",{"k\\u0000":1}]', "frame[4] (a key)"),
    ],
)
async def test_unstorable_text_in_a_frame_is_malformed(topics, mint, text, field):
    """The HTTP boundary's unstorable-text check (khala_project.storable_text) also guards frames."""
    client = await joined(mint(1))
    await client.send_raw(text)
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4]["code"] == "malformed_frame" and frames[-1][4]["field"] == field, frames[-1]
    assert "NUL" in frames[-1][4]["message"]
    assert await client.wait_closed() == 4400


@pytest.mark.parametrize(
    "query, field",
    [
        ("token={token}%00&vsn=2.0.0", "query parameter 'token'"),
        ("token=%00{token}&vsn=2.0.0", "query parameter 'token'"),
        ("token={token}&vsn=2.0.0&client_build_id=b%00", "query parameter 'client_build_id'"),
        ("token={token}&vsn=2.0.0&x%00=1", "query parameter name"),
    ],
)
async def test_unstorable_text_in_a_query_parameter_is_refused_at_connect(topics, mint, monkeypatch, query, field):
    """The token on the socket's URL (and every other parameter) passes the frames' unstorable-text
    check at connect: the socket is refused as malformed_frame (4400), and the token never reaches
    the verifier (nor the join's revocation read)."""
    import tokens.verifier

    verified = []
    real = tokens.verifier.verify_sync_token
    monkeypatch.setattr(tokens.verifier, "verify_sync_token", lambda token, **kw: verified.append(token) or real(token, **kw))
    client = await PhoenixClient.communicator(query.format(token=mint(1)))
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames == [[None, None, "phoenix", "sync:error", {
        "code": "malformed_frame", "message": f"{field} contains a NUL character, which cannot be stored", "field": field,
    }]]
    assert await client.wait_closed() == 4400
    assert verified == []
    # The same token without the NUL joins (the refusal was the parameter's text, nothing else).
    good = await joined(mint(1))
    await good.close()


async def test_oversized_frame_is_refused(topics, mint, khala):
    khala(MAX_FRAME_BYTES=4096)
    client = await joined(mint(1))
    await client.send_raw(json.dumps(["1", "9", "sync:v1", "sync:subscribe", {"topics": ["x" * 5000]}]))
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4] == {"code": "payload_too_large", "message": "frame exceeds the size limit", "limit_bytes": 4096}
    assert await client.wait_closed() == 4413


async def test_topic_and_event_errors_keep_the_socket_open(topics, mint):
    client = await connect(mint(1))
    ref = await client.push("sync:subscribe", {"topics": [RUNS]}, join_ref=None)
    reply, _ = await client.reply(ref)
    assert reply["response"]["code"] == "bad_topic" and reply["response"]["message"] == "join sync:v1 first"
    ref = await client.push("phx_join", {}, topic="room:lobby")
    reply, _ = await client.reply(ref)
    assert reply["response"]["code"] == "bad_topic"
    await client.join()
    ref = await client.push("sync:frobnicate", {})
    reply, _ = await client.reply(ref)
    assert reply["status"] == "error" and reply["response"]["code"] == "unknown_event"
    assert reply["response"]["event"] == "sync:frobnicate"
    ref = await client.push("heartbeat", {}, topic="phoenix", join_ref=None)
    reply, _ = await client.reply(ref)
    assert reply == {"status": "ok", "response": {}}


@pytest.mark.parametrize(
    "payload, code",
    [
        ({"topics": []}, "bad_subscription"),
        ({"topics": [RUNS], "resume_after": {RUNS: -1}}, "bad_subscription"),
        ({"topics": [RUNS], "resume_after": {RUNS: 1.5}}, "bad_subscription"),
        ({"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": "seven"}]}, "bad_subscription"),
        ({"topics": ["runtime.notifications"]}, "forbidden_topic"),
        ({"topics": ["no.such.topic"]}, "forbidden_topic"),
    ],
)
async def test_subscribe_errors_over_the_wire(topics, mint, payload, code):
    client = await joined(mint(1, scopes=[RUNS, WORKERS]))
    ref = await client.push("sync:subscribe", payload)
    reply, frames = await client.reply(ref)
    assert frames == []
    assert reply["status"] == "error" and reply["response"]["code"] == code
    if code == "forbidden_topic":
        assert reply["response"]["forbidden_topics"] == payload["topics"]


# ---- replay ----------------------------------------------------------------------------------


async def test_replay_from_zero_and_from_a_cursor(topics, mint, awrite):
    await write_runs(awrite, 7)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS], replay_batch_size=3)
    assert [len(f[4]["updates"]) for f in frames] == [3, 3, 1]
    assert [f[4]["replay_complete"] for f in frames] == [False, False, True]
    assert [f[4]["head_watermarks"][0]["watermark"] for f in frames] == [3, 6, 7]
    assert [u["watermark"] for u in updates_of(frames)] == list(range(1, 8))
    epoch = reply["response"]["current_watermarks"][0]["stream_epoch"]

    resumed = await joined(mint(1))
    reply, frames = await resumed.subscribe(["SYNC_TOPIC_RUNTIME_RUN_SUMMARIES"], [{"topic": RUNS, "watermark": 5, "stream_epoch": epoch}])
    assert [u["watermark"] for u in updates_of(frames)] == [6, 7]
    assert reply["response"]["topics"] == [RUNS]
    assert reply["response"]["current_watermarks"] == [{"topic": RUNS, "watermark": 7, "stream_epoch": epoch}]

    empty = await joined(mint(1))
    reply, frames = await empty.subscribe([RUNS], {RUNS: 7})
    assert frames == [] and reply["response"]["current_watermarks"][0]["watermark"] == 7


async def test_batch_size_is_capped_by_the_server(topics, mint, awrite, khala):
    khala(REPLAY_BATCH_MAX_SIZE=4)
    await write_runs(awrite, 9)
    client = await joined(mint(1))
    _, frames = await client.subscribe([RUNS], replay_batch_size=1000)
    assert [len(f[4]["updates"]) for f in frames] == [4, 4, 1]


async def test_batches_respect_the_byte_limit_and_large_updates_go_as_pointers(topics, mint, awrite, khala):
    khala(REPLAY_BATCH_MAX_BYTES=8192)
    for i in range(1, 13):
        await awrite(RUNS, f"runtime/run_summary:b{i}", 1, {"blob": "x" * 1000, "i": i}, "user:1")
    await awrite(RUNS, "runtime/run_summary:huge", 1, {"blob": "y" * 7000}, "user:1")  # inline in the journal
    client = await joined(mint(1))
    _, frames = await client.subscribe([RUNS])
    sizes = [len(client_frame_text(f)) for f in frames]
    assert len(frames) >= 2 and max(sizes) <= 8192
    updates = updates_of(frames)
    assert [u["watermark"] for u in updates] == list(range(1, 14))
    huge = updates[-1]
    assert huge["payload"] is None and huge["hydration_required"] is True and huge["payload_hash"]
    assert all(u["hydration_required"] is False and u["payload"]["blob"] == "x" * 1000 for u in updates[:-1])


def client_frame_text(frame) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


async def test_pointer_mode_rows_require_hydration(topics, mint, awrite):
    from projector.models import TopicSequence

    await database_sync_to_async(TopicSequence.objects.filter(topic=RUNS).update)(force_pointer_mode=True)
    await awrite(RUNS, "runtime/run_summary:p", 3, {"secret": "not inline"})
    client = await joined(mint(1))
    _, frames = await client.subscribe([RUNS])
    [update] = updates_of(frames)
    assert update["payload"] is None and update["hydration_required"] is True
    assert update["doc_version"] == 3 and base64.b64decode(update["payload_hash"])


async def test_replay_complete_then_live_and_frames(topics, mint, awrite):
    await write_runs(awrite, 2)
    client = await joined(mint(1), {"frames": True})
    ref = await client.push("sync:subscribe", {"topics": [RUNS]})
    reply, frames = await client.reply(ref)
    events = [f[3] for f in frames]
    assert events == ["sync:update_batch", "sync:frame"]
    batch, envelope = frames[0][4], frames[1][4]
    assert batch["replay_complete"] is True
    assert envelope["kind"] == "KHALA_FRAME_KIND_UPDATE_BATCH" and envelope["seq"] == 2 and envelope["schema_version"] == 1
    assert json.loads(base64.b64decode(envelope["payload_bytes"])) == batch
    await awrite(RUNS, "runtime/run_summary:live", 1, {"live": True})
    live = await client.recv_until(lambda f: f[3] == "sync:frame")
    assert [f[3] for f in live] == ["sync:update_batch", "sync:frame"]
    assert [u["watermark"] for u in updates_of(live)] == [3]
    assert live[0][4]["replay_complete"] is True


async def test_rows_committed_during_replay_arrive_exactly_once(topics, mint, awrite):
    await write_runs(awrite, 50)
    client = await joined(mint(1))
    ref = await client.push("sync:subscribe", {"topics": [RUNS], "replay_batch_size": 1})
    writer = asyncio.create_task(write_runs(awrite, 50, start=51))  # commits race the replay
    reply, frames = await client.reply(ref, timeout=60)
    await writer
    seen = [u["watermark"] for u in updates_of(frames)]
    while not seen or seen[-1] < 100:
        frame = await client.recv_until(lambda f: f[3] == "sync:update_batch")
        seen += [u["watermark"] for u in updates_of(frame)]
    assert seen == list(range(1, 101))


async def test_unsubscribe_and_heartbeat_reply(topics, mint, awrite):
    client = await joined(mint(1))
    await client.subscribe([RUNS, WORKERS])
    ref = await client.push("sync:heartbeat", {})
    reply, _ = await client.reply(ref)
    assert {w["topic"] for w in reply["response"]["watermarks"]} == {RUNS, WORKERS}
    assert all({"watermark", "head_watermark", "stream_epoch"} <= set(w) for w in reply["response"]["watermarks"])
    ref = await client.push("sync:unsubscribe", {"topics": [RUNS]})
    reply, _ = await client.reply(ref)
    assert reply["response"]["topics"] == [WORKERS]
    await awrite(RUNS, "runtime/run_summary:after", 1, {})
    await awrite(WORKERS, "runtime/codex_worker_summary:w", 1, {})
    live = await client.recv_until(lambda f: f[3] == "sync:update_batch")
    assert [u["topic"] for u in updates_of(live)] == [WORKERS]


# ---- owner filter -----------------------------------------------------------------------------


async def test_owner_filter_replay_and_live(topics, mint, awrite):
    await awrite(RUNS, "runtime/run_summary:a1", 1, {"who": "a"}, "user:1")
    await awrite(RUNS, "runtime/run_summary:b1", 1, {"who": "b"}, "user:2")
    await awrite(RUNS, "runtime/run_summary:pub", 1, {"who": "all"}, "user:1", public=True)
    await awrite(RUNS, "runtime/run_summary:a2", 1, {"who": "a"}, "user:1")
    b = await joined(mint(2))
    reply, frames = await b.subscribe([RUNS])
    assert [u["doc_key"] for u in updates_of(frames)] == ["runtime/run_summary:b1", "runtime/run_summary:pub"]
    assert frames[-1][4]["head_watermarks"][0]["watermark"] == 4  # topic-wide position
    assert reply["response"]["current_watermarks"][0]["watermark"] == 4
    await awrite(RUNS, "runtime/run_summary:a3", 1, {"who": "a"}, "user:1")
    await awrite(RUNS, "runtime/run_summary:b2", 1, {"who": "b"}, "user:2")
    live = await b.recv_until(lambda f: f[3] == "sync:update_batch")
    assert [u["doc_key"] for u in updates_of(live)] == ["runtime/run_summary:b2"]
    ref = await b.push("sync:heartbeat", {})
    reply, extra = await b.reply(ref)
    assert reply["response"]["watermarks"][0]["watermark"] == 6
    assert all(u["payload"]["who"] != "a" for u in updates_of(b.received))


# ---- stale cursors ----------------------------------------------------------------------------


def prune_through(topic, through):
    """What a retention run does: delete the journal prefix and raise pruned_through, atomically."""
    from django.db import transaction

    from projector.models import StreamEvent, TopicSequence

    with transaction.atomic():
        StreamEvent.objects.filter(topic=topic, watermark__lte=through).delete()
        TopicSequence.objects.filter(topic=topic).update(pruned_through=through)


async def expect_stale(client, payload, reason):
    ref = await client.push("sync:subscribe", payload)
    reply, frames = await client.reply(ref)
    assert [f[3] for f in frames] == ["sync:error"]
    assert reply["status"] == "error"
    assert frames[0][4] == reply["response"]
    error = reply["response"]
    assert error["code"] == "stale_cursor" and error["full_resync_required"] is True
    assert error["reason_codes"] == [reason]
    return error


async def test_stale_cursor_after_retention(topics, mint, awrite):
    await write_runs(awrite, 10)
    await database_sync_to_async(prune_through)(RUNS, 6)
    client = await joined(mint(1))
    error = await expect_stale(client, {"topics": [RUNS], "resume_after": {RUNS: 5}}, "retention_floor_breach")
    [stale] = error["stale_topics"]
    assert (stale["topic"], stale["resume_after"], stale["retention_floor"], stale["head_watermark"]) == (RUNS, 5, 6, 10)
    assert error["snapshot"]["topics"][0]["head_watermark"] == 10
    # not applied: a new row is not delivered, and the heartbeat shows no topic
    await awrite(RUNS, "runtime/run_summary:new", 1, {})
    ref = await client.push("sync:heartbeat", {})
    reply, frames = await client.reply(ref)
    assert frames == [] and reply["response"]["watermarks"] == []
    # at the floor is fine; without a cursor the retained window is replayed
    reply, frames = await client.subscribe([RUNS], {RUNS: 6})
    assert [u["watermark"] for u in updates_of(frames)] == [7, 8, 9, 10, 11]
    fresh = await joined(mint(1))
    _, frames = await fresh.subscribe([RUNS])
    assert [u["watermark"] for u in updates_of(frames)] == [7, 8, 9, 10, 11]


async def test_stale_cursor_when_every_row_was_pruned(topics, mint, awrite):
    await write_runs(awrite, 3)
    await database_sync_to_async(prune_through)(RUNS, 3)
    client = await joined(mint(1))
    await expect_stale(client, {"topics": [RUNS], "resume_after": {RUNS: 1}}, "retention_floor_breach")


async def test_stale_cursor_on_epoch_mismatch_and_cursor_ahead(topics, mint, awrite):
    from projector.topics import bump_stream_epoch

    await write_runs(awrite, 3)
    client = await joined(mint(1))
    reply, _ = await client.subscribe([RUNS])
    old_epoch = reply["response"]["current_watermarks"][0]["stream_epoch"]
    await database_sync_to_async(bump_stream_epoch)(RUNS)
    other = await joined(mint(1))
    await expect_stale(other, {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": 2, "stream_epoch": old_epoch}]}, "stream_epoch_mismatch")
    await expect_stale(other, {"topics": [RUNS], "resume_after": {RUNS: 99}}, "cursor_ahead_of_head")
    # the live socket of the old epoch is told too, and stops following the topic
    await awrite(RUNS, "runtime/run_summary:x", 1, {})
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4]["code"] == "stale_cursor" and frames[-1][4]["reason_codes"] == ["stream_epoch_mismatch"]
    assert updates_of(frames) == []


async def test_stale_cursor_replay_budget(topics, mint, awrite):
    from projector.models import TopicSequence

    await database_sync_to_async(TopicSequence.objects.filter(topic=RUNS).update)(replay_budget_events=2)
    await write_runs(awrite, 4)
    client = await joined(mint(1))
    error = await expect_stale(client, {"topics": [RUNS], "resume_after": {RUNS: 0}}, "replay_budget_exceeded")
    assert error["stale_topics"][0]["replay_lag"] == 4 and error["stale_topics"][0]["replay_budget_events"] == 2
    reply, frames = await client.subscribe([RUNS], {RUNS: 2})
    assert reply["status"] == "ok" and [u["watermark"] for u in updates_of(frames)] == [3, 4]


# ---- lost hints ---------------------------------------------------------------------------------


async def test_lost_hints_are_caught_by_the_head_check(topics, mint, awrite, khala, monkeypatch):
    from sync import metrics

    khala(HEAD_CHECK_INTERVAL_SECONDS=0.2)
    monkeypatch.setattr("projector.sink.submit_hint", lambda *a, **k: None)  # every hint is lost
    client = await joined(mint(1))
    await client.subscribe([RUNS])
    before = metrics.HUB_LOST_HINT_CATCHUPS._value.get()
    await write_runs(awrite, 3)
    seen = []
    while len(seen) < 3:
        seen += [u["watermark"] for u in updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch"))]
    assert seen == [1, 2, 3]
    assert metrics.HUB_LOST_HINT_CATCHUPS._value.get() > before


# ---- request flood ------------------------------------------------------------------------------


async def test_request_flood_is_rate_limited_not_queued(topics, mint):
    client = await joined(mint(1))
    refs = [await client.push("sync:subscribe", {"topics": [RUNS]}) for _ in range(60)]
    replies = {}
    while len(replies) < len(refs):
        frame = await client.recv()
        if frame[3] == "phx_reply":
            replies[frame[1]] = frame[4]
    codes = [replies[ref]["response"].get("code", "ok") for ref in refs]
    assert codes.count("rate_limited") >= 60 - 32 and "ok" in codes
    limited = next(replies[ref]["response"] for ref in refs if replies[ref]["status"] == "error")
    assert limited == {"code": "rate_limited", "message": "too many requests in flight", "retry_after_ms": 1000}
    ref = await client.push("sync:heartbeat", {})
    reply, _ = await client.reply(ref)
    assert reply["status"] == "ok"


async def test_revocation_is_rechecked_on_the_heartbeat_tick_when_the_hint_is_lost(topics, mint, monkeypatch):
    from sync.hub import get_hub
    from tokens.revocation import revoke

    monkeypatch.setattr("tokens.revocation._announce", lambda *a, **k: None)  # the hint is lost
    token = mint(1)
    device = jwt.decode(token, SIGNING_SECRET, algorithms=["HS256"], options={"verify_aud": False})["oa_device_id"]
    client = await joined(token)
    await database_sync_to_async(revoke)([], [device], "device_lost")
    await (await get_hub()).check_revocations()  # what the tick does every heartbeat interval
    frames = await client.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4]["code"] == "reauth_required" and frames[-1][4]["reason"] == "device_lost"
    assert await client.wait_closed() == 4403


async def test_rows_committed_right_after_the_replay_snapshot_are_delivered_once(topics, mint, awrite, monkeypatch):
    """Force the handover race: rows commit after the replay's snapshot but before the topic is
    live, so they can only come through the buffered hub ranges (or a gap read)."""
    from sync.journal import Journal

    await write_runs(awrite, 5)
    original = Journal.read_visible
    state = {"forced": False}

    async def read_then_commit(self, *args, **kwargs):
        page = await original(self, *args, **kwargs)
        if not state["forced"]:
            state["forced"] = True
            await write_runs(awrite, 3, start=6)  # committed after the snapshot the page came from
        return page

    monkeypatch.setattr(Journal, "read_visible", read_then_commit)
    client = await joined(mint(1))
    reply, frames = await client.subscribe([RUNS])
    seen = [u["watermark"] for u in updates_of(frames)]
    assert seen == [1, 2, 3, 4, 5]
    while len(seen) < 8:
        seen += [u["watermark"] for u in updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch"))]
    assert seen == list(range(1, 9))
    await awrite(RUNS, "runtime/run_summary:last", 1, {})
    assert [u["watermark"] for u in updates_of(await client.recv_until(lambda f: f[3] == "sync:update_batch"))] == [9]

"""Frames a client sends without waiting for replies, on a real daphne server: per-socket ordering
(a subscribe sent right behind its join is handled after the join) and a burst of heartbeats from a
client that reads (no slow_consumer close)."""

import json

import pytest

from tests.support.wsclient import PhoenixClient

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"
ITERATIONS = 40


async def test_a_subscribe_sent_behind_its_join_waits_for_the_join(topics, mint, asgi_server):
    server = asgi_server("daphne")
    token = mint(1, [RUNS])
    for iteration in range(ITERATIONS):
        client = await PhoenixClient.connect(server.ws_url(token=token))
        try:
            # Both frames in one write burst: the subscribe arrives while the join awaits its checks.
            await client.send_raw(json.dumps(["1", "1", "sync:v1", "phx_join", {}]))
            await client.send_raw(json.dumps(["1", "2", "sync:v1", "sync:subscribe", {"topics": [RUNS]}]))
            frames = await client.recv_until(lambda f: f[3] == "phx_reply" and f[1] == "2", timeout=20)
            replies = [(f[1], f[4]["status"]) for f in frames if f[3] == "phx_reply"]
            assert replies == [("1", "ok"), ("2", "ok")], (iteration, frames)
        finally:
            await client.close()


async def test_a_burst_of_heartbeats_from_a_reading_client_keeps_the_socket(topics, mint, asgi_server):
    # A small queue, so that the burst is many times its size.
    server = asgi_server("daphne", khala={"OUTBOUND_QUEUE_LIMIT": 20})
    client = await PhoenixClient.connect(server.ws_url(token=mint(1, [RUNS])))
    try:
        assert (await client.join())["status"] == "ok"
        burst = 2000
        refs = [str(1000 + i) for i in range(burst)]
        for ref in refs:  # pipelined: no send waits for a reply
            await client.send_raw(json.dumps([None, ref, "phoenix", "heartbeat", {}]))
        await client.recv_until(lambda f: f[3] == "phx_reply", timeout=30)
        # Replies beyond the socket's queue mark are dropped (documented); the socket lives, and
        # once the client has read the rest, a heartbeat is answered again.
        for attempt in range(100):
            ref = f"final{attempt}"
            await client.send_raw(json.dumps([None, ref, "phoenix", "heartbeat", {}]))
            try:
                await client.recv_until(lambda f, ref=ref: f[3] == "phx_reply" and f[1] == ref, timeout=0.5)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no heartbeat answered after the burst")
        frames = client.received
        burst_replies = [f for f in frames if f[3] == "phx_reply" and f[1] in set(refs)]
        assert burst_replies and all(f[4]["status"] == "ok" for f in burst_replies), burst_replies[-3:]
        answered = [int(f[1]) for f in burst_replies]
        assert answered == sorted(answered)
        assert not [f for f in frames if f[3] == "sync:error"], [f for f in frames if f[3] == "sync:error"][:1]
        reply, _ = await client.reply(await client.push("sync:heartbeat", {}))
        assert reply["status"] == "ok"
    finally:
        await client.close()

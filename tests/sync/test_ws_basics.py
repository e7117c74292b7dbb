"""Join, subscribe, replay and live over the real ASGI app (Channels' communicator), on real
PostgreSQL and Redis."""

import pytest

from tests.support.wsclient import PhoenixClient, updates_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]

RUNS = "runtime.run_summaries"


async def _client(token):
    return await PhoenixClient.communicator(f"token={token}&vsn=2.0.0")


async def test_join_subscribe_replay_then_live(topics, mint, awrite):
    for i in range(1, 4):
        await awrite(RUNS, f"runtime/run_summary:r{i}", 1, {"run_id": f"r{i}"})
    client = await _client(mint(1))
    joined = await client.join()
    assert joined["status"] == "ok"
    assert RUNS in joined["response"]["allowed_topics"]
    reply, frames = await client.subscribe([RUNS])
    assert reply["status"] == "ok"
    assert [u["watermark"] for u in updates_of(frames)] == [1, 2, 3]
    assert frames[-1][4]["replay_complete"] is True
    assert reply["response"]["current_watermarks"][0]["watermark"] == 3

    await awrite(RUNS, "runtime/run_summary:r4", 1, {"run_id": "r4"})
    live = await client.recv_until(lambda f: f[3] == "sync:update_batch")
    assert [u["doc_key"] for u in updates_of(live)] == ["runtime/run_summary:r4"]
    assert live[-1][0] is None  # a broadcast frame
    await client.close()

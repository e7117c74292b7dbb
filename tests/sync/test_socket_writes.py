"""How live frames reach the sockets on REAL daphne and uvicorn processes: what is queued for one
socket within one loop turn goes out in one transport write, in order and in batch frames within
the limits, a socket whose client stopped reading delays no other, and frames shared between
sockets (framed once) never cross the owner filter or carry another socket's ``join_ref``.

Every wait is a condition with a timeout; nothing asserts a duration."""

import asyncio
import re
import urllib.request

import pytest

from tests.support.servers import SERVER_KINDS
from tests.support.waiting import wait_until
from tests.support.wsclient import PhoenixClient

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"


def write_burst(first: int, count: int, owner="user:1", payload_bytes=0):
    """``count`` documents in ONE transaction (so the hub reads them as one range)."""
    from django.db import connection

    from projector.document_write import DocumentWrite
    from projector.sink import project_many

    try:
        results = project_many(
            DocumentWrite(RUNS, f"runtime/run_summary:b{i}", 1, {"i": i, "pad": "p" * payload_bytes}, owner)
            for i in range(first, first + count)
        )
        return [r.watermark for r in results]
    finally:
        connection.close()


def write_rows(rows):
    """``rows``: ``[(doc index, owner)]``, one transaction each, in order."""
    from django.db import connection

    from projector.sink import project

    try:
        return [project(RUNS, f"runtime/run_summary:r{i}", 1, {"i": i}, owner).watermark for i, owner in rows]
    finally:
        connection.close()


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.M)
    return float(match.group(1)) if match else 0.0


async def subscribed(server, token, *, refs_before_join: int = 0, client=None):
    client = client or await PhoenixClient.connect(server.ws_url(token=token))
    for _ in range(refs_before_join):  # a different join_ref than the other clients'
        client.next_ref()
    assert (await client.join())["status"] == "ok"
    reply, _ = await client.subscribe([RUNS])
    assert reply["status"] == "ok", reply
    return client


async def batches_until(client, last_watermark: int, timeout: float = 30.0) -> list[list]:
    """The ``sync:update_batch`` frames received until one carries ``last_watermark``."""
    frames = await client.recv_until(
        lambda f: f[3] == "sync:update_batch" and any(u["watermark"] == last_watermark for u in f[4]["updates"]), timeout
    )
    return [f for f in frames if f[3] == "sync:update_batch"]


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_burst_goes_out_in_order_in_few_frames_and_one_write_per_socket(topics, mint, asgi_server, kind):
    """220 rows committed at once, with the batch limit at 50 updates, reach each socket as five
    batch frames (50 × 4 + 20: as few as the limit allows), in order, and each socket's five frames
    (about 40 KB) were ONE transport write (the server counts frames and writes of the direct
    path)."""
    server = asgi_server(kind, khala={"REPLAY_BATCH_MAX_SIZE": 50})
    clients = [await subscribed(server, mint(1)) for _ in range(2)]
    frames_before = metric(server, 'khala_ws_frames_written_total{path="direct"}')
    writes_before = metric(server, 'khala_ws_transport_writes_total{path="direct"}')
    assert frames_before > 0, "the join and subscribe replies went through the direct path"

    watermarks = await asyncio.to_thread(write_burst, 1, 220)
    for client in clients:
        batches = await batches_until(client, watermarks[-1])
        assert [u["watermark"] for b in batches for u in b[4]["updates"]] == watermarks
        assert [len(b[4]["updates"]) for b in batches] == [50, 50, 50, 50, 20]
        assert all(b[0] is None for b in batches)  # live frames: join_ref null
    frames = metric(server, 'khala_ws_frames_written_total{path="direct"}') - frames_before
    writes = metric(server, 'khala_ws_transport_writes_total{path="direct"}') - writes_before
    assert frames == 10
    assert writes == 2, f"{frames} frames in {writes} writes: one write per socket expected"


@pytest.mark.parametrize("burst", [4, 1], ids=["bursts", "single-frames"])
@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_a_stuck_socket_never_delays_a_reading_one(topics, mint, asgi_server, kind, burst):
    """Bursts of ``burst`` 32 KiB rows (one batch frame each: the batch limit is 1 here, so a burst
    of four is four frames queued in one turn, written together; a burst of one is a frame the
    socket would write at once) to a socket that reads and one that never reads: the reading
    socket gets every row, in order, burst after burst, while the silent one's transport stays
    full and its queue grows until it is closed as ``slow_consumer`` (4008). Single frames also
    prove that a frame is written at once only while the transport is below its high-water mark:
    were that check missed, each frame would go into the full transport's buffer, the queue would
    stay empty and the socket would never be closed. Each burst is written only after the reading
    socket got the previous one, so its queue never holds more than one burst, however slow the
    machine."""
    limit = 12
    server = asgi_server(kind, khala={"OUTBOUND_QUEUE_LIMIT": limit, "OUTBOUND_QUEUE_MAX_BYTES": 8 * 1024 * 1024, "REPLAY_BATCH_MAX_SIZE": 1})
    reader = await subscribed(server, mint(1))
    silent = await subscribed(server, mint(1), client=await PhoenixClient.raw(server.ws_url(token=mint(1))))
    seen = []
    first = 1
    for _ in range(800 // burst):  # up to 800 rows of 32 KiB: far more than kernel and transport buffers hold
        watermarks = await asyncio.to_thread(write_burst, first, burst, "user:1", 32 * 1024)
        first += burst
        batches = await batches_until(reader, watermarks[-1])
        seen += [u["watermark"] for b in batches for u in b[4]["updates"]]
        if metric(server, "khala_ws_slow_consumer_closes_total") >= 1:
            break
    # Read the silent socket at once: daphne (autobahn) gives a peer 1 s to answer its close
    # frame before dropping TCP, and the frame waits behind what the kernel buffers still hold.
    close_code = await silent.wait_closed(timeout=30)
    assert metric(server, "khala_ws_slow_consumer_closes_total") == 1, "the silent socket was never closed"
    if kind == "daphne" and close_code != 4008:
        # autobahn drops TCP when the peer has not answered its close frame within 1 s, and the frame
        # waits behind everything the kernel still buffers for this never-reading socket: on a
        # loaded host the client may see the drop (no code) first. The metric above is the server's
        # own word that it closed the socket as slow_consumer; the code itself is proven where the
        # peer reads (test_ws_servers' slow-consumer test).
        assert close_code in (None, 1006), close_code
    else:
        assert close_code == 4008
    assert seen == list(range(1, seen[-1] + 1))  # every row, in order, to the reading socket
    await wait_until(lambda: metric(server, "khala_ws_active_connections") == 1, 10, message="only the reading socket left")


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_shared_frames_keep_the_owner_filter_and_each_sockets_join_ref(topics, mint, asgi_server, kind):
    """Two sockets of owner 1 with different join_refs and one of owner 2 on one worker: each gets
    exactly its owner's rows (the frames shared between the first two never reach the third), live
    frames carry join_ref null, and every reply carries the socket's own join_ref. A socket that
    subscribes from a cursor gets its replay frames with its own join_ref, then the shared live
    frames."""
    server = asgi_server(kind)
    first = await subscribed(server, mint(1))
    second = await subscribed(server, mint(1), refs_before_join=5)
    other = await subscribed(server, mint(2), refs_before_join=2)
    assert len({first.join_ref, second.join_ref, other.join_ref}) == 3

    rows = [(i, "user:1" if i % 3 else "user:2") for i in range(1, 31)]
    watermarks = await asyncio.to_thread(write_rows, rows)
    mine = [wm for wm, (_, owner) in zip(watermarks, rows) if owner == "user:1"]
    theirs = [wm for wm, (_, owner) in zip(watermarks, rows) if owner == "user:2"]

    got = {}
    for name, client, expected in (("first", first, mine), ("second", second, mine), ("other", other, theirs)):
        batches = await batches_until(client, expected[-1])
        assert [u["watermark"] for b in batches for u in b[4]["updates"]] == expected, name
        assert all(b[0] is None for b in batches), name
        got[name] = batches
    assert got["first"] == got["second"]

    # A late socket of owner 2 replays from the start with its own join_ref, then goes live.
    late = await PhoenixClient.connect(server.ws_url(token=mint(2)))
    late.next_ref()
    assert (await late.join())["status"] == "ok"
    reply, replayed = await late.subscribe([RUNS], [{"topic": RUNS, "watermark": 0}])
    assert reply["status"] == "ok"
    replay_batches = [f for f in replayed if f[3] == "sync:update_batch"]
    assert [u["watermark"] for b in replay_batches for u in b[4]["updates"]] == theirs
    assert all(b[0] == late.join_ref for b in replay_batches)
    more = await asyncio.to_thread(write_rows, [(100, "user:1"), (101, "user:2")])
    for client, expected in ((late, [more[1]]), (other, [more[1]]), (first, [more[0]]), (second, [more[0]])):
        batches = await batches_until(client, expected[-1])
        assert [u["watermark"] for b in batches for u in b[4]["updates"]] == expected
        assert all(b[0] is None for b in batches)
    for client in (first, second, other, late):
        ref = await client.push("sync:heartbeat", {})
        reply, _ = await client.reply(ref)
        assert reply["status"] == "ok"
        assert client.received[-1][0] == client.join_ref  # the reply carries the socket's own join_ref

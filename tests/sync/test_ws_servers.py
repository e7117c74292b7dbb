"""Delivery across REAL server processes (daphne, and uvicorn where the behaviour differs):
cross-worker fan-out, forced disconnects while writers run, lost hints, malformed and huge frames,
slow consumers, idle timeouts. Every wait is a condition with a timeout."""

import asyncio
import re
import threading
import time
import urllib.request

import pytest

from khala_project.conf import khala_setting
from tests.support.servers import SERVER_KINDS
from tests.support.waiting import wait_until
from tests.support.wsclient import Closed, PhoenixClient, updates_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"


def write_rows(start, count, owner="user:1", payload_bytes=0, topic=RUNS, pause=0.0):
    """Sink writes from a plain thread (its own DB connection, closed at the end)."""
    from django.db import connection

    from projector.sink import project

    try:
        for i in range(start, start + count):
            project(topic, f"runtime/run_summary:r{i}", 1, {"i": i, "pad": "p" * payload_bytes}, owner)
            if pause:
                time.sleep(pause)  # pacing a writer, not waiting for an event
    finally:
        connection.close()


def journal_watermarks(owner=None, topic=RUNS):
    from django.db import connection

    from projector.models import StreamEvent

    try:
        rows = StreamEvent.objects.filter(topic=topic)
        if owner is not None:
            rows = rows.filter(owner=owner)
        return list(rows.order_by("watermark").values_list("watermark", flat=True))
    finally:
        connection.close()


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def subscribed(server, token, resume_after=None):
    client = await PhoenixClient.connect(server.ws_url(token=token))
    assert (await client.join())["status"] == "ok"
    reply, frames = await client.subscribe([RUNS], resume_after)
    assert reply["status"] == "ok", reply
    return client, [u["watermark"] for u in updates_of(frames)]


async def collect_until(client, predicate, timeout=30.0):
    """Watermarks of updates received until ``predicate(watermarks)`` holds."""
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(seen):
        frame = await client.recv(max(deadline - loop.time(), 0.01))
        if frame[3] == "sync:update_batch":
            seen += [u["watermark"] for u in frame[4]["updates"]]
    return seen


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.M)
    return float(match.group(1)) if match else 0.0


# Far longer than any wait below, also while the bus is not attached yet: within these tests only
# a Redis hint, or the one head check a hub runs when its bus attaches, can trigger live delivery.
NO_HEAD_CHECK = {"HEAD_CHECK_INTERVAL_SECONDS": 600.0, "HEAD_CHECK_DETACHED_INTERVAL_SECONDS": 600.0}
HINT_WINDOW_SECONDS = 10.0


async def test_two_daphne_workers_deliver_through_redis_hints_and_a_deaf_worker_does_not(topics, mint, asgi_server):
    """Live delivery across processes is driven by the hints: the writer (this process) publishes
    on the run's channel prefix, both workers hear it and deliver long before their head check
    could. A third worker on another prefix hears nothing and therefore delivers nothing in the
    same window — the control that makes this test able to fail if hints were not used."""
    one, two = asgi_server("daphne", khala=NO_HEAD_CHECK), asgi_server("daphne", khala=NO_HEAD_CHECK)
    deaf = asgi_server("daphne", khala=NO_HEAD_CHECK, env={"KHALA_CHANNEL_PREFIX": "khala_hint_test_deaf"})
    a, _ = await subscribed(one, mint(1))
    b, _ = await subscribed(two, mint(1))
    c, _ = await subscribed(deaf, mint(1))
    # A hub's bus subscription attaches with its first followed topic, and then checks the heads
    # once (hints sent before the attach are lost). Let that check finish before writing: on a
    # slow machine it could otherwise read the writes below and count them as caught up. With the
    # detached interval as long as the other, it is the only head check a worker runs here.
    for server in (one, two, deaf):
        await wait_until(
            lambda server=server: metric(server, 'khala_bus_shard_attached{shard="0"}') == 1
            and metric(server, "khala_hub_head_checks_total") >= 1, 10, message="the bus attached, and its head check",
        )
    await in_thread(write_rows, 1, 3)
    assert await collect_until(a, lambda s: len(s) >= 3, timeout=HINT_WINDOW_SECONDS) == [1, 2, 3]
    assert await collect_until(b, lambda s: len(s) >= 3, timeout=HINT_WINDOW_SECONDS) == [1, 2, 3]
    # The deaf worker listens on another prefix: no hint reached it, so it has sent nothing.
    ref = await c.push("sync:heartbeat", {})
    reply, frames = await c.reply(ref)
    assert updates_of(frames) == [] and reply["response"]["watermarks"][0]["watermark"] == 0
    # and a second burst while serving: both hubs keep hearing the topic group.
    await in_thread(write_rows, 4, 2)
    assert await collect_until(a, lambda s: len(s) >= 2, timeout=HINT_WINDOW_SECONDS) == [4, 5]
    assert await collect_until(b, lambda s: len(s) >= 2, timeout=HINT_WINDOW_SECONDS) == [4, 5]
    ref = await c.push("sync:heartbeat", {})
    reply, frames = await c.reply(ref)
    assert updates_of(frames) == [] and reply["response"]["watermarks"][0]["watermark"] == 0
    assert metric(one, "khala_hub_head_check_catchups_total") == 0
    assert metric(one, 'khala_hub_journal_reads_total{trigger="hint"}') >= 1


async def test_forced_disconnect_and_resume_gives_exactly_the_journal(topics, mint, asgi_server):
    one, two = asgi_server("daphne"), asgi_server("daphne")
    token = mint(1)
    total = 400
    writers = [threading.Thread(target=write_rows, args=(1 + k * 200, 200), kwargs={"owner": "user:1" if k == 0 else "user:2", "pause": 0.002}) for k in range(2)]
    client, applied = await subscribed(one, token)
    for w in writers:
        w.start()
    applied += await collect_until(client, lambda s: len(s) >= 40)
    one.kill()  # the worker dies mid-stream
    with pytest.raises(Closed):
        await collect_until(client, lambda s: False, timeout=10)
    last = max(applied)
    resumed, replayed = await subscribed(two, token, {RUNS: last})
    applied += replayed
    for w in writers:
        await in_thread(w.join)
    journal = await in_thread(journal_watermarks, "user:1")
    assert len(journal) == 200 and len(await in_thread(journal_watermarks)) == total
    applied += await collect_until(resumed, lambda s: (max(applied + s) if applied + s else 0) >= journal[-1])
    deduped = []
    for wm in applied:  # a client drops anything at or below what it already applied
        if not deduped or wm > deduped[-1]:
            deduped.append(wm)
    assert deduped == journal


async def test_lost_hints_still_converge_across_processes(topics, mint, asgi_server):
    # The worker listens on another channel prefix than the writers publish to: it hears NO hint
    # and only the periodic head check delivers.
    deaf = asgi_server("daphne", khala={"HEAD_CHECK_INTERVAL_SECONDS": 0.2}, env={"KHALA_CHANNEL_PREFIX": "khala_d1_deaf"})
    client, _ = await subscribed(deaf, mint(1))
    await in_thread(write_rows, 1, 5)
    assert await collect_until(client, lambda s: len(s) >= 5) == [1, 2, 3, 4, 5]
    assert metric(deaf, "khala_hub_head_check_catchups_total") >= 1


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_bad_frames_on_real_servers(topics, mint, asgi_server, kind):
    server = asgi_server(kind)
    bystander, _ = await subscribed(server, mint(2))
    cases = [
        ("not json", 4400),
        ('["1","1","sync:v1","sync:subscribe"]', 4400),
        ('["1","1","sync:v1","sync:subscribe",{},{}]', 4400),
        ('[7,"1","sync:v1","sync:subscribe",{}]', 4400),
        ('["1","1","sync:v1","sync:subscribe",[1]]', 4400),
        # 2 MiB and 10 MiB: over MAX_FRAME_BYTES (1 MiB) but under the transport limit both servers
        # are started with (khala_project/serve.py), so Khala itself answers payload_too_large
        # (4413) on both, whatever the server's own defaults would have done.
        ('["1","1","sync:v1","sync:subscribe",{"pad":"' + "x" * (2 * 1024 * 1024) + '"}]', 4413),
        ('["1","1","sync:v1","sync:subscribe",{"pad":"' + "x" * (10 * 1024 * 1024) + '"}]', 4413),
    ]
    for text, code in cases:
        client = await PhoenixClient.connect(server.ws_url(token=mint(1)))
        await client.join()
        await client.send_raw(text)
        assert await client.wait_closed() == code, text[:40]
    # Over the transport limit itself (TRANSPORT_MAX_MESSAGE_BYTES, 16 MiB): the server refuses the
    # message from its frame header, before Khala sees it. uvicorn closes with 1009 (message too
    # big); daphne (autobahn's failByDrop) drops TCP without a close frame, so its client sees no
    # close code at all (``None``, never a made-up 1006). That the worker did not crash is what the
    # bystander below proves; that Khala never saw the frame, the metric.
    rejected = metric(server, 'khala_ws_frames_rejected_total{code="payload_too_large"}')
    client = await PhoenixClient.raw(server.ws_url(token=mint(1)))
    await client.join()
    await client.send_header_only(
        khala_setting("TRANSPORT_MAX_MESSAGE_BYTES") + 1024, b'["1","1","sync:v1","sync:subscribe",{"pad":"xxxx'
    )
    assert await client.wait_closed() == (None if kind == "daphne" else 1009)
    assert metric(server, 'khala_ws_frames_rejected_total{code="payload_too_large"}') == rejected
    for payload in ({"topics": [RUNS], "resume_after": {RUNS: -5}}, {"topics": [RUNS], "resume_after": {RUNS: "1.5"}}, {"topics": 3}):
        client = await PhoenixClient.connect(server.ws_url(token=mint(1)))
        await client.join()
        ref = await client.push("sync:subscribe", payload)
        reply, _ = await client.reply(ref)
        assert reply["response"]["code"] == "bad_subscription"
        ref = await client.push("sync:frobnicate", {})
        reply, _ = await client.reply(ref)
        assert reply["response"]["code"] == "unknown_event"
        await client.close()
    await in_thread(write_rows, 1, 1, owner="user:2")
    assert await collect_until(bystander, lambda s: len(s) >= 1) == [1]  # the worker kept serving


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_slow_consumer_is_closed_and_others_keep_receiving(topics, mint, asgi_server, kind):
    """A socket that stops reading is closed as ``slow_consumer`` (4008) once its bounded queue is
    full; a socket that reads is not. Load-proof by construction: each row is written only after
    the reading socket received the previous one, so that socket's queue never holds more than
    one live frame however slow this machine is, while the silent socket's queue only grows. The
    writes stop as soon as the server reports the close: no timing is assumed anywhere."""
    limit = 8
    server = asgi_server(kind, khala={"OUTBOUND_QUEUE_LIMIT": limit, "OUTBOUND_QUEUE_MAX_BYTES": 1024 * 1024})
    normal, _ = await subscribed(server, mint(1))
    slow = await PhoenixClient.raw(server.ws_url(token=mint(1)))
    assert (await slow.join())["status"] == "ok"
    reply, _ = await slow.subscribe([RUNS])
    assert reply["status"] == "ok"
    # From here on the slow client reads nothing. 400 rows of 64 KiB (~26 MB) is far more than
    # the kernel buffers, the server transport's buffer and the queue hold together.
    seen = []
    for row in range(1, 401):
        await in_thread(write_rows, row, 1, payload_bytes=64 * 1024)
        seen += await collect_until(normal, lambda s: s and s[-1] >= row)
        if metric(server, "khala_ws_slow_consumer_closes_total") >= 1:
            break
    # The silent socket reads its backlog only 2.5 s after the close, as a slow client would. The
    # close frame waits behind what the server's transport and the kernel buffers still hold, and
    # both servers give the peer 10 s to answer it (daphne's autobahn used to reset the connection
    # after 1 s, discarding the transport's buffer and the close frame with it).
    await asyncio.sleep(2.5)
    close_code = await slow.wait_closed(timeout=30)
    assert metric(server, "khala_ws_slow_consumer_closes_total") == 1, "the silent socket was never closed"
    assert seen == list(range(1, row + 1))  # the reading socket got every row, in order, and stayed open
    assert close_code == 4008
    errors = [f[4] for f in slow.received if f[3] == "sync:error"]
    assert all(e["code"] == "slow_consumer" and e["queue_limit"] == limit for e in errors)
    await wait_until(lambda: metric(server, "khala_ws_active_connections") == 1, 10, message="only the reading socket left")
    ref = await normal.push("sync:heartbeat", {})
    reply, _ = await normal.reply(ref)
    assert reply["status"] == "ok"


async def test_idle_socket_times_out_on_a_real_server(topics, mint, asgi_server):
    server = asgi_server("daphne", khala={"HEARTBEAT_INTERVAL_SECONDS": 0.3, "HEARTBEAT_TIMEOUT_SECONDS": 1.5})
    client, _ = await subscribed(server, mint(1))
    frames = await client.recv_until(lambda f: f[3] == "sync:error", timeout=15)
    assert any(f[3] == "sync:heartbeat" for f in frames)
    assert frames[-1][4]["code"] == "heartbeat_timeout"
    assert await client.wait_closed() == 4408


async def test_daphne_default_message_limit_caps_batch_frames(topics, mint, asgi_server):
    """Plain `daphne app` (1 MiB --websocket-max-message-size, which autobahn also applies to what
    the server sends): 2 MiB batches would be refused by the server, so frames are capped below it."""
    await in_thread(write_rows, 1, 40, payload_bytes=60 * 1024)  # ~2.4 MB of replay
    server = asgi_server("daphne", extra_args=["--websocket-max-message-size", str(1024 * 1024)])
    client = await PhoenixClient.connect(server.ws_url(token=mint(1)))
    await client.join()
    reply, frames = await client.subscribe([RUNS])
    assert reply["status"] == "ok"
    assert [u["watermark"] for u in updates_of(frames)] == list(range(1, 41))
    assert len(frames) >= 3  # ~2.4 MB cannot fit fewer frames of at most 1 MiB
    await in_thread(write_rows, 41, 20, payload_bytes=60 * 1024)
    seen = await collect_until(client, lambda s: len(s) >= 20)
    assert seen == list(range(41, 61))
    assert khala_setting("TRANSPORT_MAX_MESSAGE_BYTES") > 2 * 1024 * 1024  # the servers' limit stays above a 2 MiB batch

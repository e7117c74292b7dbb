"""Token expiry and ``sync:refresh`` against a REAL daphne worker: an unrefreshed socket is closed
4419 after ``exp`` + grace; a socket refreshed across three consecutive short-lived tokens (the
legacy ``/api/khala/token`` kind included) stays subscribed and keeps receiving updates."""

import asyncio
import time

import pytest

from tests.support.wsclient import Closed, PhoenixClient, updates_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"
TTL = 3  # seconds; the verifier takes any exp > now (TTL bounds apply to minting only)


async def test_an_unrefreshed_socket_is_closed_after_exp_plus_grace(asgi_server, khala, mint, topics):
    server = asgi_server("daphne", khala={"SESSION_EXPIRY_GRACE_SECONDS": 0.5})
    client = await PhoenixClient.connect(server.ws_url(token=mint(1, ttl=TTL)))
    assert (await client.join())["status"] == "ok"
    frames = await client.recv_until(lambda f: f[3] == "sync:error", timeout=TTL + 10)
    assert frames[-1][4]["code"] == "token_expired"
    with pytest.raises(Closed) as closed:
        await client.recv(5)
    assert closed.value.code == 4419


async def test_refreshes_across_three_ttls_keep_the_subscription(asgi_server, khala, mint, topics, awrite, django_user_model):
    from asgiref.sync import sync_to_async

    from tokens.issuer import mint_legacy_token

    server = asgi_server("daphne", khala={"SESSION_EXPIRY_GRACE_SECONDS": 0.5})
    user = await sync_to_async(django_user_model.objects.create_user)(username="refresher", password="pw-refresh-1")
    first = mint(user.pk, ttl=TTL, oa_session_id="sess_refresh")
    client = await PhoenixClient.connect(server.ws_url(token=first))
    assert (await client.join())["status"] == "ok"
    reply, _ = await client.subscribe([RUNS])
    assert reply["status"] == "ok"
    started = time.monotonic()
    seen = []
    for round_ in range(3):
        # Each refresh well before the current token's exp; the third is a legacy-endpoint token.
        await asyncio.sleep(TTL * 0.6)  # pacing the client's refresh schedule, not waiting for an event
        if round_ == 2:
            data = await sync_to_async(mint_legacy_token)(user, scope=[RUNS], session_id="sess_refresh")
            token = data["token"]
        else:
            token = mint(user.pk, ttl=TTL, oa_session_id="sess_refresh")
        refreshed, _ = await client.reply(await client.push("sync:refresh", {"token": token}))
        assert refreshed["status"] == "ok", refreshed
        watermark = await awrite(RUNS, f"runtime/run_summary:refresh{round_}", 1, {"round": round_}, owner=f"user:{user.pk}")
        frames = await client.recv_until(lambda f: any(u["watermark"] == watermark for u in updates_of([f])), timeout=10)
        seen += [u["watermark"] for u in updates_of(frames)]
    assert time.monotonic() - started > TTL + 0.5  # the first token's deadline has passed
    assert len(seen) == 3 and seen == sorted(seen)
    beat, _ = await client.reply(await client.push("sync:heartbeat", {}))
    assert [w["topic"] for w in beat["response"]["watermarks"]] == [RUNS]  # still subscribed
    await client.close()

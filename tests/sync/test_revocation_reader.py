"""Revocation checks of the WebSocket lane run on the worker's journal reader, not through the ORM.

The join-time check and the heartbeat-tick re-check used to go through ``database_sync_to_async``
(one shared thread, a NEW Postgres connection per call with ``CONN_MAX_AGE=0``): ~70 joins/s per
worker. They now run ``tokens.revocation.revocation_lookups`` on the hub's bounded pool (and on
the SQLite reader of the embedded default). These tests prove the lane no longer touches the
sync functions, and that all three readers (Django connection, psycopg pool, sqlite3 thread) give
the same answers on the same rows, expiry boundary included.
"""

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import jwt
import pytest
from channels.db import database_sync_to_async

from tests.sync.conftest import SIGNING_SECRET
from tests.support.wsclient import PhoenixClient

pytestmark = pytest.mark.django_db(transaction=True)

NOW = 1_900_000_000.0  # revocations below are recorded "at" these instants (TTL 930 s by default)

# (session_id, device_id, seconds after NOW) -> expected reason, on the rows of ``_revoke_fixtures``.
CASES = [
    (("s1", None, 1), "ops"),
    ((None, "d1", 1), "ops"),
    (("s3", "d1", 200), "stolen"),  # both revoked: the newest revocation's reason
    (("s1", "dx", 929), "ops"),
    (("s1", "dx", 929.5), "ops"),  # sub-second instants (SQLite compares datetimes as text)
    (("s1", "dx", 930), None),  # expires_at = NOW + 930 is not "> at": expired
    (("s1", "dx", 930.5), None),
    (("s3", None, 1029.75), "stolen"),
    (("sx", "dx", 1), None),
    ((None, None, 1), None),
]
AMONG = [
    (["s1", "s2", "s3", "sx"], ["d1", "d2", "dx"], 500),
    (["s1", "s2", "s3", "sx"], ["d1", "d2", "dx"], 950),
    ([], ["d2"], 2000),
]
EXPECTED_AMONG = [
    {"session_ids": {"s1": "ops", "s2": "ops", "s3": "stolen"}, "device_ids": {"d1": "ops", "d2": "stolen"}},
    {"session_ids": {"s3": "stolen"}, "device_ids": {"d2": "stolen"}},
    {"session_ids": {}, "device_ids": {}},
]

# Runs in a subprocess on the embedded SQLite (the pytest process stays on PostgreSQL): the rows
# are written by the ORM, read back by the sync functions and by SQLiteJournal.
SQLITE_SCRIPT = """
import asyncio, json, sys
from types import SimpleNamespace
import django
django.setup()
from tokens import revocation
from sync.journal_sqlite import SQLiteJournal
from sync.policies import RevocationCheck
now, cases, among = json.loads(sys.argv[1])
revocation.revoke(["s1", "s2"], ["d1"], "ops", now=now)
revocation.revoke(["s3"], ["d2"], "stolen", now=now + 100)

async def lane():
    reader = SQLiteJournal()
    await reader.open()
    check = RevocationCheck(reader)
    out = []
    try:
        for (s, d, dt_), _expected in cases:
            revocation.clock = lambda: now + dt_
            out.append(await check.revoked_reason(SimpleNamespace(session_id=s, device_id=d)))
        for sessions, devices, dt_ in among:
            revocation.clock = lambda: now + dt_
            out.append(revocation.among_from_rows(await reader.revocations(sessions, devices, check._at())))
    finally:
        await reader.close()
    return out

orm = [revocation.revoked_reason(s, d, now=now + dt_) for (s, d, dt_), _ in cases]
orm += [revocation.revoked_among(sessions, devices, now=now + dt_) for sessions, devices, dt_ in among]
print(json.dumps({"orm": orm, "lane": asyncio.run(lane())}))
"""


def _revoke_fixtures():
    from tokens.revocation import revoke

    revoke(["s1", "s2"], ["d1"], "ops", now=NOW)
    revoke(["s3"], ["d2"], "stolen", now=NOW + 100)


def _claims(token):
    return jwt.decode(token, SIGNING_SECRET, algorithms=["HS256"], options={"verify_aud": False})


@pytest.fixture
def orm_forbidden(monkeypatch):
    """The sync lookups (Django connection) must not be reachable from the WebSocket lane."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the WebSocket lane called the synchronous revocation lookup")

    monkeypatch.setattr("tokens.revocation.revoked_reason", forbidden)
    monkeypatch.setattr("tokens.revocation.revoked_among", forbidden)
    monkeypatch.setattr("tokens.revocation._lookup", forbidden)


async def _join(token):
    client = await PhoenixClient.communicator(f"token={token}&vsn=2.0.0")
    return client, await client.join()


@pytest.mark.usefixtures("hub_cleanup")
async def test_join_and_tick_recheck_run_on_the_journal_pool_not_the_orm(topics, mint, orm_forbidden, monkeypatch):
    from sync.hub import get_hub
    from tokens.revocation import revoke

    monkeypatch.setattr("tokens.revocation._announce", lambda *a, **k: None)  # no hint: only the tick can close
    revoked_token, expired_token, live_token = mint(1), mint(2), mint(3)
    await database_sync_to_async(revoke)([_claims(revoked_token)["oa_session_id"]], [], "password_changed")
    # A revocation recorded ten days ago has expired: it no longer refuses anything.
    await database_sync_to_async(revoke)([_claims(expired_token)["oa_session_id"]], [], "old", now=time.time() - 10 * 86400)

    client, reply = await _join(revoked_token)
    assert reply["status"] == "error" and reply["response"]["code"] == "reauth_required"
    assert reply["response"]["reason"] == "password_changed"
    assert await client.wait_closed() == 4403

    expired_client, reply = await _join(expired_token)
    assert reply["status"] == "ok", reply
    live, reply = await _join(live_token)
    assert reply["status"] == "ok", reply

    await database_sync_to_async(revoke)([], [_claims(live_token)["oa_device_id"]], "device_lost")
    await (await get_hub()).check_revocations()  # what the tick does every heartbeat interval
    frames = await live.recv_until(lambda f: f[3] == "sync:error")
    assert frames[-1][4]["code"] == "reauth_required" and frames[-1][4]["reason"] == "device_lost"
    assert await live.wait_closed() == 4403
    ref = await expired_client.push("sync:heartbeat", {})
    assert (await expired_client.reply(ref))[0]["status"] == "ok"  # untouched


async def test_journal_pool_and_sync_lookups_agree_on_postgres(monkeypatch):
    from sync.journal import Journal
    from sync.policies import RevocationCheck
    from tokens import revocation

    await database_sync_to_async(_revoke_fixtures)()
    reader = Journal(max_size=1)
    await reader.open()
    check = RevocationCheck(reader)
    try:
        for (session_id, device_id, after), expected in CASES:
            orm = await database_sync_to_async(revocation.revoked_reason)(session_id, device_id, now=NOW + after)
            monkeypatch.setattr(revocation, "clock", lambda: NOW + after)
            lane = await check.revoked_reason(SimpleNamespace(session_id=session_id, device_id=device_id))
            assert orm == lane == expected, (session_id, device_id, after)
        for (sessions, devices, after), expected in zip(AMONG, EXPECTED_AMONG):
            orm = await database_sync_to_async(revocation.revoked_among)(sessions, devices, now=NOW + after)
            monkeypatch.setattr(revocation, "clock", lambda: NOW + after)
            lane = revocation.among_from_rows(await reader.revocations(sessions, devices, check._at()))
            assert orm == lane == expected, (sessions, devices, after)
        # The batch form the hub uses: principals keyed by (session, device).
        principals = [SimpleNamespace(session_id="sx", device_id="d2"), SimpleNamespace(session_id="s9", device_id="d9")]
        monkeypatch.setattr(revocation, "clock", lambda: NOW + 1)
        assert await check.revoked_among(principals) == {("sx", "d2"): "stolen"}
    finally:
        await reader.close()


def test_large_batches_are_chunked_and_still_one_answer():
    from tokens import revocation

    sessions = [f"s{i}" for i in range(2 * revocation.LOOKUP_CHUNK_IDS + 7)]
    revocation.revoke(sessions[-3:], [], "bulk", now=NOW)
    statements = revocation.revocation_lookups(sessions, ["d"], "at")
    assert len(statements) == 3 and all(len(params) <= 2 * revocation.LOOKUP_CHUNK_IDS + 1 for _, params in statements)
    assert revocation.revoked_among(sessions, ["d"], now=NOW + 1) == {
        "session_ids": {s: "bulk" for s in sessions[-3:]},
        "device_ids": {},
    }


@pytest.mark.slow
def test_sqlite_reader_and_sync_lookups_agree_on_the_embedded_default(tmp_path):
    from tests.support.servers import REPO_ROOT
    from tests.test_embedded_default import migrated

    env = migrated(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT, json.dumps([NOW, CASES, AMONG])],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [reason for _, reason in CASES] + EXPECTED_AMONG
    assert result["orm"] == expected
    assert result["lane"] == expected

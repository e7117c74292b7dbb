"""Read replicas against a REAL streaming replica: a primary and a ``pg_basebackup -R`` hot standby
of this module's own (``tests.support.private_services``), started once for the module, and one
daphne worker configured with ``DATABASE_REPLICA_URLS``. Replay on the replica is paused with
``pg_wal_replay_pause()`` to force lag while the primary goes on committing.

What must hold (docs/sync/REPLICAS.md):

- caught up, the replica serves replay, live reads and hydration (the ``khala_replica_*`` metrics
  say which target served each read);
- paused, live delivery goes on from the primary without a gap; a client resuming from a cursor
  the replica has not replayed is not refused (no false ``stale_cursor``) and gets exactly the rows
  after its cursor; a fresh client gets the whole journal in order; hydration never returns a
  document older than the client stated it holds;
- once replay resumes and the replica has caught up, reads go back to it;
- a replica lagging past ``REPLICA_MAX_LAG_BYTES`` is not even tried (the worker's own
  ``RoutedJournal``, in process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.private_services import PostgresCluster, PostgresReplica
from tests.support.servers import REPO_ROOT, start_server
from tests.support.waiting import wait_until
from tests.support.wsclient import PhoenixClient, updates_of
from tests.sync.conftest import SIGNING_KID, SIGNING_SECRET, make_token

pytestmark = pytest.mark.slow

RUNS = "runtime.run_summaries"
SERVICE_TOKEN = "replica-test-service-token"


class Pair:
    """The module's primary, replica and worker."""

    def __init__(self):
        self.primary = PostgresCluster()
        self.primary.start()
        self.database_url = self.primary.create_database("khala")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "khala_project.settings", "DATABASE_URL": self.database_url}
        env.pop("DATABASE_REPLICA_URLS", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT, check=True, timeout=300, env=env)
        self.replica = PostgresReplica(self.primary)
        self.replica.start()
        self.replica.wait_replayed(self.primary)
        self.replica_url = self.replica.url("khala")
        self.server = start_server(
            "daphne",
            database_url=self.database_url,
            channel_prefix=f"khala-replicas-{uuid.uuid4().hex[:8]}",
            khala={
                "SIGNING_KEYS": f"{SIGNING_KID}:{SIGNING_SECRET}",
                "SERVICE_TOKEN": SERVICE_TOKEN,
                "HEAD_CHECK_INTERVAL_SECONDS": 0.5,
                "REPLICA_PROBE_INTERVAL_SECONDS": 0.2,
                # A read waits this long for the replica to replay its commit, so that on a loaded
                # test machine a caught-up replica still serves the reads it should.
                "REPLICA_WAIT_SECONDS": 0.5,
            },
            env={"DATABASE_REPLICA_URLS": self.replica_url},
        )
        self.versions: dict[str, int] = {}

    def close(self):
        self.server.stop()
        self.replica.close()
        self.primary.close()

    # ---- the primary's truth ------------------------------------------------------------------

    def head(self) -> int:
        return int(self.primary.sql(f"SELECT last_watermark FROM sync_topic_sequences WHERE topic = '{RUNS}'", "khala"))

    def epoch(self) -> str:
        return self.primary.sql(f"SELECT stream_epoch FROM sync_topic_sequences WHERE topic = '{RUNS}'", "khala")

    def replica_head(self) -> int:
        return int(self.replica.sql(f"SELECT last_watermark FROM sync_topic_sequences WHERE topic = '{RUNS}'", "khala"))

    # ---- the worker -----------------------------------------------------------------------------

    def http(self, path: str, *, method="GET", body=None, token=None):
        request = urllib.request.Request(self.server.http_url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def write(self, doc_key: str) -> int:
        """Ingest the next version of ``doc_key`` on the worker (the real sink); its watermark."""
        version = self.versions.get(doc_key, 0) + 1
        document = {"topic": RUNS, "doc_key": doc_key, "doc_version": version, "payload": {"v": version}, "owner": "user:1"}
        status, body = self.http("/api/internal/sync/projections", method="POST", body=document, token=SERVICE_TOKEN)
        assert status == 200, body
        self.versions[doc_key] = version
        return json.loads(body)["results"][0]["watermark"]

    def metrics(self) -> dict:
        """``{(purpose, target or reason), value}`` of the worker's replica counters."""
        status, body = self.http("/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            for name, key in (("khala_replica_reads_total{", "target"), ("khala_replica_fallbacks_total{", "reason")):
                if line.startswith(name):
                    labels = dict(part.split("=", 1) for part in line[len(name):line.index("}")].split(","))
                    out[(labels["purpose"].strip('"'), labels[key].strip('"'))] = float(line.rsplit(" ", 1)[1])
        return out

    async def client(self) -> PhoenixClient:
        client = await PhoenixClient.connect(self.server.ws_url(token=make_token(1, [RUNS])))
        reply = await client.join()
        assert reply["status"] == "ok", reply
        return client


def grew(before: dict, after: dict, key: tuple) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def pair():
    pair = Pair()
    try:
        yield pair
    finally:
        pair.close()


async def received_through(client: PhoenixClient, head: int, seen: list[int]) -> None:
    """Collect update watermarks until ``head`` arrives."""
    while not seen or seen[-1] < head:
        frame = await client.recv(timeout=20)
        seen.extend(u["watermark"] for u in updates_of([frame]))


def assert_gapless(seen: list[int], first: int, last: int) -> None:
    """Exactly ``first..last``, in order: no gap, no regression, no repeat."""
    assert seen == list(range(first, last + 1)), seen


async def test_a_caught_up_replica_serves_replay_live_and_hydration(pair):
    for n in range(3):
        pair.write(f"doc/{n}")
    pair.replica.wait_replayed(pair.primary)
    before = pair.metrics()
    client = await pair.client()
    reply, frames = await client.subscribe([RUNS])
    assert reply["status"] == "ok", reply
    seen = [u["watermark"] for u in updates_of(frames)]
    assert_gapless(seen, 1, pair.head())
    await wait_until(lambda: grew(before, pair.metrics(), ("replay", "replica")) >= 1, 10, message="a replay read on the replica")
    assert grew(before, pair.metrics(), ("subscribe", "replica")) >= 1

    head = pair.write("doc/live")
    await received_through(client, head, seen)
    assert_gapless(seen, 1, head)
    assert grew(before, pair.metrics(), ("live", "replica")) >= 1

    token = make_token(1, [RUNS])
    pair.replica.wait_replayed(pair.primary)
    status, body = pair.http(f"/api/sync/v1/doc/{RUNS}/doc/live?min_watermark={head}&stream_epoch={pair.epoch()}", token=token)
    assert status == 200 and json.loads(body)["watermark"] == head
    assert grew(before, pair.metrics(), ("hydration", "replica")) >= 1
    await client.close()


async def test_a_paused_replica_never_causes_a_gap_a_regression_or_a_false_stale_cursor(pair):
    live = await pair.client()
    reply, frames = await live.subscribe([RUNS])
    assert reply["status"] == "ok"
    seen = [u["watermark"] for u in updates_of(frames)]
    pair.replica.wait_replayed(pair.primary)
    lag_head = pair.head()
    pair.replica.pause_replay()
    before = pair.metrics()

    # Live: every write arrives, from the primary, in order.
    for n in range(5):
        head = pair.write(f"doc/{n % 2}")
    await received_through(live, head, seen)
    assert_gapless(seen, 1, head)
    assert pair.replica_head() == lag_head  # the replica really is behind
    after = pair.metrics()
    assert grew(before, after, ("live", "primary")) >= 1
    assert grew(before, after, ("live", "behind")) >= 1

    # Resuming mid-lag from a cursor the replica has not replayed: its states would refuse the
    # cursor (ahead of its head); the primary's verdict is that it resumes. Exactly the rest follows.
    cursor = head - 2
    resumer = await pair.client()
    reply, frames = await resumer.subscribe([RUNS], resume_after=[{"topic": RUNS, "watermark": cursor, "stream_epoch": pair.epoch()}])
    assert reply["status"] == "ok", reply
    assert_gapless([u["watermark"] for u in updates_of(frames)], cursor + 1, head)
    assert grew(before, pair.metrics(), ("subscribe", "refused")) >= 1

    # A fresh client mid-lag: whatever the replica serves first, the whole journal, in order.
    fresh = await pair.client()
    reply, frames = await fresh.subscribe([RUNS])
    assert reply["status"] == "ok", reply
    fresh_seen = [u["watermark"] for u in updates_of(frames)]
    await received_through(fresh, head, fresh_seen)
    assert_gapless(fresh_seen, 1, head)

    # Hydration: a client holding the newest write never gets an older document back.
    token = make_token(1, [RUNS])
    status, body = pair.http(f"/api/sync/v1/doc/{RUNS}/doc/0?min_watermark={head}&stream_epoch={pair.epoch()}", token=token)
    assert status == 200 and json.loads(body)["doc_version"] == pair.versions["doc/0"]
    status, body = pair.http(f"/api/sync/v1/list/{RUNS}?min_watermark={head}&stream_epoch={pair.epoch()}", token=token)
    assert status == 200 and json.loads(body)["head_watermark"] == head
    assert grew(before, pair.metrics(), ("hydration", "behind")) >= 2

    # Replay resumes: once the replica has caught up, live reads and replays go to it again.
    pair.replica.resume_replay()
    pair.replica.wait_replayed(pair.primary)
    resumed = pair.metrics()
    head = pair.write("doc/after")
    await received_through(live, head, seen)
    assert_gapless(seen, 1, head)
    late = await pair.client()
    reply, frames = await late.subscribe([RUNS], resume_after=[{"topic": RUNS, "watermark": lag_head, "stream_epoch": pair.epoch()}])
    assert reply["status"] == "ok", reply
    assert_gapless([u["watermark"] for u in updates_of(frames)], lag_head + 1, head)
    after = pair.metrics()
    assert grew(resumed, after, ("live", "replica")) >= 1
    assert grew(resumed, after, ("replay", "replica")) >= 1
    for client in (live, resumer, fresh, late):
        await client.close()


async def test_a_replica_lagging_past_the_threshold_is_skipped(pair, khala):
    """The worker's reader in process, on the module's pair: past REPLICA_MAX_LAG_BYTES the replica
    is not tried at all (fallback reason ``lagging``); within it, it serves again."""
    from sync import metrics
    from sync.journal import Journal
    from sync.journal_reader import Freshness
    from sync.journal_replicas import Replica, RoutedJournal

    def count(purpose, label, value):
        metric = metrics.REPLICA_READS if label == "target" else metrics.REPLICA_FALLBACKS
        return metric.labels(purpose, value)._value.get()

    khala(REPLICA_MAX_LAG_BYTES=1024, REPLICA_PROBE_INTERVAL_SECONDS=60.0, REPLICA_WAIT_SECONDS=0.0)
    pair.replica.wait_replayed(pair.primary)
    journal = RoutedJournal(Journal(pair.database_url.replace("postgres://", "postgresql://")),
                            [Replica("replica_1", Journal(pair.replica_url.replace("postgres://", "postgresql://"), wait_open=False, timeout=5))])
    await journal.open()
    try:
        epoch = pair.epoch()
        pair.replica.pause_replay()
        try:
            for n in range(40):  # well past 1 KiB of WAL
                head = pair.write(f"doc/lag/{n}")
            await journal.probe()
            assert journal.replicas[0].lag_bytes > 1024
            lagging = count("live", "reason", "lagging")
            page = await journal.read_after_fresh(RUNS, head - 1, 10, Freshness(head, epoch), "live")
            assert [row.watermark for row in page.rows] == [head]  # the primary's page
            assert count("live", "reason", "lagging") == lagging + 1
        finally:
            pair.replica.resume_replay()
        pair.replica.wait_replayed(pair.primary)
        await journal.probe()
        served = count("live", "target", "replica")
        page = await journal.read_after_fresh(RUNS, head - 1, 10, Freshness(head, epoch), "live")
        assert [row.watermark for row in page.rows] == [head]
        assert count("live", "target", "replica") == served + 1
    finally:
        await journal.close()


async def test_a_replica_that_does_not_answer_sends_every_read_to_the_primary(pair, khala):
    """A replica URL where nothing listens: the worker's reader opens anyway, and every read is
    the primary's (fallback reason ``unavailable``), none lost."""
    from sync import metrics
    from sync.journal import Journal
    from sync.journal_reader import Freshness
    from sync.journal_replicas import Replica, RoutedJournal
    from tests.support.private_services import free_port

    khala(REPLICA_CONNECT_TIMEOUT_SECONDS=0.5, REPLICA_RETRY_SECONDS=60.0)
    nowhere = f"postgresql://root@127.0.0.1:{free_port()}/khala?connect_timeout=1"
    journal = RoutedJournal(Journal(pair.database_url.replace("postgres://", "postgresql://")),
                            [Replica("replica_1", Journal(nowhere, wait_open=False, timeout=0.5))])
    await journal.open()
    try:
        head = pair.write("doc/nowhere")
        unavailable = metrics.REPLICA_FALLBACKS.labels("replay", "unavailable")._value.get()
        page = await journal.read_visible_fresh(RUNS, head - 1, 10**18, "user:1", 10, Freshness(head - 1, pair.epoch()), "replay")
        assert [row.watermark for row in page.rows] == [head]
        assert metrics.REPLICA_FALLBACKS.labels("replay", "unavailable")._value.get() == unavailable + 1
    finally:
        await journal.close()

"""The fault drill as a test: two daphne workers on a PostgreSQL and a Redis of this test's own, a
steady writer and 20 resuming clients, while worker crashes, Redis and PostgreSQL outages and client
drops are injected in turn. Afterwards, per client and topic:

- the watermarks it applied are strictly increasing (no duplicate applied, nothing reordered);
- they are exactly the journal's watermarks from 1 to the head (no gap);
- its cache equals the read models;
- it is live and has the last write (no socket left live but silent);

and every write the writer saw acknowledged is in the read model (an acknowledged write is committed).
During each outage the endpoints give their documented answers (docs/sync/OPERATIONS.md, "Readiness
and answers during outages").

Nothing here touches the shared PostgreSQL or Redis (``tests.support.private_services``).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from khala_client import KhalaClient, State
from tests.support.private_services import PostgresCluster, RedisServer, free_port
from tests.support.servers import REPO_ROOT, start_server
from tests.support.tokens import sign, sync_claims

pytestmark = pytest.mark.slow

RUNS = "runtime.run_summaries"
KID, SECRET = "chaos-k1", "chaos-secret-" + "c" * 52
SERVICE_TOKEN = "chaos-service-token"
DOC_KEYS = 40
CLIENTS_PER_WORKER = 10
OUTAGE_SECONDS = 10.0


def http(url: str, method: str = "GET", body=None, headers: dict | None = None, timeout: float = 10.0):
    """``(status, json body or None, headers)``; ``(None, None, {})`` when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw[:200].decode(errors="replace")}
        return exc.code, parsed, dict(exc.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, None, {}


class Writer(threading.Thread):
    """Ingests versioned documents at a steady rate, alternating workers, retrying a refused or
    unanswered write with the same key and version until acknowledged. A repeat of a write that
    did commit is harmless but not free: an equal version replaces the document and appends a second
    journal row (docs/sync/SCHEMA.md, invariant 2), which clients apply as the same document."""

    def __init__(self, urls: list[str], rate: float = 20.0):
        super().__init__(daemon=True)
        self.urls = urls
        self.interval = 1.0 / rate
        self.acked: dict[str, int] = {}
        self.answers: list[int | None] = []  # status of every attempt (None: no answer)
        self.stopping = threading.Event()
        self.count = 0

    def write_once(self, doc_key: str, version: int, attempt: int) -> bool:
        url = self.urls[attempt % len(self.urls)] + "/api/internal/sync/projections"
        document = {"topic": RUNS, "doc_key": doc_key, "doc_version": version, "payload": {"v": version}, "owner": "user:1"}
        status, _, _ = http(url, "POST", document, {"Authorization": f"Bearer {SERVICE_TOKEN}"})
        self.answers.append(status)
        return status == 200

    def run(self) -> None:
        while not self.stopping.is_set():
            doc_key = f"doc/{self.count % DOC_KEYS}"
            version = self.acked.get(doc_key, 0) + 1
            attempt = self.count
            while not self.write_once(doc_key, version, attempt):
                if self.stopping.wait(0.2):
                    return
                attempt += 1
            self.acked[doc_key] = version
            self.count += 1
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


class Drill:
    def __init__(self, pg: PostgresCluster, redis: RedisServer):
        self.pg = pg
        self.redis = redis
        self.database_url = pg.create_database("khala")
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_ROOT, check=True, timeout=180,
            env={**_base_env(), "DATABASE_URL": self.database_url},
        )
        out = subprocess.run(
            [sys.executable, "manage.py", "ensure_demo_user"], cwd=REPO_ROOT, check=True, timeout=60,
            capture_output=True, text=True, env={**_base_env(), "DATABASE_URL": self.database_url},
        ).stdout
        self.api_token = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("API token: "))
        self.ports = [free_port(), free_port()]
        self.workers = [self.start_worker(port) for port in self.ports]

    def start_worker(self, port: int = 0):
        return start_server(
            "daphne",
            database_url=self.database_url,
            redis_url=self.redis.url,
            channel_prefix="chaos",
            port=port,
            khala={
                "SIGNING_KEYS": f"{KID}:{SECRET}",
                "SERVICE_TOKEN": SERVICE_TOKEN,
                "HEARTBEAT_INTERVAL_SECONDS": 1.0,
                "HEAD_CHECK_INTERVAL_SECONDS": 1.0,
            },
        )

    @property
    def urls(self) -> list[str]:
        return [w.http_url for w in self.workers]

    def journal(self) -> list[int]:
        rows = self.pg.sql(f"SELECT watermark FROM sync_stream_events WHERE topic = '{RUNS}' ORDER BY watermark", "khala")
        return [int(x) for x in rows.split()] if rows else []

    def read_models(self) -> dict[str, int]:
        rows = self.pg.sql(f"SELECT doc_key, doc_version FROM sync_read_models WHERE topic = '{RUNS}'", "khala")
        return {key: int(version) for key, version in (line.split("|") for line in rows.splitlines())} if rows else {}

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.stop()


def _base_env() -> dict:
    import os

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "khala_project.settings"
    env.pop("REDIS_URL", None)
    return env


async def token_provider():
    return sign(sync_claims(1, [RUNS], ttl=900), kid=KID, secret=SECRET)


class RecordingClient(KhalaClient):
    """The SDK client, recording every update it accepts: those above its cursor when their batch
    arrived (at-least-once delivery may repeat older ones after a reconnect; the client drops those,
    which is the "no duplicate applied" rule). The accepted stream must be the journal, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accepted: list[int] = []
        self.repeated = 0

    async def _apply_batch(self, batch, raw_heads=None):
        cursor = self.watermark(RUNS)
        for watermark in sorted(u.watermark for u in batch.updates if u.topic == RUNS):
            if watermark > cursor:
                self.accepted.append(watermark)
            else:
                self.repeated += 1
        await super()._apply_batch(batch, raw_heads)


def make_client(url: str) -> RecordingClient:
    return RecordingClient(url, token_provider, topics=[RUNS], heartbeat_interval=1.0, heartbeat_timeout=4.0)


async def wait_until(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s: {message}")


def in_thread(fn, *args):
    return asyncio.to_thread(fn, *args)


@pytest.fixture(scope="module")
def drill():
    with PostgresCluster() as pg, RedisServer() as redis:
        drill = Drill(pg, redis)
        try:
            yield drill
        finally:
            drill.close()


def assert_answers_during_redis_outage(drill: Drill) -> None:
    for url in drill.urls:
        status, body, _ = http(url + "/readyz")
        assert (status, body["status"], body.get("degraded")) == (200, "degraded", ["channel_layer"]), body
    status, body, _ = http(drill.urls[0] + "/api/sync/token", "POST", {"scopes": [RUNS]}, {"Authorization": f"Token {drill.api_token}"})
    assert status == 200, body


def assert_answers_during_database_outage(drill: Drill) -> None:
    for url in drill.urls:
        status, body, _ = http(url + "/healthz")
        assert status == 200
        status, body, _ = http(url + "/readyz")
        assert (status, body["status"], body["failing"]) == (503, "unavailable", ["database"]), body
    token_header = {"Authorization": f"Token {drill.api_token}"}
    sync_token = sign(sync_claims(1, [RUNS]), kid=KID, secret=SECRET)
    for method, path, body, headers in (
        ("POST", "/api/sync/token", {"scopes": [RUNS]}, token_header),
        ("POST", "/api/khala/token", {}, token_header),
        ("POST", "/api/runtime/runs", {}, token_header),
        ("POST", "/api/internal/sync/projections",
         {"topic": RUNS, "doc_key": "x", "doc_version": 1, "payload": {}, "owner": "user:1"},
         {"Authorization": f"Bearer {SERVICE_TOKEN}"}),
        ("GET", f"/api/sync/v1/list/{RUNS}", None, {"Authorization": f"Bearer {sync_token}"}),
    ):
        status, answer, headers_back = http(drill.urls[1] + path, method, body, headers)
        assert (status, answer["error"]["code"]) == (503, "database_unavailable"), (path, status, answer)
        assert int(headers_back["Retry-After"]) > 0


async def test_clients_converge_through_every_fault(drill):
    rng = random.Random(20261130)
    clients = [make_client(url) for url in drill.urls for _ in range(CLIENTS_PER_WORKER)]
    writer = Writer(drill.urls)
    try:
        for client in clients:
            client.start()
        await asyncio.gather(*(client.wait_live(timeout=60) for client in clients))
        writer.start()
        await asyncio.sleep(2)

        # 1. a worker is killed (-9) and restarted on the same port; its clients resume there.
        drill.workers[1].kill()
        await asyncio.sleep(1)
        drill.workers[1] = await in_thread(drill.start_worker, drill.ports[1])
        await asyncio.sleep(3)

        # 2. Redis stops for 10 s: readiness degrades, writes and delivery go on.
        drill.redis.stop()
        await asyncio.sleep(1)
        await in_thread(assert_answers_during_redis_outage, drill)
        await asyncio.sleep(OUTAGE_SECONDS - 1)
        drill.redis.start()
        await asyncio.sleep(3)

        # 3. PostgreSQL restarts (a clean restart: every connection is cut).
        await in_thread(drill.pg.restart)
        await asyncio.sleep(3)

        # 4. PostgreSQL is down for 10 s: every endpoint answers its documented 503.
        await in_thread(drill.pg.stop)
        await asyncio.sleep(1)
        await in_thread(assert_answers_during_database_outage, drill)
        await asyncio.sleep(OUTAGE_SECONDS - 1)
        await in_thread(drill.pg.start)
        await asyncio.sleep(3)

        # 5. random client drops: the connection vanishes without a close frame.
        for client in rng.sample(clients, 8):
            if client._conn is not None:
                client._conn.ws.transport.abort()
        await asyncio.sleep(3)
    finally:
        writer.stop()

    try:
        # The last write reaches everyone: no socket is left live but silent.
        head = max(drill.journal())
        await wait_until(
            lambda: all(c.state == State.LIVE and c.watermark(RUNS) >= head for c in clients),
            timeout=60, message=f"every client live at watermark {head}",
        )
        journal = drill.journal()
        read_models = drill.read_models()
        assert journal == list(range(1, len(journal) + 1)), "the journal itself has no hole"
        assert writer.count > 100 and None in writer.answers and 503 in writer.answers  # the faults were felt
        for key, version in writer.acked.items():
            assert read_models[key] >= version, f"acknowledged {key}@{version} is not in the read model"
        for index, client in enumerate(clients):
            accepted = client.accepted
            assert all(a < b for a, b in zip(accepted, accepted[1:])), f"client {index}: accepted out of order or twice"
            assert accepted == journal, f"client {index}: missing {sorted(set(journal) - set(accepted))[:10]}"
            cache = {key: doc.doc_version for key, doc in client.documents(RUNS).items()}
            assert cache == read_models, f"client {index}: cache differs from the read models"
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_a_worker_started_during_a_redis_outage_serves_and_attaches_later(drill):
    drill.redis.stop()
    try:
        late = await in_thread(drill.start_worker)
        drill.workers.append(late)
        status, body, _ = await in_thread(http, late.http_url + "/readyz")
        assert (status, body["status"]) == (200, "degraded"), body
        client = make_client(late.http_url)
        client.start()
        try:
            await client.wait_live(timeout=30)
            before = max(drill.journal(), default=0)
            writer = Writer([late.http_url])
            assert await in_thread(writer.write_once, "late/doc", 1, 0)
            # No Redis, so no hint: the head check delivers it.
            await wait_until(lambda: client.watermark(RUNS) > before, timeout=15, message="delivery without Redis")
            drill.redis.start()
            # Redis is back: the worker attaches and hints flow again (readiness turns ok).
            await wait_until(lambda: http(late.http_url + "/readyz")[1]["status"] == "ok", timeout=30, message="readiness ok")
            assert await in_thread(writer.write_once, "late/doc", 2, 0)
            await wait_until(lambda: client.documents(RUNS).get("late/doc") and client.documents(RUNS)["late/doc"].doc_version == 2,
                             timeout=15, message="delivery after Redis returned")
        finally:
            await client.close()
    finally:
        if drill.redis.process is None or drill.redis.process.poll() is not None:
            drill.redis.start()

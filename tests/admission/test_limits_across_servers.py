"""Limits across REAL daphne workers: two workers sharing Redis enforce one budget between them; with
their Redis stopped each worker falls back to its own per-process budget (looser, never off)."""

import json
import urllib.error
import urllib.request
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.authtoken.models import Token

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KEYS = "admission-srv:" + "k" * 48
# A window of ~31 years: no window boundary can fall inside the test (windows are clock-aligned).
FOREVER = 1_000_000_000.0


def mint(server, api_key) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        server.http_url + "/api/sync/token",
        data=b"{}",
        headers={"Authorization": f"Token {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.load(exc)


@pytest.fixture
def api_key(transactional_db):
    user = get_user_model().objects.create_user(username=f"adm-{uuid.uuid4().hex[:6]}", password="pw-admission-1")
    return Token.objects.create(user=user).key


def test_two_workers_sharing_redis_enforce_one_budget(asgi_server, api_key, prefix):
    khala = {"SIGNING_KEYS": KEYS, "LIMIT_TOKEN_MINTS_PER_USER": [4, FOREVER]}
    env = {"KHALA_CHANNEL_PREFIX": prefix}
    workers = [asgi_server("daphne", khala=khala, env=env) for _ in range(2)]
    statuses = [mint(workers[i % 2], api_key)[0] for i in range(8)]
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]
    status, headers, body = mint(workers[0], api_key)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1 and body["error"]["retry_after"] == int(headers["Retry-After"])


def test_with_redis_stopped_each_worker_keeps_its_own_limit(asgi_server, api_key, private_redis):
    khala = {"SIGNING_KEYS": KEYS, "LIMIT_TOKEN_MINTS_PER_USER": [3, FOREVER], "RATE_LIMIT_REDIS_RETRY_SECONDS": 600.0}
    with override_settings(REDIS_URL=private_redis.url):
        workers = [asgi_server("daphne", khala=khala) for _ in range(2)]  # their REDIS_URL: the private one
    shared = [mint(workers[i % 2], api_key)[0] for i in range(4)]
    assert shared == [200, 200, 200, 429]  # one budget through the private Redis

    private_redis.stop()
    per_worker = {index: [mint(worker, api_key)[0] for _ in range(4)] for index, worker in enumerate(workers)}
    # Each worker now counts alone from zero: its own 3, then refusals. Never unlimited.
    assert per_worker == {0: [200, 200, 200, 429], 1: [200, 200, 200, 429]}
    status, headers, body = mint(workers[1], api_key)
    assert status == 429 and int(headers["Retry-After"]) >= 1

"""Session revocation: the internal endpoint, shared storage, and the sync.revoked hint."""

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from rest_framework.test import APIClient

from tests.tokens.crafting import NOW
from tokens import revocation
from tokens.models import RevokedSession

URL = "/api/internal/sync/sessions/revoke"
SERVICE_TOKEN = "service-token-for-tests-0123456789"


@pytest.fixture
def service_client(khala_settings):
    khala_settings(SERVICE_TOKEN=SERVICE_TOKEN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}")
    return client


def error_of(response):
    return response.json()["error"]["code"]


# --- the endpoint ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_unset_service_token_is_503(khala_settings):
    khala_settings(SERVICE_TOKEN="")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer anything")
    response = client.post(URL, {"session_ids": ["s"]}, format="json")
    assert (response.status_code, error_of(response)) == (503, "service_token_unconfigured")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer wrong-token", f"Token {SERVICE_TOKEN}", f"Bearer {SERVICE_TOKEN}x"]
)
def test_missing_or_wrong_service_token_is_401(khala_settings, header):
    khala_settings(SERVICE_TOKEN=SERVICE_TOKEN)
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL, {"session_ids": ["s"]}, format="json")
    assert (response.status_code, error_of(response)) == (401, "unauthenticated")
    assert not RevokedSession.objects.exists()


@pytest.mark.django_db
def test_a_user_api_token_is_not_a_service_token(api_client, khala_settings):
    khala_settings(SERVICE_TOKEN=SERVICE_TOKEN)
    assert api_client.post(URL, {"session_ids": ["s"]}, format="json").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{}, {"session_ids": [], "device_ids": []}, {"reason": "x"}], ids=repr)
def test_both_lists_empty_is_400(service_client, body):
    response = service_client.post(URL, body, format="json")
    assert (response.status_code, error_of(response)) == (400, "invalid_request")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"session_ids": "sess_1"},
        {"session_ids": [1]},
        {"session_ids": [""]},
        {"session_ids": ["x" * 129]},
        {"session_ids": ["s"], "reason": "has spaces"},
        {"session_ids": ["s"], "reason": 5},
        {"device_ids": ["d"] * 1001},
    ],
    ids=lambda b: repr(b)[:40],
)
def test_malformed_request_is_400(service_client, body):
    response = service_client.post(URL, body, format="json")
    assert (response.status_code, error_of(response)) == (400, "invalid_request")
    assert not RevokedSession.objects.exists()


@pytest.mark.django_db
def test_revoke_response_and_rows(service_client, monkeypatch):
    monkeypatch.setattr(revocation, "clock", lambda: NOW)
    body = {"session_ids": ["sess_1", "sess_1", "sess_2"], "device_ids": ["ios:1"], "reason": " Stolen_Device "}
    response = service_client.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "data": {
            "revoked_session_ids": ["sess_1", "sess_2"],
            "revoked_device_ids": ["ios:1"],
            "reason": "stolen_device",
            "revoked_at": "2027-01-15T08:00:00Z",
        }
    }
    rows = {(r.kind, r.value): r for r in RevokedSession.objects.all()}
    assert set(rows) == {("session", "sess_1"), ("session", "sess_2"), ("device", "ios:1")}
    # Kept for TOKEN_TTL_MAX_SECONDS + skew: no token minted before the revocation outlives that.
    assert all(r.expires_at - r.revoked_at == dt.timedelta(seconds=930) for r in rows.values())


@pytest.mark.django_db
def test_reason_defaults_to_user_requested(service_client):
    data = service_client.post(URL, {"device_ids": ["d1"]}, format="json").json()["data"]
    assert data["reason"] == "user_requested"
    assert revocation.revoked_reason(None, "d1") == "user_requested"


# --- the library ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_revoked_reason_matches_session_or_device_until_expiry():
    revocation.revoke(["sess_a"], ["dev_a"], "logout", now=NOW)
    assert revocation.revoked_reason("sess_a", "dev_x", now=NOW + 1) == "logout"
    assert revocation.revoked_reason("sess_x", "dev_a", now=NOW + 1) == "logout"
    assert revocation.revoked_reason("sess_x", "dev_x", now=NOW + 1) is None
    assert revocation.revoked_reason(None, None, now=NOW + 1) is None
    assert revocation.revoked_reason("sess_a", None, now=NOW + 929) == "logout"
    assert revocation.revoked_reason("sess_a", None, now=NOW + 930) is None


@pytest.mark.django_db
def test_revocation_ttl_setting(khala_settings):
    khala_settings(REVOCATION_TTL_SECONDS=60)
    revocation.revoke(["sess_a"], [], now=NOW)
    assert revocation.revoked_reason("sess_a", None, now=NOW + 59) == "user_requested"
    assert revocation.revoked_reason("sess_a", None, now=NOW + 60) is None


@pytest.mark.django_db
def test_re_revoking_refreshes_and_expired_rows_are_pruned():
    revocation.revoke(["sess_a", "sess_old"], [], "first", now=NOW)
    revocation.revoke(["sess_a"], [], "second", now=NOW + 2000)
    assert revocation.revoked_reason("sess_a", None, now=NOW + 2001) == "second"
    assert not RevokedSession.objects.filter(value="sess_old").exists()


@pytest.mark.django_db
def test_revoked_among_is_one_batch_answer(django_assert_num_queries):
    revocation.revoke(["s1", "s2"], ["d1"], "ops", now=NOW)
    with django_assert_num_queries(1):
        result = revocation.revoked_among(["s1", "s3", "s2"], ["d1", "d2"], now=NOW + 1)
    assert result == {"session_ids": {"s1": "ops", "s2": "ops"}, "device_ids": {"d1": "ops"}}
    assert revocation.revoked_among([], []) == {"session_ids": {}, "device_ids": {}}


@pytest.mark.django_db
def test_rolled_back_revocation_leaves_nothing_and_announces_nothing(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                revocation.revoke(["sess_a"], [], now=NOW)
                raise RuntimeError("caller fails after revoking")
    assert callbacks == []
    assert revocation.revoked_reason("sess_a", None, now=NOW + 1) is None


# --- shared across processes and announced on the real Redis layer ---------------------------


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


SECOND_PROCESS = """
import json, sys
import django
django.setup()
from tokens.revocation import revoked_reason
pairs = json.loads(sys.argv[1])
print(json.dumps([revoked_reason(s, d) for s, d in pairs]))
"""


@pytest.mark.django_db(transaction=True)
def test_revocation_is_visible_from_a_second_process():
    revocation.revoke(["sess_shared"], ["dev_shared"], "compromised")
    env = {**os.environ, "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "khala_project.settings"}
    pairs = [["sess_shared", None], [None, "dev_shared"], ["sess_other", "dev_other"]]
    result = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, json.dumps(pairs)],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["compromised", "compromised", None]


async def _next_of_type(layer, channel, message_type):
    while True:
        message = await layer.receive(channel)
        if message["type"] == message_type:
            return message


async def _until_subscribed(layer, channel, timeout=10.0):
    # SUBSCRIBE is sent without waiting for Redis to confirm it, so probe the group until a probe
    # comes back: from then on a publish to the group reaches us.
    async def probe():
        while True:
            await layer.group_send(revocation.REVOCATIONS_GROUP, {"type": "test.probe"})
            try:
                return await asyncio.wait_for(_next_of_type(layer, channel, "test.probe"), timeout=0.5)
            except asyncio.TimeoutError:
                continue

    await asyncio.wait_for(probe(), timeout=timeout)


@pytest.mark.django_db(transaction=True)
async def test_sync_revoked_is_sent_on_the_redis_layer_after_commit():
    layer = get_channel_layer()
    assert type(layer).__module__.startswith("channels_redis")
    channel = await layer.new_channel()
    await layer.group_add(revocation.REVOCATIONS_GROUP, channel)
    try:
        await _until_subscribed(layer, channel)
        await database_sync_to_async(revocation.revoke)(["sess_live"], ["dev_live"], "Admin_Kick")
        message = await asyncio.wait_for(_next_of_type(layer, channel, "sync.revoked"), timeout=10)
    finally:
        await layer.group_discard(revocation.REVOCATIONS_GROUP, channel)
    assert message == {
        "type": "sync.revoked",
        "session_ids": ["sess_live"],
        "device_ids": ["dev_live"],
        "reason": "admin_kick",
    }

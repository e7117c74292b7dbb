"""HTTP admission: token mints per user (both issuer endpoints share one budget) and hydration
requests per token answer 429 `rate_limited` with Retry-After once over their limit."""

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from khala_project import ratelimit
from khala_project.ratelimit import Limiter
from projector.models import RUN_SUMMARIES, V1_TOPICS, TopicSequence
from tests.support.tokens import sign, sync_claims

KID = "admission-k1"
SECRET = "admission-test-secret-" + "q" * 40


@pytest.fixture
def limiter(settings, key_prefix, clock, monkeypatch):
    """The process limiter on the run's Redis, in a key space of this test, on a fake clock."""
    limiter = Limiter(settings.REDIS_URL, key_prefix, clock=clock)
    monkeypatch.setattr(ratelimit, "default_limiter", lambda: limiter)
    return limiter


@pytest.fixture
def khala(settings):
    def apply(**overrides):
        settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": f"{KID}:{SECRET}", **overrides}

    apply()
    return apply


def user_client(username):
    user = get_user_model().objects.create_user(username=username, password="pw-" + username + "-123")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def refusal(response, retry_after):
    assert response.status_code == 429, response.content
    assert response["Retry-After"] == str(retry_after)
    assert response.json() == {
        "error": {"code": "rate_limited", "message": "too many requests; retry later", "retry_after": retry_after}
    }


@pytest.mark.django_db
def test_token_mints_per_user_share_one_budget_across_both_endpoints(khala, limiter, clock):
    khala(LIMIT_TOKEN_MINTS_PER_USER=[3, 60.0])
    clock.now = 1_000_040.0  # 20 s into a 60 s window (windows start at multiples of 60: 1_000_020)
    alice, bob = user_client("alice"), user_client("bob")
    assert alice.post("/api/sync/token", {}, format="json").status_code == 200
    assert alice.post("/api/khala/token", {}, format="json").status_code == 200
    assert alice.post("/api/sync/token", {}, format="json").status_code == 200
    refusal(alice.post("/api/sync/token", {}, format="json"), 40)
    refusal(alice.post("/api/khala/token", {}, format="json"), 40)
    assert bob.post("/api/sync/token", {}, format="json").status_code == 200  # per user
    clock.advance(40)
    assert alice.post("/api/sync/token", {}, format="json").status_code == 200


@pytest.mark.django_db
def test_unauthenticated_mints_are_401_not_counted(khala, limiter):
    khala(LIMIT_TOKEN_MINTS_PER_USER=[1, 60.0])
    for _ in range(3):
        assert APIClient().post("/api/sync/token", {}, format="json").status_code == 401


@pytest.mark.django_db
def test_mints_fall_back_to_per_process_limits_without_redis(khala, clock, monkeypatch):
    monkeypatch.setattr(ratelimit, "default_limiter", lambda: limiter_without_redis)
    limiter_without_redis = Limiter("redis://127.0.0.1:9/0", "t", clock=clock)
    khala(LIMIT_TOKEN_MINTS_PER_USER=[2, 60.0])
    alice = user_client("alice")
    codes = [alice.post("/api/sync/token", {}, format="json").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


@pytest.fixture
def hydration(transactional_db, khala):
    for topic in V1_TOPICS:
        TopicSequence.objects.get_or_create(topic=topic)

    def client_for(user_id):
        client = APIClient()
        token = sign(sync_claims(user_id, V1_TOPICS), kid=KID, secret=SECRET)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return client_for


def test_hydration_requests_per_token(hydration, khala, limiter, clock):
    khala(LIMIT_HYDRATIONS_PER_TOKEN=[2, 10.0])
    clock.now = 1_000_003.0
    first, second = hydration(1), hydration(1)  # two tokens of one user: two budgets
    path = f"/api/sync/v1/list/{RUN_SUMMARIES}"
    assert [first.get(path).status_code for _ in range(2)] == [200, 200]
    response = first.get(path)
    refusal(response, 7)
    assert response["Cache-Control"] == "no-store"
    assert first.get(f"/api/sync/v1/doc/{RUN_SUMMARIES}/nope").status_code == 429  # doc reads count too
    assert second.get(path).status_code == 200
    clock.advance(7)
    assert first.get(path).status_code == 200


def test_a_bad_token_is_401_before_any_limit(hydration, khala, limiter):
    khala(LIMIT_HYDRATIONS_PER_TOKEN=[1, 10.0])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not.a.token")
    for _ in range(3):
        assert client.get(f"/api/sync/v1/list/{RUN_SUMMARIES}").status_code == 401

"""/live/ and /live/state.json through the Django test client (the browser suite drives the script)."""

import pytest
from rest_framework.test import APIClient

from sync import live_view

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice(topics, django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(topics, django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


def create_run(user, thread_id):
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/runtime/runs", {"thread_id": thread_id}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_live_page_requires_login(client, topics):
    response = client.get("/live/")
    assert response.status_code == 302 and response.url.startswith("/live/login/")
    response = client.get("/live/state.json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("enabled,lane", [(False, "polling"), (True, "khala")])
def test_flag_selects_the_lane(client, alice, settings, enabled, lane):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "WEB_SYNC_ENABLED": enabled}
    client.force_login(alice)
    response = client.get("/live/")
    assert response.status_code == 200
    assert response.context["config"]["lane"] == lane
    assert f'data-lane="{lane}"' in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    assert "csrftoken" in response.cookies  # the script needs it to mint a sync token
    assert client.get("/live/state.json").json()["lane"] == lane


def test_page_and_state_show_only_the_users_own_runs(client, alice, bob):
    mine = create_run(alice, "alice-thread")
    theirs = create_run(bob, "bob-thread")
    client.force_login(alice)
    html = client.get("/live/").content.decode()
    assert mine in html and theirs not in html
    state = client.get("/live/state.json").json()
    run_ids = [d["payload"]["run_id"] for d in state["documents"]["runtime.run_summaries"]]
    assert run_ids == [mine]
    head = state["topics"]["runtime.run_summaries"]["head_watermark"]
    assert head >= 2  # both users' runs moved the topic-wide head
    assert state["documents"]["runtime.run_summaries"][0]["watermark"] <= head


def test_state_rejects_other_methods(client, alice):
    client.force_login(alice)
    assert client.post("/live/state.json").status_code == 405


def test_cohort_is_stable_and_roughly_proportional():
    assert all(live_view.in_cohort(uid, 100) for uid in range(100))
    assert not any(live_view.in_cohort(uid, 0) for uid in range(100))
    members = [uid for uid in range(2000) if live_view.in_cohort(uid, 10)]
    assert 120 <= len(members) <= 280  # ~10 % of 2000 (hash buckets, not exact)
    assert members == [uid for uid in range(2000) if live_view.in_cohort(uid, 10)]  # stable
    assert set(members) <= {uid for uid in range(2000) if live_view.in_cohort(uid, 50)}  # stages only add users


def test_staff_are_always_in_the_cohort(client, alice, bob, settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "WEB_SYNC_ENABLED": True, "WEB_SYNC_COHORT_PERCENT": 0}
    alice.is_staff = True
    alice.save()
    assert live_view.web_sync_enabled_for(alice) is True
    assert live_view.web_sync_enabled_for(bob) is False
    client.force_login(bob)
    assert client.get("/live/").context["config"]["lane"] == "polling"


def test_any_user_can_sign_in_to_the_live_view(client, alice):
    page = client.get("/live/login/?next=/live/")
    assert page.status_code == 200 and 'id="login-form"' in page.content.decode()
    bad = client.post("/live/login/", {"username": "alice", "password": "wrong", "next": "/live/"})
    assert bad.status_code == 200 and "Wrong username or password" in bad.content.decode()
    good = client.post("/live/login/", {"username": "alice", "password": "alice-password-1", "next": "/live/"})
    assert good.status_code == 302 and good.url == "/live/"
    assert client.get("/live/").status_code == 200

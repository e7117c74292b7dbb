"""The admin in headless Chromium: log in as staff, open the Topics page and the overview."""

import pytest

from tests.browser.conftest import PASSWORD, api_post


@pytest.mark.slow
def test_admin_topics_page_in_a_browser(asgi_server, browser, user, django_user_model, signing_settings, screenshot_dir):
    admin = django_user_model.objects.create_superuser("operator", "operator@example.invalid", PASSWORD)
    server = asgi_server("daphne")
    base = server.http_url
    for i in range(3):  # something to show: runs (journal rows on the run summaries topic)
        run = api_post(base, "/api/runtime/runs", user.api_token, {"thread_id": f"admin-shot-{i}"})
        api_post(base, f"/api/runtime/runs/{run['id']}/events", user.api_token, {"event_type": "run.started"})

    reply = browser.send("login", url=f"{base}/admin/login/?next=/admin/", username=admin.username, password=PASSWORD)
    assert reply["url"].rstrip("/").endswith("/admin")
    browser.send("viewport", width=1720, height=900)
    browser.send("goto", url=f"{base}/admin/projector/topicsequence/")
    browser.wait_text("#result_list", "runtime.run_summaries", 15)
    header = browser.send("text", selector=".khala-table-stats")["text"]
    assert "estimate" in header and "pg_total_relation_size" in header
    browser.send("screenshot", path=str(screenshot_dir / "admin-topics.png"), full_page=True)

    browser.send("goto", url=f"{base}/admin/khala/overview/")
    browser.wait_text("#khala-topic-lag", "runtime.run_summaries", 15)
    browser.send("screenshot", path=str(screenshot_dir / "admin-overview.png"), full_page=True)

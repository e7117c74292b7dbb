"""The admin dashboard through the Django test client on real PostgreSQL.

Every page renders, the retention policy form validates, allocator state is never written back by
a stale form, journal pages never COUNT(*) the journal, and secrets are never rendered.
"""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from projector.models import RUN_SUMMARIES, CODEX_WORKER_SUMMARIES, ReadModelDocument, StreamEvent, TopicSequence
from projector.sink import project

pytestmark = pytest.mark.django_db


@pytest.fixture
def journal(topics, settings):
    """A few inline documents and one pointer-mode document (payload over the inline limit)."""
    settings.KHALA = {**getattr(settings, "KHALA", {}), "INLINE_PAYLOAD_LIMIT_BYTES": 1024}
    written = []
    for i in range(5):
        written.append(project(RUN_SUMMARIES, f"runtime/run_summary:run_{i}", 1, {"status": "running", "n": i}, "user:1"))
    written.append(
        project(RUN_SUMMARIES, "runtime/run_summary:run_big", 3, {"blob": "x" * 4000, "marker": "BIGDOC"}, "user:1")
    )
    written.append(project(CODEX_WORKER_SUMMARIES, "runtime/codex_worker_summary:cw_1", 2, {"status": "running"}, "user:2"))
    return written


def _journal_counts(queries) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "sync_stream_events" in q["sql"]]


def test_every_admin_page_renders(admin_client, journal):
    event = StreamEvent.objects.filter(topic=RUN_SUMMARIES).first()
    document = ReadModelDocument.objects.first()
    pages = [
        reverse("admin:index"),
        reverse("admin:khala_overview"),
        reverse("admin:khala_signing_keys"),
        reverse("admin:projector_topicsequence_changelist"),
        reverse("admin:projector_topicsequence_change", args=[RUN_SUMMARIES]),
        reverse("admin:projector_streamevent_changelist"),
        reverse("admin:projector_streamevent_change", args=[event.pk]),
        reverse("admin:projector_readmodeldocument_changelist"),
        reverse("admin:projector_readmodeldocument_change", args=[document.pk]),
        reverse("admin:projector_projectioncheckpoint_changelist"),
        reverse("admin:runtime_run_changelist"),
        reverse("admin:runtime_runevent_changelist"),
        reverse("admin:runtime_codexworker_changelist"),
        reverse("admin:runtime_codexworkerevent_changelist"),
        reverse("admin:tokens_revokedsession_changelist"),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_topics_page_shows_watermarks_floor_epoch_and_estimates(admin_client, journal):
    topic = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    response = admin_client.get(reverse("admin:projector_topicsequence_changelist"))
    html = response.content.decode()
    assert RUN_SUMMARIES in html
    assert topic.stream_epoch[:8] in html
    row = re.search(r'<tr[^>]*>(?:(?!</tr>).)*' + re.escape(RUN_SUMMARIES) + r'(?:(?!</tr>).)*</tr>', html, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[1:]  # [0] is the action checkbox
    # head watermark, pruned_through, oldest retained, journal rows (upper bound)
    assert cells[0].strip() == str(topic.last_watermark) == "6"
    assert cells[1].strip() == "0"
    assert cells[2].startswith("1 ")
    assert cells[3].strip() == "6"
    assert "estimate" in html and "upper bound" in html


def test_journal_pages_never_count_the_journal(admin_client, journal):
    urls = [
        reverse("admin:projector_topicsequence_changelist"),
        reverse("admin:khala_overview"),
        reverse("admin:projector_streamevent_changelist"),
        reverse("admin:projector_streamevent_changelist") + f"?topic={RUN_SUMMARIES}&watermark_from=2",
        reverse("admin:projector_readmodeldocument_changelist"),
    ]
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url).status_code == 200
        assert _journal_counts(queries.captured_queries) == [], url
        assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and "sync_read_models" in q["sql"]]


def test_journal_browser_filters_by_topic_doc_key_and_watermark_range(admin_client, journal):
    base = reverse("admin:projector_streamevent_changelist")
    html = admin_client.get(base + f"?topic={RUN_SUMMARIES}&watermark_from=2&watermark_to=3").content.decode()
    shown = set(re.findall(r"runtime/run_summary:run_\w+", html))
    assert shown == {"runtime/run_summary:run_1", "runtime/run_summary:run_2"}
    assert "cw_1" not in html

    html = admin_client.get(base + "?doc_key=runtime/codex_worker_summary:cw_1").content.decode()
    assert "runtime/codex_worker_summary:cw_1" in html
    assert "run_summary:run_" not in html


def test_journal_browser_rejects_a_non_integer_watermark_without_crashing(admin_client, journal):
    response = admin_client.get(reverse("admin:projector_streamevent_changelist") + "?watermark_from=abc")
    # Django admin's deterministic answer to bad filter input: redirect to ?e=1 ("invalid lookup").
    assert response.status_code == 302
    assert response.url.endswith("?e=1")


def test_pointer_mode_rows_are_marked_and_payloads_pretty(admin_client, journal):
    pointer = StreamEvent.objects.get(doc_key="runtime/run_summary:run_big")
    inline = StreamEvent.objects.get(doc_key="runtime/run_summary:run_0")
    assert pointer.payload is None  # the fixture's premise: over the 1 KiB inline limit

    listing = admin_client.get(reverse("admin:projector_streamevent_changelist")).content.decode()
    assert 'class="khala-pointer"' in listing

    detail = admin_client.get(reverse("admin:projector_streamevent_change", args=[pointer.pk])).content.decode()
    assert "pointer mode" in detail and "BIGDOC" not in detail
    detail = admin_client.get(reverse("admin:projector_streamevent_change", args=[inline.pk])).content.decode()
    assert '<pre class="khala-json">' in detail and "&quot;status&quot;: &quot;running&quot;" in detail


def test_retention_policy_validation_rejects_bad_values(admin_client, topics):
    url = reverse("admin:projector_topicsequence_change", args=[RUN_SUMMARIES])
    before = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    good = {
        "retention_seconds": "3600",
        "replay_budget_events": "500",
        "qos_tier": "hot",
        "snapshot_enabled": "on",
    }
    for field, bad in [
        ("retention_seconds", "0"),
        ("retention_seconds", "-5"),
        ("retention_seconds", "59"),
        ("retention_seconds", "abc"),
        ("retention_seconds", str(400 * 86400)),
        ("replay_budget_events", "0"),
        ("replay_budget_events", "1.5"),
        ("qos_tier", "lukewarm"),
    ]:
        response = admin_client.post(url, {**good, field: bad})
        assert response.status_code == 200, (field, bad)  # form redisplayed with errors
        assert field in response.context["adminform"].form.errors, (field, bad)
        after = TopicSequence.objects.get(topic=RUN_SUMMARIES)
        assert after.retention_seconds == before.retention_seconds
        assert after.replay_budget_events == before.replay_budget_events

    response = admin_client.post(url, good)
    assert response.status_code == 302
    after = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    assert (after.retention_seconds, after.replay_budget_events, after.qos_tier, after.snapshot_enabled) == (
        3600,
        500,
        "hot",
        True,
    )


def test_policy_form_never_writes_back_allocator_state(admin_client, topics):
    """A form loaded before writes must not regress last_watermark when it is saved after them."""
    url = reverse("admin:projector_topicsequence_change", args=[RUN_SUMMARIES])
    assert admin_client.get(url).status_code == 200
    for i in range(3):  # writers move the head while the operator edits the form
        project(RUN_SUMMARIES, f"runtime/run_summary:r{i}", 1, {"i": i}, "user:1")
    head = TopicSequence.objects.get(topic=RUN_SUMMARIES).last_watermark
    epoch = TopicSequence.objects.get(topic=RUN_SUMMARIES).stream_epoch
    payload = {
        "retention_seconds": "7200",
        "replay_budget_events": "100",
        "qos_tier": "warm",
        # read-only fields posted by a tampering client are ignored
        "last_watermark": "0",
        "pruned_through": "0",
        "stream_epoch": "forged",
    }
    assert admin_client.post(url, payload).status_code == 302
    after = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    assert after.last_watermark == head >= 3
    assert after.stream_epoch == epoch
    assert after.retention_seconds == 7200


def test_topics_cannot_be_added_or_deleted_from_the_admin(admin_client, topics):
    assert admin_client.get(reverse("admin:projector_topicsequence_add")).status_code == 403
    assert admin_client.get(reverse("admin:projector_topicsequence_delete", args=[RUN_SUMMARIES])).status_code == 403


def test_journal_is_read_only_in_the_admin(admin_client, journal):
    event = StreamEvent.objects.first()
    assert admin_client.get(reverse("admin:projector_streamevent_add")).status_code == 403
    assert admin_client.get(reverse("admin:projector_streamevent_delete", args=[event.pk])).status_code == 403
    before = StreamEvent.objects.get(pk=event.pk)
    admin_client.post(reverse("admin:projector_streamevent_change", args=[event.pk]), {"doc_key": "tampered"})
    assert StreamEvent.objects.get(pk=event.pk).doc_key == before.doc_key


def test_signing_keys_page_shows_kid_and_status_never_secrets(admin_client, settings):
    secret_a = "A-very-secret-signing-key-value-0123456789"
    secret_b = "B-another-secret-signing-key-value-9876543210"
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": f"k-new:{secret_a},k-old:{secret_b}"}
    html = admin_client.get(reverse("admin:khala_signing_keys")).content.decode()
    assert "k-new" in html and "k-old" in html
    assert "current signer" in html and "verify only" in html
    for secret in (secret_a, secret_b):
        assert secret not in html
        assert secret[:12] not in html


def test_signing_keys_page_explains_a_broken_keyring_without_the_secret(admin_client, settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": "k1:short-secret-XYZ"}
    response = admin_client.get(reverse("admin:khala_signing_keys"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "not usable" in html and "k1" in html
    assert "short-secret-XYZ" not in html


def test_admin_requires_staff(client, journal, django_user_model):
    for url in (reverse("admin:khala_overview"), reverse("admin:projector_streamevent_changelist")):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response.url
    user = django_user_model.objects.create_user("plain", password="plain-password-123")
    client.force_login(user)
    response = client.get(reverse("admin:khala_signing_keys"))
    assert response.status_code == 302 and "/login/" in response.url


def test_overview_chart_counts_recent_writes(admin_client, journal):
    response = admin_client.get(reverse("admin:khala_overview"))
    html = response.content.decode()
    assert "<svg" in html and "<polyline" in html
    lines = {line["topic"]: line for line in response.context["chart"]["lines"]}
    assert lines[RUN_SUMMARIES]["total"] == 6
    assert lines[CODEX_WORKER_SUMMARIES]["total"] == 1


def _action(admin_client, action, topics, **extra):
    return admin_client.post(
        reverse("admin:projector_topicsequence_changelist"),
        {"action": action, "_selected_action": list(topics), **extra},
    )


def test_bump_epoch_without_confirmation_changes_nothing(admin_client, journal):
    before = TopicSequence.objects.get(topic=RUN_SUMMARIES).stream_epoch
    response = _action(admin_client, "bump_epoch", [RUN_SUMMARIES])
    assert response.status_code == 200
    html = response.content.decode()
    assert "Every client of this topic will re-snapshot" in html and before in html
    assert TopicSequence.objects.get(topic=RUN_SUMMARIES).stream_epoch == before
    # a forged "confirm" with another value is not a confirmation either
    _action(admin_client, "bump_epoch", [RUN_SUMMARIES], confirm="maybe")
    assert TopicSequence.objects.get(topic=RUN_SUMMARIES).stream_epoch == before


def test_bump_epoch_after_confirmation_changes_only_the_selected_topics(admin_client, journal):
    epochs = dict(TopicSequence.objects.values_list("topic", "stream_epoch"))
    heads = dict(TopicSequence.objects.values_list("topic", "last_watermark"))
    response = _action(admin_client, "bump_epoch", [RUN_SUMMARIES], confirm="yes")
    assert response.status_code == 302
    after = dict(TopicSequence.objects.values_list("topic", "stream_epoch"))
    assert after[RUN_SUMMARIES] != epochs[RUN_SUMMARIES]
    assert {t: e for t, e in after.items() if t != RUN_SUMMARIES} == {t: e for t, e in epochs.items() if t != RUN_SUMMARIES}
    assert dict(TopicSequence.objects.values_list("topic", "last_watermark")) == heads  # watermarks untouched
    messages = [str(m) for m in admin_client.get(response.url).context["messages"]]
    assert any("re-snapshots" in m for m in messages)


def test_run_retention_now_deletes_rows_past_the_window(admin_client, journal):
    from django.utils import timezone

    # Age the first three rows of the run summaries past a one-hour window.
    TopicSequence.objects.filter(topic=RUN_SUMMARIES).update(retention_seconds=3600)
    old = timezone.now() - timezone.timedelta(hours=2)
    StreamEvent.objects.filter(topic=RUN_SUMMARIES, watermark__lte=3).update(inserted_at=old)
    response = _action(admin_client, "run_retention_now", [RUN_SUMMARIES])
    assert response.status_code == 302
    remaining = sorted(StreamEvent.objects.filter(topic=RUN_SUMMARIES).values_list("watermark", flat=True))
    assert remaining == [4, 5, 6]
    assert TopicSequence.objects.get(topic=RUN_SUMMARIES).pruned_through == 3
    messages = [str(m) for m in admin_client.get(response.url).context["messages"]]
    assert any("deleted 3 journal rows" in m and "pruned_through 3" in m for m in messages)
    # The other topic was not selected: untouched.
    assert StreamEvent.objects.filter(topic=CODEX_WORKER_SUMMARIES).count() == 1


def test_reproject_topic_rebuilds_a_lost_read_model(admin_client, topics, django_user_model):
    from projector.projector import project_run, run_doc_key
    from runtime.models import Run

    owner = django_user_model.objects.create_user("reproj", password="reproj-password-1")
    run = Run.objects.create(owner=owner)
    project_run(run.id)
    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).delete()
    rows_before = StreamEvent.objects.filter(doc_key=run_doc_key(run.id)).count()

    response = _action(admin_client, "reproject_topic", [RUN_SUMMARIES])
    assert response.status_code == 302
    assert ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).exists()
    assert StreamEvent.objects.filter(doc_key=run_doc_key(run.id)).count() == rows_before + 1
    messages = [str(m) for m in admin_client.get(response.url).context["messages"]]
    assert any("1 documents rewritten" in m for m in messages)
    # Idempotent: nothing changed in the authority, so a second run appends nothing.
    _action(admin_client, "reproject_topic", [RUN_SUMMARIES])
    assert StreamEvent.objects.filter(doc_key=run_doc_key(run.id)).count() == rows_before + 1


def _fake_hub(loop, connections=3, subscribers=2):
    from sync import hub as hub_module

    hub = hub_module.Hub(layer=None)
    sessions = [object() for _ in range(connections)]
    hub.sessions.update(sessions)
    feed = hub_module.TopicFeed(RUN_SUMMARIES)
    feed.followers.update(sessions[:subscribers])
    hub.feeds[RUN_SUMMARIES] = feed
    future = loop.create_future()
    future.set_result(hub)
    hub_module._hubs[loop] = future
    return hub


def test_without_redis_the_topics_page_shows_this_process_and_says_so(admin_client, journal, settings):
    """The embedded default (no REDIS_URL): connections, subscribers and the stale cursors of the
    last hour come from this process's hub, and the page says the figures are not cluster-wide."""
    import asyncio

    from sync import hub as hub_module
    from sync import metrics as sync_metrics

    settings.REDIS_URL = ""
    loop = asyncio.new_event_loop()
    hub = _fake_hub(loop)
    for _ in range(4):
        hub.presence.stale_cursor(RUN_SUMMARIES)
    before = int(sync_metrics.STALE_CURSORS.labels("retention_floor_breach")._value.get())
    sync_metrics.STALE_CURSORS.labels("retention_floor_breach").inc(4)
    try:
        response = admin_client.get(reverse("admin:projector_topicsequence_changelist"))
        delivery = response.context["delivery"]
        assert not delivery.cluster
        assert delivery.connections == 3
        assert delivery.subscribers == {RUN_SUMMARIES: 2}
        assert delivery.stale_cursors_last_hour == {RUN_SUMMARIES: 4}
        assert delivery.stale_cursors_by_reason["retention_floor_breach"] == before + 4
        html = response.content.decode()
        assert "not cluster-wide" in html and "this worker process only" in html and "no REDIS_URL" in html
        assert f"retention_floor_breach</code> {before + 4}" in html
        assert re.search(r'<td class="field-stale_cursors_last_hour">4</td>', html)
    finally:
        del hub_module._hubs[loop]
        loop.close()


def test_unreachable_redis_falls_back_to_this_process_and_says_so(admin_client, journal, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = admin_client.get(reverse("admin:projector_topicsequence_changelist"))
    assert response.status_code == 200
    delivery = response.context["delivery"]
    assert not delivery.cluster and "Redis could not be read" in delivery.source
    assert "Redis could not be read" in response.content.decode()


def test_admin_index_lists_each_page_once(admin_client, journal):
    """The operations table links Topics and Journal; the app list must not repeat them."""
    html = admin_client.get(reverse("admin:index")).content.decode()
    for url in (reverse("admin:projector_topicsequence_changelist"), reverse("admin:projector_streamevent_changelist")):
        assert html.count(f'href="{url}"') == 1, url
    assert "Topic sequences" not in html and "Stream events" not in html
    assert reverse("admin:projector_readmodeldocument_changelist") in html  # the rest of the app list stays

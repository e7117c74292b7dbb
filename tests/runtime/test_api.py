"""The runtime command API over HTTP (DRF test client, real PostgreSQL), projection included."""

import threading

import pytest
from django.db import connection

from projector import metrics
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.projector import notification_doc_key, run_doc_key, worker_doc_key, worker_event_doc_key
from runtime.models import Run, RunEvent

pytestmark = pytest.mark.django_db


def post(client, url, data=None, **kw):
    return client.post(url, data or {}, format="json", **kw)


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run on_commit callbacks (the projection) as the real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def summary(topic, doc_key):
    return ReadModelDocument.objects.get(topic=topic, doc_key=doc_key)


class TestRuns:
    def test_create_run_and_append_events_projects_the_summary(self, topics, alice, on_commit):
        client, user = alice
        with on_commit():
            created = post(client, "/api/runtime/runs", {"thread_id": "thread-1"})
        assert created.status_code == 201, created.content
        run_id = created.json()["id"]
        assert created.json()["status"] == "created" and created.json()["latest_seq"] == 0
        doc = summary("runtime.run_summaries", run_doc_key(run_id))
        assert (doc.doc_version, doc.owner, doc.public) == (0, f"user:{user.id}", False)

        with on_commit():
            r1 = post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.started"})
        with on_commit():
            r2 = post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.delta", "payload": {"text": "hi"}})
        assert (r1.status_code, r1.json()["seq"], r2.json()["seq"]) == (201, 1, 2)
        doc = summary("runtime.run_summaries", run_doc_key(run_id))
        assert doc.doc_version == 2
        assert doc.payload["status"] == "running"
        assert doc.payload["event_count"] == 2 and doc.payload["latest_event_type"] == "run.delta"
        assert doc.payload["runtime_source"] == {"entity": "run", "run_id": run_id, "seq": 2}
        assert "projected_at" not in doc.payload
        assert list(
            StreamEvent.objects.filter(doc_key=run_doc_key(run_id)).order_by("watermark").values_list("doc_version", flat=True)
        ) == [0, 1, 2]

    def test_terminal_run_notification_and_no_more_events(self, topics, alice, on_commit):
        client, user = alice
        run_id = post(client, "/api/runtime/runs").json()["id"]
        with on_commit():
            done = post(
                client,
                f"/api/runtime/runs/{run_id}/events",
                {"event_type": "run.failed", "payload": {"reason_class": "timeout", "reason": "took too long"}},
            )
        assert done.status_code == 201
        run = client.get(f"/api/runtime/runs/{run_id}").json()
        assert (run["status"], run["terminal_reason_class"], run["terminal_reason"]) == ("failed", "timeout", "took too long")
        note = summary("runtime.notifications", notification_doc_key(run_id))
        assert (note.doc_version, note.payload["status"], note.owner) == (1, "failed", f"user:{user.id}")
        late = post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.delta"})
        assert (late.status_code, late.json()["error"]["code"]) == (409, "run_terminal")

    def test_list_and_get_events(self, topics, alice):
        client, _ = alice
        run_id = post(client, "/api/runtime/runs").json()["id"]
        for i in range(5):
            post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.delta", "payload": {"i": i}})
        page = client.get(f"/api/runtime/runs/{run_id}/events", {"after_seq": 2, "limit": 2}).json()
        assert [e["seq"] for e in page["events"]] == [3, 4]
        assert [r["id"] for r in client.get("/api/runtime/runs").json()["runs"]] == [run_id]
        bad = client.get(f"/api/runtime/runs/{run_id}/events", {"limit": 0})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")

    def test_other_users_entities_are_not_found(self, topics, alice, bob):
        (a, _), (b, _) = alice, bob
        run_id = post(a, "/api/runtime/runs").json()["id"]
        worker_id = post(a, "/api/runtime/codex/workers").json()["id"]
        for response in [
            b.get(f"/api/runtime/runs/{run_id}"),
            b.get(f"/api/runtime/runs/{run_id}/events"),
            post(b, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.started"}),
            b.get(f"/api/runtime/codex/workers/{worker_id}"),
            post(b, f"/api/runtime/codex/workers/{worker_id}/events", {"event_type": "worker.heartbeat"}),
            b.get("/api/runtime/runs/run_does_not_exist"),
        ]:
            assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
        assert b.get("/api/runtime/runs").json()["runs"] == []
        assert RunEvent.objects.count() == 0

    def test_unauthenticated_is_refused(self, topics):
        from rest_framework.test import APIClient

        response = APIClient().post("/api/runtime/runs", {}, format="json")
        assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")
        bad_token = APIClient()
        bad_token.credentials(HTTP_AUTHORIZATION="Token nope")
        assert bad_token.get("/api/runtime/runs").status_code == 401

    @pytest.mark.parametrize(
        "body, code",
        [
            ({}, "invalid_request"),
            ({"event_type": "Run Started"}, "invalid_request"),
            ({"event_type": "x" * 65}, "invalid_request"),
            ({"event_type": "run.delta", "payload": [1]}, "invalid_request"),
            ({"event_type": "run.delta", "payload": {"x": "y" * 70000}}, "invalid_request"),
            ({"event_type": 5}, "invalid_request"),
        ],
    )
    def test_bad_event_bodies(self, topics, alice, body, code):
        client, _ = alice
        run_id = post(client, "/api/runtime/runs").json()["id"]
        response = post(client, f"/api/runtime/runs/{run_id}/events", body)
        assert (response.status_code, response.json()["error"]["code"]) == (400, code)
        assert RunEvent.objects.count() == 0

    def test_malformed_json(self, topics, alice):
        client, _ = alice
        response = client.post("/api/runtime/runs", data="{nope", content_type="application/json")
        assert (response.status_code, response.json()["error"]["code"]) == (400, "malformed_json")


class TestWorkers:
    def test_worker_lifecycle_and_event_documents(self, topics, alice, on_commit):
        client, user = alice
        with on_commit():
            created = post(client, "/api/runtime/codex/workers", {"adapter": "codex-cli", "metadata": {"host": "h1"}})
        assert created.status_code == 201, created.content
        worker_id = created.json()["id"]
        with on_commit():
            hb = post(client, f"/api/runtime/codex/workers/{worker_id}/events", {"event_type": "worker.heartbeat"})
            st = post(
                client,
                f"/api/runtime/codex/workers/{worker_id}/events",
                {"event_type": "worker.status", "payload": {"status": "stopped"}},
            )
        assert (hb.json()["seq"], st.json()["seq"]) == (1, 2)
        worker = client.get(f"/api/runtime/codex/workers/{worker_id}").json()
        assert worker["status"] == "stopped" and worker["last_heartbeat_at"] and worker["started_at"] and worker["stopped_at"]
        doc = summary("runtime.codex_worker_summaries", worker_doc_key(worker_id))
        assert (doc.doc_version, doc.payload["status"], doc.payload["metadata"]) == (2, "stopped", {"host": "h1"})
        events = ReadModelDocument.objects.filter(topic="runtime.codex_worker_events").order_by("doc_version")
        assert [(e.doc_key, e.doc_version, e.owner) for e in events] == [
            (worker_event_doc_key(worker_id, 1), 1, f"user:{user.id}"),
            (worker_event_doc_key(worker_id, 2), 2, f"user:{user.id}"),
        ]
        late = post(client, f"/api/runtime/codex/workers/{worker_id}/events", {"event_type": "worker.heartbeat"})
        assert (late.status_code, late.json()["error"]["code"]) == (409, "worker_stopped")

    def test_bad_status(self, topics, alice):
        client, _ = alice
        worker_id = post(client, "/api/runtime/codex/workers").json()["id"]
        response = post(
            client, f"/api/runtime/codex/workers/{worker_id}/events", {"event_type": "worker.status", "payload": {"status": "zombie"}}
        )
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_status")

    def test_bad_metadata(self, topics, alice):
        client, _ = alice
        response = post(client, "/api/runtime/codex/workers", {"metadata": "text"})
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")


def test_projection_failure_never_fails_the_authority_write(topics, alice, on_commit):
    """Force a real projection failure (the topic is not declared): the command still succeeds."""
    client, _ = alice
    run_id = post(client, "/api/runtime/runs").json()["id"]
    TopicSequence.objects.filter(topic="runtime.run_summaries").delete()
    failures = metrics.PROJECTION_FAILURES.labels(entity="run")
    before = failures._value.get()
    with on_commit():
        response = post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.started"})
    assert response.status_code == 201
    assert Run.objects.get(id=run_id).latest_seq == 1
    assert RunEvent.objects.filter(run_id=run_id, seq=1).exists()
    assert failures._value.get() == before + 1
    assert not StreamEvent.objects.filter(topic="runtime.run_summaries").exists()

    # once the topic is back, the next write catches the summary up
    from projector.topics import declare_topic

    declare_topic("runtime.run_summaries")
    with on_commit():
        post(client, f"/api/runtime/runs/{run_id}/events", {"event_type": "run.delta"})
    assert summary("runtime.run_summaries", run_doc_key(run_id)).doc_version == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_get_unique_gap_free_seqs(topics, make_client):
    from runtime import commands

    _, user = make_client("carol")
    run = commands.create_run(user)
    errors = []

    def append(n):
        try:
            for i in range(n):
                commands.append_run_event(run.id, user, "run.delta", {"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=append, args=(15,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(RunEvent.objects.filter(run=run).values_list("seq", flat=True)) == list(range(1, 121))
    assert Run.objects.get(id=run.id).latest_seq == 120
    # Each commit left its outbox entry; the fast path projects it unless the topic is busy, in
    # which case it gives way to the projector workers. A worker's drain ends it either way: the
    # summary reflects the last seq.
    from projector import outbox

    while outbox.drain_once().claimed:
        pass
    assert summary("runtime.run_summaries", run_doc_key(run.id)).doc_version == 120

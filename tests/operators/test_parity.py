"""The parity auditor catches each way the read models or the journal can disagree with the authority."""

import json
import random

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from projector import parity
from projector.models import CODEX_WORKER_SUMMARIES, RUN_SUMMARIES, ReadModelDocument, StreamEvent, TopicSequence
from projector.projector import project_codex_worker, project_run, run_doc_key, worker_doc_key
from runtime.models import CodexWorker, CodexWorkerEvent, Run, RunEvent

pytestmark = pytest.mark.django_db


def _add_run_events(run, n, event_type="run.progress"):
    for _ in range(n):
        run.latest_seq += 1
        RunEvent.objects.create(run=run, seq=run.latest_seq, event_type=event_type, payload={"seq": run.latest_seq})
    run.status = "running"
    run.save()


@pytest.fixture
def authority(topics, django_user_model):
    """Three runs and two workers, each projected through the real projector and sink."""
    owner = django_user_model.objects.create_user("author", password="author-password-1")
    runs = []
    for i in range(3):
        run = Run.objects.create(owner=owner, thread_id=f"thread-{i}")
        _add_run_events(run, i + 1)
        project_run(run.id)
        runs.append(run)
    workers = []
    for i in range(2):
        worker = CodexWorker.objects.create(owner=owner, adapter="test")
        worker.latest_seq = 1
        CodexWorkerEvent.objects.create(worker=worker, seq=1, event_type="worker.heartbeat", payload={})
        worker.save()
        project_codex_worker(worker.id)
        workers.append(worker)
    return {"owner": owner, "runs": runs, "workers": workers}


def audit(**kwargs):
    kwargs.setdefault("recheck_delay", 0)
    return parity.run_audit(50, rng=random.Random(7), **kwargs)


def findings_of(report, doc_key):
    return sorted((f.surface, f.reason) for f in report.findings if f.doc_key == doc_key)


def test_clean_state_has_no_mismatch(authority):
    report = audit()
    assert report.sampled == 7  # 5 summaries + each worker's event document
    assert report.findings == []
    assert report.status == "ok" and report.mismatch_rate == 0.0


def test_corrupted_read_model_payload_is_a_hash_mismatch(authority):
    run = authority["runs"][0]
    ReadModelDocument.objects.filter(topic=RUN_SUMMARIES, doc_key=run_doc_key(run.id)).update(
        payload={"status": "completed", "forged": True}
    )
    report = audit()
    assert findings_of(report, run_doc_key(run.id)) == [("read_model", "hash_mismatch")]
    assert report.mismatched_documents == 1
    assert report.mismatch_rate == pytest.approx(1 / 7)


def test_read_model_behind_the_authority_is_lag_drift(authority):
    run = authority["runs"][2]
    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).update(doc_version=run.latest_seq - 2)
    report = audit()
    (finding,) = [f for f in report.findings if f.doc_key == run_doc_key(run.id)]
    assert (finding.surface, finding.reason, finding.lag_drift) == ("read_model", "lag_drift", 2)
    assert report.max_abs_lag_drift == 2


def test_missing_read_model_row_is_khala_missing(authority):
    worker = authority["workers"][0]
    ReadModelDocument.objects.filter(topic=CODEX_WORKER_SUMMARIES, doc_key=worker_doc_key(worker.id)).delete()
    report = audit()
    # The journal still holds the inline row, so a client replaying the journal is fine.
    assert findings_of(report, worker_doc_key(worker.id)) == [("read_model", "khala_missing")]


def test_deleted_journal_rows_are_caught(authority):
    run = authority["runs"][1]
    StreamEvent.objects.filter(topic=RUN_SUMMARIES, doc_key=run_doc_key(run.id)).delete()
    report = audit()
    assert findings_of(report, run_doc_key(run.id)) == [("journal", "khala_missing")]


def test_deleted_latest_journal_row_leaves_clients_behind(authority):
    run = authority["runs"][1]
    _add_run_events(run, 1)
    project_run(run.id)  # a second journal row at the new version
    latest = StreamEvent.objects.filter(doc_key=run_doc_key(run.id)).order_by("-watermark").first()
    latest.delete()
    report = audit()
    (finding,) = [f for f in report.findings if f.doc_key == run_doc_key(run.id)]
    assert (finding.surface, finding.reason, finding.lag_drift) == ("journal", "lag_drift", 1)


def test_unprojected_authority_write_shows_on_both_surfaces(authority):
    run = authority["runs"][0]
    _add_run_events(run, 3)  # authority moved; projection never ran (e.g. it failed after commit)
    report = audit()
    assert findings_of(report, run_doc_key(run.id)) == [("journal", "lag_drift"), ("read_model", "lag_drift")]


def test_pointer_mode_rows_are_checked_against_the_hydrated_read_model(authority, settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "INLINE_PAYLOAD_LIMIT_BYTES": 64}
    run = authority["runs"][0]
    _add_run_events(run, 1)
    project_run(run.id)
    latest = StreamEvent.objects.filter(doc_key=run_doc_key(run.id)).order_by("-watermark").first()
    assert latest.payload is None  # premise: the summary went to the journal in pointer mode
    assert findings_of(audit(), run_doc_key(run.id)) == []

    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).update(payload={"forged": True})
    report = audit()
    # The client hydrates the forged payload and its hash check against the journal row fails.
    assert findings_of(report, run_doc_key(run.id)) == [("journal", "hash_mismatch"), ("read_model", "hash_mismatch")]


def test_corrupted_inline_journal_payload_is_a_hash_mismatch(authority):
    run = authority["runs"][2]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE sync_stream_events SET payload = jsonb_set(payload, '{status}', '\"failed\"') "
            "WHERE topic = %s AND doc_key = %s",
            [RUN_SUMMARIES, run_doc_key(run.id)],
        )
    assert findings_of(audit(), run_doc_key(run.id)) == [("journal", "hash_mismatch")]


def test_pruned_documents_are_reconstructed_from_the_snapshot(authority):
    topic = TopicSequence.objects.get(topic=RUN_SUMMARIES)
    # What retention does: delete a prefix of the journal and raise the floor in one transaction.
    StreamEvent.objects.filter(topic=RUN_SUMMARIES, watermark__lte=topic.last_watermark).delete()
    TopicSequence.objects.filter(topic=RUN_SUMMARIES).update(pruned_through=topic.last_watermark)
    assert audit().findings == []


def test_a_mismatch_fixed_before_the_recheck_is_not_reported(authority):
    run = authority["runs"][0]
    _add_run_events(run, 1)  # projection "in flight"

    def sleep(seconds):
        assert seconds == 1.5
        project_run(run.id)  # ... lands during the recheck delay

    report = audit(recheck_delay=1.5, sleep=sleep)
    assert report.findings == []


def test_metrics_follow_the_last_cycle(authority):
    run = authority["runs"][0]
    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).delete()
    before = parity.PARITY_MISMATCHES.labels("read_model", "khala_missing")._value.get()
    audit()
    assert parity.PARITY_MISMATCH_RATE._value.get() == pytest.approx(1 / 7)
    assert parity.PARITY_MISMATCHES.labels("read_model", "khala_missing")._value.get() == before + 1
    project_run(run.id, verify_read_model=True)  # reprojection repairs the read model
    audit()
    assert parity.PARITY_MISMATCH_RATE._value.get() == 0.0


def test_command_passes_when_clean_and_fails_above_the_threshold(authority, capsys):
    call_command("sync_parity_audit", "--sample", "10", "--recheck-delay", "0", "--json")
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["status"] == "ok" and report["sampled"] == 7

    run = authority["runs"][0]
    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).update(payload={"forged": 1})
    with pytest.raises(CommandError, match="above --max-mismatch-rate 0.1"):
        call_command("sync_parity_audit", "--sample", "10", "--recheck-delay", "0", "--max-mismatch-rate", "0.1")
    out = capsys.readouterr().out
    assert "read_model hash_mismatch " + run_doc_key(run.id) in out
    # A looser gate lets the same state pass.
    call_command("sync_parity_audit", "--sample", "10", "--recheck-delay", "0", "--max-mismatch-rate", "0.5")


def test_command_loop_runs_the_given_number_of_cycles(authority, capsys, monkeypatch):
    monkeypatch.setattr("projector.management.commands.sync_parity_audit.time.sleep", lambda s: None)
    call_command("sync_parity_audit", "--loop", "--cycles", "3", "--interval", "1", "--recheck-delay", "0", "--json")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == "ok" for line in lines)


@pytest.mark.parametrize(
    "args",
    [
        ["--sample", "-1"],
        ["--sample", "100001"],
        ["--interval", "0.5"],
        ["--max-mismatch-rate", "1.5"],
        ["--cycles", "-1"],
    ],
)
def test_command_rejects_bad_arguments(db, args):
    with pytest.raises(CommandError):
        call_command("sync_parity_audit", *args)


def test_sampling_covers_recent_and_random_entities(authority, django_user_model):
    owner = authority["owner"]
    for _ in range(40):
        Run.objects.create(owner=owner)
    connection.cursor().execute("ANALYZE runtime_runs")
    ids = parity.sample_entity_ids("runtime_runs", 10, random.Random(1))
    assert len(ids) == len(set(ids)) and 5 <= len(ids) <= 10
    newest = list(Run.objects.order_by("-updated_at", "id").values_list("id", flat=True)[:5])
    assert ids[:5] == newest


def test_notifications_and_worker_events_are_audited(authority):
    from projector.projector import notification_doc_key, project_run, worker_event_doc_key

    run = authority["runs"][0]
    _add_run_events(run, 1, "run.completed")
    run.status = "completed"
    run.save()
    project_run(run.id)
    worker = authority["workers"][0]
    ReadModelDocument.objects.filter(doc_key=notification_doc_key(run.id)).delete()
    ReadModelDocument.objects.filter(doc_key=worker_event_doc_key(worker.id, 1)).update(doc_version=0)
    report = audit()
    assert report.sampled == 8  # + the terminal run's notification
    assert findings_of(report, notification_doc_key(run.id)) == [("read_model", "khala_missing")]
    assert findings_of(report, worker_event_doc_key(worker.id, 1)) == [("read_model", "lag_drift")]
    assert report.mismatched_entities == sorted([("run", run.id), ("codex_worker", worker.id)])


def test_command_repair_reprojects_missing_and_drifted_documents(authority, capsys):
    run, worker = authority["runs"][1], authority["workers"][1]
    ReadModelDocument.objects.filter(doc_key=run_doc_key(run.id)).delete()
    StreamEvent.objects.filter(doc_key=worker_doc_key(worker.id)).delete()
    journal_before = StreamEvent.objects.count()
    call_command("sync_parity_audit", "--sample", "50", "--recheck-delay", "0", "--repair")
    out = capsys.readouterr().out
    assert "parity mismatch" in out and "repair: entities=2 written_documents=2" in out
    assert out.rstrip().splitlines()[-1].startswith("parity ok")
    assert StreamEvent.objects.count() == journal_before + 2  # one new row per repaired document
    assert audit().status == "ok"
    # Nothing left to repair: a second run writes nothing.
    call_command("sync_parity_audit", "--sample", "50", "--recheck-delay", "0", "--repair")
    assert "repair:" not in capsys.readouterr().out
    assert StreamEvent.objects.count() == journal_before + 2

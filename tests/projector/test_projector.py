"""Projector checkpoint rules and reprojection (library and ``manage.py reproject``)."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from projector import metrics, projector
from projector.models import ProjectionCheckpoint, ReadModelDocument, StreamEvent
from projector.projector import Decision, decide, run_doc_key, worker_doc_key
from projector.reprojection import reproject
from runtime import commands

pytestmark = pytest.mark.django_db


def cp(seq, version=projector.PROJECTION_VERSION, digest="h"):
    return ProjectionCheckpoint(last_runtime_seq=seq, projection_version=version, summary_hash=digest)


@pytest.mark.parametrize(
    "checkpoint, seq, version, digest, expected",
    [
        (None, 0, "v1", "h", Decision(True, "no_checkpoint")),
        (cp(-1), 0, "v1", "h", Decision(True, "no_checkpoint")),
        (cp(5, "v1"), 4, "v1", "h", Decision(False, "checkpoint_ahead")),
        (cp(5, "v1", "h"), 5, "v1", "h", Decision(False, "idempotent")),
        (cp(5, "v1", "h"), 5, "v1", "other", Decision(True, "summary_hash_mismatch")),
        (cp(5, "v0", "h"), 5, "v1", "h", Decision(True, "projection_version_changed")),
        (cp(5, "v1", "h"), 6, "v1", "h", Decision(True, "newer_seq")),
    ],
)
def test_checkpoint_rules(checkpoint, seq, version, digest, expected):
    assert decide(checkpoint, seq, version, digest) == expected


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="dora", password="pw")


@pytest.fixture
def authority(topics, user, django_capture_on_commit_callbacks):
    """A few runs (one terminal) and workers with events, projected as the API would."""
    with django_capture_on_commit_callbacks(execute=True):
        runs = [commands.create_run(user, thread_id=f"t{i}") for i in range(3)]
    for run in runs:
        with django_capture_on_commit_callbacks(execute=True):
            commands.append_run_event(run.id, user, "run.started", {})
    with django_capture_on_commit_callbacks(execute=True):
        commands.append_run_event(runs[0].id, user, "run.completed", {"reason_class": "ok"})
    with django_capture_on_commit_callbacks(execute=True):
        worker = commands.create_codex_worker(user, adapter="a")
    for kind in ("worker.heartbeat", "worker.heartbeat"):
        with django_capture_on_commit_callbacks(execute=True):
            commands.append_worker_event(worker.id, user, kind, {})
    return runs, [worker]


def journal_size():
    return StreamEvent.objects.count()


def test_projecting_unchanged_authority_again_is_idempotent(authority):
    runs, workers = authority
    before = journal_size()
    results = projector.project_run(runs[0].id) + projector.project_codex_worker(workers[0].id)
    assert [r.reason for r in results] == ["idempotent", "idempotent", "idempotent"]
    assert journal_size() == before


def test_checkpoint_ahead_skips(authority):
    runs, _ = authority
    ProjectionCheckpoint.objects.filter(projection_name="run_summary", entity_id=runs[1].id).update(last_runtime_seq=99)
    [result] = projector.project_run(runs[1].id)
    assert (result.written, result.reason) == (False, "checkpoint_ahead")


def test_hash_drift_rewrites_and_counts(authority):
    runs, _ = authority
    drift = metrics.PROJECTOR_DRIFT.labels(projection="run_summary")
    before, journal_before = drift._value.get(), journal_size()
    ProjectionCheckpoint.objects.filter(projection_name="run_summary", entity_id=runs[1].id).update(summary_hash="0" * 64)
    [result] = projector.project_run(runs[1].id)
    assert (result.written, result.reason) == (True, "summary_hash_mismatch")
    assert drift._value.get() == before + 1
    assert journal_size() == journal_before + 1


def test_projection_version_change_rewrites(authority):
    runs, _ = authority
    ProjectionCheckpoint.objects.filter(projection_name="run_summary", entity_id=runs[2].id).update(projection_version="old")
    [result] = projector.project_run(runs[2].id)
    assert (result.written, result.reason) == (True, "projection_version_changed")


def test_summary_hash_is_the_payload_hash_hex(authority):
    runs, _ = authority
    doc = ReadModelDocument.objects.get(doc_key=run_doc_key(runs[1].id))
    checkpoint = ProjectionCheckpoint.objects.get(projection_name="run_summary", entity_id=runs[1].id)
    assert checkpoint.summary_hash == bytes(doc.payload_hash).hex()
    assert checkpoint.last_runtime_seq == doc.doc_version == 1


class TestReprojection:
    def test_rerunning_on_unchanged_authority_appends_nothing(self, authority):
        before = journal_size()
        first = reproject(all_entities=True)
        second = reproject(all_entities=True)
        assert (first.total, first.written_documents, first.failed_entities) == (4, 0, [])
        assert second.written_documents == 0
        assert journal_size() == before

    def test_lost_read_models_are_rebuilt_with_one_row_each_then_stable(self, authority):
        runs, workers = authority
        ReadModelDocument.objects.all().delete()
        before = journal_size()
        progress = reproject(all_entities=True)
        # 3 run summaries + 1 notification + 1 worker summary + 2 worker events
        assert progress.written_documents == 7
        assert journal_size() == before + 7
        assert ReadModelDocument.objects.count() == 7
        assert ReadModelDocument.objects.get(doc_key=worker_doc_key(workers[0].id)).doc_version == 2
        again = reproject(all_entities=True)
        assert again.written_documents == 0 and journal_size() == before + 7

    def test_corrupted_read_model_is_repaired(self, authority):
        runs, _ = authority
        ReadModelDocument.objects.filter(doc_key=run_doc_key(runs[1].id)).update(payload={"tampered": True})
        ReadModelDocument.objects.filter(doc_key=run_doc_key(runs[1].id)).update(payload_hash=b"\0" * 32)
        progress = reproject(run_ids=[runs[1].id])
        assert progress.written_documents == 1
        doc = ReadModelDocument.objects.get(doc_key=run_doc_key(runs[1].id))
        assert doc.payload["run_id"] == runs[1].id

    def test_topic_filter(self, authority):
        ReadModelDocument.objects.all().delete()
        progress = reproject(all_entities=True, topics={"runtime.notifications"})
        assert progress.total == 3 and progress.written_documents == 1
        assert list(ReadModelDocument.objects.values_list("topic", flat=True)) == ["runtime.notifications"]

    def test_unknown_entity_is_reported(self, authority):
        progress = reproject(run_ids=["run_missing"])
        assert progress.failed_entities == [("run", "run_missing", "not_found")]

    def test_command_progress_and_idempotence(self, authority):
        ReadModelDocument.objects.all().delete()
        out = io.StringIO()
        call_command("reproject", "--all", "--progress-every", "2", stdout=out)
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("reprojected 2/4 entities")
        assert lines[-1].startswith("reprojected 4/4 entities: written=7")
        before = journal_size()
        out = io.StringIO()
        call_command("reproject", "--all", stdout=out)
        assert "written=0" in out.getvalue() and journal_size() == before

    def test_command_errors(self, authority):
        with pytest.raises(CommandError, match="1 of 1 entities failed"):
            call_command("reproject", "--run-id", "run_missing", stdout=io.StringIO(), stderr=io.StringIO())
        with pytest.raises(CommandError):
            call_command("reproject", stdout=io.StringIO())  # one of --run-id/--worker-id/--all is required

"""The commit's WAL position in the hint (read replicas, docs/sync/REPLICAS.md): read right after
COMMIT only when replicas are configured, and at or past the commit."""

import pytest
from django.db import connection

from projector import sink
from projector.models import RUN_SUMMARIES


def current_lsn() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        return cur.fetchone()[0]


@pytest.fixture
def hints(monkeypatch):
    sent = []
    monkeypatch.setattr("projector.sink.submit_hint", lambda *args, **kwargs: sent.append((args, kwargs)))
    return sent


@pytest.mark.django_db(transaction=True)
def test_with_replicas_the_hint_carries_the_commit_lsn(topics, hints, monkeypatch):
    monkeypatch.setattr("khala_project.replicas.replica_aliases", lambda: ["replica_1"])
    before = current_lsn()
    sink.project(RUNS_TOPIC, "doc/1", 1, {"v": 1}, "user:1")
    sink.project_many([sink.DocumentWrite(RUNS_TOPIC, "doc/2", 1, {"v": 2}, "user:1")])
    assert len(hints) == 2
    for (topic, watermark, _epoch), kwargs in hints:
        assert topic == RUNS_TOPIC
        # Past the commit's record: beyond where the WAL was before the write, not beyond now.
        assert before < kwargs["lsn"] <= current_lsn()
    assert hints[0][1]["lsn"] < hints[1][1]["lsn"]


@pytest.mark.django_db(transaction=True)
def test_without_replicas_no_lsn_is_read(topics, hints):
    sink.project(RUNS_TOPIC, "doc/1", 1, {"v": 1}, "user:1")
    assert hints and all(kwargs == {} for _, kwargs in hints)


RUNS_TOPIC = RUN_SUMMARIES

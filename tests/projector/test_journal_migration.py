"""The partitioning migration is reversible and keeps every row and id, and the sink writes on
both shapes (the plain table's identity column and the partitioned table's sequence)."""

import re

import pytest
from django.core.management import call_command
from django.db import connection

from projector import sink
from projector.models import StreamEvent

RUNS = "runtime.run_summaries"


def journal_kind() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = 'sync_stream_events'::regclass")
        return cursor.fetchone()[0]


def rows():
    return list(StreamEvent.objects.filter(topic=RUNS).order_by("watermark").values_list("id", "watermark", "doc_key"))


@pytest.mark.django_db(transaction=True)
def test_partitioning_migrates_back_and_forth_keeping_rows_and_ids(topics):
    for i in range(3):
        sink.project(RUNS, f"doc:{i}", 1, {"i": i}, "user:1")
    before = rows()
    assert journal_kind() == "p"
    try:
        call_command("migrate", "projector", "0004", verbosity=0)
        assert journal_kind() == "r" and rows() == before
        plain = sink.project(RUNS, "doc:plain", 1, {}, "user:1")
        assert plain.watermark == 4 and rows()[-1][0] > before[-1][0]  # the identity continues past the ids
    finally:
        call_command("migrate", verbosity=0)
    assert journal_kind() == "p"
    after = rows()
    assert after[:3] == before and [wm for _id, wm, _key in after] == [1, 2, 3, 4]
    assert sink.project(RUNS, "doc:again", 1, {}, "user:1").watermark == 5
    assert rows()[-1][0] > after[-1][0]  # the sequence continues past the copied ids
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM sync_stream_events WHERE topic = %s AND watermark = 5", [RUNS])
        partition = cursor.fetchone()[0]
    assert re.fullmatch(r"sync_se_[0-9a-f]{16}_w\d+", partition)  # a range, not an edge

"""ProjectorSink through its Python API, on real PostgreSQL (and real Redis for hints)."""

import itertools

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from projector import sink
from projector.models import ReadModelDocument, StreamEvent, TopicSequence
from projector.payload_hash import canonical_json, payload_hash
from projector.sink import DocumentWrite, SinkError
from projector.topics import bump_stream_epoch, declare_topic

_KEYS = itertools.count()
RUNS = "runtime.run_summaries"
WORKERS = "runtime.codex_worker_summaries"
NOTES = "runtime.notifications"


def journal(topic):
    return list(
        StreamEvent.objects.filter(topic=topic)
        .order_by("watermark")
        .values_list("watermark", "doc_key", "doc_version", "owner", "public")
    )


def head(topic):
    return TopicSequence.objects.get(topic=topic).last_watermark


@pytest.mark.django_db
class TestProject:
    def test_writes_read_model_and_journal_row_with_hash_and_size(self, topics):
        payload = {"status": "running", "seq": 3, "nested": {"b": 1, "a": [1, "x"]}}
        result = sink.project(RUNS, "runtime/run_summary:r1", 3, payload, "user:7")
        assert (result.written, result.watermark, result.pointer) == (True, 1, False)
        event = StreamEvent.objects.get(topic=RUNS, watermark=1)
        assert event.payload == payload
        assert bytes(event.payload_hash) == payload_hash(payload)
        assert event.payload_bytes == len(canonical_json(payload))
        assert (event.doc_key, event.doc_version, event.owner, event.public) == (
            "runtime/run_summary:r1", 3, "user:7", False,
        )
        doc = ReadModelDocument.objects.get(topic=RUNS, doc_key="runtime/run_summary:r1")
        assert (doc.doc_version, doc.watermark, doc.payload, doc.owner) == (3, 1, payload, "user:7")
        assert bytes(doc.payload_hash) == payload_hash(payload)
        assert head(RUNS) == 1

    def test_watermarks_are_per_topic_and_start_at_one(self, topics):
        assert sink.project(RUNS, "a", 1, {}, "user:1").watermark == 1
        assert sink.project(RUNS, "b", 1, {}, "user:1").watermark == 2
        assert sink.project(WORKERS, "a", 1, {}, "user:1").watermark == 1
        assert sink.project(NOTES, "n", 0, {"x": 1}, "", public=True).watermark == 1
        assert StreamEvent.objects.get(topic=NOTES).public is True

    def test_older_version_is_a_noop_equal_replaces_and_appends(self, topics):
        sink.project(RUNS, "doc", 5, {"v": 5}, "user:1")
        stale = sink.project(RUNS, "doc", 4, {"v": 4}, "user:1")
        assert (stale.written, stale.watermark) == (False, None)
        assert head(RUNS) == 1, "a no-op must not consume a watermark"
        equal = sink.project(RUNS, "doc", 5, {"v": "5 again"}, "user:1")
        assert (equal.written, equal.watermark) == (True, 2)
        newer = sink.project(RUNS, "doc", 9, {"v": 9}, "user:1")
        assert newer.watermark == 3
        doc = ReadModelDocument.objects.get(topic=RUNS, doc_key="doc")
        assert (doc.doc_version, doc.payload, doc.watermark) == (9, {"v": 9}, 3)
        assert [row[2] for row in journal(RUNS)] == [5, 5, 9]

    @hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.lists(
            st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=5),
            min_size=1,
            max_size=5,
        )
    )
    def test_doc_version_never_regresses(self, topics, batches):
        """Any mix of single writes and batches: the read model holds the max version, the
        journal holds exactly the writes that were not older than the state before them, and the
        journal's watermarks stay gap-free."""
        key = f"prop:{next(_KEYS)}"  # examples share one transaction: a fresh document each
        start = head(RUNS)
        expected_versions, current = [], None
        for i, versions in enumerate(batches):
            for v in versions:
                if current is None or v >= current:
                    expected_versions.append(v)
                    current = v
            if i % 2:
                sink.project_many([DocumentWrite(RUNS, key, v, {"v": v}, "user:1") for v in versions])
            else:
                for v in versions:
                    sink.project(RUNS, key, v, {"v": v}, "user:1")
        rows = StreamEvent.objects.filter(topic=RUNS, doc_key=key).order_by("watermark")
        assert [r.doc_version for r in rows] == expected_versions
        assert [r.watermark for r in rows] == list(range(start + 1, start + 1 + len(expected_versions)))
        assert head(RUNS) == start + len(expected_versions)
        assert ReadModelDocument.objects.get(topic=RUNS, doc_key=key).doc_version == max(
            v for b in batches for v in b
        )

    @override_settings(KHALA={"INLINE_PAYLOAD_LIMIT_BYTES": 64})
    def test_pointer_mode_above_the_inline_limit(self, topics):
        small = sink.project(RUNS, "small", 1, {"x": "y" * 10}, "user:1")
        big_payload = {"x": "y" * 100}
        big = sink.project(RUNS, "big", 1, big_payload, "user:1")
        assert (small.pointer, big.pointer) == (False, True)
        event = StreamEvent.objects.get(topic=RUNS, doc_key="big")
        assert event.payload is None
        assert bytes(event.payload_hash) == payload_hash(big_payload)
        assert event.payload_bytes == len(canonical_json(big_payload))
        # the read model keeps the full payload: clients hydrate it over HTTP
        assert ReadModelDocument.objects.get(topic=RUNS, doc_key="big").payload == big_payload
        assert StreamEvent.objects.get(topic=RUNS, doc_key="small").payload == {"x": "y" * 10}

    def test_pointer_mode_is_exact_at_the_limit(self, topics):
        payload = {"x": "y" * 10}
        size = len(canonical_json(payload))
        with override_settings(KHALA={"INLINE_PAYLOAD_LIMIT_BYTES": size}):
            assert sink.project(RUNS, "at", 1, payload, "user:1").pointer is False
        with override_settings(KHALA={"INLINE_PAYLOAD_LIMIT_BYTES": size - 1}):
            assert sink.project(RUNS, "over", 1, payload, "user:1").pointer is True

    def test_pointer_mode_forced_per_topic(self, topics):
        declare_topic("test.forced_pointer", force_pointer_mode=True)
        one = sink.project("test.forced_pointer", "a", 1, {"tiny": 1}, "user:1")
        many = sink.project_many([DocumentWrite("test.forced_pointer", "b", 1, {"tiny": 2}, "user:1")])
        assert one.pointer and many[0].pointer
        assert list(StreamEvent.objects.filter(topic="test.forced_pointer").values_list("payload", flat=True)) == [
            None,
            None,
        ]
        # other topics are unaffected
        assert sink.project(RUNS, "a", 1, {"tiny": 1}, "user:1").pointer is False

    @override_settings(KHALA={"MAX_PAYLOAD_BYTES": 100})
    def test_payload_over_the_hard_cap_is_refused(self, topics):
        with pytest.raises(SinkError) as err:
            sink.project(RUNS, "huge", 1, {"x": "y" * 200}, "user:1")
        assert err.value.code == "payload_too_large"
        assert not StreamEvent.objects.exists() and head(RUNS) == 0

    @pytest.mark.parametrize(
        "kwargs, code",
        [
            ({"topic": "no.such.topic"}, "unknown_topic"),
            ({"topic": ""}, "invalid_topic"),
            ({"topic": "bad topic"}, "invalid_topic"),
            ({"topic": 5}, "invalid_topic"),
            ({"doc_key": ""}, "invalid_doc_key"),
            ({"doc_key": "has space"}, "invalid_doc_key"),
            ({"doc_key": "k" * 256}, "invalid_doc_key"),
            ({"doc_key": None}, "invalid_doc_key"),
            ({"doc_version": -1}, "invalid_doc_version"),
            ({"doc_version": "3"}, "invalid_doc_version"),
            ({"doc_version": 1.0}, "invalid_doc_version"),
            ({"doc_version": True}, "invalid_doc_version"),
            ({"doc_version": 2**63}, "invalid_doc_version"),
            ({"owner": ""}, "invalid_owner"),
            ({"owner": None}, "invalid_owner"),
            ({"owner": "user 1"}, "invalid_owner"),
            ({"public": "yes"}, "invalid_public"),
            ({"payload": [1, 2]}, "invalid_payload"),
            ({"payload": "text"}, "invalid_payload"),
            ({"payload": {"x": float("nan")}}, "invalid_payload"),
            ({"payload": {"x": 2**60}}, "invalid_payload"),
            ({"payload": {"x": {1, 2}}}, "invalid_payload"),
            ({"payload": {"x": "nul\x00byte"}}, "invalid_payload"),
        ],
    )
    def test_bad_input_is_refused_with_a_stable_code(self, topics, kwargs, code):
        args = {"topic": RUNS, "doc_key": "k", "doc_version": 1, "payload": {"a": 1}, "owner": "user:1"}
        args.update(kwargs)
        public = args.pop("public", False)
        with pytest.raises(SinkError) as err:
            sink.project(**args, public=public)
        assert err.value.code == code
        assert code in sink.ERROR_STATUS
        assert not StreamEvent.objects.exists() and not ReadModelDocument.objects.exists()

    def test_literal_backslash_u0000_text_is_not_a_nul(self, topics):
        assert sink.project(RUNS, "k", 1, {"x": "\\u0000"}, "user:1").written

    def test_public_document_may_have_an_empty_owner(self, topics):
        assert sink.project(NOTES, "k", 1, {"a": 1}, "", public=True).written
        assert sink.project(NOTES, "k2", 1, {"a": 1}, None, public=True).written


@pytest.mark.django_db
class TestProjectMany:
    def test_batch_across_topics_returns_results_in_input_order(self, topics):
        results = sink.project_many(
            [
                DocumentWrite(WORKERS, "w1", 1, {"a": 1}, "user:1"),
                DocumentWrite(RUNS, "r1", 1, {"a": 1}, "user:1"),
                DocumentWrite(WORKERS, "w2", 1, {"a": 2}, "user:2"),
                DocumentWrite(RUNS, "r2", 1, {"a": 2}, "user:2"),
            ]
        )
        assert [(r.topic, r.doc_key, r.watermark) for r in results] == [
            (WORKERS, "w1", 1), (RUNS, "r1", 1), (WORKERS, "w2", 2), (RUNS, "r2", 2),
        ]
        assert head(RUNS) == head(WORKERS) == 2

    def test_stale_writes_in_a_batch_give_their_watermarks_back(self, topics):
        sink.project(RUNS, "existing", 10, {"v": 10}, "user:1")
        results = sink.project_many(
            [
                DocumentWrite(RUNS, "new1", 1, {}, "user:1"),
                DocumentWrite(RUNS, "existing", 3, {"v": 3}, "user:1"),  # older than stored
                DocumentWrite(RUNS, "new2", 1, {}, "user:1"),
            ]
        )
        assert [r.watermark for r in results] == [2, None, 3]
        assert [r[0] for r in journal(RUNS)] == [1, 2, 3]
        assert head(RUNS) == 3
        assert sink.project(RUNS, "after", 1, {}, "user:1").watermark == 4

    def test_same_document_twice_in_a_batch_applies_in_order(self, topics):
        results = sink.project_many(
            [
                DocumentWrite(RUNS, "d", 2, {"v": 2}, "user:1"),
                DocumentWrite(RUNS, "d", 2, {"v": "2b"}, "user:1"),
                DocumentWrite(RUNS, "d", 1, {"v": 1}, "user:1"),
                DocumentWrite(RUNS, "d", 3, {"v": 3}, "user:1"),
            ]
        )
        assert [r.written for r in results] == [True, True, False, True]
        assert [(r[0], r[2]) for r in journal(RUNS)] == [(1, 2), (2, 2), (3, 3)]
        doc = ReadModelDocument.objects.get(topic=RUNS, doc_key="d")
        assert (doc.doc_version, doc.payload, doc.watermark) == (3, {"v": 3}, 3)

    def test_one_invalid_document_writes_nothing(self, topics):
        with pytest.raises(SinkError) as err:
            sink.project_many(
                [
                    DocumentWrite(RUNS, "ok", 1, {}, "user:1"),
                    DocumentWrite(RUNS, "bad", -1, {}, "user:1"),
                ]
            )
        assert (err.value.code, err.value.index) == ("invalid_doc_version", 1)
        assert not StreamEvent.objects.exists() and head(RUNS) == 0

    def test_unknown_topic_in_a_batch_writes_nothing(self, topics):
        with pytest.raises(SinkError) as err:
            sink.project_many(
                [DocumentWrite(RUNS, "ok", 1, {}, "user:1"), DocumentWrite("zz.unknown", "k", 1, {}, "user:1")]
            )
        assert (err.value.code, err.value.index) == ("unknown_topic", 1)
        assert not StreamEvent.objects.exists() and not ReadModelDocument.objects.exists()
        assert head(RUNS) == 0

    def test_empty_batch(self, topics):
        assert sink.project_many([]) == []

    def test_non_document_item_is_refused(self, topics):
        with pytest.raises(SinkError) as err:
            sink.project_many([{"topic": RUNS}])
        assert err.value.code == "invalid_document"


FAIL_ON_DOC_KEY_TRIGGER = """
CREATE OR REPLACE FUNCTION khala_test_fail_journal() RETURNS trigger AS $$
BEGIN
  IF NEW.doc_key = 'explode' THEN RAISE EXCEPTION 'forced journal failure'; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER khala_test_fail_journal BEFORE INSERT ON sync_stream_events
  FOR EACH ROW EXECUTE FUNCTION khala_test_fail_journal();
"""


@pytest.fixture
def failing_journal():
    with connection.cursor() as cursor:
        cursor.execute(FAIL_ON_DOC_KEY_TRIGGER)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS khala_test_fail_journal ON sync_stream_events")
        cursor.execute("DROP FUNCTION IF EXISTS khala_test_fail_journal()")


@pytest.mark.django_db(transaction=True)
class TestAtomicity:
    """Force a failure between the read-model upsert and the journal append: neither may remain.

    Transactional: the sink runs in autocommit here, as in production (its statements are their
    own transaction), not inside a test-wide transaction.
    """

    def test_single_write_leaves_neither_row(self, topics, failing_journal):
        # A django.db error (callers catch those), although the statement runs on a plain psycopg cursor.
        with pytest.raises(DatabaseError, match="forced journal failure"):
            sink.project(RUNS, "explode", 1, {"a": 1}, "user:1")
        assert not ReadModelDocument.objects.filter(doc_key="explode").exists()
        assert not StreamEvent.objects.exists()
        assert head(RUNS) == 0

    def test_batch_failure_in_a_later_topic_undoes_the_earlier_topic(self, topics, failing_journal):
        with pytest.raises(Exception, match="forced journal failure"):
            sink.project_many(
                [
                    # topics are locked in sorted order: codex_worker_summaries, then run_summaries
                    DocumentWrite(WORKERS, "fine", 1, {}, "user:1"),
                    DocumentWrite(RUNS, "explode", 1, {}, "user:1"),
                ]
            )
        assert not ReadModelDocument.objects.exists()
        assert not StreamEvent.objects.exists()
        assert head(RUNS) == 0 and head(WORKERS) == 0

    def test_one_topic_batch_in_one_message_is_all_or_nothing(self, topics, failing_journal):
        sink.project(RUNS, "existing", 1, {"v": 1}, "user:1")
        with pytest.raises(Exception, match="forced journal failure"):
            sink.project_many(
                [
                    DocumentWrite(RUNS, "a", 1, {}, "user:1"),
                    DocumentWrite(RUNS, "existing", 2, {"v": 2}, "user:1"),
                    DocumentWrite(RUNS, "explode", 1, {}, "user:1"),
                ]
            )
        assert [row[1] for row in journal(RUNS)] == ["existing"]
        assert ReadModelDocument.objects.get(topic=RUNS, doc_key="existing").payload == {"v": 1}
        assert ReadModelDocument.objects.filter(topic=RUNS).count() == 1 and head(RUNS) == 1

    def test_caller_rollback_undoes_the_write(self, topics):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                sink.project(RUNS, "doc", 1, {}, "user:1")
                raise RuntimeError("caller fails after the sink")
        assert not ReadModelDocument.objects.exists() and not StreamEvent.objects.exists()
        assert head(RUNS) == 0


@pytest.mark.django_db(transaction=True)
def test_single_document_statement_is_prepared_once_per_connection(topics):
    """Planning the fused statement costs about as much as running it: it must be prepared once
    and reused (as a generic plan once PostgreSQL has seen a few executions)."""

    def prepared():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT generic_plans + custom_plans, generic_plans FROM pg_prepared_statements "
                "WHERE statement LIKE %s",
                ["%INSERT INTO sync_stream_events%"],
            )
            return cursor.fetchall()

    for n in range(6):  # this connection may be new: psycopg prepares on the 6th run
        sink.project(RUNS, f"prepared:first{n}", 1, {"n": -1}, "user:1")
    (before,) = prepared()
    for n in range(12):
        sink.project(RUNS, f"prepared:{n}", 1, {"n": n}, "user:1")
    rows = prepared()
    assert len(rows) == 1, rows  # one statement, not one per call or per doc_key
    executions, generic = rows[0]
    assert executions - before[0] == 12 and generic > 0
    assert [row[1] for row in journal(RUNS)] == [f"prepared:first{n}" for n in range(6)] + [
        f"prepared:{n}" for n in range(12)
    ]

    # Django still sees the statement: execute_wrapper hooks (tracing) and the DEBUG query log.
    seen = []
    with connection.execute_wrapper(lambda execute, sql, *args: (seen.append(sql), execute(sql, *args))[1]):
        with CaptureQueriesContext(connection) as logged:
            sink.project(RUNS, "prepared:traced", 1, {}, "user:1")
    assert len(seen) == 1 and "INSERT INTO sync_stream_events" in seen[0]
    assert len(logged) == 1  # timed in the DEBUG log (Django cannot render a prepared statement's SQL)
    executions_before_off = prepared()[0][0]

    with override_settings(KHALA={"SINK_PREPARED_STATEMENTS": False}):  # behind a transaction-mode pooler
        for n in range(3):
            sink.project(RUNS, f"unprepared:{n}", 1, {"n": n}, "user:1")
    assert prepared()[0][0] == executions_before_off  # no execution of the prepared statement
    assert [row[1] for row in journal(RUNS)][-3:] == [f"unprepared:{n}" for n in range(3)]


@pytest.mark.django_db
def test_on_commit_callbacks_only_after_commit(topics, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                sink.project(RUNS, "a", 1, {}, "user:1")
                raise RuntimeError
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks:
        sink.project(RUNS, "a", 1, {}, "user:1")
    assert len(callbacks) == 1


@pytest.mark.django_db(transaction=True)
class TestHints:
    def test_hint_is_published_on_commit(self, topics, hint_listener):
        hint_listener.subscribe(RUNS)
        epoch = TopicSequence.objects.get(topic=RUNS).stream_epoch
        sink.project(RUNS, "a", 1, {}, "user:1")
        message = hint_listener.receive()
        assert message == {"type": "sync.hint", "topic": RUNS, "watermark": 1, "stream_epoch": epoch}

    def test_one_hint_per_topic_per_transaction_with_the_highest_watermark(self, topics, hint_listener):
        hint_listener.subscribe(RUNS, WORKERS)
        with transaction.atomic():
            sink.project(RUNS, "a", 1, {}, "user:1")
            sink.project_many([DocumentWrite(RUNS, f"b{i}", 1, {}, "user:1") for i in range(5)])
            sink.project(RUNS, "c", 1, {}, "user:1")
        sink.project(WORKERS, "marker", 1, {}, "user:1")  # a later commit on another topic
        first = hint_listener.receive()
        second = hint_listener.receive()
        assert (first["topic"], first["watermark"]) == (RUNS, 7)
        assert (second["topic"], second["watermark"]) == (WORKERS, 1)

    def test_no_hint_on_rollback(self, topics, hint_listener):
        hint_listener.subscribe(RUNS, WORKERS)
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                sink.project(RUNS, "rolled-back", 1, {}, "user:1")
                raise RuntimeError("abort")
        # Hints are published in submission order on one connection: had the rolled-back write
        # published anything, it would arrive before the marker committed afterwards.
        sink.project(WORKERS, "marker", 1, {}, "user:1")
        message = hint_listener.receive()
        assert (message["topic"], message["watermark"]) == (WORKERS, 1)

    def test_hint_carries_the_current_stream_epoch(self, topics, hint_listener):
        hint_listener.subscribe(RUNS)
        new_epoch = bump_stream_epoch(RUNS)
        sink.project(RUNS, "a", 1, {}, "user:1")
        assert hint_listener.receive()["stream_epoch"] == new_epoch


@pytest.mark.django_db
class TestInsideCallerTransaction:
    def test_unknown_topic_leaves_the_callers_transaction_usable(self, topics):
        with transaction.atomic():
            sink.project(RUNS, "before", 1, {}, "user:1")
            with pytest.raises(SinkError):
                sink.project("zz.unknown", "k", 1, {}, "user:1")
            with pytest.raises(SinkError):
                sink.project_many([DocumentWrite("zz.unknown", "k", 1, {}, "user:1")])
            with pytest.raises(SinkError):  # two topics: the known one is undone by a savepoint
                sink.project_many(
                    [DocumentWrite(WORKERS, "w", 1, {}, "user:1"), DocumentWrite("zz.unknown", "k", 1, {}, "user:1")]
                )
            sink.project(RUNS, "after", 1, {}, "user:1")
        assert [row[1] for row in journal(RUNS)] == ["before", "after"]
        assert journal(WORKERS) == [] and head(WORKERS) == 0

    def test_a_database_error_aborts_the_callers_transaction(self, topics, failing_journal):
        with pytest.raises(Exception, match="forced journal failure"):
            with transaction.atomic():
                sink.project(RUNS, "fine", 1, {}, "user:1")
                sink.project_many([DocumentWrite(RUNS, "explode", 1, {}, "user:1")])
        assert journal(RUNS) == [] and head(RUNS) == 0

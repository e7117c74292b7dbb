"""sync.protocol: framing, subscribe validation and stale-cursor rules as pure functions."""

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync import protocol as p
from sync.protocol import Cursor, JournalRow, ProtocolError, TopicState

TOPICS = ("runtime.run_summaries", "runtime.codex_worker_summaries", "runtime.codex_worker_events", "runtime.notifications")
MAX = 1024 * 1024

refs = st.one_of(st.none(), st.text(max_size=12))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@given(refs, refs, st.text(max_size=20), st.text(max_size=20), payloads)
def test_frames_round_trip(join_ref, ref, topic, event, payload):
    text = p.encode_frame(join_ref, ref, topic, event, payload)
    assert p.decode_frame(text, max_bytes=MAX) == p.Frame(join_ref, ref, topic, event, payload)


@pytest.mark.parametrize(
    "text, code",
    [
        ("not json", "malformed_frame"),
        ("{}", "malformed_frame"),
        ("[]", "malformed_frame"),
        ('["1","1","sync:v1","phx_join"]', "malformed_frame"),
        ('["1","1","sync:v1","phx_join",{},1]', "malformed_frame"),
        ('[1,"1","sync:v1","phx_join",{}]', "malformed_frame"),
        ('["1",2,"sync:v1","phx_join",{}]', "malformed_frame"),
        ('["1","1",3,"phx_join",{}]', "malformed_frame"),
        ('["1","1","sync:v1",null,{}]', "malformed_frame"),
        ('["1","1","sync:v1","phx_join","payload"]', "malformed_frame"),
        ('["1","1","sync:v1","phx_join",[]]', "malformed_frame"),
        ('["1","1","sync:v1","phx_join",{"a":NaN}]', "malformed_frame"),
    ],
)
def test_malformed_frames_have_a_code(text, code):
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(text, max_bytes=MAX)
    assert info.value.code == code
    assert info.value.payload()["code"] == code


def test_binary_and_oversized_frames():
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(None, max_bytes=MAX, binary=b"[]")
    assert info.value.code == "malformed_frame"
    big = json.dumps(["1", "1", "sync:v1", "x", {"pad": "é" * (MAX // 2 + 1)}], ensure_ascii=False)
    assert len(big) <= MAX
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(big, max_bytes=MAX)
    assert info.value.code == "payload_too_large"
    assert info.value.extra == {"limit_bytes": MAX}


@given(st.text(max_size=300))
def test_frame_size_check_is_exact(text):
    for limit in (0, 1, 10, 100, 400):
        assert p.frame_size_ok(text, limit) == (len(text.encode("utf-8", "surrogatepass")) <= limit)


def test_topic_enum_names_match_the_proto():
    from openagents.sync.v1 import topics_pb2

    extension = topics_pb2.topic_name
    for value in topics_pb2.SyncTopic.DESCRIPTOR.values:
        if value.number == 0:
            continue
        wire = value.GetOptions().Extensions[extension]
        assert p.topic_enum_name(wire) == value.name
        assert p.normalize_topic(f"  {value.name} ", TOPICS) == wire


def _subscribe(payload, allowed=TOPICS, known=TOPICS):
    return p.parse_subscribe(payload, known_topics=known, allowed_topics=allowed, default_batch_size=200, max_batch_size=200)


def test_subscribe_normalises_and_caps():
    request = _subscribe(
        {
            "topics": [" runtime.run_summaries", "SYNC_TOPIC_RUNTIME_RUN_SUMMARIES", "runtime.notifications"],
            "resume_after": {"runtime.run_summaries": 5, "runtime.codex_worker_events": 7},
            "replay_batch_size": 10_000,
            "request_id": "r1",
        }
    )
    assert request.topics == ("runtime.run_summaries", "runtime.notifications")
    assert request.cursors == {"runtime.run_summaries": Cursor("runtime.run_summaries", 5)}
    assert request.replay_batch_size == 200
    assert request.request_id == "r1"
    listed = _subscribe(
        {"topics": ["runtime.run_summaries"], "resume_after": [{"topic": "runtime.run_summaries", "watermark": "42", "stream_epoch": "e1"}], "replay_batch_size": 3}
    )
    assert listed.cursors["runtime.run_summaries"] == Cursor("runtime.run_summaries", 42, "e1")
    assert listed.replay_batch_size == 3


@pytest.mark.parametrize(
    "payload, code",
    [
        ({}, "bad_subscription"),
        ({"topics": "runtime.run_summaries"}, "bad_subscription"),
        ({"topics": []}, "bad_subscription"),
        ({"topics": ["  "]}, "bad_subscription"),
        ({"topics": [1]}, "bad_subscription"),
        # unknown before not-allowed, both before cursor shape
        ({"topics": ["nope.topic"], "resume_after": "x"}, "forbidden_topic"),
        ({"topics": ["runtime.notifications"], "resume_after": "x"}, "forbidden_topic"),
        ({"topics": ["runtime.run_summaries"], "resume_after": "x"}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": -1}}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": 1.5}}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": True}}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": "-3"}}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": 2**63}}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": [{"topic": "runtime.run_summaries"}]}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": [{"watermark": 1}]}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": [{"topic": "runtime.run_summaries", "watermark": 1, "x": 1}]}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "resume_after": [{"topic": "runtime.run_summaries", "watermark": 1, "stream_epoch": 5}]}, "bad_subscription"),
        (
            {"topics": ["runtime.run_summaries"], "resume_after": [{"topic": "runtime.run_summaries", "watermark": 1}, {"topic": "SYNC_TOPIC_RUNTIME_RUN_SUMMARIES", "watermark": 2}]},
            "bad_subscription",
        ),
        ({"topics": ["runtime.run_summaries"], "replay_batch_size": 0}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "replay_batch_size": "10"}, "bad_subscription"),
        ({"topics": ["runtime.run_summaries"], "request_id": 5}, "bad_subscription"),
    ],
)
def test_subscribe_validation_order_and_codes(payload, code):
    with pytest.raises(ProtocolError) as info:
        _subscribe(payload, allowed=TOPICS[:3])
    assert info.value.code == code


def test_forbidden_topics_are_listed():
    with pytest.raises(ProtocolError) as info:
        _subscribe({"topics": ["runtime.run_summaries", "runtime.notifications", "x.y"]}, allowed=TOPICS[:1])
    assert info.value.payload()["forbidden_topics"] == ["x.y"]
    with pytest.raises(ProtocolError) as info:
        _subscribe({"topics": ["runtime.run_summaries", "runtime.notifications"]}, allowed=TOPICS[:1])
    assert info.value.payload()["forbidden_topics"] == ["runtime.notifications"]


STATE = TopicState("t", head_watermark=100, pruned_through=40, stream_epoch="e1", replay_budget_events=50, qos_tier="warm", snapshot_enabled=False)


@pytest.mark.parametrize(
    "cursor, reason",
    [
        (Cursor("t", 60, "e1"), None),
        (Cursor("t", 50), None),  # lag exactly the budget
        (Cursor("t", 40), "replay_budget_exceeded"),  # at the floor: retention fine, budget not
        (Cursor("t", 39), "retention_floor_breach"),
        (Cursor("t", 100), None),
        (Cursor("t", 101), "cursor_ahead_of_head"),
        (Cursor("t", 60, "e0"), "stream_epoch_mismatch"),
    ],
)
def test_stale_reasons(cursor, reason):
    assert p.stale_reason(cursor, STATE) == reason


def test_stale_payload_shape():
    request = _subscribe({"topics": ["runtime.run_summaries"], "resume_after": {"runtime.run_summaries": 3}})
    state = TopicState("runtime.run_summaries", 10, 5, "e", 20000, "warm", True)
    payload = p.find_stale_cursors(request, {"runtime.run_summaries": state})
    assert payload["code"] == "stale_cursor"
    assert payload["full_resync_required"] is True
    assert payload["reason_codes"] == ["retention_floor_breach"]
    assert payload["stale_topics"][0] | {} == {
        "topic": "runtime.run_summaries", "reason": "retention_floor_breach", "resume_after": 3,
        "retention_floor": 5, "head_watermark": 10, "stream_epoch": "e", "qos_tier": "warm",
        "replay_lag": 7, "replay_budget_events": 20000,
    }
    assert payload["snapshot"]["topics"][0]["list_url"] == "/api/sync/v1/list/runtime.run_summaries"
    assert p.find_stale_cursors(_subscribe({"topics": ["runtime.run_summaries"]}), {"runtime.run_summaries": state}) is None


def _row(wm, payload=None, size=None, public=False, owner="user:1"):
    text = None if payload is None else orjson.dumps(payload).decode()
    return JournalRow("t", wm, f"d{wm}", 1, owner, public, text, base64.b64encode(b"\x01" * 32).decode(), size if size is not None else len(text or ""))


def test_update_encoding_inline_and_pointer():
    inline = orjson.loads(p.encode_update(_row(3, {"a": [1, 2]}), 1000))
    assert inline == {
        "topic": "t", "doc_key": "d3", "doc_version": 1, "payload": {"a": [1, 2]},
        "payload_hash": base64.b64encode(b"\x01" * 32).decode(), "watermark": 3, "hydration_required": False,
    }
    pointer = orjson.loads(p.encode_update(_row(4, None, size=10), 1000))
    assert pointer["payload"] is None and pointer["hydration_required"] is True
    too_big = orjson.loads(p.encode_update(_row(5, {"a": "x" * 50}), 20))
    assert too_big["payload"] is None and too_big["hydration_required"] is True


@settings(max_examples=200)
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 20), st.integers(1100, 20000))
def test_split_batches_respects_both_limits(sizes, max_count, max_bytes):
    items = [(i + 1, b"x" * size) for i, size in enumerate(sizes)]
    batches = p.split_batches(items, max_count, max_bytes)
    assert [item for batch in batches for item in batch] == items
    budget = max_bytes - p.BATCH_ENVELOPE_RESERVE_BYTES
    for batch in batches:
        assert 1 <= len(batch) <= max_count
        if len(batch) > 1:
            assert sum(len(u) + 1 for _, u in batch) <= budget


def test_owner_filter():
    assert p.may_see(_row(1, {}, owner="user:1"), "user:1")
    assert not p.may_see(_row(1, {}, owner="user:1"), "user:2")
    assert p.may_see(_row(1, {}, owner="user:1", public=True), "user:2")

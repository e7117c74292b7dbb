"""Phoenix v2 framing and sync:v1 payload parsing (pure functions)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from khala_client import protocol
from khala_client.protocol import ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
refs = st.none() | st.text(min_size=1, max_size=8)


@given(refs, refs, st.text(max_size=20), st.text(max_size=20), json_values)
def test_frames_round_trip(join_ref, ref, topic, event, payload):
    frame = protocol.decode_frame(protocol.encode_frame(join_ref, ref, topic, event, payload))
    assert (frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload) == (join_ref, ref, topic, event, payload)


@pytest.mark.parametrize(
    "text",
    ["not json", "{}", "[1,2,3]", '[null,null,"t","e"]', '[null,null,"t","e",{},1]', '[1,null,"t","e",{}]',
     '[null,null,1,"e",{}]', '[null,null,"t",null,{}]', "", "[]"],
)
def test_decode_rejects_non_frames(text):
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_frame(text)
    assert exc.value.code == "bad_frame"


def test_socket_url_carries_token_and_vsn():
    url = protocol.socket_url("http://127.0.0.1:8000/ignored", "a.b.c", params={"client": "py", "x": None})
    assert url == "ws://127.0.0.1:8000/sync/socket/websocket?token=a.b.c&vsn=2.0.0&client=py"
    assert protocol.socket_url("https://h", "t").startswith("wss://h/sync/socket/websocket?")
    assert protocol.http_base("wss://h:1/x") == "https://h:1"
    with pytest.raises(ValueError):
        protocol.http_base("ftp://h")


def _update(**over):
    base = {"topic": "t", "doc_key": "k", "doc_version": 1, "payload": {"a": 1}, "payload_hash": "x", "watermark": 3,
            "hydration_required": False}
    base.update(over)
    return base


def test_parse_update_and_pointer_mode():
    u = protocol.parse_update(_update())
    assert (u.topic, u.doc_key, u.doc_version, u.watermark, u.hydration_required) == ("t", "k", 1, 3, False)
    pointer = protocol.parse_update(_update(payload=None, hydration_required=True))
    assert pointer.hydration_required and pointer.payload is None
    # a null payload is always a pointer, whatever the flag says
    assert protocol.parse_update(_update(payload=None, hydration_required=False)).hydration_required


@pytest.mark.parametrize(
    "over",
    [{"topic": ""}, {"topic": 1}, {"doc_key": None}, {"doc_version": "1"}, {"doc_version": -1}, {"watermark": 0},
     {"watermark": 1.5}, {"watermark": True}, {"payload_hash": 5}],
)
def test_parse_update_rejects_bad_fields(over):
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_update(_update(**over))
    assert exc.value.code == "bad_update"


def test_watermarks_list_or_map():
    assert protocol.parse_watermarks([{"topic": "a", "watermark": 2}]) == {"a": 2}
    assert protocol.parse_watermarks({"a": 3}) == {"a": 3}
    assert protocol.parse_watermarks(None) == {}
    for bad in ([{"topic": "a", "watermark": "2"}], "x", [1]):
        with pytest.raises(ProtocolError):
            protocol.parse_watermarks(bad)


def test_subscribe_payload_sends_cursors_as_a_list():
    payload = protocol.subscribe_payload(["a", "b"], {"a": 5, "b": 0}, stream_epochs={"a": "e1"}, replay_batch_size=50)
    assert payload == {
        "topics": ["a", "b"],
        "resume_after": [{"topic": "a", "watermark": 5, "stream_epoch": "e1"}, {"topic": "b", "watermark": 0}],
        "replay_batch_size": 50,
    }
    json.dumps(payload)


def test_error_code_and_reply_status():
    assert protocol.error_code({"code": "stale_cursor"}) == "stale_cursor"
    assert protocol.error_code({"reason": "token_expired"}) == "token_expired"
    assert protocol.error_code("x") == "unknown_error"
    assert protocol.reply_status({"status": "ok", "response": {}}) == ("ok", {})
    with pytest.raises(ProtocolError):
        protocol.reply_status({"response": {}})

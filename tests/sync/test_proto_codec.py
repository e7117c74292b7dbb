"""The JSON frames the server sends (and the client payloads it accepts) are the proto-JSON form of
``openagents.sync.v1`` messages: every field name exists in the message, every value has its type.
Documented differences, converted before parsing: ``Update.payload`` is the JSON value itself (the
proto has canonical bytes), ``Error.code`` is the lowercase ``error_code`` option (the proto-JSON
form is the enum value name), and the ``sync:heartbeat`` *reply* adds ``subscription_id``."""

import base64
import copy

import pytest
from google.protobuf import json_format

from openagents.sync.v1 import errors_pb2, sync_pb2
from projector.payload_hash import canonical_json
from tests.support.wsclient import PhoenixClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hub_cleanup")]

RUNS = "runtime.run_summaries"
ERROR_ENUM = {
    v.GetOptions().Extensions[errors_pb2.error_code]: v.name for v in errors_pb2.SyncErrorCode.DESCRIPTOR.values if v.number
}


def parse(message_class, data):
    return json_format.ParseDict(data, message_class(), ignore_unknown_fields=False)


def as_error(payload):
    data = copy.deepcopy(payload)
    data["code"] = ERROR_ENUM[data["code"]]
    return parse(sync_pb2.Error, data)


def as_batch(payload):
    data = copy.deepcopy(payload)
    for update in data["updates"]:
        update["payload"] = None if update["payload"] is None else base64.b64encode(canonical_json(update["payload"])).decode()
    return parse(sync_pb2.UpdateBatch, data)


async def test_server_frames_parse_as_proto_messages(topics, mint, awrite):
    await awrite(RUNS, "runtime/run_summary:a", 3, {"x": 1, "nested": {"k": [1, "two"]}}, "user:1")
    await awrite(RUNS, "runtime/run_summary:b", 4, {"y": "z"}, "user:1")
    client = await PhoenixClient.communicator(f"token={mint(1, scopes=[RUNS])}&vsn=2.0.0")
    join_payload = {"frames": True}
    parse(sync_pb2.Join, join_payload)
    joined = await client.join(join_payload)
    parse(sync_pb2.Joined, joined["response"])

    subscribe = {"topics": [RUNS], "resume_after": [{"topic": RUNS, "watermark": 0}], "replay_batch_size": 1, "request_id": "q1"}
    parse(sync_pb2.Subscribe, subscribe)
    ref = await client.push("sync:subscribe", subscribe)
    reply, frames = await client.reply(ref)
    subscribed = parse(sync_pb2.Subscribed, reply["response"])
    assert subscribed.request_id == "q1" and subscribed.current_watermarks[0].watermark == 2
    batches = [as_batch(f[4]) for f in frames if f[3] == "sync:update_batch"]
    assert [b.updates[0].watermark for b in batches] == [1, 2]
    assert batches[0].updates[0].payload == canonical_json({"x": 1, "nested": {"k": [1, "two"]}})
    assert len(batches[0].updates[0].payload_hash) == 32
    envelopes = [parse(sync_pb2.KhalaFrame, f[4]) for f in frames if f[3] == "sync:frame"]
    assert [e.kind for e in envelopes] == [sync_pb2.KHALA_FRAME_KIND_UPDATE_BATCH] * 2
    assert [e.seq for e in envelopes] == [1, 2]

    ref = await client.push("sync:heartbeat", {})
    reply, _ = await client.reply(ref)
    response = dict(reply["response"])
    assert isinstance(response.pop("subscription_id"), str)
    heartbeat = parse(sync_pb2.Heartbeat, response)
    assert heartbeat.watermarks[0].head_watermark == 2 and heartbeat.watermarks[0].stream_epoch

    ref = await client.push("sync:unsubscribe", {"topics": [RUNS]})
    parse(sync_pb2.Unsubscribe, {"topics": [RUNS]})
    reply, _ = await client.reply(ref)
    parse(sync_pb2.Unsubscribed, reply["response"])

    errors = []
    for payload in ({"topics": ["runtime.notifications"]}, {"topics": []}, {"topics": [RUNS], "resume_after": {RUNS: 99}}):
        ref = await client.push("sync:subscribe", payload)
        reply, pushed = await client.reply(ref)
        errors.append(reply["response"])
        errors += [f[4] for f in pushed if f[3] == "sync:error"]
        for f in pushed:
            if f[3] == "sync:frame":
                assert parse(sync_pb2.KhalaFrame, f[4]).kind == sync_pb2.KHALA_FRAME_KIND_ERROR
    ref = await client.push("sync:nope", {})
    reply, _ = await client.reply(ref)
    errors.append(reply["response"])
    parsed = [as_error(e) for e in errors]
    assert [errors_pb2.SyncErrorCode.Name(e.code) for e in parsed] == [
        "SYNC_ERROR_CODE_FORBIDDEN_TOPIC",
        "SYNC_ERROR_CODE_BAD_SUBSCRIPTION",
        "SYNC_ERROR_CODE_STALE_CURSOR",
        "SYNC_ERROR_CODE_STALE_CURSOR",
        "SYNC_ERROR_CODE_UNKNOWN_EVENT",
    ]
    assert parsed[2].snapshot.topics[0].topic == RUNS

    unauthorized = await PhoenixClient.communicator("token=nope&vsn=2.0.0")
    reply = await unauthorized.join()
    assert as_error(reply["response"]).reason == "invalid_token_format"

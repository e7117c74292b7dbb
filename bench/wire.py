"""Benchmark of the frame encoding: the JSON frames Khala sends vs protobuf binary, same updates.

    .venv/bin/python bench/wire.py [--updates 100] [--payload-bytes 300] [--seconds 2]

The proto package ``openagents.sync.v1`` is the schema; on the wire Khala sends Phoenix v2 JSON
frames whose ``payload`` is the stored canonical JSON spliced in as it is. This measures, for one
``sync:update_batch`` of ``--updates`` updates (one process, no I/O, no database):

- ``json``: the server's encode (``orjson`` with each canonical payload embedded verbatim, as
  ``sync.protocol`` does) and a client's decode (``orjson.loads`` of the frame: payloads parsed);
- ``protobuf``: ``UpdateBatch`` with ``Update.payload`` = the canonical bytes, ``SerializeToString``
  inside a Phoenix binary frame, and a client's decode (``UpdateBatch.FromString``, then
  ``orjson.loads`` of each payload, because a client needs the document, not its bytes);

plus the frame size. Prints a table and writes ``bench/results/wire.json``. Server CPU per frame
matters once per (topic, watermark) (a frame is encoded once for every socket); client CPU and
bytes matter per socket.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proto"))

import orjson  # noqa: E402

from bench import harness  # noqa: E402
from openagents.sync.v1 import sync_pb2  # noqa: E402


def rows(count: int, size: int) -> list[dict]:
    """Journal rows as the hub reads them: canonical payload bytes and their SHA-256."""
    out = []
    for i in range(count):
        payload = orjson.dumps(harness.payload_of_size(i, size), option=orjson.OPT_SORT_KEYS)
        out.append(
            {
                "topic": "runtime.run_summaries",
                "doc_key": f"runtime/run_summary:run_{i}",
                "doc_version": i + 1,
                "watermark": 1000 + i,
                "payload": payload,
                "payload_hash": hashlib.sha256(payload).digest(),
            }
        )
    return out


def encode_json(batch: list[dict]) -> str:
    updates = [
        {
            "topic": r["topic"],
            "doc_key": r["doc_key"],
            "doc_version": r["doc_version"],
            "payload": orjson.Fragment(r["payload"]),  # the canonical JSON, embedded as it is
            "watermark": r["watermark"],
            "payload_hash": r["payload_hash"].hex(),
            "hydration_required": False,
        }
        for r in batch
    ]
    payload = {"updates": updates, "replay_complete": False, "head_watermarks": []}
    return orjson.dumps([None, None, "sync:v1", "sync:update_batch", payload]).decode()


def decode_json(frame: str) -> list:
    return orjson.loads(frame)[4]["updates"]


def encode_protobuf(batch: list[dict]) -> bytes:
    message = sync_pb2.UpdateBatch(
        updates=[
            sync_pb2.Update(
                topic=r["topic"],
                doc_key=r["doc_key"],
                doc_version=r["doc_version"],
                payload=r["payload"],
                watermark=r["watermark"],
                payload_hash=r["payload_hash"],
            )
            for r in batch
        ]
    )
    # Phoenix's binary push: kind byte, then length-prefixed join_ref, topic and event, then data.
    header = bytes([0, 0, 7, 17]) + b"sync:v1" + b"sync:update_batch"
    return header + message.SerializeToString()


def decode_protobuf(frame: bytes) -> list:
    message = sync_pb2.UpdateBatch.FromString(frame[4 + 7 + 17 :])
    return [(u.watermark, orjson.loads(u.payload)) for u in message.updates]


def per_call_us(fn, arg, seconds: float) -> float:
    """Median of five timed slices of ``seconds / 5`` each (µs per call)."""
    slices = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        end = started + seconds / 5
        while True:
            fn(arg)
            calls += 1
            now = time.perf_counter()
            if now >= end:
                break
        slices.append((now - started) / calls * 1e6)
    return sorted(slices)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=100, help="updates per sync:update_batch frame")
    parser.add_argument("--payload-bytes", type=int, default=300, help="canonical JSON size of each document")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per figure")
    args = parser.parse_args()
    batch = rows(args.updates, args.payload_bytes)
    json_frame, proto_frame = encode_json(batch), encode_protobuf(batch)
    assert [u["watermark"] for u in decode_json(json_frame)] == [w for w, _ in decode_protobuf(proto_frame)]
    result = {
        "updates_per_frame": args.updates,
        "payload_bytes": args.payload_bytes,
        "json": {
            "frame_bytes": len(json_frame.encode()),
            "encode_us": round(per_call_us(encode_json, batch, args.seconds), 1),
            "decode_us": round(per_call_us(decode_json, json_frame, args.seconds), 1),
        },
        "protobuf": {
            "frame_bytes": len(proto_frame),
            "encode_us": round(per_call_us(encode_protobuf, batch, args.seconds), 1),
            "decode_us": round(per_call_us(decode_protobuf, proto_frame, args.seconds), 1),
        },
    }
    for kind in ("json", "protobuf"):
        r = result[kind]
        print(f"{kind:9s} frame={r['frame_bytes']:>7,} B encode={r['encode_us']:>8.1f} µs decode={r['decode_us']:>8.1f} µs")
    path = harness.write_result("wire", result)
    print(f"wrote {path.relative_to(harness.REPO_ROOT)}")


if __name__ == "__main__":
    main()

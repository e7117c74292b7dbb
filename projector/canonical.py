"""Canonical encoding of a document payload, computed once per write: bytes, hash and size.

``projector.payload_hash.canonical_json`` (RFC 8785 via the pure-Python ``rfc8785`` package) is
the definition. It costs ~40 µs for a typical summary, which alone would cap the batched sink
near 25,000 docs/s, so this module takes a fast path through ``orjson`` for the payloads where
the two encoders provably agree and falls back to the definition otherwise:

- no floats anywhere (JCS formats numbers the ECMAScript way; orjson does not, e.g. ``1.0``);
- every integer within ±(2**53-1) (orjson's ``OPT_STRICT_INTEGER`` raises otherwise);
- every object key is an ASCII ``str`` (JCS sorts keys by UTF-16 code units, orjson by code
  points; the orders differ only for keys with characters >= U+E000, and ASCII order is the same);
- only dict, list, str, int, bool and None (anything else: fall back, which raises).

String escaping is identical in both (short escapes for \\b \\t \\n \\f \\r, ``\\u00xx`` for other
control characters, everything else raw UTF-8). ``tests/projector/test_canonical.py`` checks
``encode`` against ``canonical_json`` with hypothesis over arbitrary JSON values.
"""

from dataclasses import dataclass

import orjson

from projector.payload_hash import PayloadHashError, canonical_json, hash_canonical

_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


@dataclass(frozen=True, slots=True)
class CanonicalPayload:
    text: str  # canonical JSON (what is sent to jsonb)
    digest: bytes  # raw 32-byte SHA-256 of the canonical UTF-8 bytes
    size: int  # length of the canonical UTF-8 bytes


def _fast_path_ok(payload) -> bool:
    stack = [payload]
    pop, push = stack.pop, stack.append
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            for key in value:
                if type(key) is not str or not key.isascii():
                    return False
            items = value.values()
        elif kind is list:
            items = value
        else:  # a scalar is only ever the top-level value: nested ones are checked below, never pushed
            return kind is str or kind is int or kind is bool or value is None
        for item in items:
            kind_item = type(item)
            if kind_item is dict or kind_item is list:
                push(item)
            elif kind_item is float:
                return False
            elif not (kind_item is str or kind_item is int or kind_item is bool or item is None):
                return False
    return True


def canonical_bytes(payload) -> bytes:
    """RFC 8785 bytes of ``payload``; equal to ``payload_hash.canonical_json`` for every input."""
    if _fast_path_ok(payload):
        try:
            return orjson.dumps(payload, option=_ORJSON_OPTS)
        except (orjson.JSONEncodeError, TypeError):
            pass  # unsafe integer, lone surrogate, …: let the definition decide (and explain)
    return canonical_json(payload)


def encode(payload) -> CanonicalPayload:
    """Canonicalise once; raises ``PayloadHashError`` for payloads JSON cannot carry exactly."""
    data = canonical_bytes(payload)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # pragma: no cover - both encoders emit UTF-8
        raise PayloadHashError(f"payload is not valid UTF-8: {exc}") from exc
    return CanonicalPayload(text=text, digest=hash_canonical(data), size=len(data))

"""The sink's fast canonical encoder must equal the RFC 8785 definition for every input."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from projector.canonical import canonical_bytes, encode
from projector.payload_hash import PayloadHashError, canonical_json

SAFE = 2**53 - 1
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE, max_value=SAFE)
    | st.integers(min_value=SAFE + 1, max_value=2**64)  # refused by both
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
keys = st.text() | st.sampled_from(["a", "b", "\ue000", "\U0001f600", "é", "A", "_"])
json_values = st.recursive(scalars, lambda children: st.lists(children) | st.dictionaries(keys, children), max_leaves=30)


def outcome(fn, value):
    try:
        return fn(value)
    except PayloadHashError:
        return "refused"


@settings(max_examples=600, deadline=None)
@given(json_values)
def test_fast_encoder_equals_the_definition(value):
    assert outcome(canonical_bytes, value) == outcome(canonical_json, value)


@pytest.mark.parametrize(
    "value",
    [
        {"\ue000": 1, "\U0001f600": 2},  # UTF-16 order differs from code-point order here
        {"x": 1.0, "y": 1e21, "z": -0.0},
        {"s": "\x00\x1f\x7f\u2028\"\\/"},
        {"n": 2**53},
        {"n": -(2**53) + 1},
    ],
)
def test_known_divergence_points(value):
    assert outcome(canonical_bytes, value) == outcome(canonical_json, value)


def test_encode_gives_hash_and_size_of_the_same_bytes():
    value = {"b": [1, "é"], "a": None}
    encoded = encode(value)
    data = canonical_json(value)
    assert encoded.text.encode() == data
    assert encoded.digest == hashlib.sha256(data).digest() and encoded.size == len(data)

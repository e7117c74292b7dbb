"""Hash parity: this client, the server (``projector.payload_hash``) and the shared fixture agree."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from khala_client import hashing

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "docs" / "protocol" / "fixtures" / "payload_hash_vectors.v1.json"
VECTORS = json.loads(FIXTURE.read_text(encoding="utf-8"))["vectors"]


def vector_input(vector):
    return vector["input"] if "input" in vector else json.loads(vector["input_json"])


@pytest.mark.parametrize("vector", [v for v in VECTORS if "error" not in v], ids=lambda v: v["name"])
def test_fixture_vectors_hash_identically(vector):
    value = vector_input(vector)
    assert hashing.canonical_json(value).decode("utf-8") == vector["canonical_json"]
    digest = hashing.payload_hash(value)
    assert hashing.to_text(digest) == vector["sha256"]
    assert hashing.to_wire(digest) == vector["base64"]
    assert hashing.verify(value, vector["base64"])


@pytest.mark.parametrize("vector", [v for v in VECTORS if "error" in v], ids=lambda v: v["name"])
def test_fixture_rejections_are_refused(vector):
    with pytest.raises(hashing.PayloadHashError) as exc:
        hashing.payload_hash(vector_input(vector))
    assert exc.value.code == vector["error"]
    assert not hashing.verify(vector_input(vector), "AAAA")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=25,
)


@given(json_values)
def test_client_and_server_hash_the_same(value):
    from projector import payload_hash as server

    try:
        expected = server.payload_hash(value)
    except server.PayloadHashError:
        with pytest.raises(hashing.PayloadHashError):
            hashing.payload_hash(value)
        return
    assert hashing.payload_hash(value) == expected


def test_verify_rejects_tampering_and_bad_base64():
    wire = hashing.to_wire(hashing.payload_hash({"a": 1}))
    assert hashing.verify({"a": 1}, wire)
    assert not hashing.verify({"a": 2}, wire)
    assert not hashing.verify({"a": 1}, None)
    assert not hashing.verify({"a": 1}, "%%%not base64")
    assert not hashing.verify({"a": math.nan}, wire)

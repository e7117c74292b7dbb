"""Canonical payload hashing (KHALA-004; doctrine in docs/protocol/HASHING.md).

Every vector of docs/protocol/fixtures/payload_hash_vectors.v1.json is recomputed with
``projector.payload_hash``. The fixture's expected canonical forms were written from RFC 8785's
rules and examples (and upstream's fixture), not produced by the library under test; the five
upstream vectors keep upstream's hashes, which proves payloads hashed by Khala v1 hash the same."""

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector.payload_hash import (
    PayloadHashError,
    canonical_json,
    from_wire,
    hash_canonical,
    payload_hash,
    to_text,
    to_wire,
)

FIXTURE = Path(__file__).resolve().parent.parent / "docs" / "protocol" / "fixtures" / "payload_hash_vectors.v1.json"
DOC = json.loads(FIXTURE.read_text(encoding="utf-8"))
VECTORS = DOC["vectors"]
HASHED = [v for v in VECTORS if "error" not in v]
REJECTED = [v for v in VECTORS if "error" in v]

# Upstream's khala_payload_hash_vectors.v1.json (docs/protocol/testdata/ in OpenAgentsInc/openagents).
UPSTREAM = {
    "sorted-flat-object": "sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777",
    "nested-sync-payload": "sha256:bf367b161129295cb3fab72a7eae88f8602207d4fc8fcf4510c4d5fa0bcb5317",
    "bool-null-array": "sha256:b5ef670c5e47639c44a0ed4ba6901df6b0e7f59e41e4102bb26e76fb1f4af946",
    "string-escaping": "sha256:5da82c8c6bf15cceb33ae20ba89c0adb33d030c5d65824d138936fae7a1ab3d8",
    "array-of-objects": "sha256:700bae9e6bc89b1810ee4cc08c459cc2a02ccb13fcde1949b10adfa031e8212d",
}

ERROR_CODES = {"non_finite_number", "unsafe_integer", "invalid_unicode", "not_json"}


def vector_input(vector):
    """The vector's input value: ``input`` as loaded, or ``input_json`` parsed (NaN/Infinity allowed)."""
    if "input" in vector:
        return vector["input"]
    return json.loads(vector["input_json"])


def test_fixture_header_and_shape():
    assert DOC["version"] == "khala.payload_hash.v1"
    assert DOC["algorithm"] == "sha256"
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    assert len(HASHED) >= 12
    for vector in VECTORS:
        assert ("input" in vector) != ("input_json" in vector), vector["name"]
        assert vector["source"] in {"upstream", "rfc8785", "khala"}
        assert set(vector) <= {"name", "source", "description", "input", "input_json", "canonical_json", "sha256",
                               "base64", "error", "exact_numbers_only"}, vector["name"]
        if "error" in vector:
            assert vector["error"] in ERROR_CODES
            assert not {"canonical_json", "sha256", "base64"} & set(vector)
        else:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", vector["sha256"])


def test_fixture_covers_the_required_cases():
    names = {v["name"] for v in VECTORS}
    assert set(UPSTREAM) <= names
    for required in (
        "rfc8785-key-sorting-utf16",  # astral-plane keys, UTF-16 order
        "astral-key-before-private-use",
        "non-ascii-strings-raw-utf8",
        "control-characters",
        "safe-integer-bounds",
        "floats-es6-form",
        "negative-zero",
        "deep-nesting",
        "reject-nan",
        "reject-infinity",
        "reject-integer-2pow53-plus-1",
        "reject-float-2pow53",
        "reject-lone-surrogate-key",
    ):
        assert required in names


@pytest.mark.parametrize("vector", HASHED, ids=[v["name"] for v in HASHED])
def test_vector_canonical_form_and_hash(vector):
    canonical = canonical_json(vector_input(vector))
    assert canonical.decode("utf-8") == vector["canonical_json"]
    digest = payload_hash(vector_input(vector))
    assert digest == hashlib.sha256(vector["canonical_json"].encode("utf-8")).digest()
    assert to_text(digest) == vector["sha256"]
    assert to_wire(digest) == vector["base64"]
    assert from_wire(vector["base64"]) == digest


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_vectors_still_hash_the_same(name):
    vector = next(v for v in VECTORS if v["name"] == name)
    assert vector["source"] == "upstream"
    assert to_text(payload_hash(vector_input(vector))) == UPSTREAM[name]


@pytest.mark.parametrize("vector", REJECTED, ids=[v["name"] for v in REJECTED])
def test_vector_rejected_with_its_code(vector):
    with pytest.raises(PayloadHashError) as excinfo:
        payload_hash(vector_input(vector))
    assert excinfo.value.code == vector["error"]
    assert str(excinfo.value)  # a message a human can act on


@pytest.mark.parametrize(
    "payload, code",
    [
        ({1: "x"}, "not_json"),
        ({"a": b"bytes"}, "not_json"),
        ({"a": {1, 2}}, "not_json"),
        ({"\udfff": 1}, "invalid_unicode"),  # a lone surrogate in a key once escaped as UnicodeEncodeError
        ({"a": {"\ud800x": 1}}, "invalid_unicode"),
        ({"a": [float("nan")]}, "non_finite_number"),
        ({"a": -(2**53)}, "unsafe_integer"),
    ],
)
def test_non_json_values_raise_payload_hash_error_only(payload, code):
    with pytest.raises(PayloadHashError) as excinfo:
        canonical_json(payload)
    assert excinfo.value.code == code


def test_wire_and_text_forms():
    digest = payload_hash({"a": 1})
    assert len(digest) == 32
    assert to_text(digest) == "sha256:" + digest.hex()
    assert to_wire(digest) == base64.b64encode(digest).decode("ascii")
    assert to_wire(None) is None
    assert hash_canonical(canonical_json({"a": 1})) == digest
    with pytest.raises(ValueError):
        from_wire("not base64!")


# ---- properties -------------------------------------------------------------------------------

keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # no lone surrogates
    max_size=6,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    # Floats in [2**53, 1e21) are refused (see test_floats_that_read_back_as_unsafe_integers_...).
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not 2**53 <= abs(x) < 1e21)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def reorder(value, rng):
    """The same JSON value with every object's key insertion order shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reorder(v, rng) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


@given(value=json_values, rng=st.randoms(use_true_random=False))
def test_canonical_form_is_stable_under_key_permutation(value, rng):
    assert canonical_json(reorder(value, rng)) == canonical_json(value)
    assert payload_hash(reorder(value, rng)) == payload_hash(value)


@given(value=json_values)
def test_hash_of_parsed_canonical_form_is_the_same(value):
    canonical = canonical_json(value)
    assert canonical_json(json.loads(canonical)) == canonical
    assert payload_hash(json.loads(canonical)) == payload_hash(value)


def utf16_key(text):
    return text.encode("utf-16-be")


@given(value=st.dictionaries(keys, st.integers(min_value=0, max_value=9), max_size=8))
def test_object_keys_come_out_in_utf16_code_unit_order(value):
    pairs = json.loads(canonical_json(value), object_pairs_hook=lambda items: [k for k, _ in items])
    assert pairs == sorted(value, key=utf16_key)


@given(number=st.integers(min_value=2**53) | st.integers(max_value=-(2**53)))
def test_every_unsafe_integer_is_rejected(number):
    with pytest.raises(PayloadHashError) as excinfo:
        payload_hash({"n": number})
    assert excinfo.value.code == "unsafe_integer"


@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_that_read_back_as_unsafe_integers_are_rejected_all_others_round_trip(number):
    """JCS writes integral floats below 1e21 as plain digits; at or above 2**53 those digits parse
    back as an unsafe integer, so the writer refuses them rather than emit unhashable text."""
    if 2**53 <= abs(number) < 1e21:
        with pytest.raises(PayloadHashError) as excinfo:
            canonical_json([number])
        assert excinfo.value.code == "unsafe_integer"
    else:
        canonical = canonical_json([number])
        assert canonical_json(json.loads(canonical)) == canonical


def test_long_digit_strings_and_16_digit_integers_are_not_mistaken_for_unsafe_floats():
    payload = {"id": "12345678901234567890", "n": 2**53 - 1, "f": 1e21, "g": 2.0**53 - 1}
    assert canonical_json(payload) == (
        b'{"f":1e+21,"g":9007199254740991,"id":"12345678901234567890","n":9007199254740991}'
    )

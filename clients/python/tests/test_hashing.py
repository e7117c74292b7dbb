"""Hash parity against INDEPENDENT oracles: the shared fixture file, and for generated values the
JavaScript canonicalisation of ``static/live/canonicalize.js`` (a separate implementation of RFC
8785, run by node). The server's ``projector.payload_hash`` wraps the same Python library as this
client, so comparing the two would prove nothing; the server is checked against the fixture in
``tests/test_payload_hash.py``."""

import hashlib
import json
import math
import subprocess
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


JS_ORACLE = """
import { createInterface } from "node:readline";
import canonicalize from "%s";
for await (const line of createInterface({ input: process.stdin })) {
  process.stdout.write(JSON.stringify(canonicalize(JSON.parse(line))) + "\\n");
}
""" % (REPO / "static" / "live" / "canonicalize.js").as_uri()


class JavaScriptCanonicalizer:
    """One node process answering one JSON value per line with its canonical text."""

    def __init__(self):
        self.process = subprocess.Popen(
            ["node", "--no-warnings", "--input-type=module", "-e", JS_ORACLE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
        )

    def canonical(self, value) -> str:
        self.process.stdin.write(json.dumps(value) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def javascript():
    oracle = JavaScriptCanonicalizer()
    yield oracle
    oracle.close()


def test_client_and_javascript_canonicalise_the_same(javascript):
    @given(json_values)
    def check(value):
        try:
            digest = hashing.payload_hash(value)
        except hashing.PayloadHashError:
            return  # refusals are checked against the fixture's error vectors
        text = javascript.canonical(value)
        assert hashing.canonical_json(value).decode("utf-8") == text
        assert digest == hashlib.sha256(text.encode("utf-8")).digest()

    check()


def test_verify_rejects_tampering_and_bad_base64():
    wire = hashing.to_wire(hashing.payload_hash({"a": 1}))
    assert hashing.verify({"a": 1}, wire)
    assert not hashing.verify({"a": 2}, wire)
    assert not hashing.verify({"a": 1}, None)
    assert not hashing.verify({"a": 1}, "%%%not base64")
    assert not hashing.verify({"a": math.nan}, wire)

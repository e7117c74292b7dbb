"""Property: whatever string arrives, the verifier answers with a principal or TokenRejected, never another error."""

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.tokens.crafting import KEYS, NOW, b64, craft, valid_claims
from tokens.verifier import REASONS, TokenRejected, verify_sync_token

KHALA = {"SIGNING_KEYS": KEYS}
VALID = craft(valid_claims())
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="

segment = st.one_of(
    st.text(alphabet=B64_ALPHABET, max_size=80),
    st.binary(max_size=60).map(b64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ).map(lambda value: b64(repr(value).replace("'", '"').encode())),
)
jwt_shaped = st.tuples(segment, segment, segment).map(".".join)


def _outcome(token):
    try:
        return verify_sync_token(token, now=NOW)
    except TokenRejected as exc:
        assert exc.reason in REASONS
        return exc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), jwt_shaped, st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_garbage_is_always_token_rejected(token):
    with override_settings(KHALA=KHALA):
        assert isinstance(_outcome(token), TokenRejected)


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.characters(codec="ascii"))
def test_a_one_character_mutation_is_rejected_or_changes_nothing(position, char):
    mutated = VALID[:position] + char + VALID[position + 1 :]
    with override_settings(KHALA=KHALA):
        original = verify_sync_token(VALID, now=NOW)
        outcome = _outcome(mutated)
    # base64url ignores the spare low bits of a final character, so rarely a mutation decodes to
    # the same bytes: then it must be the very same principal, never a different one.
    assert isinstance(outcome, TokenRejected) or outcome == original


@pytest.mark.parametrize("token", [VALID + "\x00", "\u202e" + VALID, VALID.replace(".", "\uff0e")])
def test_unicode_tricks_are_rejected(token):
    with override_settings(KHALA=KHALA):
        assert isinstance(_outcome(token), TokenRejected)

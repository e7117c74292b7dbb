"""Reconnect backoff: exponential, capped, then full jitter; resets only after a stable connection."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from khala_client.backoff import HINT_SPREAD, Backoff


def test_ceilings_double_until_the_cap():
    b = Backoff(base=0.5, cap=4.0, rng=lambda: 0.999999)
    delays = [b.next_delay() for _ in range(7)]
    assert [round(d, 3) for d in delays] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_full_jitter_spans_zero_to_ceiling():
    b = Backoff(base=1.0, cap=8.0, rng=lambda: 0.0)
    assert [b.next_delay() for _ in range(5)] == [0.0] * 5
    # cap first, then jitter: at a capped attempt the delay is rng * cap, not cap
    b = Backoff(base=1.0, cap=8.0, rng=lambda: 0.25)
    assert [b.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


@given(st.floats(0.01, 5), st.floats(5, 120), st.integers(0, 200), st.floats(0, 0.9999999))
def test_delay_is_within_the_capped_ceiling(base, cap, attempt, r):
    b = Backoff(base=base, cap=cap, rng=lambda: r)
    b.attempt = attempt
    delay = b.next_delay()
    assert 0 <= delay < min(cap, base * 2**attempt) + 1e-9


def test_jitter_spreads_many_clients():
    delays = [Backoff(base=0.5, cap=30, rng=random.Random(seed).random).next_delay() for seed in range(200)]
    assert max(delays) - min(delays) > 0.4  # uniform over [0, 0.5): the storm is spread
    assert len({round(d, 3) for d in delays}) > 150


def test_resets_only_after_a_stable_connection():
    b = Backoff(base=1, cap=30, rng=lambda: 0.5, stable_after=10)
    for _ in range(4):
        b.next_delay()
    b.connected(100.0)
    b.disconnected(103.0)  # flapped after 3 s: keep growing
    assert b.attempt == 4
    b.connected(200.0)
    b.disconnected(215.0)  # stayed up 15 s: start over
    assert b.attempt == 0


def test_rejects_nonsense_parameters():
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=5, cap=1)


@given(st.floats(0.001, 3600), st.integers(0, 20), st.floats(0, 0.9999999))
def test_a_server_hint_is_a_floor_spread_by_at_most_a_quarter(retry_after, attempt, r):
    b = Backoff(base=0.5, cap=30, rng=lambda: r)
    b.attempt = attempt
    own = r * b.ceiling()
    delay = b.next_delay(retry_after)
    assert delay >= retry_after and delay >= own
    assert delay < max(own, retry_after * (1 + HINT_SPREAD)) + 1e-9
    assert b.attempt == attempt + 1  # a hinted attempt still counts: the backoff keeps growing


def test_hinted_delays_of_many_clients_do_not_return_in_lockstep():
    delays = [Backoff(base=0.5, cap=30, rng=random.Random(seed).random).next_delay(10.0) for seed in range(200)]
    assert min(delays) >= 10.0 and max(delays) < 12.5
    assert len({round(d, 2) for d in delays}) > 100

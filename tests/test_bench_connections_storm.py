"""bench/connections_storm.py's verdicts: how the reports of its processes become figures and
PASS/FAIL targets (pure functions, no service), its retry-hint reader, and its option checks."""

import asyncio

import orjson
import pytest

from bench import connections, connections_storm
from bench.connections_storm import (
    cpu_share_by_second, delivery_gaps, live_latency_by_period, live_latency_by_second, retry_hint, storm_admission, targets,
)


def _frame(*parts) -> str:
    return orjson.dumps(list(parts)).decode()


def test_retry_hint_of_a_refused_connection_and_of_a_refused_join():
    push = _frame(None, None, "phoenix", "sync:error", {"code": "rate_limited", "limit": "connects_per_ip", "retry_after_ms": 1500})
    reply = _frame("1", "1", "sync:v1", "phx_reply", {"status": "error", "response": {"code": "rate_limited", "retry_after_ms": 20}})
    assert retry_hint(push) == 1500
    assert retry_hint(reply) == 20


@pytest.mark.parametrize("text", [
    _frame(None, None, "phoenix", "sync:error", {"code": "unauthorized", "retry_after_ms": 5}),
    _frame(None, None, "phoenix", "sync:error", {"code": "rate_limited"}),
    _frame(None, None, "phoenix", "sync:error", {"code": "rate_limited", "retry_after_ms": True}),
    _frame(None, None, "phoenix", "sync:error", "rate_limited retry_after_ms"),
    "not json retry_after_ms",
    "[1]",
])
def test_no_retry_hint_in_anything_else(text):
    assert retry_hint(text) is None


def test_hint_tap_reads_along_and_passes_every_frame_and_attribute_through():
    class FakeSocket:
        close_code = 4429

        def __init__(self, texts):
            self.texts = texts

        async def __aiter__(self):
            for text in self.texts:
                yield text

    texts = [
        _frame(None, None, "phoenix", "sync:error", {"code": "rate_limited", "retry_after_ms": 700}),
        _frame("1", "1", "sync:v1", "phx_reply", {"status": "ok", "response": {}}),
    ]
    attempt = {"hint": None}
    tap = connections_storm.HintTap(FakeSocket(texts), attempt)

    async def read():
        return [text async for text in tap]

    assert asyncio.run(read()) == texts
    assert attempt["hint"] == 700
    assert tap.close_code == 4429


COMMITS = {1: 100.0, 2: 101.0, 3: 102.0, 4: 103.0}  # watermark -> commit time; drop at 100.5, storm over at 102.0


def test_latency_by_the_period_of_each_update_commit():
    sockets = [{"1": 100.010, "2": 101.200, "3": 102.050, "4": 103.005}, {"1": 100.030, "2": 101.100, "3": 102.010, "4": 103.001}]
    figures = live_latency_by_period(COMMITS, sockets, drop_at=100.5, storm_end=102.0)
    assert figures["baseline"] == {"count": 2, "p50_ms": pytest.approx(10, abs=0.01), "p99_ms": pytest.approx(30, abs=0.01), "max_ms": pytest.approx(30, abs=0.01)}
    assert figures["storm"]["count"] == 4 and figures["storm"]["max_ms"] == pytest.approx(200, abs=0.01)
    assert figures["after"]["count"] == 2 and figures["after"]["max_ms"] == pytest.approx(5, abs=0.01)


def test_latency_by_second_from_the_drop():
    sockets = [{"1": 100.010, "2": 101.200, "3": 102.050, "4": 103.005}]
    assert live_latency_by_second(COMMITS, sockets, drop_at=100.5) == [
        {"second": -1, "count": 1, "p99_ms": 10.0},
        {"second": 0, "count": 1, "p99_ms": 200.0},
        {"second": 1, "count": 1, "p99_ms": 50.0},
        {"second": 2, "count": 1, "p99_ms": 5.0},
    ]


def test_cpu_share_by_second_from_the_drop():
    samples = [(99.5, {"workers": 0.0, "clients": 0.0}), (100.5, {"workers": 0.5, "clients": 0.1}),
               (101.0, {"workers": 1.5, "clients": 0.2}), (101.5, {"workers": 2.5, "clients": 0.3}), (102.0, {"workers": 2.6, "clients": 0.3})]
    # second 0 runs from 100.5 to 101.5 (busy workers), second 1 from 101.5 to 102.5 (no closing sample: left out)
    assert cpu_share_by_second(samples, drop_at=100.5) == [
        {"second": -1, "workers": 0.5, "clients": 0.1},
        {"second": 0, "workers": 2.0, "clients": 0.2},
    ]
    assert cpu_share_by_second(samples[:1], drop_at=100.5) == []


def test_a_period_without_updates_has_no_figures():
    assert live_latency_by_period(COMMITS, [], 100.5, 102.0)["storm"] == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_every_update_in_order_is_no_gap():
    sockets = [{"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}] * 3
    assert delivery_gaps(COMMITS, sockets) == {"updates_written": 4, "missing": 0, "out_of_order": 0, "sockets_with_gaps": 0, "examples": []}


def test_a_missing_update_and_an_out_of_order_arrival_are_gaps():
    sockets = [
        {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0},
        {"1": 1.0, "2": 1.0, "4": 1.0},  # 3 never arrived
        {"1": 1.0, "3": 1.0, "2": 1.0, "4": 1.0},  # 2 after 3
    ]
    gaps = delivery_gaps(COMMITS, sockets)
    assert (gaps["missing"], gaps["out_of_order"], gaps["sockets_with_gaps"]) == (1, 1, 2)
    assert gaps["examples"] == [
        {"socket": 1, "missing": [3], "missing_count": 1, "out_of_order": 0},
        {"socket": 2, "missing": [], "missing_count": 0, "out_of_order": 1},
    ]


def _client(live_again, *attempts):
    return {"live_again": live_again, "attempts_after_drop": [["socket_closed", None], *map(list, attempts)]}


def test_admitted_clients_and_clients_told_when_to_retry_meet_the_target():
    records = [
        _client(1.0),  # admitted at once (its only error is the drop itself)
        _client(9.0, ("rate_limited", 500), ("rate_limited", 1200)),
        _client(None, ("rate_limited", 800)),  # still being refused, with a hint, at the deadline
    ]
    admission = storm_admission(records)
    assert admission["clients_missing_the_target"] == 0
    assert (admission["admitted_without_refusal"], admission["admitted_after_rate_limited_with_hint"]) == (1, 1)
    assert admission["failed_attempts_by_code"] == {"rate_limited": 3}


def test_a_failed_attempt_without_a_hint_or_a_silent_never_admitted_client_misses_the_target():
    records = [
        _client(3.0, ("rate_limited", 500), ("socket_closed", None)),
        _client(None),
        _client(None, ("rate_limited", 500), ("connection_failed", None)),
    ]
    admission = storm_admission(records)
    assert admission["clients_missing_the_target"] == 3
    assert admission["clients_with_a_failed_attempt_without_hint"] == 2
    assert admission["never_live_again_without_a_last_hint"] == 2
    assert admission["failed_attempts_by_code"] == {
        "rate_limited": 2, "socket_closed (no retry hint)": 1, "connection_failed (no retry hint)": 1}


def _targets(p99=100.0, missing=0, subscribed=100, db_peak=8, missing_target=0):
    latency = {"count": 10, "p50_ms": 5.0, "p99_ms": p99, "max_ms": p99}
    gaps = {"missing": missing, "out_of_order": 0}
    background = {"sockets_requested": 100, "sockets_subscribed": subscribed, "closed_early": []}
    return targets(latency, gaps, background, db_peak, 8, {"clients_missing_the_target": missing_target})


def test_targets_pass_and_each_fails_on_its_own():
    assert all(_targets().values())
    assert _targets(p99=250.0) == {**_targets(), "background_live_p99_during_storm_under_250ms": False}
    assert _targets(missing=1)["background_sockets_got_every_update_in_order"] is False
    assert _targets(subscribed=99)["background_sockets_got_every_update_in_order"] is False
    assert _targets(db_peak=9)["db_connections_within_pools_sum"] is False
    assert _targets(missing_target=1)["every_storm_client_admitted_or_told_rate_limited_with_retry_hint"] is False


def test_without_background_sockets_their_targets_are_not_measured():
    verdicts = targets(None, None, {"sockets_requested": 0}, 8, 8, {"clients_missing_the_target": 0})
    assert verdicts["background_live_p99_during_storm_under_250ms"] is None
    assert verdicts["background_sockets_got_every_update_in_order"] is None


@pytest.mark.parametrize("option, value, message", [
    ("--background-sockets", "-1", "--background-sockets must be 0 or more, got -1"),
    ("--update-rate", "0", "--update-rate must be positive, got 0.0"),
    ("--baseline-seconds", "-2", "--baseline-seconds must be 0 or more, got -2.0"),
    ("--clients", "0", "--clients must be at least 1, got 0"),
    ("--client-nice", "20", "--client-nice must be 0..19, got 20"),
])
def test_bad_options_are_refused_before_anything_starts(option, value, message):
    with pytest.raises(SystemExit, match=message):
        connections.main(["--storm", option, value])

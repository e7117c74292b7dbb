"""The drain loop's wait between passes grows with the host's CPU pressure (``projector.linger``)."""

import pytest

from projector import linger as linger_module
from projector.linger import PRESSURE_HIGH, PRESSURE_LOW, CpuPressure, Linger, linger_for
from tests.support.clock import FakeClock


def psi_file(tmp_path, stalled_us: int):
    path = tmp_path / "cpu"
    path.write_text(
        f"some avg10=0.00 avg60=0.00 avg300=0.00 total={stalled_us}\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    return path


def test_the_wait_is_the_minimum_with_headroom_and_grows_to_the_maximum_at_saturation():
    assert linger_for(0.0, 0.01, 0.1) == 0.01
    assert linger_for(PRESSURE_LOW, 0.01, 0.1) == 0.01
    assert linger_for((PRESSURE_LOW + PRESSURE_HIGH) / 2, 0.01, 0.1) == pytest.approx(0.055)
    assert linger_for(PRESSURE_HIGH, 0.01, 0.1) == pytest.approx(0.1)
    assert linger_for(1.0, 0.01, 0.1) == pytest.approx(0.1)


def test_without_pressure_figures_or_a_larger_maximum_the_wait_stays_the_minimum():
    assert linger_for(None, 0.01, 0.1) == 0.01  # no PSI on this host
    assert linger_for(1.0, 0.01, 0.0) == 0.01  # OUTBOX_LINGER_MAX_SECONDS = 0: fixed
    assert linger_for(1.0, 0.02, 0.01) == 0.02


def test_the_pressure_is_the_lower_stalled_share_of_the_last_two_intervals(tmp_path):
    clock = FakeClock()
    step = linger_module.READ_INTERVAL_SECONDS
    psi_file(tmp_path, 1_000_000)
    pressure = CpuPressure(str(tmp_path / "cpu"), monotonic=clock)
    assert pressure.current() == 0.0  # no interval yet

    clock.now += step
    psi_file(tmp_path, 1_000_000 + int(step * 1e6))  # saturated for one interval: not yet counted
    assert pressure.current() == 0.0

    clock.now += step / 2  # within the read interval: no new reading
    psi_file(tmp_path, 9_000_000)
    assert pressure.current() == 0.0

    clock.now += step / 2
    psi_file(tmp_path, 1_000_000 + int(step * 1e6) + int(step * 0.9e6))  # 0.9 of the second interval
    assert pressure.current() == pytest.approx(0.9)  # min(1.0, 0.9)

    clock.now += step
    psi_file(tmp_path, 1_000_000 + int(step * 1e6) + int(step * 0.9e6) + int(step * 0.2e6))  # a quiet interval
    assert pressure.current() == pytest.approx(0.2)


def test_a_host_without_psi_gives_no_pressure_and_the_loop_keeps_the_minimum(tmp_path):
    assert CpuPressure(str(tmp_path / "absent")).current() is None
    unreadable = tmp_path / "garbled"
    unreadable.write_text("some avg10=0.00 total=lots\n")
    assert CpuPressure(str(unreadable)).current() is None
    assert Linger(0.01, 0.1, CpuPressure(str(tmp_path / "absent")))() == 0.01


def test_the_loop_wait_follows_sustained_pressure_only(tmp_path):
    clock = FakeClock()
    step = linger_module.READ_INTERVAL_SECONDS
    stalled = 0
    psi_file(tmp_path, stalled)
    wait = Linger(0.01, 0.1, CpuPressure(str(tmp_path / "cpu"), monotonic=clock))
    assert wait() == 0.01
    for share, expected in [(1.0, 0.01), (0.3, 0.01), (1.0, 0.01), (0.99, 0.1), (1.0, 0.1), (0.5, 0.01)]:
        # a spike of one interval leaves the wait alone; two saturated intervals in a row raise it
        clock.now += step
        stalled += int(step * share * 1e6)
        psi_file(tmp_path, stalled)
        assert wait() == pytest.approx(expected), (share, expected)

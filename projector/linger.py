"""How long the projector worker waits between drain passes: short with CPU to spare, longer when
the host's CPUs are saturated.

A drain pass costs about the same whether it folds 5 entries or 50 (a handful of statements, one
topic-row lock, one COMMIT), so the worker's CPU per projected change falls as its batches grow,
and its batches grow with the wait between passes. Where the worker shares CPUs with the authority
(the writers and PostgreSQL on one host), every CPU millisecond it saves goes to the commands. A
fixed wait has to choose: at 10 ms, the outbox path sustained 0.55–0.62 of the authority-only command
rate with 16 writers on 2 cores, at 100 ms 0.87–1.02, but 100 ms is lag that nobody should pay on a
host with CPU to spare (bench/README.md, "Durable projection").

So the wait follows the host's CPU pressure: Linux's pressure stall information
(``/proc/pressure/cpu``, the ``some`` line) counts the time during which at least one runnable task
waited for a CPU. Its share of wall time stays near 1 on a saturated host (0.97–1.00 with the
writers of bench/commands.py unpaced, 2 cores) and mostly below 0.95 with the writers at half that
rate (0.5–0.93, with spikes to 1 lasting up to a second or so); so the wait grows only when the
share was high in each of the last two half-second intervals. The wait is ``OUTBOX_WAKE_LINGER_SECONDS`` up to ``PRESSURE_LOW``, then grows linearly to
``OUTBOX_LINGER_MAX_SECONDS`` at ``PRESSURE_HIGH``. Lag grows only while the CPUs are saturated,
where a projection that took CPU from the commands would slow them down.

Where PSI is not available (not Linux, an older kernel, a sandbox that hides it), or with
``OUTBOX_LINGER_MAX_SECONDS`` at 0 or below the minimum, the wait is fixed at the minimum.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from projector import metrics

PSI_CPU_PATH = "/proc/pressure/cpu"
# The share of time some task waited for a CPU from which the wait grows, and at which it is longest.
PRESSURE_LOW = 0.95
PRESSURE_HIGH = 0.99
# The pressure is read at most this often; the share is over the time since the previous reading.
READ_INTERVAL_SECONDS = 0.5


class CpuPressure:
    """How saturated this host's CPUs have been: the share of wall time in which at least one task
    waited for a CPU, in each of the last two intervals between readings of ``/proc/pressure/cpu``,
    and the lower of the two (None where PSI is unavailable). So a second of saturation counts, a
    spike of half a second does not."""

    def __init__(self, path: str = PSI_CPU_PATH, monotonic: Callable[[], float] = time.monotonic):
        self.path = path
        self.monotonic = monotonic
        first = self._read()
        self._readings: deque | None = deque([first], maxlen=3) if first is not None else None
        self.share = 0.0

    def _read(self) -> tuple[float, int] | None:
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith("some "):
                        return self.monotonic(), int(line.rsplit("total=", 1)[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def current(self) -> float | None:
        """The lower share of the last two intervals of at least ``READ_INTERVAL_SECONDS``."""
        readings = self._readings
        if readings is None:
            return None
        if self.monotonic() - readings[-1][0] >= READ_INTERVAL_SECONDS:
            reading = self._read()
            if reading is None:
                self._readings = None
                return None
            readings.append(reading)
            shares = [
                min(max((stalled - stalled_before) / ((at - before) * 1e6), 0.0), 1.0)
                for (before, stalled_before), (at, stalled) in zip(readings, list(readings)[1:])
            ]
            self.share = min(shares) if len(shares) == 2 else 0.0
            metrics.CPU_PRESSURE.set(self.share)
        return self.share


def linger_for(pressure: float | None, minimum: float, maximum: float) -> float:
    """The wait between passes at CPU ``pressure`` (see the module docstring)."""
    if pressure is None or maximum <= minimum:
        return minimum
    grown = min(max((pressure - PRESSURE_LOW) / (PRESSURE_HIGH - PRESSURE_LOW), 0.0), 1.0)
    return minimum + (maximum - minimum) * grown


class Linger:
    """The drain loop's wait: ``linger_for`` the pressure now, published as a gauge."""

    def __init__(self, minimum: float, maximum: float, pressure: CpuPressure | None = None):
        self.minimum = minimum
        self.maximum = maximum
        self.pressure = pressure if pressure is not None else (CpuPressure() if maximum > minimum else None)

    def __call__(self) -> float:
        seconds = linger_for(self.pressure.current() if self.pressure is not None else None, self.minimum, self.maximum)
        metrics.OUTBOX_LINGER.set(seconds)
        return seconds

"""What the admin shows about live delivery: connections, subscribers, stale cursors, delivery lag.

Placeholder until the delivery workers expose their figures: returns None, and the pages say
"n/a — no delivery worker has reported".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeliveryStatus:
    source: str  # one sentence saying where the figures come from and what they cover
    connections: int
    subscribers: dict[str, int] = field(default_factory=dict)
    stale_cursors_last_hour: dict[str, int] = field(default_factory=dict)
    delivery_lag: dict[str, dict] = field(default_factory=dict)


def delivery_status() -> DeliveryStatus | None:
    return None

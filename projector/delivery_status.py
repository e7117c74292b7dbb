"""What the admin shows about live delivery: connections, subscribers, stale cursors, delivery lag.

Scope, said on every page that shows these figures: **the worker process that serves the admin
page**. Delivery keeps no shared state by design (sockets never touch the database; Redis carries
only hints), so there is nothing cluster-wide to read here. Cluster-wide figures are the
Prometheus sums over every worker's ``/metrics`` (``docs/ops/grafana-khala.json``). Under
``make run`` one process serves everything, so there the figures are complete.

Sources: the process's fan-out hubs (``sync.hub``: one per event loop; open sessions and the
followers of each topic) and the process's Prometheus collectors (``sync.metrics``: stale cursors
by reason since the process started, the live delivery lag histogram). Reading the hub from the
admin's thread is a racy snapshot of a few set sizes, which is all a dashboard needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SOURCE = "this worker process only (pid {pid}); sum every worker's /metrics for the cluster"


@dataclass(frozen=True)
class DeliveryStatus:
    source: str  # one sentence saying where the figures come from and what they cover
    connections: int
    subscribers: dict[str, int] = field(default_factory=dict)
    stale_cursors_by_reason: dict[str, int] = field(default_factory=dict)
    delivery_lag: dict[str, float] = field(default_factory=dict)  # {"p50_ms", "p99_ms", "count"}


def _hubs():
    try:
        from sync import hub as hub_module
    except ImportError:  # delivery not installed in this build
        return []
    futures = list(getattr(hub_module, "_hubs", {}).values())
    return [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]


def _snapshot(collection):
    for _ in range(3):  # the event loop may mutate it while we copy; retry a couple of times
        try:
            return list(collection)
        except RuntimeError:
            continue
    return []


def _counter_values(counter, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels.get(label, "")] = int(sample.value)
    return out


def _histogram_quantiles(histogram) -> dict[str, float]:
    """p50/p99 (upper bucket bounds) of a process-local histogram since start; {} when empty."""
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                count = sample.value
    if not count:
        return {}
    buckets.sort()

    def quantile(q: float) -> float:
        for bound, cumulative in buckets:
            if cumulative >= q * count:
                return bound
        return float("inf")

    return {"p50_ms": round(quantile(0.5) * 1000, 1), "p99_ms": round(quantile(0.99) * 1000, 1), "count": int(count)}


def delivery_status() -> DeliveryStatus | None:
    """Figures of this process, or None when delivery is not importable."""
    try:
        from sync import metrics
    except ImportError:
        return None
    connections = 0
    subscribers: dict[str, int] = {}
    for hub in _hubs():
        connections += len(_snapshot(hub.sessions))
        for topic, feed in _snapshot(hub.feeds.items()):
            subscribers[topic] = subscribers.get(topic, 0) + len(_snapshot(feed.sessions))
    lag = _histogram_quantiles(metrics.LIVE_DELIVERY_LAG)
    return DeliveryStatus(
        source=SOURCE.format(pid=os.getpid()),
        connections=connections,
        subscribers=subscribers,
        stale_cursors_by_reason=_counter_values(metrics.STALE_CURSORS, "reason"),
        delivery_lag=lag,
    )

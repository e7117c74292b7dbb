"""What the admin shows about live delivery: connections, subscribers, stale cursors, delivery lag.

Scope, said on every page that shows these figures (``DeliveryStatus.source``):

- **With Redis** (``REDIS_URL``; every multi-worker deployment): connections and subscribers are
  summed over the live workers' presence records, and the per-topic stale-cursor count of the last
  hour over the per-minute buckets every worker increments (``sync.presence``, over the bus's keys). Cluster-wide.
- **Without Redis** (the embedded default of ``make run``: one process) or when Redis cannot be
  read: the figures of the process serving the admin page (its fan-out hubs and their in-memory
  stale-cursor buckets), and the page says so.

Always per process: stale cursors by reason since start and the live delivery lag quantiles come
from this process's Prometheus collectors (``sync.metrics``); cluster-wide, those are the
Prometheus sums over every worker's ``/metrics`` (``docs/ops/grafana-khala.json``). Reading a hub
from the admin's thread is a racy snapshot of a few set sizes, which is all a dashboard needs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from django.conf import settings

from khala_project.bus import ShardReadError
from sync import metrics
from sync.hub import running_hubs
from sync.presence import read_cluster

log = logging.getLogger(__name__)

CLUSTER_SOURCE = (
    "all {workers} live worker{plural} ({servers}), from the presence records each worker refreshes in Redis "
    "on its head-check tick; stale cursors: per-minute Redis buckets of the last 60 minutes"
)
PROCESS_SOURCE = "this worker process only (pid {pid}): {why}; sum every worker's /metrics for the cluster"
NO_REDIS = "no REDIS_URL (embedded default: one process), so workers publish no presence"
REDIS_FAILED = "Redis could not be read ({error}), so these are the figures of this process"


@dataclass(frozen=True)
class DeliveryStatus:
    source: str  # one sentence saying where the figures come from and what they cover
    connections: int
    subscribers: dict[str, int] = field(default_factory=dict)
    stale_cursors_last_hour: dict[str, int] = field(default_factory=dict)  # per topic, same scope as connections
    stale_cursors_by_reason: dict[str, int] = field(default_factory=dict)  # this process, since it started
    delivery_lag: dict[str, float] = field(default_factory=dict)  # this process: {"p50_ms", "p99_ms", "count"}
    cluster: bool = False  # True: connections/subscribers/stale last hour are summed over all workers
    workers: list = field(default_factory=list)  # cluster: the live workers' presence records


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


def _topics() -> list[str]:
    from projector.models import TopicSequence

    return list(TopicSequence.objects.order_by("topic").values_list("topic", flat=True))


def delivery_status() -> DeliveryStatus:
    """Cluster-wide figures when Redis is configured and readable, else this process's."""
    per_process = {
        "stale_cursors_by_reason": _counter_values(metrics.STALE_CURSORS, "reason"),
        "delivery_lag": _histogram_quantiles(metrics.LIVE_DELIVERY_LAG),
    }
    redis_url = getattr(settings, "REDIS_URL", "")
    why = NO_REDIS
    if redis_url:
        try:
            cluster = read_cluster(redis_url, settings.KHALA_CHANNEL_PREFIX, _topics())
        except Exception as exc:  # the admin page must render; say what happened instead
            log.warning("admin: cannot read worker presence from Redis", exc_info=True)
            why = REDIS_FAILED.format(error=str(exc) if isinstance(exc, ShardReadError) else type(exc).__name__)
        else:
            servers = sorted({str(w.get("server")) for w in cluster.workers})
            return DeliveryStatus(
                source=CLUSTER_SOURCE.format(
                    workers=len(cluster.workers),
                    plural="" if len(cluster.workers) == 1 else "s",
                    servers=", ".join(servers) if servers else "none reporting",
                ),
                connections=cluster.connections,
                subscribers=cluster.subscribers,
                stale_cursors_last_hour=cluster.stale_last_hour,
                cluster=True,
                workers=cluster.workers,
                **per_process,
            )
    connections = 0
    subscribers: dict[str, int] = {}
    stale: dict[str, int] = {}
    for hub in running_hubs():
        connections += len(_snapshot(hub.sessions))
        for topic, feed in _snapshot(hub.feeds.items()):
            subscribers[topic] = subscribers.get(topic, 0) + len(_snapshot(feed.followers))
        presence = getattr(hub, "presence", None)
        if presence is not None:
            for topic, n in presence.local_stale_last_hour().items():
                stale[topic] = stale.get(topic, 0) + n
    return DeliveryStatus(
        source=PROCESS_SOURCE.format(pid=os.getpid(), why=why),
        connections=connections,
        subscribers=subscribers,
        stale_cursors_last_hour=stale,
        **per_process,
    )

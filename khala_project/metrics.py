"""Prometheus metrics of the project layer (admission control, the cross-worker bus). Labels are
bounded sets."""

from prometheus_client import Counter, Gauge

# limit: a name of khala_project.ratelimit.LIMITS or "sockets_per_user"; outcome: "allowed" or
# "limited"; backend: "redis" (cluster-wide) or "local" (per process: Redis unreachable or unset).
ADMISSION_DECISIONS = Counter(
    "khala_admission_decisions",
    "Admission-control decisions by limit, outcome and the counter store that decided.",
    ["limit", "outcome", "backend"],
)

# The bus (khala_project/bus.py), per shard: ``shard`` is the shard's index in REDIS_URL ("0" with
# one Redis). outcome: "sent", "failed" (the shard refused or timed out: its topics wait for the
# head check) or "skipped" (not tried: the shard failed within PUBLISH_RETRY_SECONDS).
BUS_PUBLISHES = Counter(
    "khala_bus_publishes",
    "Bus publishes (hints, revocations) by shard and outcome.",
    ["shard", "outcome"],
)
# 1 while this process's hub subscription on the shard is attached (probe answered), else 0.
BUS_SHARD_ATTACHED = Gauge(
    "khala_bus_shard_attached",
    "1 while the hub's subscription on the Redis shard is attached, 0 while it is detached.",
    ["shard"],
)
BUS_ATTACHES = Counter(
    "khala_bus_shard_attaches",
    "Successful (re)attaches of the hub's subscription to a Redis shard.",
    ["shard"],
)

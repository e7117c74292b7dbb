"""Prometheus counters of the project layer (admission control). Labels are bounded sets."""

from prometheus_client import Counter

# limit: a name of khala_project.ratelimit.LIMITS or "sockets_per_user"; outcome: "allowed" or
# "limited"; backend: "redis" (cluster-wide) or "local" (per process: Redis unreachable or unset).
ADMISSION_DECISIONS = Counter(
    "khala_admission_decisions",
    "Admission-control decisions by limit, outcome and the counter store that decided.",
    ["limit", "outcome", "backend"],
)

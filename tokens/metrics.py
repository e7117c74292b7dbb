"""Prometheus counters of the tokens app. Labels are bounded sets (result, reason code, endpoint, kind)."""

from prometheus_client import Counter

# reason: "ok" or one of tokens.verifier.REASONS; never a kid, subject or token fragment.
TOKEN_VERIFICATIONS = Counter(
    "khala_token_verifications",
    "Sync token verifications by result (ok/rejected) and reason code.",
    ["result", "reason"],
)

# endpoint: "sync" (/api/sync/token) or "legacy" (/api/khala/token).
TOKENS_ISSUED = Counter(
    "khala_tokens_issued",
    "Sync tokens minted, by issuing endpoint.",
    ["endpoint"],
)

# kind: "session" or "device".
REVOCATIONS = Counter(
    "khala_sync_revocations",
    "Session/device revocations recorded, by kind.",
    ["kind"],
)

# issuer: a configured TRUSTED_ISSUERS name (a bounded set); result: "ok" or "error".
JWKS_FETCHES = Counter(
    "khala_jwks_fetches",
    "Fetches of external issuers' JWKS, by issuer and result.",
    ["issuer", "result"],
)

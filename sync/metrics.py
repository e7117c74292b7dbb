"""Prometheus metrics of the WebSocket delivery lane (all ``khala_*``; label values are bounded:
result/status/reason/code strings from fixed sets, never ids, topics only from declared topics).

Each worker process exports its own series on ``GET /metrics``.
"""

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_CONNECTIONS = Gauge("khala_ws_active_connections", "Open sync WebSocket connections of this worker.")
JOINS = Counter(
    "khala_ws_joins_total",
    "sync:v1 joins by result (ok | unauthorized | reauth_required | upgrade_required).",
    ["result"],
)
SUBSCRIBES = Counter(
    "khala_ws_subscribes_total",
    "sync:subscribe requests by result (ok or the error code).",
    ["result"],
)
RECONNECTS = Counter(
    "khala_ws_reconnects_total",
    "Subscribes that resumed from a cursor (a resume watermark > 0): how reconnects are counted.",
)
REPLAY_BATCHES = Counter("khala_replay_batches_total", "sync:update_batch frames built by replay and catch-up.")
REPLAY_ROWS = Counter("khala_replay_rows_total", "Updates sent by replay and catch-up.")
CATCHUP_DURATION = Histogram(
    "khala_replay_catchup_duration_seconds",
    "Wall time of a subscribe from request to reply (replay included), by status (ok | stale_cursor).",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Meaning, exactly: for a live sync:update_batch frame queued to a socket, the wall time from the
# commit of the OLDEST journal row it carries (the row's inserted_at, set by the database at insert
# time) to the moment the socket's writer handed the frame to the ASGI server's transport (for
# daphne: after waiting for the transport to drain). Replay batches are not counted. It is SAMPLED:
# one (socket, frame) pair in sync.outbound.LIVE_LAG_SAMPLE_EVERY (16) per worker, so quantiles
# describe all pairs while _count is about 1/16 of the live frames sent (khala_live_frames_total
# counts them all). Clock skew between the database host and the worker adds to the figure.
LIVE_DELIVERY_LAG = Histogram(
    "khala_live_delivery_lag_seconds",
    "Commit of a live frame's oldest journal row to the frame being handed to the socket's transport; "
    "sampled: one (socket, frame) pair in 16 per worker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LIVE_FRAMES = Counter("khala_live_frames_total", "Live sync:update_batch frames queued to sockets.")
STALE_CURSORS = Counter(
    "khala_stale_cursors_total",
    "Refused resume cursors by reason (stream_epoch_mismatch | cursor_ahead_of_head | "
    "retention_floor_breach | replay_budget_exceeded).",
    ["reason"],
)
SLOW_CONSUMER_CLOSES = Counter("khala_ws_slow_consumer_closes_total", "Sockets closed because their outbound queue overflowed.")
HEARTBEAT_TIMEOUTS = Counter("khala_ws_heartbeat_timeouts_total", "Sockets closed after the idle timeout.")
TOKEN_EXPIRY_CLOSES = Counter(
    "khala_ws_token_expiry_closes_total", "Sockets closed because their token expired (plus the grace) without a refresh."
)
REFRESHES = Counter(
    "khala_ws_refreshes_total",
    "sync:refresh requests by result (ok, or the refusal's reason: a verifier reason, subject_mismatch, "
    "session_mismatch, or the error code).",
    ["result"],
)
REVOCATION_CLOSES = Counter("khala_ws_revocation_closes_total", "Sockets closed because their session or device was revoked.")
FRAMES_REJECTED = Counter(
    "khala_ws_frames_rejected_total",
    "Client frames answered with an error, by error code (sync.errors codes).",
    ["code"],
)
REPLIES_DROPPED = Counter(
    "khala_ws_replies_dropped_total",
    "Replies to heartbeats and refusals not sent because the socket's outbound queue was over half full.",
)
HUB_JOURNAL_READS = Counter(
    "khala_hub_journal_reads_total",
    "Topic-wide journal reads by a worker's hub, by trigger (hint | head_check).",
    ["trigger"],
)
HUB_HEAD_CHECKS = Counter(
    "khala_hub_head_checks_total",
    "Head checks a worker's hub completed (periodic, and one each time its bus subscription attaches).",
)
HUB_LOST_HINT_CATCHUPS = Counter(
    "khala_hub_head_check_catchups_total",
    "Times a worker's periodic head check found rows no hint had announced (a lost or late hint).",
)
# Streaming replicas (sync.journal_replicas, sync.hydration; docs/sync/REPLICAS.md). ``purpose`` is
# one of replay | catchup | live | subscribe | hydration; ``replica`` a configured alias (replica_1…).
REPLICA_READS = Counter(
    "khala_replica_reads_total",
    "Reads a streaming replica may serve, by purpose and by the target that served them (primary | replica).",
    ["purpose", "target"],
)
REPLICA_FALLBACKS = Counter(
    "khala_replica_fallbacks_total",
    "Reads a replica could have served that went to the primary, by purpose and reason (lagging: past "
    "REPLICA_MAX_LAG_BYTES or not measured yet | behind: had not replayed the commit the read needs | "
    "unavailable: down or the read failed | refused: its answer would have refused a cursor).",
    ["purpose", "reason"],
)
REPLICA_LAG_BYTES = Gauge(
    "khala_replica_lag_bytes",
    "WAL bytes between the primary's position and the replica's replay position at this worker's last probe "
    "(-1: the last probe failed).",
    ["replica"],
)
# Frames reach the socket either directly ("direct": at once when nothing is queued, else
# everything queued for a socket within one loop turn in one transport write, sync.socket_flush) or one ASGI send each
# ("send"). frames ÷ writes of "direct" is the coalescing achieved.
FRAMES_WRITTEN = Counter("khala_ws_frames_written_total", "WebSocket frames handed to the server's transport.", ["path"])
TRANSPORT_WRITES = Counter("khala_ws_transport_writes_total", "Transport writes (or ASGI sends) of those frames.", ["path"])

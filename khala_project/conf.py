"""Khala's namespaced settings with documented defaults.

``settings.KHALA`` overrides any key below. Values are read lazily on every call so that tests can
use ``override_settings(KHALA={...})``; never copy a value into a module global at import time.
"""

from django.conf import settings

DEFAULTS: dict = {
    # --- projector / write path ---
    # Payloads whose canonical JSON is larger than this are journaled in pointer mode
    # (journal payload NULL, clients hydrate over HTTP).
    "INLINE_PAYLOAD_LIMIT_BYTES": 256 * 1024,
    # Bearer token required by the internal service endpoints (ingest, session revocation).
    # Empty: those endpoints answer 503.
    "SERVICE_TOKEN": "",
    "RETENTION_BATCH_SIZE": 5000,
    "RETENTION_INTERVAL_SECONDS": 60.0,
    # The partitioned journal (PostgreSQL; projector.journal_partitions): watermarks per range
    # partition, empty ranges kept above each topic's head (created by the retention pass), and how
    # long a partition DDL may wait for a lock before it gives up until the next pass. Size a
    # partition so a topic's window spans tens of them: rows below the floor in the boundary
    # partition are deleted one by one, whole partitions are dropped (docs/sync/SCHEMA.md).
    "JOURNAL_PARTITION_WATERMARKS": 20000,
    "JOURNAL_PARTITIONS_AHEAD": 4,
    "JOURNAL_DDL_LOCK_TIMEOUT_MS": 500,
    # Retention's pause between two partitions it detaches and drops. Each detach makes every reader
    # of the topic plan its next page again (the partition list changed) and each drop unlinks files;
    # back to back, 100 of them slowed replay to 0.77x of idle for the pass's 1.3 s; with 20 ms
    # between them 0.91-0.93x, with 50 ms 0.95x (bench/README.md, "Retention"). Like autovacuum's
    # cost delay, the pause spreads that work: the pass takes longer (+5 s per 100 partitions), the
    # readers hardly notice.
    "JOURNAL_DETACH_PAUSE_MS": 50,
    # On the partitioned journal, also delete (row by row) the rows below the cutoff in the boundary
    # partition: the floor follows the window exactly. False: whole partitions only; the floor stops
    # at the last partition end below the cutoff, keeping at most one partition of rows past the
    # window, and a pass writes no per-row WAL at all. With passes every minute the floor crawls
    # through the boundary partition, so with True nearly every row is still deleted one by one
    # before its partition goes (bench/README.md, "Retention": steady state).
    "RETENTION_BOUNDARY_DELETES": True,
    # The hint publisher waits this long after a commit before publishing, so a busy topic sends
    # one hint (the highest watermark) per period instead of one per commit. 0 = publish at once.
    "HINT_LINGER_SECONDS": 0.002,
    # project() runs its statement as a server-side prepared statement (planned once per
    # connection). Turn off behind a pooler that moves sessions between server connections
    # (PgBouncer in transaction mode before 1.21, or without max_prepared_statements).
    "SINK_PREPARED_STATEMENTS": True,
    # Hard cap on one document's canonical JSON (larger: `payload_too_large`, nothing written).
    "MAX_PAYLOAD_BYTES": 4 * 1024 * 1024,
    # POST /api/internal/sync/projections: most documents per request, and largest request body.
    "INGEST_MAX_DOCUMENTS": 500,
    "INGEST_MAX_BODY_BYTES": 16 * 1024 * 1024,
    # An API request that cannot reach PostgreSQL answers 503 ``database_unavailable`` with this
    # ``Retry-After`` (seconds): long enough for a restart or failover, short enough to resume soon.
    "UNAVAILABLE_RETRY_AFTER_SECONDS": 5,
    # How an authority command (runtime.commands) hands its change to the projector:
    # "outbox" (the default and the only durable mode): a projection-outbox row in the command's own
    #   transaction, drained by `manage.py projector_worker` (and the fast path below);
    # "after_commit": the pre-outbox path, projection in transaction.on_commit only (a process that
    #   dies after COMMIT loses the projection); kept as the baseline of bench/commands.py;
    # "off": nothing is projected (the authority-only ceiling of bench/commands.py). Never in production.
    "RUNTIME_PROJECTION": "outbox",
    # The outbox fast path: right after its COMMIT, the command's own process projects the entity's
    # outbox entries (SKIP LOCKED, so never together with a worker). Lower latency at modest write
    # rates; off, every entry waits for a worker batch (higher throughput on one busy topic).
    "OUTBOX_FAST_PATH": True,
    # The fast path gives up (leaving the entry to the workers) when a projector lock stays busy
    # this long: on a busy topic, writers then stop queueing behind the topic row one by one.
    "OUTBOX_FAST_PATH_LOCK_TIMEOUT_MS": 5,
    # The projector worker: entries per drain transaction, and how often it looks without a NOTIFY.
    "OUTBOX_BATCH_SIZE": 200,
    "OUTBOX_POLL_INTERVAL_SECONDS": 1.0,
    # After a wake-up, and between passes while it drains, a worker waits this long so that commits
    # arriving together share one batch (trades a few ms of latency for fewer, larger projection
    # transactions). While this host's CPUs are saturated the wait grows towards
    # OUTBOX_LINGER_MAX_SECONDS (projector.linger: the worker's CPU goes to the authority instead,
    # as bigger batches); 0 keeps it fixed.
    "OUTBOX_WAKE_LINGER_SECONDS": 0.01,
    "OUTBOX_LINGER_MAX_SECONDS": 0.1,
    # A failing projection is retried after min(BASE * 2**(attempts-1), MAX) seconds; after
    # OUTBOX_MAX_ATTEMPTS attempts the entry is quarantined (admin: Projection outbox → retry).
    "OUTBOX_MAX_ATTEMPTS": 8,
    "OUTBOX_RETRY_BASE_SECONDS": 1.0,
    "OUTBOX_RETRY_MAX_SECONDS": 300.0,
    # A drain thread inside the web process (the one-command `make run`). None: on for the embedded
    # SQLite database, off on PostgreSQL, where deployments run `manage.py projector_worker`.
    "OUTBOX_IN_PROCESS_DRAIN": None,
    # --- tokens ---
    # "kid1:secret1,kid2:secret2": first = current signer, the rest verify only.
    "SIGNING_KEYS": "",
    "TOKEN_ISSUER": "khala",
    "TOKEN_AUDIENCE": "openagents-sync",
    "TOKEN_CLAIMS_VERSION": "oa_sync_claims_v1",
    "TOKEN_TTL_SECONDS": 300,
    "TOKEN_TTL_MIN_SECONDS": 60,
    "TOKEN_TTL_MAX_SECONDS": 900,
    "TOKEN_CLOCK_SKEW_SECONDS": 30,
    # A socket's session ends at its token's `exp` plus this grace unless the client sends
    # `sync:refresh` with a fresh token first (docs/protocol/OA_SYNC_WS_MAPPING.md §6.5). The grace
    # absorbs a refresh in flight and small clock differences, nothing more.
    "SESSION_EXPIRY_GRACE_SECONDS": 5.0,
    "TOKEN_DEFAULT_SCOPES": ["runtime.codex_worker_summaries"],
    "TOKEN_ALLOWED_SCOPES": [
        "runtime.run_summaries",
        "runtime.codex_worker_summaries",
        "runtime.codex_worker_events",
        "runtime.notifications",
    ],
    # Path of a file whose content is the SIGNING_KEYS value (used only when SIGNING_KEYS is empty;
    # re-read when the file changes). `make run` points it at var/dev-signing-keys.
    "SIGNING_KEYS_FILE": "",
    # Topics the projector declares. A token's allowed topics = its scopes ∩ these (read from settings,
    # not the TopicSequence table, so verifying a token never touches the database).
    "DECLARED_TOPICS": [
        "runtime.run_summaries",
        "runtime.codex_worker_summaries",
        "runtime.codex_worker_events",
        "runtime.notifications",
    ],
    # Other issuers whose tokens this server accepts: [{"issuer", "audience", "jwks_url",
    # "algorithms"?}] (algorithms default to EdDSA/ES256/RS256; symmetric ones are refused).
    "TRUSTED_ISSUERS": [],
    # Their JWKS cache: refetched when older than MAX_AGE, or on an unknown kid but never more often
    # than every MIN_REFRESH (a flood of made-up kids costs one fetch per interval), with a timeout.
    "JWKS_MAX_AGE_SECONDS": 300.0,
    "JWKS_MIN_REFRESH_SECONDS": 30.0,
    "JWKS_FETCH_TIMEOUT_SECONDS": 5.0,
    # Cache-Control max-age of GET /.well-known/jwks.json. Keep it well under the time between
    # `sync_keys add` and `promote` so verifiers elsewhere see a new key before it signs.
    "JWKS_CACHE_MAX_AGE_SECONDS": 300,
    # How long a session/device revocation is remembered. None: TOKEN_TTL_MAX_SECONDS +
    # TOKEN_CLOCK_SKEW_SECONDS, the longest a token minted before the revocation can stay valid.
    "REVOCATION_TTL_SECONDS": None,
    # --- delivery ---
    "REPLAY_BATCH_SIZE": 200,
    "REPLAY_BATCH_MAX_SIZE": 200,
    "REPLAY_BATCH_MAX_BYTES": 2 * 1024 * 1024,
    "HEARTBEAT_INTERVAL_SECONDS": 15.0,
    "HEARTBEAT_TIMEOUT_SECONDS": 60.0,
    # Per-socket outbound queue bounds (frames, bytes); overflow closes the socket (slow_consumer).
    "OUTBOUND_QUEUE_LIMIT": 1000,
    "OUTBOUND_QUEUE_MAX_BYTES": 8 * 1024 * 1024,
    # Write what is queued for a socket within one loop turn as one transport write of ready-made
    # WebSocket frames (sync/socket_flush.py) where the server allows it (daphne, uvicorn's default
    # WebSocket implementation); off: one ASGI send per frame from a writer task per socket.
    "SOCKET_DIRECT_WRITES": True,
    # daphne accepts at most this many new connections per event-loop turn; the rest wait in the
    # kernel's listen queue for the next turns, so a reconnect storm cannot hold the loop away from
    # the sockets already connected (khala_project/daphne_accepts.py). 0: Twisted's own sizing
    # (100 per turn, growing). Not applied under uvicorn.
    "ACCEPTS_PER_LOOP_TURN": 8,
    # Server processes move their startup heap (Django, the apps, the server's modules) out of the
    # garbage collector's full passes once the app is loaded, which makes those passes, and the
    # event loop's stall during them, ~3x shorter (khala_project/gc_tuning.py).
    "GC_FREEZE_AT_STARTUP": True,
    "MAX_FRAME_BYTES": 1024 * 1024,
    # The largest WebSocket message the ASGI server itself accepts or sends (khala_project/serve.py
    # passes it to daphne and uvicorn). Above MAX_FRAME_BYTES so that Khala, not the server, answers
    # an oversized frame (payload_too_large, 4413); above REPLAY_BATCH_MAX_BYTES for outbound batches.
    "TRANSPORT_MAX_MESSAGE_BYTES": 16 * 1024 * 1024,
    # Each worker re-reads its topics' heads this often, so a lost hint only delays delivery.
    "HEAD_CHECK_INTERVAL_SECONDS": 1.0,
    # ... and this often while its Redis subscription is down (on any shard): the head check is
    # then how every update arrives, so an outage costs at most this much lag (one small query for
    # all followed topics per interval and worker).
    "HEAD_CHECK_DETACHED_INTERVAL_SECONDS": 0.2,
    # The hub's Redis subscription (khala_project/bus.py ``Subscription``): a probe goes round it
    # this often, and one not back within the timeout means Redis is gone: the hub re-attaches,
    # retrying with jittered backoff doubling up to BUS_RETRY_MAX_SECONDS. Meanwhile the head
    # check above delivers.
    "BUS_PROBE_INTERVAL_SECONDS": 2.0,
    "BUS_PROBE_TIMEOUT_SECONDS": 5.0,
    "BUS_RETRY_MAX_SECONDS": 1.0,
    # Database connections one worker process may open for replay and fan-out reads.
    "DB_POOL_MAX_SIZE": 4,
    # --- streaming replicas (DATABASE_REPLICA_URLS; docs/sync/REPLICAS.md) ---
    # A replica further behind the primary than this (WAL bytes, measured every probe interval) is
    # skipped: its reads go to the primary until a probe finds it back within the bound.
    "REPLICA_MAX_LAG_BYTES": 16 * 1024 * 1024,
    # How long a read that needs a commit the replica has not replayed yet waits for it (polling the
    # replica, never the primary) before it reads the primary instead. 0: never wait.
    "REPLICA_WAIT_SECONDS": 0.05,
    # How often each worker measures every replica's replay position against the primary's WAL.
    "REPLICA_PROBE_INTERVAL_SECONDS": 1.0,
    # A replica that failed (connection, recovery conflict) is left alone this long.
    "REPLICA_RETRY_SECONDS": 5.0,
    # The longest a read waits for a connection to a replica (a dead replica must not stall delivery).
    "REPLICA_CONNECT_TIMEOUT_SECONDS": 2.0,
    # Compatibility gate at join (docs/protocol/OA_SYNC_WS_MAPPING.md §6.3).
    "COMPAT_ENFORCED": False,
    "COMPAT_PROTOCOL_VERSION": "khala.ws.v1",
    "COMPAT_MIN_SCHEMA_VERSION": 1,
    "COMPAT_MAX_SCHEMA_VERSION": 1,
    "COMPAT_MIN_CLIENT_BUILD_ID": "00000000T000000Z",
    "COMPAT_MAX_CLIENT_BUILD_ID": "",  # empty: no upper bound
    # HTTP hydration list pages: default size, and the largest ``limit`` accepted (more → 400
    # ``invalid_limit``).
    "HYDRATION_PAGE_SIZE": 100,
    "HYDRATION_PAGE_MAX_SIZE": 1000,
    # --- admission control (khala_project/ratelimit.py; docs/sync/OPERATIONS.md "Admission control") ---
    # Rate limits are [count, window seconds]: at most `count` events per fixed window, shared by
    # every worker through Redis (per process while Redis is unreachable). None turns one off.
    "LIMIT_TOKEN_MINTS_PER_USER": [30, 60.0],
    "LIMIT_HYDRATIONS_PER_TOKEN": [200, 10.0],
    "LIMIT_CONNECTS_PER_IP": [60, 10.0],
    "LIMIT_CONNECTS_PER_USER": [20, 10.0],
    "LIMIT_JOINS_PER_SOCKET": [10, 1.0],
    "LIMIT_SUBSCRIBES_PER_SOCKET": [20, 1.0],
    # Open sockets per user (a count, not a rate); each holds a lease renewed on the heartbeat tick
    # and dropped at close, so a crashed worker's sockets stop counting after SOCKET_LEASE_SECONDS.
    "LIMIT_SOCKETS_PER_USER": 50,
    "SOCKET_LEASE_SECONDS": 90.0,
    # After a Redis error the limiter counts per process for this long before trying Redis again.
    "RATE_LIMIT_REDIS_RETRY_SECONDS": 5.0,
    # WebSocket Origin allow-list for browser clients. None: origins whose host is in ALLOWED_HOSTS
    # (same-site pages such as /live/). A list: "https://app.example.com", "*.example.com" or "*".
    # A handshake without Origin (CLI, SDKs, services) is never refused for it.
    "WEBSOCKET_ALLOWED_ORIGINS": None,
    # --- surfaces ---
    "WEB_SYNC_ENABLED": False,
    # Rollout cohort of the web lane (docs/sync/RUNTIME_CODEX_CUTOVER_RUNBOOK.md): with the flag on,
    # staff always get the WebSocket lane and other users when a stable hash of their id is below
    # this percentage (0 = staff only, 100 = everyone).
    "WEB_SYNC_COHORT_PERCENT": 100,
}


def khala_setting(name: str):
    """Return ``settings.KHALA[name]``, falling back to the documented default."""
    overrides = getattr(settings, "KHALA", {}) or {}
    if name in overrides:
        return overrides[name]
    try:
        return DEFAULTS[name]
    except KeyError:
        raise KeyError(f"unknown Khala setting {name!r}; add it to khala_project.conf.DEFAULTS") from None

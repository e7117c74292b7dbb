#!/usr/bin/env bash
# Staging drill (KHALA-022 evidence), run for real on this machine:
#
#   1. a fresh database, migrations, a signing key, a user with an API token;
#   2. TWO daphne workers on the same PostgreSQL and Redis (no balancer: clients pick a worker);
#   3. a `khala tail` client (SQLite cursors) on worker B while runs and workers are written through
#      worker A's HTTP API;
#   4. worker B is killed (SIGKILL) in the middle of the writes, writes continue on A, B restarts on
#      the same port, and the client must reconnect and resume from its cursor;
#   5. a retention pass with a short horizon prunes the journal; a FRESH client (cursor 0) must get
#      stale_cursor, load the snapshot and converge;
#   6. the parity auditor must pass the cutover gate (mismatch rate 0 here);
#   7. both clients' caches must equal the read models (doc_key, doc_version and hash).
#
# Every step's result and figures go to a dated record under docs/sync/status/. Exit 0 only if
# every step passed. Uses ports 18401/18402 (override DRILL_PORT_A/DRILL_PORT_B) and its own
# database (DRILL_DATABASE_URL, default postgres://root@127.0.0.1:5432/khala_drill), which it
# drops and re-creates: never point it at a database you care about.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
KHALA="$ROOT/.venv/bin/khala"
DAPHNE="$ROOT/.venv/bin/daphne"

export DATABASE_URL=${DRILL_DATABASE_URL:-postgres://root@127.0.0.1:5432/khala_drill}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export KHALA_CHANNEL_PREFIX="khala_drill_$$"
export KHALA_LOG_LEVEL=WARNING
export KHALA_HEARTBEAT_INTERVAL_SECONDS=2
PORT_A=${DRILL_PORT_A:-18401}
PORT_B=${DRILL_PORT_B:-18402}
URL_A="http://127.0.0.1:$PORT_A"
URL_B="http://127.0.0.1:$PORT_B"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK="$ROOT/var/drill/$STAMP"
RECORD=${DRILL_RECORD:-"$ROOT/docs/sync/status/$(date -u +%F)-khala-runtime-codex-staging-drill.md"}
mkdir -p "$WORK"
DB_NAME=${DATABASE_URL##*/}
DB_ADMIN_URL=${DATABASE_URL%/*}/postgres

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

STEPS=()   # "| n | step | result | detail |" lines of the record
FAILED=0
step() {  # step <name> <ok|FAIL> <detail>
  local mark=$2
  [[ $mark == ok ]] || FAILED=1
  STEPS+=("| $(( ${#STEPS[@]} + 1 )) | $1 | $mark | $3 |")
  printf 'drill: %-48s %s  %s\n' "$1" "$mark" "$3"
}
now_ms() { date +%s%3N; }

wait_http() {  # wait_http <url> <seconds>
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS -o /dev/null "$1/healthz" 2>/dev/null; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.2
  done
}

start_worker() {  # start_worker <port> <logname>; echoes the pid
  "$DAPHNE" -b 127.0.0.1 -p "$1" khala_project.asgi:application >>"$WORK/$2.log" 2>&1 &
  echo $!
}

api() {  # api <base> <path> <json>: POST with the API token, print the response body
  curl -fsS -X POST -H "Authorization: Token $API_TOKEN" -H 'Content-Type: application/json' -d "$3" "$1$2"
}

# ---- 1. database, key, user -----------------------------------------------------------------
psql "$DB_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$DB_NAME\"" -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null
"$PY" manage.py migrate --noinput >"$WORK/migrate.log" 2>&1
"$PY" manage.py sync_keys generate --output "$WORK/signing-keys" >/dev/null
export KHALA_SIGNING_KEYS_FILE="$WORK/signing-keys"
API_TOKEN=$("$PY" manage.py ensure_demo_user --username drill --password drill-password-123 | sed -n 's/^API token: //p')
export KHALA_API_TOKEN=$API_TOKEN
step "database, migrations, signing key, user" ok "database \`$DB_NAME\`, fresh"

# ---- 2. two workers ---------------------------------------------------------------------------
PID_A=$(start_worker "$PORT_A" worker-a); PIDS+=("$PID_A")
PID_B=$(start_worker "$PORT_B" worker-b); PIDS+=("$PID_B")
if wait_http "$URL_A" 60 && wait_http "$URL_B" 60; then
  step "two daphne workers up" ok "A :$PORT_A (pid $PID_A), B :$PORT_B (pid $PID_B)"
else
  step "two daphne workers up" FAIL "see $WORK/worker-*.log"; exit 1
fi

# ---- 3. a client on worker B, writes through worker A ------------------------------------------
TOPICS=(runtime.run_summaries runtime.codex_worker_summaries)
"$KHALA" --url "$URL_B" --state-dir "$WORK/client-b" tail "${TOPICS[@]}" >"$WORK/client-b.out" 2>"$WORK/client-b.err" &
PID_CLIENT=$!; PIDS+=("$PID_CLIENT")

write_runs() {  # write_runs <base> <count> <label>: each run gets 3 events
  local base=$1 i run_id
  for i in $(seq 1 "$2"); do
    run_id=$(api "$base" /api/runtime/runs "{\"thread_id\":\"drill-$3-$i\"}" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    api "$base" "/api/runtime/runs/$run_id/events" '{"event_type":"run.started"}' >/dev/null
    api "$base" "/api/runtime/runs/$run_id/events" '{"event_type":"run.progress","payload":{"step":1}}' >/dev/null
    api "$base" "/api/runtime/runs/$run_id/events" '{"event_type":"run.completed"}' >/dev/null
  done
}
started=$(now_ms)
write_runs "$URL_A" 10 before
for i in 1 2 3; do
  worker_id=$(api "$URL_A" /api/runtime/codex/workers '{"adapter":"drill"}' | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  api "$URL_A" "/api/runtime/codex/workers/$worker_id/events" '{"event_type":"worker.heartbeat"}' >/dev/null
done
step "writes through worker A" ok "10 runs x 4 commands + 3 workers in $(( $(now_ms) - started )) ms"

# ---- 4. kill worker B mid-stream, keep writing, restart it --------------------------------------
write_runs "$URL_A" 10 during &
WRITER=$!
sleep 0.5
kill -9 "$PID_B"; wait "$PID_B" 2>/dev/null || true
killed_at=$(now_ms)
wait "$WRITER"
PID_B=$(start_worker "$PORT_B" worker-b); PIDS+=("$PID_B")
if wait_http "$URL_B" 60; then
  step "worker B killed (SIGKILL) during writes, restarted" ok "down for $(( $(now_ms) - killed_at )) ms; 10 more runs written meanwhile"
else
  step "worker B killed (SIGKILL) during writes, restarted" FAIL "did not come back"; exit 1
fi
write_runs "$URL_B" 5 after  # writes through the restarted worker too

# ---- 5. retention, then a fresh client from cursor 0 --------------------------------------------
sleep 2
"$PY" manage.py sync_retention --once --horizon-seconds 1 >"$WORK/retention.log"
pruned=$(sed -n 's/^runtime.run_summaries: deleted=\([0-9]*\).*pruned_through=\([0-9]*\).*/deleted \1 rows, pruned_through \2/p' "$WORK/retention.log")
if grep -q '^runtime.run_summaries: deleted=[1-9]' "$WORK/retention.log"; then
  step "retention pass (horizon 1 s)" ok "run summaries: $pruned"
else
  step "retention pass (horizon 1 s)" FAIL "$(tr '\n' ' ' <"$WORK/retention.log")"
fi
write_runs "$URL_A" 3 post-retention
"$KHALA" --url "$URL_A" --state-dir "$WORK/client-fresh" tail "${TOPICS[@]}" --json --until-live \
  >"$WORK/client-fresh.jsonl" 2>"$WORK/client-fresh.err" || true

# ---- 6. parity auditor -------------------------------------------------------------------------
if "$PY" manage.py sync_parity_audit --sample 1000 --max-mismatch-rate 0 --recheck-delay 2 --json >"$WORK/parity.json" 2>"$WORK/parity.err"; then
  step "parity auditor gate (--max-mismatch-rate 0)" ok "$("$PY" -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print("sampled %(sampled)s, mismatched %(mismatched_documents)s, rate %(mismatch_rate)s" % r)' "$WORK/parity.json")"
else
  step "parity auditor gate (--max-mismatch-rate 0)" FAIL "$(tail -c 400 "$WORK/parity.err" | tr '\n' ' ')"
fi

# ---- 7. clients converge to the read models --------------------------------------------------------
check_converged() {  # check_converged <state-dir> <timeout-s>: the client's SQLite cache == read models
  "$PY" - "$1" "$2" <<'PY'
import glob, os, sqlite3, sys, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
django.setup()
from projector.models import ReadModelDocument
from projector.payload_hash import payload_hash
import json
state_dir, timeout = sys.argv[1], float(sys.argv[2])
topics = ("runtime.run_summaries", "runtime.codex_worker_summaries")
owner = "user:%d" % __import__("django.contrib.auth", fromlist=["get_user_model"]).get_user_model().objects.get(username="drill").pk
expected = {(d.topic, d.doc_key): (d.doc_version, bytes(d.payload_hash).hex())
            for d in ReadModelDocument.objects.filter(topic__in=topics, owner=owner)}
deadline = time.time() + timeout
while True:
    files = glob.glob(os.path.join(state_dir, "*.sqlite3"))
    got = {}
    if files:
        db = sqlite3.connect(files[0])
        try:
            rows = db.execute("SELECT topic, doc_key, doc_version, payload FROM khala_documents").fetchall()
        except sqlite3.OperationalError:
            rows = []
        db.close()
        got = {(t, k): (v, payload_hash(json.loads(p)).hex() if p else None) for t, k, v, p in rows if t in topics}
    if got == expected:
        print(f"{len(expected)} documents equal (doc_version and payload hash)")
        sys.exit(0)
    if time.time() > deadline:
        missing = sorted(set(expected) - set(got))[:3]
        differ = sorted(k for k in expected if k in got and got[k] != expected[k])[:3]
        extra = sorted(set(got) - set(expected))[:3]
        print(f"NOT converged: expected {len(expected)}, cached {len(got)}; missing {missing} differ {differ} extra {extra}")
        sys.exit(1)
    time.sleep(0.5)
PY
}
if out=$(check_converged "$WORK/client-b" 60); then
  step "client on worker B (survived the kill) equals the read models" ok "$out"
else
  step "client on worker B (survived the kill) equals the read models" FAIL "$out"
fi
reconnects=$(grep -c '^reconnecting in' "$WORK/client-b.err" || true)
if out=$(check_converged "$WORK/client-fresh" 5); then
  stale=$(grep -c '"code":"stale_cursor"\|"type":"stale_cursor"\|"type":"snapshot' "$WORK/client-fresh.jsonl" || true)
  step "fresh client after retention (snapshot, then replay) equals the read models" ok "$out; snapshot/stale events seen: $stale"
else
  step "fresh client after retention (snapshot, then replay) equals the read models" FAIL "$out"
fi
STATUS_JSON=$("$KHALA" --url "$URL_B" --state-dir "$WORK/client-b" status "${TOPICS[@]}" --json 2>&1 || true)

# ---- record ---------------------------------------------------------------------------------------
mkdir -p "$(dirname "$RECORD")"
{
  echo "# Staging drill: runtime/Codex on Khala, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Produced by \`scripts/drill.sh\` (commit \`$(git rev-parse --short HEAD)\`) on this machine:"
  echo "two daphne workers, PostgreSQL $(psql "$DB_ADMIN_URL" -tAc 'show server_version' | cut -d' ' -f1), Redis $(redis-cli -u "$REDIS_URL" info server 2>/dev/null | sed -n 's/^redis_version:\(.*\)\r*$/\1/p' | tr -d '\r'),"
  echo "\`synchronous_commit=$(psql "$DB_ADMIN_URL" -tAc 'show synchronous_commit')\`. Runbook: [\`../RUNTIME_CODEX_CUTOVER_RUNBOOK.md\`](../RUNTIME_CODEX_CUTOVER_RUNBOOK.md)."
  echo
  echo "Result: **$([[ $FAILED == 0 ]] && echo 'all steps passed' || echo 'FAILED')**."
  echo
  echo "| # | step | result | detail |"
  echo "|---|---|---|---|"
  printf '%s\n' "${STEPS[@]}"
  echo
  echo "Client on worker B: $reconnects reconnect attempt(s) logged by \`khala tail\` across the kill of its worker."
  echo
  echo "## Parity report (last cycle)"
  echo
  echo '```json'
  tail -n 1 "$WORK/parity.json" | "$PY" -m json.tool
  echo '```'
  echo
  echo "## \`khala status\` of the client on worker B"
  echo
  echo '```json'
  echo "$STATUS_JSON" | "$PY" -m json.tool 2>/dev/null || echo "$STATUS_JSON"
  echo '```'
  echo
  echo "## Retention pass"
  echo
  echo '```'
  cat "$WORK/retention.log"
  echo '```'
  echo
  echo "Not covered here (by design of a one-machine drill): a load balancer in front of the workers,"
  echo "live Prometheus/Grafana (the rules and dashboard are checked by \`tests/operators/test_ops_files.py\`)."
  echo "Logs of this run: \`var/drill/$STAMP/\` (not committed)."
} >"$RECORD"
echo "drill: record written to ${RECORD#$ROOT/}"
exit "$FAILED"

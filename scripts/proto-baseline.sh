#!/usr/bin/env bash
# Roll the compatibility baseline of the openagents.sync.v1 contract: write the descriptor set of
# proto/ as it is NOW to proto/baseline/sync_v1.binpb. Run it only when releasing (the procedure
# is "Rolling the baseline" in docs/adr/ADR-0002-proto-first-contract-governance.md), never to make `scripts/proto-check.sh` pass: the baseline is
# what released clients were built against, and `buf breaking` compares every change with it.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=${BUF:-node_modules/.bin/buf}
if [ ! -x "$buf" ]; then
  echo "proto-baseline: $buf not found; run 'npm ci'" >&2
  exit 1
fi
out=proto/baseline/sync_v1.binpb
# Source info (comments, line numbers) is left out: breaking rules read only the descriptors, and
# the file then changes only when the contract does.
"$buf" build proto --exclude-source-info -o "$out"
echo "proto-baseline: wrote $out from proto/ at $(git rev-parse --short HEAD)$(git diff --quiet -- proto || echo ' (with uncommitted changes)')"

#!/usr/bin/env bash
# buf lint and buf breaking for the openagents.sync.v1 contract (ADR-0002), with the buf binary
# pinned in package.json (`npm ci` installs it into node_modules/).
#
# The breaking check compares proto/ with the COMMITTED BASELINE proto/baseline/sync_v1.binpb: the
# descriptor set of the last released contract (`buf build`; rolled on release as ADR-0002 says).
# A branch is not a baseline: once a breaking change is committed to it, the branch compares
# with itself and the break passes unseen. The baseline moves only on release
# (scripts/proto-baseline.sh), never to make this check pass.
#
# Then the check proves it can fail: it removes a field from a scratch copy of proto/ and expects
# `buf breaking` against the same baseline to refuse it. A baseline that lost its fields, a
# rule set that stopped covering fields, or a wrapper that swallows buf's exit status fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=${BUF:-node_modules/.bin/buf}
if [ ! -x "$buf" ]; then
  echo "proto-check: $buf not found; run 'npm ci' (make test-proto does)" >&2
  exit 1
fi
baseline=${PROTO_BASELINE:-proto/baseline/sync_v1.binpb}
if [ ! -s "$baseline" ]; then
  echo "proto-check: baseline $baseline missing; it is committed (see 'Rolling the baseline' in docs/adr/ADR-0002-proto-first-contract-governance.md)" >&2
  exit 1
fi

echo "proto-check: buf $("$buf" --version) lint"
"$buf" lint proto

echo "proto-check: buf breaking against the released baseline $baseline"
"$buf" breaking proto --against "$baseline"

# The self-check: a field removed from a copy of the contract must be reported as breaking.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -R proto "$tmp/proto"
victim='string topic = 1;'
file="$tmp/proto/openagents/sync/v1/sync.proto"
if ! grep -q "^  $victim" "$file"; then
  echo "proto-check: self-check needs a field '$victim' in sync.proto; pick another field here" >&2
  exit 1
fi
# Drop the first such field (the message keeps compiling: nothing references a field by number).
awk -v victim="  $victim" '!done && $0 == victim { done = 1; next } { print }' "$file" >"$file.new"
mv "$file.new" "$file"
if "$buf" breaking "$tmp/proto" --against "$baseline" >"$tmp/breaking.out" 2>&1; then
  echo "proto-check: SELF-CHECK FAILED: removing '$victim' from sync.proto was not reported as breaking" >&2
  exit 1
fi
echo "proto-check: self-check ok (a removed field is refused: $(head -1 "$tmp/breaking.out"))"
echo "proto-check: ok"

#!/usr/bin/env bash
# buf lint and buf breaking for the openagents.sync.v1 contract (ADR-0002), with the buf binary
# pinned in package.json (`npm ci` installs it into node_modules/).
#
# The breaking check compares proto/ with proto/ on the branch `main`. When main has no
# proto/buf.yaml yet (the commit that introduces the contract) there is nothing to break, so the
# check is skipped with a message instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=${BUF:-node_modules/.bin/buf}
if [ ! -x "$buf" ]; then
  echo "proto-check: $buf not found; run 'npm ci' (make test-proto does)" >&2
  exit 1
fi
against_branch=${PROTO_BREAKING_AGAINST_BRANCH:-main}

echo "proto-check: buf $("$buf" --version) lint"
"$buf" lint proto

if ! git rev-parse --verify --quiet "refs/heads/$against_branch" >/dev/null; then
  echo "proto-check: SKIP breaking check: no local branch '$against_branch' to compare against"
elif ! git cat-file -e "$against_branch:proto/buf.yaml" 2>/dev/null; then
  echo "proto-check: SKIP breaking check: '$against_branch' has no proto/buf.yaml yet (first contract commit)"
else
  echo "proto-check: buf breaking against .git#branch=$against_branch,subdir=proto"
  "$buf" breaking proto --against ".git#branch=$against_branch,subdir=proto"
fi
echo "proto-check: ok"

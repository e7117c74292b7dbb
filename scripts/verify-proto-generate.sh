#!/usr/bin/env bash
# Fail when the committed generated code under proto/ differs from what scripts/proto-generate.sh
# produces now (a .proto edited without regenerating, a hand-edited *_pb2.py, a stale or missing
# file). Fix: scripts/proto-generate.sh, then commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

scripts/proto-generate.sh "$tmp/gen" >/dev/null

# Compare only generated files (*_pb2.py, *_pb2.pyi), in both directions.
list_generated() { (cd "$1" && find . -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \) | LC_ALL=C sort); }
if ! diff <(list_generated "$tmp/gen") <(list_generated proto) >"$tmp/files.diff"; then
  echo "verify-proto-generate: the set of generated files differs (< expected, > committed):" >&2
  cat "$tmp/files.diff" >&2
  echo "run scripts/proto-generate.sh and commit the result" >&2
  exit 1
fi
status=0
while read -r file; do
  if ! diff -u "proto/$file" "$tmp/gen/$file" >"$tmp/one.diff"; then
    echo "verify-proto-generate: proto/${file#./} is out of date:" >&2
    head -40 "$tmp/one.diff" >&2
    status=1
  fi
done < <(list_generated "$tmp/gen")
if [ "$status" -ne 0 ]; then
  echo "run scripts/proto-generate.sh and commit the result" >&2
  exit 1
fi
echo "verify-proto-generate: generated code is up to date ($(list_generated proto | wc -l) files)"

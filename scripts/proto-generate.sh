#!/usr/bin/env bash
# Generate the Python code of the openagents.sync.v1 contract from proto/ into OUT_DIR (default:
# proto/, next to the .proto files, where it is committed).
#
# The generator is grpcio-tools (pinned in requirements/test.txt): it bundles protoc, so the output
# depends only on that pin and the .proto files, never on whatever protoc the machine has. Its
# protoc must not be newer than the protobuf runtime pinned in requirements/base.txt (gencode
# refuses to load on an older runtime); tests/test_proto_contract.py imports the result to prove it.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=${1:-proto}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out_dir"

# Sorted file list and a fixed include path keep the output byte-for-byte reproducible.
mapfile -t protos < <(cd proto && find openagents -name '*.proto' | LC_ALL=C sort)
if [ "${#protos[@]}" -eq 0 ]; then
  echo "proto-generate: no .proto files under proto/" >&2
  exit 1
fi

(cd proto && "$OLDPWD/$python" -m grpc_tools.protoc -I . \
  --python_out="$(cd "$OLDPWD" && cd "$out_dir" && pwd)" \
  --pyi_out="$(cd "$OLDPWD" && cd "$out_dir" && pwd)" \
  "${protos[@]}")
echo "proto-generate: ${#protos[@]} files -> $out_dir"

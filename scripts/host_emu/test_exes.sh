#!/usr/bin/env bash
# Builds the named test binaries (feature `nccl`, which includes `cuda`; release) and prints "name path" for
# each, from cargo's JSON messages: scripts/test_emulated.sh and the plant suite run the
# executables themselves, with the emulator on their library path.
#   test_exes.sh gpu_attention gpu_loss ...
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
for t in "$@"; do args+=(--test "$t"); done
json=$(cargo test --release --features nccl --no-run --message-format=json "${args[@]}") || {
  cargo test --release --features nccl --no-run "${args[@]}" >&2 # the errors, readable
  exit 1
}
echo "$json" | sed -n 's/.*"target":{[^}]*"name":"\(gpu_[A-Za-z0-9_]*\)"[^}]*}.*"executable":"\([^"]*\)".*/\1 \2/p'

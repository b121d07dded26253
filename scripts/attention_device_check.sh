#!/usr/bin/env bash
# The device check of the pause-step attention kernels (issue #4), in one short call.
#
#   here (no GPU):  bash scripts/attention_device_check.sh build
#                   -> target/attn_check/{gpu_attention,attention_bench} (release, stripped)
#   on the GPU:     run tool, carry ["target/attn_check"], command:
#                   bash scripts/attention_device_check.sh run
#
# `run` does, in order: the gpu_attention tests (every case vs the f64 CPU reference;
# "ignored" means no device was opened: that is a failure here), compute-sanitizer
# memcheck and racecheck on two small cases (if the tool is installed), then the bench
# (bf16 fwd+bwd at the ANCHORS.md shapes). Logs go to $OUT (or target/attn_check/logs).
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=target/attn_check

if [[ "${1:-}" == "build" ]]; then
  set -e
  mkdir -p "$DIR"
  exe() { # kind name -> path of the executable of that test/bench target
    local release=()
    [[ "$1" == "test" ]] && release=(--release) # benches build with the bench profile
    cargo "$1" --"$1" "$2" "${release[@]}" --features cuda --no-run \
      --message-format=json-render-diagnostics |
      python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["target"]["name"] == sys.argv[1] and m["profile"]["test"]):
        print(m["executable"])' "$2"
  }
  cp "$(exe test gpu_attention)" "$DIR/gpu_attention"
  cp "$(exe bench attention)" "$DIR/attention_bench"
  strip --strip-debug "$DIR/gpu_attention" "$DIR/attention_bench"
  du -sh "$DIR"
  exit 0
fi

[[ "${1:-}" == "run" ]] || { echo "usage: $0 build|run" >&2; exit 2; }
LOGS="${OUT:-$DIR/logs}"
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
status=0
"$DIR/gpu_attention" --test-threads=1 >"$LOGS/tests.log" 2>&1 || status=1
grep -E "^test |^test result" "$LOGS/tests.log" | grep -vE "\.\.\. ok$" | tail -30
grep -qE "; [1-9][0-9]* ignored" "$LOGS/tests.log" &&
  { echo "GPU tests were ignored: no device opened"; status=1; }
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [[ -n "$CS" ]]; then
  for tool in memcheck racecheck; do
    for case in "pause_attention_matches_cpu::bf16_b2k3t47h3d64" "pause_attention_matches_cpu::f32_b2k3t65h1d128"; do
      "$CS" --tool "$tool" --error-exitcode 9 "$DIR/gpu_attention" --exact "$case" \
        >"$LOGS/sanitizer_${tool}_${case##*::}.log" 2>&1
      rc=$?
      echo "compute-sanitizer $tool $case: rc $rc ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/sanitizer_${tool}_${case##*::}.log" | tail -1))"
      [[ $rc -ne 0 ]] && status=1
    done
  done
else
  echo "compute-sanitizer not found: skipped"
fi
timeout 240 "$DIR/attention_bench" --bench >"$LOGS/bench.log" 2>&1 || status=1
grep -E "^gpu |skipped|panicked" "$LOGS/bench.log"
echo "attention device check: $([[ $status -eq 0 ]] && echo PASS || echo FAIL) (logs in $LOGS)"
exit $status

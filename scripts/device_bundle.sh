#!/usr/bin/env bash
# Builds everything a GPU machine needs to run the crate's tests and benches without a
# Rust toolchain, into the git-ignored device_bundle/:
#
#   device_bundle/tests/<name>    every test executable of `cargo test --features nccl`
#                                 (feature nccl = cuda + data parallel; libnccl is loaded
#                                 at run time: without it on the GPU machine gpu_nccl and
#                                 the data_parallel bench say so and skip)
#                                 (all of them, so GPU tests added later are included)
#   device_bundle/benches/<name>  every bench executable (attention, head_loss: fused vs
#                                 unfused head at GPT-2 small and V = 256k, ms and peak
#                                 bytes; loss, shard_loader, train_step); their `gpu ...`
#                                 lines end up under run_all.sh's table
#   device_bundle/examples/gpt2_finetune_smoke  30 bf16 fine-tune steps of an imported
#                                 random GPT-2 at the 124M shape (K = 3): loss, tokens/s,
#                                 peak memory (examples/gpt2_finetune_smoke.rs)
#   device_bundle/testdata/       the repository's testdata/ (or $CYB_TESTDATA)
#   device_bundle/run_all.sh      runs them all, prints a summary table, exits 1 on failure
#   (tests/ and benches/ travel packed in device_bundle/executables.tar.gz; run_all.sh
#   unpacks them on first use)
#
# Executables are release builds (kernels compiled to fatbins, sm_90 SASS + compute_80
# PTX, and embedded; cudarc loads libcuda at run time) stripped of debug info and
# symbols (`strip --strip-all`: with the fatbins, --strip-debug left 70 MiB, --strip-all
# 60.6 MiB; panics still print their messages, backtraces lose the function names); the
# bundle must stay under 64 MiB. run_all.sh first loads every kernel module with the
# PTX JIT disabled (tests/gpu_module_load.rs, CUDA_DISABLE_PTX_JIT=1, no JIT cache)
# and prints the load times: on an sm_90 card that must pass, since the SASS is used.
# Usage: bash scripts/device_bundle.sh   then, on the GPU machine: bash device_bundle/run_all.sh
# (ONLY='gpu_model|train_step' bash device_bundle/run_all.sh runs just those executables)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${NVCC:-}" && -z "${CUDA_HOME:-}" && -z "${CUDA_PATH:-}" ]] && ! command -v nvcc >/dev/null; then
  bash scripts/install_nvcc.sh
fi

OUT=device_bundle
TESTDATA="${CYB_TESTDATA:-testdata}"
rm -rf "$OUT"
mkdir -p "$OUT/tests" "$OUT/benches" "$OUT/examples"

# Executable paths from cargo's JSON messages (artifacts with "test": true).
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
'
}

copy() { # kinds-to-keep dir
  while read -r kind name exe; do
    [[ " $1 " == *" $kind "* ]] || continue
    local dest="$2/$name"
    [[ "$kind" == "lib" ]] && dest="$2/lib_unit_tests"
    cp "$exe" "$dest"
    strip --strip-all "$dest" 2>/dev/null || true
    echo "  $dest"
  done
}

echo "building test executables (release, --features nccl)"
cargo test --release --features nccl --no-run --message-format=json-render-diagnostics \
  | executables | copy "lib bin test" "$OUT/tests"
echo "building bench executables (--features nccl; benches/data_parallel.rs: the step at N = 1 with and without NCCL, bucketed and not)"
cargo bench --features nccl --no-run --message-format=json-render-diagnostics \
  | executables | copy "bench" "$OUT/benches"

echo "building the GPT-2 fine-tune smoke run (example, --features cuda)"
cargo build --release --features cuda --example gpt2_finetune_smoke
cp target/release/examples/gpt2_finetune_smoke "$OUT/examples/"
strip --strip-all "$OUT/examples/gpt2_finetune_smoke" 2>/dev/null || true

cp -r "$TESTDATA" "$OUT/testdata"

cat >"$OUT/run_all.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs every test and bench executable of this bundle; prints a summary table.
# Needs the NVIDIA driver (libcuda), nothing else. GPU tests show as "ignored" when no
# device can be opened, so look at the ignored column.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# The executables travel gzipped (61 MiB of stripped binaries with their fatbins is
# 22 MiB packed, against the 64 MiB a device call may carry): unpack once.
if [[ -f "$HERE/executables.tar.gz" && ! -d "$HERE/tests" ]]; then
  tar xzf "$HERE/executables.tar.gz" -C "$HERE" || { echo "cannot unpack executables.tar.gz" >&2; exit 1; }
fi
export CYB_TESTDATA="${CYB_TESTDATA:-$HERE/testdata}"
# On the GPU machine a test binary that finds no device fails instead of passing as ignored.
export CYB_EXPECT_GPU=1
LOGS="$HERE/logs"
mkdir -p "$LOGS"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# cuBLAS (the GPU model's GEMMs): the system's, else a pip wheel's (nvidia-cublas, as
# PyTorch installs it), found once and put on the library path.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
  lib=$(find /opt /usr/local /usr/lib -name 'libcublas.so.1*' 2>/dev/null | head -1)
  if [[ -n "$lib" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuBLAS: $lib"
  else
    echo "cuBLAS: not found; the GPU model tests will fail to create a handle"
  fi
fi
rows=()
status=0
# Kernel modules with the PTX JIT disabled and no JIT cache: on sm_90 every module must
# load from its SASS (a module that needed a JIT would fail here); prints the cold load
# times (milliseconds from SASS; a JIT takes seconds).
if [[ -x "$HERE/tests/gpu_module_load" && ( -z "${ONLY:-}" || "gpu_module_load" =~ $ONLY ) ]]; then
  echo "== module load, no JIT allowed (CUDA_DISABLE_PTX_JIT=1 CUDA_CACHE_DISABLE=1)"
  CUDA_DISABLE_PTX_JIT=1 CUDA_CACHE_DISABLE=1 "$HERE/tests/gpu_module_load" --test-threads=1 \
    >"$LOGS/gpu_module_load_nojit.log" 2>&1
  rc=$?
  grep -vE '^(running|$)' "$LOGS/gpu_module_load_nojit.log"
  [[ $rc -ne 0 ]] && status=1
  rows+=("$(printf '%-34s %6s %7s %7s %8s %7s' "test/gpu_module_load:no_jit" "$rc" "-" "-" "-" "-")")
fi
for exe in "$HERE"/tests/*; do
  # ONLY=regex runs just the executables whose name matches (e.g. ONLY='gpu_model|train_step').
  [[ -n "${ONLY:-}" && ! "$(basename "$exe")" =~ $ONLY ]] && continue
  name="test/$(basename "$exe")"
  start=$(date +%s.%N)
  "$exe" --test-threads="${TEST_THREADS:-4}" >"$LOGS/$(basename "$exe").log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  # Sum the counts of every "test result:" line (a harness may print several).
  read -r passed failed ignored < <(grep -E '^test result:' "$LOGS/$(basename "$exe").log" |
    sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' |
    awk '{ p += $1; f += $2; i += $3 } END { print p + 0, f + 0, i + 0 }')
  [[ $rc -ne 0 ]] && status=1
  rows+=("$(printf '%-34s %6s %7s %7s %8s %7s' "$name" "$rc" "$passed" "$failed" "$ignored" "$secs")")
  [[ $rc -ne 0 ]] && { echo "== $name failed, last lines:"; tail -40 "$LOGS/$(basename "$exe").log"; }
done
# The pretrained-model path at GPT-2 small's shape: a random GPT-2 written in Hugging
# Face's layout, imported (K = 3), 30 bf16 fine-tune steps; exits 1 unless the loss falls.
for exe in "$HERE"/examples/*; do
  [[ -x "$exe" ]] || continue
  [[ -n "${ONLY:-}" && ! "$(basename "$exe")" =~ $ONLY ]] && continue
  name="example/$(basename "$exe")"
  start=$(date +%s.%N)
  "$exe" >"$LOGS/example_$(basename "$exe").log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  [[ $rc -ne 0 ]] && status=1
  rows+=("$(printf '%-34s %6s %7s %7s %8s %7s' "$name" "$rc" "-" "-" "-" "$secs")")
  echo "== $name"
  tail -4 "$LOGS/example_$(basename "$exe").log"
done
for exe in "$HERE"/benches/*; do
  [[ -n "${ONLY:-}" && ! "$(basename "$exe")" =~ $ONLY ]] && continue
  name="bench/$(basename "$exe")"
  start=$(date +%s.%N)
  "$exe" --bench >"$LOGS/bench_$(basename "$exe").log" 2>&1
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  [[ $rc -ne 0 ]] && status=1
  rows+=("$(printf '%-34s %6s %7s %7s %8s %7s' "$name" "$rc" "-" "-" "-" "$secs")")
  echo "== $name"
  grep -E -B1 '^(gpu |GPU )|time:' "$LOGS/bench_$(basename "$exe").log" | grep -v -- '^--$' ||
    tail -20 "$LOGS/bench_$(basename "$exe").log"
done
echo
printf '%-34s %6s %7s %7s %8s %7s\n' "executable" "exit" "passed" "failed" "ignored" "seconds"
printf '%s\n' "${rows[@]}"
# The benches' figures (ms/step, tokens/s, ratios to ANCHORS.md) under the table, so the
# numbers a GPU run produced are in one place.
figures=$(cat "$LOGS"/bench_*.log "$LOGS"/example_*.log 2>/dev/null | grep -E '^gpu ' || true)
if [[ -n "$figures" ]]; then
  echo
  echo "GPU figures (bench logs):"
  printf '%s\n' "$figures"
fi
echo "logs: $LOGS"
if printf '%s\n' "${rows[@]}" | awk '$5 ~ /^[0-9]+$/ && $5 > 0 { found = 1 } END { exit !found }'; then
  echo "NOTE: some tests were ignored: GPU tests are ignored when no CUDA device can be opened"
fi
exit $status
RUNNER
chmod +x "$OUT/run_all.sh"

# Pack the executables (run_all.sh unpacks them on the GPU machine): stripped binaries
# with embedded fatbins compress about 3x, which keeps the bundle far from the limit.
echo "unpacked executables: $(($(du -sb "$OUT/tests" "$OUT/benches" "$OUT/examples" | awk '{ s += $1 } END { print s }') / 1024 / 1024)) MiB"
tar czf "$OUT/executables.tar.gz" -C "$OUT" tests benches examples
rm -rf "$OUT/tests" "$OUT/benches" "$OUT/examples"
size=$(du -sb "$OUT" | cut -f1)
echo "device_bundle: $((size / 1024 / 1024)) MiB"
if ((size >= 64 * 1024 * 1024)); then
  echo "device_bundle is over 64 MiB; strip harder or leave something out" >&2
  exit 1
fi
echo "on the GPU machine: bash device_bundle/run_all.sh"

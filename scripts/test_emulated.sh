#!/usr/bin/env bash
# Runs every GPU test binary (tests/gpu_*.rs, feature `cuda`) against the CPU emulator
# of the CUDA driver and cuBLAS (scripts/build_emu.sh), so that the GPU tests run for
# real on machines without a GPU. Benches never run here.
#
#   bash scripts/test_emulated.sh plain  UBSan alignment/bounds checks, deadlocks, launch
#                                        limits, sticky faults, shuffled block order
#   bash scripts/test_emulated.sh asan   the same under AddressSanitizer (out-of-bounds
#                                        device memory and __shared__ accesses, by index
#                                        or pointer, as launch errors naming the array)
#   bash scripts/test_emulated.sh race   the race checker (shared and device memory races
#                                        between barriers within a block); slower
#   bash scripts/test_emulated.sh asan race   both, every binary under each
#   bash scripts/test_emulated.sh        asan where gcc has libasan, else plain
#
# The (mode, binary) runs are independent: CYB_EMU_JOBS of them (default: the number of
# cores, at most 4) run side by side, the slowest first; each one's log is printed when
# all are done, then a table of wall and CPU times. CYB_EMU_TESTS="gpu_loss gpu_model"
# picks binaries for every mode, CYB_EMU_RACE_TESTS for the race mode only.
#
# An emulated pass checks indexing, masks, launch configuration, argument order,
# synchronisation, memory safety and the math; not timing, the hardware's own numerics
# (FMA contraction, its exp/tanh, tensor-core rounding) or its scheduling.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
modes=("$@")
if [[ ${#modes[@]} == 0 || "${modes[0]}" == auto ]]; then
  modes=(plain)
  [[ -f "$(gcc -print-file-name=libasan.so)" ]] && modes=(asan)
fi
for m in "${modes[@]}"; do
  case "$m" in
    plain | asan | race) ;;
    *) echo "usage: $0 [plain|asan|race]..." >&2; exit 2 ;;
  esac
done
emu_dir() { case "$1" in plain) echo "$ROOT/target/emu" ;; *) echo "$ROOT/target/emu-$1" ;; esac; }

# The emulators, side by side (each compiles every kernel file once per mode).
pids=()
for m in "${modes[@]}"; do
  bash scripts/build_emu.sh "$m" >"target/build_emu_$m.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    cat "target/build_emu_${modes[$i]}.log"
    echo "test_emulated: building the ${modes[$i]} emulator failed" >&2
    exit 1
  fi
  cat "target/build_emu_${modes[$i]}.log"
done
# The emulator's own tests: kernels broken on purpose must fail with the right error.
for m in "${modes[@]}"; do bash scripts/host_emu/selftest/run.sh "$m"; done

# The test executables, built once (cargo builds without the emulator; only the test
# executables see it, through scripts/host_emu/runner.sh).
all=()
for f in tests/gpu_*.rs; do all+=("$(basename "$f" .rs)"); done
selected=("${all[@]}")
[[ -n "${CYB_EMU_TESTS:-}" ]] && read -r -a selected <<<"$CYB_EMU_TESTS"
race_selected=("${selected[@]}")
[[ -n "${CYB_EMU_RACE_TESTS:-}" ]] && read -r -a race_selected <<<"$CYB_EMU_RACE_TESTS"
declare -A exe
while read -r name path; do exe[$name]=$path; done < <(
  bash scripts/host_emu/test_exes.sh $(printf '%s\n' "${selected[@]}" "${race_selected[@]}" | sort -u))

# Jobs "mode binary", the slowest first (race before asan before plain; within a mode
# the binaries with the longest runs measured first, then the rest).
jobs=()
for m in race asan plain; do
  [[ " ${modes[*]} " == *" $m "* ]] || continue
  list=("${selected[@]}")
  [[ "$m" == race ]] && list=("${race_selected[@]}")
  for t in gpu_model gpu_attention gpu_loss $(printf '%s\n' "${list[@]}" | sort); do
    [[ " ${list[*]} " == *" $t "* ]] || continue
    [[ " ${jobs[*]} " == *" $m:$t "* ]] && continue
    if [[ -z "${exe[$t]:-}" ]]; then echo "test_emulated: no test executable for $t" >&2; exit 1; fi
    jobs+=("$m:$t")
  done
done
# One folder per set of modes, so that runs of other modes at the same time keep theirs.
logs=$ROOT/target/emu-logs/$(IFS=-; echo "${modes[*]}")
rm -rf "$logs" && mkdir -p "$logs"
cores=$(nproc 2>/dev/null || echo 2)
njobs=${CYB_EMU_JOBS:-$((cores > 4 ? 4 : cores))}
echo "test_emulated: ${jobs[*]} ($njobs side by side)"
run_one() { # mode:binary
  local m=${1%%:*} t=${1#*:}
  local start=$SECONDS
  # gpu_nccl and gpu_nccl_runs run 2 and 3 data-parallel replicas: an emulated machine
  # of 3 devices. gpu_nccl's failing-rank test waits for the stand-in NCCL's timeout: 4 s,
  # not the default 10.
  local devices=1 nccl_timeout=${CYB_EMU_NCCL_TIMEOUT_MS:-10000}
  [[ "$t" == gpu_nccl* ]] && devices=3 nccl_timeout=4000
  set +e
  CYB_EMU_DEVICES=$devices CYB_EMU_NCCL_TIMEOUT_MS=$nccl_timeout CYB_EMU_LIB=$(emu_dir "$m") CYB_EMU_MODE=$m /usr/bin/time -f "%U %S" -o "$logs/$m-$t.cpu" \
    bash "$ROOT/scripts/host_emu/runner.sh" "${exe[$t]}" >"$logs/$m-$t.log" 2>&1
  echo "$? $((SECONDS - start))" >"$logs/$m-$t.rc"
  echo "test_emulated: $m $t done ($((SECONDS - start)) s)"
}
export -f run_one emu_dir
export logs ROOT
declare -p exe >"$logs/exe.sh"
export CYB_EMU_EXE_TABLE="$logs/exe.sh"
printf '%s\n' "${jobs[@]}" | xargs -P "$njobs" -I{} bash -c 'source "$CYB_EMU_EXE_TABLE"; run_one "$1"' _ {}

failed=0
for j in "${jobs[@]}"; do
  m=${j%%:*} t=${j#*:}
  echo "================ $t on the $m emulator ================"
  cat "$logs/$m-$t.log"
done
echo "test_emulated: mode binary result wall CPU (user+sys)"
for j in "${jobs[@]}"; do
  m=${j%%:*} t=${j#*:}
  read -r rc wall <"$logs/$m-$t.rc"
  cpu=$(awk '{printf "%.0f", $1 + $2}' "$logs/$m-$t.cpu" 2>/dev/null || echo "?")
  result=ok
  if [[ "$rc" != 0 ]]; then result="FAILED (exit $rc)"; failed=1; fi
  printf 'test_emulated: %-5s %-20s %-16s %5s s %5s s\n' "$m" "$t" "$result" "$wall" "$cpu"
done
echo "test_emulated: the GPU tests above ran on the CPU emulator (${modes[*]}), not on a GPU: they checked"
echo "  indexing, masks, launch configuration, argument order, synchronisation, memory safety and"
echo "  the math; not timing, the hardware's own numerics or its scheduling."
exit "$failed"

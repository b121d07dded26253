#!/usr/bin/env bash
# Runs every GPU test binary (tests/gpu_*.rs, feature `cuda`) against the CPU emulator
# of the CUDA driver and cuBLAS (scripts/build_emu.sh), so that the GPU tests run for
# real on machines without a GPU. Benches never run here.
#
#   bash scripts/test_emulated.sh plain  UBSan alignment/bounds checks, deadlocks, launch
#                                        limits
#   bash scripts/test_emulated.sh asan   the same under AddressSanitizer (out-of-bounds
#                                        device and shared memory accesses)
#   bash scripts/test_emulated.sh race   the race checker (shared and device memory races
#                                        between barriers within a block); slower
#   bash scripts/test_emulated.sh        asan where gcc has libasan, else plain
#
# An emulated pass checks indexing, masks, launch configuration, argument order,
# synchronisation, memory safety and the math; not timing, the hardware's own numerics
# (FMA contraction, its exp/tanh, tensor-core rounding) or its scheduling.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-auto}
if [[ "$MODE" == auto ]]; then
  MODE=plain
  [[ -f "$(gcc -print-file-name=libasan.so)" ]] && MODE=asan
fi
bash scripts/build_emu.sh "$MODE"
case "$MODE" in
  plain) EMU=$PWD/target/emu ;;
  asan) EMU=$PWD/target/emu-asan ;;
  race) EMU=$PWD/target/emu-race ;;
  *) echo "usage: $0 [plain|asan|race]" >&2; exit 2 ;;
esac
# Every tests/gpu_*.rs, or those named in CYB_EMU_TESTS (e.g. "gpu_attention gpu_loss").
tests=()
for f in tests/gpu_*.rs; do tests+=(--test "$(basename "$f" .rs)"); done
if [[ -n "${CYB_EMU_TESTS:-}" ]]; then
  tests=()
  for t in $CYB_EMU_TESTS; do tests+=(--test "$t"); done
fi
# The emulator's own tests: kernels broken on purpose must fail with the right error.
bash scripts/host_emu/selftest/run.sh "$MODE"
# cargo builds without the emulator; only the test executables see it (a runner).
export CYB_EMU_LIB="$EMU" CYB_EMU_MODE="$MODE"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/host_emu/runner.sh"
echo "test_emulated: ${tests[*]} against $EMU ($MODE)"
cargo test --release --features cuda "${tests[@]}"
echo "test_emulated: the GPU tests above ran on the CPU emulator ($MODE), not on a GPU: they checked"
echo "  indexing, masks, launch configuration, argument order, synchronisation, memory safety and"
echo "  the math; not timing, the hardware's own numerics or its scheduling."

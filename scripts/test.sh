#!/usr/bin/env bash
# The project's test command (README): formatting, lints, and every test, without and
# with feature `cuda` (the kernels must compile everywhere; GPU tests report as
# ignored on machines without a CUDA device, and run on the GPU where there is one),
# the tests of feature `candle`, then every GPU test again on the CPU emulator of the CUDA driver
# (scripts/test_emulated.sh: under asan where possible, and under the race checker).
#
# clippy runs with every lint; the CPU reference allows `needless_range_loop` in
# src/cpu only (its loops index like the SPEC formulas on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."

# Feature `cuda` needs nvcc (build.rs): use $NVCC / CUDA_HOME / PATH if set up,
# otherwise the pinned repo-local wheels (installed on first use, then a no-op).
if [[ -z "${NVCC:-}" && -z "${CUDA_HOME:-}" && -z "${CUDA_PATH:-}" ]] && ! command -v nvcc >/dev/null; then
  bash scripts/install_nvcc.sh
fi

cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings
cargo test --release
# Feature nccl = cuda + data parallel (src/gpu/data_parallel.rs); the GPU tests report
# ignored here (no device), the emulated runs below execute them.
cargo test --release --features nccl
# Feature `candle` (the loss as a candle custom op, src/candle.rs; CPU only): its test,
# its example trainer, and the doctests that use it (src/candle.rs and the README); the
# rest of the crate is unchanged by the feature and tested above.
cargo test --release --features candle --test candle --example candle_trainer
cargo test --release --features candle --doc -- candle ReadmeDoctests
# Every GPU test binary under AddressSanitizer and under the race checker, the runs side
# by side on the cores (scripts/test_emulated.sh; CYB_EMU_MODE=plain|asan|race|skip runs
# one mode only; CYB_EMU_RACE_TESTS="gpu_attention" narrows the race checker's binaries).
case "${CYB_EMU_MODE:-auto}" in
  skip) ;;
  auto)
    if [[ -f "$(gcc -print-file-name=libasan.so)" ]]; then
      bash scripts/test_emulated.sh asan race
    else
      bash scripts/test_emulated.sh plain race
    fi
    ;;
  *) bash scripts/test_emulated.sh "$CYB_EMU_MODE" ;;
esac

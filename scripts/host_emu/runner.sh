#!/usr/bin/env bash
# Cargo runner for scripts/test_emulated.sh: runs one test executable with the emulated
# driver first on the library path (and AddressSanitizer preloaded for the asan build).
#
# The block order of every launch is shuffled from CYB_EMU_BLOCK_SEED (drawn here when
# unset, and printed, so that a failing run can be repeated).
#
# A kernel fault loses the context for the rest of the process, as on a GPU, so every
# test after it in the same binary fails too. When the binary fails, each failed test
# (at most CYB_EMU_RERUN_MAX, default 40; 0 turns this off) runs again alone in a
# process of its own, and the log says which fail alone (those hit a fault or a wrong
# result themselves) and which pass alone (they only met another test's lost context).
# The exit status is the first run's.
set -euo pipefail
export LD_LIBRARY_PATH="$CYB_EMU_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The emulated device must be found: a binary that sees none fails (tests/common) rather
# than passing with every GPU test ignored.
export CYB_EXPECT_GPU=1
if [[ "${CYB_EMU_MODE:-plain}" == asan ]]; then
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allow_user_segv_handler=1}"
fi
if [[ -z "${CYB_EMU_BLOCK_SEED:-}" ]]; then
  CYB_EMU_BLOCK_SEED=$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')
  export CYB_EMU_BLOCK_SEED
fi
bin=$1
name=$(basename "$bin")
echo "runner: $name with CYB_EMU_BLOCK_SEED=$CYB_EMU_BLOCK_SEED (the block order; set it to repeat this run)"
max=${CYB_EMU_RERUN_MAX:-40}
for a in "$@"; do [[ "$a" == --list || "$a" == --exact || "$a" == --help || "$a" == -h ]] && max=0; done
if [[ "$max" == 0 ]]; then exec "$@"; fi

log=$(mktemp)
trap 'rm -f "$log" "$log.one"' EXIT
set +e
"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 0 ]] && exit 0
mapfile -t failed < <(sed -n 's/^test \(.*[^ ]\) *\.\.\. FAILED$/\1/p' "$log") # names are padded
[[ ${#failed[@]} == 0 ]] && exit "$rc"
echo "runner: $name: ${#failed[@]} tests failed. A kernel fault loses the context for the rest of the"
echo "  process (as on a GPU), so each failed test runs again alone (at most $max):"
n=0
for t in "${failed[@]}"; do
  if ((n >= max)); then
    echo "runner:   ... $((${#failed[@]} - n)) more not re-run (CYB_EMU_RERUN_MAX=$max)"
    break
  fi
  n=$((n + 1))
  if "$bin" --exact "$t" --test-threads=1 >"$log.one" 2>&1; then
    echo "runner:   passes alone: $t (it failed only after another test's fault)"
  else
    echo "runner:   FAILS alone:  $t"
    { grep -m 3 -E "^cyb emulator: kernel .* failed|AddressSanitizer|panicked" "$log.one" || true; } | sed 's/^/runner:       /'
  fi
done
exit "$rc"

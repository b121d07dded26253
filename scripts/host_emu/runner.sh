#!/usr/bin/env bash
# Cargo runner for scripts/test_emulated.sh: runs one test executable with the emulated
# driver first on the library path (and AddressSanitizer preloaded for the asan build).
set -euo pipefail
export LD_LIBRARY_PATH="$CYB_EMU_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ "${CYB_EMU_MODE:-plain}" == asan ]]; then
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allow_user_segv_handler=1}"
fi
exec "$@"

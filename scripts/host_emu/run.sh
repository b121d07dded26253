#!/usr/bin/env bash
# Logic check of kernels/pause_attention.cu on the CPU (no GPU needed): compiles the
# kernel source with the host shim in shim/ and compares with a naive f64 reference,
# in both attention modes (or one: `run.sh shared` / `run.sh private`).
set -euo pipefail
cd "$(dirname "$0")"
g++ -std=c++20 -O2 -pthread -I shim_threads -I ../../kernels attention_emu.cpp -o /tmp/cyb_attention_emu
/tmp/cyb_attention_emu "$@"

#!/usr/bin/env bash
# Builds and runs the emulator's own tests (selftest.cpp with the kernels of broken.cu)
# with the same runtime and driver as target/emu/libcuda.so; then the multi-device ones
# (multidev.cpp, CYB_EMU_DEVICES=3) against a libcuda.so.1 of the same objects and the
# stand-in libnccl.so.2 (nccl.cpp), linked as shared libraries as cudarc loads them.
#   bash scripts/host_emu/selftest/run.sh [plain|asan|race]
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:-plain}
EMU=..
OUT=../../../target/emu-selftest-$MODE
mkdir -p "$OUT"
FLAGS=(-std=c++20 -O1 -g -fPIC -ffp-contract=off -pthread)
SAN=()
KSAN=(-fsanitize=alignment,bounds)
case "$MODE" in
  plain) ;;
  asan) SAN=(-fsanitize=address -fno-omit-frame-pointer) ;;
  race) FLAGS+=(-DCYB_EMU_RACE=1); KSAN+=(-fsanitize=thread) ;;
  *) echo "usage: $0 [plain|asan|race]" >&2; exit 2 ;;
esac
{
  echo "#include \"$PWD/$EMU/emu_registry.h\""
  echo "#include <cuda_bf16.h>"
  echo "namespace {" # as build_emu.sh: no COMDAT statics, so ASan guards every __shared__ array
  echo "#include \"$PWD/broken.cu\""
  echo "}"
  echo "namespace {"
  echo "const EmuKernel table[] = {"
  for k in $(grep -oE 'extern "C" __global__ void [a-z_]+' broken.cu | awk '{print $5}'); do
    echo "    CYB_EMU_KERNEL($k),"
  done
  echo "};"
  echo "EmuRegistrar reg(table, sizeof(table) / sizeof(table[0]), \"broken.cu\");"
  echo "}"
} >"$OUT/reg_broken.cpp"
g++ "${FLAGS[@]}" "${SAN[@]}" "${KSAN[@]}" -I "$EMU/shim" -c "$OUT/reg_broken.cpp" -o "$OUT/reg_broken.o"
g++ "${FLAGS[@]}" "${SAN[@]}" -c "$EMU/runtime.cpp" -o "$OUT/runtime.o"
g++ "${FLAGS[@]}" "${SAN[@]}" -c "$EMU/driver.cpp" -o "$OUT/driver.o"
g++ "${FLAGS[@]}" "${SAN[@]}" selftest.cpp "$OUT/reg_broken.o" "$OUT/runtime.o" "$OUT/driver.o" -o "$OUT/selftest"
bash "$EMU/shared_table.sh" "$OUT/selftest" "$OUT/reg_broken.o" >"$OUT/selftest.shared"
CYB_EMU_SELFTEST_MODE=$MODE ASAN_OPTIONS=detect_leaks=0 "$OUT/selftest"

LIB=$OUT/lib
mkdir -p "$LIB"
g++ "${FLAGS[@]}" "${SAN[@]}" -shared -Wl,-soname,libcuda.so.1 -o "$LIB/libcuda.so.1" \
  "$OUT/reg_broken.o" "$OUT/runtime.o" "$OUT/driver.o" -ldl
bash "$EMU/shared_table.sh" "$LIB/libcuda.so.1" "$OUT/reg_broken.o" >"$LIB/libcuda.so.1.shared"
g++ "${FLAGS[@]}" "${SAN[@]}" -fvisibility=hidden -shared -Wl,-soname,libnccl.so.2 -Wl,-rpath,'$ORIGIN' \
  -o "$LIB/libnccl.so.2" "$EMU/nccl.cpp" -L"$LIB" -l:libcuda.so.1
g++ "${FLAGS[@]}" "${SAN[@]}" multidev.cpp -o "$OUT/multidev" -L"$LIB" -l:libnccl.so.2 -l:libcuda.so.1 \
  -Wl,-rpath,"$(cd "$LIB" && pwd)"
CYB_EMU_DEVICES=3 CYB_EMU_QUIET=1 CYB_EMU_SELFTEST_MODE=$MODE ASAN_OPTIONS=detect_leaks=0 "$OUT/multidev"

#!/usr/bin/env bash
# Installs a pinned, user-space CUDA 13.0 nvcc (NVIDIA's PyPI wheels) into
# ${CYB_NVCC_DIR:-.nvcc} and makes that layout usable as a normal CUDA toolkit:
#
#   <dir>/nvidia/cu13/bin/nvcc        the compiler driver (build.rs finds it here)
#   <dir>/nvidia/cu13/include         cuda_runtime.h, crt/, cuda/std (cccl), ...
#   <dir>/nvidia/cu13/nvvm            libnvvm + cicc
#
# Why no extra flags are needed: the five wheels all unpack into the same
# nvidia/cu13 tree, which has the shape of a toolkit root, and the nvcc.profile shipped
# next to nvcc resolves everything relative to it (TOP = bin/..):
#   INCLUDES        += -I$(TOP)/include              (cuda_runtime.h, crt/ from -crt)
#   SYSTEM_INCLUDES += -isystem $(TOP)/include/cccl  (cuda/std, cub, thrust from -cccl)
#   CICC_PATH        = $(TOP)/nvvm/bin               (cicc from nvidia-nvvm)
#   PATH            += $(CICC_PATH):bin              (ptxas, fatbinary)
# (`_TARGET_DIR_` is empty in this layout.) So `.nvcc/nvidia/cu13/bin/nvcc -fatbin`
# works as is (cicc, ptxas for the sm_90 SASS, fatbinary), with the system gcc 12 as
# host compiler; the smoke test below proves it with build.rs's targets.
# Only `-fatbin` is needed by this crate (no linking, no libcudart at build time).
# Idempotent: does nothing when the pinned versions are already there and work.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${CYB_NVCC_DIR:-.nvcc}"
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
STAMP="$DIR/.cyb-nvcc-stamp"
WANT="${PKGS[*]}"
NVCC="$DIR/nvidia/cu13/bin/nvcc"

smoke_test() {
  local tmp
  tmp="$(mktemp -d)"
  cat >"$tmp/t.cu" <<'CU'
#include <cuda_bf16.h>
#include <cuda/std/limits>
extern "C" __global__ void cyb_smoke(float *x) {
  __nv_bfloat16 b = __float2bfloat16(x[threadIdx.x]);
  x[threadIdx.x] = __bfloat162float(b) + cuda::std::numeric_limits<float>::epsilon();
}
CU
  if "$NVCC" -fatbin -O3 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80 \
      --compress-mode=none -ccbin "${CYB_HOST_CXX:-$(command -v g++-12 || command -v g++)}" \
      -o "$tmp/t.fatbin" "$tmp/t.cu" >"$tmp/log" 2>&1 && grep -q '\.entry cyb_smoke' "$tmp/t.fatbin"; then
    rm -rf "$tmp"
    return 0
  fi
  cat "$tmp/log" >&2
  rm -rf "$tmp"
  return 1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$NVCC" ]] && smoke_test; then
  echo "nvcc already installed: $NVCC"
  exit 0
fi

PY="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$DIR"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
  --target "$DIR" "${PKGS[@]}"

if [[ ! -x "$NVCC" ]]; then
  echo "install_nvcc.sh: expected nvcc at $NVCC after installing the wheels" >&2
  exit 1
fi
if ! smoke_test; then
  echo "install_nvcc.sh: nvcc at $NVCC cannot compile a test kernel" >&2
  exit 1
fi
echo "$WANT" >"$STAMP"
echo "nvcc installed: $NVCC ($("$NVCC" --version | tail -1))"

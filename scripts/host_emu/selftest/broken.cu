// Kernels for the emulator's own tests (selftest.cpp): one correct, the others broken on
// purpose, each in one way the emulator must catch.
#include <cuda_bf16.h>

#define N 64

// Correct: out[i] = 2 in[i] through shared memory, with the barrier.
extern "C" __global__ void shift_ok(float *out, const float *in) {
    __shared__ float sh[N];
    const int t = threadIdx.x;
    sh[t] = in[t];
    __syncthreads();
    out[t] = sh[(t + 1) % N];
}

// Wrong index: reads in[t + 1] (one past the end for the last thread).
extern "C" __global__ void copy_wrong_index(float *out, const float *in) {
    const int t = threadIdx.x;
    out[t] = in[t + 1];
}

// Missing barrier: reads a neighbour's shared value that may not be written yet.
extern "C" __global__ void shift_no_barrier(float *out, const float *in) {
    __shared__ float sh[N];
    const int t = threadIdx.x;
    sh[t] = in[t];
    out[t] = sh[(t + 1) % N];
}

// Misaligned 16-byte vector load (in + 1 is only 4-byte aligned).
extern "C" __global__ void misaligned_vec(float *out, const float *in) {
    const float4 v = *reinterpret_cast<const float4 *>(in + 1 + 4 * threadIdx.x);
    out[threadIdx.x] = v.x;
}

// Out-of-bounds write to a static shared array.
extern "C" __global__ void shared_oob(float *out, const float *in) {
    __shared__ float sh[N];
    sh[threadIdx.x + 1] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = sh[threadIdx.x];
}

// Out-of-bounds write to device memory (one past the end of `out`).
extern "C" __global__ void global_oob(float *out, const float *in) { out[threadIdx.x + 1] = in[threadIdx.x]; }

// A __syncthreads that half of the block never reaches.
extern "C" __global__ void barrier_deadlock(float *out, const float *in) {
    if (threadIdx.x < N / 2) return;
    __syncthreads();
    out[threadIdx.x] = in[threadIdx.x];
}

// A shuffle that lane 0 of each warp never reaches.
extern "C" __global__ void shuffle_deadlock(float *out, const float *in) {
    if (threadIdx.x % 32 == 0) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], 1);
}

// Warp reduction by shuffles: every lane gets the warp's sum (checks the shuffles).
extern "C" __global__ void warp_sum(float *out, const float *in) {
    float v = in[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

// Shared-memory race: every thread adds to sh[0] without atomics or barriers between.
extern "C" __global__ void shared_race(float *out, const float *in) {
    __shared__ float sh[1];
    if (threadIdx.x == 0) sh[0] = 0.0f;
    __syncthreads();
    sh[0] += in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = sh[0];
}

// ---- shared arrays declared and reached as the real kernels do: function-local statics
// of templates and inline functions (COMDAT without the registry's unnamed namespace),
// two tiles back to back, read and written through pointers (not array[i], which UBSan's
// bounds check would see). ----
template <int ROWS, int COLS> __device__ float tile_row(const float *in, int row_off, bool write) {
    __shared__ __align__(16) float tile[ROWS * COLS];
    __shared__ __align__(16) float next[ROWS * COLS];
    const int t = threadIdx.x;
    for (int i = t; i < ROWS * COLS; i += blockDim.x) {
        tile[i] = in[i];
        next[i] = 0.0f;
    }
    __syncthreads();
    float *row = tile + (ROWS - 1 + row_off) * COLS; // row_off 1: the row past the tile
    if (write && t < COLS) row[t] = 1.0f;
    __syncthreads();
    return row[t % COLS] + next[t];
}

// Reads one row past a 16 x 4 tile through a pointer (as a tile loop one chunk too far).
extern "C" __global__ void tile_read_past(float *out, const float *in) {
    out[threadIdx.x] = tile_row<16, 4>(in, 1, false);
}

// Writes one row past the tile through a pointer.
extern "C" __global__ void tile_write_past(float *out, const float *in) {
    out[threadIdx.x] = tile_row<16, 4>(in, 1, true);
}

// The same template inside the tile: correct.
extern "C" __global__ void tile_in_bounds(float *out, const float *in) {
    out[threadIdx.x] = tile_row<16, 4>(in, 0, true);
}

// A 16-byte vector load one row past a tile in an inline function (as attention's
// `vs + (c0 + jj) * DH` with float4 loads).
__device__ __forceinline__ float vec_past(const float *in) {
    __shared__ __align__(16) float vt[8 * 4];
    if (threadIdx.x < 32) vt[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    const float4 v = *reinterpret_cast<const float4 *>(vt + 8 * 4 + 4 * (threadIdx.x % 2));
    return v.x;
}
extern "C" __global__ void vec_read_past(float *out, const float *in) { out[threadIdx.x] = vec_past(in); }

// Depends on block order: each block reads the previous block's result (a prefix sum
// when blocks run in index order; not guaranteed on a GPU).
extern "C" __global__ void block_order_chain(float *out, const float *in) {
    const unsigned b = blockIdx.x;
    if (threadIdx.x == 0) out[b] = in[b] + (b > 0 ? out[b - 1] : 0.0f);
}

// Misaligned 16-byte load through __ldg: reported at this file's line, not the shim's.
extern "C" __global__ void misaligned_ldg(float *out, const float *in) {
    const float4 v = __ldg(reinterpret_cast<const float4 *>(in + 1 + 4 * threadIdx.x));
    out[threadIdx.x] = v.x;
}

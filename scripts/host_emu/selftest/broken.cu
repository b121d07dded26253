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

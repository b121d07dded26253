// Shared device helpers for every kernel of the crate: ceil_div, warp and block
// reductions with a fixed order (so results are bit-for-bit reproducible), bf16/f32
// element loads and stores, 16-byte vector access to rows that may start unaligned,
// and the online (max, sum) accumulator of logsumexp.
//
// Nothing here uses atomics on floats: every reduction is a fixed-shape tree.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#define CYB_WARP 32
// Threads per block of the elementwise kernels and of the `*_finalize` column sums: the
// launches (src/gpu/kernels.rs ELEMENTWISE_THREADS, the finalize configs) use this many;
// their __launch_bounds__.
#define CYB_ELEMENTWISE_THREADS 256

__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------
// Element types: logits and their gradients come as f32 or bf16; math is f32 (rows)
// or f64 (per-position objectives).
// ---------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// 16-byte vectors: 4 f32 or 8 bf16 per `uint4`.
template <typename T> struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
};

__device__ __forceinline__ void unpack16(const uint4 &raw, float (&out)[4]) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
}

__device__ __forceinline__ void unpack16(const uint4 &raw, float (&out)[8]) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        // bf16 is the top half of an f32: shifting is an exact conversion.
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

template <typename T> __device__ __forceinline__ uint4 pack16(const float (&in)[Vec16<T>::N]);

template <> __device__ __forceinline__ uint4 pack16<float>(const float (&in)[4]) {
    return make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]),
                      __float_as_uint(in[3]));
}

template <> __device__ __forceinline__ uint4 pack16<__nv_bfloat16>(const float (&in)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(in[2 * i]));
        const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(in[2 * i + 1]));
        w[i] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Elements before the first 16-byte boundary of a row starting at `p` (at most `n`).
// `p` is always aligned to sizeof(T), so this is exact.
template <typename T> __device__ __forceinline__ int head_elems(const T *p, int n) {
    constexpr int N = Vec16<T>::N;
    const int mis = (int)((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
    const int head = mis ? N - mis : 0;
    return head < n ? head : n;
}

// ---------------------------------------------------------------------------------
// Online logsumexp: a running (max m, sum s) with sum_i exp(x_i) = s * exp(m).
// Empty state is (-inf, 0). NaN inputs make s NaN, as in the CPU reference.
// ---------------------------------------------------------------------------------

struct OnlineLse {
    float m;
    float s;
};

__device__ __forceinline__ OnlineLse lse_empty() { return OnlineLse{-INFINITY, 0.0f}; }

// Adds `n` values with one rescale per chunk (one exp per element plus one per chunk).
template <int N> __device__ __forceinline__ void lse_add_chunk(OnlineLse &acc, const float (&x)[N]) {
    float cm = x[0];
#pragma unroll
    for (int i = 1; i < N; ++i) cm = fmaxf(cm, x[i]);
    if (cm > acc.m) {
        acc.s *= expf(acc.m - cm); // exp(-inf) = 0 for the empty state
        acc.m = cm;
    }
    if (acc.m == -INFINITY) { // all -inf (or NaN) so far: nothing to add
        if (cm != cm) acc.s = NAN;
        return;
    }
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) s += expf(x[i] - acc.m);
    acc.s += s;
}

__device__ __forceinline__ void lse_add(OnlineLse &acc, float x) {
    const float one[1] = {x};
    lse_add_chunk<1>(acc, one);
}

__device__ __forceinline__ OnlineLse lse_merge(OnlineLse a, OnlineLse b) {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return lse_empty();
    return OnlineLse{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ OnlineLse warp_lse(OnlineLse v) {
#pragma unroll
    for (int off = CYB_WARP / 2; off > 0; off >>= 1) {
        OnlineLse o;
        o.m = __shfl_xor_sync(0xffffffffu, v.m, off);
        o.s = __shfl_xor_sync(0xffffffffu, v.s, off);
        v = lse_merge(v, o);
    }
    return v;
}

// Block-wide merge; every thread gets the result. blockDim.x must be a multiple of 32
// (at most 1024). Uses 32 entries of shared memory per field; ends with a barrier so
// the buffers can be reused.
__device__ __forceinline__ OnlineLse block_lse(OnlineLse v) {
    __shared__ float sm[CYB_WARP];
    __shared__ float ss[CYB_WARP];
    const int lane = threadIdx.x % CYB_WARP;
    const int warp = threadIdx.x / CYB_WARP;
    const int nwarps = blockDim.x / CYB_WARP;
    v = warp_lse(v);
    if (lane == 0) {
        sm[warp] = v.m;
        ss[warp] = v.s;
    }
    __syncthreads();
    v = lane < nwarps ? OnlineLse{sm[lane], ss[lane]} : lse_empty();
    v = warp_lse(v);
    __syncthreads();
    return v;
}

// ---------------------------------------------------------------------------------
// Deterministic block tree reductions over shared memory (power-of-two blockDim).
// ---------------------------------------------------------------------------------

// Sums `buf[0..blockDim.x)` into buf[0] with a fixed tree. All threads must call.
__device__ __forceinline__ void block_tree_sum(double *buf) {
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
}

// Minimum of `buf[0..blockDim.x)` into buf[0]. All threads must call.
__device__ __forceinline__ void block_tree_min(double *buf) {
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) buf[threadIdx.x] = fmin(buf[threadIdx.x], buf[threadIdx.x + s]);
        __syncthreads();
    }
}

// `log(exp(a) + exp(b))` without overflow; -inf when both are -inf (SPEC section 4).
__device__ __forceinline__ double log_add_exp(double a, double b) {
    const double m = fmax(a, b);
    if (m == -INFINITY) return m;
    return m + log(exp(a - m) + exp(b - m));
}

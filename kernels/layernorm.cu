// LayerNorm over the last dimension (SPEC section 5; eps is the model's layer_norm_eps,
// a kernel argument); CUDA twin of
// src/cpu/layernorm.rs, checked by tests/gpu_model.rs (layernorm_*_matches_cpu).
//
// Shapes: inp, out, dout, dinp [N, C] (T = f32 or bf16); weight, bias, dweight, dbias [C]
// f32 (master parameters); mean, rstd [N] f32 (saved by the forward for the backward).
//
//   layernorm_forward_{f32,bf16}: one warp per row, two passes over the row
//     (mean, then the centred variance, as the CPU reference), out = (x-m)*s*w + b.
//   layernorm_backward_dinp_{f32,bf16}: one warp per row, ACCUMULATES
//     dinp += s*(g - mean(g) - n*mean(g*n)), g = dy*w, n = (x-m)*s.
//   layernorm_backward_params_partial_{f32,bf16}: grid (ceil(C/32), chunks), block
//     (32, 8): per chunk of `rows_per_chunk` rows, partial sums of dy*n and dy per column
//     -> partial [chunks, 2, C] f32.
//   layernorm_backward_params_finalize: one thread per (which, column) sums the
//     partials over chunks in chunk order and ACCUMULATES into dweight / dbias.
//
// Deterministic: every sum has a fixed shape (warp butterflies, fixed chunking, fixed
// order over chunks); no float atomics. Nothing [N, C]-sized is materialised besides
// the outputs.

#include "common.cuh"

#define LN_PARTIAL_ROWS 8 // blockDim.y of the partial kernel
#define LN_ROW_WARPS 8    // warps per block of forward, dinp (layernorm.rs WARPS_PER_BLOCK)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = CYB_WARP / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename T>
__device__ void layernorm_forward(T *__restrict__ out, float *__restrict__ mean,
                                  float *__restrict__ rstd, const T *__restrict__ inp,
                                  const float *__restrict__ weight, const float *__restrict__ bias,
                                  int n, int c, float eps) {
    const int lane = threadIdx.x % CYB_WARP;
    const long long row = (long long)blockIdx.x * (blockDim.x / CYB_WARP) + threadIdx.x / CYB_WARP;
    if (row >= n) return;
    const T *x = inp + row * c;
    float s = 0.0f;
    for (int i = lane; i < c; i += CYB_WARP) s += to_float(x[i]);
    const float m = warp_sum(s) / (float)c;
    float v = 0.0f;
    for (int i = lane; i < c; i += CYB_WARP) {
        const float d = to_float(x[i]) - m;
        v += d * d;
    }
    const float var = warp_sum(v) / (float)c;
    const float r = 1.0f / sqrtf(var + eps);
    T *o = out + row * c;
    for (int i = lane; i < c; i += CYB_WARP) {
        o[i] = from_float<T>((to_float(x[i]) - m) * r * weight[i] + bias[i]);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

template <typename T>
__device__ void layernorm_backward_dinp(T *__restrict__ dinp, const T *__restrict__ dout,
                                        const T *__restrict__ inp, const float *__restrict__ weight,
                                        const float *__restrict__ mean,
                                        const float *__restrict__ rstd, int n, int c) {
    const int lane = threadIdx.x % CYB_WARP;
    const long long row = (long long)blockIdx.x * (blockDim.x / CYB_WARP) + threadIdx.x / CYB_WARP;
    if (row >= n) return;
    const T *x = inp + row * c;
    const T *dy = dout + row * c;
    const float m = mean[row];
    const float s = rstd[row];
    float g_sum = 0.0f, gn_sum = 0.0f;
    for (int i = lane; i < c; i += CYB_WARP) {
        const float g = to_float(dy[i]) * weight[i];
        g_sum += g;
        gn_sum += g * (to_float(x[i]) - m) * s;
    }
    const float g_mean = warp_sum(g_sum) / (float)c;
    const float gn_mean = warp_sum(gn_sum) / (float)c;
    T *dx = dinp + row * c;
    for (int i = lane; i < c; i += CYB_WARP) {
        const float norm = (to_float(x[i]) - m) * s;
        const float add = s * (to_float(dy[i]) * weight[i] - g_mean - norm * gn_mean);
        dx[i] = from_float<T>(to_float(dx[i]) + add);
    }
}

template <typename T>
__device__ void layernorm_backward_params_partial(const T *__restrict__ dout,
                                                  const T *__restrict__ inp,
                                                  const float *__restrict__ mean,
                                                  const float *__restrict__ rstd, int n, int c,
                                                  int rows_per_chunk, float *__restrict__ partial) {
    __shared__ float sw[LN_PARTIAL_ROWS][CYB_WARP + 1];
    __shared__ float sb[LN_PARTIAL_ROWS][CYB_WARP + 1];
    const int col = blockIdx.x * CYB_WARP + threadIdx.x;
    const int chunk = blockIdx.y;
    const long long r0 = (long long)chunk * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk;
    if (r1 > n) r1 = n;
    float dw = 0.0f, db = 0.0f;
    if (col < c) {
        for (long long r = r0 + threadIdx.y; r < r1; r += LN_PARTIAL_ROWS) {
            const float dy = to_float(dout[r * c + col]);
            dw += dy * (to_float(inp[r * c + col]) - mean[r]) * rstd[r];
            db += dy;
        }
    }
    sw[threadIdx.y][threadIdx.x] = dw;
    sb[threadIdx.y][threadIdx.x] = db;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        float tw = 0.0f, tb = 0.0f;
#pragma unroll
        for (int j = 0; j < LN_PARTIAL_ROWS; ++j) {
            tw += sw[j][threadIdx.x];
            tb += sb[j][threadIdx.x];
        }
        partial[(long long)chunk * 2 * c + col] = tw;
        partial[(long long)chunk * 2 * c + c + col] = tb;
    }
}

#define LN_INSTANTIATE(SUF, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(CYB_WARP * LN_ROW_WARPS)                        \
        layernorm_forward_##SUF(T *out, float *mean, float *rstd,                                \
                                                       const T *inp, const float *weight,        \
                                                       const float *bias, int n, int c,          \
                                                       float eps) {                              \
        layernorm_forward<T>(out, mean, rstd, inp, weight, bias, n, c, eps);                     \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_WARP * LN_ROW_WARPS)                        \
        layernorm_backward_dinp_##SUF(                                                           \
        T *dinp, const T *dout, const T *inp, const float *weight, const float *mean,           \
        const float *rstd, int n, int c) {                                                       \
        layernorm_backward_dinp<T>(dinp, dout, inp, weight, mean, rstd, n, c);                   \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_WARP *LN_PARTIAL_ROWS)                      \
        layernorm_backward_params_partial_##SUF(const T *dout, const T *inp, const float *mean, \
                                                const float *rstd, int n, int c,                 \
                                                int rows_per_chunk, float *partial) {            \
        layernorm_backward_params_partial<T>(dout, inp, mean, rstd, n, c, rows_per_chunk,        \
                                             partial);                                           \
    }

LN_INSTANTIATE(f32, float)
LN_INSTANTIATE(bf16, __nv_bfloat16)

// partial [chunks, 2, C]; dweight, dbias [C] accumulated. One thread per (which, col).
extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)
layernorm_backward_params_finalize(const float *partial, int chunks,
                                   int c, float *dweight,
                                   float *dbias) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= 2 * c) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[(long long)k * 2 * c + j];
    if (j < c) {
        dweight[j] += s;
    } else {
        dbias[j - c] += s;
    }
}

// Residual stream and bias helpers (SPEC section 5): the elementwise tails of the
// Linear layers, and the deterministic column sums that give bias gradients.
//
//   bias_add_{f32,bf16}: y [N, C] += bias [C] (f32).
//   bias_residual_{f32,bf16}: y [N, C] = (y + bias) + resid, the order of the CPU
//     reference (linear_forward adds the bias, then add_in_place the residual).
//   colsum_partial_{f32,bf16}: grid (ceil(C/32), chunks), block (32, 8): per chunk of
//     `rows_per_chunk` rows of x [N, C], the column sums -> partial [chunks, C] f32.
//   colsum_finalize: one thread per column sums the partials in chunk order and
//     ACCUMULATES into out [C] f32 (the bias gradient: sum over rows of dout).
//
// No float atomics: every sum has a fixed shape, so results are bit-for-bit
// reproducible.

#include "common.cuh"

#define COLSUM_ROWS 8 // blockDim.y of colsum_partial

template <typename T>
__device__ void bias_add(T *y, const float *__restrict__ bias, long long total, int c) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = from_float<T>(to_float(y[i]) + bias[i % c]);
    }
}

template <typename T>
__device__ void bias_residual(T *y, const float *__restrict__ bias, const T *__restrict__ resid,
                              long long total, int c) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        // Two roundings, as the CPU: the Linear output (with bias) is a stored value.
        const float lin = to_float(from_float<T>(to_float(y[i]) + bias[i % c]));
        y[i] = from_float<T>(lin + to_float(resid[i]));
    }
}

template <typename T>
__device__ void colsum_partial(const T *__restrict__ x, int n, int c, int rows_per_chunk,
                               float *__restrict__ partial) {
    __shared__ float sh[COLSUM_ROWS][CYB_WARP + 1];
    const int col = blockIdx.x * CYB_WARP + threadIdx.x;
    const int chunk = blockIdx.y;
    const long long r0 = (long long)chunk * rows_per_chunk;
    long long r1 = r0 + rows_per_chunk;
    if (r1 > n) r1 = n;
    float s = 0.0f;
    if (col < c) {
        for (long long r = r0 + threadIdx.y; r < r1; r += COLSUM_ROWS) s += to_float(x[r * c + col]);
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        float t = 0.0f;
#pragma unroll
        for (int j = 0; j < COLSUM_ROWS; ++j) t += sh[j][threadIdx.x];
        partial[(long long)chunk * c + col] = t;
    }
}

#define RESIDUAL_INSTANTIATE(SUF, T)                                                             \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        bias_add_##SUF(T *y, const float *bias, long long total, int c) {                        \
        bias_add<T>(y, bias, total, c);                                                          \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        bias_residual_##SUF(T *y, const float *bias, const T *resid,                             \
                                                   long long total, int c) {                     \
        bias_residual<T>(y, bias, resid, total, c);                                              \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_WARP *COLSUM_ROWS)                          \
        colsum_partial_##SUF(const T *x, int n, int c, int rows_per_chunk, float *partial) {     \
        colsum_partial<T>(x, n, c, rows_per_chunk, partial);                                     \
    }

RESIDUAL_INSTANTIATE(f32, float)
RESIDUAL_INSTANTIATE(bf16, __nv_bfloat16)

// partial [chunks, C] -> out [C] += sum over chunks, in chunk order.
extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)
colsum_finalize(const float *partial, int chunks, int c, float *out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[(long long)k * c + j];
    out[j] += s;
}

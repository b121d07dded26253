// GELU, tanh approximation (SPEC section 5, as GPT-2), with the bias of the preceding
// Linear fused in; CUDA twin of src/cpu/gelu.rs, checked by tests/gpu_model.rs.
//
//   bias_gelu_forward_{f32,bf16}: pre [N, C] (in/out), bias [C] f32 or null, out [N, C]:
//     pre += bias (so the backward sees the same input as the CPU's fc), out = gelu(pre).
//   gelu_backward_{f32,bf16}: dinp [N*C] = dout * gelu'(inp); dinp may alias dout (every
//     element is read before it is written, by the same thread).
//
// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), math in f32.

#include "common.cuh"

#define GELU_COEF 0.044715f
#define SQRT_2_OVER_PI 0.7978845608028654f

template <typename T>
__device__ void bias_gelu_forward(T *pre, const float *__restrict__ bias, T *__restrict__ out,
                                  long long total, int c) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float x = to_float(pre[i]);
        if (bias != nullptr) {
            x += bias[i % c];
            x = to_float(from_float<T>(x)); // the backward reads the stored (rounded) value
            pre[i] = from_float<T>(x);
        }
        const float u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x);
        out[i] = from_float<T>(0.5f * x * (1.0f + tanhf(u)));
    }
}

template <typename T>
__device__ void gelu_backward(T *dinp, const T *__restrict__ inp, const T *dout, long long total) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = to_float(inp[i]);
        const float u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x);
        // 0.5 (1 + tanh u) = s = 1 / (1 + e) and 1 - tanh(u)^2 = 4 s (1 - s) = 4 s (e s),
        // e = exp(-2u): accurate in both tails, where 1 + tanhf(u) and 1 - tanhf(u)^2
        // cancel to nothing (x < -3: errors above 1e-6 of a gradient ~1e-4).
        const float e = expf(-2.0f * u);
        const float s = 1.0f / (1.0f + e);
        const float sech2 = e < INFINITY ? 4.0f * s * (e * s) : 0.0f; // e = inf: s = 0
        const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * x * x);
        const float dy = to_float(dout[i]);
        dinp[i] = from_float<T>(dy * (s + 0.5f * x * sech2 * du));
    }
}

#define GELU_INSTANTIATE(SUF, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        bias_gelu_forward_##SUF(T *pre, const float *bias, T *out,                               \
                                                       long long total, int c) {                 \
        bias_gelu_forward<T>(pre, bias, out, total, c);                                          \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        gelu_backward_##SUF(T *dinp, const T *inp, const T *dout,                                \
                                                   long long total) {                            \
        gelu_backward<T>(dinp, inp, dout, total);                                                \
    }

GELU_INSTANTIATE(f32, float)
GELU_INSTANTIATE(bf16, __nv_bfloat16)

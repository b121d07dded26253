// AdamW with global-norm gradient clipping, all on the device (no host round trip);
// CUDA twin of src/cpu/adamw.rs (clip_grad_norm, then AdamW::step), checked by
// tests/gpu_model.rs (adamw_step_matches_cpu).
//
// All parameters, gradients and moments are flat f32 buffers in the fixed tensor order
// of src/cpu/params.rs (SPEC section 7).
//
//   grad_sq_partial: a FIXED grid (ADAMW_NORM_BLOCKS x ADAMW_THREADS, independent of the
//     device), each thread sums g^2 in f64 over a fixed stride, then a fixed block tree
//     -> partial [ADAMW_NORM_BLOCKS] f64.
//   grad_norm_finalize: one block sums the partials (fixed tree) -> norm_scale [2] f32:
//     [0] = ||g|| (as f32), [1] = the clip scale max/(norm + 1e-6) if the norm is finite
//     and above `max_norm`, else 1 (the CPU's clip_grad_norm, which leaves non-finite
//     gradients untouched).
//   adamw_update: one launch per tensor (decay 0 for biases and LayerNorm), elementwise:
//     g = grad*scale (f32), m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2 (f32),
//     p -= lr*(m/bc1 / (sqrt(v/bc2) + eps) + wd p) in f64 (bc = 1 - beta^t from the host).
//
// Deterministic: fixed-shape reductions, no atomics.

#include "common.cuh"

// Keep in sync with src/gpu/adamw.rs.
#define ADAMW_THREADS 256
#define ADAMW_NORM_BLOCKS 512

extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    grad_sq_partial(const float *__restrict__ g, long long n, double *__restrict__ partial) {
    __shared__ double buf[ADAMW_THREADS];
    double s = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const double x = (double)g[i];
        s += x * x;
    }
    buf[threadIdx.x] = s;
    __syncthreads();
    block_tree_sum(buf);
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    grad_norm_finalize(const double *__restrict__ partial, int nblocks, float max_norm,
                       float *__restrict__ norm_scale) {
    __shared__ double buf[ADAMW_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) s += partial[i];
    buf[threadIdx.x] = s;
    __syncthreads();
    block_tree_sum(buf);
    if (threadIdx.x == 0) {
        const double norm = sqrt(buf[0]);
        float scale = 1.0f;
        if (isfinite(norm) && norm > (double)max_norm) {
            scale = (float)((double)max_norm / (norm + 1e-6));
        }
        norm_scale[0] = (float)norm;
        norm_scale[1] = scale;
    }
}

extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    adamw_update(float *__restrict__ p, const float *__restrict__ grad, float *__restrict__ m,
                 float *__restrict__ v, long long n, float lr, float beta1, float beta2,
                 float eps, float weight_decay, double bc1, double bc2,
                 const float *__restrict__ norm_scale) {
    const float scale = norm_scale[1];
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i] * scale;
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(1.0f - beta1, g));
        const float vi =
            __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(1.0f - beta2, g), g));
        m[i] = mi;
        v[i] = vi;
        const double m_hat = (double)mi / bc1;
        const double v_hat = (double)vi / bc2;
        const double update = m_hat / (sqrt(v_hat) + (double)eps) + (double)weight_decay * (double)p[i];
        p[i] -= (float)((double)lr * update);
    }
}

// The bf16 working copy of the f32 master weights (mixed-precision training): after each
// update, out[i] = bf16(p[i]) rounded to nearest even, the rounding cuBLAS and the bf16
// kernels would apply themselves, so the copy is exactly round(master).
extern "C" __global__ void __launch_bounds__(ADAMW_THREADS)
    cast_f32_to_bf16(const float *__restrict__ p, __nv_bfloat16 *__restrict__ out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = __float2bfloat16_rn(p[i]);
    }
}

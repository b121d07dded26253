// Input vectors of the pause-step expansion (SPEC sections 3 and 5); CUDA twin of
// src/cpu/embedding.rs, checked by tests/gpu_model.rs (embedding_*_matches_cpu).
//
// Shapes: out, dout [B, K+1, T, d] depth-major (row (b*(K+1)+k)*T + t, T = f32 or bf16);
// tokens [B, T] i32 in 0..V-1 (checked on the host); tables f32: tok_emb [V+1, d]
// (row V = PAUSE), pos_emb [>= T, d], depth_emb [>= K+1, d].
//
//   embedding_forward_{f32,bf16}: out[(b,k,t)] = (E[tok] + P[t]) + D[k], tok = x[b,t] at
//     k = 0 and PAUSE = V at k >= 1. One thread per element.
//   Backward, every output ACCUMULATED into the f32 gradient tables, no float atomics:
//   embedding_pos_backward_{f32,bf16}: one thread per (t, i): dP[t,i] += sum over (b, k)
//     in row order (b outer, k inner) of dout.
//   embedding_plane_partial_{f32,bf16}: grid (ceil(d/32), chunks, K+1), block (32, 8):
//     per depth plane k and chunk of `rows_per_chunk` of its B*T rows (b*T + t order),
//     the column sums -> partial [K+1, chunks, d].
//   embedding_depth_finalize: one thread per column i: S_k = sum of plane k's partials in
//     chunk order; dD[k,i] += S_k; dE[V,i] += S_1 + ... + S_K (every pause step reads the
//     PAUSE row, and nothing else does: real tokens are < V).
//   embedding_tok_backward_{f32,bf16}: grid (U, ceil(d/128)): for each distinct real token
//     u (a CSR list built on the host from the host tokens: `uniq [U]`, `starts [U+1]`,
//     `order [B*T]` positions b*T+t ascending within each token), one thread per column
//     sums the k = 0 rows of its positions in that order and adds to dE[uniq[u]].
//
// Every sum has a fixed order, so the gradients are bit-for-bit reproducible.

#include "common.cuh"

#define EMB_PARTIAL_ROWS 8
#define EMB_TOK_THREADS 128

template <typename T>
__device__ void embedding_forward(T *__restrict__ out, const int *__restrict__ tokens,
                                  const float *__restrict__ tok_emb,
                                  const float *__restrict__ pos_emb,
                                  const float *__restrict__ depth_emb, int batch, int k1, int seq,
                                  int d, int pause) {
    const long long total = (long long)batch * k1 * seq * d;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / d;
        const int col = (int)(i - row * d);
        const int t = (int)(row % seq);
        const long long bk = row / seq;
        const int k = (int)(bk % k1);
        const int b = (int)(bk / k1);
        const int tok = k == 0 ? tokens[(long long)b * seq + t] : pause;
        const float v = tok_emb[(long long)tok * d + col] + pos_emb[(long long)t * d + col];
        out[i] = from_float<T>(v + depth_emb[(long long)k * d + col]);
    }
}

template <typename T>
__device__ void embedding_pos_backward(float *__restrict__ dpos, const T *__restrict__ dout,
                                       int batch, int k1, int seq, int d) {
    const long long total = (long long)seq * d;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(i / d);
        const int col = (int)(i - (long long)t * d);
        float s = dpos[i];
        for (int b = 0; b < batch; ++b) {
            for (int k = 0; k < k1; ++k) {
                const long long row = ((long long)b * k1 + k) * seq + t;
                s += to_float(dout[row * d + col]);
            }
        }
        dpos[i] = s;
    }
}

template <typename T>
__device__ void embedding_plane_partial(const T *__restrict__ dout, int batch, int k1, int seq,
                                        int d, int rows_per_chunk, float *__restrict__ partial) {
    __shared__ float sh[EMB_PARTIAL_ROWS][CYB_WARP + 1];
    const int col = blockIdx.x * CYB_WARP + threadIdx.x;
    const int chunk = blockIdx.y;
    const int chunks = gridDim.y;
    const int k = blockIdx.z;
    const long long plane_rows = (long long)batch * seq;
    const long long j0 = (long long)chunk * rows_per_chunk;
    long long j1 = j0 + rows_per_chunk;
    if (j1 > plane_rows) j1 = plane_rows;
    float s = 0.0f;
    if (col < d) {
        for (long long j = j0 + threadIdx.y; j < j1; j += EMB_PARTIAL_ROWS) {
            const long long b = j / seq;
            const long long t = j - b * seq;
            const long long row = (b * k1 + k) * seq + t;
            s += to_float(dout[row * d + col]);
        }
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
        float tot = 0.0f;
#pragma unroll
        for (int j = 0; j < EMB_PARTIAL_ROWS; ++j) tot += sh[j][threadIdx.x];
        partial[((long long)k * chunks + chunk) * d + col] = tot;
    }
}

template <typename T>
__device__ void embedding_tok_backward(float *__restrict__ dtok, const T *__restrict__ dout,
                                       const int *__restrict__ uniq, const int *__restrict__ starts,
                                       const int *__restrict__ order, int k1, int seq, int d) {
    const int u = blockIdx.x;
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float s = 0.0f;
    for (int j = starts[u]; j < starts[u + 1]; ++j) {
        const int p = order[j]; // b*T + t
        const long long b = p / seq;
        const long long t = p - b * seq;
        const long long row = b * k1 * seq + t; // k = 0
        s += to_float(dout[row * d + col]);
    }
    dtok[(long long)uniq[u] * d + col] += s;
}

#define EMB_INSTANTIATE(SUF, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        embedding_forward_##SUF(                                                                 \
        T *out, const int *tokens, const float *tok_emb, const float *pos_emb,                   \
        const float *depth_emb, int batch, int k1, int seq, int d, int pause) {                  \
        embedding_forward<T>(out, tokens, tok_emb, pos_emb, depth_emb, batch, k1, seq, d,        \
                             pause);                                                             \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)                        \
        embedding_pos_backward_##SUF(float *dpos, const T *dout,                                 \
                                                            int batch, int k1, int seq, int d) { \
        embedding_pos_backward<T>(dpos, dout, batch, k1, seq, d);                                \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(CYB_WARP *EMB_PARTIAL_ROWS)                     \
        embedding_plane_partial_##SUF(const T *dout, int batch, int k1, int seq, int d,          \
                                      int rows_per_chunk, float *partial) {                      \
        embedding_plane_partial<T>(dout, batch, k1, seq, d, rows_per_chunk, partial);            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(EMB_TOK_THREADS)                                \
        embedding_tok_backward_##SUF(float *dtok, const T *dout, const int *uniq,                \
                                     const int *starts, const int *order, int k1, int seq,       \
                                     int d) {                                                    \
        embedding_tok_backward<T>(dtok, dout, uniq, starts, order, k1, seq, d);                  \
    }

EMB_INSTANTIATE(f32, float)
EMB_INSTANTIATE(bf16, __nv_bfloat16)

// partial [K+1, chunks, d]; ddepth [>= K+1, d] and the PAUSE row dpause [d] accumulated.
extern "C" __global__ void __launch_bounds__(CYB_ELEMENTWISE_THREADS)
embedding_depth_finalize(const float *partial, int k1, int chunks,
                         int d, float *ddepth, float *dpause) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float pause_sum = 0.0f;
    for (int k = 0; k < k1; ++k) {
        float s = 0.0f;
        for (int c = 0; c < chunks; ++c) s += partial[((long long)k * chunks + c) * d + col];
        ddepth[(long long)k * d + col] += s;
        if (k >= 1) pause_sum += s;
    }
    if (k1 > 1) dpause[col] += pause_sum;
}

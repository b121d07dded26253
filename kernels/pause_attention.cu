// Pause-step attention (SPEC section 3, both modes), forward and backward, in the
// FlashAttention-2 manner: tiles of keys stream through shared memory, the softmax is
// computed online, and neither the score matrix nor the probabilities are ever stored
// in global memory (the CPU reference saves `att`; these kernels save only `lse`).
//
// Shapes (depth-major, SPEC section 3; step (t, k) of batch b is row (b*(K+1)+k)*T+t):
//   qkv  [B, K+1, T, 3d]   q, then k, then v; heads contiguous (d = H * Dh)
//   out  [B, K+1, T, d]
//   lse  [B, H, K+1, T]    f32, natural-log logsumexp of the scaled scores of each query
//                          over the keys it sees (written by the forward, read back by
//                          the backward to recompute the probabilities)
//   delta[B, H, K+1, T]    f32, D = rowsum(dO * O) (pause_attn_delta_*)
//   dqkv [B, K+1, T, 3d]   overwritten: every element is written exactly once
// Elements are f32 or bf16 (T); every sum, exp and accumulator is f32. Scale 1/sqrt(Dh).
//
// Visibility comes from kernels/pause_mask.cuh (the one statement of the rules); the
// mode (PauseMode: 0 shared, 1 private) is the last kernel argument, block-uniform.
//   - Keys are walked plane by plane (tiled_planes: every depth k2 = 0..K for shared,
//     the real plane k2 = 0 for private), in shared-memory tiles along the causal
//     prefix of each plane only: tiles after the block's queries are never visited,
//     tiles wholly before them skip the per-element mask, only tiles straddling the
//     diagonal test each element (tile_class). So shared is one causal attention over
//     the (K+1)T interleaved stream, with no work on the masked half.
//   - private: the <= K own pause keys of a query are a small extra step after the
//     tiles: read straight from global memory, one online-softmax update each. So the
//     cost is about (K+1) causal attentions over T, never one over (K+1)T.
//
// Thread layout (every kernel): a row (a query in fwd/dQ, a key in dK/dV) is owned by
// TPR = Dh/16 consecutive lanes of one warp, each holding 16 of the Dh columns in
// registers (column c(s, n) = 4s + 4*TPR*(n/4) + n%4, so the TPR lanes of a row read
// one contiguous run of shared memory). Dot products are 16 FMAs per lane plus a
// butterfly over the TPR lanes, whose result is bitwise identical on every lane.
// 256 threads, ROWS = 256/TPR rows per block (64 for Dh 64, 32 for Dh 128).
//
// Backward, deterministic (no atomics): one kernel per output.
//   - pause_attn_dq: per query row, walk the same keys as the forward; dQ in registers.
//   - pause_attn_dkdv: per key row. A key of a tiled plane (every key for shared, the
//     real keys (t2, 0) for private) loops over the query tiles of every depth k = 0..K
//     that can see it (tile_class again); a private pause key (t2, k2 >= 1) over its
//     only queries (t2, k) for k = k2..K. dK and dV stay in registers, summed in a
//     fixed order, and are written once.
// Tensor cores: for bf16 every kernel has a second version on mma.sync m16n8k16
// (attn_forward_tc, attn_dq_tc, attn_dkdv_tc: the default for bf16; 4 warps of 16 rows,
// 64 rows per block), with the same key walk, mask rule, pause step and fixed
// summation order. The f32 kernels run their products as f32 FMAs on CUDA cores.
#include "common.cuh"
#include "pause_mask.cuh"

#define ATTN_THREADS 256

template <int DH> struct AttnCfg {
    static constexpr int C = 16;                  // columns of a row per lane
    static constexpr int TPR = DH / C;            // lanes per row (4 or 8)
    static constexpr int ROWS = ATTN_THREADS / TPR; // rows per block
    static constexpr int BK = 4096 / DH;          // rows per shared tile: 2 f32 tiles = 32 KB
    static constexpr int CH = 16;                 // keys per online-softmax update
    static_assert(DH % 16 == 0 && 32 % TPR == 0, "unsupported head dim");
    static_assert(BK % CH == 0, "tile must be a multiple of the chunk");
};

// Column of the n-th (0..15) register element of lane s.
template <int TPR> __device__ __forceinline__ int own_col(int s, int n) {
    return 4 * s + 4 * TPR * (n / 4) + (n % 4);
}

// Sum over the TPR lanes of a row (consecutive lanes, aligned); all 32 lanes must call.
template <int TPR> __device__ __forceinline__ float group_sum(float x) {
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Partial dot of 16 register values with the lane's columns of a shared f32 row.
template <int TPR> __device__ __forceinline__ float dot_shared(const float (&x)[16],
                                                               const float *row, int s) {
    float acc = 0.0f;
#pragma unroll
    for (int n4 = 0; n4 < 4; ++n4) {
        const float4 v = *reinterpret_cast<const float4 *>(row + 4 * s + 4 * TPR * n4);
        acc = fmaf(x[4 * n4 + 0], v.x, acc);
        acc = fmaf(x[4 * n4 + 1], v.y, acc);
        acc = fmaf(x[4 * n4 + 2], v.z, acc);
        acc = fmaf(x[4 * n4 + 3], v.w, acc);
    }
    return acc;
}

// The lane's 16 columns of a global row, as f32.
template <typename T, int TPR> __device__ __forceinline__ void load_cols(float (&x)[16],
                                                                          const T *row, int s) {
#pragma unroll
    for (int n = 0; n < 16; ++n) x[n] = to_float(row[own_col<TPR>(s, n)]);
}

template <int TPR> __device__ __forceinline__ float dot_regs(const float (&a)[16],
                                                            const float (&b)[16]) {
    float acc = 0.0f;
#pragma unroll
    for (int n = 0; n < 16; ++n) acc = fmaf(a[n], b[n], acc);
    return acc;
}

struct AttnIdx {
    int B, K1, T, H;
    int mode; // PauseMode
    __device__ __forceinline__ long long row(int b, int k, int t) const {
        return ((long long)b * K1 + k) * T + t;
    }
    // Index into [B, H, K+1, T] (lse, delta).
    __device__ __forceinline__ long long stat(int b, int h, int k, int t) const {
        return (((long long)b * H + h) * K1 + k) * T + t;
    }
};

// Loads rows 0..rows-1 (`stride` elements apart, Dh columns each) of `src` into the
// shared f32 tile `dst` [rows][Dh]; rows >= n_valid are zeros. All threads must call.
template <typename T, int DH>
__device__ __forceinline__ void load_rows(float *dst, const T *src, long long stride, int rows,
                                          int n_valid) {
    for (int e = threadIdx.x; e < rows * DH; e += ATTN_THREADS) {
        const int j = e / DH, c = e % DH;
        dst[e] = j < n_valid ? to_float(src[(long long)j * stride + c]) : 0.0f;
    }
}

// Where a thread sits: lane `s` of the row at position `t`, depth `k` (= blockIdx.y),
// batch `b`, head `h`; `r0` is the block's first position. `tc` is `t` clamped to T-1:
// rows past T read a real row (so every lane joins the shuffles) and never write.
template <int DH> struct RowCtx {
    int s, k, b, h, r0, t, tc, d;
    bool valid;
    long long stride; // of a qkv row, 3d
    float scale;
    __device__ __forceinline__ explicit RowCtx(const AttnIdx &ix) {
        s = threadIdx.x % AttnCfg<DH>::TPR;
        k = blockIdx.y;
        b = blockIdx.z / ix.H;
        h = blockIdx.z % ix.H;
        r0 = blockIdx.x * AttnCfg<DH>::ROWS;
        t = r0 + threadIdx.x / AttnCfg<DH>::TPR;
        valid = t < ix.T;
        tc = valid ? t : ix.T - 1;
        d = ix.H * DH;
        stride = 3LL * d;
        scale = 1.0f / sqrtf((float)DH);
    }
};

// ---------------------------------------------------------------------------------
// Forward. grid (ceil(T/ROWS), K+1, B*H); block: ROWS queries (t, k) of one depth k.
// ---------------------------------------------------------------------------------
template <typename T, int DH>
__device__ void attn_forward(const T *__restrict__ qkv, T *__restrict__ out,
                             float *__restrict__ lse, AttnIdx ix) {
    using Cfg = AttnCfg<DH>;
    constexpr int TPR = Cfg::TPR, BK = Cfg::BK, CH = Cfg::CH;
    __shared__ __align__(16) float ks[BK * DH];
    __shared__ __align__(16) float vs[BK * DH];
    const RowCtx<DH> c(ix);
    const int s = c.s, k = c.k, b = c.b, h = c.h, q0 = c.r0, t = c.t, tq = c.tc, d = c.d;
    const bool valid = c.valid;
    const long long stride = c.stride;
    const float scale = c.scale;

    float q[16], acc[16];
    load_cols<T, TPR>(q, qkv + ix.row(b, k, tq) * stride + h * DH, s);
#pragma unroll
    for (int n = 0; n < 16; ++n) acc[n] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    // Keys (t2, kp) of every tiled plane, t2 <= last query of the block: the causal
    // prefix only (a masked tile ends the plane: every later tile is masked too).
    const int q_last = min(q0 + Cfg::ROWS, ix.T) - 1;
    for (int kp = 0; kp < tiled_planes(ix.mode, ix.K1); ++kp) // break: ends plane kp only
    for (int j0 = 0; j0 <= q_last; j0 += BK) {
        const T *kbase = qkv + ix.row(b, kp, 0) * stride + h * DH;
        const int nk = min(BK, ix.T - j0);
        const TileClass cls = tile_class(ix.mode, k, kp, q0, q_last, j0, j0 + nk - 1);
        if (cls == TILE_MASKED) break;
        __syncthreads(); // the previous tile is no longer read
        load_rows<T, DH>(ks, kbase + (long long)j0 * stride + d, stride, BK, nk);
        load_rows<T, DH>(vs, kbase + (long long)j0 * stride + 2 * d, stride, BK, nk);
        __syncthreads();
        for (int c0 = 0; c0 < nk; c0 += CH) {
            float sc[CH];
            float cmax = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < CH; ++jj) {
                const int j = c0 + jj;
                const float dot = group_sum<TPR>(dot_shared<TPR>(q, ks + j * DH, s)) * scale;
                const bool vis =
                    j < nk && (cls == TILE_FULL || pause_visible(ix.mode, t, k, j0 + j, kp));
                sc[jj] = vis ? dot : -INFINITY;
                cmax = fmaxf(cmax, sc[jj]);
            }
            const float m_new = fmaxf(m, cmax);
            if (m_new != -INFINITY) {
                const float alpha = expf(m - m_new); // 0 while m = -inf
                l *= alpha;
#pragma unroll
                for (int n = 0; n < 16; ++n) acc[n] *= alpha;
#pragma unroll
                for (int jj = 0; jj < CH; ++jj) {
                    const float p = expf(sc[jj] - m_new); // 0 for masked keys
                    l += p;
                    const float *vr = vs + (c0 + jj) * DH;
#pragma unroll
                    for (int n4 = 0; n4 < 4; ++n4) {
                        const float4 v = *reinterpret_cast<const float4 *>(vr + 4 * s + 4 * TPR * n4);
                        acc[4 * n4 + 0] = fmaf(p, v.x, acc[4 * n4 + 0]);
                        acc[4 * n4 + 1] = fmaf(p, v.y, acc[4 * n4 + 1]);
                        acc[4 * n4 + 2] = fmaf(p, v.z, acc[4 * n4 + 2]);
                        acc[4 * n4 + 3] = fmaf(p, v.w, acc[4 * n4 + 3]);
                    }
                }
                m = m_new;
            }
        }
    }

    // Private: own pause keys (t, 1..k): at most K, one online update each (k is
    // block-uniform).
    for (int kp = 1; ix.mode == PAUSE_PRIVATE && kp <= k; ++kp) {
        const T *kr = qkv + ix.row(b, kp, tq) * stride + d + h * DH;
        float kx[16];
        load_cols<T, TPR>(kx, kr, s);
        const float dot = group_sum<TPR>(dot_regs<TPR>(q, kx)) * scale;
        if (pause_visible(ix.mode, t, k, tq, kp)) {
            const float m_new = fmaxf(m, dot);
            const float alpha = expf(m - m_new);
            const float p = expf(dot - m_new);
            l = l * alpha + p;
            float vx[16];
            load_cols<T, TPR>(vx, kr + d, s);
#pragma unroll
            for (int n = 0; n < 16; ++n) acc[n] = fmaf(p, vx[n], acc[n] * alpha);
            m = m_new;
        }
    }

    if (valid) {
        const float inv = 1.0f / l; // l >= 1: the max term contributes exp(0)
        T *orow = out + ix.row(b, k, t) * d + h * DH;
#pragma unroll
        for (int n = 0; n < 16; ++n) orow[own_col<TPR>(s, n)] = from_float<T>(acc[n] * inv);
        if (s == 0) lse[ix.stat(b, h, k, t)] = m + logf(l);
    }
}

// ---------------------------------------------------------------------------------
// delta = rowsum(dO * O) per (b, h, k, t). One warp per (row, head), fixed-order sum.
// ---------------------------------------------------------------------------------
template <typename T>
__device__ void attn_delta(const T *__restrict__ out, const T *__restrict__ dout,
                           float *__restrict__ delta, AttnIdx ix, int dh) {
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / CYB_WARP;
    const int lane = threadIdx.x % CYB_WARP;
    const long long nrows = (long long)ix.B * ix.K1 * ix.T;
    if (warp >= nrows * ix.H) return; // whole warps exit together
    const long long row = warp / ix.H;
    const int h = (int)(warp % ix.H);
    const long long base = row * ix.H * dh + (long long)h * dh;
    float acc = 0.0f;
    for (int c = lane; c < dh; c += CYB_WARP) acc = fmaf(to_float(dout[base + c]), to_float(out[base + c]), acc);
#pragma unroll
    for (int o = CYB_WARP / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) {
        const int t = (int)(row % ix.T);
        const int k = (int)((row / ix.T) % ix.K1);
        const int b = (int)(row / ((long long)ix.T * ix.K1));
        delta[ix.stat(b, h, k, t)] = acc;
    }
}

// ---------------------------------------------------------------------------------
// dQ. grid (ceil(T/ROWS), K+1, B*H); same key walk as the forward.
//   p = exp(s - lse), dS = p (dP - delta), dQ = scale * sum dS k
// ---------------------------------------------------------------------------------
template <typename T, int DH>
__device__ void attn_dq(const T *__restrict__ qkv, const T *__restrict__ dout,
                        const float *__restrict__ lse, const float *__restrict__ delta,
                        T *__restrict__ dqkv, AttnIdx ix) {
    using Cfg = AttnCfg<DH>;
    constexpr int TPR = Cfg::TPR, BK = Cfg::BK;
    __shared__ __align__(16) float ks[BK * DH];
    __shared__ __align__(16) float vs[BK * DH];
    const RowCtx<DH> c(ix);
    const int s = c.s, k = c.k, b = c.b, h = c.h, q0 = c.r0, t = c.t, tq = c.tc, d = c.d;
    const bool valid = c.valid;
    const long long stride = c.stride;
    const float scale = c.scale;

    float q[16], g[16], dq[16];
    load_cols<T, TPR>(q, qkv + ix.row(b, k, tq) * stride + h * DH, s);
    load_cols<T, TPR>(g, dout + ix.row(b, k, tq) * d + h * DH, s);
#pragma unroll
    for (int n = 0; n < 16; ++n) dq[n] = 0.0f;
    const float L = lse[ix.stat(b, h, k, tq)];
    const float Dl = delta[ix.stat(b, h, k, tq)];

    const int q_last = min(q0 + Cfg::ROWS, ix.T) - 1;
    for (int kp = 0; kp < tiled_planes(ix.mode, ix.K1); ++kp) // break: ends plane kp only
    for (int j0 = 0; j0 <= q_last; j0 += BK) {
        const T *kbase = qkv + ix.row(b, kp, 0) * stride + h * DH;
        const int nk = min(BK, ix.T - j0);
        const TileClass cls = tile_class(ix.mode, k, kp, q0, q_last, j0, j0 + nk - 1);
        if (cls == TILE_MASKED) break;
        __syncthreads();
        load_rows<T, DH>(ks, kbase + (long long)j0 * stride + d, stride, BK, nk);
        load_rows<T, DH>(vs, kbase + (long long)j0 * stride + 2 * d, stride, BK, nk);
        __syncthreads();
        for (int j = 0; j < nk; ++j) {
            const float sdot = group_sum<TPR>(dot_shared<TPR>(q, ks + j * DH, s)) * scale;
            const float pdot = group_sum<TPR>(dot_shared<TPR>(g, vs + j * DH, s));
            const bool vis = cls == TILE_FULL || pause_visible(ix.mode, t, k, j0 + j, kp);
            const float p = vis ? expf(sdot - L) : 0.0f;
            const float ds = p * (pdot - Dl);
            const float *kr = ks + j * DH;
#pragma unroll
            for (int n4 = 0; n4 < 4; ++n4) {
                const float4 v = *reinterpret_cast<const float4 *>(kr + 4 * s + 4 * TPR * n4);
                dq[4 * n4 + 0] = fmaf(ds, v.x, dq[4 * n4 + 0]);
                dq[4 * n4 + 1] = fmaf(ds, v.y, dq[4 * n4 + 1]);
                dq[4 * n4 + 2] = fmaf(ds, v.z, dq[4 * n4 + 2]);
                dq[4 * n4 + 3] = fmaf(ds, v.w, dq[4 * n4 + 3]);
            }
        }
    }
    for (int kp = 1; ix.mode == PAUSE_PRIVATE && kp <= k; ++kp) {
        const T *kr = qkv + ix.row(b, kp, tq) * stride + d + h * DH;
        float kx[16], vx[16];
        load_cols<T, TPR>(kx, kr, s);
        load_cols<T, TPR>(vx, kr + d, s);
        const float sdot = group_sum<TPR>(dot_regs<TPR>(q, kx)) * scale;
        const float pdot = group_sum<TPR>(dot_regs<TPR>(g, vx));
        const float p = pause_visible(ix.mode, t, k, tq, kp) ? expf(sdot - L) : 0.0f;
        const float ds = p * (pdot - Dl);
#pragma unroll
        for (int n = 0; n < 16; ++n) dq[n] = fmaf(ds, kx[n], dq[n]);
    }
    if (valid) {
        T *row = dqkv + ix.row(b, k, t) * stride + h * DH;
#pragma unroll
        for (int n = 0; n < 16; ++n) row[own_col<TPR>(s, n)] = from_float<T>(dq[n] * scale);
    }
}

// ---------------------------------------------------------------------------------
// dK, dV. grid (ceil(T/ROWS), K+1, B*H); block: ROWS keys (t2, k2) of one depth k2.
//   dV = sum_q p dO,  dK = scale * sum_q dS q   over the queries that see the key.
// ---------------------------------------------------------------------------------
template <typename T, int DH>
__device__ void attn_dkdv(const T *__restrict__ qkv, const T *__restrict__ dout,
                          const float *__restrict__ lse, const float *__restrict__ delta,
                          T *__restrict__ dqkv, AttnIdx ix) {
    using Cfg = AttnCfg<DH>;
    constexpr int TPR = Cfg::TPR, BQ = Cfg::BK;
    __shared__ __align__(16) float qs[BQ * DH];
    __shared__ __align__(16) float gs[BQ * DH];
    __shared__ float ls[BQ];
    __shared__ float dls[BQ];
    const RowCtx<DH> c(ix); // the row is a key (t2, k2)
    const int s = c.s, k2 = c.k, b = c.b, h = c.h, key0 = c.r0, t2 = c.t, tk = c.tc, d = c.d;
    const bool valid = c.valid;
    const long long stride = c.stride;
    const float scale = c.scale;

    float kx[16], vx[16], dk[16], dv[16];
    const T *krow = qkv + ix.row(b, k2, tk) * stride + d + h * DH;
    load_cols<T, TPR>(kx, krow, s);
    load_cols<T, TPR>(vx, krow + d, s);
#pragma unroll
    for (int n = 0; n < 16; ++n) dk[n] = dv[n] = 0.0f;

    if (k2 < tiled_planes(ix.mode, ix.K1)) {
        // Key of a tiled plane: every depth k, every query tile that can see it (from
        // the one holding key0: no earlier query sees a key in either mode).
        const int key_last = min(key0 + Cfg::ROWS, ix.T) - 1;
        for (int k = 0; k < ix.K1; ++k) {
            for (int i0 = (key0 / BQ) * BQ; i0 < ix.T; i0 += BQ) {
                const int nq = min(BQ, ix.T - i0);
                const TileClass cls = tile_class(ix.mode, k, k2, i0, i0 + nq - 1, key0, key_last);
                if (cls == TILE_MASKED) continue; // (shared, k < k2: the diagonal tile)
                __syncthreads();
                load_rows<T, DH>(qs, qkv + ix.row(b, k, i0) * stride + h * DH, stride, BQ, nq);
                load_rows<T, DH>(gs, dout + ix.row(b, k, i0) * d + h * DH, d, BQ, nq);
                for (int i = threadIdx.x; i < BQ; i += ATTN_THREADS) {
                    ls[i] = i < nq ? lse[ix.stat(b, h, k, i0 + i)] : 0.0f;
                    dls[i] = i < nq ? delta[ix.stat(b, h, k, i0 + i)] : 0.0f;
                }
                __syncthreads();
                for (int i = 0; i < nq; ++i) {
                    const float *qr = qs + i * DH;
                    const float *gr = gs + i * DH;
                    const float sdot = group_sum<TPR>(dot_shared<TPR>(kx, qr, s)) * scale;
                    const float pdot = group_sum<TPR>(dot_shared<TPR>(vx, gr, s));
                    const bool vis = cls == TILE_FULL || pause_visible(ix.mode, i0 + i, k, t2, k2);
                    const float p = vis ? expf(sdot - ls[i]) : 0.0f;
                    const float ds = p * (pdot - dls[i]);
#pragma unroll
                    for (int n4 = 0; n4 < 4; ++n4) {
                        const float4 qv = *reinterpret_cast<const float4 *>(qr + 4 * s + 4 * TPR * n4);
                        const float4 gv = *reinterpret_cast<const float4 *>(gr + 4 * s + 4 * TPR * n4);
                        dv[4 * n4 + 0] = fmaf(p, gv.x, dv[4 * n4 + 0]);
                        dv[4 * n4 + 1] = fmaf(p, gv.y, dv[4 * n4 + 1]);
                        dv[4 * n4 + 2] = fmaf(p, gv.z, dv[4 * n4 + 2]);
                        dv[4 * n4 + 3] = fmaf(p, gv.w, dv[4 * n4 + 3]);
                        dk[4 * n4 + 0] = fmaf(ds, qv.x, dk[4 * n4 + 0]);
                        dk[4 * n4 + 1] = fmaf(ds, qv.y, dk[4 * n4 + 1]);
                        dk[4 * n4 + 2] = fmaf(ds, qv.z, dk[4 * n4 + 2]);
                        dk[4 * n4 + 3] = fmaf(ds, qv.w, dk[4 * n4 + 3]);
                    }
                }
            }
        }
    } else {
        // Private pause key (t2, k2): seen only by the queries (t2, k), k = k2..K.
        for (int k = k2; k < ix.K1; ++k) {
            float q[16], g[16];
            load_cols<T, TPR>(q, qkv + ix.row(b, k, tk) * stride + h * DH, s);
            load_cols<T, TPR>(g, dout + ix.row(b, k, tk) * d + h * DH, s);
            const float sdot = group_sum<TPR>(dot_regs<TPR>(kx, q)) * scale;
            const float pdot = group_sum<TPR>(dot_regs<TPR>(vx, g));
            const float p = pause_visible(ix.mode, tk, k, tk, k2) ? expf(sdot - lse[ix.stat(b, h, k, tk)]) : 0.0f;
            const float ds = p * (pdot - delta[ix.stat(b, h, k, tk)]);
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                dv[n] = fmaf(p, g[n], dv[n]);
                dk[n] = fmaf(ds, q[n], dk[n]);
            }
        }
    }
    if (valid) {
        T *row = dqkv + ix.row(b, k2, t2) * stride + d + h * DH;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            row[own_col<TPR>(s, n)] = from_float<T>(dk[n] * scale);
            row[d + own_col<TPR>(s, n)] = from_float<T>(dv[n]);
        }
    }
}

// ---------------------------------------------------------------------------------
// Forward on tensor cores (bf16 only): mma.sync m16n8k16, bf16 x bf16 -> f32.
// grid (ceil(T/64), K+1, B*H), 128 threads: warp w owns the 16 queries
// q0 + 16w .. q0 + 16w + 15 of depth k. Same key walk, mask and pause step as
// attn_forward; S and O live in mma accumulator fragments, P is rounded to bf16 for the
// P·V product (as in FlashAttention-2), the row sums l are accumulated in f32.
// Fragment layout (PTX ISA, m16n8k16 .bf16): g = lane/4, c = lane%4;
//   A (16x16, row): reg0 (g, 2c..2c+1), reg1 (g+8, 2c..), reg2 (g, 2c+8..), reg3 (g+8, 2c+8..)
//   B (16x8, col):  reg0 (k = 2c..2c+1, n = g), reg1 (k = 2c+8.., n = g)
//   C (16x8):       c0,c1 (g, 2c..2c+1), c2,c3 (g+8, 2c..2c+1)
// ---------------------------------------------------------------------------------
#define TC_THREADS 128
#define TC_BQ 64
#define TC_BK 64

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const uint32_t a = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    const uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
    return a | (b << 16);
}

__device__ __forceinline__ uint32_t pair_bf16(const __nv_bfloat16 *p) { // p[0] low, p[1] high
    return (uint32_t)__bfloat16_as_ushort(p[0]) | ((uint32_t)__bfloat16_as_ushort(p[1]) << 16);
}

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2]) {
#ifdef CYB_HOST_EMU
    emu_mma_bf16_16816(c, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// A fragments of the 16 rows (row0: this lane's row g, row1: row g+8) over all Dh
// columns, straight from global memory (bf16 pairs are contiguous).
template <int KS>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[KS][4], const __nv_bfloat16 *row0,
                                             const __nv_bfloat16 *row1, int c) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        a[kk][0] = pair_bf16(row0 + 16 * kk + 2 * c);
        a[kk][1] = pair_bf16(row1 + 16 * kk + 2 * c);
        a[kk][2] = pair_bf16(row0 + 16 * kk + 8 + 2 * c);
        a[kk][3] = pair_bf16(row1 + 16 * kk + 8 + 2 * c);
    }
}

// B fragment whose k index runs down the rows of a shared [rows][ld] tile (k = tile
// row, n = column): `p` points at (row 16j + 2c, column 8n + g).
__device__ __forceinline__ void b_frag_rows(uint32_t (&bb)[2], const __nv_bfloat16 *p, int ld) {
    bb[0] = (uint32_t)__bfloat16_as_ushort(p[0]) | ((uint32_t)__bfloat16_as_ushort(p[ld]) << 16);
    bb[1] = (uint32_t)__bfloat16_as_ushort(p[8 * ld]) |
            ((uint32_t)__bfloat16_as_ushort(p[9 * ld]) << 16);
}

// The accumulators of S tiles 2j and 2j+1 (16 columns) as the A fragment of the next
// product, rounded to bf16: the C layout of two n-tiles is the A layout of one k-step.
template <int NS>
__device__ __forceinline__ void c_to_a_frag(uint32_t (&a)[4], const float (&x)[NS][4], int j) {
    a[0] = pack_bf16(x[2 * j][0], x[2 * j][1]);
    a[1] = pack_bf16(x[2 * j][2], x[2 * j][3]);
    a[2] = pack_bf16(x[2 * j + 1][0], x[2 * j + 1][1]);
    a[3] = pack_bf16(x[2 * j + 1][2], x[2 * j + 1][3]);
}

// Real keys j0 .. j0 + TC_BK - 1 (k2 = 0) into shared bf16 tiles, zeros past T.
template <int DH, int LD>
__device__ __forceinline__ void load_kv_tile_bf16(__nv_bfloat16 *ks, __nv_bfloat16 *vs,
                                                  const __nv_bfloat16 *kbase, long long stride,
                                                  int d, int nk) {
    const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
    for (int e = threadIdx.x; e < TC_BK * DH; e += TC_THREADS) {
        const int j = e / DH, col = e % DH;
        const __nv_bfloat16 *p = kbase + (long long)j * stride + col;
        ks[j * LD + col] = j < nk ? p[d] : zero;
        vs[j * LD + col] = j < nk ? p[2 * d] : zero;
    }
}

// Partial dot of this lane's Dh/4 columns of two global rows (sum over the 4 lanes of
// the row with quad_sum).
template <int KS>
__device__ __forceinline__ float lane_dot(const __nv_bfloat16 *x, const __nv_bfloat16 *y, int c) {
    float acc = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = 16 * kk + 8 * half + 2 * c + e;
                acc = fmaf(__bfloat162float(x[col]), __bfloat162float(y[col]), acc);
            }
    return acc;
}

// x = A · tile^T for NS n-tiles of 8 tile rows (B: k = tile column, n = tile row),
// starting from zero; A holds 16 rows over all Dh columns.
template <int KS, int NS, int LD>
__device__ __forceinline__ void mma_tile_rows(float (&x)[NS][4], const uint32_t (&a)[KS][4],
                                              const __nv_bfloat16 *tile, int g, int c) {
#pragma unroll
    for (int n = 0; n < NS; ++n) x[n][0] = x[n][1] = x[n][2] = x[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
        for (int n = 0; n < NS; ++n) {
            const __nv_bfloat16 *r = tile + (8 * n + g) * LD + 16 * kk + 2 * c;
            const uint32_t bb[2] = {pair_bf16(r), pair_bf16(r + 8)};
            mma_bf16_16816(x[n], a[kk], bb);
        }
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int DH>
__device__ void attn_forward_tc(const __nv_bfloat16 *__restrict__ qkv,
                                __nv_bfloat16 *__restrict__ out, float *__restrict__ lse,
                                AttnIdx ix) {
    constexpr int LD = DH + 8; // padded shared row (bf16): conflict-free B loads of K
    constexpr int KS = DH / 16, NO = DH / 8, NS = TC_BK / 8;
    __shared__ __align__(16) __nv_bfloat16 ks[TC_BK * LD];
    __shared__ __align__(16) __nv_bfloat16 vs[TC_BK * LD];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, c = lane % 4;
    const int k = blockIdx.y;
    const int b = blockIdx.z / ix.H, h = blockIdx.z % ix.H;
    const int q0 = blockIdx.x * TC_BQ;
    const int d = ix.H * DH;
    const long long stride = 3LL * d;
    const float scale = 1.0f / sqrtf((float)DH);
    // This lane's two rows: t[0] = q0 + 16w + g, t[1] = t[0] + 8 (clamped for reads).
    int t[2], tc[2];
    for (int r = 0; r < 2; ++r) {
        t[r] = q0 + 16 * warp + g + 8 * r;
        tc[r] = t[r] < ix.T ? t[r] : ix.T - 1;
    }
    const __nv_bfloat16 *qrow[2] = {qkv + ix.row(b, k, tc[0]) * stride + h * DH,
                                    qkv + ix.row(b, k, tc[1]) * stride + h * DH};
    uint32_t qa[KS][4];
    load_a_frags<KS>(qa, qrow[0], qrow[1], c);
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; // l: this lane's columns only

    const int q_last = min(q0 + TC_BQ, ix.T) - 1;
    for (int kp = 0; kp < tiled_planes(ix.mode, ix.K1); ++kp) // break: ends plane kp only
    for (int j0 = 0; j0 <= q_last; j0 += TC_BK) {
        const __nv_bfloat16 *kbase = qkv + ix.row(b, kp, 0) * stride + h * DH;
        const int nk = min(TC_BK, ix.T - j0);
        const TileClass cls = tile_class(ix.mode, k, kp, q0, q_last, j0, j0 + nk - 1);
        if (cls == TILE_MASKED) break;
        __syncthreads();
        load_kv_tile_bf16<DH, LD>(ks, vs, kbase + (long long)j0 * stride, stride, d, nk);
        __syncthreads();
        float sc[NS][4];
        mma_tile_rows<KS, NS, LD>(sc, qa, ks, g, c);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = i / 2, key = 8 * n + 2 * c + (i % 2);
                const bool vis =
                    key < nk && (cls == TILE_FULL || pause_visible(ix.mode, t[r], k, j0 + key, kp));
                sc[n][i] = vis ? sc[n][i] * scale : -INFINITY;
                mx[r] = fmaxf(mx[r], sc[n][i]);
            }
        float alpha[2], mnew[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            mnew[r] = fmaxf(m[r], mx[r]);
            // A row with nothing visible yet (only rows past T) keeps m = -inf.
            alpha[r] = mnew[r] == -INFINITY ? 1.0f : expf(m[r] - mnew[r]);
            l[r] *= alpha[r];
            m[r] = mnew[r];
        }
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = i / 2;
                const float p = m[r] == -INFINITY ? 0.0f : expf(sc[n][i] - m[r]);
                sc[n][i] = p;
                l[r] += p;
            }
        // O += P V, 16 keys (two S tiles) per k-step.
#pragma unroll
        for (int j = 0; j < TC_BK / 16; ++j) {
            uint32_t pa[4];
            c_to_a_frag<NS>(pa, sc, j);
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                uint32_t bb[2];
                b_frag_rows(bb, vs + (16 * j + 2 * c) * LD + 8 * n + g, LD);
                mma_bf16_16816(o[n], pa, bb);
            }
        }
    }

    // Private: own pause keys (t, 1..k); the 4 lanes of a row hold its q columns
    // between them.
    for (int kp = 1; ix.mode == PAUSE_PRIVATE && kp <= k; ++kp) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const __nv_bfloat16 *kr = qkv + ix.row(b, kp, tc[r]) * stride + d + h * DH;
            const float sdot = quad_sum(lane_dot<KS>(qrow[r], kr, c)) * scale;
            if (pause_visible(ix.mode, t[r], k, tc[r], kp)) {
                const float mn = fmaxf(m[r], sdot);
                const float al = expf(m[r] - mn);
                const float p = expf(sdot - mn);
                l[r] = l[r] * al + (c == 0 ? p : 0.0f); // counted once per row
                m[r] = mn;
#pragma unroll
                for (int n = 0; n < NO; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const float v = __bfloat162float(kr[d + 8 * n + 2 * c + e]);
                        o[n][2 * r + e] = fmaf(p, v, o[n][2 * r + e] * al);
                    }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] = quad_sum(l[r]);
        if (t[r] < ix.T) {
            const float inv = 1.0f / l[r];
            __nv_bfloat16 *orow = out + ix.row(b, k, t[r]) * d + h * DH;
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    orow[8 * n + 2 * c + e] = __float2bfloat16_rn(o[n][2 * r + e] * inv);
            if (c == 0) lse[ix.stat(b, h, k, t[r])] = m[r] + logf(l[r]);
        }
    }
}

// dQ on tensor cores (bf16 only), the twin of attn_dq with the layout of
// attn_forward_tc: S = Q K^T and dP = dO V^T on mma, P = exp(S - lse),
// dS = P (dP - delta) rounded to bf16 for dQ += dS K (as in FlashAttention-2).
template <int DH>
__device__ void attn_dq_tc(const __nv_bfloat16 *__restrict__ qkv,
                           const __nv_bfloat16 *__restrict__ dout, const float *__restrict__ lse,
                           const float *__restrict__ delta, __nv_bfloat16 *__restrict__ dqkv,
                           AttnIdx ix) {
    constexpr int LD = DH + 8;
    constexpr int KS = DH / 16, NO = DH / 8, NS = TC_BK / 8;
    __shared__ __align__(16) __nv_bfloat16 ks[TC_BK * LD];
    __shared__ __align__(16) __nv_bfloat16 vs[TC_BK * LD];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, c = lane % 4;
    const int k = blockIdx.y;
    const int b = blockIdx.z / ix.H, h = blockIdx.z % ix.H;
    const int q0 = blockIdx.x * TC_BQ;
    const int d = ix.H * DH;
    const long long stride = 3LL * d;
    const float scale = 1.0f / sqrtf((float)DH);
    int t[2], tc[2];
    float L[2], Dl[2];
    for (int r = 0; r < 2; ++r) {
        t[r] = q0 + 16 * warp + g + 8 * r;
        tc[r] = t[r] < ix.T ? t[r] : ix.T - 1;
        L[r] = lse[ix.stat(b, h, k, tc[r])];
        Dl[r] = delta[ix.stat(b, h, k, tc[r])];
    }
    const __nv_bfloat16 *qrow[2] = {qkv + ix.row(b, k, tc[0]) * stride + h * DH,
                                    qkv + ix.row(b, k, tc[1]) * stride + h * DH};
    const __nv_bfloat16 *grow[2] = {dout + ix.row(b, k, tc[0]) * d + h * DH,
                                    dout + ix.row(b, k, tc[1]) * d + h * DH};
    uint32_t qa[KS][4], ga[KS][4];
    load_a_frags<KS>(qa, qrow[0], qrow[1], c);
    load_a_frags<KS>(ga, grow[0], grow[1], c);
    float dq[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    const int q_last = min(q0 + TC_BQ, ix.T) - 1;
    for (int kp = 0; kp < tiled_planes(ix.mode, ix.K1); ++kp) // break: ends plane kp only
    for (int j0 = 0; j0 <= q_last; j0 += TC_BK) {
        const __nv_bfloat16 *kbase = qkv + ix.row(b, kp, 0) * stride + h * DH;
        const int nk = min(TC_BK, ix.T - j0);
        const TileClass cls = tile_class(ix.mode, k, kp, q0, q_last, j0, j0 + nk - 1);
        if (cls == TILE_MASKED) break;
        __syncthreads();
        load_kv_tile_bf16<DH, LD>(ks, vs, kbase + (long long)j0 * stride, stride, d, nk);
        __syncthreads();
        float sc[NS][4], dp[NS][4];
        mma_tile_rows<KS, NS, LD>(sc, qa, ks, g, c); // S = Q K^T
        mma_tile_rows<KS, NS, LD>(dp, ga, vs, g, c); // dP = dO V^T
        // dS into sc.
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = i / 2, key = 8 * n + 2 * c + (i % 2);
                const bool vis =
                    key < nk && (cls == TILE_FULL || pause_visible(ix.mode, t[r], k, j0 + key, kp));
                const float p = vis ? expf(sc[n][i] * scale - L[r]) : 0.0f;
                sc[n][i] = p * (dp[n][i] - Dl[r]);
            }
        // dQ += dS K, 16 keys per k-step (B: k = key, n = head column).
#pragma unroll
        for (int j = 0; j < TC_BK / 16; ++j) {
            uint32_t sa[4];
            c_to_a_frag<NS>(sa, sc, j);
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                uint32_t bb[2];
                b_frag_rows(bb, ks + (16 * j + 2 * c) * LD + 8 * n + g, LD);
                mma_bf16_16816(dq[n], sa, bb);
            }
        }
    }

    // Private: own pause keys (t, 1..k), one at a time.
    for (int kp = 1; ix.mode == PAUSE_PRIVATE && kp <= k; ++kp) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const __nv_bfloat16 *kr = qkv + ix.row(b, kp, tc[r]) * stride + d + h * DH;
            const float ps = quad_sum(lane_dot<KS>(qrow[r], kr, c));
            const float pd = quad_sum(lane_dot<KS>(grow[r], kr + d, c));
            const float p =
                pause_visible(ix.mode, t[r], k, tc[r], kp) ? expf(ps * scale - L[r]) : 0.0f;
            const float ds = p * (pd - Dl[r]);
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    dq[n][2 * r + e] =
                        fmaf(ds, __bfloat162float(kr[8 * n + 2 * c + e]), dq[n][2 * r + e]);
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (t[r] < ix.T) {
            __nv_bfloat16 *row = dqkv + ix.row(b, k, t[r]) * stride + h * DH;
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    row[8 * n + 2 * c + e] = __float2bfloat16_rn(dq[n][2 * r + e] * scale);
        }
    }
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_dq_tc_bf16_d64(const __nv_bfloat16 *qkv, const __nv_bfloat16 *dout,
                              const float *lse, const float *delta, __nv_bfloat16 *dqkv, int B,
                              int K1, int Tn, int H, int mode) {
    attn_dq_tc<64>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_dq_tc_bf16_d128(const __nv_bfloat16 *qkv, const __nv_bfloat16 *dout,
                               const float *lse, const float *delta, __nv_bfloat16 *dqkv, int B,
                               int K1, int Tn, int H, int mode) {
    attn_dq_tc<128>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});
}

// dK, dV on tensor cores (bf16 only), the twin of attn_dkdv: warp w owns the 16 keys
// key0 + 16w .. + 15 of depth k2 (= blockIdx.y). Keys of a tiled plane (all for shared,
// k2 = 0 for private) walk the query tiles of every depth that can see them:
// S^T = K Q^T and dP^T = V dO^T on mma, P^T = exp(S^T - lse),
// dS^T = P^T (dP^T - delta), then dV += P^T dO and dK += dS^T Q with P^T, dS^T rounded
// to bf16. Private pause keys (k2 >= 1) take the scalar path: their <= K queries
// (t2, k2..K), one at a time.
template <int DH>
__device__ void attn_dkdv_tc(const __nv_bfloat16 *__restrict__ qkv,
                             const __nv_bfloat16 *__restrict__ dout,
                             const float *__restrict__ lse, const float *__restrict__ delta,
                             __nv_bfloat16 *__restrict__ dqkv, AttnIdx ix) {
    constexpr int LD = DH + 8;
    constexpr int BQ = 4096 / DH; // queries per tile: 64 at Dh 64, 32 at Dh 128 (registers)
    constexpr int KS = DH / 16, NO = DH / 8, NS = BQ / 8;
    __shared__ __align__(16) __nv_bfloat16 qs[BQ * LD];
    __shared__ __align__(16) __nv_bfloat16 gs[BQ * LD];
    __shared__ float ls[BQ], dls[BQ];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, c = lane % 4;
    const int k2 = blockIdx.y;
    const int b = blockIdx.z / ix.H, h = blockIdx.z % ix.H;
    const int key0 = blockIdx.x * TC_BQ;
    const int d = ix.H * DH;
    const long long stride = 3LL * d;
    const float scale = 1.0f / sqrtf((float)DH);
    int t2[2], tk[2];
    for (int r = 0; r < 2; ++r) {
        t2[r] = key0 + 16 * warp + g + 8 * r;
        tk[r] = t2[r] < ix.T ? t2[r] : ix.T - 1;
    }
    const __nv_bfloat16 *krow[2] = {qkv + ix.row(b, k2, tk[0]) * stride + d + h * DH,
                                    qkv + ix.row(b, k2, tk[1]) * stride + d + h * DH};
    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) dk[n][i] = dv[n][i] = 0.0f;

    if (k2 < tiled_planes(ix.mode, ix.K1)) {
        uint32_t ka[KS][4], va[KS][4];
        load_a_frags<KS>(ka, krow[0], krow[1], c);
        load_a_frags<KS>(va, krow[0] + d, krow[1] + d, c);
        const int key_last = min(key0 + TC_BQ, ix.T) - 1;
        for (int k = 0; k < ix.K1; ++k) {
            for (int i0 = (key0 / BQ) * BQ; i0 < ix.T; i0 += BQ) {
                const int nq = min(BQ, ix.T - i0);
                const TileClass cls = tile_class(ix.mode, k, k2, i0, i0 + nq - 1, key0, key_last);
                if (cls == TILE_MASKED) continue; // (shared, k < k2: the diagonal tile)
                __syncthreads();
                for (int e = threadIdx.x; e < BQ * DH; e += TC_THREADS) {
                    const int i = e / DH, col = e % DH;
                    const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
                    qs[i * LD + col] =
                        i < nq ? qkv[ix.row(b, k, i0 + i) * stride + h * DH + col] : zero;
                    gs[i * LD + col] = i < nq ? dout[ix.row(b, k, i0 + i) * d + h * DH + col] : zero;
                }
                for (int i = threadIdx.x; i < BQ; i += TC_THREADS) {
                    ls[i] = i < nq ? lse[ix.stat(b, h, k, i0 + i)] : 0.0f;
                    dls[i] = i < nq ? delta[ix.stat(b, h, k, i0 + i)] : 0.0f;
                }
                __syncthreads();
                float st[NS][4], dpt[NS][4];
                mma_tile_rows<KS, NS, LD>(st, ka, qs, g, c);  // S^T = K Q^T
                mma_tile_rows<KS, NS, LD>(dpt, va, gs, g, c); // dP^T = V dO^T
                // P^T into st, dS^T into dpt.
#pragma unroll
                for (int n = 0; n < NS; ++n)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const int r = i / 2, qi = 8 * n + 2 * c + (i % 2);
                        const bool vis = qi < nq && (cls == TILE_FULL ||
                                                     pause_visible(ix.mode, i0 + qi, k, t2[r], k2));
                        const float p = vis ? expf(st[n][i] * scale - ls[qi]) : 0.0f;
                        st[n][i] = p;
                        dpt[n][i] = p * (dpt[n][i] - dls[qi]);
                    }
                // dV += P^T dO, dK += dS^T Q: 16 queries per k-step (B: k = query, n = col).
#pragma unroll
                for (int j = 0; j < BQ / 16; ++j) {
                    uint32_t pa[4], sa[4];
                    c_to_a_frag<NS>(pa, st, j);
                    c_to_a_frag<NS>(sa, dpt, j);
#pragma unroll
                    for (int n = 0; n < NO; ++n) {
                        const int o = (16 * j + 2 * c) * LD + 8 * n + g;
                        uint32_t bg[2], bq[2];
                        b_frag_rows(bg, gs + o, LD);
                        b_frag_rows(bq, qs + o, LD);
                        mma_bf16_16816(dv[n], pa, bg);
                        mma_bf16_16816(dk[n], sa, bq);
                    }
                }
            }
        }
    } else {
        // Private pause key (t2, k2): seen only by the queries (t2, k), k = k2..K.
        for (int k = k2; k < ix.K1; ++k) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const __nv_bfloat16 *qr = qkv + ix.row(b, k, tk[r]) * stride + h * DH;
                const __nv_bfloat16 *gr = dout + ix.row(b, k, tk[r]) * d + h * DH;
                const float ps = quad_sum(lane_dot<KS>(krow[r], qr, c));
                const float pd = quad_sum(lane_dot<KS>(krow[r] + d, gr, c));
                const float p = pause_visible(ix.mode, tk[r], k, tk[r], k2)
                                    ? expf(ps * scale - lse[ix.stat(b, h, k, tk[r])])
                                    : 0.0f;
                const float ds = p * (pd - delta[ix.stat(b, h, k, tk[r])]);
#pragma unroll
                for (int n = 0; n < NO; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int col = 8 * n + 2 * c + e;
                        dv[n][2 * r + e] = fmaf(p, __bfloat162float(gr[col]), dv[n][2 * r + e]);
                        dk[n][2 * r + e] = fmaf(ds, __bfloat162float(qr[col]), dk[n][2 * r + e]);
                    }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (t2[r] < ix.T) {
            __nv_bfloat16 *row = dqkv + ix.row(b, k2, t2[r]) * stride + d + h * DH;
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    row[8 * n + 2 * c + e] = __float2bfloat16_rn(dk[n][2 * r + e] * scale);
                    row[d + 8 * n + 2 * c + e] = __float2bfloat16_rn(dv[n][2 * r + e]);
                }
        }
    }
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_dkdv_tc_bf16_d64(const __nv_bfloat16 *qkv, const __nv_bfloat16 *dout,
                                const float *lse, const float *delta, __nv_bfloat16 *dqkv, int B,
                                int K1, int Tn, int H, int mode) {
    attn_dkdv_tc<64>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_dkdv_tc_bf16_d128(const __nv_bfloat16 *qkv, const __nv_bfloat16 *dout,
                                 const float *lse, const float *delta, __nv_bfloat16 *dqkv,
                                 int B, int K1, int Tn, int H, int mode) {
    attn_dkdv_tc<128>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_fwd_tc_bf16_d64(const __nv_bfloat16 *qkv, __nv_bfloat16 *out, float *lse, int B,
                               int K1, int Tn, int H, int mode) {
    attn_forward_tc<64>(qkv, out, lse, AttnIdx{B, K1, Tn, H, mode});
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    pause_attn_fwd_tc_bf16_d128(const __nv_bfloat16 *qkv, __nv_bfloat16 *out, float *lse, int B,
                                int K1, int Tn, int H, int mode) {
    attn_forward_tc<128>(qkv, out, lse, AttnIdx{B, K1, Tn, H, mode});
}

// ---------------------------------------------------------------------------------
// Entry points: pause_attn_{fwd,dq,dkdv}_{f32,bf16}_d{64,128}, pause_attn_delta_{f32,bf16}.
// Arguments after the buffers: B, K+1, T, H, then (not for delta) the PauseMode.
// ---------------------------------------------------------------------------------
#define CYB_ATTN_ENTRIES(T, NAME, DH)                                                         \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                \
        pause_attn_fwd_##NAME##_d##DH(const T *qkv, T *out, float *lse, int B, int K1, int Tn,  \
                                      int H, int mode) {                                      \
        attn_forward<T, DH>(qkv, out, lse, AttnIdx{B, K1, Tn, H, mode});                      \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                \
        pause_attn_dq_##NAME##_d##DH(const T *qkv, const T *dout, const float *lse,            \
                                     const float *delta, T *dqkv, int B, int K1, int Tn,      \
                                     int H, int mode) {                                       \
        attn_dq<T, DH>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});             \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                \
        pause_attn_dkdv_##NAME##_d##DH(const T *qkv, const T *dout, const float *lse,          \
                                       const float *delta, T *dqkv, int B, int K1, int Tn,    \
                                       int H, int mode) {                                     \
        attn_dkdv<T, DH>(qkv, dout, lse, delta, dqkv, AttnIdx{B, K1, Tn, H, mode});           \
    }

CYB_ATTN_ENTRIES(float, f32, 64)
CYB_ATTN_ENTRIES(float, f32, 128)
CYB_ATTN_ENTRIES(__nv_bfloat16, bf16, 64)
CYB_ATTN_ENTRIES(__nv_bfloat16, bf16, 128)

// delta: 256 threads, one warp per (row, head); dh = head dim (any).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
    pause_attn_delta_f32(const float *out, const float *dout, float *delta, int B, int K1, int Tn,
                         int H, int dh) {
    attn_delta<float>(out, dout, delta, AttnIdx{B, K1, Tn, H, PAUSE_SHARED}, dh); // (delta does not depend on the mode)
}
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
    pause_attn_delta_bf16(const __nv_bfloat16 *out, const __nv_bfloat16 *dout, float *delta,
                          int B, int K1, int Tn, int H, int dh) {
    attn_delta<__nv_bfloat16>(out, dout, delta, AttnIdx{B, K1, Tn, H, PAUSE_SHARED}, dh); // (delta does not depend on the mode)
}

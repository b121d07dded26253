// CYB loss, forward and backward to the logits (SPEC section 4); CUDA twin of
// src/cpu/loss.rs, stage by stage, checked against it by tests/gpu_loss.rs.
//
// Shapes (depth-major, SPEC section 3):
//   logits  [B, K+1, T, V+1]  f32 or bf16; row = (b*(K+1) + k)*T + t, position = b*T + t,
//           element (row, v) at row*stride + v with stride >= V+1 (a padded row stride
//           lets every row start 16-byte aligned, e.g. V+1 = 32001 padded to 32064;
//           the padding columns [V+1, stride) are never read; the backward writes
//           zeros there, see stage 4)
//   targets [B, T]            i32, -1 = ignore, else 0..V-1
//   weights [B, T]            f32, optional, finite and >= 0
//
// Stages (one launch each, all on one stream, no host round trip in between):
//   1. cyb_row_scalars_{f32,bf16}: one block per row, one read of every logit:
//        r = logsumexp(z[0..V)) (online max/sum in base 2, f32, four 16-byte loads in
//        flight per thread), e = z[V] (raw), u = z[y]
//      -> scalars [3, rows] f32 (r, then e, then u).
//   2. cyb_position_objectives: one thread per position, f64, K <= CYB_K_MAX:
//      e_k += b_DK (the DK bias, added where the row's DK logit is read in f64),
//      halting distribution, objective value and gradient (mirrors row_scalar's bias,
//      halting_from_scalars, objective_forward_backward, halting_backward), writing
//      per-position w*L and E[pauses] (f32), per-row unscaled gradients of w*L
//      ([rows, 3] f64), and per-block partial sums (deterministic fixed tree, no float
//      atomics). Every objective is per position: there is no batch-wide term.
//   3. cyb_loss_finalize: one block reduces the partials in a fixed order and computes
//      on device the loss and the gradient scale (1/sum w for Mean) -> summary
//      [CYB_SUMMARY_LEN] f64.
//   4. cyb_dlogits[_inplace]_{f32,bf16}: one streaming pass per row:
//        dz[v] = g_r*exp(z[v] - r) + g_u*[v == y]  (v < V),  dz[V] = g_e,
//        dz[v] = 0 in the padding V < v < stride,
//      zeros for ignored rows. The in-place variant reads every element before it
//      writes it (same thread, same index), so dz may alias z.
//
// Never materialised: the (B, K+1, T, V+1) probability tensor (the backward recomputes
// exp(z - r) from r), the halting distribution beyond one thread's registers/local
// memory, any [rows, V+1] temporary.
//
// Invalid inputs never cause out-of-bounds accesses: a target outside -1..V-1 is
// treated as ignored and reported (first bad position) in the summary, as is a
// weight that is negative or not finite (treated as 0). The host turns those into
// errors when it reads the summary.

#include "common.cuh"

// Keep in sync with src/gpu/loss.rs.
#define CYB_K_MAX 16
#define CYB_ROW_THREADS 256
#define CYB_POS_THREADS 256
#define CYB_FIN_THREADS 256

// params [CYB_PARAMS_LEN] f64 (ResolvedObjective, written by CybLoss::new):
// log omega_k, log Omega_k (Omega_k = sum_{j>k} omega_j; -inf for 0), log gamma_k,
// rho_k (each [K_MAX+1]), then beta, alpha, b_DK.
#define CYB_P_LOG_OMEGA 0
#define CYB_P_LOG_TAIL (CYB_K_MAX + 1)
#define CYB_P_LOG_GAMMA (2 * (CYB_K_MAX + 1))
#define CYB_P_RHO (3 * (CYB_K_MAX + 1))
#define CYB_P_BETA (4 * (CYB_K_MAX + 1))
#define CYB_P_ALPHA (CYB_P_BETA + 1)
#define CYB_P_DK_BIAS (CYB_P_BETA + 2)

// ObjectiveKind (repr u32 in src/objective.rs).
#define CYB_CE_FINAL 0
#define CYB_MARGINAL 1
#define CYB_AP 2
#define CYB_VA 3
#define CYB_DP 4

// Reduction (see src/gpu/loss.rs).
#define CYB_MEAN 0
#define CYB_SUM 1
#define CYB_NONE 2

// Per-block partials [nblocks, CYB_NPART] f64.
#define CYB_PART_W 0       // sum of w over valid positions
#define CYB_PART_WL 1      // sum of w*L
#define CYB_PART_WE 2      // sum of w*E[pauses]
#define CYB_PART_VALID 3   // number of valid positions
#define CYB_PART_BAD_Y 4   // smallest position with an invalid target (+inf: none)
#define CYB_PART_BAD_W 5   // smallest position with an invalid weight (+inf: none)
#define CYB_NPART 6

// summary [CYB_SUMMARY_LEN] f64.
#define CYB_S_LOSS 0
#define CYB_S_WEIGHT_SUM 1
#define CYB_S_MEAN_PAUSES 2
#define CYB_S_VALID 3
#define CYB_S_SCALE 4      // d loss / d (w_i L_i): 1/sum w (Mean), 1 (Sum, None), 0 if empty
#define CYB_S_WL_SUM 5
#define CYB_S_BAD_Y 6      // first position with an invalid target, -1: none
#define CYB_S_BAD_W 7      // first position with an invalid weight, -1: none
#define CYB_SUMMARY_LEN 8

__device__ __forceinline__ int position_of_row(int row, int k1, int seq) {
    return (row / (k1 * seq)) * seq + row % seq;
}

// ---------------------------------------------------------------------------------
// exp in base 2: exp(x - m) = 2^(x*L - m*L) with L = log2(e), so that each element
// costs one FFMA and one MUFU.EX2 (expf is ~10 instructions: range reduction and a
// two-constant L for accuracy, which the compensation below makes unnecessary).
// ---------------------------------------------------------------------------------

#define CYB_LOG2E 1.44269504088896341f

// 2^x with subnormal results flushed to zero: `ex2.approx.ftz.f32`, one MUFU.EX2
// (exp2f keeps subnormal results with a compare and two predicated multiplies around
// the same MUFU, same accuracy otherwise: max 2 ulp). Every use adds the result to a
// sum whose largest term is ~1, or multiplies a gradient, so a result below 2^-126 is
// as good as 0. The emulator has no inline PTX: its twin is exp2f, then the flush.
__device__ __forceinline__ float exp2_ftz(float x) {
#ifdef CYB_HOST_EMU
    const float r = exp2f(x);
    return r < 1.17549435e-38f ? 0.0f : r; // NaN compares false: stays NaN
#else
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

// Per-thread logsumexp state in base 2: m is the largest x seen (exact, natural units),
// m2 = rn(m*L), s = sum_i 2^(x_i*L - m2) (each exponent one FFMA: x_i*L exact, then
// one rounding). Empty: (-inf, -inf, 0). Every term carries the same factor
// 2^(m*L - m2), removed exactly by lse2_finish, so rounding m2 costs nothing.
struct Lse2 {
    float m;
    float m2;
    float s;
};

// Adds `n` values: one max per chunk, one rescale when the max grows, then one FFMA, one
// MUFU.EX2 and one FADD per element (two partial sums for instruction-level
// parallelism). NaN inputs make s NaN, as in the CPU reference.
template <int N> __device__ __forceinline__ void lse2_add(Lse2 &a, const float (&x)[N]) {
    float cm = x[0];
#pragma unroll
    for (int i = 1; i < N; ++i) cm = fmaxf(cm, x[i]);
    if (cm > a.m) {
        const float cm2 = cm * CYB_LOG2E;
        a.s *= exp2_ftz(a.m2 - cm2); // 2^-inf = 0 for the empty state
        a.m = cm;
        a.m2 = cm2;
    }
    if (a.m == -INFINITY) { // all -inf (or NaN) so far: nothing to add
        if (cm != cm) a.s = NAN;
        return;
    }
    float s0 = exp2_ftz(fmaf(x[0], CYB_LOG2E, -a.m2)), s1 = 0.0f;
#pragma unroll
    for (int i = 1; i < N; i += 2) {
        s1 += exp2_ftz(fmaf(x[i], CYB_LOG2E, -a.m2));
        if (i + 1 < N) s0 += exp2_ftz(fmaf(x[i + 1], CYB_LOG2E, -a.m2));
    }
    a.s += s0 + s1;
}

// The natural-units state (sum of exp(x - m)) for the block merge: s times 2^-d with
// d = m*L - m2, which an FMA gives exactly (the rounding error of a product is a float).
__device__ __forceinline__ OnlineLse lse2_finish(const Lse2 &a) {
    if (!(a.m > -INFINITY && a.m < INFINITY)) return OnlineLse{a.m, a.s};
    return OnlineLse{a.m, a.s * exp2_ftz(-fmaf(a.m, CYB_LOG2E, -a.m2))};
}

// A 16-byte vector of -inf (4 f32 or 8 bf16).
template <typename T> __device__ __forceinline__ uint4 neg_inf16();
template <> __device__ __forceinline__ uint4 neg_inf16<float>() {
    return make_uint4(0xff800000u, 0xff800000u, 0xff800000u, 0xff800000u);
}
template <> __device__ __forceinline__ uint4 neg_inf16<__nv_bfloat16>() {
    return make_uint4(0xff80ff80u, 0xff80ff80u, 0xff80ff80u, 0xff80ff80u);
}

// 16-byte vectors each thread has in flight per iteration of the forward's main loop
// (64 bytes: 32 bf16 or 16 f32 values), all loaded before any is used, so that the
// memory system sees several independent loads per thread instead of one.
#define CYB_FWD_UNROLL 4

// One round of the forward's main loop: CYB_FWD_UNROLL vectors at p, p + stride_v, ...
// loaded first, then added as one chunk. Guarded: only the first `left` exist, the
// others are -inf.
template <typename T, bool Guarded>
__device__ __forceinline__ void lse2_round(Lse2 &acc, const uint4 *__restrict__ p, int stride_v,
                                           int left) {
    constexpr int N = Vec16<T>::N;
    uint4 raw[CYB_FWD_UNROLL];
#pragma unroll
    for (int u = 0; u < CYB_FWD_UNROLL; ++u) {
        if (Guarded) {
            raw[u] = neg_inf16<T>();
            if (u * stride_v < left) raw[u] = __ldg(p + u * stride_v);
        } else {
            raw[u] = __ldg(p + u * stride_v);
        }
    }
    float x[CYB_FWD_UNROLL * N];
#pragma unroll
    for (int u = 0; u < CYB_FWD_UNROLL; ++u) {
        float v[N];
        unpack16(raw[u], v);
#pragma unroll
        for (int q = 0; q < N; ++q) x[u * N + q] = v[q];
    }
    lse2_add<CYB_FWD_UNROLL * N>(acc, x);
}

// ---------------------------------------------------------------------------------
// Stage 1: row scalars.
// ---------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void row_scalars(const T *__restrict__ logits, const int *__restrict__ targets,
                                            int rows, int k1, int seq, int vocab, int stride,
                                            float *__restrict__ scalars) {
    constexpr int N = Vec16<T>::N;
    const size_t width = (size_t)stride; // only [0, V] of each row is read
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const int y = targets[position_of_row(row, k1, seq)];
        if (y < 0 || y >= vocab) { // ignored (or invalid, reported by stage 2): never read
            if (threadIdx.x == 0) {
                scalars[row] = 0.0f;
                scalars[rows + row] = 0.0f;
                scalars[2 * rows + row] = 0.0f;
            }
            continue;
        }
        const T *z = logits + (size_t)row * width;
        Lse2 acc2{-INFINITY, -INFINITY, 0.0f};
        const int head = head_elems(z, vocab);
        const int nvec = (vocab - head) / N;
        for (int i = threadIdx.x; i < head; i += blockDim.x) {
            const float one[1] = {to_float(z[i])};
            lse2_add<1>(acc2, one);
        }
        const uint4 *zv = reinterpret_cast<const uint4 *>(z + head);
        // Main loop: CYB_FWD_UNROLL vectors per thread, blockDim apart (each load
        // instruction stays coalesced across the warp), all issued before the math;
        // then one guarded round for the rest, whose missing vectors are -inf and add
        // nothing (2^-inf = 0, the max unchanged).
        const int stride_v = blockDim.x; // vectors between a thread's loads
        const int round = CYB_FWD_UNROLL * stride_v;
        const uint4 *p = zv + threadIdx.x; // advanced by pointer, not recomputed per load
        int j = threadIdx.x;
        for (; j + round - stride_v < nvec; j += round, p += round) lse2_round<T, false>(acc2, p, stride_v, 0);
        if (j < nvec) lse2_round<T, true>(acc2, p, stride_v, nvec - j);
        for (int i = head + nvec * N + threadIdx.x; i < vocab; i += blockDim.x) {
            const float one[1] = {to_float(z[i])};
            lse2_add<1>(acc2, one);
        }
        OnlineLse acc = block_lse(lse2_finish(acc2));
        if (threadIdx.x == 0) {
            scalars[row] = acc.m + logf(acc.s);
            scalars[rows + row] = to_float(z[vocab]);
            scalars[2 * rows + row] = to_float(z[y]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_row_scalars_f32(const float *__restrict__ logits, const int *__restrict__ targets, int rows,
                        int k1, int seq, int vocab, int stride, float *__restrict__ scalars) {
    row_scalars<float>(logits, targets, rows, k1, seq, vocab, stride, scalars);
}

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_row_scalars_bf16(const __nv_bfloat16 *__restrict__ logits, const int *__restrict__ targets,
                         int rows, int k1, int seq, int vocab, int stride,
                         float *__restrict__ scalars) {
    row_scalars<__nv_bfloat16>(logits, targets, rows, k1, seq, vocab, stride, scalars);
}

// ---------------------------------------------------------------------------------
// Stage 2: per-position halting and objective (f64), one thread per position.
// ---------------------------------------------------------------------------------

#define KM1 (CYB_K_MAX + 1)

// Halting of one position (halting_from_scalars in src/cpu/loss.rs); e carries b_DK.
struct Halting {
    double a[KM1];         // a_k = u_k - r_k
    double s[KM1];         // s_k = r_k - lse_k (k < K), s_K = 0
    double cum_c[KM1 + 1]; // P_k = sum_{j<k} c_j
    double log_h[KM1];     // log h_k = P_k + s_k
    double p_dk[KM1];      // exp(c_k)
    double p_ans[KM1];     // exp(r_k - lse_k)
};

__device__ void halting_from_scalars(const double *r, const double *e, const double *u, int K,
                                     Halting &hal) {
    hal.cum_c[0] = 0.0;
    for (int k = 0; k <= K; ++k) {
        const double lse = log_add_exp(r[k], e[k]);
        const double c = e[k] - lse;
        const double s = k < K ? r[k] - lse : 0.0;
        hal.a[k] = u[k] - r[k];
        hal.s[k] = s;
        hal.p_dk[k] = exp(c);
        hal.p_ans[k] = exp(r[k] - lse);
        hal.log_h[k] = hal.cum_c[k] + s;
        hal.cum_c[k + 1] = hal.cum_c[k] + c;
    }
}

// Gradient with respect to a, P and s (HaltingGrad); log h = P + s feeds both.
struct HaltingGrad {
    double a[KM1];
    double cum_c[KM1];
    double s[KM1];
};

__device__ __forceinline__ void add_log_h(HaltingGrad &g, int k, double v) {
    g.cum_c[k] += v;
    g.s[k] += v;
}

// exp(x - total), 0 where x = -inf (a term that drops out of a logsumexp).
__device__ __forceinline__ double share(double x, double total) {
    return x == -INFINITY ? 0.0 : exp(x - total);
}

// L = -logsumexp_k(log h_k + log gamma_k + a_k), gradient added into g
// (discounted_marginal); log_gamma null: no discount.
__device__ double discounted_marginal(const double *__restrict__ log_gamma, const Halting &hal,
                                      int K, HaltingGrad &g) {
    double x[KM1];
    double lse = -INFINITY;
    for (int k = 0; k <= K; ++k) {
        x[k] = hal.log_h[k] + (log_gamma ? log_gamma[k] : 0.0) + hal.a[k];
        lse = log_add_exp(lse, x[k]);
    }
    for (int k = 0; k <= K; ++k) {
        const double q = share(x[k], lse); // posterior over the answering step
        g.a[k] -= q;
        add_log_h(g, k, -q);
    }
    return -lse;
}

// objective_forward_backward: value of one objective at one position, gradient in g.
__device__ double objective_forward_backward(int kind, const double *__restrict__ params,
                                             const Halting &hal, int K, HaltingGrad &g) {
    for (int k = 0; k <= K; ++k) {
        g.a[k] = 0.0;
        g.cum_c[k] = 0.0;
        g.s[k] = 0.0;
    }
    const double *log_gamma = params + CYB_P_LOG_GAMMA;
    double loss = 0.0;
    switch (kind) {
    case CYB_CE_FINAL:
        g.a[K] = -1.0;
        loss = -hal.a[K];
        break;
    case CYB_MARGINAL:
        loss = discounted_marginal(nullptr, hal, K, g);
        break;
    case CYB_AP: {
        // log Pr(S=k) = P_k + logaddexp(log omega_k, s_k + log Omega_k).
        double x[KM1], sigma[KM1];
        double lse = -INFINITY;
        for (int k = 0; k <= K; ++k) {
            const double answered = hal.s[k] + params[CYB_P_LOG_TAIL + k];
            const double stop = log_add_exp(params[CYB_P_LOG_OMEGA + k], answered);
            sigma[k] = share(answered, stop);
            x[k] = hal.cum_c[k] + stop + log_gamma[k] + hal.a[k];
            lse = log_add_exp(lse, x[k]);
        }
        for (int k = 0; k <= K; ++k) {
            const double q = share(x[k], lse);
            g.a[k] = -q;
            g.cum_c[k] = -q;
            g.s[k] = -q * sigma[k];
        }
        loss = -lse;
        break;
    }
    case CYB_VA: {
        const double beta = params[CYB_P_BETA];
        for (int k = 0; k <= K; ++k) {
            const double h = exp(hal.log_h[k]);
            const double log_ratio = hal.log_h[k] - log(params[CYB_P_RHO + k]);
            const double answer = -log_gamma[k] - hal.a[k];
            loss += h * (answer + beta * log_ratio);
            g.a[k] = -h;
            add_log_h(g, k, h * (answer + beta * (log_ratio + 1.0)));
        }
        break;
    }
    case CYB_DP: {
        const double alpha = params[CYB_P_ALPHA];
        loss = discounted_marginal(log_gamma, hal, K, g);
        for (int k = 0; k <= K; ++k) {
            const double rho = params[CYB_P_RHO + k];
            if (rho > 0.0) {
                loss += alpha * rho * (log(rho) - hal.log_h[k]);
                add_log_h(g, k, -alpha * rho);
            }
        }
        break;
    }
    default:
        loss = NAN;
    }
    return loss;
}

// halting_backward: chain (da, dP, ds) to (g_r, g_e, g_u) of every row of the
// position, times the position weight w, into out[row*3 + {0,1,2}].
__device__ void halting_backward(const Halting &hal, const HaltingGrad &g, int K, double w,
                                 int first_row, int row_stride, double *__restrict__ out) {
    double suffix = 0.0; // sum_{k>j} dP_k
    for (int j = K; j >= 0; --j) {
        const double g_c = suffix;
        const double g_s = j < K ? g.s[j] : 0.0; // s_K = 0 is a constant
        const double pa = hal.p_ans[j], pd = hal.p_dk[j];
        double *o = out + 3 * (size_t)(first_row + j * row_stride);
        o[0] = w * (-g.a[j] - pa * g_c + pd * g_s);
        o[1] = w * (pa * g_c - pd * g_s);
        o[2] = w * g.a[j];
        suffix += g.cum_c[j];
    }
}

extern "C" __global__ void __launch_bounds__(CYB_POS_THREADS)
    cyb_position_objectives(const float *__restrict__ scalars, const int *__restrict__ targets,
                            const float *__restrict__ weights, // null: all 1
                            const double *__restrict__ params, int kind, int batch, int K, int seq,
                            int vocab, float *__restrict__ per_position, float *__restrict__ pauses,
                            double *__restrict__ grad_loss, double *__restrict__ partials) {
    __shared__ double red[CYB_POS_THREADS];
    const int n = batch * seq;
    const int rows = n * (K + 1);
    const int pos = blockIdx.x * blockDim.x + threadIdx.x;
    double part[CYB_NPART] = {0.0, 0.0, 0.0, 0.0, INFINITY, INFINITY};
    if (pos < n && K <= CYB_K_MAX) {
        const int b = pos / seq, t = pos % seq;
        const int first_row = b * (K + 1) * seq + t; // row of step (b, 0, t); step k adds k*T
        const int y = targets[pos];
        const float wf = weights ? weights[pos] : 1.0f;
        const bool bad_y = y < -1 || y >= vocab;
        const bool bad_w = !(isfinite(wf) && wf >= 0.0f);
        if (bad_y) part[CYB_PART_BAD_Y] = (double)pos;
        if (bad_w) part[CYB_PART_BAD_W] = (double)pos;
        if (y < 0 || bad_y) {
            per_position[pos] = 0.0f;
            pauses[pos] = 0.0f;
            for (int k = 0; k <= K; ++k) {
                const size_t row = (size_t)(first_row + k * seq);
                for (int c = 0; c < 3; ++c) grad_loss[3 * row + c] = 0.0;
            }
        } else {
            const double w = bad_w ? 0.0 : (double)wf;
            double r[KM1], e[KM1], u[KM1];
            for (int k = 0; k <= K; ++k) {
                const int row = first_row + k * seq;
                r[k] = scalars[row];
                e[k] = (double)scalars[rows + row] + params[CYB_P_DK_BIAS]; // row_scalar's e
                u[k] = scalars[2 * rows + row];
            }
            Halting hal;
            halting_from_scalars(r, e, u, K, hal);
            HaltingGrad g;
            const double l = objective_forward_backward(kind, params, hal, K, g);
            halting_backward(hal, g, K, w, first_row, seq, grad_loss);
            double ep = 0.0; // Halting::expected_pauses
            for (int k = 0; k <= K; ++k) ep += (double)k * exp(hal.log_h[k]);
            per_position[pos] = (float)(w * l);
            pauses[pos] = (float)ep;
            part[CYB_PART_W] = w;
            part[CYB_PART_WL] = w * l;
            part[CYB_PART_WE] = w * ep;
            part[CYB_PART_VALID] = 1.0;
        }
    }
    for (int j = 0; j < CYB_NPART; ++j) {
        red[threadIdx.x] = part[j];
        __syncthreads();
        if (j < CYB_PART_BAD_Y) {
            block_tree_sum(red);
        } else {
            block_tree_min(red);
        }
        if (threadIdx.x == 0) partials[(size_t)blockIdx.x * CYB_NPART + j] = red[0];
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------
// Stage 3: one block: fixed-order reduction of the partials, loss and gradient scale.
// ---------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(CYB_FIN_THREADS)
    cyb_loss_finalize(const double *__restrict__ partials, int nblocks, int reduction,
                      double *__restrict__ summary) {
    __shared__ double red[CYB_FIN_THREADS];
    __shared__ double tot[CYB_NPART];
    for (int j = 0; j < CYB_NPART; ++j) {
        const bool is_min = j >= CYB_PART_BAD_Y;
        double v = is_min ? INFINITY : 0.0;
        for (int i = threadIdx.x; i < nblocks; i += blockDim.x) {
            const double p = partials[(size_t)i * CYB_NPART + j];
            v = is_min ? fmin(v, p) : v + p;
        }
        red[threadIdx.x] = v;
        __syncthreads();
        if (is_min) {
            block_tree_min(red);
        } else {
            block_tree_sum(red);
        }
        if (threadIdx.x == 0) tot[j] = red[0];
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    const double wsum = tot[CYB_PART_W];
    const double total = tot[CYB_PART_WL];
    const double mean_pauses = wsum > 0.0 ? tot[CYB_PART_WE] / wsum : 0.0;
    double loss, scale;
    if (reduction == CYB_MEAN) {
        loss = wsum > 0.0 ? total / wsum : 0.0;
        scale = wsum > 0.0 ? 1.0 / wsum : 0.0;
    } else { // Sum; None reports the sum too and scales per position by the upstream
        loss = total;
        scale = 1.0;
    }
    summary[CYB_S_LOSS] = loss;
    summary[CYB_S_WEIGHT_SUM] = wsum;
    summary[CYB_S_MEAN_PAUSES] = mean_pauses;
    summary[CYB_S_VALID] = tot[CYB_PART_VALID];
    summary[CYB_S_SCALE] = scale;
    summary[CYB_S_WL_SUM] = total;
    summary[CYB_S_BAD_Y] = isinf(tot[CYB_PART_BAD_Y]) ? -1.0 : tot[CYB_PART_BAD_Y];
    summary[CYB_S_BAD_W] = isinf(tot[CYB_PART_BAD_W]) ? -1.0 : tot[CYB_PART_BAD_W];
}

// ---------------------------------------------------------------------------------
// Stage 4: dlogits, one streaming pass per row.
// ---------------------------------------------------------------------------------

// `z` and `dz` may be the same pointer: every element is read, then written, by the
// same thread, and no other thread touches it. Hence no __restrict__ on them.
//
// Padding columns [V+1, stride) of dz are written with zeros (never read from z): a
// consumer that multiplies over the padded width (a GEMM with K = stride against
// zero-padded weights) then adds nothing, and the buffer holds no stale values or
// NaN. It costs stride - (V+1) extra stores per row (63 of 32064 for V+1 = 32001).
template <typename T>
__device__ __forceinline__ void dlogits_rows(const T *z_all, T *dz_all, const int *__restrict__ targets,
                                             const float *__restrict__ scalars,
                                             const double *__restrict__ grad_loss,
                                             const double *__restrict__ summary,
                                             const float *__restrict__ upstream, // null: up_scalar
                                             double up_scalar, int reduction, int rows, int k1,
                                             int seq, int vocab, int stride) {
    constexpr int N = Vec16<T>::N;
    const int width = stride;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const int pos = position_of_row(row, k1, seq);
        const int y = targets[pos];
        const T *z = z_all + (size_t)row * width;
        T *dz = dz_all + (size_t)row * width;
        const T zero = from_float<T>(0.0f);
        if (y < 0 || y >= vocab) { // ignored row: zeros (padding too), the logits are not read
            const int head = head_elems(dz, width);
            const int nvec = (width - head) / N;
            for (int i = threadIdx.x; i < head; i += blockDim.x) dz[i] = zero;
            uint4 *dv = reinterpret_cast<uint4 *>(dz + head);
            for (int j = threadIdx.x; j < nvec; j += blockDim.x) dv[j] = make_uint4(0u, 0u, 0u, 0u);
            for (int i = head + nvec * N + threadIdx.x; i < width; i += blockDim.x) dz[i] = zero;
            continue;
        }
        // Row gradient for this upstream (LossForward::row_grads in src/cpu/loss.rs).
        const bool per_position = reduction == CYB_NONE;
        const double up = upstream ? (double)upstream[per_position ? pos : 0] : up_scalar;
        const double lscale = up * summary[CYB_S_SCALE];
        const double *gl = grad_loss + 3 * (size_t)row;
        const float g_r = (float)(lscale * gl[0]);
        const float g_e = (float)(lscale * gl[1]);
        const float g_u = (float)(lscale * gl[2]);
        const float r = scalars[row];
        // exp(z - r) = 2^(z*L - r2) * 2^-d with r2 = rn(r*L) and d = r*L - r2 (exact by
        // FMA), the 2^-d folded into g_r once per row (d = 0 for a non-finite r, whose
        // gradients are NaN or infinite either way).
        const float r2 = r * CYB_LOG2E;
        const float g_r2 = isfinite(r) ? g_r * exp2_ftz(-fmaf(r, CYB_LOG2E, -r2)) : g_r;
        // The real vocabulary [0, V) as scalar head, 16-byte body, scalar tail. Vectors
        // need z and dz equally misaligned (always so for whole cudarc allocations);
        // otherwise the whole row takes the scalar path.
        const bool same_align =
            ((reinterpret_cast<uintptr_t>(z) ^ reinterpret_cast<uintptr_t>(dz)) & 15u) == 0;
        const int h = same_align ? head_elems(dz, vocab) : vocab;
        const int nvec = (vocab - h) / N;
        for (int i = threadIdx.x; i < h; i += blockDim.x) {
            float d = g_r2 * exp2_ftz(fmaf(to_float(z[i]), CYB_LOG2E, -r2));
            if (i == y) d += g_u;
            dz[i] = from_float<T>(d);
        }
        const uint4 *zv = reinterpret_cast<const uint4 *>(z + h);
        uint4 *dv = reinterpret_cast<uint4 *>(dz + h);
        for (int j = threadIdx.x; j < nvec; j += blockDim.x) {
            float x[N];
            unpack16(zv[j], x);
            const int yo = y - (h + j * N); // the target's place in this vector, if any
#pragma unroll
            for (int q = 0; q < N; ++q) x[q] = g_r2 * exp2_ftz(fmaf(x[q], CYB_LOG2E, -r2));
            if ((unsigned)yo < (unsigned)N) { // one compare per vector, not per element
#pragma unroll
                for (int q = 0; q < N; ++q)
                    if (q == yo) x[q] += g_u;
            }
            dv[j] = pack16<T>(x);
        }
        for (int i = h + nvec * N + threadIdx.x; i < vocab; i += blockDim.x) {
            float d = g_r2 * exp2_ftz(fmaf(to_float(z[i]), CYB_LOG2E, -r2));
            if (i == y) d += g_u;
            dz[i] = from_float<T>(d);
        }
        if (threadIdx.x == 0) dz[vocab] = from_float<T>(g_e);
        for (int i = vocab + 1 + threadIdx.x; i < width; i += blockDim.x) dz[i] = zero; // padding
    }
}

#define CYB_DLOGITS_ARGS                                                                           \
    const int *__restrict__ targets, const float *__restrict__ scalars,                            \
        const double *__restrict__ grad_loss, const double *__restrict__ summary,                  \
        const float *__restrict__ upstream, double up_scalar, int reduction, int rows, int k1,     \
        int seq, int vocab, int stride
#define CYB_DLOGITS_PASS                                                                           \
    targets, scalars, grad_loss, summary, upstream, up_scalar, reduction, rows, k1, seq, vocab,    \
        stride

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_dlogits_f32(const float *logits, float *dlogits, CYB_DLOGITS_ARGS) {
    dlogits_rows<float>(logits, dlogits, CYB_DLOGITS_PASS);
}

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_dlogits_bf16(const __nv_bfloat16 *logits, __nv_bfloat16 *dlogits, CYB_DLOGITS_ARGS) {
    dlogits_rows<__nv_bfloat16>(logits, dlogits, CYB_DLOGITS_PASS);
}

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_dlogits_inplace_f32(float *logits, CYB_DLOGITS_ARGS) {
    dlogits_rows<float>(logits, logits, CYB_DLOGITS_PASS);
}

extern "C" __global__ void __launch_bounds__(CYB_ROW_THREADS)
    cyb_dlogits_inplace_bf16(__nv_bfloat16 *logits, CYB_DLOGITS_ARGS) {
    dlogits_rows<__nv_bfloat16>(logits, logits, CYB_DLOGITS_PASS);
}

// ---------------------------------------------------------------------------------
// The fused head's Mean divisor (src/gpu/head_loss.rs): 1 / sum of w over the valid
// positions of the whole batch, known from targets and weights alone before any
// chunk's logits exist. One block; fixed-order strided sums and a fixed tree, so the
// same inputs give the same bits. Invalid targets count as ignored and invalid weights
// as 0, as in cyb_position_objectives (which reports them).
// ---------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(CYB_FIN_THREADS)
    cyb_inverse_weight_sum(const int *__restrict__ targets, const float *__restrict__ weights,
                           int positions, int vocab, float *__restrict__ out) {
    __shared__ double red[CYB_FIN_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < positions; i += blockDim.x) {
        const int y = targets[i];
        if (y < 0 || y >= vocab) continue;
        const float w = weights ? weights[i] : 1.0f;
        if (isfinite(w) && w >= 0.0f) s += (double)w;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    block_tree_sum(red);
    if (threadIdx.x == 0) out[0] = red[0] > 0.0 ? (float)(1.0 / red[0]) : 0.0f;
}

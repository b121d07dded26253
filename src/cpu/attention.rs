//! Multi-head causal attention with private pauses (SPEC section 3).
//!
//! Query step `(t, k)` sees key step `(t', k')` iff [`pause_visible`]: the real
//! prefix `(t' <= t, k' = 0)` plus its own earlier pause steps `(t, 1..=k)`. So the
//! only keys a query can see are its **candidates**: the `T` real-token steps and the
//! `K` pause steps of its own position ([`candidate_key`]). Scoring those `T + K`
//! candidates per query costs about `(K+1)` causal attentions over `T`; the
//! `((K+1)T)^2` score matrix is never formed. Every candidate still goes through
//! `pause_visible`, the one place the rule lives (mirrored by `kernels/pause_mask.cuh`).
//!
//! Shapes: `qkv: [B, K+1, T, 3d]` (q, then k, then v; heads contiguous in each),
//! `out: [B, K+1, T, d]`, saved softmax `att: [B, H, K+1, T, T+K]` over the candidates
//! (0 where masked). Work is split over `(b, head)` with rayon; each pair is computed
//! sequentially in a fixed order, so results do not depend on thread scheduling.

use crate::cpu::embedding::StepShape;
use crate::cpu::scalar::{matmul, Op, Scalar};
use rayon::prelude::*;

/// SPEC section 3: may query step `(t, k)` attend to key step `(t2, k2)`?
///
/// ```
/// use cyb::cpu::attention::pause_visible;
/// assert!(pause_visible(3, 2, 1, 0)); // real prefix
/// assert!(pause_visible(3, 2, 3, 1)); // own earlier pause
/// assert!(!pause_visible(3, 2, 2, 1)); // another position's pause
/// assert!(!pause_visible(3, 0, 3, 1)); // a real token never sees pauses
/// ```
pub fn pause_visible(t: usize, k: usize, t2: usize, k2: usize) -> bool {
    (k2 == 0 && t2 <= t) || (t2 == t && 1 <= k2 && k2 <= k)
}

/// Candidate key `j` (`0..T+K`) of a query at position `t`: `j < T` is the real step
/// `(j, 0)`, `j = T + i` is the pause step `(t, i + 1)`. Every key visible to a query
/// at `t` is one of these.
pub fn candidate_key(j: usize, t: usize, seq: usize) -> (usize, usize) {
    if j < seq {
        (j, 0)
    } else {
        (t, j - seq + 1)
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// `B`, `K`, `T`.
    pub steps: StepShape,
    /// `H`
    pub heads: usize,
    /// `d` (model width, `H * d_head`)
    pub d: usize,
}

impl AttnShape {
    /// Candidates per query, `T + K`.
    pub fn width(&self) -> usize {
        self.steps.seq + self.steps.pauses
    }
    /// Length of the saved softmax `att`: `B * H * (K+1) * T * (T+K)`.
    pub fn att_len(&self) -> usize {
        self.steps.batch * self.heads * (self.steps.pauses + 1) * self.steps.seq * self.width()
    }
    fn d_head(&self) -> usize {
        self.d / self.heads
    }
    /// Elements of one `(b, head)` plane `[K+1, T, d_head]`.
    fn plane(&self) -> usize {
        (self.steps.pauses + 1) * self.steps.seq * self.d_head()
    }
}

/// Dot product over 8 independent lanes, summed in a fixed order at the end: the
/// compiler can vectorise it (a single running sum is one long dependency chain),
/// and the result is still the same on every run.
fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |acc, (&x, &y)| acc + x * y);
    let mut lanes = [T::zero(); 8];
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().fold(tail, |acc, &l| acc + l)
}

/// The q, k and v of head `h` of batch element `b`, copied out of `qkv` into one
/// contiguous `[3, K+1, T, d_head]` buffer (so the inner loops read unit-stride rows).
fn gather_head<T: Scalar>(qkv: &[T], s: AttnShape, b: usize, h: usize) -> Vec<T> {
    let (d, dh, plane) = (s.d, s.d_head(), s.plane());
    let mut out = vec![T::zero(); 3 * plane];
    for k in 0..=s.steps.pauses {
        for t in 0..s.steps.seq {
            let src = s.steps.row(b, k, t) * 3 * d + h * dh;
            for m in 0..3 {
                out[m * plane + (k * s.steps.seq + t) * dh..][..dh]
                    .copy_from_slice(&qkv[src + m * d..][..dh]);
            }
        }
    }
    out
}

/// out: `[B, K+1, T, d]`, att: `[B, H, K+1, T, T+K]`; qkv: `[B, K+1, T, 3d]`.
///
/// Per `(b, head)`: the scores against the `T` real keys are one GEMM
/// `Q [(K+1)T, dh] · K_0^T [dh, T]` (every plane attends to the same real prefix), the
/// `k` private pause keys of each query are dot products; the mask then keeps what
/// [`pause_visible`] allows, and the output is `P_real · V_0` (GEMM) plus the pause terms.
pub fn attention_forward<T: Scalar>(out: &mut [T], att: &mut [T], qkv: &[T], s: AttnShape) {
    let (d, dh, w) = (s.d, s.d_head(), s.width());
    let (kk, seq) = (s.steps.pauses, s.steps.seq);
    let (rows, plane) = ((kk + 1) * seq, s.plane());
    let scale = T::one() / T::of(dh as f64).sqrt();
    // Head-major output [B, H, K+1, T, dh], so that each (b, h) owns one slice.
    let mut out_h = vec![T::zero(); s.steps.batch * s.heads * plane];
    out_h
        .par_chunks_mut(plane)
        .zip(att.par_chunks_mut(rows * w))
        .enumerate()
        .for_each(|(bh, (oh, a))| {
            let local = gather_head(qkv, s, bh / s.heads, bh % s.heads);
            let (q_all, k_all, v_all) = (
                &local[..plane],
                &local[plane..2 * plane],
                &local[2 * plane..],
            );
            let row_of = |k: usize, t: usize| (k * seq + t) * dh;
            // Scores against the real keys (k' = 0): [(K+1)T, T].
            let mut s_real = vec![T::zero(); rows * seq];
            matmul(
                &mut s_real,
                q_all,
                Op::N,
                &k_all[..seq * dh],
                Op::T,
                rows,
                dh,
                seq,
                false,
            );
            let mut p_real = vec![T::zero(); rows * seq];
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    let arow = &mut a[i * w..][..w];
                    // (t, 0) is always visible, so the max is finite.
                    let mut max = T::neg_infinity();
                    for (j, sc) in arow.iter_mut().enumerate() {
                        let (t2, k2) = candidate_key(j, t, seq);
                        *sc = if !pause_visible(t, k, t2, k2) {
                            T::neg_infinity()
                        } else if k2 == 0 {
                            s_real[i * seq + t2] * scale
                        } else {
                            dot(&q_all[row_of(k, t)..][..dh], &k_all[row_of(k2, t2)..][..dh])
                                * scale
                        };
                        max = max.max(*sc);
                    }
                    let mut sum = T::zero();
                    for sc in arow.iter_mut() {
                        *sc = if *sc == T::neg_infinity() {
                            T::zero() // masked
                        } else {
                            (*sc - max).exp()
                        };
                        sum += *sc;
                    }
                    arow.iter_mut().for_each(|p| *p = *p / sum);
                    p_real[i * seq..][..seq].copy_from_slice(&arow[..seq]);
                }
            }
            // Real keys: O = P_real · V_0; then each query's own pause steps.
            matmul(
                oh,
                &p_real,
                Op::N,
                &v_all[..seq * dh],
                Op::N,
                rows,
                seq,
                dh,
                false,
            );
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    for j in seq..w {
                        let (t2, k2) = candidate_key(j, t, seq);
                        let p = a[i * w + j]; // 0 where masked
                        if p == T::zero() {
                            continue;
                        }
                        let v = &v_all[row_of(k2, t2)..][..dh];
                        for (x, &vv) in oh[row_of(k, t)..][..dh].iter_mut().zip(v) {
                            *x += p * vv;
                        }
                    }
                }
            }
        });
    // Scatter the heads back into rows [B, K+1, T, d].
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let (bk, t) = (row / seq, row % seq);
        let (b, k) = (bk / (kk + 1), bk % (kk + 1));
        for h in 0..s.heads {
            let src = &out_h[(b * s.heads + h) * s.plane() + (k * seq + t) * dh..][..dh];
            o[h * dh..][..dh].copy_from_slice(src);
        }
    });
}

/// Backward of [`attention_forward`]: **overwrites** `dqkv: [B, K+1, T, 3d]` from
/// `dout: [B, K+1, T, d]` and the saved `qkv` and `att`. The real-key parts are GEMMs
/// (`dP = dO · V_0^T`, `dV_0 = P^T · dO`, `dQ = dS · K_0`, `dK_0 = dS^T · Q`), the
/// pause-key parts are per-query loops, as in the forward.
pub fn attention_backward<T: Scalar>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    s: AttnShape,
) {
    let (d, dh, w) = (s.d, s.d_head(), s.width());
    let (kk, seq) = (s.steps.pauses, s.steps.seq);
    let (rows, plane) = ((kk + 1) * seq, s.plane());
    let scale = T::one() / T::of(dh as f64).sqrt();
    // Head-major gradients [B, H, 3, K+1, T, dh] (dq, dk, dv planes per (b, h)).
    let mut g_h = vec![T::zero(); s.steps.batch * s.heads * 3 * plane];
    g_h.par_chunks_mut(3 * plane)
        .enumerate()
        .for_each(|(bh, g)| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let (dq, rest) = g.split_at_mut(plane);
            let (dk, dv) = rest.split_at_mut(plane);
            let a = &att[bh * rows * w..][..rows * w];
            let local = gather_head(qkv, s, b, h);
            let (q_all, k_all, v_all) = (
                &local[..plane],
                &local[plane..2 * plane],
                &local[2 * plane..],
            );
            let row_of = |k: usize, t: usize| (k * seq + t) * dh;
            // dO of this head, [(K+1)T, dh].
            let mut d_o = vec![T::zero(); plane];
            for k in 0..=kk {
                for t in 0..seq {
                    d_o[row_of(k, t)..][..dh]
                        .copy_from_slice(&dout[s.steps.row(b, k, t) * d + h * dh..][..dh]);
                }
            }
            let mut p_real = vec![T::zero(); rows * seq];
            for i in 0..rows {
                p_real[i * seq..][..seq].copy_from_slice(&a[i * w..][..seq]);
            }
            // dV_0 = P_real^T · dO, and dP_real = dO · V_0^T.
            matmul(
                &mut dv[..seq * dh],
                &p_real,
                Op::T,
                &d_o,
                Op::N,
                seq,
                rows,
                dh,
                false,
            );
            let mut dp_real = vec![T::zero(); rows * seq];
            matmul(
                &mut dp_real,
                &d_o,
                Op::N,
                &v_all[..seq * dh],
                Op::T,
                rows,
                dh,
                seq,
                false,
            );
            // Softmax backward per query: dS_j = att_j (dP_j - Σ att·dP) · scale. The
            // real part of dS goes to ds_real (reusing p_real), the pause part is applied
            // at once.
            let ds_real = &mut p_real;
            let mut dp = vec![T::zero(); w];
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    let arow = &a[i * w..][..w];
                    let dy = &d_o[row_of(k, t)..][..dh];
                    let mut weighted = T::zero();
                    for j in 0..w {
                        let (t2, k2) = candidate_key(j, t, seq);
                        dp[j] = if !pause_visible(t, k, t2, k2) {
                            T::zero()
                        } else if k2 == 0 {
                            dp_real[i * seq + t2]
                        } else {
                            // Pause key: dP and dV by hand.
                            for (x, &gy) in dv[row_of(k2, t2)..][..dh].iter_mut().zip(dy) {
                                *x += arow[j] * gy;
                            }
                            dot(dy, &v_all[row_of(k2, t2)..][..dh])
                        };
                        weighted += arow[j] * dp[j];
                    }
                    for j in 0..w {
                        let (t2, k2) = candidate_key(j, t, seq);
                        let ds = if pause_visible(t, k, t2, k2) {
                            arow[j] * (dp[j] - weighted) * scale
                        } else {
                            T::zero()
                        };
                        if j < seq {
                            ds_real[i * seq + j] = ds;
                        } else if ds != T::zero() {
                            let key = &k_all[row_of(k2, t2)..][..dh];
                            for (x, &kv) in dq[row_of(k, t)..][..dh].iter_mut().zip(key) {
                                *x += ds * kv;
                            }
                            let q = &q_all[row_of(k, t)..][..dh];
                            for (x, &qv) in dk[row_of(k2, t2)..][..dh].iter_mut().zip(q) {
                                *x += ds * qv;
                            }
                        }
                    }
                }
            }
            // Real keys: dQ += dS_real · K_0, dK_0 = dS_real^T · Q.
            matmul(
                dq,
                ds_real,
                Op::N,
                &k_all[..seq * dh],
                Op::N,
                rows,
                seq,
                dh,
                true,
            );
            matmul(
                &mut dk[..seq * dh],
                ds_real,
                Op::T,
                q_all,
                Op::N,
                seq,
                rows,
                dh,
                false,
            );
        });
    dqkv.par_chunks_mut(3 * d).enumerate().for_each(|(row, o)| {
        let (bk, t) = (row / seq, row % seq);
        let (b, k) = (bk / (kk + 1), bk % (kk + 1));
        for h in 0..s.heads {
            let base = (b * s.heads + h) * 3 * plane + (k * seq + t) * dh;
            for m in 0..3 {
                o[m * d + h * dh..][..dh].copy_from_slice(&g_h[base + m * plane..][..dh]);
            }
        }
    });
}

//! Multi-head causal attention over pause steps, in both modes of docs/MATH.md,
//! "Attention: two modes".
//!
//! Query step `(t, k)` sees key step `(t', k')` iff [`pause_visible`] for the model's
//! [`PauseAttention`] mode, the one place the rule lives (mirrored by
//! `kernels/pause_mask.cuh`):
//!
//! - `shared` ([`shared_visible`]): causal over the interleaved stream, `t' < t` or
//!   (`t' = t` and `k' <= k`). Every step can be a key.
//! - `private` ([`private_visible`]): the real prefix `(t' <= t, k' = 0)` plus the
//!   query's own earlier pause steps `(t, 1..=k)`.
//!
//! A query only ever scores its **candidates** ([`AttnShape::candidate_key`]): the
//! first [`AttnShape::dense_keys`] steps in depth-major order (all `(K+1)T` steps for
//! `shared`, the `T` real steps for `private`), scored with one GEMM per `(b, head)`,
//! then, for `private`, the `K` pause steps of its own position, scored one by one.
//! So `private` costs about `(K+1)` causal attentions over `T` and never forms the
//! `((K+1)T)^2` score matrix; `shared` is one attention over `(K+1)T` keys. Every
//! candidate still goes through `pause_visible`.
//!
//! Shapes: `qkv: [B, K+1, T, 3d]` (q, then k, then v; heads contiguous in each),
//! `out: [B, K+1, T, d]`, saved softmax `att: [B, H, K+1, T, width]` over the
//! candidates (0 where masked; `width` = `(K+1)T` shared, `T+K` private). Work is
//! split over `(b, head)` with rayon; each pair is computed sequentially in a fixed
//! order, so results do not depend on thread scheduling.

use crate::cpu::embedding::StepShape;
use crate::cpu::scalar::{matmul, Op, Scalar};
use rayon::prelude::*;

pub use crate::config::PauseAttention;

/// `shared` (docs/MATH.md, "Attention: two modes"): query step `(t, k)` sees key step
/// `(t2, k2)` iff `t2 < t or (t2 = t and k2 <= k)`.
///
/// ```
/// use cyb::cpu::attention::shared_visible;
/// assert!(shared_visible(3, 0, 2, 1)); // an earlier position's pause
/// assert!(shared_visible(3, 2, 3, 2)); // itself
/// assert!(!shared_visible(3, 1, 3, 2)); // its own later pause
/// assert!(!shared_visible(2, 3, 3, 0)); // a later position
/// ```
pub fn shared_visible(t: usize, k: usize, t2: usize, k2: usize) -> bool {
    t2 < t || (t2 == t && k2 <= k)
}

/// `private` (docs/MATH.md, "Attention: two modes"): query step `(t, k)` sees key step
/// `(t2, k2)` iff `(k2 = 0 and t2 <= t) or (t2 = t and 1 <= k2 <= k)`.
///
/// ```
/// use cyb::cpu::attention::private_visible;
/// assert!(private_visible(3, 2, 1, 0)); // real prefix
/// assert!(private_visible(3, 2, 3, 1)); // own earlier pause
/// assert!(!private_visible(3, 2, 2, 1)); // another position's pause
/// assert!(!private_visible(3, 0, 3, 1)); // a real token never sees pauses
/// ```
pub fn private_visible(t: usize, k: usize, t2: usize, k2: usize) -> bool {
    (k2 == 0 && t2 <= t) || (t2 == t && 1 <= k2 && k2 <= k)
}

/// May query step `(t, k)` attend to key step `(t2, k2)` in `mode` (docs/MATH.md,
/// "Attention: two modes")?
pub fn pause_visible(mode: PauseAttention, t: usize, k: usize, t2: usize, k2: usize) -> bool {
    match mode {
        PauseAttention::Shared => shared_visible(t, k, t2, k2),
        PauseAttention::Private => private_visible(t, k, t2, k2),
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
    /// Which keys a pause step sees.
    pub mode: PauseAttention,
}

impl AttnShape {
    /// Candidates scored by the GEMM: the first `dense_keys` steps in depth-major
    /// order, `(K+1)T` for `shared` (every step), `T` for `private` (the real plane).
    pub fn dense_keys(&self) -> usize {
        match self.mode {
            PauseAttention::Shared => (self.steps.pauses + 1) * self.steps.seq,
            PauseAttention::Private => self.steps.seq,
        }
    }
    /// Candidates per query: the dense keys, plus for `private` the `K` pause steps of
    /// the query's own position (`T + K`); `(K+1)T` for `shared`.
    pub fn width(&self) -> usize {
        match self.mode {
            PauseAttention::Shared => self.dense_keys(),
            PauseAttention::Private => self.dense_keys() + self.steps.pauses,
        }
    }
    /// Candidate key `j` (`0..width`) of a query at position `t`: `j < dense_keys` is
    /// step `(j % T, j / T)` (depth-major), `j = dense_keys + i` is the pause step
    /// `(t, i + 1)` (`private` only). Every key visible to a query at `t` is one of these.
    pub fn candidate_key(&self, j: usize, t: usize) -> (usize, usize) {
        let (seq, nd) = (self.steps.seq, self.dense_keys());
        if j < nd {
            (j % seq, j / seq)
        } else {
            (t, j - nd + 1)
        }
    }
    /// [`pause_visible`] in this shape's mode.
    pub fn visible(&self, t: usize, k: usize, t2: usize, k2: usize) -> bool {
        pause_visible(self.mode, t, k, t2, k2)
    }
    /// Length of the saved softmax `att`: `B * H * (K+1) * T * width`.
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

/// out: `[B, K+1, T, d]`, att: `[B, H, K+1, T, width]`; qkv: `[B, K+1, T, 3d]`.
///
/// Per `(b, head)`: the scores against the dense keys are one GEMM
/// `Q [(K+1)T, dh] · K_dense^T [dh, n_dense]` (every plane scores the same keys), the
/// `k` private pause keys of each query (`private` only) are dot products; the mask
/// then keeps what [`pause_visible`] allows, and the output is `P_dense · V_dense`
/// (GEMM) plus the private pause terms.
pub fn attention_forward<T: Scalar>(out: &mut [T], att: &mut [T], qkv: &[T], s: AttnShape) {
    let (d, dh, w, nd) = (s.d, s.d_head(), s.width(), s.dense_keys());
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
            // Scores against the dense keys: [(K+1)T, n_dense].
            let mut s_dense = vec![T::zero(); rows * nd];
            matmul(
                &mut s_dense,
                q_all,
                Op::N,
                &k_all[..nd * dh],
                Op::T,
                rows,
                dh,
                nd,
                false,
            );
            let mut p_dense = vec![T::zero(); rows * nd];
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    let arow = &mut a[i * w..][..w];
                    // (t, 0) is always visible, so the max is finite.
                    let mut max = T::neg_infinity();
                    for (j, sc) in arow.iter_mut().enumerate() {
                        let (t2, k2) = s.candidate_key(j, t);
                        *sc = if !s.visible(t, k, t2, k2) {
                            T::neg_infinity()
                        } else if j < nd {
                            s_dense[i * nd + j] * scale
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
                    p_dense[i * nd..][..nd].copy_from_slice(&arow[..nd]);
                }
            }
            // Dense keys: O = P_dense · V_dense; then each query's own pause steps.
            matmul(
                oh,
                &p_dense,
                Op::N,
                &v_all[..nd * dh],
                Op::N,
                rows,
                nd,
                dh,
                false,
            );
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    for j in nd..w {
                        let (t2, k2) = s.candidate_key(j, t);
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
/// `dout: [B, K+1, T, d]` and the saved `qkv` and `att`. The dense-key parts are GEMMs
/// (`dP = dO · V_dense^T`, `dV_dense = P^T · dO`, `dQ = dS · K_dense`,
/// `dK_dense = dS^T · Q`), the private pause-key parts are per-query loops, as in the
/// forward.
pub fn attention_backward<T: Scalar>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    s: AttnShape,
) {
    let (d, dh, w, nd) = (s.d, s.d_head(), s.width(), s.dense_keys());
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
            let mut p_dense = vec![T::zero(); rows * nd];
            for i in 0..rows {
                p_dense[i * nd..][..nd].copy_from_slice(&a[i * w..][..nd]);
            }
            // dV_dense = P_dense^T · dO, and dP_dense = dO · V_dense^T.
            matmul(
                &mut dv[..nd * dh],
                &p_dense,
                Op::T,
                &d_o,
                Op::N,
                nd,
                rows,
                dh,
                false,
            );
            let mut dp_dense = vec![T::zero(); rows * nd];
            matmul(
                &mut dp_dense,
                &d_o,
                Op::N,
                &v_all[..nd * dh],
                Op::T,
                rows,
                dh,
                nd,
                false,
            );
            // Softmax backward per query: dS_j = att_j (dP_j - Σ att·dP) · scale. The
            // dense part of dS goes to ds_dense (reusing p_dense), the pause part is
            // applied at once.
            let ds_dense = &mut p_dense;
            let mut dp = vec![T::zero(); w];
            for k in 0..=kk {
                for t in 0..seq {
                    let i = k * seq + t;
                    let arow = &a[i * w..][..w];
                    let dy = &d_o[row_of(k, t)..][..dh];
                    let mut weighted = T::zero();
                    for j in 0..w {
                        let (t2, k2) = s.candidate_key(j, t);
                        dp[j] = if !s.visible(t, k, t2, k2) {
                            T::zero()
                        } else if j < nd {
                            dp_dense[i * nd + j]
                        } else {
                            // Private pause key: dP and dV by hand.
                            for (x, &gy) in dv[row_of(k2, t2)..][..dh].iter_mut().zip(dy) {
                                *x += arow[j] * gy;
                            }
                            dot(dy, &v_all[row_of(k2, t2)..][..dh])
                        };
                        weighted += arow[j] * dp[j];
                    }
                    for j in 0..w {
                        let (t2, k2) = s.candidate_key(j, t);
                        let ds = if s.visible(t, k, t2, k2) {
                            arow[j] * (dp[j] - weighted) * scale
                        } else {
                            T::zero()
                        };
                        if j < nd {
                            ds_dense[i * nd + j] = ds;
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
            // Dense keys: dQ += dS_dense · K_dense, dK_dense = dS_dense^T · Q.
            matmul(
                dq,
                ds_dense,
                Op::N,
                &k_all[..nd * dh],
                Op::N,
                rows,
                nd,
                dh,
                true,
            );
            matmul(
                &mut dk[..nd * dh],
                ds_dense,
                Op::T,
                q_all,
                Op::N,
                nd,
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

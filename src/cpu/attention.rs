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
use crate::cpu::scalar::Scalar;
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

fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |acc, (&x, &y)| acc + x * y)
}

/// out: `[B, K+1, T, d]`, att: `[B, H, K+1, T, T+K]`; qkv: `[B, K+1, T, 3d]`.
pub fn attention_forward<T: Scalar>(out: &mut [T], att: &mut [T], qkv: &[T], s: AttnShape) {
    let (d, dh, w) = (s.d, s.d_head(), s.width());
    let (kk, seq) = (s.steps.pauses, s.steps.seq);
    let scale = T::one() / T::of(dh as f64).sqrt();
    // Head-major output [B, H, K+1, T, dh], so that each (b, h) owns one slice.
    let mut out_h = vec![T::zero(); s.steps.batch * s.heads * s.plane()];
    out_h
        .par_chunks_mut(s.plane())
        .zip(att.par_chunks_mut((kk + 1) * seq * w))
        .enumerate()
        .for_each(|(bh, (oh, a))| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let q_at = |k: usize, t: usize| &qkv[s.steps.row(b, k, t) * 3 * d + h * dh..][..dh];
            let k_at = |k: usize, t: usize| &qkv[s.steps.row(b, k, t) * 3 * d + d + h * dh..][..dh];
            let v_at =
                |k: usize, t: usize| &qkv[s.steps.row(b, k, t) * 3 * d + 2 * d + h * dh..][..dh];
            for k in 0..=kk {
                for t in 0..seq {
                    let q = q_at(k, t);
                    let arow = &mut a[(k * seq + t) * w..][..w];
                    // (t, 0) is always visible, so the max is finite.
                    let mut max = T::neg_infinity();
                    for (j, sc) in arow.iter_mut().enumerate() {
                        let (t2, k2) = candidate_key(j, t, seq);
                        *sc = if pause_visible(t, k, t2, k2) {
                            dot(q, k_at(k2, t2)) * scale
                        } else {
                            T::neg_infinity()
                        };
                        max = max.max(*sc);
                    }
                    let mut sum = T::zero();
                    for sc in arow.iter_mut() {
                        *sc = (*sc - max).exp(); // masked: exp(-inf) = 0
                        sum += *sc;
                    }
                    let o = &mut oh[(k * seq + t) * dh..][..dh];
                    o.iter_mut().for_each(|x| *x = T::zero());
                    for (j, p) in arow.iter_mut().enumerate() {
                        *p = *p / sum;
                        if *p == T::zero() {
                            continue;
                        }
                        let (t2, k2) = candidate_key(j, t, seq);
                        for (x, &v) in o.iter_mut().zip(v_at(k2, t2)) {
                            *x += *p * v;
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
/// `dout: [B, K+1, T, d]` and the saved `qkv` and `att`.
pub fn attention_backward<T: Scalar>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    s: AttnShape,
) {
    let (d, dh, w) = (s.d, s.d_head(), s.width());
    let (kk, seq) = (s.steps.pauses, s.steps.seq);
    let plane = s.plane();
    let scale = T::one() / T::of(dh as f64).sqrt();
    // Head-major gradients [B, H, 3, K+1, T, dh] (dq, dk, dv planes per (b, h)).
    let mut g_h = vec![T::zero(); s.steps.batch * s.heads * 3 * plane];
    g_h.par_chunks_mut(3 * plane)
        .enumerate()
        .for_each(|(bh, g)| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let (dq, rest) = g.split_at_mut(plane);
            let (dk, dv) = rest.split_at_mut(plane);
            let a = &att[bh * (kk + 1) * seq * w..][..(kk + 1) * seq * w];
            let at = |m: usize, k: usize, t: usize| {
                &qkv[s.steps.row(b, k, t) * 3 * d + m * d + h * dh..][..dh]
            };
            let mut datt = vec![T::zero(); w];
            for k in 0..=kk {
                for t in 0..seq {
                    let dy = &dout[s.steps.row(b, k, t) * d + h * dh..][..dh];
                    let arow = &a[(k * seq + t) * w..][..w];
                    let q = at(0, k, t);
                    // datt_j = dy · v_j and dv_j += att_j · dy.
                    let mut weighted = T::zero();
                    for j in 0..w {
                        let (t2, k2) = candidate_key(j, t, seq);
                        if !pause_visible(t, k, t2, k2) {
                            datt[j] = T::zero();
                            continue;
                        }
                        datt[j] = dot(dy, at(2, k2, t2));
                        weighted += arow[j] * datt[j];
                        let dvj = &mut dv[(k2 * seq + t2) * dh..][..dh];
                        for (x, &g) in dvj.iter_mut().zip(dy) {
                            *x += arow[j] * g;
                        }
                    }
                    // Softmax backward, then the scaled dot product q·k.
                    let dqi = &mut dq[(k * seq + t) * dh..][..dh];
                    for j in 0..w {
                        let (t2, k2) = candidate_key(j, t, seq);
                        if !pause_visible(t, k, t2, k2) {
                            continue;
                        }
                        let dpre = arow[j] * (datt[j] - weighted) * scale;
                        let key = at(1, k2, t2);
                        for (x, &kv) in dqi.iter_mut().zip(key) {
                            *x += dpre * kv;
                        }
                        let dkj = &mut dk[(k2 * seq + t2) * dh..][..dh];
                        for (x, &qv) in dkj.iter_mut().zip(q) {
                            *x += dpre * qv;
                        }
                    }
                }
            }
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

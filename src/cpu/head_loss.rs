//! The tied LM head fused with the CYB loss: loss, `d_hidden` and `dE` without the
//! `[B, K+1, T, V+1]` logits tensor (docs/MATH.md, "The five objectives", on top of the
//! tied head of "The model").
//!
//! ```text
//! for each chunk of whole positions (all K+1 rows of a position together, since the
//! halting couples them):
//!     logits_c  = hidden_c · E^T                 [rows_c, V+1]   one GEMM
//!     loss stages 1-3 of cpu::loss on logits_c    (row scalars, halting, dlogits_c)
//!     d_hidden_c = dlogits_c · E                  [rows_c, d]     overwritten
//!     dE        += dlogits_c^T · hidden_c         [V+1, d]        accumulated in chunk order
//! ```
//!
//! The same GEMM FLOPs as the unfused head; only one chunk of logits (and one of
//! `dlogits`) exists at a time. A chunk is a range `[p0, p1)` of positions in `[B, T]`
//! order; its rows are gathered into the chunk-local depth-major layout
//! `[1, K+1, p1-p0]`, so the loss stages run on it unchanged.
//!
//! **Exact reduction.** A `Mean` divides by the weight sum over *all* valid positions,
//! which no chunk knows. It does not depend on the logits: it is the sum of the
//! weights (1 by default) of the positions whose target is not `-1`, so it is computed
//! from `targets` and `weights` alone before the first chunk, in the same position
//! order as the unfused loss. Every chunk then scales its row gradients by
//! `1/weight_sum`, and the per-position losses are summed at the end in position
//! order, exactly as [`cyb_loss`](crate::cpu::loss::cyb_loss) sums them.

use crate::cpu::loss::{
    check_targets, check_weights, dlogits_from_row_grads, position_objectives, row_scalars,
    LossShape, LossStats,
};
use crate::cpu::scalar::{matmul, Op, Scalar};
use crate::error::{CybError, Result};
use crate::objective::{Reduction, ResolvedObjective};

/// Default memory budget of one chunk of logits, in bytes (256 MiB, the CLI's
/// `--head-chunk-mb` default).
pub const DEFAULT_HEAD_CHUNK_BYTES: usize = 256 << 20;

/// Positions per chunk such that one chunk of logits, `positions * (K+1)` rows of
/// `row_bytes` bytes each, fits in `budget_bytes`; at least 1 (a single position is the
/// smallest unit the halting allows). Never depends on the batch.
///
/// ```
/// use cyb::cpu::head_loss::chunk_positions;
/// // GPT-2 small, K = 3, bf16 rows padded to 50304: 256 MiB hold 667 positions.
/// assert_eq!(chunk_positions(256 << 20, 3, 50304 * 2), 667);
/// assert_eq!(chunk_positions(0, 3, 100), 1);
/// ```
pub fn chunk_positions(budget_bytes: usize, pauses: usize, row_bytes: usize) -> usize {
    let per_position = (pauses + 1) * row_bytes.max(1);
    (budget_bytes / per_position).max(1)
}

/// The gradients [`head_loss`] writes: `d_hidden` `[rows, d]` is **overwritten**,
/// `d_embedding` `[V+1, d]` is **accumulated** (it is the tied embedding's gradient,
/// which the embedding lookup also adds to).
pub struct HeadGrads<'a, T> {
    pub d_hidden: &'a mut [T],
    pub d_embedding: &'a mut [T],
}

/// What [`head_loss`] returns (the fields of [`LossForward`](crate::cpu::loss::LossForward)
/// a caller reads).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadLossOutput {
    /// The reduced loss (weighted mean for `Mean`, sum for `Sum` and `None`).
    pub loss: f64,
    /// Per-position `w_i L_i` (0 at ignored positions), `[B, T]`.
    pub per_position: Vec<f64>,
    /// Per-position `E[pauses]` (0 at ignored positions), `[B, T]`.
    pub pauses: Vec<f64>,
    pub stats: LossStats,
}

/// The sizes of one fused head evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    /// Rows, positions and vocabulary (the logits shape the head would produce).
    pub loss: LossShape,
    /// Hidden width `d`.
    pub d: usize,
    /// Positions per chunk (see [`chunk_positions`]); at least 1.
    pub chunk_positions: usize,
}

impl HeadShape {
    /// Checks every length against this shape, before anything is written.
    fn check<T>(
        &self,
        hidden: &[T],
        embedding: &[T],
        targets: &[i32],
        weights: Option<&[f32]>,
        grads: Option<&HeadGrads<'_, T>>,
    ) -> Result<()> {
        let s = self.loss;
        let (rows, v1) = (s.rows(), s.vocab + 1);
        s.check_lengths(rows * v1, targets.len(), weights.map(<[f32]>::len))?;
        check_targets(targets, s.vocab)?;
        check_weights(weights)?;
        if self.chunk_positions == 0 {
            return Err(CybError::Param("head chunk must hold >= 1 position".into()));
        }
        let mut want = vec![
            ("hidden", hidden.len(), rows * self.d),
            ("embedding", embedding.len(), v1 * self.d),
        ];
        if let Some(g) = grads {
            want.push(("d_hidden", g.d_hidden.len(), rows * self.d));
            want.push(("d_embedding", g.d_embedding.len(), v1 * self.d));
        }
        for (what, got, expected) in want {
            if got != expected {
                return Err(CybError::Shape(format!(
                    "{what} has {got} elements, expected {expected} for {self:?}"
                )));
            }
        }
        Ok(())
    }
}

/// `sum of w_i over positions with y_i >= 0` in position order: the divisor of a
/// `Mean`, known before any logit exists.
pub fn valid_weight_sum(targets: &[i32], weights: Option<&[f32]>) -> f64 {
    targets
        .iter()
        .enumerate()
        .filter(|(_, &y)| y >= 0)
        .map(|(i, _)| weights.map_or(1.0, |w| w[i] as f64))
        .sum()
}

/// Loss of the tied head `logits = hidden · E^T` followed by the CYB loss, and
/// optionally its gradients, one chunk of positions at a time (module docs). The
/// upstream gradient is 1 (at every position for `Reduction::None`), as in
/// [`cyb_loss`](crate::cpu::loss::cyb_loss). `hidden` is `[B, K+1, T, d]` (depth-major),
/// `embedding` `[V+1, d]`; the DK bias is the objective's `dk_bias` (the model's
/// `forward_backward` sets it from its config).
///
/// ```
/// use cyb::cpu::head_loss::{head_loss, HeadGrads, HeadShape};
/// use cyb::cpu::loss::LossShape;
/// use cyb::{Objective, Reduction};
/// let loss = LossShape { batch: 2, pauses: 1, seq: 3, vocab: 5 };
/// let shape = HeadShape { loss, d: 4, chunk_positions: 2 };
/// let hidden: Vec<f64> = (0..loss.rows() * 4).map(|i| (i as f64 * 0.3).sin()).collect();
/// let emb: Vec<f64> = (0..6 * 4).map(|i| (i as f64 * 0.7).cos()).collect();
/// let targets = [1, 4, -1, 0, 2, 3];
/// let (mut dh, mut de) = (vec![0.0; hidden.len()], vec![0.0; emb.len()]);
/// let obj = Objective::ap_default().resolve(1).unwrap();
/// let grads = HeadGrads { d_hidden: &mut dh, d_embedding: &mut de };
/// let out = head_loss(&hidden, &emb, &targets, shape, &obj, Reduction::Mean, None, Some(grads)).unwrap();
/// assert!(out.loss.is_finite() && out.stats.valid_positions == 5);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head_loss<T: Scalar>(
    hidden: &[T],
    embedding: &[T],
    targets: &[i32],
    shape: HeadShape,
    obj: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&[f32]>,
    mut grads: Option<HeadGrads<'_, T>>,
) -> Result<HeadLossOutput> {
    shape.check(hidden, embedding, targets, weights, grads.as_ref())?;
    let s = shape.loss;
    if obj.k != s.pauses {
        return Err(CybError::Shape(format!(
            "objective resolved for K = {} but the head has K = {}",
            obj.k, s.pauses
        )));
    }
    let (d, v1, kk, n) = (shape.d, s.vocab + 1, s.pauses, s.positions());
    let weight_sum = valid_weight_sum(targets, weights);
    let upstream_scale = match reduction {
        Reduction::Mean if weight_sum > 0.0 => 1.0 / weight_sum,
        Reduction::Mean => 0.0,
        Reduction::Sum | Reduction::None => 1.0,
    };
    let mut per_position = vec![0.0; n];
    let mut pauses = vec![0.0; n];
    let mut valid_positions = 0;
    // Chunk buffers, sized for the largest chunk and reused.
    let chunk = shape.chunk_positions.min(n.max(1));
    let mut hidden_c = vec![T::zero(); (kk + 1) * chunk * d];
    let mut logits_c = vec![T::zero(); (kk + 1) * chunk * v1];
    let mut dlogits_c = vec![T::zero(); if grads.is_some() { logits_c.len() } else { 0 }];
    let mut dhidden_c = vec![T::zero(); if grads.is_some() { hidden_c.len() } else { 0 }];

    for p0 in (0..n).step_by(chunk) {
        let p1 = (p0 + chunk).min(n);
        let cs = LossShape {
            batch: 1,
            pauses: kk,
            seq: p1 - p0,
            vocab: s.vocab,
        };
        let rows_c = cs.rows();
        // Chunk row (k, j) is global row (b, k, t) with b*T + t = p0 + j.
        let global_row = |k: usize, j: usize| s.row((p0 + j) / s.seq, k, (p0 + j) % s.seq);
        let hc = &mut hidden_c[..rows_c * d];
        for k in 0..=kk {
            for j in 0..cs.seq {
                let r = global_row(k, j);
                hc[cs.row(0, k, j) * d..][..d].copy_from_slice(&hidden[r * d..][..d]);
            }
        }
        let lc = &mut logits_c[..rows_c * v1];
        matmul(lc, hc, Op::N, embedding, Op::T, rows_c, d, v1, false);
        let (tc, wc) = (&targets[p0..p1], weights.map(|w| &w[p0..p1]));
        let scalars = row_scalars(lc, tc, cs, obj.dk_bias)?;
        // Per chunk: a sum (the Mean's divisor is applied through the upstream).
        let chunk_reduction = match reduction {
            Reduction::None => Reduction::None,
            Reduction::Mean | Reduction::Sum => Reduction::Sum,
        };
        let fwd = position_objectives(&scalars, tc, cs, obj, chunk_reduction, wc)?;
        per_position[p0..p1].copy_from_slice(&fwd.per_position);
        pauses[p0..p1].copy_from_slice(&fwd.pauses);
        valid_positions += fwd.stats.valid_positions;
        let Some(g) = grads.as_mut() else { continue };
        let row_grads = if reduction == Reduction::None {
            fwd.row_grads(cs, &vec![1.0; cs.seq])?
        } else {
            fwd.row_grads(cs, &[upstream_scale])?
        };
        let dl = &mut dlogits_c[..rows_c * v1];
        dlogits_from_row_grads(lc, tc, cs, &scalars, &row_grads, dl)?;
        let dhc = &mut dhidden_c[..rows_c * d];
        matmul(dhc, dl, Op::N, embedding, Op::N, rows_c, v1, d, false);
        matmul(g.d_embedding, dl, Op::T, hc, Op::N, v1, rows_c, d, true);
        for k in 0..=kk {
            for j in 0..cs.seq {
                let r = global_row(k, j);
                g.d_hidden[r * d..][..d].copy_from_slice(&dhc[cs.row(0, k, j) * d..][..d]);
            }
        }
    }
    // The same sums, in the same order, as `position_objectives` over the whole batch.
    let mut weighted_pauses = 0.0;
    for (i, &y) in targets.iter().enumerate() {
        if y >= 0 {
            weighted_pauses += weights.map_or(1.0, |w| w[i] as f64) * pauses[i];
        }
    }
    let total: f64 = per_position.iter().sum();
    let loss = match reduction {
        Reduction::Mean if weight_sum > 0.0 => total / weight_sum,
        Reduction::Mean => 0.0,
        Reduction::Sum | Reduction::None => total,
    };
    let stats = LossStats {
        valid_positions,
        weight_sum,
        mean_pauses: if weight_sum > 0.0 {
            weighted_pauses / weight_sum
        } else {
            0.0
        },
    };
    Ok(HeadLossOutput {
        loss,
        per_position,
        pauses,
        stats,
    })
}

//! CPU reference of the CYB loss pipeline (docs/MATH.md, "The five objectives"): the truth
//! every kernel is checked against.
//!
//! Three stages, mirrored one to one by `kernels/cyb_loss.cu`:
//! 1. [`row_scalars`]: one pass over each logits row `z ∈ R^{V+1}` giving
//!    `r = logsumexp(z[0..V])`, `e = z[V] + b_DK` (the DK bias), `u = z[y]`.
//! 2. [`position_objectives`]: per position, the halting distribution and the
//!    objective (`ce_final`, `ap`, `marginal`, `va`, `dp`; every one per position),
//!    forward and backward, on the `K+1` scalar triples only.
//! 3. [`dlogits_from_row_grads`]: one streaming pass writing
//!    `∂L/∂z[v] = g_r·exp(z[v]-r) + g_u·[v==y]`, `∂L/∂z[V] = g_e`.
//!
//! The `(B, K+1, T, V+1)` probability tensor is never stored. All per-position math
//! is f64 and in log space (never divide, never exponentiate a logit unshifted).

// Index loops over k = 0..=K mirror docs/MATH.md's sums term by term.
#![allow(clippy::needless_range_loop)]

use crate::error::{CybError, Result};
use crate::objective::{ObjectiveKind, Reduction, ResolvedObjective};
use num_traits::Float;
use rayon::prelude::*;

/// Shape of a logits tensor `[B, K+1, T, V+1]` (depth-major, docs/MATH.md, "Pause steps")
/// and its targets `[B, T]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossShape {
    pub batch: usize,
    /// Pause steps `K`; each position has `K+1` rows.
    pub pauses: usize,
    pub seq: usize,
    /// Real vocabulary size `V`; rows have `V+1` entries (the last is DK).
    pub vocab: usize,
}

impl LossShape {
    /// Number of positions `B*T`.
    pub fn positions(&self) -> usize {
        self.batch * self.seq
    }
    /// Number of logits rows `B*(K+1)*T`.
    pub fn rows(&self) -> usize {
        self.batch * (self.pauses + 1) * self.seq
    }
    /// Row index of step `(b, k, t)` in the depth-major layout.
    pub fn row(&self, b: usize, k: usize, t: usize) -> usize {
        (b * (self.pauses + 1) + k) * self.seq + t
    }
    /// Position index `b*T + t` of a row.
    pub fn position_of_row(&self, row: usize) -> usize {
        let b = row / ((self.pauses + 1) * self.seq);
        b * self.seq + row % self.seq
    }

    /// Check logits and targets lengths and that every target is `-1` or in `0..V`.
    pub fn check(&self, logits_len: usize, targets: &[i32]) -> Result<()> {
        self.check_lengths(logits_len, targets.len(), None)?;
        check_targets(targets, self.vocab)
    }

    /// Check the lengths of logits `[B, K+1, T, V+1]`, targets `[B, T]` and, if given,
    /// per-position weights `[B, T]` (shared by the CPU reference and the GPU API).
    pub fn check_lengths(
        &self,
        logits: usize,
        targets: usize,
        weights: Option<usize>,
    ) -> Result<()> {
        if self.vocab == 0 {
            return Err(CybError::Shape("vocabulary size V must be >= 1".into()));
        }
        let want = self.rows() * (self.vocab + 1);
        if logits != want {
            return Err(CybError::Shape(format!(
                "logits have {logits} elements, expected B*(K+1)*T*(V+1) = {}*{}*{}*{} = {want}",
                self.batch,
                self.pauses + 1,
                self.seq,
                self.vocab + 1
            )));
        }
        for (what, len) in [("targets", Some(targets)), ("weights", weights)] {
            if let Some(len) = len.filter(|&l| l != self.positions()) {
                return Err(CybError::Shape(format!(
                    "{what} have {len} elements, expected B*T = {}",
                    self.positions()
                )));
            }
        }
        Ok(())
    }
}

/// Every target must be `-1` (ignored) or a real token `0..V` (never DK = `V`).
pub fn check_targets(targets: &[i32], vocab: usize) -> Result<()> {
    for (index, &y) in targets.iter().enumerate() {
        if y < -1 || (y >= 0 && y as usize >= vocab) {
            return Err(CybError::VocabRange {
                id: y as i64,
                index,
                vocab,
            });
        }
    }
    Ok(())
}

/// Per-position weights, if given, must be finite and `>= 0`.
pub fn check_weights(weights: Option<&[f32]>) -> Result<()> {
    if let Some(w) = weights {
        if let Some((i, x)) = w
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || **x < 0.0)
        {
            return Err(CybError::Param(format!(
                "position weight {i} is {x}; weights must be finite and >= 0"
            )));
        }
    }
    Ok(())
}

/// `log(exp(a) + exp(b))` without overflow; `-inf` when both are `-inf`.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// `exp(x - total)`, 0 where `x = -inf` (a term that drops out of a logsumexp).
fn share(x: f64, total: f64) -> f64 {
    if x == f64::NEG_INFINITY {
        0.0
    } else {
        (x - total).exp()
    }
}

/// The three numbers of one logits row (docs/MATH.md, "Three numbers per step").
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowScalar {
    /// `logsumexp(z[0..V])` over the real vocabulary.
    pub r: f64,
    /// `z[V] + b_DK`, the DK logit plus the DK bias.
    pub e: f64,
    /// `z[y]`, the target logit (0 for ignored positions).
    pub u: f64,
}

/// `r, e, u` of one row `z` (length `V+1`) with DK bias `dk_bias`; `y < 0` leaves `u = 0`.
pub fn row_scalar<T: Float>(z: &[T], y: i32, dk_bias: f64) -> RowScalar {
    let v = z.len() - 1;
    // Online max/sum, as the kernel does it: one read per logit.
    let mut m = f64::NEG_INFINITY;
    let mut s = 0.0f64;
    for x in &z[..v] {
        let x = x.to_f64().unwrap_or(f64::NAN);
        // A masked logit (-inf) adds nothing; skipping it also avoids exp(-inf - -inf).
        if x == f64::NEG_INFINITY {
            continue;
        }
        if x > m {
            s = s * (m - x).exp() + 1.0;
            m = x;
        } else {
            s += (x - m).exp();
        }
    }
    RowScalar {
        r: m + s.ln(),
        e: z[v].to_f64().unwrap_or(f64::NAN) + dk_bias,
        u: if y >= 0 {
            z[y as usize].to_f64().unwrap_or(f64::NAN)
        } else {
            0.0
        },
    }
}

/// Stage 1: the scalars of every row, `[B, K+1, T]` in row order, with DK bias `dk_bias`.
pub fn row_scalars<T: Float + Sync>(
    logits: &[T],
    targets: &[i32],
    shape: LossShape,
    dk_bias: f64,
) -> Result<Vec<RowScalar>> {
    shape.check(logits.len(), targets)?;
    let width = shape.vocab + 1;
    Ok(logits
        .par_chunks(width)
        .enumerate()
        .map(|(row, z)| row_scalar(z, targets[shape.position_of_row(row)], dk_bias))
        .collect())
}

/// Halting quantities of one position, from its `K+1` row scalars (docs/MATH.md, "Three
/// numbers per step").
#[derive(Clone, Debug, Default)]
pub struct Halting {
    /// `a_k = u_k - r_k`: log p(y | answer at k).
    pub a: Vec<f64>,
    /// `c_k = e_k - lse_k`: log p(DK at k) = log d_k.
    pub c: Vec<f64>,
    /// `s_k = r_k - lse_k` for `k < K`, `s_K = 0`: log(1 - d_k).
    pub s: Vec<f64>,
    /// `P_k = sum_{j<k} c_j` (log probability of reaching step k), `K+2` entries.
    pub cum_c: Vec<f64>,
    /// `log h_k = P_k + s_k`.
    pub log_h: Vec<f64>,
    /// `d_k = exp(c_k)` (the row's DK probability, also at `k = K`).
    pub p_dk: Vec<f64>,
    /// `exp(r_k - lse_k) = 1 - d_k` (also at `k = K`), kept for the backward.
    pub p_ans: Vec<f64>,
}

impl Halting {
    /// `K`, the number of pause steps.
    pub fn pauses(&self) -> usize {
        self.a.len() - 1
    }
    /// `h_k`, the halting distribution (sums to 1).
    pub fn h(&self) -> Vec<f64> {
        self.log_h.iter().map(|l| l.exp()).collect()
    }
    /// `log sum_k h_k p(y | answer at k) = logsumexp_k(log h_k + a_k)`: minus the
    /// `marginal` loss.
    pub fn log_marginal(&self) -> f64 {
        self.log_h
            .iter()
            .zip(&self.a)
            .fold(f64::NEG_INFINITY, |acc, (lh, a)| log_add_exp(acc, lh + a))
    }
    /// `E[pauses] = sum_k k h_k`.
    pub fn expected_pauses(&self) -> f64 {
        self.log_h
            .iter()
            .enumerate()
            .map(|(k, l)| k as f64 * l.exp())
            .sum()
    }
}

/// Forward of the halting distribution from the scalars of one position (their `e`
/// already carries the DK bias).
pub fn halting_from_scalars(rows: &[RowScalar]) -> Halting {
    let kk = rows.len() - 1;
    let mut hal = Halting {
        cum_c: vec![0.0; kk + 2],
        ..Default::default()
    };
    for (k, row) in rows.iter().enumerate() {
        let lse = log_add_exp(row.r, row.e);
        let c = row.e - lse;
        let s = if k < kk { row.r - lse } else { 0.0 };
        hal.a.push(row.u - row.r);
        hal.c.push(c);
        hal.s.push(s);
        hal.p_dk.push(c.exp());
        hal.p_ans.push((row.r - lse).exp());
        hal.log_h.push(hal.cum_c[k] + s);
        hal.cum_c[k + 1] = hal.cum_c[k] + c;
    }
    hal
}

/// Gradients of a per-position quantity with respect to the halting intermediates
/// `a_k`, `P_k` and `s_k` (`log h_k = P_k + s_k` feeds both).
#[derive(Clone, Debug)]
pub struct HaltingGrad {
    pub a: Vec<f64>,
    pub cum_c: Vec<f64>,
    pub s: Vec<f64>,
}

impl HaltingGrad {
    fn zeros(kk: usize) -> Self {
        HaltingGrad {
            a: vec![0.0; kk + 1],
            cum_c: vec![0.0; kk + 1],
            s: vec![0.0; kk + 1],
        }
    }
    /// Adds `g` to `∂/∂log h_k`.
    fn add_log_h(&mut self, k: usize, g: f64) {
        self.cum_c[k] += g;
        self.s[k] += g;
    }
}

/// Per-row gradients `∂L/∂r_k, ∂L/∂e_k, ∂L/∂u_k`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowGrad {
    pub g_r: f64,
    pub g_e: f64,
    pub g_u: f64,
}

/// Backward of [`halting_from_scalars`]: chain `∂L/∂a, ∂L/∂P, ∂L/∂s` to `r, e, u`.
pub fn halting_backward(hal: &Halting, g: &HaltingGrad) -> Vec<RowGrad> {
    let kk = hal.pauses();
    let mut out = vec![RowGrad::default(); kk + 1];
    // P_k = sum_{j<k} c_j, so ∂/∂c_j = sum_{k>j} ∂/∂P_k.
    let mut suffix = 0.0;
    for j in (0..=kk).rev() {
        let g_c = suffix;
        let g_s = if j < kk { g.s[j] } else { 0.0 }; // s_K = 0 is a constant
        let (pa, pd) = (hal.p_ans[j], hal.p_dk[j]);
        // a = u - r;  c = e - lse;  s = r - lse;  ∂lse/∂r = 1 - d, ∂lse/∂e = d.
        out[j] = RowGrad {
            g_r: -g.a[j] - pa * g_c + pd * g_s,
            g_e: pa * g_c - pd * g_s,
            g_u: g.a[j],
        };
        suffix += g.cum_c[j];
    }
    out
}

/// `L = -logsumexp_k x_k` with `x_k = log h_k + log gamma_k + a_k`, forward and
/// gradient into `g` (the `marginal` loss, and the first term of `dp`).
fn discounted_marginal(log_gamma: &[f64], hal: &Halting, g: &mut HaltingGrad) -> f64 {
    let x: Vec<f64> = (0..hal.a.len())
        .map(|k| hal.log_h[k] + log_gamma[k] + hal.a[k])
        .collect();
    let lse = x
        .iter()
        .fold(f64::NEG_INFINITY, |acc, &v| log_add_exp(acc, v));
    for (k, &xk) in x.iter().enumerate() {
        // Posterior over the answering step.
        let q = share(xk, lse);
        g.a[k] -= q;
        g.add_log_h(k, -q);
    }
    -lse
}

/// Value and gradient of one objective at one position (docs/MATH.md, "The five
/// objectives").
pub fn objective_forward_backward(obj: &ResolvedObjective, hal: &Halting) -> (f64, HaltingGrad) {
    let kk = hal.pauses();
    let mut g = HaltingGrad::zeros(kk);
    let loss = match obj.kind {
        ObjectiveKind::CeFinal => {
            g.a[kk] = -1.0;
            -hal.a[kk]
        }
        ObjectiveKind::Marginal => discounted_marginal(&vec![0.0; kk + 1], hal, &mut g),
        ObjectiveKind::Ap => {
            // log Pr(S=k) = P_k + logaddexp(log omega_k, s_k + log Omega_k).
            let (log_omega, log_tail) = obj.log_omega_and_tail();
            let mut x = vec![0.0; kk + 1];
            let mut sigma = vec![0.0; kk + 1]; // ∂ logaddexp / ∂ s_k
            for k in 0..=kk {
                let answered = hal.s[k] + log_tail[k];
                let stop = log_add_exp(log_omega[k], answered);
                sigma[k] = share(answered, stop);
                x[k] = hal.cum_c[k] + stop + obj.log_gamma[k] + hal.a[k];
            }
            let lse = x
                .iter()
                .fold(f64::NEG_INFINITY, |acc, &v| log_add_exp(acc, v));
            for k in 0..=kk {
                let q = share(x[k], lse);
                g.a[k] = -q;
                g.cum_c[k] = -q;
                g.s[k] = -q * sigma[k];
            }
            -lse
        }
        ObjectiveKind::Va => {
            let mut loss = 0.0;
            for k in 0..=kk {
                let h = hal.log_h[k].exp();
                let log_ratio = hal.log_h[k] - obj.rho[k].ln();
                let answer = -obj.log_gamma[k] - hal.a[k];
                loss += h * (answer + obj.beta * log_ratio);
                g.a[k] = -h;
                g.add_log_h(k, h * (answer + obj.beta * (log_ratio + 1.0)));
            }
            loss
        }
        ObjectiveKind::Dp => {
            let mut loss = discounted_marginal(&obj.log_gamma, hal, &mut g);
            for k in 0..=kk {
                let rho = obj.rho[k];
                if rho > 0.0 {
                    loss += obj.alpha * rho * (rho.ln() - hal.log_h[k]);
                    g.add_log_h(k, -obj.alpha * rho);
                }
            }
            loss
        }
    };
    (loss, g)
}

/// Summary numbers of one loss evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossStats {
    /// Positions with a target (`y >= 0`).
    pub valid_positions: usize,
    /// Sum of the per-position weights over valid positions (= valid count by default).
    pub weight_sum: f64,
    /// Weighted mean over valid positions of `E[pauses]`.
    pub mean_pauses: f64,
}

/// Result of stage 2: the reduced loss, per-position values, and what backward needs.
#[derive(Clone, Debug)]
pub struct LossForward {
    /// The reduced loss: the weighted mean (`Mean`) or sum (`Sum`, `None`) of the
    /// per-position losses.
    pub loss: f64,
    /// Per-position `w_i L_i` (0 at ignored positions), in `[B, T]` order.
    pub per_position: Vec<f64>,
    /// Per-position `E[pauses]` (0 at ignored positions).
    pub pauses: Vec<f64>,
    pub stats: LossStats,
    reduction: Reduction,
    /// Unscaled gradient of `w_i L_i` per row, `[B, K+1, T]`.
    grad_loss: Vec<RowGrad>,
}

impl LossForward {
    /// Row gradients for an upstream gradient: for `Mean`/`Sum` pass one value (the
    /// gradient of whatever consumes the reduced loss, usually 1), for `None` one value
    /// per position.
    pub fn row_grads(&self, shape: LossShape, upstream: &[f64]) -> Result<Vec<RowGrad>> {
        let per_position = self.reduction == Reduction::None;
        let want = if per_position { shape.positions() } else { 1 };
        if upstream.len() != want {
            return Err(CybError::Shape(format!(
                "upstream gradient has {} values, expected {want} for reduction {:?}",
                upstream.len(),
                self.reduction
            )));
        }
        let scale = match self.reduction {
            Reduction::Mean if self.stats.weight_sum > 0.0 => 1.0 / self.stats.weight_sum,
            Reduction::Mean => 0.0,
            _ => 1.0,
        };
        Ok((0..shape.rows())
            .map(|row| {
                let up = if per_position {
                    upstream[shape.position_of_row(row)]
                } else {
                    upstream[0]
                } * scale;
                let l = self.grad_loss[row];
                RowGrad {
                    g_r: up * l.g_r,
                    g_e: up * l.g_e,
                    g_u: up * l.g_u,
                }
            })
            .collect())
    }
}

/// Stage 2: halting and objective of every position, forward and backward. The row
/// scalars must come from [`row_scalars`] with the objective's `dk_bias`.
///
/// `weights` (optional, `[B, T]`) multiply each position's loss; they must be finite
/// and `>= 0`. Ignored positions (`y = -1`) contribute nothing and get zero gradient.
pub fn position_objectives(
    scalars: &[RowScalar],
    targets: &[i32],
    shape: LossShape,
    obj: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&[f32]>,
) -> Result<LossForward> {
    if obj.k != shape.pauses {
        return Err(CybError::Shape(format!(
            "objective resolved for K = {} but the logits have K = {}",
            obj.k, shape.pauses
        )));
    }
    if scalars.len() != shape.rows() {
        return Err(CybError::Shape(format!(
            "{} row scalars for shape {shape:?}",
            scalars.len()
        )));
    }
    let logits_len = shape.rows() * (shape.vocab + 1);
    shape.check_lengths(logits_len, targets.len(), weights.map(|w| w.len()))?;
    check_weights(weights)?;
    let kk = shape.pauses;
    let n = shape.positions();
    let mut per_position = vec![0.0; n];
    let mut pauses = vec![0.0; n];
    let mut grad_loss = vec![RowGrad::default(); shape.rows()];
    let mut stats = LossStats::default();
    let mut weighted_pauses = 0.0;
    for b in 0..shape.batch {
        for t in 0..shape.seq {
            let pos = b * shape.seq + t;
            if targets[pos] < 0 {
                continue;
            }
            let w = weights.map_or(1.0, |w| w[pos] as f64);
            let rows: Vec<RowScalar> = (0..=kk).map(|k| scalars[shape.row(b, k, t)]).collect();
            let hal = halting_from_scalars(&rows);
            let (l, g) = objective_forward_backward(obj, &hal);
            let e = hal.expected_pauses();
            per_position[pos] = w * l;
            pauses[pos] = e;
            stats.valid_positions += 1;
            stats.weight_sum += w;
            weighted_pauses += w * e;
            for (k, rg) in halting_backward(&hal, &g).into_iter().enumerate() {
                grad_loss[shape.row(b, k, t)] = RowGrad {
                    g_r: w * rg.g_r,
                    g_e: w * rg.g_e,
                    g_u: w * rg.g_u,
                };
            }
        }
    }
    if stats.weight_sum > 0.0 {
        stats.mean_pauses = weighted_pauses / stats.weight_sum;
    }
    let total: f64 = per_position.iter().sum();
    let loss = match reduction {
        Reduction::Mean if stats.weight_sum > 0.0 => total / stats.weight_sum,
        Reduction::Mean => 0.0,
        Reduction::Sum | Reduction::None => total,
    };
    Ok(LossForward {
        loss,
        per_position,
        pauses,
        stats,
        reduction,
        grad_loss,
    })
}

/// Stage 3: `dlogits` from the row gradients, one streaming pass per row.
///
/// `∂L/∂z[v] = g_r·exp(z[v] - r) + g_u·[v == y]` for `v < V`, `∂L/∂z[V] = g_e`.
/// Rows of ignored positions are written as zeros.
pub fn dlogits_from_row_grads<T: Float + Send + Sync>(
    logits: &[T],
    targets: &[i32],
    shape: LossShape,
    scalars: &[RowScalar],
    grads: &[RowGrad],
    dlogits: &mut [T],
) -> Result<()> {
    shape.check(logits.len(), targets)?;
    if dlogits.len() != logits.len() || scalars.len() != shape.rows() || grads.len() != shape.rows()
    {
        return Err(CybError::Shape(format!(
            "dlogits {} / scalars {} / grads {} do not match shape {shape:?}",
            dlogits.len(),
            scalars.len(),
            grads.len()
        )));
    }
    let width = shape.vocab + 1;
    dlogits
        .par_chunks_mut(width)
        .zip(logits.par_chunks(width))
        .enumerate()
        .for_each(|(row, (dz, z))| {
            let y = targets[shape.position_of_row(row)];
            if y < 0 {
                dz.iter_mut().for_each(|d| *d = T::zero());
                return;
            }
            let (s, g) = (scalars[row], grads[row]);
            for v in 0..shape.vocab {
                let zv = z[v].to_f64().unwrap_or(f64::NAN);
                let mut d = g.g_r * (zv - s.r).exp();
                if v as i32 == y {
                    d += g.g_u;
                }
                dz[v] = T::from(d).unwrap_or_else(T::nan);
            }
            dz[shape.vocab] = T::from(g.g_e).unwrap_or_else(T::nan);
        });
    Ok(())
}

/// Everything a caller usually wants in one call: loss, stats, and (optionally)
/// `dlogits` for upstream gradient 1 under the given reduction (for `Reduction::None`
/// the upstream gradient is 1 at every position).
///
/// ```
/// use cyb::cpu::loss::{cyb_loss, LossShape};
/// use cyb::{Objective, Reduction};
/// let shape = LossShape { batch: 1, pauses: 2, seq: 3, vocab: 4 };
/// let logits: Vec<f64> = (0..shape.rows() * 5).map(|i| (i as f64 * 0.37).sin()).collect();
/// let targets = [1, -1, 3];
/// let mut dlogits = vec![0.0; logits.len()];
/// let obj = Objective::ap_default().resolve(2).unwrap();
/// let out = cyb_loss(&logits, &targets, shape, &obj, Reduction::Mean, None, Some(&mut dlogits)).unwrap();
/// assert!(out.loss.is_finite() && out.stats.valid_positions == 2);
/// ```
pub fn cyb_loss<T: Float + Send + Sync>(
    logits: &[T],
    targets: &[i32],
    shape: LossShape,
    obj: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&[f32]>,
    dlogits: Option<&mut [T]>,
) -> Result<LossForward> {
    let scalars = row_scalars(logits, targets, shape, obj.dk_bias)?;
    let fwd = position_objectives(&scalars, targets, shape, obj, reduction, weights)?;
    if let Some(d) = dlogits {
        let upstream = if reduction == Reduction::None {
            vec![1.0; shape.positions()]
        } else {
            vec![1.0]
        };
        let grads = fwd.row_grads(shape, &upstream)?;
        dlogits_from_row_grads(logits, targets, shape, &scalars, &grads, d)?;
    }
    Ok(fwd)
}

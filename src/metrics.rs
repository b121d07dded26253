//! What a trained model does with its pauses: the greedy halting policy of
//! docs/MATH.md ("Decoding") applied to teacher-forced logits, and summaries by difficulty
//! class and by target token.
//!
//! Because pauses are private (docs/MATH.md, "Attention: two modes"), the logits of step
//! `(t, k)` computed with all `K` pauses present are exactly those the model would see at
//! inference after taking `k` pauses at `t`, so the greedy policy can be read off one
//! forward.

use crate::cpu::loss::{halting_from_scalars, row_scalar, LossShape, RowScalar};
use crate::error::{CybError, Result};
use num_traits::Float;

/// What happened at one position with a target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositionOutcome {
    /// Difficulty class of the target (meaning depends on the data source).
    pub class: u16,
    pub target: i32,
    /// Pauses the greedy policy took (the step it answered at).
    pub pauses: usize,
    /// The greedy answer (argmax over real tokens at the answering step) is right.
    pub correct: bool,
    /// The argmax at step 0 (answering without any pause) is right.
    pub correct_at_0: bool,
    /// The argmax at step K (the forced answer, how `ce_final` models are used) is right.
    pub correct_at_final: bool,
    /// `E[pauses]` under the model's own halting distribution.
    pub expected_pauses: f64,
    /// Marginal NLL `-log sum_k h_k p(y | answer at k)` (`marginal` in docs/MATH.md, "The
    /// five objectives").
    pub nll: f64,
    /// Cross-entropy of the forced answer at step K (the `ce_final` quantity).
    pub nll_final: f64,
}

/// Greedy policy on teacher-forced logits `[B, K+1, T, V+1]` of a model with DK bias
/// `dk_bias` (its config's `dk_bias`, added to every DK logit): at step `k < K` say DK
/// when `p(DK at k) > threshold`, else answer with the argmax real token.
pub fn greedy_outcomes<T: Float>(
    logits: &[T],
    targets: &[i32],
    classes: &[u16],
    shape: LossShape,
    dk_bias: f64,
    threshold: f64,
) -> Result<Vec<PositionOutcome>> {
    shape.check(logits.len(), targets)?;
    if classes.len() != targets.len() {
        return Err(CybError::Shape(format!(
            "{} classes for {} targets",
            classes.len(),
            targets.len()
        )));
    }
    let width = shape.vocab + 1;
    let kk = shape.pauses;
    let mut out = Vec::new();
    for b in 0..shape.batch {
        for t in 0..shape.seq {
            let pos = b * shape.seq + t;
            let y = targets[pos];
            if y < 0 {
                continue;
            }
            let mut rows: Vec<RowScalar> = Vec::with_capacity(kk + 1);
            let mut argmax = Vec::with_capacity(kk + 1);
            for k in 0..=kk {
                let z = &logits[shape.row(b, k, t) * width..][..width];
                rows.push(row_scalar(z, y, dk_bias));
                let best = (0..shape.vocab)
                    .max_by(|&i, &j| {
                        z[i].partial_cmp(&z[j])
                            .unwrap_or(std::cmp::Ordering::Equal)
                            .then(j.cmp(&i)) // lowest id wins ties
                    })
                    .unwrap_or(0);
                argmax.push(best as i32);
            }
            let hal = halting_from_scalars(&rows);
            let answered = (0..kk).find(|&k| hal.p_dk[k] <= threshold).unwrap_or(kk);
            let nll = -hal.log_marginal();
            out.push(PositionOutcome {
                class: classes[pos],
                target: y,
                pauses: answered,
                correct: argmax[answered] == y,
                correct_at_0: argmax[0] == y,
                correct_at_final: argmax[kk] == y,
                expected_pauses: hal.expected_pauses(),
                nll,
                nll_final: -hal.a[kk],
            });
        }
    }
    Ok(out)
}

/// Aggregates of a group of outcomes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupStats {
    pub count: usize,
    pub accuracy: f64,
    pub accuracy_at_0: f64,
    /// Accuracy of the forced answer at step K.
    pub accuracy_at_final: f64,
    pub mean_pauses: f64,
    /// Variance of the greedy pause count within the group.
    pub pause_variance: f64,
    pub mean_expected_pauses: f64,
    pub nll: f64,
}

impl GroupStats {
    /// Summary of a set of outcomes (all zeros for an empty set).
    pub fn of<'a>(items: impl IntoIterator<Item = &'a PositionOutcome>) -> Self {
        let mut s = GroupStats::default();
        let mut sq = 0.0;
        for o in items {
            s.count += 1;
            s.accuracy += o.correct as u8 as f64;
            s.accuracy_at_0 += o.correct_at_0 as u8 as f64;
            s.accuracy_at_final += o.correct_at_final as u8 as f64;
            s.mean_pauses += o.pauses as f64;
            sq += (o.pauses * o.pauses) as f64;
            s.mean_expected_pauses += o.expected_pauses;
            s.nll += o.nll;
        }
        if s.count > 0 {
            let n = s.count as f64;
            s.accuracy /= n;
            s.accuracy_at_0 /= n;
            s.accuracy_at_final /= n;
            s.mean_pauses /= n;
            s.pause_variance = (sq / n - s.mean_pauses * s.mean_pauses).max(0.0);
            s.mean_expected_pauses /= n;
            s.nll /= n;
        }
        s
    }
}

/// Everything the end-of-run report shows.
#[derive(Clone, Debug, Default)]
pub struct EvalSummary {
    pub pauses_max: usize,
    pub overall: GroupStats,
    /// Mean forced-answer cross-entropy at step K (what `ce_final` trains).
    pub nll_final: f64,
    /// `histogram[k]` = positions that answered after `k` pauses.
    pub histogram: Vec<usize>,
    /// Per difficulty class, in class-index order: (name, stats).
    pub by_class: Vec<(String, GroupStats)>,
    /// Per target token id: (token id, stats), only tokens that occurred.
    pub by_token: Vec<(usize, GroupStats)>,
}

impl EvalSummary {
    /// Group outcomes by class (names from the data source) and by target token.
    pub fn from_outcomes(
        outcomes: &[PositionOutcome],
        pauses_max: usize,
        class_names: &[String],
    ) -> Self {
        let mut histogram = vec![0; pauses_max + 1];
        for o in outcomes {
            histogram[o.pauses.min(pauses_max)] += 1;
        }
        let by_class = class_names
            .iter()
            .enumerate()
            .map(|(c, name)| {
                (
                    name.clone(),
                    GroupStats::of(outcomes.iter().filter(|o| o.class as usize == c)),
                )
            })
            .collect();
        let max_tok = outcomes.iter().map(|o| o.target).max().unwrap_or(-1);
        let by_token = (0..=max_tok)
            .filter_map(|tok| {
                let g = GroupStats::of(outcomes.iter().filter(|o| o.target == tok));
                (g.count > 0).then_some((tok as usize, g))
            })
            .collect();
        let n = outcomes.len().max(1) as f64;
        EvalSummary {
            pauses_max,
            overall: GroupStats::of(outcomes),
            nll_final: outcomes.iter().map(|o| o.nll_final).sum::<f64>() / n,
            histogram,
            by_class,
            by_token,
        }
    }
}

//! The learning-rate sweep (`cyb experiment --lrs`), as the paper ran it: every arm at
//! every peak rate, each arm reported at the rate with its best mean validation quality
//! over seeds. The choice is made on the validation split; the report's final numbers
//! come from the test split ([`crate::data::Split::Test`]), which no choice saw, so the
//! choice does not flatter them.

use super::result::ExperimentResult;
use super::stats::mean_std;
use crate::number::Num;
use std::fmt::Write as _;

/// The floor of the experiment's cosine schedule as a fraction of the peak rate: the
/// paper's linear warm-up, then cosine decay to `max * 1e-2`.
pub const PAPER_MIN_LR_RATIO: f32 = 1e-2;

/// One run of the sweep: its arm, seed, peak rate and final validation quality.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    pub variant: usize,
    pub seed: u64,
    pub lr: f32,
    /// Final validation quality NLL by the arm's rule (marginal for CYB arms, the
    /// final-step NLL for the baselines); NaN for a run that diverged.
    pub quality: f64,
    /// The step at which the training loss became NaN or infinite (the run stopped
    /// there); `None` for a run that finished.
    pub diverged: Option<usize>,
}

/// The first run of arm `vi` at `lr` that diverged: `(seed, step)`.
pub fn diverged_at(points: &[SweepPoint], vi: usize, lr: f32) -> Option<(u64, usize)> {
    points
        .iter()
        .filter(|p| p.variant == vi && p.lr == lr)
        .find_map(|p| Some((p.seed, p.diverged?)))
}

/// Mean over seeds of arm `vi`'s final validation quality at `lr` (NaN without runs).
pub fn mean_quality(points: &[SweepPoint], vi: usize, lr: f32) -> f64 {
    let q: Vec<f64> = points
        .iter()
        .filter(|p| p.variant == vi && p.lr == lr)
        .map(|p| p.quality)
        .collect();
    if q.is_empty() {
        f64::NAN
    } else {
        mean_std(&q).0
    }
}

/// Per arm `0..arms`, the rate of `rates` with the lowest [`mean_quality`]: the first
/// of equal ones in the order of `rates`; a NaN mean never wins, nor does a rate at
/// which any seed of the arm diverged ([`diverged_at`]: unstable there). `None` for an
/// arm left without a rate.
///
/// ```
/// use cyb::experiment::{best_rates, SweepPoint};
/// let p = |variant, seed, lr, quality| SweepPoint { variant, seed, lr, quality, diverged: None };
/// let points = [
///     p(0, 1, 1e-3, 2.0), p(0, 2, 1e-3, 1.0), // arm 0 at 1e-3: mean 1.5
///     p(0, 1, 3e-4, 1.2), p(0, 2, 3e-4, 1.6), // arm 0 at 3e-4: mean 1.4
///     p(1, 1, 1e-3, 0.9), p(1, 1, 3e-4, 1.1),
///     // arm 2 diverged at 1e-3 (seed 1, step 4), and 3e-4 gave no finite quality
///     SweepPoint { diverged: Some(4), ..p(2, 1, 1e-3, f64::NAN) }, p(2, 1, 3e-4, f64::NAN),
/// ];
/// assert_eq!(best_rates(&points, 3, &[1e-3, 3e-4]), vec![Some(3e-4), Some(1e-3), None]);
/// ```
pub fn best_rates(points: &[SweepPoint], arms: usize, rates: &[f32]) -> Vec<Option<f32>> {
    (0..arms)
        .map(|vi| {
            let mut best: Option<(f32, f64)> = None;
            for &lr in rates {
                let m = mean_quality(points, vi, lr);
                let usable = !m.is_nan() && diverged_at(points, vi, lr).is_none();
                if usable && best.is_none_or(|(_, b)| m < b) {
                    best = Some((lr, m));
                }
            }
            best.map(|(lr, _)| lr)
        })
        .collect()
}

/// `sweep.csv`: every run's final validation quality at every rate, whether that rate
/// is the one its arm is reported at, and the step at which a run diverged (empty for
/// one that finished; its quality is NaN).
pub fn sweep_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,seed,lr,quality_nll,chosen,diverged_at_step\n");
    for p in &res.sweep {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            res.config.variants[p.variant].name,
            p.seed,
            p.lr,
            p.quality,
            res.chosen[p.variant] == p.lr,
            p.diverged.map_or(String::new(), |step| step.to_string())
        );
    }
    s
}

/// `test.csv`: the reported runs (each arm at its chosen rate) measured on the test
/// split; `quality_nll` by the arm's rule.
pub fn test_csv(res: &ExperimentResult) -> String {
    let mut s = String::from(
        "variant,seed,lr,quality_nll,marginal_nll,final_nll,accuracy,accuracy_final,mean_pauses\n",
    );
    for r in &res.runs {
        let t = &r.test;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{}",
            res.config.variants[r.variant].name,
            r.seed,
            r.lr,
            res.test_quality(r),
            t.overall.nll,
            t.nll_final,
            t.overall.accuracy,
            t.overall.accuracy_at_final,
            t.overall.mean_pauses
        );
    }
    s
}

/// The report's sweep table: mean validation quality per arm and rate, the chosen rate
/// in bold. Nothing with a single rate (nothing was chosen).
pub(super) fn sweep_section(s: &mut String, res: &ExperimentResult) {
    let rates = res.config.rates();
    if rates.len() < 2 {
        return;
    }
    let _ = writeln!(s, "\n## Learning-rate sweep (validation)\n");
    let _ = writeln!(s, "Every arm was fine-tuned at every peak learning rate (linear warm-up over the first 5% of the steps, then cosine decay to a hundredth of the peak: the paper's schedule). Cells: final validation quality NLL, mean over seeds; **bold** = the rate the arm is reported at (the lowest mean; the first of equal ones); *diverged* = the training loss became NaN or infinite on at least one seed (the seed and step are given; such a rate is never chosen). Every other table reports each arm at its rate, its final numbers measured on the test split, which the choice did not see. `sweep.csv` has every run.\n");
    let mut head = String::from("| arm |");
    let mut rule = String::from("|---|");
    for &lr in &rates {
        let _ = write!(head, " {} |", Num::from(lr));
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (vi, v) in res.config.variants.iter().enumerate() {
        let mut row = format!("| {} |", v.name);
        for &lr in &rates {
            if let Some((seed, step)) = diverged_at(&res.sweep, vi, lr) {
                let _ = write!(row, " *diverged* (seed {seed}, step {step}) |");
                continue;
            }
            let m = format!("{:.4}", Num(mean_quality(&res.sweep, vi, lr)));
            if res.chosen[vi] == lr {
                let _ = write!(row, " **{m}** |");
            } else {
                let _ = write!(row, " {m} |");
            }
        }
        let _ = writeln!(s, "{row}");
    }
}

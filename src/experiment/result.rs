//! What an experiment measured: every run's curve and validation outcomes, and the
//! per-seed comparisons between arms built on them.

use super::measures::{data_fraction, efficiency_ratio};
use super::protocol::{ExperimentConfig, Variant};
use super::sweep::SweepPoint;
use crate::metrics::{EvalSummary, PositionOutcome};
use crate::train::{EvalPoint, PositionHalting};

/// A number from two quality curves `(tokens, nll)` (`None` = not reached).
type CurveMeasure = fn(&[(f64, f64)], &[(f64, f64)]) -> Option<f64>;

/// One trained run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub variant: usize,
    pub seed: u64,
    pub curve: Vec<EvalPoint>,
    pub summary: EvalSummary,
    /// Greedy outcomes on the shared validation positions (same order in every run).
    pub outcomes: Vec<PositionOutcome>,
    /// Spearman correlation of `d_k` with `t_{k+1} - t_k` over the validation
    /// positions, for `k = 0..K-1` (SPEC section 8).
    pub calibration: Vec<f64>,
    /// `h_k` averaged over the validation positions, `k = 0..=K` (paper figure 7).
    pub mean_h: Vec<f64>,
    /// The input token of every position of `outcomes` (the token its pauses follow).
    pub inputs: Vec<i32>,
    /// `d_k`, `t_k`, `h_k` of every position of `outcomes` (the one-seed calibration
    /// verdict bootstraps over them).
    pub halting: Vec<PositionHalting>,
    pub seconds: f64,
    /// The run's peak learning rate.
    pub lr: f32,
    /// The final model on the test split (as many batches as validation, drawn from
    /// the test generator of the experiment's first seed): what the report's final
    /// numbers are, so that choosing a rate on validation does not flatter them.
    pub test: EvalSummary,
    /// Data-parallel replicas its steps ran on (1: one device, or the CPU).
    pub replicas: usize,
}

/// Everything measured, ready to render.
pub struct ExperimentResult {
    pub config: ExperimentConfig,
    /// The runs the report describes: every arm and seed at the arm's chosen rate.
    pub runs: Vec<RunResult>,
    /// Every run of the sweep (every arm, seed and rate) with its final validation
    /// quality; one rate per arm without a sweep.
    pub sweep: Vec<SweepPoint>,
    /// The rate each arm is reported at (by arm index): the rate with the best mean
    /// validation quality over seeds ([`super::best_rates`]).
    pub chosen: Vec<f32>,
    pub class_names: Vec<String>,
    /// Printable names of the token ids `0..V`.
    pub token_names: Vec<String>,
    pub data_description: String,
    /// Real tokens of the no-pause pretraining of each seed (0 = none or `--load`).
    pub pretrained_tokens: usize,
    /// Wall time of the whole experiment.
    pub seconds: f64,
}

impl ExperimentResult {
    /// The quality curve `(tokens, nll)` of a run, by the rule of its variant.
    pub fn quality_curve(&self, run: &RunResult) -> Vec<(f64, f64)> {
        let v = &self.config.variants[run.variant];
        run.curve
            .iter()
            .map(|p| (p.tokens_seen as f64, v.quality(p)))
            .collect()
    }

    pub(super) fn run(&self, variant: usize, seed: u64) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.variant == variant && r.seed == seed)
    }

    /// The run of the first seed of every variant that has pauses (what the pause
    /// behaviour sections describe).
    pub fn pausing_runs(&self) -> impl Iterator<Item = (&Variant, &RunResult)> + '_ {
        self.pausing_arms()
            .filter_map(|(vi, v)| Some((v, self.run(vi, self.config.seeds[0])?)))
    }

    /// Per seed, the ratio of CYB variant `cyb` against baseline variant `base`.
    pub fn ratios(&self, cyb: usize, base: usize) -> Vec<(u64, Option<f64>)> {
        self.per_seed(cyb, base, efficiency_ratio)
    }

    /// Per seed, `f(curve of a, curve of b)`.
    fn per_seed(&self, a: usize, b: usize, f: CurveMeasure) -> Vec<(u64, Option<f64>)> {
        self.config
            .seeds
            .iter()
            .filter_map(|&s| {
                let (x, y) = (self.run(a, s)?, self.run(b, s)?);
                Some((s, f(&self.quality_curve(x), &self.quality_curve(y))))
            })
            .collect()
    }
}

impl ExperimentResult {
    /// Index of the arm named `name`.
    pub fn arm(&self, name: &str) -> Option<usize> {
        self.config.variants.iter().position(|v| v.name == name)
    }
    /// The runs of arm `vi`, in the order of the seeds.
    pub fn runs_of(&self, vi: usize) -> impl Iterator<Item = &RunResult> + '_ {
        self.runs.iter().filter(move |r| r.variant == vi)
    }
    /// Every arm with pauses, with its index.
    pub fn pausing_arms(&self) -> impl Iterator<Item = (usize, &Variant)> + '_ {
        self.config
            .variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.pauses > 0)
    }
    /// The largest pause count of the arms (`K`).
    pub fn max_pauses(&self) -> usize {
        self.config
            .variants
            .iter()
            .map(|v| v.pauses)
            .max()
            .unwrap_or(0)
    }
    /// The two baselines the paper compares with: `no-pause` and the widest `tbys`.
    pub fn baselines(&self) -> Vec<usize> {
        let k = self.max_pauses();
        ["no-pause".to_string(), format!("tbys-{k}")]
            .iter()
            .filter_map(|n| self.arm(n))
            .collect()
    }
    /// CYB arms on the base data regime.
    pub fn cyb_arms(&self) -> Vec<usize> {
        (0..self.config.variants.len())
            .filter(|&i| {
                let v = &self.config.variants[i];
                !v.is_baseline() && v.regime == 1
            })
            .collect()
    }
    /// Per seed, the fraction of baseline `base`'s training tokens at which arm `arm`
    /// first reaches the baseline's final quality (interpolated on the arm's curve;
    /// `None` = never within its run). The paper's data-efficiency measure.
    pub fn fractions(&self, arm: usize, base: usize) -> Vec<(u64, Option<f64>)> {
        self.per_seed(arm, base, data_fraction)
    }
    /// Final quality of every seed of arm `vi` (at its chosen rate) on the test split:
    /// the numbers the report compares.
    pub fn finals(&self, vi: usize) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.variant == vi)
            .map(|r| self.test_quality(r))
            .collect()
    }
    /// Final quality of every seed of arm `vi` (at its chosen rate) on the validation
    /// split: the last point of each learning curve.
    pub fn validation_finals(&self, vi: usize) -> Vec<f64> {
        let v = &self.config.variants[vi];
        self.runs
            .iter()
            .filter(|r| r.variant == vi)
            .filter_map(|r| r.curve.last().map(|p| v.quality(p)))
            .collect()
    }
    /// The test-split quality of `run` by its arm's rule (marginal NLL for CYB arms,
    /// the final-step NLL for the baselines).
    pub fn test_quality(&self, run: &RunResult) -> f64 {
        self.config.variants[run.variant].summary_quality(&run.test)
    }
}

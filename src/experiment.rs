//! `cyb experiment`: the published claims, measured side by side.
//!
//! Claim 1 (data efficiency): a CYB model reaches the validation quality of a
//! no-pause model with about a third of the training data, and that of a
//! pauses + cross-entropy model with about half. Claim 2 (where it pauses): pause
//! counts follow token difficulty, and pausing improves the answer.
//!
//! Every variant trains on the same data stream, model size, schedule and seeds; no
//! variant gets tuning the others do not. Quality is validation NLL: `marginal` for
//! CYB runs (the model's own halting), the forced final-step NLL for the baselines
//! (what they were trained to minimise; for `K = 0` the two are equal).

use crate::config::ModelConfig;
use crate::cpu::model::{Model, Params};
use crate::data::DataSource;
use crate::error::{CybError, Result};
use crate::metrics::{EvalSummary, PositionOutcome};
use crate::number::Num;
use crate::objective::Objective;
use crate::rng::seeded;
use crate::train::{
    train_on, validation_detail, EvalPoint, PositionHalting, TrainConfig, TrainDevice,
};
use std::fmt::Write as _;

/// One arm of the experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub objective: Objective,
    pub pauses: usize,
    /// Data regime: this arm trains on `regime` times the base steps (1 = the grid).
    pub regime: usize,
}

impl Variant {
    /// Baselines are judged on the final-step NLL, CYB variants on the marginal NLL.
    pub fn is_baseline(&self) -> bool {
        matches!(self.objective, Objective::CeFinal)
    }
    /// Accuracy by the same rule: the forced answer at step K for baselines, the greedy
    /// policy for CYB variants.
    fn accuracy(&self, g: &crate::metrics::GroupStats) -> f64 {
        if self.is_baseline() {
            g.accuracy_at_final
        } else {
            g.accuracy
        }
    }
    fn quality(&self, p: &EvalPoint) -> f64 {
        if self.is_baseline() {
            p.nll_final
        } else {
            p.nll
        }
    }
}

/// The default arms for `K = pauses`: no pauses, pauses + CE ("TBYS") with 1..=K
/// pauses, CYB-AP, CYB-VA, CYB-DP (SPEC v2 defaults).
pub fn default_variants(pauses: usize) -> Vec<Variant> {
    variants(
        pauses,
        Objective::ap_default(),
        Objective::va_default(),
        Objective::dp_default(),
    )
}

fn arm(name: &str, objective: Objective, pauses: usize) -> Variant {
    Variant {
        name: name.into(),
        objective,
        pauses,
        regime: 1,
    }
}

/// The arms with the given CYB objectives: `no-pause` (`K = 0`, `ce_final`),
/// `tbys-1..=K` (pauses + `ce_final`, the paper's "Think Before You Speak"), then
/// `cyb-ap`, `cyb-va` and `cyb-dp` with `K = pauses`.
pub fn variants(pauses: usize, ap: Objective, va: Objective, dp: Objective) -> Vec<Variant> {
    let mut v = vec![arm("no-pause", Objective::CeFinal, 0)];
    for k in 1..=pauses {
        v.push(arm(&format!("tbys-{k}"), Objective::CeFinal, k));
    }
    v.push(arm("cyb-ap", ap, pauses));
    v.push(arm("cyb-va", va, pauses));
    v.push(arm("cyb-dp", dp, pauses));
    v
}

/// The paper's hyperparameter grid (figure 5, `K = 3`) less the settings that are
/// already the default arms: AP `(omega, gamma)` in `{0:0:0:1 @ 0.99, 1:1:1:1 @ 1,
/// 4:1:1:4 @ 1}`, VA `rho` in `{4:1:1:4, 11:3:3:3}`, DP `rho x alpha` in `{1:1:1:1,
/// 4:1:1:4, 11:3:3:3} x {0.01, 0.1}` less `1:1:1:1 @ 0.01`.
pub fn paper_grid() -> Result<Vec<Variant>> {
    use crate::objective::{Discount, StepWeights};
    let w = |s: &str| s.parse::<StepWeights>();
    let mut out = Vec::new();
    for (om, g) in [("0:0:0:1", 0.99), ("1:1:1:1", 1.0), ("4:1:1:4", 1.0)] {
        let o = Objective::Ap {
            omega: w(om)?,
            gamma: g,
            discount: Discount::Exp,
        };
        out.push(arm(&format!("cyb-ap w={om} g={g}"), o, 3));
    }
    for rho in ["4:1:1:4", "11:3:3:3"] {
        let o = Objective::Va {
            rho: w(rho)?,
            beta: 1.0,
            gamma: 1.0,
            discount: Discount::Exp,
        };
        out.push(arm(&format!("cyb-va r={rho}"), o, 3));
    }
    for alpha in [0.01, 0.1] {
        for rho in ["1:1:1:1", "4:1:1:4", "11:3:3:3"] {
            if alpha == 0.01 && rho == "1:1:1:1" {
                continue;
            }
            let o = Objective::Dp {
                rho: w(rho)?,
                alpha,
                gamma: 1.0,
                discount: Discount::Exp,
            };
            out.push(arm(&format!("cyb-dp r={rho} a={alpha}"), o, 3));
        }
    }
    Ok(out)
}

/// Extra arms for the data regimes (`--regimes 1,2,3`): `no-pause`, the widest `tbys`
/// and `cyb-ap` again on `r` times the data for every `r > 1`.
pub fn regime_variants(arms: &[Variant], regimes: &[usize]) -> Vec<Variant> {
    let mut out = Vec::new();
    for &r in regimes.iter().filter(|&&r| r > 1) {
        for v in arms
            .iter()
            .filter(|v| v.regime == 1 && is_regime_arm(v, arms))
        {
            out.push(Variant {
                name: format!("{} x{r}", v.name),
                regime: r,
                ..v.clone()
            });
        }
    }
    out
}

fn is_regime_arm(v: &Variant, arms: &[Variant]) -> bool {
    let k = arms.iter().map(|a| a.pauses).max().unwrap_or(0);
    v.name == "no-pause" || v.name == format!("tbys-{k}") || v.name == "cyb-ap"
}

/// The experiment: a base training configuration (its objective and pause count are
/// replaced per variant), the arms, and the seeds every arm is trained with.
#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    pub base: TrainConfig,
    pub variants: Vec<Variant>,
    pub seeds: Vec<u64>,
    /// Steps of the no-pause model every arm of a seed is fine-tuned from (0 = every
    /// arm from scratch). Ignored when `init` is given.
    pub pretrain: usize,
    /// The user's own model to fine-tune every arm from (instead of pretraining).
    pub init: Option<Model<f32>>,
    pub device: TrainDevice,
}

impl ExperimentConfig {
    /// Every arm from scratch on the CPU.
    pub fn new(base: TrainConfig, variants: Vec<Variant>, seeds: Vec<u64>) -> Self {
        ExperimentConfig {
            base,
            variants,
            seeds,
            pretrain: 0,
            init: None,
            device: TrainDevice::Cpu,
        }
    }
}

/// A model for `config` that starts from `pre` (a model with fewer or more depth rows):
/// every tensor is `pre`'s, except the rows of the depth table `D` that `pre` lacks,
/// which are drawn as a fresh model draws them (SPEC section 5: normal(0, 0.02)) from
/// `seed`. The config (pause count, attention mode) is `config`'s; the DK bias `pre`'s.
pub fn extend_depth(pre: &Model<f32>, config: &ModelConfig, seed: u64) -> Result<Model<f32>> {
    let mut cfg = config.clone();
    cfg.dk_bias = pre.config.dk_bias;
    let mut same = pre.config.clone();
    (same.k_max, same.pause_attention) = (cfg.k_max, cfg.pause_attention);
    if same != cfg {
        return Err(CybError::Param(format!(
            "the pretrained model {:?} does not fit the arm's shape {:?}",
            pre.config, cfg
        )));
    }
    let mut params = Params::init(&cfg, &mut seeded(seed ^ 0xDE97_0000_0000_0001));
    let old = pre.params.tensors();
    for ((name, _, dst), (_, _, src)) in params.tensors_mut().into_iter().zip(old) {
        let n = dst.len().min(src.len());
        if name != "depth_emb" && dst.len() != src.len() {
            return Err(CybError::Shape(format!(
                "{name}: {} vs {}",
                dst.len(),
                src.len()
            )));
        }
        dst[..n].copy_from_slice(&src[..n]);
    }
    Ok(Model {
        config: cfg,
        params,
    })
}

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
    pub seconds: f64,
}

/// Ranks (1-based, ties get their mean rank).
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&i, &j| xs[i].total_cmp(&xs[j]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &p in &idx[i..=j] {
            r[p] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (NaN when either side is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Calibration of SPEC section 8: per `k < K`, Spearman of `d_k` with `t_{k+1} - t_k`.
pub fn calibration(detail: &[PositionHalting], pauses: usize) -> Vec<f64> {
    (0..pauses)
        .map(|k| {
            let d: Vec<f64> = detail.iter().map(|p| p.d[k]).collect();
            let gain: Vec<f64> = detail.iter().map(|p| p.t[k + 1] - p.t[k]).collect();
            spearman(&d, &gain)
        })
        .collect()
}

/// `h_k` averaged over positions.
pub fn mean_halting(detail: &[PositionHalting], pauses: usize) -> Vec<f64> {
    let n = detail.len().max(1) as f64;
    (0..=pauses)
        .map(|k| detail.iter().map(|p| p.h[k]).sum::<f64>() / n)
        .collect()
}

/// Quantile `q` in `[0, 1]` of `xs` (linear between order statistics).
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Sample variance (divided by `n`).
fn variance(xs: &[f64]) -> f64 {
    let (_, sd) = mean_std(xs);
    sd * sd
}

/// Real tokens at which `curve` first reaches `target` (quality at or below it),
/// interpolated linearly between evaluation points; `None` if it never does.
pub fn tokens_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut prev: Option<(f64, f64)> = None;
    for &(x, y) in curve {
        if y <= target {
            return Some(match prev {
                Some((px, py)) if py > target => px + (x - px) * (py - target) / (py - y),
                _ => x,
            });
        }
        prev = Some((x, y));
    }
    None
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Data-efficiency ratio of one CYB run against one baseline run (same seed):
/// tokens the baseline needs to reach the CYB run's final quality, over the tokens
/// the CYB run used. `None` = the baseline never got there.
pub fn efficiency_ratio(cyb: &[(f64, f64)], baseline: &[(f64, f64)]) -> Option<f64> {
    let &(cyb_tokens, cyb_final) = cyb.last()?;
    tokens_to_reach(baseline, cyb_final).map(|t| t / cyb_tokens)
}

/// Everything measured, ready to render.
pub struct ExperimentResult {
    pub config: ExperimentConfig,
    pub runs: Vec<RunResult>,
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

    fn run(&self, variant: usize, seed: u64) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.variant == variant && r.seed == seed)
    }

    /// The run of the first seed of every variant that has pauses (what the pause
    /// behaviour sections describe).
    pub fn pausing_runs(&self) -> impl Iterator<Item = (&Variant, &RunResult)> + '_ {
        self.config
            .variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.pauses > 0)
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

/// Relative cost of one training step of `pauses` pauses (the pause-step stream is
/// `K+1` times longer; `shared` attention grows with its square).
fn step_cost(pauses: usize, shared: bool) -> f64 {
    let n = (pauses + 1) as f64;
    if shared {
        n * (1.0 + 0.1 * n)
    } else {
        n
    }
}

/// Train every variant with every seed: per seed, first the no-pause model of
/// `cfg.pretrain` steps (or `cfg.init`), then every arm fine-tuned from it (the depth
/// rows it lacks drawn fresh), all on the same data order. `progress(i, n, label)` is
/// called before each run; the label names arm, seed and the time left (estimated
/// from the steps done so far, weighted by their cost).
pub fn run_experiment(
    cfg: &ExperimentConfig,
    data: &dyn DataSource,
    show_progress: bool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<ExperimentResult> {
    if cfg.variants.is_empty() || cfg.seeds.is_empty() {
        return Err(CybError::Param(
            "an experiment needs variants and seeds".into(),
        ));
    }
    let k_max = cfg.variants.iter().map(|v| v.pauses).max().unwrap_or(0);
    let r_max = cfg.variants.iter().map(|v| v.regime).max().unwrap_or(1);
    let pretrain = if cfg.init.is_some() { 0 } else { cfg.pretrain };
    let per_seed = cfg.variants.len() + usize::from(pretrain > 0);
    let total = per_seed * cfg.seeds.len();
    let mut widest = cfg.base.clone();
    (widest.pauses, widest.model.k_max) = (k_max, k_max);
    widest.steps = cfg.base.steps * r_max;
    widest.check_experiment(k_max, total)?;
    let shared = cfg.base.model.pause_attention == crate::config::PauseAttention::Shared;
    let work_of = |steps: usize, k: usize| steps as f64 * step_cost(k, shared);
    let seed_work: f64 = work_of(pretrain, 0)
        + cfg
            .variants
            .iter()
            .map(|v| work_of(cfg.base.steps * v.regime, v.pauses))
            .sum::<f64>();
    let all_work = seed_work * cfg.seeds.len() as f64;
    let (mut done_work, started) = (0.0f64, std::time::Instant::now());
    let mut label = |i: usize, what: &str, done: f64| {
        let left = if done > 0.0 {
            let secs = started.elapsed().as_secs_f64() * (all_work - done) / done;
            let secs = secs.round() as u64;
            format!(", about {} min {} s left", secs / 60, secs % 60)
        } else {
            String::new()
        };
        progress(i, total, &format!("{what}{left}"));
    };
    let mut runs = Vec::with_capacity(cfg.variants.len() * cfg.seeds.len());
    let mut started_runs = 0;
    let mut pretrained_tokens = 0;
    for &seed in &cfg.seeds {
        let pre = match (&cfg.init, pretrain) {
            (Some(m), _) => Some(m.clone()),
            (None, 0) => None,
            (None, steps) => {
                label(
                    started_runs,
                    &format!("pretrain no-pause seed {seed}, {steps} steps"),
                    done_work,
                );
                started_runs += 1;
                let mut tc = cfg.base.clone();
                tc.objective = Objective::CeFinal;
                (tc.pauses, tc.model.k_max, tc.steps, tc.seed) = (0, 0, steps, seed);
                tc.warmup = (steps / 20).max(1);
                tc.eval_every = 0;
                let out = train_on(&tc, data, None, show_progress, cfg.device)?;
                done_work += work_of(steps, 0);
                pretrained_tokens = steps * tc.batch * tc.seq;
                Some(out.model)
            }
        };
        for (vi, v) in cfg.variants.iter().enumerate() {
            let mut tc = cfg.base.clone();
            tc.objective = v.objective.clone();
            tc.pauses = v.pauses;
            tc.model.k_max = v.pauses;
            tc.seed = seed;
            tc.steps = cfg.base.steps * v.regime;
            tc.warmup = (tc.steps / 20).max(1);
            label(
                started_runs,
                &format!("{} seed {seed}, {} steps", v.name, tc.steps),
                done_work,
            );
            started_runs += 1;
            let init = match &pre {
                Some(m) => {
                    let m = extend_depth(m, &tc.model, seed)?;
                    tc.model = m.config.clone();
                    Some(m)
                }
                None => None,
            };
            let out = train_on(&tc, data, init, show_progress, cfg.device)?;
            done_work += work_of(tc.steps, v.pauses);
            // Every run is judged on the same validation positions (seed of the
            // experiment's first seed), so per-position comparisons line up.
            let mut ec = tc.eval_config();
            ec.seed = cfg.seeds[0];
            let (outcomes, detail) = validation_detail(&out.model, data, &ec)?;
            let summary = EvalSummary::from_outcomes(&outcomes, v.pauses, &data.class_names());
            runs.push(RunResult {
                variant: vi,
                seed,
                curve: out.curve,
                summary,
                outcomes,
                calibration: calibration(&detail, v.pauses),
                mean_h: mean_halting(&detail, v.pauses),
                inputs: detail.iter().map(|p| p.input).collect(),
                seconds: out.seconds,
            });
        }
    }
    Ok(ExperimentResult {
        config: cfg.clone(),
        runs,
        class_names: data.class_names(),
        token_names: (0..data.vocab()).map(|t| data.token_name(t)).collect(),
        data_description: data.describe(),
        pretrained_tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `mean ± std` of `xs` with `prec` decimals; just the value for a single number (one
/// seed has no spread to show).
fn mean_pm(xs: &[f64], prec: usize) -> String {
    let (m, sd) = mean_std(xs);
    if xs.len() < 2 {
        format!("{:.prec$}", Num(m))
    } else {
        format!("{:.prec$} ± {:.prec$}", Num(m), Num(sd))
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, v.sqrt())
}

/// The CSV of every evaluation point of every run.
pub fn curves_csv(res: &ExperimentResult) -> String {
    let mut s = String::from(
        "variant,seed,step,tokens_seen,quality_nll,marginal_nll,final_nll,accuracy,accuracy_final,mean_pauses\n",
    );
    for r in &res.runs {
        let v = &res.config.variants[r.variant];
        for p in &r.curve {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{}",
                v.name,
                r.seed,
                p.step,
                p.tokens_seen,
                v.quality(p),
                p.nll,
                p.nll_final,
                p.accuracy,
                p.accuracy_final,
                p.mean_pauses
            );
        }
    }
    s
}

impl ExperimentResult {
    /// Index of the arm named `name`.
    pub fn arm(&self, name: &str) -> Option<usize> {
        self.config.variants.iter().position(|v| v.name == name)
    }
    /// The two baselines the paper compares with: `no-pause` and the widest `tbys`.
    pub fn baselines(&self) -> Vec<usize> {
        let k = self
            .config
            .variants
            .iter()
            .map(|v| v.pauses)
            .max()
            .unwrap_or(0);
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
    /// Final quality of every seed of arm `vi`.
    pub fn finals(&self, vi: usize) -> Vec<f64> {
        let v = &self.config.variants[vi];
        self.runs
            .iter()
            .filter(|r| r.variant == vi)
            .filter_map(|r| r.curve.last().map(|p| v.quality(p)))
            .collect()
    }
}

/// Tokens `arm` needs to reach `baseline`'s final quality, over the tokens the
/// baseline trained on (`None` = not within the arm's run).
pub fn data_fraction(arm: &[(f64, f64)], baseline: &[(f64, f64)]) -> Option<f64> {
    let &(base_tokens, base_final) = baseline.last()?;
    tokens_to_reach(arm, base_final).map(|t| t / base_tokens)
}

/// Per input token of `run` (the token its pauses follow, as in the paper's table 3; seen
/// at least `min_count` times): `(token, count, median, variance)` of the positions'
/// `E[pauses]`, and its table-3 quadrant (median and variance each
/// against the median over tokens: `low`/`high`).
pub fn token_pause_stats(
    run: &RunResult,
    min_count: usize,
) -> Vec<(usize, usize, f64, f64, &'static str)> {
    let mut by: std::collections::BTreeMap<i32, Vec<f64>> = Default::default();
    for (o, &input) in run.outcomes.iter().zip(&run.inputs) {
        by.entry(input).or_default().push(o.expected_pauses);
    }
    let stats: Vec<(usize, usize, f64, f64)> = by
        .into_iter()
        .filter(|(_, v)| v.len() >= min_count)
        .map(|(t, v)| (t as usize, v.len(), quantile(&v, 0.5), variance(&v)))
        .collect();
    let meds: Vec<f64> = stats.iter().map(|s| s.2).collect();
    let vars: Vec<f64> = stats.iter().map(|s| s.3).collect();
    let (mm, mv) = (quantile(&meds, 0.5), quantile(&vars, 0.5));
    stats
        .into_iter()
        .map(|(t, n, m, v)| {
            let q = match (m > mm, v > mv) {
                (false, false) => "low median, low variance",
                (true, false) => "high median, low variance",
                (false, true) => "low median, high variance",
                (true, true) => "high median, high variance",
            };
            (t, n, m, v, q)
        })
        .collect()
}

/// A CSV field: quoted, quotes doubled.
fn csv_text(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn opt(x: Option<f64>) -> String {
    x.map(|x| format!("{x}")).unwrap_or_default()
}

/// The CSV of data-efficiency ratios (CYB arm vs baseline, per seed; empty ratio
/// = the baseline never reached the CYB model's final quality).
pub fn ratios_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("cyb_variant,baseline,seed,ratio\n");
    for ci in res.cyb_arms() {
        for bi in res.baselines() {
            for (seed, r) in res.ratios(ci, bi) {
                let (c, b) = (&res.config.variants[ci].name, &res.config.variants[bi].name);
                let _ = writeln!(s, "{c},{b},{seed},{}", opt(r));
            }
        }
    }
    s
}

/// The CSV of the paper's data-efficiency measure: the fraction of the baseline's
/// tokens at which the arm reaches the baseline's final quality (empty = never).
pub fn fractions_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,baseline,seed,fraction\n");
    for bi in res.baselines() {
        for (vi, v) in res.config.variants.iter().enumerate() {
            if vi == bi || v.regime != 1 {
                continue;
            }
            for (seed, f) in res.fractions(vi, bi) {
                let b = &res.config.variants[bi].name;
                let _ = writeln!(s, "{},{b},{seed},{}", v.name, opt(f));
            }
        }
    }
    s
}

/// One row per run and step `k` of a per-step vector of the run.
fn per_step_csv(res: &ExperimentResult, header: &str, of: impl Fn(&RunResult) -> &[f64]) -> String {
    let mut s = format!("variant,seed,k,{header}\n");
    for r in &res.runs {
        for (k, x) in of(r).iter().enumerate() {
            let name = &res.config.variants[r.variant].name;
            let _ = writeln!(s, "{name},{},{k},{x}", r.seed);
        }
    }
    s
}

/// Calibration per arm with pauses, seed and `k < K`.
pub fn calibration_csv(res: &ExperimentResult) -> String {
    per_step_csv(res, "spearman", |r| &r.calibration)
}

/// Mean halting distribution per arm and seed.
pub fn halting_csv(res: &ExperimentResult) -> String {
    per_step_csv(res, "mean_h", |r| &r.mean_h)
}

/// The distribution over validation positions of `E[pauses]`, per arm and seed.
pub fn latency_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,seed,mean,p10,p50,p90\n");
    for r in &res.runs {
        let e: Vec<f64> = r.outcomes.iter().map(|o| o.expected_pauses).collect();
        let (m, _) = mean_std(&e);
        let _ = writeln!(
            s,
            "{},{},{m},{},{},{}",
            res.config.variants[r.variant].name,
            r.seed,
            quantile(&e, 0.1),
            quantile(&e, 0.5),
            quantile(&e, 0.9)
        );
    }
    s
}

/// Pauses by input token (first seed, every arm with pauses): `E[pauses]` median and
/// variance over the token's validation positions, and its table-3 quadrant.
pub fn tokens_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,seed,token,count,median,variance,quadrant,name\n");
    for (v, run) in res.pausing_runs() {
        for (t, n, m, var, q) in token_pause_stats(run, 5) {
            let name = res.token_names.get(t).cloned().unwrap_or_default();
            let _ = writeln!(
                s,
                "{},{},{t},{n},{m},{var},{q},{}",
                v.name,
                run.seed,
                csv_text(&name)
            );
        }
    }
    s
}

/// Final quality of every run with its data regime.
pub fn regimes_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,base_variant,regime,seed,quality_nll\n");
    for r in &res.runs {
        let v = &res.config.variants[r.variant];
        let base = v.name.split(" x").next().unwrap_or(&v.name);
        if let Some(p) = r.curve.last() {
            let _ = writeln!(
                s,
                "{},{base},{},{},{}",
                v.name,
                v.regime,
                r.seed,
                v.quality(p)
            );
        }
    }
    s
}

/// Every CSV of the experiment, by file name.
pub fn csv_files(res: &ExperimentResult) -> Vec<(&'static str, String)> {
    vec![
        ("curves.csv", curves_csv(res)),
        ("ratios.csv", ratios_csv(res)),
        ("fractions.csv", fractions_csv(res)),
        ("calibration.csv", calibration_csv(res)),
        ("halting.csv", halting_csv(res)),
        ("latency.csv", latency_csv(res)),
        ("tokens.csv", tokens_csv(res)),
        ("regimes.csv", regimes_csv(res)),
    ]
}

/// Mean over the seeds of the arm (NaN where none).
fn mean_of(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        mean_std(xs).0
    }
}

/// The regime of `base` whose mean final quality CYB-AP at 1x matches: the largest
/// `r` with `quality(base x r) >= quality(cyb-ap)`; `Some(0)` = not even 1x.
fn matched_regime(res: &ExperimentResult, base: &str) -> Option<usize> {
    let ap = mean_of(&res.finals(res.arm("cyb-ap")?));
    let mut best = 0;
    for (vi, v) in res.config.variants.iter().enumerate() {
        let root = v.name.split(" x").next().unwrap_or(&v.name);
        if root == base && mean_of(&res.finals(vi)) >= ap {
            best = best.max(v.regime);
        }
    }
    Some(best)
}

/// The Markdown report. `command` is the exact command line that produced it.
pub fn render_report(res: &ExperimentResult, command: &str) -> String {
    let cfg = &res.config;
    let b = &cfg.base;
    let mut s = String::new();
    let _ = writeln!(s, "# cyb experiment\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(s, "- data: {}", res.data_description);
    let protocol = if cfg.init.is_some() {
        "every arm fine-tuned from the loaded model (`--load` or `--from-hf`; no pretraining)"
            .to_string()
    } else if cfg.pretrain > 0 {
        format!(
            "per seed one no-pause model pretrained for {} steps ({} real tokens), every arm fine-tuned from it (depth rows it lacks drawn as a fresh model draws them)",
            cfg.pretrain, res.pretrained_tokens
        )
    } else {
        "every arm trained from scratch (`--pretrain 0`)".to_string()
    };
    let _ = writeln!(
        s,
        "- protocol: {protocol}; pause attention `{}`",
        b.model.pause_attention.name()
    );
    let _ = writeln!(
        s,
        "- model: d_model {} layers {} heads {} context {}; {} steps x {} sequences x {} tokens per arm (x r for regime r), lr {}, same for every arm",
        b.model.d_model, b.model.n_layer, b.model.n_head, b.seq, b.steps, b.batch, b.seq, b.lr
    );
    let _ = writeln!(
        s,
        "- seeds: {:?}; wall time {:.1} min",
        cfg.seeds,
        Num(res.seconds / 60.0)
    );
    let _ = writeln!(
        s,
        "- quality = validation NLL in nats/token: marginal NLL for CYB arms, final-step NLL for baselines ({} validation batches); perplexity = exp(quality)\n",
        b.eval_batches
    );
    let spread = if cfg.seeds.len() > 1 {
        "mean ± std over seeds"
    } else {
        "one seed"
    };

    // The verdict table.
    let _ = writeln!(s, "## Verdict\n");
    let _ = writeln!(
        s,
        "| claim (paper) | paper | here | verdict |\n|---|---|---|---|"
    );
    let ppl = |name: &str| -> Option<f64> {
        let f = res.finals(res.arm(name)?);
        let p: Vec<f64> = f.iter().map(|q| q.exp()).collect();
        Some(mean_of(&p))
    };
    let k = cfg.variants.iter().map(|v| v.pauses).max().unwrap_or(0);
    let tbys = format!("tbys-{k}");
    let holds = |c: bool| if c { "holds" } else { "does not hold" };
    if let Some(ap) = ppl("cyb-ap") {
        for base in ["no-pause", tbys.as_str()] {
            if let Some(bp) = ppl(base) {
                let _ = writeln!(
                    s,
                    "| CYB-AP perplexity below {base} (fig. 4) | yes | {:.4} vs {:.4} | {} |",
                    Num(ap),
                    Num(bp),
                    holds(ap < bp)
                );
            }
        }
        let others: Vec<(String, f64)> = ["cyb-va", "cyb-dp"]
            .iter()
            .filter_map(|n| Some((n.to_string(), ppl(n)?)))
            .collect();
        if !others.is_empty() {
            let best = others.iter().all(|(_, p)| ap <= *p);
            let txt: Vec<String> = others
                .iter()
                .map(|(n, p)| format!("{n} {:.4}", Num(*p)))
                .collect();
            let _ = writeln!(
                s,
                "| CYB-AP best CYB variant (fig. 4; DP close, VA worst) | yes | {:.4} vs {} | {} |",
                Num(ap),
                txt.join(", "),
                holds(best)
            );
        }
        for (bi, want) in res.baselines().into_iter().zip([1.0 / 3.0, 2.0 / 3.0]) {
            let Some(ai) = res.arm("cyb-ap") else { break };
            let fr = res.fractions(ai, bi);
            let got: Vec<f64> = fr.iter().filter_map(|x| x.1).collect();
            let bn = &cfg.variants[bi].name;
            let (here, v) = if got.len() == fr.len() && !got.is_empty() {
                let m = mean_of(&got);
                (format!("{:.3}", Num(m)), holds(m <= want))
            } else {
                (
                    format!(
                        "not reached on {} of {} seeds",
                        fr.len() - got.len(),
                        fr.len()
                    ),
                    "does not hold",
                )
            };
            let _ = writeln!(
                s,
                "| CYB-AP needs a fraction of {bn}'s data to match it (fig. 6, learning curves) | {} | {here} | {v} |",
                if bi == res.baselines()[0] { "1/3" } else { "< 2/3" }
            );
        }
        if cfg.variants.iter().any(|v| v.regime > 1) {
            for (base, want) in [("no-pause", 3), (tbys.as_str(), 2)] {
                if let Some(r) = matched_regime(res, base) {
                    let here = if r == 0 {
                        format!("below {base} at 1x")
                    } else {
                        format!("at least {base} at {r}x")
                    };
                    let _ = writeln!(
                        s,
                        "| CYB-AP at 1x matches {base} with more data (fig. 6, regimes) | {}x | {here} | {} |",
                        want,
                        holds(r >= want)
                    );
                }
            }
        }
        if let Some(ai) = res.arm("cyb-ap") {
            let cal = mean_calibration(res, ai);
            let txt: Vec<String> = cal.iter().map(|c| format!("{:.3}", Num(*c))).collect();
            let _ = writeln!(
                s,
                "| d_k positively correlated with t_(k+1) - t_k, every k (fig. 10) | 0.383, 0.157, 0.271 | {} | {} |",
                txt.join(", "),
                holds(!cal.is_empty() && cal.iter().all(|c| *c > 0.0))
            );
            let lat: Vec<f64> = res
                .runs
                .iter()
                .filter(|r| r.variant == ai)
                .map(|r| r.summary.overall.mean_expected_pauses)
                .collect();
            let m = mean_of(&lat);
            let _ = writeln!(
                s,
                "| CYB-AP does not take every pause (\"not lazy\", fig. 7) | yes | mean E[pauses] {:.3} of K = {k} | {} |",
                Num(m),
                holds(m < k as f64 - 0.05)
            );
        }
    }

    let _ = writeln!(s, "\n## Final validation quality ({spread})\n");
    let _ = writeln!(s, "| arm | objective | K | data | quality NLL | perplexity | accuracy | pauses/token | real tokens |\n|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (vi, v) in cfg.variants.iter().enumerate() {
        let runs: Vec<&RunResult> = res.runs.iter().filter(|r| r.variant == vi).collect();
        let q = res.finals(vi);
        let p: Vec<f64> = q.iter().map(|x| x.exp()).collect();
        let acc: Vec<f64> = runs
            .iter()
            .map(|r| v.accuracy(&r.summary.overall))
            .collect();
        let pau: Vec<f64> = runs.iter().map(|r| r.summary.overall.mean_pauses).collect();
        let tokens = runs
            .first()
            .and_then(|r| r.curve.last())
            .map_or(0, |p| p.tokens_seen);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}x | {} | {} | {} | {:.3} | {tokens} |",
            v.name,
            v.objective,
            v.pauses,
            v.regime,
            mean_pm(&q, 4),
            mean_pm(&p, 3),
            mean_pm(&acc, 4),
            Num(mean_of(&pau))
        );
    }

    let _ = writeln!(s, "\n## Data efficiency from the learning curves\n");
    let _ = writeln!(s, "Fraction = real tokens the arm needs to reach the baseline's final quality (interpolated on the arm's validation curve) / real tokens the baseline trained on; lower is better, below 1 = more data-efficient. The paper: CYB-AP 1/3 of no-pause's, under 2/3 of TBYS-3's. \"not reached\" = not within the arm's run. `ratios.csv` has the converse (tokens the baseline needs for the arm's final quality / the arm's tokens).\n");
    let _ = writeln!(
        s,
        "| arm | baseline | per seed | fraction ({spread}) |\n|---|---|---|---:|"
    );
    for bi in res.baselines() {
        for (vi, v) in cfg.variants.iter().enumerate() {
            if vi == bi || v.regime != 1 {
                continue;
            }
            let fr = res.fractions(vi, bi);
            let per: Vec<String> = fr
                .iter()
                .map(|(seed, f)| match f {
                    Some(x) => format!("{seed}: {:.3}", Num(*x)),
                    None => format!("{seed}: not reached"),
                })
                .collect();
            let got: Vec<f64> = fr.iter().filter_map(|x| x.1).collect();
            let m = if got.len() == fr.len() && !got.is_empty() {
                mean_pm(&got, 3)
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {m} |",
                v.name,
                cfg.variants[bi].name,
                per.join(", ")
            );
        }
    }

    if cfg.variants.iter().any(|v| v.regime > 1) {
        let _ = writeln!(s, "\n## Data regimes (fresh fine-tuning on r x the data)\n");
        let mut regimes: Vec<usize> = cfg.variants.iter().map(|v| v.regime).collect();
        regimes.sort_unstable();
        regimes.dedup();
        let mut head = String::from("| arm |");
        let mut rule = String::from("|---|");
        for r in &regimes {
            let _ = write!(head, " {r}x |");
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "Final quality NLL ({spread}):\n\n{head}\n{rule}");
        let mut roots: Vec<String> = Vec::new();
        for v in cfg.variants.iter().filter(|v| v.regime > 1) {
            let root = v.name.split(" x").next().unwrap_or(&v.name).to_string();
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        for root in &roots {
            let mut row = format!("| {root} |");
            for &r in &regimes {
                let name = if r == 1 {
                    root.clone()
                } else {
                    format!("{root} x{r}")
                };
                match res.arm(&name) {
                    Some(vi) => {
                        let _ = write!(row, " {} |", mean_pm(&res.finals(vi), 4));
                    }
                    None => row.push_str(" — |"),
                }
            }
            let _ = writeln!(s, "{row}");
        }
        for base in ["no-pause", tbys.as_str()] {
            if let Some(r) = matched_regime(res, base) {
                let _ = writeln!(
                    s,
                    "\nCYB-AP at 1x matches {base} at {}.",
                    if r == 0 {
                        "no regime (it is worse than 1x)".to_string()
                    } else {
                        format!("{r}x (the largest regime it is at least as good as)")
                    }
                );
            }
        }
    }

    let _ = writeln!(s, "\n## Calibration (SPEC section 8, paper figure 10)\n");
    let _ = writeln!(s, "Spearman correlation over validation positions between d_k and t_(k+1) - t_k ({spread}; paper, CYB-AP on C4: 0.383, 0.157, 0.271). Baselines (`ce_final`) never train d_k: their rows are for reference.\n");
    let mut head = String::from("| arm |");
    let mut rule = String::from("|---|");
    for kk in 0..k {
        let _ = write!(head, " k = {kk} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (vi, v) in cfg
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.pauses > 0)
    {
        let mut row = format!("| {} |", v.name);
        for kk in 0..k {
            let xs = seed_values(res, vi, kk, |r| &r.calibration);
            if xs.is_empty() {
                row.push_str(" — |");
            } else {
                let _ = write!(row, " {} |", mean_pm(&xs, 3));
            }
        }
        let _ = writeln!(s, "{row}");
    }

    let _ = writeln!(s, "\n## Latency (paper figure 7)\n");
    let _ = writeln!(s, "Mean halting distribution h_k over validation positions (mean over seeds), and the distribution over positions of E[pauses] (first seed: mean, 10th, 50th, 90th percentile). `halting.png` plots h.\n");
    let mut head = String::from("| arm |");
    let mut rule = String::from("|---|");
    for kk in 0..=k {
        let _ = write!(head, " h_{kk} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(
        s,
        "{head} E[pauses] mean | p10 | p50 | p90 |\n{rule}---:|---:|---:|---:|"
    );
    for (vi, v) in cfg
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.pauses > 0)
    {
        let mut row = format!("| {} |", v.name);
        for kk in 0..=k {
            let xs = seed_values(res, vi, kk, |r| &r.mean_h);
            if xs.is_empty() {
                row.push_str(" — |");
            } else {
                let _ = write!(row, " {:.3} |", Num(mean_of(&xs)));
            }
        }
        if let Some(r) = res.run(vi, cfg.seeds[0]) {
            let e: Vec<f64> = r.outcomes.iter().map(|o| o.expected_pauses).collect();
            let _ = write!(
                row,
                " {:.3} | {:.3} | {:.3} | {:.3} |",
                Num(mean_of(&e)),
                Num(quantile(&e, 0.1)),
                Num(quantile(&e, 0.5)),
                Num(quantile(&e, 0.9))
            );
        }
        let _ = writeln!(s, "{row}");
    }

    let _ = writeln!(s, "\n## Where the model pauses\n");
    let _ = writeln!(
        s,
        "Mean greedy pauses per target, by difficulty class (seed {}):\n",
        cfg.seeds[0]
    );
    let mut header = String::from("| arm |");
    let mut rule = String::from("|---|");
    for c in &res.class_names {
        let _ = write!(header, " {c} |");
        rule.push_str("---:|");
    }
    header.push_str(" acc answered / acc@0 (paused positions) |");
    rule.push_str("---|");
    let _ = writeln!(s, "{header}\n{rule}");
    for (v, run) in res.pausing_runs() {
        let mut row = format!("| {} |", v.name);
        for (_, g) in &run.summary.by_class {
            if g.count > 0 {
                let _ = write!(row, " {:.2} |", Num(g.mean_pauses));
            } else {
                row.push_str(" — |");
            }
        }
        let paused: Vec<&PositionOutcome> = run.outcomes.iter().filter(|o| o.pauses > 0).collect();
        let helped = if paused.is_empty() {
            "never paused".to_string()
        } else {
            let n = paused.len() as f64;
            let a = paused.iter().filter(|o| o.correct).count() as f64 / n;
            let a0 = paused.iter().filter(|o| o.correct_at_0).count() as f64 / n;
            format!(
                "{:.3} / {:.3} ({} positions)",
                Num(a),
                Num(a0),
                paused.len()
            )
        };
        let _ = writeln!(s, "{row} {helped} |");
    }
    if let Some(ai) = res.arm("cyb-ap") {
        if let Some(run) = res.run(ai, cfg.seeds[0]) {
            let stats = token_pause_stats(run, 5);
            let _ = writeln!(s, "\nPauses by token in the form of the paper's table 3 (CYB-AP, seed {}; by the input token the pauses follow, as the paper's table, seen at least 5 times; median and variance of E[pauses] over the token's positions, each split at its median over tokens; the 12 most frequent tokens of each cell, `median/variance`):\n", cfg.seeds[0]);
            let _ = writeln!(s, "| | low median | high median |\n|---|---|---|");
            for var in ["low variance", "high variance"] {
                let mut row = format!("| {var} |");
                for med in ["low median", "high median"] {
                    let q = format!("{med}, {var}");
                    let mut cell: Vec<_> = stats.iter().filter(|x| x.4 == q).collect();
                    cell.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    let names: Vec<String> = cell
                        .iter()
                        .take(12)
                        .map(|x| {
                            let n = res.token_names.get(x.0).cloned().unwrap_or_default();
                            format!(
                                "`{}` {:.2}/{:.3}",
                                n.replace('`', "'").replace('|', "¦"),
                                Num(x.2),
                                Num(x.3)
                            )
                        })
                        .collect();
                    let _ = write!(
                        row,
                        " {} |",
                        if names.is_empty() {
                            "—".into()
                        } else {
                            names.join(", ")
                        }
                    );
                }
                let _ = writeln!(s, "{row}");
            }
        }
    }
    let _ = writeln!(s, "\nPlots: `curves.png` (quality against real tokens, band = min..max over seeds), `pauses.png` (pauses by class), `halting.png` (mean h_k per arm). Numbers: `curves.csv`, `ratios.csv`, `fractions.csv`, `regimes.csv`, `calibration.csv`, `halting.csv`, `latency.csv`, `tokens.csv`.");
    s
}

/// Entry `k` of a per-step vector of every seed's run of arm `vi`.
fn seed_values(
    res: &ExperimentResult,
    vi: usize,
    k: usize,
    of: impl Fn(&RunResult) -> &[f64],
) -> Vec<f64> {
    res.runs
        .iter()
        .filter(|r| r.variant == vi)
        .filter_map(|r| of(r).get(k).copied())
        .collect()
}

/// Mean over seeds of the calibration of arm `vi`, per `k`.
fn mean_calibration(res: &ExperimentResult, vi: usize) -> Vec<f64> {
    let k = res.config.variants[vi].pauses;
    (0..k)
        .map(|kk| {
            let xs = seed_values(res, vi, kk, |r| &r.calibration);
            mean_of(&xs)
        })
        .collect()
}

/// `curves.png` (quality against real tokens, mean over seeds with a min..max band)
/// and `pauses.png` (mean pauses by difficulty class, one bar per pausing variant).
pub fn plot_experiment(dir: &std::path::Path, res: &ExperimentResult) -> Result<()> {
    use crate::plot::{plot_curves, plot_grouped_bars, Series};
    let mut series = Vec::new();
    for (vi, v) in res.config.variants.iter().enumerate() {
        let curves: Vec<Vec<(f64, f64)>> = res
            .runs
            .iter()
            .filter(|r| r.variant == vi)
            .map(|r| res.quality_curve(r))
            .collect();
        let len = curves.iter().map(|c| c.len()).min().unwrap_or(0);
        let mut points = Vec::with_capacity(len);
        let mut band = Vec::with_capacity(len);
        for i in 0..len {
            let x = curves[0][i].0;
            let ys: Vec<f64> = curves.iter().map(|c| c[i].1).collect();
            let (lo, hi) = ys
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
            points.push((x, ys.iter().sum::<f64>() / ys.len() as f64));
            band.push((x, lo, hi));
        }
        series.push(Series {
            label: format!("{} (K={})", v.name, v.pauses),
            points,
            band: if curves.len() > 1 { band } else { Vec::new() },
        });
    }
    plot_curves(
        &dir.join("curves.png"),
        "validation NLL against training data",
        "real tokens seen",
        "NLL (nats/token)",
        &series,
    )?;
    let groups: Vec<(String, usize, Vec<f64>)> = res
        .pausing_runs()
        .map(|(v, run)| {
            let vals = run
                .summary
                .by_class
                .iter()
                .map(|(_, g)| if g.count > 0 { g.mean_pauses } else { f64::NAN })
                .collect();
            // The variant's index: the same colour as its curve in curves.png.
            let vi = res.config.variants.iter().position(|x| x.name == v.name);
            (v.name.clone(), vi.unwrap_or(0), vals)
        })
        .collect();
    if groups.is_empty() {
        return Ok(());
    }
    plot_grouped_bars(
        &dir.join("pauses.png"),
        "mean pauses by target class (greedy policy)",
        "pauses",
        &res.class_names,
        &groups,
    )?;
    let k = res
        .config
        .variants
        .iter()
        .map(|v| v.pauses)
        .max()
        .unwrap_or(0);
    let steps: Vec<String> = (0..=k).map(|i| format!("k = {i}")).collect();
    let halting: Vec<(String, usize, Vec<f64>)> = res
        .pausing_runs()
        .map(|(v, run)| {
            let vi = res.config.variants.iter().position(|x| x.name == v.name);
            let vals = (0..=k)
                .map(|i| run.mean_h.get(i).copied().unwrap_or(f64::NAN))
                .collect();
            (v.name.clone(), vi.unwrap_or(0), vals)
        })
        .collect();
    plot_grouped_bars(
        &dir.join("halting.png"),
        "mean halting distribution h_k over positions (first seed)",
        "h_k",
        &steps,
        &halting,
    )
}

//! The arms (objective, pauses, data regime), the experiment's configuration, and the
//! protocol that trains them: per seed a pretrained no-pause model, every arm
//! fine-tuned from it on the same data order.

use super::measures::{calibration, mean_halting};
use super::result::{ExperimentResult, RunResult};
use crate::config::ModelConfig;
use crate::cpu::model::{Model, Params};
use crate::data::DataSource;
use crate::error::{CybError, Result};
use crate::metrics::EvalSummary;
use crate::objective::Objective;
use crate::rng::seeded;
use crate::train::{train_on, validation_detail, EvalPoint, TrainConfig, TrainDevice};

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
    pub(super) fn accuracy(&self, g: &crate::metrics::GroupStats) -> f64 {
        if self.is_baseline() {
            g.accuracy_at_final
        } else {
            g.accuracy
        }
    }
    pub(super) fn quality(&self, p: &EvalPoint) -> f64 {
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
    crate::limits::check_experiment(&widest, k_max, total)?;
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
                let (model, tokens) = pretrain_model(cfg, data, seed, steps, show_progress)?;
                done_work += work_of(steps, 0);
                pretrained_tokens = tokens;
                Some(model)
            }
        };
        for (vi, v) in cfg.variants.iter().enumerate() {
            let steps = cfg.base.steps * v.regime;
            label(
                started_runs,
                &format!("{} seed {seed}, {steps} steps", v.name),
                done_work,
            );
            started_runs += 1;
            runs.push(train_arm(cfg, data, vi, seed, pre.as_ref(), show_progress)?);
            done_work += work_of(steps, v.pauses);
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

/// The no-pause model of `steps` steps that every arm of `seed` is fine-tuned from, and
/// the real tokens it trained on.
fn pretrain_model(
    cfg: &ExperimentConfig,
    data: &dyn DataSource,
    seed: u64,
    steps: usize,
    show_progress: bool,
) -> Result<(Model<f32>, usize)> {
    let mut tc = cfg.base.clone();
    tc.objective = Objective::CeFinal;
    (tc.pauses, tc.model.k_max, tc.steps, tc.seed) = (0, 0, steps, seed);
    tc.warmup = (steps / 20).max(1);
    tc.eval_every = 0;
    let out = train_on(&tc, data, None, show_progress, cfg.device)?;
    Ok((out.model, steps * tc.batch * tc.seq))
}

/// Arm `vi` trained with `seed` (fine-tuned from `pre` when given) and measured on the
/// shared validation positions.
fn train_arm(
    cfg: &ExperimentConfig,
    data: &dyn DataSource,
    vi: usize,
    seed: u64,
    pre: Option<&Model<f32>>,
    show_progress: bool,
) -> Result<RunResult> {
    let v = &cfg.variants[vi];
    let mut tc = cfg.base.clone();
    tc.objective = v.objective.clone();
    tc.pauses = v.pauses;
    tc.model.k_max = v.pauses;
    tc.seed = seed;
    tc.steps = cfg.base.steps * v.regime;
    tc.warmup = (tc.steps / 20).max(1);
    let init = match pre {
        Some(m) => {
            let m = extend_depth(m, &tc.model, seed)?;
            tc.model = m.config.clone();
            Some(m)
        }
        None => None,
    };
    let out = train_on(&tc, data, init, show_progress, cfg.device)?;
    // Every run is judged on the same validation positions (seed of the experiment's
    // first seed), so per-position comparisons line up.
    let mut ec = tc.eval_config();
    ec.seed = cfg.seeds[0];
    let (outcomes, detail) = validation_detail(&out.model, data, &ec)?;
    let summary = EvalSummary::from_outcomes(&outcomes, v.pauses, &data.class_names());
    Ok(RunResult {
        variant: vi,
        seed,
        curve: out.curve,
        summary,
        outcomes,
        calibration: calibration(&detail, v.pauses),
        mean_h: mean_halting(&detail, v.pauses),
        inputs: detail.iter().map(|p| p.input).collect(),
        seconds: out.seconds,
    })
}

//! The arms (objective, pauses, data regime), the experiment's configuration, and the
//! protocol that trains them: per seed a pretrained no-pause model, every arm
//! fine-tuned from it on the same data order.

use super::measures::{calibration, mean_halting};
use super::result::{ExperimentResult, RunResult};
use super::sweep::{best_rates, SweepPoint, PAPER_MIN_LR_RATIO};
use crate::config::ModelConfig;
use crate::cpu::model::{Model, Params};
use crate::data::DataSource;
use crate::data::Split;
use crate::error::{CybError, Result};
use crate::launch::Launch;
use crate::metrics::EvalSummary;
use crate::number::Num;
use crate::objective::Objective;
use crate::rng::seeded;
use crate::train::{
    check_data_parallel, evaluate, train_with, validation_detail, EvalPoint, RunControl,
    TrainConfig, TrainDevice,
};

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
    /// [`Variant::quality`] of an evaluation summary (the test split's).
    pub(super) fn summary_quality(&self, s: &EvalSummary) -> f64 {
        if self.is_baseline() {
            s.nll_final
        } else {
            s.overall.nll
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

/// The experiment: a base training configuration (its objective, pause count, steps,
/// rate and schedule are replaced per arm, see [`arm_config`]; the pretraining keeps
/// its rate and schedule floor), the arms, and the seeds every arm is trained with.
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
    /// Peak learning rates of the sweep: every arm is fine-tuned at each and reported
    /// at its best ([`super::best_rates`]). Empty = `base.lr` alone. The pretraining
    /// runs once per seed at `base.lr`.
    pub lrs: Vec<f32>,
    /// Data-parallel replicas for every run, the pretraining included (`--gpus N`,
    /// feature `nccl`, a CUDA `device`); `None`: one device. A data-parallel step equals
    /// one device's on the global batch up to the order of the gradient sums, so the
    /// results are the one-device results within that rounding.
    pub launch: Option<Launch>,
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
            lrs: Vec::new(),
            launch: None,
        }
    }

    /// How every run of the experiment is run: on [`ExperimentConfig::launch`]'s
    /// replicas, without snapshots.
    fn control(&self) -> RunControl {
        RunControl {
            launch: self.launch.clone(),
            ..RunControl::default()
        }
    }

    /// The fine-tuning rates: `lrs`, or `base.lr` alone when it is empty.
    pub fn rates(&self) -> Vec<f32> {
        if self.lrs.is_empty() {
            vec![self.base.lr]
        } else {
            self.lrs.clone()
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

/// Checks an experiment before any work: arms and seeds given, the sweep's rates (each
/// with the base schedule), and the memory of its widest run and of every run's
/// results. Returns the number of runs (pretrainings included).
fn check_experiment(cfg: &ExperimentConfig, pretrain: usize) -> Result<usize> {
    if cfg.variants.is_empty() || cfg.seeds.is_empty() {
        return Err(CybError::Param(
            "an experiment needs variants and seeds".into(),
        ));
    }
    if !cfg.lrs.is_empty() {
        crate::limits::learning_rates(&cfg.lrs)?;
    }
    let b = &cfg.base;
    if let Some(launch) = &cfg.launch {
        check_data_parallel(b, cfg.device, launch)?;
    }
    for lr in cfg.rates() {
        crate::limits::check_schedule(
            lr,
            b.weight_decay,
            b.grad_clip,
            b.steps,
            b.batch,
            b.seq,
            b.eval_batches,
        )?;
    }
    let k_max = cfg.variants.iter().map(|v| v.pauses).max().unwrap_or(0);
    let r_max = cfg.variants.iter().map(|v| v.regime).max().unwrap_or(1);
    let per_seed = cfg.variants.len() * cfg.rates().len() + usize::from(pretrain > 0);
    let total = per_seed * cfg.seeds.len();
    let mut widest = cfg.base.clone();
    (widest.pauses, widest.model.k_max) = (k_max, k_max);
    widest.steps = cfg.base.steps * r_max;
    widest.check_experiment(k_max, total)?;
    Ok(total)
}

/// Train every variant with every seed at every rate of the sweep: per seed, first the
/// no-pause model of `cfg.pretrain` steps (or `cfg.init`), then every arm fine-tuned
/// from it at each rate (the depth rows it lacks drawn fresh), all on the same data
/// order; then each arm's rate chosen on validation ([`super::best_rates`]).
/// `progress(i, n, label)` is called before each run; the label names arm, seed, rate
/// (in a sweep) and the time left (estimated from the steps done so far, weighted by
/// their cost).
pub fn run_experiment(
    cfg: &ExperimentConfig,
    data: &dyn DataSource,
    show_progress: bool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<ExperimentResult> {
    let pretrain = if cfg.init.is_some() { 0 } else { cfg.pretrain };
    let total = check_experiment(cfg, pretrain)?;
    let rates = cfg.rates();
    let shared = cfg.base.model.pause_attention == crate::config::PauseAttention::Shared;
    let work_of = |steps: usize, k: usize| steps as f64 * step_cost(k, shared);
    let seed_work: f64 = work_of(pretrain, 0)
        + rates.len() as f64
            * cfg
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
    let mut runs = Vec::with_capacity(total);
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
            for &lr in &rates {
                let steps = cfg.base.steps * v.regime;
                let at = match rates.len() {
                    1 => String::new(),
                    _ => format!(", lr {}", Num::from(lr)),
                };
                label(
                    started_runs,
                    &format!("{} seed {seed}{at}, {steps} steps", v.name),
                    done_work,
                );
                started_runs += 1;
                let pre = pre.as_ref();
                runs.push(train_arm(cfg, data, (vi, seed, lr), pre, show_progress)?);
                done_work += work_of(steps, v.pauses);
            }
        }
    }
    let (runs, sweep, chosen) = choose_rates(cfg, runs);
    Ok(ExperimentResult {
        config: cfg.clone(),
        runs,
        sweep,
        chosen,
        class_names: data.class_names(),
        token_names: (0..data.vocab()).map(|t| data.token_name(t)).collect(),
        data_description: data.describe(),
        pretrained_tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every run's final validation quality, each arm's best rate, and the runs at it.
fn choose_rates(
    cfg: &ExperimentConfig,
    all: Vec<RunResult>,
) -> (Vec<RunResult>, Vec<SweepPoint>, Vec<f32>) {
    let sweep: Vec<SweepPoint> = all
        .iter()
        .map(|r| SweepPoint {
            variant: r.variant,
            seed: r.seed,
            lr: r.lr,
            quality: r
                .curve
                .last()
                .map_or(f64::NAN, |p| cfg.variants[r.variant].quality(p)),
        })
        .collect();
    let chosen = best_rates(&sweep, cfg.variants.len(), &cfg.rates());
    let runs = all
        .into_iter()
        .filter(|r| r.lr == chosen[r.variant])
        .collect();
    (runs, sweep, chosen)
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
    let out = train_with(&tc, data, None, show_progress, cfg.device, cfg.control())?;
    Ok((out.model, steps * tc.batch * tc.seq))
}

/// How arm `vi` trains with `seed` at peak rate `lr`: the base configuration with the
/// arm's objective, pauses and steps (`regime` x the base steps), and the paper's
/// schedule: linear warm-up over the first 5% of the steps, then cosine decay to
/// `lr * `[`PAPER_MIN_LR_RATIO`].
///
/// ```
/// use cyb::experiment::{arm_config, default_variants, ExperimentConfig, PAPER_MIN_LR_RATIO};
/// let model = cyb::config::ModelConfig {
///     vocab: 10, d_model: 8, n_layer: 1, n_head: 2, t_max: 8, k_max: 2,
///     pause_attention: cyb::config::PauseAttention::Shared, dk_bias: 0.0, layer_norm_eps: 1e-5,
/// };
/// let base = cyb::train::TrainConfig {
///     model, objective: cyb::Objective::CeFinal, pauses: 2, steps: 100, batch: 2, seq: 8,
///     lr: 3e-3, min_lr_ratio: 0.1, warmup: 5, weight_decay: 0.1, grad_clip: 1.0, seed: 1,
///     eval_every: 10, eval_batches: 1, head: Default::default(),
/// };
/// let cfg = ExperimentConfig::new(base, default_variants(2), vec![1]);
/// let tc = arm_config(&cfg, 3, 7, 1e-3); // cyb-ap, seed 7
/// assert_eq!((tc.lr, tc.min_lr_ratio, tc.warmup, tc.seed), (1e-3, PAPER_MIN_LR_RATIO, 5, 7));
/// assert_eq!(PAPER_MIN_LR_RATIO, 1e-2);
/// ```
pub fn arm_config(cfg: &ExperimentConfig, vi: usize, seed: u64, lr: f32) -> TrainConfig {
    let v = &cfg.variants[vi];
    let mut tc = cfg.base.clone();
    tc.objective = v.objective.clone();
    tc.pauses = v.pauses;
    tc.model.k_max = v.pauses;
    tc.seed = seed;
    tc.steps = cfg.base.steps * v.regime;
    tc.warmup = (tc.steps / 20).max(1);
    tc.lr = lr;
    tc.min_lr_ratio = PAPER_MIN_LR_RATIO;
    tc
}

/// Arm `vi` trained with `seed` at rate `lr` (fine-tuned from `pre` when given),
/// measured on the shared validation positions and on the test split.
fn train_arm(
    cfg: &ExperimentConfig,
    data: &dyn DataSource,
    (vi, seed, lr): (usize, u64, f32),
    pre: Option<&Model<f32>>,
    show_progress: bool,
) -> Result<RunResult> {
    let v = &cfg.variants[vi];
    let mut tc = arm_config(cfg, vi, seed, lr);
    let init = match pre {
        Some(m) => {
            let m = extend_depth(m, &tc.model, seed)?;
            tc.model = m.config.clone();
            Some(m)
        }
        None => None,
    };
    let out = train_with(&tc, data, init, show_progress, cfg.device, cfg.control())?;
    // Every run is judged on the same validation (and test) positions (seed of the
    // experiment's first seed), so per-position comparisons line up.
    let mut ec = tc.eval_config();
    ec.seed = cfg.seeds[0];
    let (outcomes, detail) = validation_detail(&out.model, data, &ec)?;
    let summary = EvalSummary::from_outcomes(&outcomes, v.pauses, &data.class_names());
    ec.split = Split::Test;
    let test = evaluate(&out.model, data, &ec)?;
    Ok(RunResult {
        variant: vi,
        seed,
        curve: out.curve,
        summary,
        outcomes,
        calibration: calibration(&detail, v.pauses),
        mean_h: mean_halting(&detail, v.pauses),
        inputs: detail.iter().map(|p| p.input).collect(),
        halting: detail,
        seconds: out.seconds,
        lr,
        test,
        replicas: out.replicas,
    })
}

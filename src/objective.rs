//! The five training objectives (docs/MATH.md, "The five objectives") and their parameters.
//!
//! An [`Objective`] is backend independent: the CPU reference (`cpu::loss`) and the
//! CUDA kernels (`gpu::loss`, feature `cuda`) both take one. Parameters that depend on
//! `K` (the deadline distribution `omega`, the reference distribution `rho`) are given
//! as a [`StepWeights`] rule and resolved for a concrete `K` by [`Objective::resolve`],
//! which also checks every parameter.

use crate::error::{CybError, Result};
use crate::number::Num;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// The largest `beta` (CYB-VA) and `alpha` (CYB-DP): KL weights beyond it make the
/// loss or its f32 gradient overflow (the paper's values are at most 1).
pub const MAX_KL_WEIGHT: f64 = 1e6;

/// A distribution over the steps `0..=K`, described independently of `K`.
#[derive(Clone, Debug, PartialEq)]
pub enum StepWeights {
    /// `1/(K+1)` on every step (the default `rho`).
    Uniform,
    /// All mass on step `K`, `delta_K` (the default `omega`: the world always waits).
    Last,
    /// Ratios for `0..=K`: exactly `K+1` finite, non-negative entries, not all zero.
    /// Normalised on use. Parsed from `"4:1:1:4"`.
    Explicit(Vec<f64>),
}

impl StepWeights {
    /// The weights for a concrete `K`, normalised to sum to 1. `what` names them in
    /// errors (`"omega"`, `"rho"`).
    pub fn resolve(&self, k: usize, what: &str) -> Result<Vec<f64>> {
        let raw: Vec<f64> = match self {
            StepWeights::Uniform => vec![1.0; k + 1],
            StepWeights::Last => (0..=k).map(|i| if i == k { 1.0 } else { 0.0 }).collect(),
            StepWeights::Explicit(v) => {
                if v.len() != k + 1 {
                    return Err(CybError::Param(format!(
                        "{what} (--{what}) needs exactly K+1 = {} ratios for K = {k}, got {} ({})",
                        k + 1,
                        v.len(),
                        self
                    )));
                }
                v.clone()
            }
        };
        if raw.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(CybError::Param(format!(
                "{what} (--{what}) ratios must be finite and >= 0, got {self}"
            )));
        }
        let sum: f64 = raw.iter().sum();
        if !sum.is_finite() {
            return Err(CybError::Param(format!(
                "{what} (--{what}) ratios {self} sum to more than the largest number ({sum}); only \
                 their proportions matter, so scale them down (e.g. 1:1:1:1)"
            )));
        }
        if sum <= 0.0 {
            return Err(CybError::Param(format!(
                "{what} (--{what}) ratios are all zero ({self}); at least one must be > 0 (e.g. 1:1:1:1)"
            )));
        }
        Ok(raw.iter().map(|x| x / sum).collect())
    }
}

impl fmt::Display for StepWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepWeights::Uniform => write!(f, "uniform"),
            StepWeights::Last => write!(f, "delta_K"),
            StepWeights::Explicit(v) => {
                let parts: Vec<String> = v.iter().map(|x| Num(*x).to_string()).collect();
                write!(f, "{}", parts.join(":"))
            }
        }
    }
}

impl FromStr for StepWeights {
    type Err = CybError;
    /// Ratios separated by `:` (`"0:0:0:1"`, `"4:1:1:4"`); `uniform` and `delta_K`
    /// name the two `K`-independent rules. Counts and signs are checked by `resolve`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "uniform" => return Ok(StepWeights::Uniform),
            "delta_K" => return Ok(StepWeights::Last),
            _ => {}
        }
        s.split(':')
            .map(|p| {
                p.trim().parse::<f64>().map_err(|_| {
                    CybError::Param(format!(
                        "cannot read '{p}' in ratios '{s}' (expected numbers separated by ':', e.g. 4:1:1:4)"
                    ))
                })
            })
            .collect::<Result<Vec<f64>>>()
            .map(StepWeights::Explicit)
    }
}

/// How the discount `gamma_k` falls with the step (docs/MATH.md, "Deadline and discount").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Discount {
    /// `gamma_k = gamma^k`.
    #[default]
    Exp,
    /// `gamma_k = 1 - k (1 - gamma)`; must stay `> 0` up to step `K`.
    Linear,
}

impl Discount {
    /// `log gamma_k` for `k = 0..=K`, after checking `0 < gamma <= 1` and `gamma_K > 0`.
    pub fn log_steps(self, gamma: f64, k: usize) -> Result<Vec<f64>> {
        if !(gamma.is_finite() && gamma > 0.0 && gamma <= 1.0) {
            return Err(CybError::Param(format!(
                "gamma (--gamma) must be in (0, 1] (1 = no discount, the default), got {}",
                Num(gamma)
            )));
        }
        let steps: Vec<f64> = (0..=k)
            .map(|i| match self {
                Discount::Exp => gamma.powi(i as i32),
                Discount::Linear => 1.0 - i as f64 * (1.0 - gamma),
            })
            .collect();
        if let Some(i) = steps.iter().position(|g| *g <= 0.0 || !g.is_finite()) {
            return Err(CybError::Param(format!(
                "the {self} discount with gamma = {} reaches {} at step {i} <= K = {k}; \
                 every gamma_k must be > 0 (a larger --gamma, e.g. 0.9)",
                Num(gamma),
                Num(steps[i])
            )));
        }
        Ok(steps.iter().map(|g| g.ln()).collect())
    }
}

impl fmt::Display for Discount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Discount::Exp => "exp",
            Discount::Linear => "linear",
        })
    }
}

impl FromStr for Discount {
    type Err = CybError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exp" => Ok(Discount::Exp),
            "linear" => Ok(Discount::Linear),
            other => Err(CybError::Param(format!(
                "unknown discount '{other}' (expected exp or linear)"
            ))),
        }
    }
}

/// The DK bias `b_DK = log(psi / (1 - psi)) + log V` that makes `d_k = psi` when all
/// `V+1` logits are equal (docs/MATH.md, "DK bias"). `psi = 0` means no bias (0); `psi`
/// must be in `[0, 1)`.
///
/// ```
/// let b = cyb::objective::dk_bias_from_prior(0.9, 100).unwrap();
/// // The same f64 formula: a few ulps at most.
/// approx::assert_abs_diff_eq!(b, 9f64.ln() + 100f64.ln(), epsilon = 1e-12);
/// assert_eq!(cyb::objective::dk_bias_from_prior(0.0, 100).unwrap(), 0.0);
/// assert!(cyb::objective::dk_bias_from_prior(1.0, 100).is_err());
/// ```
pub fn dk_bias_from_prior(psi: f64, vocab: usize) -> Result<f64> {
    if !(psi.is_finite() && (0.0..1.0).contains(&psi)) {
        return Err(CybError::Param(format!(
            "--dk-prior = {}: the DK prior psi must be in [0, 1) (0 = no bias; the default \
             0.9 works)",
            Num(psi)
        )));
    }
    if vocab == 0 {
        return Err(CybError::Param(
            "the DK prior needs a vocabulary V >= 1".into(),
        ));
    }
    if psi == 0.0 {
        return Ok(0.0);
    }
    Ok((psi / (1.0 - psi)).ln() + (vocab as f64).ln())
}

/// Which CYB loss to train (or evaluate) with. See docs/MATH.md, "The five objectives"; the
/// defaults (`ap_default` and friends, and `FromStr`) are the paper's best settings.
///
/// ```
/// use cyb::{Discount, Objective};
/// let ap = Objective::ap_default();
/// let resolved = ap.resolve(3).unwrap();
/// assert_eq!(resolved.omega, vec![0.0, 0.0, 0.0, 1.0]);
/// assert_eq!("va".parse::<Objective>().unwrap(), Objective::va_default());
/// // A grid setting (ratios have exactly K+1 entries): deadline 1:0:2, gamma 0.99.
/// let grid = Objective::Ap { omega: "1:0:2".parse()?, gamma: 0.99, discount: Discount::Exp };
/// assert_eq!(grid.resolve(2)?.omega, vec![1.0 / 3.0, 0.0, 2.0 / 3.0]);
/// assert!(grid.resolve(3).is_err()); // 3 ratios for K = 3
/// # Ok::<(), cyb::CybError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// Cross-entropy of the forced answer at step `K` (`-a_K`); with `K = 0` plain CE.
    CeFinal,
    /// Marginal NLL under the model's own halting distribution.
    Marginal,
    /// CYB-AP (paper eq. 3): `-log sum_k Pr(S=k) gamma_k t_k` with deadline
    /// distribution `omega`.
    Ap {
        omega: StepWeights,
        gamma: f64,
        discount: Discount,
    },
    /// CYB-VA: `sum_k h_k (-log gamma_k - a_k) + beta KL(h || rho)`.
    Va {
        rho: StepWeights,
        beta: f64,
        gamma: f64,
        discount: Discount,
    },
    /// CYB-DP: `-log sum_k h_k gamma_k t_k + alpha KL(rho || h)`.
    Dp {
        rho: StepWeights,
        alpha: f64,
        gamma: f64,
        discount: Discount,
    },
}

impl Objective {
    /// CYB-AP with its defaults: `omega = delta_K`, `gamma = 1`, `exp`.
    pub fn ap_default() -> Self {
        Objective::Ap {
            omega: StepWeights::Last,
            gamma: 1.0,
            discount: Discount::Exp,
        }
    }
    /// CYB-VA with its defaults: `rho` uniform, `beta = 1`, `gamma = 1`.
    pub fn va_default() -> Self {
        Objective::Va {
            rho: StepWeights::Uniform,
            beta: 1.0,
            gamma: 1.0,
            discount: Discount::Exp,
        }
    }
    /// CYB-DP with its defaults: `rho` uniform, `alpha = 0.01`, `gamma = 1`.
    pub fn dp_default() -> Self {
        Objective::Dp {
            rho: StepWeights::Uniform,
            alpha: 0.01,
            gamma: 1.0,
            discount: Discount::Exp,
        }
    }

    /// The short name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::CeFinal => "ce_final",
            Objective::Marginal => "marginal",
            Objective::Ap { .. } => "ap",
            Objective::Va { .. } => "va",
            Objective::Dp { .. } => "dp",
        }
    }

    /// Check the parameters and fix every `K`-dependent vector for this `K`, with no
    /// DK bias: a model adds its own ([`ResolvedObjective::for_model`]); the raw losses
    /// on logits take one from [`ResolvedObjective::with_dk_bias`].
    pub fn resolve(&self, k: usize) -> Result<ResolvedObjective> {
        // A KL weight beyond MAX_KL_WEIGHT only overflows the loss or its gradient.
        let nonneg = |name: &str, x: f64, default: f64| {
            if x.is_finite() && (0.0..=MAX_KL_WEIGHT).contains(&x) {
                Ok(x)
            } else {
                Err(CybError::Param(format!(
                    "{name} (--{name}) must be a number in [0, {}], got {} (the default is {})",
                    Num(MAX_KL_WEIGHT),
                    Num(x),
                    Num(default)
                )))
            }
        };
        let mut r = ResolvedObjective {
            kind: ObjectiveKind::CeFinal,
            k,
            omega: StepWeights::Last.resolve(k, "omega")?,
            rho: StepWeights::Uniform.resolve(k, "rho")?,
            log_gamma: vec![0.0; k + 1],
            beta: 0.0,
            alpha: 0.0,
            dk_bias: 0.0,
        };
        match self {
            Objective::CeFinal => {}
            Objective::Marginal => r.kind = ObjectiveKind::Marginal,
            Objective::Ap {
                omega,
                gamma,
                discount,
            } => {
                r.kind = ObjectiveKind::Ap;
                r.omega = omega.resolve(k, "omega")?;
                r.log_gamma = discount.log_steps(*gamma, k)?;
            }
            Objective::Va {
                rho,
                beta,
                gamma,
                discount,
            } => {
                r.kind = ObjectiveKind::Va;
                r.rho = rho.resolve(k, "rho")?;
                if r.rho.iter().any(|x| *x <= 0.0) {
                    return Err(CybError::Param(format!(
                        "va needs rho > 0 on every step (KL(h || rho) is infinite where \
                         rho is 0), got {rho}"
                    )));
                }
                r.beta = nonneg("beta", *beta, 1.0)?;
                r.log_gamma = discount.log_steps(*gamma, k)?;
            }
            Objective::Dp {
                rho,
                alpha,
                gamma,
                discount,
            } => {
                r.kind = ObjectiveKind::Dp;
                r.rho = rho.resolve(k, "rho")?;
                r.alpha = nonneg("alpha", *alpha, 0.01)?;
                r.log_gamma = discount.log_steps(*gamma, k)?;
            }
        }
        Ok(r)
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Objective::CeFinal | Objective::Marginal => write!(f, "{}", self.name()),
            Objective::Ap {
                omega,
                gamma,
                discount,
            } => write!(
                f,
                "ap(omega={omega}, gamma={}, discount={discount})",
                Num(*gamma)
            ),
            Objective::Va {
                rho,
                beta,
                gamma,
                discount,
            } => write!(
                f,
                "va(rho={rho}, beta={}, gamma={}, discount={discount})",
                Num(*beta),
                Num(*gamma)
            ),
            Objective::Dp {
                rho,
                alpha,
                gamma,
                discount,
            } => write!(
                f,
                "dp(rho={rho}, alpha={}, gamma={}, discount={discount})",
                Num(*alpha),
                Num(*gamma)
            ),
        }
    }
}

impl FromStr for Objective {
    type Err = CybError;
    /// Parses a name with default parameters: `ce_final | marginal | ap | va | dp`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ce_final" | "ce" => Ok(Objective::CeFinal),
            "marginal" => Ok(Objective::Marginal),
            "ap" => Ok(Objective::ap_default()),
            "va" => Ok(Objective::va_default()),
            "dp" => Ok(Objective::dp_default()),
            other => Err(CybError::Param(format!(
                "unknown objective '{other}' (expected ce_final, marginal, ap, va or dp)"
            ))),
        }
    }
}

/// The discriminant of an [`Objective`], as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ObjectiveKind {
    CeFinal = 0,
    Marginal = 1,
    Ap = 2,
    Va = 3,
    Dp = 4,
}

/// An objective checked and fixed for one `K`: every vector has `K+1` entries.
/// Parameters the objective does not use hold harmless defaults (`omega = delta_K`,
/// `rho` uniform, no discount, `beta = alpha = 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedObjective {
    pub kind: ObjectiveKind,
    /// Number of pause steps (rows per position are `K+1`).
    pub k: usize,
    /// Deadline distribution `omega_k` (sums to 1; zeros allowed).
    pub omega: Vec<f64>,
    /// Reference distribution `rho_k` of `va`/`dp` (sums to 1; zeros allowed for `dp`).
    pub rho: Vec<f64>,
    /// `log gamma_k` of the discount.
    pub log_gamma: Vec<f64>,
    pub beta: f64,
    pub alpha: f64,
    /// `b_DK`, added to every DK logit before anything else reads it.
    pub dk_bias: f64,
}

impl ResolvedObjective {
    /// The same objective with the DK bias `b_DK` (a model's `dk_bias`); must be finite.
    /// For the losses on raw logits (`cpu::loss`, `gpu::CybLoss`, the candle op); the
    /// models apply their own ([`ResolvedObjective::for_model`]).
    pub fn with_dk_bias(mut self, dk_bias: f64) -> Result<Self> {
        if !dk_bias.is_finite() {
            return Err(CybError::Param(format!(
                "dk_bias must be finite, got {dk_bias}"
            )));
        }
        self.dk_bias = dk_bias;
        Ok(self)
    }

    /// This objective as a model whose `config.dk_bias` is `model_dk_bias` scores with
    /// it: the DK bias is the model's. An objective without one (0, as
    /// [`Objective::resolve`] gives) takes the model's; one that already carries the
    /// model's is returned as it is (borrowed); one carrying a different non-zero bias
    /// is an error, since it would score the model's DK logit unlike decoding, the
    /// metrics and training do. The models' `loss` and `forward_backward` call this, so
    /// a caller never has to remember [`ResolvedObjective::with_dk_bias`].
    ///
    /// ```
    /// use cyb::Objective;
    /// let obj = Objective::ap_default().resolve(2).unwrap();
    /// assert_eq!(obj.for_model(1.5).unwrap().dk_bias, 1.5);
    /// let carried = obj.with_dk_bias(1.5).unwrap();
    /// assert_eq!(carried.for_model(1.5).unwrap().dk_bias, 1.5);
    /// assert!(carried.for_model(0.0).is_err()); // another model's bias
    /// ```
    pub fn for_model(&self, model_dk_bias: f64) -> Result<Cow<'_, ResolvedObjective>> {
        if self.dk_bias == model_dk_bias {
            return Ok(Cow::Borrowed(self));
        }
        if self.dk_bias != 0.0 {
            return Err(CybError::Param(format!(
                "the objective carries dk_bias = {} but the model's config.dk_bias is {}: \
                 a model scores with its own DK bias (resolve the objective without one, \
                 or with the model's)",
                Num(self.dk_bias),
                Num(model_dk_bias)
            )));
        }
        Ok(Cow::Owned(self.clone().with_dk_bias(model_dk_bias)?))
    }

    /// `log omega_k` and `log Omega_k = log sum_{j>k} omega_j` (`-inf` for 0), the
    /// deadline terms of `log Pr(S = k)`.
    pub fn log_omega_and_tail(&self) -> (Vec<f64>, Vec<f64>) {
        let log_omega = self.omega.iter().map(|w| w.ln()).collect();
        let mut tail = vec![0.0; self.k + 1];
        let mut acc = 0.0;
        for k in (0..=self.k).rev() {
            tail[k] = acc;
            acc += self.omega[k];
        }
        (log_omega, tail.iter().map(|w| w.ln()).collect())
    }
}

/// How per-position losses are combined into what `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `sum_i w_i L_i / sum_i w_i` over positions with a target (`w_i = 1` by default).
    #[default]
    Mean,
    /// `sum_i w_i L_i`.
    Sum,
    /// No reduction: per-position `w_i L_i` (the reported loss is their sum);
    /// backward takes one upstream gradient per position.
    None,
}

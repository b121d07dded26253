//! The five training objectives of SPEC section 4 and their parameters.
//!
//! An [`Objective`] is backend independent: the CPU reference (`cpu::loss`) and the
//! CUDA kernels (`gpu::loss`, feature `cuda`) both take one. Parameters that depend on
//! `K` (the AP interruption weights `w`, the VA prior) are given as a [`StepWeights`]
//! rule and resolved for a concrete `K` by [`Objective::resolve`].

use crate::error::{CybError, Result};
use std::fmt;
use std::str::FromStr;

/// A distribution over the steps `0..=K`, described independently of `K`.
#[derive(Clone, Debug, PartialEq)]
pub enum StepWeights {
    /// `1/(K+1)` on every step.
    Uniform,
    /// `∝ ratio^k` on `0..=K`, normalised (the VA default uses `ratio = 0.5`).
    Geometric(f64),
    /// Explicit values for `0..=K`; must have exactly `K+1` entries, be finite and
    /// non-negative (the VA prior must be strictly positive). Normalised on use.
    Explicit(Vec<f64>),
}

impl StepWeights {
    /// The weights for a concrete `K`, normalised to sum to 1.
    pub fn resolve(&self, k: usize) -> Result<Vec<f64>> {
        let raw: Vec<f64> = match self {
            StepWeights::Uniform => vec![1.0; k + 1],
            StepWeights::Geometric(ratio) => {
                if !(ratio.is_finite() && *ratio > 0.0) {
                    return Err(CybError::Param(format!(
                        "geometric ratio must be finite and > 0, got {ratio}"
                    )));
                }
                (0..=k).map(|i| ratio.powi(i as i32)).collect()
            }
            StepWeights::Explicit(v) => {
                if v.len() != k + 1 {
                    return Err(CybError::Param(format!(
                        "step weights need K+1 = {} entries, got {}",
                        k + 1,
                        v.len()
                    )));
                }
                v.clone()
            }
        };
        if raw.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(CybError::Param(format!(
                "step weights must be finite and >= 0, got {raw:?}"
            )));
        }
        let sum: f64 = raw.iter().sum();
        if sum <= 0.0 {
            return Err(CybError::Param("step weights sum to zero".into()));
        }
        Ok(raw.iter().map(|x| x / sum).collect())
    }
}

/// Which CYB loss to train (or evaluate) with. See SPEC section 4.
///
/// ```
/// use cyb::Objective;
/// let ap = Objective::ap_default();
/// let resolved = ap.resolve(3).unwrap();
/// assert_eq!(resolved.omega.len(), 4);
/// assert_eq!("va".parse::<Objective>().unwrap(), Objective::va_default());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// Cross-entropy of the forced answer at step `K` (`-a_K`); with `K = 0` plain CE.
    CeFinal,
    /// Marginal NLL under the model's own halting distribution.
    Marginal,
    /// CYB-AP: anytime prediction with discount `gamma` and interruption weights `omega`.
    Ap { gamma: f64, omega: StepWeights },
    /// CYB-VA: expected answer NLL plus `beta * KL(h || prior)`.
    Va { beta: f64, prior: StepWeights },
    /// CYB-DP: marginal NLL plus `lambda * max(0, mean E[pauses] - budget)` once per batch.
    Dp { lambda: f64, budget: f64 },
}

impl Objective {
    /// CYB-AP with the SPEC defaults: `gamma = 0.9`, `w` uniform over `0..=K`.
    pub fn ap_default() -> Self {
        Objective::Ap {
            gamma: 0.9,
            omega: StepWeights::Uniform,
        }
    }
    /// CYB-VA with the SPEC defaults: `beta = 0.1`, prior `∝ 0.5^k`.
    pub fn va_default() -> Self {
        Objective::Va {
            beta: 0.1,
            prior: StepWeights::Geometric(0.5),
        }
    }
    /// CYB-DP with the SPEC defaults: `lambda = 0.05`, budget `B = 0`.
    pub fn dp_default() -> Self {
        Objective::Dp {
            lambda: 0.05,
            budget: 0.0,
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

    /// Check the parameters and fix every `K`-dependent vector for this `K`.
    pub fn resolve(&self, k: usize) -> Result<ResolvedObjective> {
        let finite = |name: &str, x: f64| {
            if x.is_finite() {
                Ok(x)
            } else {
                Err(CybError::Param(format!("{name} must be finite, got {x}")))
            }
        };
        let kind = match self {
            Objective::CeFinal => ObjectiveKind::CeFinal,
            Objective::Marginal => ObjectiveKind::Marginal,
            Objective::Ap { gamma, .. } => {
                let g = finite("gamma", *gamma)?;
                if g <= 0.0 {
                    return Err(CybError::Param(format!("gamma must be > 0, got {g}")));
                }
                ObjectiveKind::Ap
            }
            Objective::Va { beta, .. } => {
                if finite("beta", *beta)? < 0.0 {
                    return Err(CybError::Param(format!("beta must be >= 0, got {beta}")));
                }
                ObjectiveKind::Va
            }
            Objective::Dp { lambda, budget } => {
                if finite("lambda", *lambda)? < 0.0 {
                    return Err(CybError::Param(format!(
                        "lambda must be >= 0, got {lambda}"
                    )));
                }
                finite("budget", *budget)?;
                ObjectiveKind::Dp
            }
        };
        let (gamma, omega) = match self {
            Objective::Ap { gamma, omega } => (*gamma, omega.resolve(k)?),
            _ => (1.0, StepWeights::Uniform.resolve(k)?),
        };
        let (beta, prior) = match self {
            Objective::Va { beta, prior } => {
                let p = prior.resolve(k)?;
                if p.iter().any(|x| *x <= 0.0) {
                    return Err(CybError::Param(
                        "the VA prior must be > 0 on every step (KL would be infinite)".into(),
                    ));
                }
                (*beta, p)
            }
            _ => (0.0, StepWeights::Geometric(0.5).resolve(k)?),
        };
        let (lambda, budget) = match self {
            Objective::Dp { lambda, budget } => (*lambda, *budget),
            _ => (0.0, 0.0),
        };
        Ok(ResolvedObjective {
            kind,
            k,
            gamma,
            omega,
            beta,
            prior,
            lambda,
            budget,
        })
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Objective::CeFinal | Objective::Marginal => write!(f, "{}", self.name()),
            Objective::Ap { gamma, omega } => write!(f, "ap(gamma={gamma}, w={omega:?})"),
            Objective::Va { beta, prior } => write!(f, "va(beta={beta}, prior={prior:?})"),
            Objective::Dp { lambda, budget } => write!(f, "dp(lambda={lambda}, budget={budget})"),
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

/// An objective checked and fixed for one `K`: every vector has `K+1` entries and
/// sums to 1. Unused parameters hold harmless defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedObjective {
    pub kind: ObjectiveKind,
    /// Number of pause steps (rows per position are `K+1`).
    pub k: usize,
    pub gamma: f64,
    pub omega: Vec<f64>,
    pub beta: f64,
    pub prior: Vec<f64>,
    pub lambda: f64,
    pub budget: f64,
}

/// How per-position losses are combined into what `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `sum_i w_i L_i / sum_i w_i` over positions with a target (`w_i = 1` by default).
    #[default]
    Mean,
    /// `sum_i w_i L_i`.
    Sum,
    /// No reduction: per-position `w_i L_i`; backward takes one upstream gradient per
    /// position. The batch-wide `dp` penalty is reported separately and its gradient
    /// is always added with weight 1.
    None,
}

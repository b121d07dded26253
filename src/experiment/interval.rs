//! 95% intervals of a mean and the three-way verdict they decide: a claim holds only
//! when its whole interval lies on the claim's side of the threshold.
//!
//! Over seeds the interval is Student's: `mean ± t_{0.975, n-1} · s / √n` with `s` the
//! sample standard deviation (divided by `n - 1`); the seeds of one experiment are
//! paired (every arm of a seed is fine-tuned from the same model on the same data
//! order), so a comparison of two arms is an interval of per-seed differences. With one
//! seed there is no spread over seeds: the calibration measure then takes a percentile
//! bootstrap over validation positions instead (seeded, so a report reproduces).

use crate::number::Num;
use crate::rng::seeded;
use rand::RngExt as _;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// How an [`Interval`] was computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IntervalKind {
    /// Student t over `n` seeds (`n - 1` degrees of freedom).
    Seeds,
    /// Percentile bootstrap over `positions` validation positions of one run.
    Bootstrap { positions: usize },
}

/// A 95% interval of a mean; `lo`/`hi` are infinite when it is undefined (one seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Seeds behind it.
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub kind: IntervalKind,
}

/// `t_{0.975, dof}`, the two-sided 95% quantile of Student's t.
///
/// ```
/// let t = cyb::experiment::t_975(4);
/// assert!((t - 2.776445).abs() < 1e-6);
/// ```
pub fn t_975(dof: usize) -> f64 {
    // dof >= 1 and location 0, scale 1 are valid parameters: `new` cannot fail.
    StudentsT::new(0.0, 1.0, dof.max(1) as f64)
        .map(|t| t.inverse_cdf(0.975))
        .unwrap_or(f64::NAN)
}

/// The Student t 95% interval of the mean of `xs` (the values of `xs.len()` seeds);
/// unbounded with fewer than two values.
///
/// ```
/// let iv = cyb::experiment::t_interval(&[1.0, 2.0, 3.0]);
/// // mean 2, s = 1, t_{0.975,2} = 4.302653: 2 ± 4.302653 / √3
/// assert!((iv.hi - (2.0 + 4.302653 / 3f64.sqrt())).abs() < 1e-6);
/// ```
pub fn t_interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    let mean = if n == 0 {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / n as f64
    };
    let (lo, hi) = if n < 2 {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else {
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        let half = t_975(n - 1) * (var / n as f64).sqrt();
        (mean - half, mean + half)
    };
    Interval {
        n,
        mean,
        lo,
        hi,
        kind: IntervalKind::Seeds,
    }
}

/// Resamples of [`bootstrap_interval`].
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Percentile bootstrap 95% interval of `stat` over `items` (one run's validation
/// positions): [`BOOTSTRAP_RESAMPLES`] resamples with replacement drawn from `seed`,
/// the 2.5th and 97.5th percentiles of `stat` over them; `mean` is `stat(items)`.
pub fn bootstrap_interval<T: Clone>(
    items: &[T],
    seed: u64,
    stat: impl Fn(&[T]) -> f64,
) -> Interval {
    let mut rng = seeded(seed ^ 0xB007_57A9_0000_0001);
    let mut sample = Vec::with_capacity(items.len());
    let mut stats: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .filter_map(|_| {
            if items.is_empty() {
                return None;
            }
            sample.clear();
            sample
                .extend((0..items.len()).map(|_| items[rng.random_range(0..items.len())].clone()));
            Some(stat(&sample)).filter(|x| x.is_finite())
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let (lo, hi) = if stats.is_empty() {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else {
        (
            super::stats::quantile(&stats, 0.025),
            super::stats::quantile(&stats, 0.975),
        )
    };
    Interval {
        n: 1,
        mean: stat(items),
        lo,
        hi,
        kind: IntervalKind::Bootstrap {
            positions: items.len(),
        },
    }
}

impl Interval {
    /// `[lo, hi]` with `prec` decimals, `—` when unbounded.
    pub fn text(&self, prec: usize) -> String {
        if self.lo.is_finite() && self.hi.is_finite() {
            format!("[{:.prec$}, {:.prec$}]", Num(self.lo), Num(self.hi))
        } else {
            "—".into()
        }
    }
}

/// The side of its threshold a claim puts the measured mean on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Below(f64),
    Above(f64),
}

/// A claim's verdict from its interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    DoesNotHold,
    /// The interval straddles the threshold (or is undefined); the seeds behind it.
    Inconclusive(usize),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Holds => write!(f, "holds"),
            Verdict::DoesNotHold => write!(f, "does not hold"),
            Verdict::Inconclusive(1) => write!(f, "inconclusive (1 seed)"),
            Verdict::Inconclusive(n) => write!(f, "inconclusive ({n} seeds)"),
        }
    }
}

/// `Holds` when the whole interval lies on the claim's side of the threshold (strictly),
/// `DoesNotHold` when it lies wholly on the other side, `Inconclusive` otherwise
/// (touching or straddling the threshold, unbounded, or NaN).
///
/// ```
/// use cyb::experiment::{decide, t_interval, Side, Verdict};
/// let iv = t_interval(&[-0.03, -0.02, -0.025]);
/// assert_eq!(decide(&iv, Side::Below(0.0)), Verdict::Holds);
/// assert_eq!(decide(&iv, Side::Above(0.0)), Verdict::DoesNotHold);
/// assert_eq!(decide(&iv, Side::Below(-0.025)), Verdict::Inconclusive(3));
/// ```
pub fn decide(iv: &Interval, side: Side) -> Verdict {
    let (claim_side, other_side) = match side {
        Side::Below(t) => (iv.hi < t, iv.lo > t),
        Side::Above(t) => (iv.lo > t, iv.hi < t),
    };
    if claim_side {
        Verdict::Holds
    } else if other_side {
        Verdict::DoesNotHold
    } else {
        Verdict::Inconclusive(iv.n)
    }
}

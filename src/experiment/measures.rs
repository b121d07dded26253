//! The paper's measures: calibration and halting over validation positions, data
//! efficiency from learning curves, pauses by input token (table 3).

use super::result::RunResult;
use super::stats::{quantile, spearman, variance};
use crate::train::PositionHalting;

/// Calibration (docs/MATH.md, "Measures"): per `k < K`, Spearman of `d_k` with
/// `t_{k+1} - t_k`.
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

/// Data-efficiency ratio of one CYB run against one baseline run (same seed):
/// tokens the baseline needs to reach the CYB run's final quality, over the tokens
/// the CYB run used. `None` = the baseline never got there.
pub fn efficiency_ratio(cyb: &[(f64, f64)], baseline: &[(f64, f64)]) -> Option<f64> {
    let &(cyb_tokens, cyb_final) = cyb.last()?;
    tokens_to_reach(baseline, cyb_final).map(|t| t / cyb_tokens)
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

//! The experiment's figures: `curves.png`, `pauses.png`, `halting.png`.

use super::result::ExperimentResult;
use crate::error::Result;

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
    let k = res.max_pauses();
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

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

use crate::data::DataSource;
use crate::error::{CybError, Result};
use crate::metrics::{EvalSummary, PositionOutcome};
use crate::objective::Objective;
use crate::train::{train, validation_outcomes, EvalPoint, TrainConfig};
use std::fmt::Write as _;

/// One arm of the experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub objective: Objective,
    pub pauses: usize,
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

/// The five default arms: no pauses; pauses + CE; CYB-AP, CYB-VA, CYB-DP (defaults).
pub fn default_variants(pauses: usize) -> Vec<Variant> {
    variants(
        pauses,
        Objective::ap_default(),
        Objective::va_default(),
        Objective::dp_default(),
    )
}

/// The five arms with the given CYB objectives: no pauses (`K = 0`, `ce_final`),
/// pauses + `ce_final`, then `ap`, `va` and `dp` with `K = pauses`.
pub fn variants(pauses: usize, ap: Objective, va: Objective, dp: Objective) -> Vec<Variant> {
    let v = |name: &str, objective, pauses| Variant {
        name: name.into(),
        objective,
        pauses,
    };
    vec![
        v("no-pause", Objective::CeFinal, 0),
        v("pause-ce", Objective::CeFinal, pauses),
        v("cyb-ap", ap, pauses),
        v("cyb-va", va, pauses),
        v("cyb-dp", dp, pauses),
    ]
}

/// The experiment: a base training configuration (its objective and pause count are
/// replaced per variant), the arms, and the seeds every arm is trained with.
#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    pub base: TrainConfig,
    pub variants: Vec<Variant>,
    pub seeds: Vec<u64>,
}

/// One trained run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub variant: usize,
    pub seed: u64,
    pub curve: Vec<EvalPoint>,
    pub summary: EvalSummary,
    /// Greedy outcomes on the shared validation positions (same order in every run).
    pub outcomes: Vec<PositionOutcome>,
    pub seconds: f64,
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
        self.config
            .seeds
            .iter()
            .filter_map(|&s| {
                let (c, b) = (self.run(cyb, s)?, self.run(base, s)?);
                Some((
                    s,
                    efficiency_ratio(&self.quality_curve(c), &self.quality_curve(b)),
                ))
            })
            .collect()
    }
}

/// Train every variant with every seed. `progress(i, n, label)` is called before each run.
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
    let total = cfg.variants.len() * cfg.seeds.len();
    let k_max = cfg.variants.iter().map(|v| v.pauses).max().unwrap_or(0);
    let mut widest = cfg.base.clone();
    (widest.pauses, widest.model.k_max) = (k_max, k_max);
    crate::limits::check_experiment(&widest, k_max, total)?;
    let mut runs = Vec::with_capacity(total);
    for &seed in &cfg.seeds {
        for (vi, v) in cfg.variants.iter().enumerate() {
            progress(runs.len(), total, &format!("{} seed {seed}", v.name));
            let mut tc = cfg.base.clone();
            tc.objective = v.objective.clone();
            tc.pauses = v.pauses;
            tc.model.k_max = v.pauses;
            tc.seed = seed;
            let out = train(&tc, data, None, show_progress)?;
            // Every run is judged on the same validation positions (seed of the
            // experiment's first seed), so per-position comparisons line up.
            let mut ec = tc.eval_config();
            ec.seed = cfg.seeds[0];
            let outcomes = validation_outcomes(&out.model, data, &ec)?;
            let summary = EvalSummary::from_outcomes(&outcomes, v.pauses, &data.class_names());
            runs.push(RunResult {
                variant: vi,
                seed,
                curve: out.curve,
                summary,
                outcomes,
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
    })
}

/// `mean ± std` of `xs` with `prec` decimals; just the value for a single number (one
/// seed has no spread to show).
fn mean_pm(xs: &[f64], prec: usize) -> String {
    let (m, sd) = mean_std(xs);
    if xs.len() < 2 {
        format!("{m:.prec$}")
    } else {
        format!("{m:.prec$} ± {sd:.prec$}")
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

/// The CSV of data-efficiency ratios (CYB variant vs baseline, per seed; empty ratio
/// = the baseline never reached the CYB model's final quality).
pub fn ratios_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("cyb_variant,baseline,seed,ratio\n");
    for (ci, cv) in res
        .config
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_baseline())
    {
        for (bi, bv) in res
            .config
            .variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_baseline())
        {
            for (seed, r) in res.ratios(ci, bi) {
                let r = r.map(|x| format!("{x}")).unwrap_or_default();
                let _ = writeln!(s, "{},{},{},{}", cv.name, bv.name, seed, r);
            }
        }
    }
    s
}

/// The Markdown report. `command` is the exact command line that produced it.
pub fn render_report(res: &ExperimentResult, command: &str) -> String {
    let cfg = &res.config;
    let b = &cfg.base;
    let mut s = String::new();
    let _ = writeln!(s, "# cyb experiment\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(s, "- data: {}", res.data_description);
    let _ = writeln!(
        s,
        "- model: d_model {} layers {} heads {} context {}; {} steps x {} sequences x {} tokens, lr {}, same for every variant",
        b.model.d_model, b.model.n_layer, b.model.n_head, b.seq, b.steps, b.batch, b.seq, b.lr
    );
    let _ = writeln!(s, "- seeds: {:?}", cfg.seeds);
    let _ = writeln!(
        s,
        "- quality = validation NLL in nats/token: marginal NLL for CYB variants, final-step NLL for baselines ({} validation batches); accuracy likewise: greedy policy for CYB variants, the forced answer at step K for baselines\n",
        b.eval_batches
    );

    let spread = if cfg.seeds.len() > 1 {
        "mean ± std over seeds"
    } else {
        "one seed"
    };
    let _ = writeln!(s, "## Final validation quality ({spread})\n");
    let _ = writeln!(s, "| variant | objective | K | quality NLL | accuracy | acc@0 | pauses/token | real tokens |\n|---|---|---:|---:|---:|---:|---:|---:|");
    for (vi, v) in cfg.variants.iter().enumerate() {
        let runs: Vec<&RunResult> = res.runs.iter().filter(|r| r.variant == vi).collect();
        let q: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.curve.last().map(|p| v.quality(p)))
            .collect();
        let acc: Vec<f64> = runs
            .iter()
            .map(|r| v.accuracy(&r.summary.overall))
            .collect();
        let acc0: Vec<f64> = runs
            .iter()
            .map(|r| r.summary.overall.accuracy_at_0)
            .collect();
        let pau: Vec<f64> = runs.iter().map(|r| r.summary.overall.mean_pauses).collect();
        let tokens = runs
            .first()
            .and_then(|r| r.curve.last())
            .map_or(0, |p| p.tokens_seen);
        let (qm, am, (a0, _), (pm, _)) = (
            mean_pm(&q, 4),
            mean_pm(&acc, 4),
            mean_std(&acc0),
            mean_std(&pau),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {qm} | {am} | {a0:.4} | {pm:.3} | {tokens} |",
            v.name, v.objective, v.pauses
        );
    }

    let _ = writeln!(s, "\n## Claim 1: data efficiency\n");
    let _ = writeln!(s, "Ratio = real tokens the baseline needs to reach the CYB model's final quality (interpolated on its validation curve) / real tokens the CYB model trained on. Higher is better for CYB: a ratio above 1 means the baseline needed *more* data than CYB, i.e. CYB is more data-efficient by that factor. The paper's claim (CYB-AP needs about 1/3 of no-pause's data and under 2/3 of pause-ce's) is a ratio of about 3 or more against no-pause and 1.5 or more against pause-ce. \"not reached\" = the baseline never got there within this run.\n");
    let _ = writeln!(
        s,
        "| CYB variant | baseline | per seed | ratio ({spread}, higher = CYB better) | verdict |\n|---|---|---|---:|---|"
    );
    for (ci, cv) in cfg
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_baseline())
    {
        for (bi, bv) in cfg
            .variants
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_baseline())
        {
            let rs = res.ratios(ci, bi);
            let per: Vec<String> = rs
                .iter()
                .map(|(seed, r)| match r {
                    Some(x) => format!("{seed}: {x:.3}"),
                    None => format!("{seed}: not reached"),
                })
                .collect();
            let reached: Vec<f64> = rs.iter().filter_map(|(_, r)| *r).collect();
            let (mean, verdict) = if reached.len() == rs.len() && !reached.is_empty() {
                let (m, _) = mean_std(&reached);
                let claim = if bv.pauses == 0 { 3.0 } else { 1.5 };
                let verdict = if m >= claim {
                    format!("supports the claim (>= {claim}x)")
                } else if m > 1.0 {
                    format!("CYB more efficient, but less than the claimed {claim}x")
                } else {
                    "CYB is NOT more data-efficient here".to_string()
                };
                (mean_pm(&reached, 3), verdict)
            } else if reached.is_empty() {
                ("—".into(), "baseline never reached CYB's quality: CYB better by more than the run measures".into())
            } else {
                ("—".into(), "mixed: not reached for some seeds".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {mean} | {verdict} |",
                cv.name,
                bv.name,
                per.join(", ")
            );
        }
    }

    let _ = writeln!(s, "\n## Claim 2: where the model pauses\n");
    let base_idx = cfg
        .variants
        .iter()
        .position(|v| v.is_baseline() && v.pauses == 0);
    let _ = writeln!(
        s,
        "Mean greedy pauses per target, by difficulty class (seed {}):\n",
        cfg.seeds[0]
    );
    let mut header = String::from("| variant |");
    let mut rule = String::from("|---|");
    for c in &res.class_names {
        let _ = write!(header, " {c} |");
        rule.push_str("---:|");
    }
    header.push_str(" corr(pauses, baseline loss) | acc answered / acc@0 (paused positions) |");
    rule.push_str("---:|---|");
    let _ = writeln!(s, "{header}\n{rule}");
    for (v, run) in res.pausing_runs() {
        let mut row = format!("| {} |", v.name);
        for (_, g) in &run.summary.by_class {
            if g.count > 0 {
                let _ = write!(row, " {:.2} |", g.mean_pauses);
            } else {
                row.push_str(" — |");
            }
        }
        let corr = base_idx
            .and_then(|bi| res.run(bi, cfg.seeds[0]))
            .filter(|b| b.outcomes.len() == run.outcomes.len())
            .map(|b| {
                let p: Vec<f64> = run.outcomes.iter().map(|o| o.pauses as f64).collect();
                let l: Vec<f64> = b.outcomes.iter().map(|o| o.nll_final).collect();
                pearson(&p, &l)
            });
        let paused: Vec<&PositionOutcome> = run.outcomes.iter().filter(|o| o.pauses > 0).collect();
        let helped = if paused.is_empty() {
            "never paused".to_string()
        } else {
            let n = paused.len() as f64;
            let a = paused.iter().filter(|o| o.correct).count() as f64 / n;
            let a0 = paused.iter().filter(|o| o.correct_at_0).count() as f64 / n;
            format!("{a:.3} / {a0:.3} ({} positions)", paused.len())
        };
        let corr = corr.map_or("—".to_string(), |c| {
            if c.is_nan() {
                "undefined (constant)".into()
            } else {
                format!("{c:.3}")
            }
        });
        let _ = writeln!(s, "{row} {corr} | {helped} |");
    }
    let _ = writeln!(s, "\nTarget tokens that pause most and least (seed {}, tokens seen at least 5 times; mean pauses ± std):\n", cfg.seeds[0]);
    for (v, run) in res.pausing_runs() {
        let mut toks: Vec<_> = run
            .summary
            .by_token
            .iter()
            .filter(|(_, g)| g.count >= 5)
            .collect();
        toks.sort_by(|a, b| {
            b.1.mean_pauses
                .total_cmp(&a.1.mean_pauses)
                .then(a.0.cmp(&b.0))
        });
        let fmt = |(t, g): &&(usize, crate::metrics::GroupStats)| {
            let name = res
                .token_names
                .get(*t)
                .cloned()
                .unwrap_or_else(|| t.to_string());
            format!("{name} {:.2}±{:.2}", g.mean_pauses, g.pause_variance.sqrt())
        };
        let most: Vec<String> = toks.iter().take(5).map(fmt).collect();
        let least: Vec<String> = toks.iter().rev().take(5).map(fmt).collect();
        let _ = writeln!(
            s,
            "- {}: most {}; least {}",
            v.name,
            most.join(", "),
            least.join(", ")
        );
    }
    let _ = writeln!(s, "\nPlots: `curves.png` (quality against real tokens, band = min..max over seeds), `pauses.png` (pauses by class). Numbers: `curves.csv`, `ratios.csv`.");
    s
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
    )
}

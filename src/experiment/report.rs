//! The Markdown report: one function per section.

use super::measures::token_pause_stats;
use super::result::{ExperimentResult, RunResult};
use super::stats::{mean_of, mean_std, quantile};
use crate::metrics::PositionOutcome;
use crate::number::Num;
use std::fmt::Write as _;

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

/// The regime of `base` whose mean final quality CYB-AP at 1x matches: the largest
/// `r` with `quality(base x r) >= quality(cyb-ap)`; `Some(0)` = not even 1x.
pub(super) fn matched_regime(res: &ExperimentResult, base: &str) -> Option<usize> {
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
    let mut s = String::new();
    header(&mut s, res, command);
    super::verdict::verdict_section(&mut s, res);
    final_quality_section(&mut s, res);
    super::sweep::sweep_section(&mut s, res);
    data_efficiency_section(&mut s, res);
    if res.config.variants.iter().any(|v| v.regime > 1) {
        regimes_section(&mut s, res);
    }
    calibration_section(&mut s, res);
    latency_section(&mut s, res);
    pauses_by_class_section(&mut s, res);
    if let Some(ai) = res.arm("cyb-ap") {
        table3_section(&mut s, res, ai);
    }
    let _ = writeln!(s, "\nPlots: `curves.png` (quality against real tokens, band = min..max over seeds), `pauses.png` (pauses by class), `halting.png` (mean h_k per arm). Numbers: `curves.csv`, `test.csv`, `sweep.csv`, `ratios.csv`, `fractions.csv`, `regimes.csv`, `calibration.csv`, `halting.csv`, `latency.csv`, `tokens.csv`, `verdicts.csv`.");
    s
}

/// The head and rule of a table with an `arm` column and right-aligned `columns`.
fn arm_table_head(columns: impl Iterator<Item = String>) -> (String, String) {
    let mut head = String::from("| arm |");
    let mut rule = String::from("|---|");
    for c in columns {
        let _ = write!(head, " {c} |");
        rule.push_str("---:|");
    }
    (head, rule)
}

/// What the `±` of the tables means.
fn spread(res: &ExperimentResult) -> &'static str {
    if res.config.seeds.len() > 1 {
        "mean ± std over seeds"
    } else {
        "one seed"
    }
}

/// Title, command and the setup of the experiment.
fn header(s: &mut String, res: &ExperimentResult, command: &str) {
    let cfg = &res.config;
    let b = &cfg.base;
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
    let rates: Vec<String> = cfg
        .rates()
        .iter()
        .map(|&r| Num::from(r).to_string())
        .collect();
    let lr = match rates.len() {
        1 => format!("peak lr {}, same for every arm", rates[0]),
        _ => format!(
            "every arm at every peak lr of {{{}}}, reported at its best on validation",
            rates.join(", ")
        ),
    };
    let _ = writeln!(
        s,
        "- model: d_model {} layers {} heads {} context {}; {} steps x {} sequences x {} tokens per arm (x r for regime r); {lr}; linear warm-up over 5% of the steps, then cosine decay to lr/100 (the paper's schedule)",
        b.model.d_model, b.model.n_layer, b.model.n_head, b.seq, b.steps, b.batch, b.seq
    );
    let device = match (cfg.device, &cfg.launch) {
        (crate::train::TrainDevice::Cpu, _) => "the CPU (f32)".to_string(),
        (crate::train::TrainDevice::Cuda(p), None) => format!("CUDA device 0 ({p})"),
        (crate::train::TrainDevice::Cuda(p), Some(l)) => format!(
            "{} GPUs, data parallel ({p}; every run, the pretraining included)",
            l.world_size
        ),
    };
    let _ = writeln!(
        s,
        "- seeds: {:?}; trained on {device}; wall time {:.1} min",
        cfg.seeds,
        Num(res.seconds / 60.0)
    );
    let _ = writeln!(
        s,
        "- quality = NLL in nats/token: marginal NLL for CYB arms, final-step NLL for baselines; perplexity = exp(quality). Learning curves, data efficiency, calibration, latency and pauses: validation split ({} batches); final quality, perplexity, accuracy and the verdicts on them: test split ({} batches), which no choice saw\n",
        b.eval_batches, b.eval_batches
    );
}

/// Final quality, perplexity, accuracy and pauses of every arm on the test split, at
/// the arm's rate.
fn final_quality_section(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    let spread = spread(res);
    let _ = writeln!(s, "\n## Final quality on the test split ({spread})\n");
    let _ = writeln!(s, "| arm | objective | K | data | lr | quality NLL | perplexity | accuracy | pauses/token | real tokens |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (vi, v) in cfg.variants.iter().enumerate() {
        let runs: Vec<&RunResult> = res.runs.iter().filter(|r| r.variant == vi).collect();
        let q = res.finals(vi);
        let p: Vec<f64> = q.iter().map(|x| x.exp()).collect();
        let acc: Vec<f64> = runs.iter().map(|r| v.accuracy(&r.test.overall)).collect();
        let pau: Vec<f64> = runs.iter().map(|r| r.test.overall.mean_pauses).collect();
        let tokens = runs
            .first()
            .and_then(|r| r.curve.last())
            .map_or(0, |p| p.tokens_seen);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}x | {} | {} | {} | {} | {:.3} | {tokens} |",
            v.name,
            v.objective,
            v.pauses,
            v.regime,
            Num::from(res.chosen[vi]),
            mean_pm(&q, 4),
            mean_pm(&p, 3),
            mean_pm(&acc, 4),
            Num(mean_of(&pau))
        );
    }
}

/// The paper's data-efficiency measure from the learning curves, per seed.
fn data_efficiency_section(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    let spread = spread(res);
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
}

/// Final quality by data regime, and which regime of each baseline CYB-AP matches.
fn regimes_section(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    let spread = spread(res);
    let tbys = format!("tbys-{}", res.max_pauses());
    let _ = writeln!(s, "\n## Data regimes (fresh fine-tuning on r x the data)\n");
    let mut regimes: Vec<usize> = cfg.variants.iter().map(|v| v.regime).collect();
    regimes.sort_unstable();
    regimes.dedup();
    let (head, rule) = arm_table_head(regimes.iter().map(|r| format!("{r}x")));
    let _ = writeln!(
        s,
        "Final quality NLL on the test split ({spread}):\n\n{head}\n{rule}"
    );
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
                "\nCYB-AP at 1x matches {base} at {} (by the means over seeds; the verdict table decides per seed).",
                if r == 0 {
                    "no regime (it is worse than 1x)".to_string()
                } else {
                    format!("{r}x (the largest regime it is at least as good as)")
                }
            );
        }
    }
}

/// Calibration of d_k (SPEC section 8) per arm with pauses and k.
fn calibration_section(s: &mut String, res: &ExperimentResult) {
    let spread = spread(res);
    let k = res.max_pauses();
    let _ = writeln!(s, "\n## Calibration (SPEC section 8, paper figure 10)\n");
    let _ = writeln!(s, "Spearman correlation over validation positions between d_k and t_(k+1) - t_k ({spread}; paper, CYB-AP on C4: 0.383, 0.157, 0.271). Baselines (`ce_final`) never train d_k: their rows are for reference.\n");
    let (head, rule) = arm_table_head((0..k).map(|kk| format!("k = {kk}")));
    let _ = writeln!(s, "{head}\n{rule}");
    for (vi, v) in res.pausing_arms() {
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
}

/// The halting distribution and the spread of E[pauses] (paper figure 7).
fn latency_section(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    let k = res.max_pauses();
    let _ = writeln!(s, "\n## Latency (paper figure 7)\n");
    let _ = writeln!(s, "Mean halting distribution h_k over validation positions (mean over seeds), and the distribution over positions of E[pauses] (first seed: mean, 10th, 50th, 90th percentile). `halting.png` plots h.\n");
    let (head, rule) = arm_table_head((0..=k).map(|kk| format!("h_{kk}")));
    let _ = writeln!(
        s,
        "{head} E[pauses] mean | p10 | p50 | p90 |\n{rule}---:|---:|---:|---:|"
    );
    for (vi, v) in res.pausing_arms() {
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
}

/// Mean greedy pauses by difficulty class, and whether pausing helped.
fn pauses_by_class_section(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    let _ = writeln!(s, "\n## Where the model pauses\n");
    let _ = writeln!(
        s,
        "Mean greedy pauses per target, by difficulty class (seed {}):\n",
        cfg.seeds[0]
    );
    let (mut header, mut rule) = arm_table_head(res.class_names.iter().cloned());
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
}

/// Pauses by input token in the form of the paper's table 3 (CYB-AP `ai`, first seed).
fn table3_section(s: &mut String, res: &ExperimentResult, ai: usize) {
    let cfg = &res.config;
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

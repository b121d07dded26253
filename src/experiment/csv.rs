//! The experiment's CSV files: every number of the report, per run and seed.

use super::claims::claims;
use super::interval::Side;
use super::measures::token_pause_stats;
use super::result::{ExperimentResult, RunResult};
use super::stats::{mean_std, quantile};
use std::fmt::Write as _;

/// The CSV of every validation point of every reported run (each arm at its chosen
/// rate, the last column).
pub fn curves_csv(res: &ExperimentResult) -> String {
    let mut s = String::from(
        "variant,seed,step,tokens_seen,quality_nll,marginal_nll,final_nll,accuracy,accuracy_final,mean_pauses,lr\n",
    );
    for r in &res.runs {
        let v = &res.config.variants[r.variant];
        for p in &r.curve {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{}",
                v.name,
                r.seed,
                p.step,
                p.tokens_seen,
                v.quality(p),
                p.nll,
                p.nll_final,
                p.accuracy,
                p.accuracy_final,
                p.mean_pauses,
                r.lr
            );
        }
    }
    s
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

/// Final quality on the test split of every reported run with its data regime.
pub fn regimes_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("variant,base_variant,regime,seed,test_quality_nll\n");
    for r in &res.runs {
        let v = &res.config.variants[r.variant];
        let base = v.name.split(" x").next().unwrap_or(&v.name);
        let _ = writeln!(
            s,
            "{},{base},{},{},{}",
            v.name,
            v.regime,
            r.seed,
            res.test_quality(r)
        );
    }
    s
}

/// The per-seed values behind every verdict: the claim's key, the side of the
/// threshold it claims (`below`/`above`), the threshold, the seed and its value.
pub fn verdicts_csv(res: &ExperimentResult) -> String {
    let mut s = String::from("claim,side,threshold,seed,value\n");
    for c in claims(res) {
        let (side, t) = match c.side {
            Side::Below(t) => ("below", t),
            Side::Above(t) => ("above", t),
        };
        for (seed, x) in &c.values {
            let _ = writeln!(s, "{},{side},{t},{seed},{x}", csv_text(&c.key));
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
        ("verdicts.csv", verdicts_csv(res)),
        ("sweep.csv", super::sweep_csv(res)),
        ("test.csv", super::test_csv(res)),
    ]
}

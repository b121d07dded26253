//! The verdict table: claim by claim, the paper's value, the value here, the verdict.

use super::report::{matched_regime, mean_calibration};
use super::result::ExperimentResult;
use super::stats::mean_of;
use crate::number::Num;
use std::fmt::Write as _;

fn holds(c: bool) -> &'static str {
    if c {
        "holds"
    } else {
        "does not hold"
    }
}

/// Mean perplexity over the seeds of the arm named `name`.
fn ppl(res: &ExperimentResult, name: &str) -> Option<f64> {
    let f = res.finals(res.arm(name)?);
    let p: Vec<f64> = f.iter().map(|q| q.exp()).collect();
    Some(mean_of(&p))
}

/// The verdict table.
pub(super) fn verdict_section(s: &mut String, res: &ExperimentResult) {
    let _ = writeln!(s, "## Verdict\n");
    let _ = writeln!(
        s,
        "| claim (paper) | paper | here | verdict |\n|---|---|---|---|"
    );
    let Some(ap) = ppl(res, "cyb-ap") else {
        return;
    };
    let tbys = format!("tbys-{}", res.max_pauses());
    for base in ["no-pause", tbys.as_str()] {
        if let Some(bp) = ppl(res, base) {
            let _ = writeln!(
                s,
                "| CYB-AP perplexity below {base} (fig. 4) | yes | {:.4} vs {:.4} | {} |",
                Num(ap),
                Num(bp),
                holds(ap < bp)
            );
        }
    }
    let others: Vec<(String, f64)> = ["cyb-va", "cyb-dp"]
        .iter()
        .filter_map(|n| Some((n.to_string(), ppl(res, n)?)))
        .collect();
    if !others.is_empty() {
        let best = others.iter().all(|(_, p)| ap <= *p);
        let txt: Vec<String> = others
            .iter()
            .map(|(n, p)| format!("{n} {:.4}", Num(*p)))
            .collect();
        let _ = writeln!(
            s,
            "| CYB-AP best CYB variant (fig. 4; DP close, VA worst) | yes | {:.4} vs {} | {} |",
            Num(ap),
            txt.join(", "),
            holds(best)
        );
    }
    fraction_verdicts(s, res);
    if res.config.variants.iter().any(|v| v.regime > 1) {
        regime_verdicts(s, res);
    }
    pausing_verdicts(s, res);
}

/// CYB-AP's data fraction against each baseline (paper figure 6, learning curves).
fn fraction_verdicts(s: &mut String, res: &ExperimentResult) {
    let cfg = &res.config;
    for (bi, want) in res.baselines().into_iter().zip([1.0 / 3.0, 2.0 / 3.0]) {
        let Some(ai) = res.arm("cyb-ap") else { break };
        let fr = res.fractions(ai, bi);
        let got: Vec<f64> = fr.iter().filter_map(|x| x.1).collect();
        let bn = &cfg.variants[bi].name;
        let (here, v) = if got.len() == fr.len() && !got.is_empty() {
            let m = mean_of(&got);
            (format!("{:.3}", Num(m)), holds(m <= want))
        } else {
            (
                format!(
                    "not reached on {} of {} seeds",
                    fr.len() - got.len(),
                    fr.len()
                ),
                "does not hold",
            )
        };
        let _ = writeln!(
            s,
            "| CYB-AP needs a fraction of {bn}'s data to match it (fig. 6, learning curves) | {} | {here} | {v} |",
            if bi == res.baselines()[0] { "1/3" } else { "< 2/3" }
        );
    }
}

/// Which regime of each baseline CYB-AP at 1x matches (paper figure 6, regimes).
fn regime_verdicts(s: &mut String, res: &ExperimentResult) {
    let tbys = format!("tbys-{}", res.max_pauses());
    for (base, want) in [("no-pause", 3), (tbys.as_str(), 2)] {
        if let Some(r) = matched_regime(res, base) {
            let here = if r == 0 {
                format!("below {base} at 1x")
            } else {
                format!("at least {base} at {r}x")
            };
            let _ = writeln!(
                s,
                "| CYB-AP at 1x matches {base} with more data (fig. 6, regimes) | {}x | {here} | {} |",
                want,
                holds(r >= want)
            );
        }
    }
}

/// Calibration and "not lazy" of CYB-AP (paper figures 10 and 7).
fn pausing_verdicts(s: &mut String, res: &ExperimentResult) {
    let k = res.max_pauses();
    let Some(ai) = res.arm("cyb-ap") else {
        return;
    };
    let cal = mean_calibration(res, ai);
    let txt: Vec<String> = cal.iter().map(|c| format!("{:.3}", Num(*c))).collect();
    let _ = writeln!(
        s,
        "| d_k positively correlated with t_(k+1) - t_k, every k (fig. 10) | 0.383, 0.157, 0.271 | {} | {} |",
        txt.join(", "),
        holds(!cal.is_empty() && cal.iter().all(|c| *c > 0.0))
    );
    let lat: Vec<f64> = res
        .runs
        .iter()
        .filter(|r| r.variant == ai)
        .map(|r| r.summary.overall.mean_expected_pauses)
        .collect();
    let m = mean_of(&lat);
    let _ = writeln!(
        s,
        "| CYB-AP does not take every pause (\"not lazy\", fig. 7) | yes | mean E[pauses] {:.3} of K = {k} | {} |",
        Num(m),
        holds(m < k as f64 - 0.05)
    );
}

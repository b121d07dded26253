//! The paper's claims as numbers per seed: paired differences between arms of one
//! seed, data fractions, calibration and latency values, each with its 95% interval
//! and verdict (see `interval`).

use super::interval::{bootstrap_interval, decide, t_interval, Interval, Side, Verdict};
use super::result::{ExperimentResult, RunResult};
use super::stats::spearman;

/// One claim of the paper, measured.
#[derive(Clone, Debug)]
pub struct Claim {
    /// Short key of the claim in `verdicts.csv`.
    pub key: String,
    /// The claim, with the paper's figure.
    pub text: String,
    /// The paper's value.
    pub paper: String,
    /// What each seed's value is.
    pub measure: String,
    /// Decimals to print the values with.
    pub prec: usize,
    pub side: Side,
    /// `(seed, value)` for every seed both arms have.
    pub values: Vec<(u64, f64)>,
    pub interval: Interval,
    pub verdict: Verdict,
    /// Anything the reader needs beside the numbers (e.g. seeds that never reached).
    pub note: String,
}

/// A claim before its numbers.
struct ClaimDraft {
    key: String,
    text: String,
    paper: String,
    measure: String,
}

impl ClaimDraft {
    fn new(key: String, text: String, paper: String, measure: String) -> Self {
        ClaimDraft {
            key,
            text,
            paper,
            measure,
        }
    }
    /// The claim decided by the Student t interval over its seeds' values.
    fn measured(self, prec: usize, side: Side, values: Vec<(u64, f64)>) -> Claim {
        let xs: Vec<f64> = values.iter().map(|v| v.1).collect();
        let interval = t_interval(&xs);
        Claim {
            key: self.key,
            text: self.text,
            paper: self.paper,
            measure: self.measure,
            prec,
            side,
            verdict: decide(&interval, side),
            values,
            interval,
            note: String::new(),
        }
    }
}

/// The final quality of arm `vi`'s run of `seed` on the test split, by the rule of its
/// variant (the number the report's tables compare).
fn final_quality(res: &ExperimentResult, vi: usize, seed: u64) -> Option<f64> {
    Some(res.test_quality(res.run(vi, seed)?))
}

/// Per seed, `f(arm a's run, arm b's run)` for the seeds both have.
fn paired(
    res: &ExperimentResult,
    a: usize,
    b: usize,
    f: impl Fn(&RunResult, &RunResult) -> Option<f64>,
) -> Vec<(u64, f64)> {
    res.config
        .seeds
        .iter()
        .filter_map(|&s| Some((s, f(res.run(a, s)?, res.run(b, s)?)?)))
        .collect()
}

/// Per seed, perplexity of arm `a` minus perplexity of arm `b`.
fn perplexity_differences(res: &ExperimentResult, a: usize, b: usize) -> Vec<(u64, f64)> {
    paired(res, a, b, |x, y| {
        let qa = final_quality(res, a, x.seed)?;
        let qb = final_quality(res, b, y.seed)?;
        Some(qa.exp() - qb.exp())
    })
}

/// Every claim the experiment can decide (CYB-AP against the others, as the paper).
pub fn claims(res: &ExperimentResult) -> Vec<Claim> {
    let Some(ap) = res.arm("cyb-ap") else {
        return Vec::new();
    };
    let k = res.max_pauses();
    let mut out = Vec::new();
    let tbys = format!("tbys-{k}");
    for (other, text) in [
        ("no-pause", "fig. 4"),
        (tbys.as_str(), "fig. 4"),
        ("cyb-va", "fig. 4: AP best, DP close, VA worst"),
        ("cyb-dp", "fig. 4: AP best, DP close, VA worst"),
    ] {
        let Some(oi) = res.arm(other) else { continue };
        out.push(
            ClaimDraft::new(
                format!("perplexity cyb-ap - {other}"),
                format!("CYB-AP perplexity below {other} ({text})"),
                "yes".into(),
                format!("test perplexity cyb-ap − {other}"),
            )
            .measured(4, Side::Below(0.0), perplexity_differences(res, ap, oi)),
        );
    }
    out.extend(fraction_claims(res, ap));
    if res.config.variants.iter().any(|v| v.regime > 1) {
        out.extend(regime_claims(res, ap, &tbys));
    }
    out.extend(calibration_claims(res, ap));
    let lazy = ClaimDraft::new(
        "mean expected pauses cyb-ap".into(),
        "CYB-AP does not take every pause (\"not lazy\", fig. 7)".into(),
        "yes".into(),
        format!("mean E[pauses] of K = {k}"),
    );
    let pauses = res
        .runs_of(ap)
        .map(|r| (r.seed, r.summary.overall.mean_expected_pauses))
        .collect();
    out.push(lazy.measured(3, Side::Below(k as f64), pauses));
    out
}

/// CYB-AP's fraction of each baseline's data (paper figure 6, learning curves). A seed
/// on which CYB-AP never reached the baseline's final quality counts as 1 (its run is as
/// long as the baseline's, so 1 is the least its fraction can be); with such a seed
/// the claim cannot hold (the interval only understates).
fn fraction_claims(res: &ExperimentResult, ap: usize) -> Vec<Claim> {
    let mut out = Vec::new();
    for (bi, (want, paper)) in res
        .baselines()
        .into_iter()
        .zip([(1.0 / 3.0, "1/3"), (2.0 / 3.0, "< 2/3")])
    {
        let bn = &res.config.variants[bi].name;
        let fr = res.fractions(ap, bi);
        let missing: Vec<String> = fr
            .iter()
            .filter(|f| f.1.is_none())
            .map(|f| f.0.to_string())
            .collect();
        let values = fr.iter().map(|&(s, f)| (s, f.unwrap_or(1.0))).collect();
        let mut c = ClaimDraft::new(
            format!("fraction cyb-ap of {bn}"),
            format!("CYB-AP needs a fraction of {bn}'s data to match it (fig. 6, learning curves)"),
            paper.into(),
            format!("fraction of {bn}'s tokens"),
        )
        .measured(3, Side::Below(want), values);
        if !missing.is_empty() {
            c.note = format!("not reached on seed {} (counted as 1)", missing.join(", "));
            if c.verdict == Verdict::Holds {
                c.verdict = Verdict::Inconclusive(c.interval.n);
            }
        }
        out.push(c);
    }
    out
}

/// CYB-AP at 1x against each baseline trained on the paper's multiple of the data
/// (paper figure 6, regimes): per seed, the NLL difference; it holds when CYB-AP is
/// better (the interval below 0), fails when it is worse.
fn regime_claims(res: &ExperimentResult, ap: usize, tbys: &str) -> Vec<Claim> {
    let mut out = Vec::new();
    for (base, want) in [("no-pause", 3), (tbys, 2)] {
        let name = format!("{base} x{want}");
        let draft = ClaimDraft::new(
            format!("quality cyb-ap - {name}"),
            format!("CYB-AP at 1x matches {base} with {want}x the data (fig. 6, regimes)"),
            format!("{want}x"),
            format!("test NLL cyb-ap − {name}"),
        );
        let values = match res.arm(&name) {
            Some(bi) => paired(res, ap, bi, |x, y| {
                Some(final_quality(res, ap, x.seed)? - final_quality(res, bi, y.seed)?)
            }),
            None => Vec::new(),
        };
        let mut c = draft.measured(4, Side::Below(0.0), values);
        if res.arm(&name).is_none() {
            c.note = format!("no {want}x regime in this run (`--regimes`)");
        }
        out.push(c);
    }
    out
}

/// The paper's calibration of CYB-AP on C4 (figure 10), per `k`.
const PAPER_CALIBRATION: [f64; 3] = [0.383, 0.157, 0.271];

/// Calibration of CYB-AP per `k < K` (paper figure 10): over seeds, or with one seed a
/// bootstrap over the validation positions of its run.
fn calibration_claims(res: &ExperimentResult, ap: usize) -> Vec<Claim> {
    let k = res.config.variants[ap].pauses;
    (0..k)
        .map(|kk| {
            let draft = ClaimDraft::new(
                format!("calibration cyb-ap k={kk}"),
                format!(
                    "d_{kk} positively correlated with t_{} - t_{kk} (fig. 10)",
                    kk + 1
                ),
                PAPER_CALIBRATION
                    .get(kk)
                    .map_or("> 0".into(), |p| format!("{p}")),
                format!("Spearman of d_{kk} with t_{} - t_{kk}", kk + 1),
            );
            let values: Vec<(u64, f64)> = res
                .runs_of(ap)
                .filter_map(|r| Some((r.seed, *r.calibration.get(kk)?)))
                .collect();
            let mut c = draft.measured(3, Side::Above(0.0), values);
            if let (1, Some(run)) = (c.values.len(), res.runs_of(ap).next()) {
                let pairs: Vec<(f64, f64)> = run
                    .halting
                    .iter()
                    .map(|p| (p.d[kk], p.t[kk + 1] - p.t[kk]))
                    .collect();
                c.interval = bootstrap_interval(&pairs, run.seed, |xs| {
                    let (d, g): (Vec<f64>, Vec<f64>) = xs.iter().copied().unzip();
                    spearman(&d, &g)
                });
                c.verdict = decide(&c.interval, c.side);
            }
            c
        })
        .collect()
}

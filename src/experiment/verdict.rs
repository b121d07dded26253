//! The verdict table: claim by claim, the paper's value, what was measured per seed,
//! its mean and 95% interval, and the verdict the interval decides.

use super::claims::claims;
use super::interval::{IntervalKind, Side, BOOTSTRAP_RESAMPLES};
use super::result::ExperimentResult;
use crate::number::Num;
use std::fmt::Write as _;

/// How the verdicts are decided, in one sentence (printed above the table).
pub const VERDICT_RULE: &str = "Each verdict is decided per seed, never on means alone: a claim's numbers are per-seed values (for two arms, paired differences of the same seed, whose arms are fine-tuned from one model on one data order; data fractions as the per-seed fractions), their 95% interval is Student's t with n - 1 degrees of freedom over the n seeds, and the claim `holds` only when the whole interval lies on its side of the threshold, `does not hold` when it lies wholly on the other side, and is `inconclusive` otherwise (always with one seed, except calibration, whose one-seed interval is a seeded percentile bootstrap over validation positions).";

/// The verdict table.
pub(super) fn verdict_section(s: &mut String, res: &ExperimentResult) {
    let _ = writeln!(s, "## Verdict\n");
    let _ = writeln!(s, "{VERDICT_RULE} Per-seed values: `verdicts.csv`.\n");
    let _ = writeln!(
        s,
        "| claim (paper) | paper | per seed | threshold | n | mean | 95% interval | verdict |\n|---|---|---|---:|---:|---:|---|---|"
    );
    for c in claims(res) {
        let p = c.prec;
        let threshold = match c.side {
            Side::Below(t) => format!("< {:.p$}", Num(t)),
            Side::Above(t) => format!("> {:.p$}", Num(t)),
        };
        let interval = match c.interval.kind {
            IntervalKind::Seeds => c.interval.text(p),
            IntervalKind::Bootstrap { positions } => format!(
                "{} (bootstrap, {positions} positions, {BOOTSTRAP_RESAMPLES} resamples)",
                c.interval.text(p)
            ),
        };
        let measure = if c.note.is_empty() {
            c.measure.clone()
        } else {
            format!("{}; {}", c.measure, c.note)
        };
        let mean = if c.values.is_empty() {
            "—".to_string()
        } else {
            format!("{:.p$}", Num(c.interval.mean))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {measure} | {threshold} | {} | {mean} | {interval} | {} |",
            c.text, c.paper, c.interval.n, c.verdict
        );
    }
}

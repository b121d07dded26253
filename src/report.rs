//! The end-of-run report: configuration, validation metrics under the greedy pause
//! policy, a histogram of pauses, and where the model pauses most and least.

use crate::data::DataSource;
use crate::metrics::{EvalSummary, GroupStats};
use crate::number::Num;
use std::fmt::Write as _;

/// Free-form lines describing the run (objective, model, data, speed), printed first.
pub struct RunDescription {
    pub lines: Vec<String>,
}

fn bar(frac: f64, width: usize) -> String {
    let cells = (frac.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let full = cells / 8;
    let part = cells % 8;
    let mut s = "█".repeat(full);
    if part > 0 {
        s.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][part - 1]);
    }
    s
}

fn group_row(name: &str, g: &GroupStats) -> String {
    format!(
        "| {name:<12} | {:>6} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>7.4} |",
        g.count,
        Num(g.accuracy),
        Num(g.accuracy_at_0),
        Num(g.mean_pauses),
        Num(g.pause_variance),
        Num(g.mean_expected_pauses),
        Num(g.nll)
    )
}

const GROUP_HEADER: &str = "| group        |  count |    acc |  acc@0 | pauses |    var | E[pau] |     NLL |\n|--------------|-------:|-------:|-------:|-------:|-------:|-------:|--------:|";

/// Render the report as Markdown (readable in a terminal too).
pub fn render(desc: &RunDescription, summary: &EvalSummary, data: &dyn DataSource) -> String {
    render_at(desc, summary, data, 0.5)
}

/// [`render`] of an evaluation whose greedy policy said DK when `p(DK) > threshold`
/// (`cyb eval --threshold`): the report names the threshold it was measured with.
pub fn render_at(
    desc: &RunDescription,
    summary: &EvalSummary,
    data: &dyn DataSource,
    threshold: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# cyb report\n");
    for l in &desc.lines {
        let _ = writeln!(s, "- {l}");
    }
    let o = &summary.overall;
    let _ = writeln!(
        s,
        "\n## Validation ({} positions, greedy policy: DK when p(DK) > {})\n",
        o.count,
        Num(threshold)
    );
    let uniform = (data.vocab() as f64).ln();
    let rows = [
        (
            "marginal NLL (nats/token)",
            format!("{:.4}", Num(o.nll)),
            format!(
                "-log sum_k h_k p(y given an answer at k): the model's own mix of answer steps, the \
                 training and perplexity measure (a uniform guess scores ln V = {:.4})",
                Num(uniform)
            ),
        ),
        (
            "forced-final NLL (step K)",
            format!("{:.4}", Num(summary.nll_final)),
            "-log p(y given an answer at step K): always answer after every pause. A model that \
             learned to stop early trains step K little, so this can exceed ln V"
                .to_string(),
        ),
        (
            "accuracy, greedy policy",
            format!("{:.4}", Num(o.accuracy)),
            format!(
                "argmax answer at the first step with p(DK) <= {} (step K at the latest)",
                Num(threshold)
            ),
        ),
        (
            "accuracy answering at step 0",
            format!("{:.4}", Num(o.accuracy_at_0)),
            "argmax answer without any pause: what the pauses add is the difference".into(),
        ),
        (
            "mean pauses per token (greedy)",
            format!("{:.3}", Num(o.mean_pauses)),
            "pauses the greedy policy took, averaged over positions".into(),
        ),
        (
            "mean E[pauses] (halting distribution)",
            format!("{:.3}", Num(o.mean_expected_pauses)),
            "sum_k k h_k: the pauses the model expects to take, averaged over positions".into(),
        ),
    ];
    let _ = writeln!(s, "| metric | value | what it is |\n|---|---:|---|");
    for (name, value, meaning) in rows {
        let _ = writeln!(s, "| {name} | {value} | {meaning} |");
    }
    let _ = writeln!(
        s,
        "\nIn the tables below: acc = greedy accuracy, acc@0 = accuracy at step 0, pauses = \
         mean greedy pauses, var = their variance, E[pau] = mean E[pauses], NLL = marginal NLL."
    );

    let _ = writeln!(s, "\n## Pauses taken (greedy)\n\n```");
    let total = summary.histogram.iter().sum::<usize>().max(1) as f64;
    for (k, &n) in summary.histogram.iter().enumerate() {
        let f = n as f64 / total;
        let _ = writeln!(
            s,
            "{k:>2} pauses | {:<40} {:5.1}% ({n})",
            bar(f, 40),
            Num(100.0 * f)
        );
    }
    let _ = writeln!(s, "```");

    let _ = writeln!(
        s,
        "\n## By difficulty class (most pauses first)\n\n{GROUP_HEADER}"
    );
    let mut classes: Vec<_> = summary
        .by_class
        .iter()
        .filter(|(_, g)| g.count > 0)
        .collect();
    classes.sort_by(|a, b| {
        b.1.mean_pauses
            .total_cmp(&a.1.mean_pauses)
            .then(a.0.cmp(&b.0))
    });
    for (name, g) in classes {
        let _ = writeln!(s, "{}", group_row(name, g));
    }

    // Tokens with enough occurrences for a mean to mean something.
    let mut tokens: Vec<_> = summary
        .by_token
        .iter()
        .filter(|(_, g)| g.count >= 5)
        .collect();
    tokens.sort_by(|a, b| {
        b.1.mean_pauses
            .total_cmp(&a.1.mean_pauses)
            .then(a.0.cmp(&b.0))
    });
    let shown = 8.min(tokens.len() / 2).max(1.min(tokens.len()));
    let _ = writeln!(s, "\n## Target tokens that pause most\n\n{GROUP_HEADER}");
    for (tok, g) in tokens.iter().take(shown) {
        let _ = writeln!(s, "{}", group_row(&data.token_name(*tok), g));
    }
    let _ = writeln!(s, "\n## Target tokens that pause least\n\n{GROUP_HEADER}");
    for (tok, g) in tokens.iter().rev().take(shown) {
        let _ = writeln!(s, "{}", group_row(&data.token_name(*tok), g));
    }
    s
}

/// Every target token with its pause statistics, most pauses first (for
/// `cyb eval --pauses-by-token`): which tokens pause, which never do, which vary.
pub fn render_by_token(summary: &EvalSummary, data: &dyn DataSource) -> String {
    let mut s = format!("## Pauses by target token (most first)\n\n{GROUP_HEADER}\n");
    let mut tokens: Vec<_> = summary.by_token.iter().collect();
    tokens.sort_by(|a, b| {
        b.1.mean_pauses
            .total_cmp(&a.1.mean_pauses)
            .then(a.0.cmp(&b.0))
    });
    for (tok, g) in tokens {
        let _ = writeln!(s, "{}", group_row(&data.token_name(*tok), g));
    }
    s
}

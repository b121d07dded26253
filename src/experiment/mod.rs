//! `cyb experiment`: the published claims, measured side by side.
//!
//! Claim 1 (data efficiency): a CYB model reaches the validation quality of a
//! no-pause model with about a third of the training data, and that of a
//! pauses + cross-entropy model with about half. Claim 2 (where it pauses): pause
//! counts follow token difficulty, and pausing improves the answer.
//!
//! Every variant trains on the same data stream, model size, schedule and seeds; no
//! variant gets tuning the others do not (with `lrs`, every arm gets the same rates
//! and keeps its best). Quality is NLL: `marginal` for CYB runs (the model's own
//! halting), the forced final-step NLL for the baselines (what they were trained to
//! minimise; for `K = 0` the two are equal). Learning curves and the choice of a rate
//! are measured on validation, the final numbers the report compares on the test split.
//!
//! The files: `protocol` the arms and the training protocol, `sweep` the learning-rate
//! sweep, `result` what a run measured, `measures` the paper's measures on curves and
//! positions, `stats` plain statistics, `claims` the paper's claims per seed,
//! `interval` their 95% intervals and verdicts, `csv` the CSV files, `report` the
//! Markdown report, `verdict` its verdict table, `plot` the figures.

mod claims;
mod csv;
mod interval;
mod measures;
mod plot;
mod protocol;
mod report;
mod result;
mod stats;
mod sweep;
mod verdict;

pub use claims::{claims, Claim};
pub use csv::{
    calibration_csv, csv_files, curves_csv, fractions_csv, halting_csv, latency_csv, ratios_csv,
    regimes_csv, tokens_csv, verdicts_csv,
};
pub use interval::{
    bootstrap_interval, decide, t_975, t_interval, Interval, IntervalKind, Side, Verdict,
    BOOTSTRAP_RESAMPLES,
};
pub use measures::{
    calibration, data_fraction, efficiency_ratio, mean_halting, token_pause_stats, tokens_to_reach,
};
pub use plot::plot_experiment;
pub use protocol::{
    arm_config, default_variants, extend_depth, paper_grid, regime_variants, run_experiment,
    variants, ExperimentConfig, Variant,
};
pub use report::render_report;
pub use result::{ExperimentResult, RunResult};
pub use stats::{pearson, quantile, ranks, spearman};
pub use sweep::{
    best_rates, diverged_at, mean_quality, sweep_csv, test_csv, SweepPoint, PAPER_MIN_LR_RATIO,
};
pub use verdict::VERDICT_RULE;

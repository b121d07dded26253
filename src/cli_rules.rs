//! The rules of the `cyb` command line that derive cannot state (a module of
//! src/main.rs): per-command defaults and help of shared flags, bad values explained
//! with a value that works, flags given where they cannot take effect, repeated list
//! values, environment variables, and a checkpoint used on other data than its own.

use super::{Cli, RunArgs, DEFAULT_EXPERIMENT_STEPS, DEFAULT_TRAIN_STEPS};
use clap::{ArgMatches, CommandFactory};
use cyb::config::ModelConfig;
use cyb::data::DataSource;
use cyb::number::Num;
use cyb::{checkpoint, limits, CybError, Result};
use std::collections::HashMap;
use std::path::Path;

/// The `cyb` command line: the derived parser plus what derive cannot say. Each
/// command's own default and help for the flags it shares (`--steps`, `--pauses`), and
/// every flag's value read as a value even when it starts with `-`, so that
/// `--steps -1` is an invalid value of `--steps` (named, with a value that works), not
/// an "unexpected argument '-1'", and `--lr -1e-3` reaches the range check.
pub(crate) fn cli() -> clap::Command {
    Cli::command()
        .mut_subcommands(|c| {
            c.mut_args(|a| {
                if a.is_allow_negative_numbers_set() {
                    // The real-valued flags: clap's number test knows no `-1e-3`.
                    a.allow_hyphen_values(true)
                } else if a.get_action().takes_values() {
                    a.allow_negative_numbers(true)
                } else {
                    a
                }
            })
        })
        .mut_subcommand("train", |c| {
            c.mut_arg("steps", |a| {
                a.default_value(DEFAULT_TRAIN_STEPS.to_string())
            })
        })
        .mut_subcommand("experiment", |c| {
            c.mut_arg("steps", |a| {
                a.default_value(DEFAULT_EXPERIMENT_STEPS.to_string())
                    .help("Optimizer steps of every arm (fine-tuning after --pretrain)")
            })
            .mut_arg("lr", |a| {
                a.help(
                    "Peak learning rate of every arm: linear warm-up, then cosine decay to a \
                     hundredth of it (the paper's schedule; the no-pause pretraining decays \
                     to a tenth, as `train`). --lrs sweeps several",
                )
            })
            .mut_arg("pauses", |a| {
                a.help(
                    "Pause steps K of the pause arms, at least 1 (the experiment trains its \
                     own no-pause baseline)",
                )
            })
        })
}

/// Adds to a clap error about a bad value the flag's value that works: its default,
/// or an example where it has none.
pub(crate) fn explain(mut err: clap::Error, cmd: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches("--");
    let invoked = std::env::args().nth(1).unwrap_or_default();
    let found = cmd
        .get_subcommands()
        .filter(|c| c.get_name() == invoked)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long));
    let Some(found) = found else { return err };
    let defaults: Vec<String> = found
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let example = if defaults.is_empty() {
        match found.get_value_names().and_then(|v| v.first()) {
            Some(name) => format!("see `cyb {invoked} --help` for --{long} {name}"),
            None => return err,
        }
    } else {
        format!("--{long} {} (the default)", defaults.join(","))
    };
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![format!("a value that works: {example}").into()]),
    );
    err
}

/// The flags given on the command line (not filled in by a default) of the chosen
/// command, by clap id (`top_k` for `--top-k`).
pub(crate) struct Given(Vec<String>);

impl Given {
    pub(crate) fn new(matches: &ArgMatches) -> Self {
        let ids = match matches.subcommand() {
            Some((_, sub)) => sub
                .ids()
                .filter(|id| {
                    sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| id.as_str().to_string())
                .collect(),
            None => Vec::new(),
        };
        Given(ids)
    }

    pub(crate) fn has(&self, id: &str) -> bool {
        self.0.iter().any(|g| g == id)
    }

    /// A flag given where it cannot take effect is an error saying why, never silently
    /// ignored: each rule is (clap id, the flag cannot take effect, why).
    pub(crate) fn refuse(&self, rules: &[(&str, bool, String)]) -> Result<()> {
        match rules
            .iter()
            .find(|(id, ignored, _)| *ignored && self.has(id))
        {
            Some((id, _, why)) => Err(CybError::Param(format!(
                "{} cannot take effect: {why}",
                flag(id)
            ))),
            None => Ok(()),
        }
    }
}

/// `--top-k` for the clap id `top_k`.
fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// The environment variables the program reads, checked before any work (a bad value
/// is an error, not a silent default).
pub(crate) fn check_environment() -> Result<()> {
    limits::progress_secs()?;
    cyb::launch::timeout_from_env()?;
    limits::memory_limit().map(|_| ())
}

/// A list flag (`--seeds 1,2,3`) without repeats: a repeated seed would be a run
/// counted twice (a spread of 0 from one run).
pub(crate) fn no_repeats<T: PartialEq + std::fmt::Display>(flag: &str, xs: &[T]) -> Result<()> {
    match xs.iter().enumerate().find(|(i, x)| xs[..*i].contains(x)) {
        Some((_, x)) => Err(CybError::Param(format!(
            "{flag}: {x} is given twice; every value counts once (e.g. {flag} 1,2,3)"
        ))),
        None => Ok(()),
    }
}

/// A checkpoint trained on other data than `data` is refused (where the checkpoint
/// records its data: older ones do not).
pub(crate) fn same_data(
    path: &Path,
    meta: &HashMap<String, String>,
    data: &dyn DataSource,
) -> Result<()> {
    match meta.get(checkpoint::DATA_KEY) {
        Some(trained) if *trained != data.identity() => Err(CybError::Data(format!(
            "{} was trained on {trained}, but this run's data is {}: give the --task or \
             --text it was trained on (or train a new model)",
            path.display(),
            data.identity()
        ))),
        _ => Ok(()),
    }
}

/// The loaded model's shape flags: a given `--layers`, `--d-model`, `--heads` that
/// differs from the model's, or a `--ctx` beyond its context, cannot take effect.
pub(crate) fn shape_rules(run: &RunArgs, m: &ModelConfig) -> Vec<(&'static str, bool, String)> {
    let keeps = |what: &str, v: usize| {
        format!("the loaded model has {what} {v} and keeps its shape (leave the flag out)")
    };
    vec![
        (
            "layers",
            run.layers != m.n_layer,
            keeps("layers", m.n_layer),
        ),
        (
            "d_model",
            run.d_model != m.d_model,
            keeps("d_model", m.d_model),
        ),
        ("heads", run.heads != m.n_head, keeps("heads", m.n_head)),
        (
            "ctx",
            run.ctx > m.t_max,
            format!(
                "the loaded model's context is {} positions (use at most that)",
                m.t_max
            ),
        ),
        (
            "dk_prior",
            true,
            format!(
                "a loaded model keeps its own DK bias ({:.4})",
                Num(m.dk_bias)
            ),
        ),
    ]
}

//! Tests of the `cyb` binary (a module of src/main.rs, compiled only for its tests):
//! README.md and `--help` agree with the parser. Generic over the commands and flags,
//! so that a command or flag added later is covered as well.

use super::cli_rules::cli;
use super::{DEFAULT_EXPERIMENT_STEPS, DEFAULT_TRAIN_STEPS};
use clap::Command;

const README: &str = include_str!("../README.md");

/// Flags of the tools README.md shows besides `cyb` (cargo, nvcc, srun): not `cyb` flags.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    "--all-features",
    "--all-targets",
    "--bench",
    "--bin",
    "--compress-mode",
    "--doc",
    "--timings",
    "--example",
    "--features",
    "--lib",
    "--no-default-features",
    "--path",
    "--release",
    "--test",
    "--workspace",
    // srun (README "Data parallel")
    "--nodes",
    "--ntasks-per-node",
    "--gpus-per-node",
    "--kill-on-bad-exit",
    "--gpus-per-task",
    "--gpu-bind",
];

/// The long flags of `cmd` (with `--help` and `--version`).
fn flags(cmd: &Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    out.extend(["--help".to_string(), "--version".to_string()]);
    out
}

/// Every `--flag` in `text` (letters, digits and dashes after the two dashes).
fn flags_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let tail = &rest[i + 2..];
        let n = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        let name = tail[..n].trim_end_matches('-');
        let starts_word = i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric());
        if starts_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            found.push(format!("--{name}"));
        }
        rest = &tail[n..];
    }
    found
}

/// The `cyb` command a README line runs (`cyb train ...`, `cargo run --release --
/// train ...`), if any.
fn command_of_line<'a>(line: &str, names: &[&'a str]) -> Option<&'a str> {
    // Only command lines (`cyb train ...`, `cargo run ... -- train ...`), not prose that
    // names a command beside other commands' flags.
    let trimmed = line.trim_start();
    if !(trimmed.starts_with("cyb ") || trimmed.starts_with("cargo run")) {
        return None;
    }
    names
        .iter()
        .copied()
        .find(|name| line.contains(&format!("cyb {name}")) || line.contains(&format!("-- {name}")))
}

#[test]
fn every_flag_readme_names_exists_in_help() {
    let cmd = cli();
    let subs: Vec<&Command> = cmd.get_subcommands().collect();
    let names: Vec<&str> = subs.iter().map(|c| c.get_name()).collect();
    let all: Vec<String> = subs.iter().flat_map(|c| flags(c)).collect();
    let mut current: Option<&str> = None;
    let mut checked = 0;
    for (no, line) in README.lines().enumerate() {
        // A synopsis continues on indented lines that start with `[`.
        let continues = line.starts_with(' ') && line.trim_start().starts_with('[');
        current = match command_of_line(line, &names) {
            Some(name) => Some(name),
            None if continues => current,
            None => None,
        };
        for flag in flags_in(line) {
            if OTHER_TOOLS_FLAGS.contains(&flag.as_str()) {
                continue;
            }
            checked += 1;
            match current {
                // On a line that runs a command, the flag belongs to that command
                // (unless a cargo flag before ` -- `).
                Some(name)
                    if !line.split(" -- ").next().is_some_and(|c| {
                        c.contains("cargo")
                            && c.contains(&flag)
                            && !line.contains(&format!("cyb {name}"))
                    }) =>
                {
                    let sub = subs.iter().find(|c| c.get_name() == name).unwrap();
                    assert!(
                        flags(sub).contains(&flag),
                        "README.md line {}: `{flag}` is not a flag of `cyb {name}`:\n{line}",
                        no + 1
                    );
                }
                _ => assert!(
                    all.contains(&flag),
                    "README.md line {}: `{flag}` is no flag of any cyb command:\n{line}",
                    no + 1
                ),
            }
        }
    }
    assert!(checked > 50, "only {checked} flags found in README.md");
}

/// README's synopsis shows a flag with its default as `[--flag VALUE]`: a literal value
/// there (not a placeholder like `N`, not a choice like `exp|linear`) is the parser's
/// default of that flag for that command.
#[test]
fn defaults_in_the_readme_synopsis_are_the_parsers() {
    let cmd = cli();
    let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
    let mut current: Option<&str> = None;
    let mut checked = 0;
    for line in README.lines() {
        let continues = line.starts_with(' ') && line.trim_start().starts_with('[');
        current = match command_of_line(line, &names) {
            Some(name) => Some(name),
            None if continues => current,
            None => None,
        };
        let Some(name) = current else { continue };
        let sub = cmd.find_subcommand(name).unwrap();
        for part in line.split("[--").skip(1) {
            let Some((long, value)) = part.split_once(' ') else {
                continue;
            };
            let value = value.split(']').next().unwrap_or("");
            let literal = !value.is_empty()
                && !value.contains(['|', ' ', '['])
                && !value.contains("..")
                && !value.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            let arg = sub.get_arguments().find(|a| a.get_long() == Some(long));
            let (Some(arg), true) = (arg, literal) else {
                continue;
            };
            let parser: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if parser.is_empty() {
                continue;
            }
            checked += 1;
            assert_eq!(
                value,
                parser.join(","),
                "README shows `[--{long} {value}]` for `cyb {name}`; the parser's default is {parser:?}"
            );
        }
    }
    assert!(checked >= 5, "only {checked} synopsis defaults found");
}

/// The text after each "default" in `help`: `[default: X]`, `(default: X)`, `default X`.
fn stated_defaults(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = help.to_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("default") {
        let start = from + i + "default".len();
        let rest = help[start..].trim_start_matches([':', ' ']);
        let end = rest.find([']', ')', ';']).unwrap_or(rest.len());
        out.push(rest[..end].trim().to_string());
        from = start;
    }
    out
}

#[test]
fn every_default_help_states_is_the_parsers() {
    let cmd = cli();
    let mut checked = 0;
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            let help = [arg.get_help(), arg.get_long_help()]
                .into_iter()
                .flatten()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            let parser: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let name = format!("cyb {} --{}", sub.get_name(), arg.get_id());
            for stated in stated_defaults(&help) {
                checked += 1;
                // A bare value (`600`) must be the parser's own default; a description
                // ("the model's k_max", "16, or as many as fit") is for flags whose
                // default depends on something else and so has none in the parser.
                let bare = !stated.is_empty() && !stated.contains(' ');
                if parser.is_empty() {
                    assert!(
                        !bare,
                        "{name}: help states the default {stated:?} but the parser has none \
                         (give the flag that default in the parser)"
                    );
                } else {
                    assert!(
                        stated.starts_with(&parser.join(",")),
                        "{name}: help states the default {stated:?}, the parser uses {parser:?}"
                    );
                }
            }
        }
    }
    assert!(checked >= 5, "only {checked} defaults stated in --help");
}

/// The defaults that depend on the command are the constants the commands use, and a
/// parse with no flags gets them.
#[test]
fn each_command_parses_its_own_defaults() {
    for (name, steps) in [
        ("train", DEFAULT_TRAIN_STEPS),
        ("experiment", DEFAULT_EXPERIMENT_STEPS),
    ] {
        let m = cli().try_get_matches_from(["cyb", name]).unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(sub.get_one::<usize>("steps"), Some(&steps), "{name}");
        let mut c = cli();
        let help = c
            .find_subcommand_mut(name)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains(&format!("[default: {steps}]")), "{help}");
    }
}

/// The defaults error messages name as "a value that works" are the parser's.
#[test]
fn defaults_named_in_messages_are_the_parsers() {
    let cmd = cli();
    let default = |sub: &str, id: &str| -> String {
        let s = cmd.find_subcommand(sub).unwrap();
        let a = s.get_arguments().find(|a| a.get_id() == id).unwrap();
        a.get_default_values()[0].to_string_lossy().into_owned()
    };
    let msg = |r: cyb::Result<()>| r.unwrap_err().to_string();
    let threshold = msg(cyb::limits::threshold(2.0));
    assert!(threshold.contains(&format!(
        "the default {} works",
        default("eval", "threshold")
    )));
    assert_eq!(
        default("eval", "threshold"),
        default("generate", "threshold")
    );
    let sample = |temperature, top_p| cyb::decode::Policy::Sample {
        temperature,
        top_k: 0,
        top_p,
    };
    for (e, sub, id) in [
        (msg(sample(-1.0, 1.0).check()), "generate", "temperature"),
        (msg(sample(1.0, 2.0).check()), "generate", "top_p"),
        (
            msg(cyb::objective::dk_bias_from_prior(2.0, 5).map(|_| ())),
            "train",
            "dk_prior",
        ),
    ] {
        assert!(
            e.contains(&format!("the default {} works", default(sub, id))),
            "{e}"
        );
    }
    let wd = msg(cyb::limits::check_schedule(3e-3, 1e30, 1.0, 1, 1, 1, 1));
    assert!(wd.contains(&format!(
        "the default {} works",
        default("train", "weight_decay")
    )));
    for (objective, id) in [
        (cyb::Objective::va_default(), "beta"),
        (cyb::Objective::dp_default(), "alpha"),
    ] {
        let bad = match objective {
            cyb::Objective::Va {
                rho,
                gamma,
                discount,
                ..
            } => cyb::Objective::Va {
                rho,
                beta: 1e308,
                gamma,
                discount,
            },
            cyb::Objective::Dp {
                rho,
                gamma,
                discount,
                ..
            } => cyb::Objective::Dp {
                rho,
                alpha: 1e308,
                gamma,
                discount,
            },
            other => other,
        };
        let e = bad.resolve(3).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("the default is {}", default("train", id))),
            "{e}"
        );
    }
}

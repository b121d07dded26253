//! The `cyb` command end to end on a tiny run: train, save, eval, generate, and the
//! clear errors a newcomer may hit.

use cyb::checkpoint;
use cyb::config::PauseAttention;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn cyb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cyb"))
        .args(args)
        .output()
        .expect("cyb runs")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TINY: &[&str] = &[
    "--steps",
    "6",
    "--batch",
    "2",
    "--ctx",
    "16",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--eval-batches",
    "1",
];

/// `o` failed with `needle` in its error output.
/// Runs `cyb` with `args` and the tiny settings, expects success, returns stdout.
fn ok_tiny(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend_from_slice(TINY);
    let o = cyb(&all);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails_with(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success() && e.contains(needle),
        "'{needle}' not in: {e}"
    );
}

/// `cyb train` on the [`TINY`] shape with `extra` flags.
fn train_tiny(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    cyb(&args)
}

#[test]
fn train_save_eval_generate() {
    let dir = tmpdir("ok");
    let ckpt = dir.join("m.safetensors");
    let out = dir.join("report");
    let mut args = vec![
        "train",
        "--pauses",
        "2",
        "--save",
        s(&ckpt),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(TINY);
    let o = cyb(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "marginal NLL",
        "accuracy, greedy policy",
        "mean pauses per token",
        "Pauses taken",
        "By difficulty class",
        "sum/4",
        "pause most",
        "pause least",
        "what it is",
        "can exceed ln V",
        "acc@0 = accuracy at step 0",
    ] {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
    // The learning curve has points by default (a tenth of the steps, at least 1).
    let curve = std::fs::read_to_string(out.join("curve.csv")).unwrap();
    assert_eq!(curve.lines().count(), 1 + 6, "{curve}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .trim(),
        report.trim()
    );
    assert!(std::fs::read(out.join("pauses.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    // A new model gets the DK bias of the default prior psi = 0.9 in its config.
    let vocab = cyb::data::task_by_name("modsum").unwrap().vocab() as f64;
    let saved = cyb::checkpoint::load(&ckpt).unwrap();
    let want = 9f64.ln() + vocab.ln();
    // Computed by the binary with the same f64 formula and stored as an f64 in JSON:
    // a few ulps of ~4.6 at most.
    approx::assert_abs_diff_eq!(saved.config.dk_bias, want, epsilon = 1e-12);

    let o = cyb(&[
        "eval",
        "--load",
        s(&ckpt),
        "--eval-batches",
        "2",
        "--pauses-by-token",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Pauses by target token"));
    // The report names the threshold it was measured with.
    for threshold in ["0.5", "0.25", "1"] {
        let o = cyb(&[
            "eval",
            "--load",
            s(&ckpt),
            "--eval-batches",
            "1",
            "--threshold",
            threshold,
        ]);
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success()
                && report.contains(&format!("DK when p(DK) > {threshold})"))
                && report.contains(&format!("p(DK) <= {threshold} (step K")),
            "{report}"
        );
    }

    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "[L2] 3 4 =",
        "--max-new",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let toks = doc["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 5);
    // Every step's p(DK) is reported (shared mode runs them all), and E[pauses] in [0, K].
    assert!(toks.iter().all(|t| t["pauses"].as_u64().unwrap() <= 2
        && t["p_dk"].as_array().unwrap().len() == 3
        && (0.0..=2.0).contains(&t["expected_pauses"].as_f64().unwrap())));
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "[L1] 2 =",
        "--max-new",
        "3",
        "--policy",
        "forced",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = String::from_utf8_lossy(&o.stdout);
    assert!(plain.contains("{2}"), "plain pause markers when not a TTY");
    assert!(
        !plain.contains(" {2}"),
        "the mark follows its token, not the space: {plain}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn byte_level_text_trains_and_generates() {
    let dir = tmpdir("text");
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat. the dog sat on the log. ".repeat(30),
    )
    .unwrap();
    let ckpt = dir.join("t.safetensors");
    let mut args = vec![
        "train",
        "--text",
        s(&text),
        "--pauses",
        "1",
        "--pause-attention",
        "private",
        "--save",
        s(&ckpt),
    ];
    args.extend_from_slice(TINY);
    let o = cyb(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        checkpoint::load(&ckpt).unwrap().config.pause_attention,
        PauseAttention::Private
    );
    assert!(
        report.contains("V = 256") && report.contains("letter"),
        "{report}"
    );
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "the c",
        "--max-new",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(doc["pause_attention"], "private");
    assert!(doc["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["expected_pauses"].as_f64().is_some()));
    // The generated bytes are decoded as a whole (invalid sequences only as U+FFFD).
    let bytes: Vec<u8> = doc["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u8)
        .collect();
    assert_eq!(doc["text"], String::from_utf8_lossy(&bytes).as_ref());
    let o = cyb(&[
        "eval",
        "--load",
        s(&ckpt),
        "--text",
        s(&text),
        "--eval-batches",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_fail_clearly() {
    let dir = tmpdir("bad");
    let ckpt = dir.join("m.safetensors");
    let mut args = vec!["train", "--pauses", "1", "--save", s(&ckpt)];
    args.extend_from_slice(TINY);
    assert!(cyb(&args).status.success());

    let check = |args: &[&str], needle: &str| {
        let o = cyb(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: '{needle}' not in: {e}");
    };
    // Without feature `cuda` the GPU path is refused; with it but no device, the error
    // names the missing device (with a device, tests/gpu_model.rs covers training).
    #[cfg(not(feature = "cuda"))]
    check(
        &["train", "--device", "cuda", "--steps", "1"],
        "--features cuda",
    );
    #[cfg(feature = "cuda")]
    if !cyb::gpu::device_available() {
        check(
            &["train", "--device", "cuda", "--steps", "1"],
            "no CUDA device",
        );
    }
    check(
        &["train", "--pause-attention", "both", "--steps", "1"],
        "`shared` or `private`, got `both`",
    );
    // The CPU reference computes in f32 only: bf16 there is refused, not ignored.
    check(
        &["train", "--precision", "bf16", "--steps", "1"],
        "--precision bf16 needs --device cuda",
    );
    check(
        &["experiment", "--precision", "bf16", "--steps", "1"],
        "--precision bf16 needs --device cuda",
    );
    check(&["train", "--precision", "fp16", "--steps", "1"], "fp16");
    // f32 on the CPU is what it always runs: accepted.
    ok_tiny(&["train", "--precision", "f32"]);
    check(
        &["eval", "--load", s(&dir.join("missing.safetensors"))],
        "missing.safetensors",
    );
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    check(&["eval", "--load", s(&corrupt)], "corrupt.safetensors");
    check(&["eval", "--load", s(&ckpt), "--pauses", "3"], "K = 3");
    check(&["eval", "--load", s(&ckpt), "--ctx", "99"], "t_max");
    check(
        &["generate", "--load", s(&ckpt), "--prompt", "[L1] 7 ="],
        "not a token",
    );
    check(
        &["generate", "--load", s(&ckpt), "--prompt", &"1 ".repeat(20)],
        "t_max",
    );
    check(
        &[
            "generate",
            "--load",
            s(&ckpt),
            "--prompt",
            "1",
            "--pauses",
            "2",
        ],
        "K = 2",
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    check(&["train", "--text", s(&empty), "--steps", "1"], "empty");
    check(&["train", "--task", "nope", "--steps", "1"], "unknown task");
    // A failed save never leaves a file behind.
    let blocked = dir.join("no-such-dir").join("m.safetensors");
    let mut args = vec!["train", "--save", s(&blocked)];
    args.extend_from_slice(TINY);
    assert!(!cyb(&args).status.success());
    assert!(!blocked.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every bad objective parameter is an error naming it, before any data is read (the
/// text file does not exist) or any model built.
#[test]
fn bad_objective_parameters_fail_before_any_work() {
    let cases: &[(&[&str], &str)] = &[
        (&["--omega", "0:0:1"], "exactly K+1 = 4"),
        (&["--omega", "1:-1:1:1"], ">= 0"),
        (&["--omega", "0:0:0:0"], "all zero"),
        (&["--omega", "1:x:1:1"], "cannot read 'x'"),
        (&["--gamma", "0"], "(0, 1]"),
        (&["--gamma", "1.2"], "(0, 1]"),
        (&["--gamma", "0.6", "--discount", "linear"], "step 3"),
        (&["--objective", "va", "--rho", "0:1:1:1"], "rho"),
        (&["--objective", "dp", "--rho", "1:1"], "exactly K+1 = 4"),
        (&["--objective", "va", "--beta", "NaN"], "beta"),
        (&["--objective", "dp", "--alpha", "inf"], "alpha"),
        (&["--dk-prior", "1"], "[0, 1)"),
        (
            &["--objective", "dp", "--omega", "4:1:1:4"],
            "--omega (ap) is not",
        ),
        (
            &["--rho", "4:1:1:4"],
            "--rho (va and dp) is not a parameter of --objective ap",
        ),
        (&["--objective", "ce_final", "--rho", "1:1:1:1"], "ce_final"),
        (&["--dk-prior", "-0.5"], "[0, 1)"),
        (&["--objective", "dp", "--alpha", "-1"], "alpha"),
        (&["--omega", "-1:1:1:1"], ">= 0"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--text", "/nonexistent/cyb-corpus.txt"];
        args.extend_from_slice(extra);
        let o = cyb(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(
            e.contains(needle) && !e.contains("cyb-corpus"),
            "{args:?}: '{needle}' not in (or the data was read first): {e}"
        );
    }
    // experiment checks all three CYB objectives the same way.
    let o = cyb(&[
        "experiment",
        "--text",
        "/nonexistent/cyb-corpus.txt",
        "--rho",
        "0:1:1:1",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("va"),
        "{}",
        stderr(&o)
    );
}

/// `--help` shows the SPEC v2 parameters and none of v1's.
#[test]
fn help_lists_the_v2_parameters_only() {
    for cmd in ["train", "experiment"] {
        let o = cyb(&[cmd, "--help"]);
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout);
        for flag in [
            "--omega",
            "--gamma",
            "--discount",
            "--rho",
            "--beta",
            "--alpha",
            "--dk-prior",
        ] {
            assert!(help.contains(flag), "{cmd} --help lacks {flag}:\n{help}");
        }
        for gone in ["--lambda", "--budget", "--prior-ratio", "interruption"] {
            assert!(!help.contains(gone), "{cmd} --help still has {gone}");
        }
    }
}

/// Every nonsense number is one clear line and a non-zero exit before any data is read
/// (the text file does not exist) or any model built; negative values parse and reach
/// the range check.
#[test]
fn nonsense_numbers_fail_before_any_work() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("train", &["--lr", "-1"], "--lr = -1"),
        ("train", &["--lr", "0"], "--lr = 0"),
        ("train", &["--lr", "NaN"], "--lr = NaN"),
        ("train", &["--lr", "inf"], "--lr = inf"),
        (
            "train",
            &["--weight-decay", "-0.1"],
            "--weight-decay = -0.1",
        ),
        ("train", &["--weight-decay", "nan"], "--weight-decay = NaN"),
        ("train", &["--grad-clip", "0"], "--grad-clip = 0"),
        ("train", &["--grad-clip", "-1"], "--grad-clip = -1"),
        ("train", &["--steps", "0"], "--steps = 0"),
        ("train", &["--batch", "0"], "--batch = 0"),
        ("train", &["--ctx", "0"], "--ctx = 0"),
        ("train", &["--eval-batches", "0"], "--eval-batches = 0"),
        (
            "train",
            &["--steps", "5", "--eval-every", "10"],
            "--eval-every = 10",
        ),
        ("train", &["--gamma", "-0.5"], "(0, 1]"),
        ("train", &["--objective", "va", "--beta", "-1"], "beta"),
        ("experiment", &["--pauses", "0"], "K >= 1"),
        ("experiment", &["--steps", "0"], "--steps = 0"),
        ("experiment", &["--lr", "-1"], "--lr = -1"),
        ("experiment", &["--alpha", "nan"], "alpha"),
    ];
    for (cmd, extra, needle) in cases {
        let mut args = vec![*cmd, "--text", "/nonexistent/cyb-corpus.txt"];
        args.extend_from_slice(extra);
        let o = cyb(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(
            e.contains(needle) && !e.contains("cyb-corpus") && e.trim().lines().count() == 1,
            "{args:?}: not one line with '{needle}' before the data is read: {e}"
        );
    }
    // eval and generate check their numbers before reading the checkpoint.
    let missing = "/nonexistent/cyb-model.safetensors";
    let cases: &[(&[&str], &str)] = &[
        (&["eval", "--threshold", "2"], "[0, 1]"),
        (&["eval", "--threshold", "NaN"], "[0, 1]"),
        (&["eval", "--threshold", "-0.5"], "[0, 1]"),
        (&["eval", "--eval-batches", "0"], "--eval-batches = 0"),
        (&["eval", "--batch", "0"], "--batch = 0"),
        (&["eval", "--ctx", "0"], "--ctx = 0"),
        (
            &["generate", "--prompt", "1", "--threshold", "-1"],
            "[0, 1]",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--load", missing]);
        let o = cyb(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(
            e.contains(needle) && !e.contains("cyb-model"),
            "{args:?}: '{needle}' not in (or the checkpoint was read first): {e}"
        );
    }
}

/// Shapes no machine can hold are refused with the estimate and the limit, never a
/// capacity overflow or an allocation abort.
#[test]
fn huge_sizes_are_refused_with_the_estimate() {
    let cases: &[&[&str]] = &[
        &["--ctx", "100000"],
        &["--pauses", "1000", "--ctx", "4096"],
        &["--batch", "1000000000000"],
        &["--steps", "18446744073709551615"],
        &["--d-model", "1000000"],
    ];
    for extra in cases {
        for cmd in ["train", "experiment"] {
            let mut args = vec![cmd];
            args.extend_from_slice(extra);
            let o = cyb(&args);
            let e = stderr(&o);
            assert!(
                o.status.code() == Some(1)
                    && e.contains("needs about")
                    && e.contains("available")
                    && !e.contains("panicked"),
                "{args:?}: {e}"
            );
        }
    }
    // A limit below what a tiny run needs refuses it too (the limit can be set).
    let o = Command::new(env!("CARGO_BIN_EXE_cyb"))
        .arg("train")
        .args(TINY)
        .env("CYB_MEMORY_LIMIT", "1000")
        .output()
        .unwrap();
    fails_with(&o, "1000.0 B available");
}

/// Bad output paths fail before training; the atomic save follows symbolic links
/// and refuses devices and folders; a non-finite weight is an error naming its tensor.
#[test]
fn output_paths_and_checkpoints_are_checked_first() {
    let dir = tmpdir("paths");
    let train_with = |extra: &[&str]| train_tiny(&[&["--pauses", "1"], extra].concat());
    let refused = |extra: &[&str], needle: &str| {
        let o = train_with(extra);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains(needle) && !e.contains("training "),
            "{extra:?}: '{needle}' not in (or training started): {e}"
        );
    };
    refused(&["--save", s(&dir)], "is a directory");
    refused(
        &["--save", s(&dir.join("no-such-dir").join("m.safetensors"))],
        "does not exist",
    );
    refused(&["--save", "/dev/null"], "not a regular file");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    refused(&["--out", s(&file)], "not a directory");
    refused(&["--out", s(&file.join("sub"))], "a-file");
    let o = cyb(&["experiment", "--steps", "1", "--out", s(&file)]);
    fails_with(&o, "not a directory");

    // Saving onto a symbolic link replaces the link's target, and the link stays.
    #[cfg(unix)]
    {
        let target = dir.join("target.safetensors");
        std::fs::write(&target, "old").unwrap();
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let o = train_with(&["--save", s(&link)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        cyb::checkpoint::load(&target).unwrap();
    }

    // A checkpoint with a NaN weight is refused at load, naming the tensor.
    let cfg = cyb::ModelConfig {
        vocab: 5,
        d_model: 8,
        n_layer: 1,
        n_head: 2,
        t_max: 4,
        k_max: 1,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let mut m: cyb::Model<f32> = cyb::Model::init(cfg, &mut cyb::rng::seeded(1)).unwrap();
    for (name, _, x) in m.params.tensors_mut() {
        if name == "ln_f.bias" {
            x[3] = f32::NAN;
        }
    }
    let bad = dir.join("nan.safetensors");
    cyb::checkpoint::save(&bad, &m).unwrap();
    let o = cyb(&["eval", "--load", s(&bad)]);
    fails_with(&o, "tensor ln_f.bias has a non-finite weight");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `generate` with its defaults fits the default model with the README's prompt, and
/// asking for more than fits says how many do.
#[test]
fn generate_defaults_fit_the_default_context() {
    let dir = tmpdir("gen");
    let ckpt = dir.join("m.safetensors");
    let o = train_tiny(&["--pauses", "2", "--save", s(&ckpt)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "[L3] 4 1 2 =",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // t_max = 16: 17 tokens in all, 5 of them the prompt.
    assert_eq!(doc["tokens"].as_array().unwrap().len(), 12);
    for max_new in ["13", "18446744073709551615"] {
        let o = cyb(&[
            "generate",
            "--load",
            s(&ckpt),
            "--prompt",
            "[L3] 4 1 2 =",
            "--max-new",
            max_new,
        ]);
        let e = stderr(&o);
        assert!(
            o.status.code() == Some(1)
                && e.contains("12 new tokens fit")
                && e.contains("--max-new 12"),
            "--max-new {max_new}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without a terminal, training prints a plain progress line at a steady interval
/// (here every step) with step, loss, pauses, speed and ETA.
#[test]
fn progress_lines_without_a_terminal() {
    let o = Command::new(env!("CARGO_BIN_EXE_cyb"))
        .arg("train")
        .args(TINY)
        .env("CYB_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(lines.len(), 6, "{e}");
    for needle in ["step 6/6", "loss ", "pauses ", "tok/s", "ETA 0s"] {
        assert!(lines[5].contains(needle), "'{needle}' not in {}", lines[5]);
    }
}

/// `experiment` prints its report before writing files, and a file that cannot be
/// written does not stop the others.
#[test]
fn experiment_reports_first_and_writes_what_it_can() {
    let dir = tmpdir("exp");
    let out = dir.join("exp");
    std::fs::create_dir_all(out.join("curves.csv")).unwrap(); // blocks one file
    let mut args = vec![
        "experiment",
        "--seeds",
        "1",
        "--pretrain",
        "3",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(TINY);
    let o = cyb(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("curves.csv"), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("## Verdict"), "{report}");
    for f in [
        "report.md",
        "ratios.csv",
        "fractions.csv",
        "calibration.csv",
        "halting.csv",
        "latency.csv",
        "tokens.csv",
        "regimes.csv",
        "verdicts.csv",
        "curves.png",
        "pauses.png",
        "halting.png",
    ] {
        assert!(out.join(f).is_file(), "{f} was not written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `experiment --grid paper --regimes 1,2` adds the grid's and the regimes' arms;
/// `--load` fine-tunes every arm from the user's model; bad combinations are refused.
#[test]
fn experiment_grid_regimes_and_load() {
    let dir = tmpdir("grid");
    let out = dir.join("g");
    let report = ok_tiny(&[
        "experiment",
        "--grid",
        "paper",
        "--regimes",
        "1,2",
        "--seeds",
        "1",
        "--pretrain",
        "2",
        "--out",
        s(&out),
    ]);
    for arm in [
        "| cyb-ap w=4:1:1:4 g=1 |",
        "| cyb-dp r=11:3:3:3 a=0.1 |",
        "| cyb-ap x2 |",
    ] {
        assert!(report.contains(arm), "{arm} in {report}");
    }
    assert!(report.contains("## Data regimes"), "{report}");
    let model = dir.join("m0.safetensors");
    ok_tiny(&["train", "--pauses", "0", "--save", s(&model)]);
    let report = ok_tiny(&[
        "experiment",
        "--load",
        s(&model),
        "--seeds",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(report.contains("fine-tuned from the loaded model"));
    fails_with(
        &cyb(&["experiment", "--grid", "paper", "--pauses", "2"]),
        "K = 3",
    );
    fails_with(&cyb(&["experiment", "--regimes", "0"]), "--regimes");
    fails_with(&cyb(&["experiment", "--bpe", "300"]), "--bpe needs --text");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `cyb` with `args` and `env`, killed (and the test failed) after `secs` seconds:
/// for inputs that would otherwise be read forever.
fn cyb_within(secs: u64, args: &[&str], env: &[(&str, &str)]) -> Output {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyb"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cyb runs");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > secs {
            let _ = child.kill();
            panic!("{args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A trained tiny model on `task` with K = 2, saved at `dir/name`.
fn tiny_model(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let ckpt = dir.join(name);
    let o = train_tiny(&[&["--pauses", "2", "--save", s(&ckpt)], extra].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    ckpt
}

/// A reader that closes the pipe early (`| head -1`) ends the output quietly: exit 0,
/// no panic, no "Broken pipe"; what does not print (the files of --out, --save) is
/// still written. Standard output is closed before the command writes anything.
#[test]
fn closed_pipes_end_quietly() {
    use std::process::Stdio;
    let dir = tmpdir("pipe");
    let ckpt = tiny_model(&dir, "m.safetensors", &[]);
    let run = |args: &[&str], close_stderr: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cyb"));
        cmd.args(args)
            .env("CYB_PROGRESS_SECS", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take());
        if close_stderr {
            drop(child.stderr.take());
        }
        child.wait_with_output().unwrap()
    };
    let gen = ["generate", "--load", s(&ckpt), "--prompt", "[L2] 3 4 ="];
    let out = dir.join("out");
    let saved = dir.join("again.safetensors");
    let mut train = vec!["train", "--out", s(&out), "--save", s(&saved)];
    train.extend_from_slice(TINY);
    let cases: Vec<(Vec<&str>, bool)> = vec![
        ([&gen[..], &["--json"]].concat(), false),
        (gen.to_vec(), false),
        (vec!["eval", "--load", s(&ckpt), "--pauses-by-token"], false),
        (train.clone(), false),
        // Both streams closed (`2>&1 | head -1`): the run still ends well.
        (train, true),
        (vec!["train", "--help"], false),
    ];
    for (args, close_stderr) in cases {
        let o = run(&args, close_stderr);
        let e = stderr(&o);
        assert!(
            o.status.success() && !e.contains("panicked") && !e.contains("Broken pipe"),
            "{args:?}: {:?} {e}",
            o.status
        );
    }
    assert!(out.join("report.md").is_file() && out.join("pauses.png").is_file());
    cyb::checkpoint::load(&saved).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Devices, FIFOs and folders given as input are clear errors at once, never read
/// without end; a long evaluation shows progress.
#[cfg(unix)]
#[test]
fn inputs_that_are_not_regular_files_are_refused() {
    let dir = tmpdir("inputs");
    let fifo = dir.join("fifo");
    let fifo_made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let mut inputs = vec!["/dev/zero", "/dev/urandom", s(&dir)];
    if fifo_made {
        inputs.push(s(&fifo));
    }
    let text = corpus_file(&dir);
    let out = dir.join("shards");
    for input in inputs {
        for args in [
            vec![
                "train",
                "--text",
                s(&text),
                "--tokenizer",
                input,
                "--steps",
                "1",
            ],
            vec!["tokenize", s(&text), "--tokenizer", input, "--out", s(&out)],
            vec!["train", "--text", input, "--steps", "1"],
            vec!["experiment", "--text", input, "--steps", "1"],
            vec!["eval", "--load", input],
            vec!["generate", "--load", input, "--prompt", "1"],
            vec!["train", "--load", input, "--steps", "1"],
        ] {
            let o = cyb_within(30, &args, &[]);
            let e = stderr(&o);
            assert!(
                o.status.code() == Some(1)
                    && (e.contains("not a regular file") || e.contains("is a directory")),
                "{args:?}: {e}"
            );
        }
    }
    let ckpt = tiny_model(&dir, "m.safetensors", &[]);
    let o = cyb_within(
        120,
        &[
            "eval",
            "--load",
            s(&ckpt),
            "--eval-batches",
            "40",
            "--batch",
            "1",
        ],
        &[("CYB_PROGRESS_SECS", "0")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("evaluating batch 39/40") && e.contains("ETA"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Results that would look valid but are not are refused: repeated seeds or regimes,
/// a checkpoint used on data other than its training data, ratios whose sum
/// overflows, extra fields in a task name.
#[test]
fn results_that_look_valid_but_are_not_are_refused() {
    let dir = tmpdir("valid");
    let m54 = tiny_model(&dir, "m54.safetensors", &["--task", "modsum:5:4"]);
    let m72 = tiny_model(&dir, "m72.safetensors", &["--task", "modsum:7:2"]);
    let text_a = dir.join("a.txt");
    let text_b = dir.join("b.txt");
    std::fs::write(&text_a, "the cat sat on the mat. ".repeat(40)).unwrap();
    std::fs::write(&text_b, "a dog ran in the fog. ".repeat(40)).unwrap();
    let ma = tiny_model(&dir, "ma.safetensors", &["--text", s(&text_a)]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["experiment", "--seeds", "1,1"],
            "--seeds: 1 is given twice",
        ),
        (
            vec!["experiment", "--seeds", "3,2,3"],
            "--seeds: 3 is given twice",
        ),
        (
            vec!["experiment", "--regimes", "1,2,2"],
            "--regimes: 2 is given twice",
        ),
        (vec!["train", "--task", "modsum:5:4:3"], "more fields"),
        (
            vec!["eval", "--load", s(&m54), "--task", "modsum:5:4:1"],
            "more fields",
        ),
        (
            vec!["eval", "--load", s(&m54), "--task", "modsum:7:2"],
            "modsum:5:4",
        ),
        (
            vec!["eval", "--load", s(&m54), "--task", "modsum:5:3"],
            "modsum:5:3",
        ),
        (
            vec!["eval", "--load", s(&m72)],
            "task modsum:7:2, but this run's data is task modsum:5:4",
        ),
        (
            vec!["eval", "--load", s(&ma), "--text", s(&text_b)],
            "byte-level text",
        ),
        (
            vec!["train", "--load", s(&m54), "--task", "modsum:7:2"],
            "modsum:5:4",
        ),
        (
            vec!["experiment", "--load", s(&m54), "--task", "modsum:6:4"],
            "modsum:5:4",
        ),
        (
            vec![
                "generate",
                "--load",
                s(&m54),
                "--task",
                "modsum:7:2",
                "--prompt",
                "1",
            ],
            "modsum:5:4",
        ),
        (
            vec![
                "train",
                "--objective",
                "dp",
                "--rho",
                "1e308:1e308:1e308:1e308",
            ],
            "sum to more",
        ),
        (
            vec![
                "train",
                "--objective",
                "va",
                "--rho",
                "1e308:1e308:1e308:1e308",
            ],
            "sum to more",
        ),
        (
            vec!["train", "--omega", "1e308:1e308:0:1e308"],
            "sum to more",
        ),
        (
            vec!["experiment", "--rho", "1e308:1e308:1:1e308"],
            "sum to more",
        ),
    ];
    for (args, needle) in cases {
        let mut all = args.clone();
        if matches!(all[0], "train" | "experiment") {
            all.extend_from_slice(&["--steps", "1"]);
        }
        let o = cyb(&all);
        fails_with(&o, needle);
        assert!(!stderr(&o).contains("step 1/"), "{all:?} trained first");
    }
    // The same data is accepted, and generate takes the model's own task by default.
    let o = cyb(&[
        "eval",
        "--load",
        s(&m54),
        "--task",
        "modsum:5:4",
        "--eval-batches",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cyb(&[
        "eval",
        "--load",
        s(&ma),
        "--text",
        s(&text_a),
        "--eval-batches",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cyb(&[
        "generate",
        "--load",
        s(&m72),
        "--prompt",
        "[L1] 6 =",
        "--max-new",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // No `-0.00` anywhere: a model that never pauses reports zeros without a sign.
    let k0 = dir.join("k0.safetensors");
    let o = train_tiny(&["--pauses", "0", "--save", s(&k0)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut all = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    for extra in [&["--json"][..], &[]] {
        let mut args = vec!["generate", "--load", s(&k0), "--prompt", "[L1] 2 ="];
        args.extend_from_slice(extra);
        let o = cyb(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        all += &String::from_utf8_lossy(&o.stdout);
        all += &stderr(&o);
    }
    assert!(!all.contains("-0.0") && !all.contains("-0 "), "{all}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A flag or environment variable that cannot take effect is an error saying why.
#[test]
fn flags_that_cannot_take_effect_are_errors() {
    let dir = tmpdir("ignored");
    let ckpt = tiny_model(&dir, "m.safetensors", &[]);
    let text = dir.join("t.txt");
    std::fs::write(&text, "some text here. ".repeat(40)).unwrap();
    let m = s(&ckpt);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--load", m, "--pause-attention", "private"],
            "--pause-attention cannot take effect",
        ),
        (
            vec!["train", "--load", m, "--layers", "3"],
            "--layers cannot take effect: the loaded model has layers 1",
        ),
        (
            vec!["train", "--load", m, "--d-model", "32"],
            "--d-model cannot take effect",
        ),
        (
            vec!["train", "--load", m, "--heads", "4"],
            "--heads cannot take effect",
        ),
        (
            vec!["train", "--load", m, "--dk-prior", "0.5"],
            "--dk-prior cannot take effect",
        ),
        (
            vec!["train", "--load", m, "--ctx", "32"],
            "--ctx cannot take effect",
        ),
        (
            vec!["experiment", "--load", m, "--layers", "2"],
            "--layers cannot take effect",
        ),
        (
            vec!["experiment", "--load", m, "--pretrain", "5"],
            "--pretrain cannot take effect",
        ),
        (
            vec!["experiment", "--eval-every", "0"],
            "--eval-every cannot take effect",
        ),
        (
            vec!["train", "--objective", "ce_final", "--gamma", "0.5"],
            "--gamma cannot take effect",
        ),
        (
            vec!["train", "--objective", "marginal", "--discount", "linear"],
            "--discount cannot take effect",
        ),
        (
            vec!["train", "--objective", "ap", "--beta", "2"],
            "--beta cannot take effect",
        ),
        (
            vec!["train", "--objective", "va", "--alpha", "0.1"],
            "--alpha cannot take effect",
        ),
        (
            vec!["train", "--text", s(&text), "--task", "modsum:7:2"],
            "--task cannot take effect",
        ),
        (
            vec!["eval", "--load", m, "--text", s(&text), "--task", "modsum"],
            "--task cannot take effect",
        ),
        (
            vec![
                "generate",
                "--load",
                m,
                "--prompt",
                "1",
                "--temperature",
                "2",
            ],
            "--temperature cannot take effect",
        ),
        (
            vec!["generate", "--load", m, "--prompt", "1", "--top-k", "3"],
            "--top-k cannot take effect",
        ),
        (
            vec!["generate", "--load", m, "--prompt", "1", "--seed", "3"],
            "--seed cannot take effect",
        ),
        (
            vec![
                "generate",
                "--load",
                m,
                "--prompt",
                "1",
                "--policy",
                "sample",
                "--threshold",
                "0.2",
            ],
            "--threshold cannot take effect",
        ),
        (
            vec![
                "generate", "--load", m, "--prompt", "1", "--policy", "forced", "--top-p", "0.5",
            ],
            "--top-p cannot take effect",
        ),
    ];
    for (args, needle) in cases {
        fails_with(&cyb(&args), needle);
    }
    // The same values as the model's, and the sampling flags with --policy sample, work.
    ok_tiny(&["train", "--load", m, "--pause-attention", "shared"]);
    let o = cyb(&[
        "generate",
        "--load",
        m,
        "--prompt",
        "1",
        "--policy",
        "sample",
        "--temperature",
        "2",
        "--top-k",
        "3",
        "--seed",
        "5",
        "--max-new",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Environment variables: a bad value is an error naming it, for every command.
    for (var, value) in [
        ("CYB_PROGRESS_SECS", "abc"),
        ("CYB_PROGRESS_SECS", "-1"),
        ("CYB_PROGRESS_SECS", "nan"),
        ("CYB_MEMORY_LIMIT", "lots"),
        ("CYB_MEMORY_LIMIT", "-5"),
        ("CYB_MEMORY_LIMIT", "1e400"),
    ] {
        for args in [
            vec!["train", "--steps", "1"],
            vec!["eval", "--load", m],
            vec!["generate", "--load", m, "--prompt", "1"],
        ] {
            let o = cyb_within(60, &args, &[(var, value)]);
            let e = stderr(&o);
            assert!(
                o.status.code() == Some(1) && e.contains(var) && e.contains("e.g."),
                "{var}={value} {args:?}: {e}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every message names the flag at fault and a value that works, in one short line.
#[test]
fn messages_name_the_flag_and_a_value_that_works() {
    let dir = tmpdir("messages");
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["train", "--objective", "va", "--beta", "1e308"],
            "--beta",
            "the default is 1",
        ),
        (
            vec!["experiment", "--beta", "1e7"],
            "--beta",
            "the default is 1",
        ),
        (
            vec!["train", "--objective", "dp", "--alpha", "1e308"],
            "--alpha",
            "the default is 0.01",
        ),
        (
            vec!["train", "--omega", "1e308:1e308:1e308:1e308"],
            "--omega",
            "e.g. 1:1:1:1",
        ),
        (
            vec![
                "train",
                "--objective",
                "va",
                "--rho",
                "1e308:1e308:1e308:1e308",
            ],
            "--rho",
            "e.g. 1:1:1:1",
        ),
        (
            vec!["train", "--weight-decay", "1e30"],
            "--weight-decay",
            "the default 0.1 works",
        ),
        (
            vec!["train", "--weight-decay", "400"],
            "--weight-decay",
            "below 333.3",
        ),
        (vec!["train", "--gamma", "1e-300"], "--gamma", "e.g. 0.9"),
        (vec!["train", "--gamma", "2e300"], "--gamma", "the default"),
        (
            vec!["train", "--grad-clip", "-1e-3"],
            "--grad-clip = -0.001",
            "> 0",
        ),
        (
            vec!["eval", "--threshold", "1e300", "--load", "x"],
            "--threshold",
            "0.5 works",
        ),
        (
            vec![
                "generate",
                "--load",
                "x",
                "--prompt",
                "1",
                "--policy",
                "sample",
                "--temperature",
                "-1e-300",
            ],
            "--temperature = -1e-300",
            "the default 1 works",
        ),
        (
            vec![
                "generate", "--load", "x", "--prompt", "1", "--policy", "sample", "--top-p",
                "1e-400",
            ],
            "--top-p = 0",
            "the default 1 works",
        ),
        (
            vec!["train", "--dk-prior", "1e300"],
            "--dk-prior = 1e300",
            "the default 0.9 works",
        ),
        (
            vec!["train", "--heads", "3"],
            "--heads = 3",
            "e.g. --heads 2",
        ),
        (
            vec!["experiment", "--d-model", "48", "--heads", "5"],
            "--heads = 5",
            "e.g. --heads 4",
        ),
        (vec!["train", "--heads", "0"], "--heads = 0", "at least 1"),
        (vec!["train", "--layers", "0"], "--layers = 0", "at least 1"),
        (
            vec!["train", "--d-model", "0"],
            "--d-model = 0",
            "at least 1",
        ),
    ];
    for (args, flag, works) in cases {
        let o = cyb(&args);
        let e = stderr(&o);
        assert!(
            !o.status.success()
                && e.contains(flag)
                && e.contains(works)
                && !e.contains("lower --lr")
                && e.trim().lines().count() == 1
                && e.len() < 400,
            "{args:?}: {e}"
        );
    }
    // Negative counts are bad values of their flag, with a value that works.
    for (args, flag, works) in [
        (vec!["train", "--steps", "-1"], "--steps", "--steps 4000"),
        (
            vec!["experiment", "--steps", "-1"],
            "--steps",
            "--steps 600",
        ),
        (vec!["train", "--batch", "-5"], "--batch", "--batch 32"),
        (
            vec!["experiment", "--seeds", "1,-2"],
            "--seeds",
            "--seeds 1,2,3",
        ),
        (
            vec!["generate", "--load", "x", "--prompt", "1", "--top-k", "-1"],
            "--top-k",
            "--top-k 0",
        ),
        (
            vec![
                "generate",
                "--load",
                "x",
                "--prompt",
                "1",
                "--max-new",
                "-3",
            ],
            "--max-new",
            "--max-new",
        ),
    ] {
        let o = cyb(&args);
        let e = stderr(&o);
        assert!(
            o.status.code() == Some(2)
                && e.contains("invalid value '-")
                && e.contains(flag)
                && e.contains(works)
                && !e.contains("unexpected argument"),
            "{args:?}: {e}"
        );
    }
    // A prompt that fills the context says to shorten it, not --max-new 0.
    let ckpt = tiny_model(&dir, "m.safetensors", &[]);
    for prompt in ["1 ".repeat(17), "1 ".repeat(30)] {
        let o = cyb(&["generate", "--load", s(&ckpt), "--prompt", &prompt]);
        fails_with(&o, "shorten it to at most 16 tokens");
        assert!(!stderr(&o).contains("--max-new 0"), "{}", stderr(&o));
    }
    fails_with(
        &cyb(&[
            "generate",
            "--load",
            s(&ckpt),
            "--prompt",
            "1",
            "--max-new",
            "0",
        ]),
        "--max-new = 0: must be at least 1",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A refused run leaves no folder behind and `--out` trees are made only when there
/// is something to write; a killed save's temporary is cleaned by the next save.
#[test]
fn refused_runs_leave_nothing_behind() {
    let dir = tmpdir("leftovers");
    for args in [
        vec!["experiment", "--seeds", "1,1"],
        vec!["experiment", "--steps", "0"],
        vec!["experiment", "--pauses", "0"],
        vec!["experiment", "--text", "/nonexistent/corpus.txt"],
        vec!["experiment", "--ctx", "100000"],
        vec!["train", "--lr", "-1"],
        vec!["train", "--task", "nope"],
        vec!["train", "--ctx", "100000"],
    ] {
        let out = dir.join("new").join("a").join("b");
        let mut all = args.clone();
        all.extend_from_slice(&["--out", s(&out)]);
        assert!(!cyb(&all).status.success(), "{all:?}");
        assert!(!dir.join("new").exists(), "{all:?} left a folder");
    }
    // A run that works makes the whole tree.
    let out = dir.join("new").join("a").join("b");
    ok_tiny(&["train", "--out", s(&out)]);
    assert!(out.join("report.md").is_file());
    // A stale temporary of a killed save of the same file (its process gone) is removed.
    let ckpt = dir.join("m.safetensors");
    let stale = dir.join(".m.safetensors.tmp.99999999");
    std::fs::write(&stale, "half a checkpoint").unwrap();
    ok_tiny(&["train", "--save", s(&ckpt)]);
    assert!(!stale.exists() && ckpt.is_file());
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == ".*.tmp.[0-9]*"), "{ignore}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// README and `--help` point at files a clone has and say what the program does.
#[test]
fn docs_point_at_files_a_clone_has() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("cargo install --path ."));
    let mut helps = readme.clone();
    for cmd in [
        "train",
        "eval",
        "experiment",
        "generate",
        "import",
        "tokenize",
    ] {
        let o = cyb(&[cmd, "--help"]);
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        helps += &help;
        if cmd != "train" {
            assert!(!help.contains("Train on"), "{cmd} --help: {help}");
        }
    }
    for gone in ["ANCHORS", "SPEC"] {
        assert!(!helps.contains(gone), "README or --help mentions {gone}");
    }
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/MATH.md")).is_file());
    let help = String::from_utf8_lossy(&cyb(&["experiment", "--help"]).stdout).into_owned();
    assert!(
        !help.contains("plain GPT") && help.contains("[default: 600]"),
        "{help}"
    );
    // The train report says which attention mode it used.
    for mode in ["shared", "private"] {
        let report = ok_tiny(&["train", "--pause-attention", mode]);
        assert!(
            report.contains(&format!("{mode} pause attention")),
            "{report}"
        );
    }
}

/// The library's docs and messages cite no SPEC section (a reader of the crate has no
/// SPEC): they point at docs/MATH.md, and every section they name there exists.
#[test]
fn library_docs_cite_sections_of_docs_math() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let math = std::fs::read_to_string(root.join("docs/MATH.md")).unwrap();
    let sections: Vec<&str> = math.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    let mut files = vec![root.join("src")];
    let mut cited = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        assert!(!src.contains("SPEC"), "{} cites SPEC", p.display());
        // The text as a reader sees it: comment markers, string escapes and line breaks
        // (a citation may wrap) gone.
        let text: String = src
            .lines()
            .map(|l| {
                let l = l.trim_start();
                let l = ["//!", "///", "//"]
                    .iter()
                    .find_map(|m| l.strip_prefix(m))
                    .unwrap_or(l);
                l.trim().trim_end_matches('\\').replace("\\\"", "\"")
            })
            .collect::<Vec<_>>()
            .join(" ");
        // `docs/MATH.md, "A"`, `docs/MATH.md ("A")`, `docs/MATH.md: "A", "B"`,
        // `"A" and "B"`: every quoted name right after the file is a section.
        for (at, _) in text.match_indices("docs/MATH.md") {
            let mut rest = &text[at + "docs/MATH.md".len()..];
            loop {
                rest = rest.trim_start_matches([',', ':', '(', ' ']);
                rest = rest.strip_prefix("and ").unwrap_or(rest);
                let Some(quoted) = rest.strip_prefix('"') else {
                    break;
                };
                let Some((name, after)) = quoted.split_once('"') else {
                    break;
                };
                assert!(
                    sections.contains(&name),
                    "{}: docs/MATH.md has no section \"{name}\" ({sections:?})",
                    p.display()
                );
                cited += 1;
                rest = after;
            }
        }
    }
    assert!(
        cited > 50,
        "only {cited} citations found: is the parsing right?"
    );
}

/// A corpus file for the tokenizer tests.
fn corpus_file(dir: &Path) -> PathBuf {
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat. the dog sat on the log.\n".repeat(30),
    )
    .unwrap();
    text
}

/// A model trained with `--bpe` saves its tokenizer beside the checkpoint; `eval`,
/// `generate` and `train --load` use it without being told; `--tokenizer` naming the
/// same one is accepted, a different one, `--bpe` again, or a changed file are errors.
#[test]
fn bpe_model_carries_its_tokenizer() {
    use cyb::tokenizer::TextTokenizer;
    let dir = tmpdir("bpe");
    let text = corpus_file(&dir);
    let ckpt = dir.join("m.safetensors");
    let report = ok_tiny(&[
        "train",
        "--text",
        s(&text),
        "--bpe",
        "300",
        "--pauses",
        "1",
        "--save",
        s(&ckpt),
    ]);
    assert!(report.contains("BPE tokenizer"), "{report}");
    let tok_file = dir.join("m.tokenizer.json");
    let tok = TextTokenizer::from_file(&tok_file).unwrap();
    let (model, meta) = checkpoint::load_with_metadata(&ckpt).unwrap();
    assert!(tok.vocab() > 256 && model.config.vocab == tok.vocab());
    assert!(meta["tokenizer"].contains("\"file\":\"m.tokenizer.json\""));

    // eval reads the text with the model's tokenizer: its target tokens are words.
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--load",
            s(&ckpt),
            "--text",
            s(&text),
            "--eval-batches",
            "1",
            "--pauses-by-token",
        ];
        args.extend_from_slice(extra);
        cyb(&args)
    };
    let o = eval(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("␣sat") || out.contains("␣the"), "{out}");
    let o = eval(&["--tokenizer", s(&tok_file)]);
    assert!(
        o.status.success(),
        "the same tokenizer again: {}",
        stderr(&o)
    );

    // generate: the prompt is encoded and the output decoded with the same tokenizer.
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "the cat",
        "--max-new",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u32> = doc["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|&i| (i as usize) < tok.vocab()));
    assert_eq!(doc["text"], tok.decode(&ids).unwrap());
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "the",
        "--max-new",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("the"));

    // A different tokenizer is refused (eval and generate), --bpe for this model too.
    let other_text = dir.join("other.txt");
    std::fs::write(&other_text, "a different text, other words.\n".repeat(30)).unwrap();
    let other_ckpt = dir.join("other.safetensors");
    ok_tiny(&[
        "train",
        "--text",
        s(&other_text),
        "--bpe",
        "280",
        "--save",
        s(&other_ckpt),
    ]);
    let other = dir.join("other.tokenizer.json");
    fails_with(
        &eval(&["--tokenizer", s(&other)]),
        "differs from the tokenizer saved",
    );
    fails_with(
        &cyb(&[
            "generate",
            "--load",
            s(&ckpt),
            "--prompt",
            "the",
            "--tokenizer",
            s(&other),
        ]),
        "differs from the tokenizer saved",
    );
    let mut args = vec![
        "train",
        "--text",
        s(&text),
        "--load",
        s(&ckpt),
        "--bpe",
        "300",
    ];
    args.extend_from_slice(TINY);
    fails_with(&cyb(&args), "saved with its tokenizer");

    // train --load continues with the model's tokenizer and saves it with the new model.
    let next = dir.join("next.safetensors");
    ok_tiny(&[
        "train",
        "--text",
        s(&text),
        "--load",
        s(&ckpt),
        "--pauses",
        "1",
        "--save",
        s(&next),
    ]);
    assert_eq!(
        std::fs::read(dir.join("next.tokenizer.json")).unwrap(),
        std::fs::read(&tok_file).unwrap()
    );

    // A changed or missing tokenizer file is an error, never another tokenization.
    let mut bytes = std::fs::read(&tok_file).unwrap();
    bytes.push(b'\n');
    std::fs::write(&tok_file, &bytes).unwrap();
    fails_with(&eval(&[]), "SHA-256");
    std::fs::remove_file(&tok_file).unwrap();
    fails_with(&eval(&[]), "m.tokenizer.json cannot be read");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A `--save-every` snapshot is saved as the final checkpoint is: its tokenizer beside
/// it and the `data` key in its metadata, so `eval` reads the last snapshot exactly as
/// the final model; `--resume` with the run's own flags (`--bpe` included, the BPE
/// trained again must be the saved one) or without `--bpe` ends at the final model; a
/// changed `--bpe` is refused.
#[test]
fn snapshots_carry_what_the_final_checkpoint_carries() {
    use cyb::tokenizer::TextTokenizer;
    let dir = tmpdir("snapshot-tokenizer");
    let text = corpus_file(&dir);
    let ckpt = dir.join("m.safetensors");
    let train = |save: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--text",
            s(&text),
            "--pauses",
            "1",
            "--save",
            s(save),
        ];
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        cyb(&args)
    };
    let o = train(&ckpt, &["--bpe", "300", "--save-every", "3", "--keep", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (step3, step6) = (
        dir.join("m.step000003.safetensors"),
        dir.join("m.step000006.safetensors"),
    );
    let (final_model, final_meta) = checkpoint::load_with_metadata(&ckpt).unwrap();
    let (snap_model, snap_meta) = checkpoint::load_with_metadata(&step6).unwrap();
    assert_eq!(
        snap_model, final_model,
        "the last snapshot is the final model"
    );
    assert_eq!(snap_meta["data"], final_meta["data"]);
    let tok_json = std::fs::read(dir.join("m.tokenizer.json")).unwrap();
    for snap in [&step3, &step6] {
        let (_, meta) = checkpoint::load_with_metadata(snap).unwrap();
        assert_eq!(meta["data"], final_meta["data"], "{}", snap.display());
        let tok = cyb::checkpoint_tokenizer::tokenizer_path(snap).unwrap();
        assert_eq!(std::fs::read(&tok).unwrap(), tok_json, "{}", tok.display());
    }
    let vocab = TextTokenizer::from_json_bytes(&tok_json).unwrap().vocab();
    assert!(vocab > 260, "the BPE learned merges: V = {vocab}");

    // eval of the last snapshot reads the text with the run's tokenizer: the same
    // report as the final checkpoint's.
    let eval = |load: &Path| {
        let o = cyb(&[
            "eval",
            "--load",
            s(load),
            "--text",
            s(&text),
            "--eval-batches",
            "2",
        ]);
        assert!(o.status.success(), "{}: {}", load.display(), stderr(&o));
        // Past the line that names the model file.
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let model_line = format!("- model: {} (", load.display());
        assert!(out.contains(&model_line), "{out}");
        out.replace(&model_line, "- model: (")
    };
    assert_eq!(eval(&step6), eval(&ckpt));

    // Resumed from step 3, with --bpe as in the run or without it: the final model.
    for (name, extra) in [
        ("with-bpe", &["--bpe", "300"][..]),
        ("saved-tokenizer", &[][..]),
    ] {
        let save = dir.join(format!("{name}.safetensors"));
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--resume", s(&step3)]);
        let o = train(&save, &args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(checkpoint::load(&save).unwrap(), final_model, "{name}");
    }
    // Another --bpe trains another tokenizer: refused, named.
    let o = train(
        &dir.join("other.safetensors"),
        &["--bpe", "260", "--resume", s(&step3)],
    );
    fails_with(&o, "cannot resume: --bpe 260");
    fails_with(&o, "trains another tokenizer than the one saved with");
    // An old snapshot's keep-pruning also removes its tokenizer file.
    let o = train(&ckpt, &["--bpe", "300", "--save-every", "3", "--keep", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !step3.exists()
            && !cyb::checkpoint_tokenizer::tokenizer_path(&step3)
                .unwrap()
                .exists()
    );
    assert!(
        step6.exists()
            && cyb::checkpoint_tokenizer::tokenizer_path(&step6)
                .unwrap()
                .exists()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--tokenizer FILE` (here Hugging Face's own, from the fixture) trains, evaluates and
/// generates; bad tokenizer input is a clear error.
#[test]
fn tokenizer_flag_and_its_errors() {
    let dir = tmpdir("tokflag");
    let text = corpus_file(&dir);
    let hf_path = common::testdata_dir().join("hf/tiny-gpt2/tokenizer.json");
    let hf = s(&hf_path);
    let hf_vocab = cyb::tokenizer::TextTokenizer::from_file(&hf_path)
        .unwrap()
        .vocab();
    let ckpt = dir.join("hf.safetensors");
    let report = ok_tiny(&[
        "train",
        "--text",
        s(&text),
        "--tokenizer",
        hf,
        "--pauses",
        "1",
        "--save",
        s(&ckpt),
    ]);
    assert!(report.contains(&format!("V = {hf_vocab}")), "{report}");
    assert_eq!(checkpoint::load(&ckpt).unwrap().config.vocab, hf_vocab);
    assert!(dir.join("hf.tokenizer.json").exists());
    let o = cyb(&[
        "generate",
        "--load",
        s(&ckpt),
        "--prompt",
        "the",
        "--max-new",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The original file names the same tokenizer as the copy saved beside the model.
    let o = cyb(&[
        "eval",
        "--load",
        s(&ckpt),
        "--text",
        s(&text),
        "--tokenizer",
        hf,
        "--eval-batches",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--text", s(&text)];
        args.extend_from_slice(extra);
        args.extend_from_slice(TINY);
        cyb(&args)
    };
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    fails_with(
        &train(&["--tokenizer", s(&bad)]),
        "not a usable Hugging Face tokenizer.json",
    );
    fails_with(
        &train(&["--tokenizer", hf, "--bpe", "300"]),
        "give one tokenizer",
    );
    fails_with(&train(&["--bpe", "100"]), "256..=65536");
    fails_with(
        &cyb(&["train", "--tokenizer", hf, "--steps", "1"]),
        "--tokenizer needs --text",
    );
    fails_with(
        &cyb(&["experiment", "--tokenizer", hf, "--steps", "1"]),
        "--tokenizer needs --text",
    );
    // A tokenizer that only knows `a` and `b` drops every other character.
    let letters_path = common::testdata_dir().join("tokenizer/letters_ab.json");
    let letters = s(&letters_path);
    let xyz = dir.join("xyz.txt");
    std::fs::write(&xyz, "xyz ".repeat(100)).unwrap();
    fails_with(
        &cyb(&[
            "train",
            "--text",
            s(&xyz),
            "--tokenizer",
            letters,
            "--steps",
            "1",
        ]),
        "encodes to nothing",
    );
    // A tokenizer larger than the model: a byte-level model (V = 256) and HF's tokenizer.
    let bytes_model = dir.join("bytes.safetensors");
    ok_tiny(&["train", "--text", s(&text), "--save", s(&bytes_model)]);
    assert!(!dir.join("bytes.tokenizer.json").exists());
    fails_with(
        &cyb(&[
            "eval",
            "--load",
            s(&bytes_model),
            "--text",
            s(&text),
            "--tokenizer",
            hf,
        ]),
        "more than the model's 256",
    );
    fails_with(
        &cyb(&[
            "generate",
            "--load",
            s(&bytes_model),
            "--prompt",
            "the",
            "--tokenizer",
            hf,
        ]),
        "more tokens than the model's vocabulary 256",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `experiment --text --bpe` trains every arm on BPE tokens.
#[test]
fn experiment_on_bpe_text() {
    let dir = tmpdir("expbpe");
    let text = corpus_file(&dir);
    let out = dir.join("e");
    let report = ok_tiny(&[
        "experiment",
        "--text",
        s(&text),
        "--bpe",
        "300",
        "--seeds",
        "1",
        "--pretrain",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(report.contains("BPE tokenizer"), "{report}");
    assert!(out.join("report.md").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `experiment --lrs`: every arm at each rate, the sweep table and its CSV files; every
/// rate finite and positive, none twice, not with `--lr`, each refusal naming the flag
/// before any work.
#[test]
fn experiment_learning_rate_sweep_runs_and_is_checked() {
    let dir = tmpdir("lrs");
    let out = dir.join("exp");
    let mut args = vec!["experiment", "--lrs", "3e-3,1e-3", "--seeds", "1"];
    args.extend_from_slice(&["--pretrain", "3", "--pauses", "1", "--out", s(&out)]);
    args.extend_from_slice(TINY);
    let o = cyb(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| arm | 0.003 | 0.001 |"), "{report}");
    assert!(
        report.contains("every peak lr of {0.003, 0.001}"),
        "{report}"
    );
    let sweep = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(
        sweep.lines().count(),
        1 + 5 * 2,
        "5 arms x 2 rates: {sweep}"
    );
    let test = std::fs::read_to_string(out.join("test.csv")).unwrap();
    assert_eq!(test.lines().count(), 1 + 5, "5 arms at their rate: {test}");
    assert!(
        stderr(&o).contains("cyb-ap seed 1, lr 0.001, 6 steps"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    for (args, needle) in [
        (vec!["--lrs", "1e-3,0.001"], "--lrs: 0.001 is given twice"),
        (
            vec!["--lrs", "3e-3,0"],
            "--lrs = 0: must be a finite number > 0",
        ),
        (
            vec!["--lrs", "-1e-3"],
            "--lrs = -0.001: must be a finite number > 0",
        ),
        (
            vec!["--lrs", "NaN"],
            "--lrs = NaN: must be a finite number > 0",
        ),
        (
            vec!["--lrs", "1e-3,inf"],
            "--lrs = inf: must be a finite number > 0",
        ),
        (vec!["--lrs", "3e-3,x"], "invalid value 'x' for '--lrs"),
        (
            vec!["--lr", "1e-3", "--lrs", "3e-3,1e-3"],
            "'--lr <LR>' cannot be used with '--lrs <LRS>'",
        ),
        (
            vec!["--lrs", "3e-3,20", "--weight-decay", "0.1"],
            "--weight-decay = 0.1 with --lr = 20",
        ),
    ] {
        let mut all = vec!["experiment"];
        all.extend_from_slice(&args);
        fails_with(&cyb(&all), needle);
    }
}

/// `eval --split test` reads the test part (other positions, so other numbers) and says
/// so; with `--tokens` (the validation shards in order) it is refused.
#[test]
fn eval_reads_the_split_it_is_asked_for() {
    let dir = tmpdir("split");
    let model = tiny_model(&dir, "m.safetensors", &[]);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--load", s(&model), "--eval-batches", "2"];
        args.extend_from_slice(extra);
        let o = cyb(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (default, validation, test) = (
        eval(&[]),
        eval(&["--split", "validation"]),
        eval(&["--split", "test"]),
    );
    assert_eq!(default, validation);
    assert!(validation.contains("validation split"), "{validation}");
    assert!(test.contains("test split"), "{test}");
    let numbers = |report: &str| -> String {
        report
            .lines()
            .filter(|l| l.contains("NLL"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!numbers(&test).is_empty());
    assert_ne!(numbers(&test), numbers(&validation), "other positions");
    fails_with(
        &cyb(&[
            "eval",
            "--load",
            s(&model),
            "--data",
            "x",
            "--tokens",
            "9",
            "--split",
            "test",
        ]),
        "cannot be used with",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--bucket-mb` (data-parallel gradient buckets) refuses a negative or non-finite size
/// with an error naming the flag, before any training.
#[test]
fn bucket_mb_must_be_a_size() {
    for bad in ["-1", "NaN", "inf"] {
        let o = cyb(&["train", "--steps", "1", "--bucket-mb", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--bucket-mb {bad} was accepted");
        assert!(
            err.contains("--bucket-mb") && err.contains(">= 0"),
            "--bucket-mb {bad}: unclear error: {err}"
        );
    }
}

/// `experiment --gpus N` is refused before any work without `--device cuda`, with a
/// batch that does not split over N (the same message as `train`), with N = 0, and in a
/// build without feature `nccl`. (With the feature, tests/gpu_nccl_runs.rs runs it.)
#[test]
fn experiment_gpus_refusals() {
    let dir = tmpdir("exp-gpus");
    let out = dir.join("out");
    let exp = |extra: &[&str]| {
        let mut args = vec!["experiment", "--out", s(&out), "--pretrain", "2"];
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        cyb(&args)
    };
    fails_with(&exp(&["--gpus", "2"]), "add --device cuda");
    fails_with(
        &exp(&["--device", "cuda", "--gpus", "3"]),
        "--batch 2 does not split evenly over 3 replicas",
    );
    fails_with(
        &exp(&["--device", "cuda", "--gpus", "0"]),
        "--gpus must be at least 1",
    );
    #[cfg(not(feature = "nccl"))]
    fails_with(
        &exp(&["--device", "cuda", "--gpus", "2"]),
        "rebuild with `cargo build --release --features nccl`",
    );
    assert!(
        !out.exists(),
        "a refused experiment wrote {}",
        out.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

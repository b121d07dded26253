//! The `cyb` command end to end on a tiny run: train, save, eval, generate, and the
//! clear errors a newcomer may hit.

use cyb::checkpoint;
use cyb::config::PauseAttention;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

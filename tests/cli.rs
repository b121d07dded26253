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
    ] {
        assert!(report.contains(needle), "report lacks {needle}:\n{report}");
    }
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
    assert!(
        (saved.config.dk_bias - want).abs() < 1e-12,
        "dk_bias {} vs {want}",
        saved.config.dk_bias
    );

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
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("{2}"),
        "plain pause markers when not a TTY"
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

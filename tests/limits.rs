//! The library refuses the settings the CLI refuses (src/limits.rs): numbers out of
//! range and shapes too large for the machine, before any work, with one clear error.

mod common;

use cyb::data::ModSum;
use cyb::experiment::{run_experiment, variants, ExperimentConfig};
use cyb::limits;
use cyb::train::{evaluate, train, EvalConfig, TrainConfig};
use cyb::{CybError, Model, Objective};

/// A 2-step run with K = 2 that every check accepts.
fn tiny() -> TrainConfig {
    TrainConfig {
        eval_every: 0,
        ..common::tiny_train(Objective::ap_default(), 2, 2)
    }
}

fn param_error<T>(r: cyb::Result<T>) -> String {
    match r {
        Err(CybError::Param(m)) => m,
        Err(e) => panic!("expected a parameter error, got {e}"),
        Ok(_) => panic!("expected a parameter error, got success"),
    }
}

#[test]
fn train_refuses_numbers_out_of_range() {
    type Edit = fn(&mut TrainConfig);
    let cases: &[(Edit, &str)] = &[
        (|c| c.lr = f32::NAN, "--lr = NaN"),
        (|c| c.lr = -1.0, "--lr = -1"),
        (|c| c.lr = 0.0, "--lr = 0"),
        (|c| c.weight_decay = f32::NAN, "--weight-decay = NaN"),
        (|c| c.weight_decay = -0.5, "--weight-decay = -0.5"),
        (|c| c.grad_clip = 0.0, "--grad-clip = 0"),
        (|c| c.steps = 0, "--steps = 0"),
        (|c| c.eval_batches = 0, "--eval-batches = 0"),
        (|c| c.min_lr_ratio = 2.0, "min_lr_ratio"),
        (
            |c| {
                c.objective = Objective::Dp {
                    rho: cyb::StepWeights::Uniform,
                    alpha: -1.0,
                    gamma: 1.0,
                    discount: cyb::Discount::Exp,
                }
            },
            "alpha",
        ),
    ];
    for (edit, needle) in cases {
        let mut cfg = tiny();
        edit(&mut cfg);
        let msg = param_error(train(&cfg, &ModSum::default(), None, false));
        assert!(msg.contains(needle), "'{needle}' not in: {msg}");
    }
    // A NaN learning rate is a bad setting, not a diverged loss.
    let mut cfg = tiny();
    cfg.lr = f32::NAN;
    assert!(!param_error(cfg.check()).contains("loss became"));
}

#[test]
fn shapes_too_large_are_refused_with_the_estimate() {
    type Edit = fn(&mut TrainConfig);
    let cases: &[Edit] = &[
        |c| (c.seq, c.model.t_max) = (100_000, 100_000),
        |c| (c.pauses, c.model.k_max, c.seq) = (1000, 1000, 4096),
        |c| c.batch = 1_000_000_000_000,
        |c| c.steps = usize::MAX,
        |c| c.model.d_model = 1 << 20,
    ];
    for edit in cases {
        let mut cfg = tiny();
        edit(&mut cfg);
        let msg = param_error(cfg.check());
        assert!(
            msg.contains("needs about") && msg.contains("available"),
            "{msg}"
        );
        let msg = param_error(train(&cfg, &ModSum::default(), None, false));
        assert!(msg.contains("needs about"), "{msg}");
    }
    // The estimate grows with each dimension and never overflows.
    let base = tiny().memory_bytes();
    assert!(base > 0.0 && base < 1e9, "{base}");
    let mut c = tiny();
    c.steps = usize::MAX;
    c.batch = usize::MAX;
    assert!(c.memory_bytes().is_finite());
    assert!(limits::human_bytes(1536.0) == "1.5 KiB");
}

#[test]
fn evaluation_and_experiment_refuse_bad_settings() {
    let cfg = tiny();
    let model: Model<f32> = Model::init(cfg.model.clone(), &mut cyb::rng::seeded(1)).unwrap();
    let ok = EvalConfig {
        pauses: 2,
        batches: 1,
        batch: 2,
        seq: 16,
        threshold: 0.5,
        seed: 1,
        split: cyb::data::Split::Validation,
    };
    evaluate(&model, &ModSum::default(), &ok).unwrap();
    for (bad, needle) in [
        (
            EvalConfig {
                threshold: f64::NAN,
                ..ok.clone()
            },
            "[0, 1]",
        ),
        (
            EvalConfig {
                threshold: 1.5,
                ..ok.clone()
            },
            "[0, 1]",
        ),
        (
            EvalConfig {
                batches: 0,
                ..ok.clone()
            },
            "--eval-batches = 0",
        ),
        (
            EvalConfig {
                batch: 0,
                ..ok.clone()
            },
            "--batch = 0",
        ),
        (
            EvalConfig {
                batch: usize::MAX,
                ..ok.clone()
            },
            "needs about",
        ),
    ] {
        let msg = param_error(evaluate(&model, &ModSum::default(), &bad));
        assert!(msg.contains(needle), "'{needle}' not in: {msg}");
    }
    let exp = |pauses: usize, steps: usize| ExperimentConfig {
        base: TrainConfig { steps, ..tiny() },
        variants: variants(
            pauses,
            Objective::ap_default(),
            Objective::va_default(),
            Objective::dp_default(),
        ),
        seeds: vec![1],
        pretrain: 0,
        init: None,
        device: Default::default(),
        lrs: Vec::new(),
        launch: None,
    };
    let run = |c: &ExperimentConfig| run_experiment(c, &ModSum::default(), false, |_, _, _| {});
    assert!(param_error(run(&exp(0, 2))).contains("K >= 1"));
    assert!(param_error(run(&exp(2, 0))).contains("--steps = 0"));
    // The sweep's rates: positive, finite, each once, each fitting the weight decay.
    for (lrs, needle) in [
        (vec![1e-3, 1e-3], "--lrs: 0.001 is given twice"),
        (
            vec![1e-3, f32::NAN],
            "--lrs = NaN: must be a finite number > 0",
        ),
        (vec![0.0], "--lrs = 0: must be a finite number > 0"),
        (vec![1e-3, 20.0], "--weight-decay = 0.1 with --lr = 20"),
    ] {
        let msg = param_error(run(&ExperimentConfig { lrs, ..exp(2, 2) }));
        assert!(msg.contains(needle), "'{needle}' not in: {msg}");
    }
}

#[test]
fn non_finite_checkpoint_weights_are_refused_at_load() {
    let cfg = tiny();
    let mut model: Model<f32> = Model::init(cfg.model.clone(), &mut cyb::rng::seeded(1)).unwrap();
    let bytes = cyb::checkpoint::to_bytes(&model).unwrap();
    cyb::checkpoint::from_bytes(&bytes).unwrap();
    for (name, _, x) in model.params.tensors_mut() {
        if name == "blocks.0.mlp.fc.weight" {
            x[5] = f32::INFINITY;
        }
    }
    let err = cyb::checkpoint::from_bytes(&cyb::checkpoint::to_bytes(&model).unwrap())
        .expect_err("an infinite weight is refused");
    assert!(
        err.contains("blocks.0.mlp.fc.weight") && err.contains("inf at flat index 5"),
        "{err}"
    );
}

#[test]
fn output_paths_are_checked_and_links_followed() {
    use cyb::atomic_file::{check_writable_dir, check_writable_file, write_atomic};
    let dir = std::env::temp_dir().join(format!("cyb-limits-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let msg = |r: cyb::Result<()>| r.unwrap_err().to_string();
    assert!(msg(check_writable_file(&dir)).contains("is a directory"));
    assert!(
        msg(check_writable_file(std::path::Path::new("/dev/null"))).contains("not a regular file")
    );
    assert!(msg(check_writable_file(&dir.join("nope/m.safetensors"))).contains("does not exist"));
    check_writable_file(&dir.join("new.safetensors")).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(msg(check_writable_dir(&file)).contains("not a directory"));
    check_writable_dir(&dir.join("a/b")).unwrap();
    assert!(
        !dir.join("a").exists(),
        "nothing is created before it is written to"
    );
    assert!(msg(check_writable_dir(&file.join("sub"))).contains("file"));
    #[cfg(unix)]
    {
        // Through a relative link: the target is replaced, the link stays a link.
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        write_atomic(&dir.join("link"), b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(dir.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A link to a folder is refused like the folder.
        std::os::unix::fs::symlink(&dir, dir.join("dirlink")).unwrap();
        assert!(msg(write_atomic(&dir.join("dirlink"), b"x")).contains("is a directory"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A save killed between its write and its rename leaves `.NAME.tmp.PID`; the next
/// save of NAME removes it when PID is gone, and leaves everything else alone: a live
/// process's temporary, other files' temporaries, names that only look alike.
#[cfg(target_os = "linux")]
#[test]
fn stale_save_temporaries_are_removed_on_the_next_save() {
    use cyb::atomic_file::write_atomic;
    let dir = std::env::temp_dir().join(format!("cyb-limits-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // PIDs above the kernel's pid_max (at most 2^22) belong to no process.
    let dead = [".m.safetensors.tmp.99999999", ".m.safetensors.tmp.4194305"];
    let live = format!(".m.safetensors.tmp.{}", 1); // init is always alive
    let kept = [
        live.as_str(),
        ".other.safetensors.tmp.99999999",
        ".m.safetensors.tmp.12ab",
        ".m.safetensors.tmp.",
        "m.safetensors.tmp.99999999",
    ];
    for name in dead.iter().chain(kept.iter()) {
        std::fs::write(dir.join(name), "partial").unwrap();
    }
    write_atomic(&dir.join("m.safetensors"), b"new").unwrap();
    assert_eq!(std::fs::read(dir.join("m.safetensors")).unwrap(), b"new");
    for name in dead {
        assert!(!dir.join(name).exists(), "{name} should be removed");
    }
    for name in kept {
        assert!(dir.join(name).exists(), "{name} should stay");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every input is a regular file of bounded size before it is read: devices, FIFOs
/// and folders are clear errors, not an endless read.
#[cfg(unix)]
#[test]
fn inputs_must_be_regular_files_of_bounded_size() {
    use cyb::input_file::{read_bounded, MAX_INPUT_BYTES};
    use std::path::Path;
    let dir = std::env::temp_dir().join(format!("cyb-limits-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let msg = |p: &Path, max: u64| read_bounded(p, "--text", max).unwrap_err().to_string();
    for dev in ["/dev/zero", "/dev/null", "/dev/urandom"] {
        assert!(
            msg(Path::new(dev), MAX_INPUT_BYTES).contains("not a regular file"),
            "{dev}"
        );
    }
    assert!(msg(&dir, MAX_INPUT_BYTES).contains("is a directory"));
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        // Opening a FIFO for reading would block until a writer comes: never opened.
        assert!(msg(&fifo, MAX_INPUT_BYTES).contains("not a regular file"));
    }
    let file = dir.join("f.txt");
    std::fs::write(&file, b"0123456789").unwrap();
    assert!(msg(&file, 9).contains("10 bytes"));
    assert_eq!(read_bounded(&file, "--text", 10).unwrap(), b"0123456789");
    assert!(msg(&dir.join("missing"), 10).contains("missing"));
    // The library's readers go through it.
    assert!(cyb::checkpoint::load("/dev/zero")
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
    assert!(cyb::data::ByteText::from_file(Path::new("/dev/zero"), 4)
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// No number prints as `-0.00` or as hundreds of digits.
#[test]
fn numbers_print_without_negative_zero_or_long_digit_runs() {
    use cyb::number::Num;
    for (x, want) in [
        (-0.0, "0.00"),
        (-1e-9, "0.00"),
        (-0.004999, "0.00"),
        (0.0, "0.00"),
        (-0.005001, "-0.01"),
        (1.5, "1.50"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(format!("{:.2}", Num(x)), want, "{x}");
    }
    assert_eq!(format!("{:>7.3}", Num(-0.0)), "  0.000");
    assert_eq!(format!("{:.0}", Num(-0.4)), "0");
    for (x, want) in [
        (1e-300, "1e-300"),
        (-1e-300, "-1e-300"),
        (1e308, "1e308"),
        (0.25, "0.25"),
        (-0.0, "0"),
        (12345.5, "12345.5"),
        (f64::INFINITY, "inf"),
    ] {
        assert_eq!(Num(x).to_string(), want, "{x}");
    }
    assert_eq!(Num::from(0.003f32).to_string(), "0.003");
    assert_eq!(Num::from(1e-30f32).to_string(), "1e-30");
    // The objective's description (in every report) goes through it.
    let o = cyb::Objective::Ap {
        omega: cyb::StepWeights::Explicit(vec![1e-300, 0.0, 0.0, 1.0]),
        gamma: 1e-300,
        discount: cyb::Discount::Exp,
    };
    let text = o.to_string();
    assert!(text.len() < 80 && text.contains("gamma=1e-300"), "{text}");
}

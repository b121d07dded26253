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
    assert!(!param_error(limits::check_train(&cfg)).contains("loss became"));
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
        let msg = param_error(limits::check_train(&cfg));
        assert!(
            msg.contains("needs about") && msg.contains("available"),
            "{msg}"
        );
        let msg = param_error(train(&cfg, &ModSum::default(), None, false));
        assert!(msg.contains("needs about"), "{msg}");
    }
    // The estimate grows with each dimension and never overflows.
    let base = limits::train_bytes(&tiny());
    assert!(base > 0.0 && base < 1e9, "{base}");
    let mut c = tiny();
    c.steps = usize::MAX;
    c.batch = usize::MAX;
    assert!(limits::train_bytes(&c).is_finite());
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
    };
    let run = |c: &ExperimentConfig| run_experiment(c, &ModSum::default(), false, |_, _, _| {});
    assert!(param_error(run(&exp(0, 2))).contains("K >= 1"));
    assert!(param_error(run(&exp(2, 0))).contains("--steps = 0"));
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
    assert!(dir.join("a/b").is_dir(), "the folder is created");
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

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
    let model: Model<f32> = Model::init(cfg.model.clone(), &mut cyb::rng::Rng::new(1)).unwrap();
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
    };
    let run = |c: &ExperimentConfig| run_experiment(c, &ModSum::default(), false, |_, _, _| {});
    assert!(param_error(run(&exp(0, 2))).contains("K >= 1"));
    assert!(param_error(run(&exp(2, 0))).contains("--steps = 0"));
}

//! The CPU loss reference against the independent SPEC vectors, f64 finite
//! differences, the SPEC identities, stability and reduction modes.

mod common;

use common::{all_objectives, assert_close, f64s, i32s, vectors};
use cyb::cpu::loss::{cyb_loss, halting_from_scalars, row_scalars, LossShape};
use cyb::rng::Rng;
use cyb::{Objective, Reduction, StepWeights};

fn random_case(
    rng: &mut Rng,
    shape: LossShape,
    scale: f64,
    ignore_every: usize,
) -> (Vec<f64>, Vec<i32>) {
    let logits = (0..shape.rows() * (shape.vocab + 1))
        .map(|_| scale * rng.normal())
        .collect();
    let targets = (0..shape.positions())
        .map(|i| {
            if ignore_every > 0 && i % ignore_every == 1 {
                -1
            } else {
                rng.below(shape.vocab) as i32
            }
        })
        .collect();
    (logits, targets)
}

#[test]
fn reproduces_spec_vectors() {
    let v = vectors();
    for (ci, case) in v["loss_cases"].as_array().unwrap().iter().enumerate() {
        let shape = LossShape {
            batch: case["B"].as_u64().unwrap() as usize,
            pauses: case["K"].as_u64().unwrap() as usize,
            seq: case["T"].as_u64().unwrap() as usize,
            vocab: case["V"].as_u64().unwrap() as usize,
        };
        let p = &case["params"];
        let logits = f64s(&case["logits"]);
        let targets = i32s(&case["targets"]);
        let objectives = [
            ("ce_final", Objective::CeFinal),
            ("marginal", Objective::Marginal),
            (
                "ap",
                Objective::Ap {
                    gamma: p["gamma"].as_f64().unwrap(),
                    omega: StepWeights::Explicit(f64s(&p["omega"])),
                },
            ),
            (
                "va",
                Objective::Va {
                    beta: p["beta"].as_f64().unwrap(),
                    prior: StepWeights::Explicit(f64s(&p["prior"])),
                },
            ),
            (
                "dp",
                Objective::Dp {
                    lambda: p["lambda"].as_f64().unwrap(),
                    budget: p["budget"].as_f64().unwrap(),
                },
            ),
        ];
        for (name, obj) in objectives {
            let want = &case["objectives"][name];
            let obj = obj.resolve(shape.pauses).unwrap();
            let mut dlogits = vec![f64::NAN; logits.len()];
            let out = cyb_loss(
                &logits,
                &targets,
                shape,
                &obj,
                Reduction::Mean,
                None,
                Some(&mut dlogits),
            )
            .unwrap();
            let what = format!("case {ci} {name}");
            assert_close(
                &format!("{what} loss"),
                &[out.loss],
                &[want["loss"].as_f64().unwrap()],
                1e-12,
                1e-9,
            );
            assert_close(
                &format!("{what} mean_pauses"),
                &[out.stats.mean_pauses],
                &[want["mean_pauses"].as_f64().unwrap()],
                1e-12,
                1e-9,
            );
            assert_close(
                &format!("{what} dlogits"),
                &dlogits,
                &f64s(&want["dlogits"]),
                1e-12,
                1e-9,
            );
        }
    }
}

/// Central differences of `f` at `x` along every coordinate.
fn finite_difference(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * (1.0 + x[i].abs());
            let x0 = x[i];
            x[i] = x0 + h;
            let fp = f(&x);
            x[i] = x0 - h;
            let fm = f(&x);
            x[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

#[test]
fn gradients_match_finite_differences_every_objective_and_k() {
    let mut rng = Rng::new(11);
    for k in [0usize, 1, 3, 7] {
        let shape = LossShape {
            batch: 2,
            pauses: k,
            seq: 3,
            vocab: 5,
        };
        let (logits, targets) = random_case(&mut rng, shape, 1.5, 4);
        assert!(targets.contains(&-1));
        let mut objectives = all_objectives();
        // Non-default parameters exercise every code path (gamma != 1, skewed weights).
        objectives.push(Objective::Ap {
            gamma: 0.7,
            omega: StepWeights::Geometric(1.3),
        });
        objectives.push(Objective::Va {
            beta: 0.8,
            prior: StepWeights::Uniform,
        });
        objectives.push(Objective::Dp {
            lambda: 0.3,
            budget: 0.1,
        });
        for obj in objectives {
            let r = obj.resolve(k).unwrap();
            let mut d = vec![f64::NAN; logits.len()];
            cyb_loss(
                &logits,
                &targets,
                shape,
                &r,
                Reduction::Mean,
                None,
                Some(&mut d),
            )
            .unwrap();
            let fd = finite_difference(&logits, |x| {
                cyb_loss(x, &targets, shape, &r, Reduction::Mean, None, None)
                    .unwrap()
                    .loss
            });
            assert_close(&format!("K={k} {obj}"), &d, &fd, 1e-7, 1e-5);
        }
    }
}

#[test]
fn gradients_match_in_every_reduction_mode_with_weights() {
    let mut rng = Rng::new(5);
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 4,
        vocab: 6,
    };
    let (logits, targets) = random_case(&mut rng, shape, 1.0, 3);
    let weights: Vec<f32> = (0..shape.positions())
        .map(|_| rng.uniform() as f32 * 2.0)
        .collect();
    let upstream_pos: Vec<f64> = (0..shape.positions()).map(|_| rng.normal()).collect();
    for obj in all_objectives() {
        let r = obj.resolve(3).unwrap();
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for w in [None, Some(weights.as_slice())] {
                // The scalar whose gradient we check: upstream · output.
                let objective_value = |x: &[f64]| {
                    let out = cyb_loss(x, &targets, shape, &r, reduction, w, None).unwrap();
                    match reduction {
                        Reduction::None => {
                            out.loss
                                + out
                                    .per_position
                                    .iter()
                                    .zip(&upstream_pos)
                                    .map(|(l, g)| l * g)
                                    .sum::<f64>()
                        }
                        _ => 0.7 * out.loss,
                    }
                };
                let upstream: Vec<f64> = match reduction {
                    Reduction::None => upstream_pos.clone(),
                    _ => vec![0.7],
                };
                let scalars = row_scalars(&logits, &targets, shape).unwrap();
                let fwd = cyb::cpu::loss::position_objectives(
                    &scalars, &targets, shape, &r, reduction, w,
                )
                .unwrap();
                let grads = fwd.row_grads(shape, &upstream).unwrap();
                let mut d = vec![f64::NAN; logits.len()];
                cyb::cpu::loss::dlogits_from_row_grads(
                    &logits, &targets, shape, &scalars, &grads, &mut d,
                )
                .unwrap();
                let fd = finite_difference(&logits, objective_value);
                assert_close(
                    &format!("{obj} {reduction:?} weights={}", w.is_some()),
                    &d,
                    &fd,
                    1e-7,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn halting_sums_to_one_and_k0_ce_final_is_cross_entropy() {
    let mut rng = Rng::new(3);
    for k in [0usize, 1, 3, 7] {
        let shape = LossShape {
            batch: 1,
            pauses: k,
            seq: 6,
            vocab: 9,
        };
        let (logits, targets) = random_case(&mut rng, shape, 3.0, 0);
        let scalars = row_scalars(&logits, &targets, shape).unwrap();
        for t in 0..shape.seq {
            let rows: Vec<_> = (0..=k).map(|kk| scalars[shape.row(0, kk, t)]).collect();
            let sum: f64 = halting_from_scalars(&rows).h().iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-12,
                "K={k} t={t}: halting sums to {sum}"
            );
        }
    }
    // K = 0: ce_final is ordinary cross-entropy over the real vocabulary.
    let shape = LossShape {
        batch: 2,
        pauses: 0,
        seq: 5,
        vocab: 7,
    };
    let (logits, targets) = random_case(&mut rng, shape, 2.0, 0);
    let r = Objective::CeFinal.resolve(0).unwrap();
    let out = cyb_loss(&logits, &targets, shape, &r, Reduction::Mean, None, None).unwrap();
    let mut ce = 0.0;
    for (pos, z) in logits.chunks(8).enumerate() {
        let m = z[..7].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z[..7].iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        ce += lse - z[targets[pos] as usize];
    }
    assert!(
        (out.loss - ce / 10.0).abs() < 1e-12,
        "{} vs {}",
        out.loss,
        ce / 10.0
    );
}

#[test]
fn ap_with_gamma_one_and_final_weight_is_marginal() {
    let mut rng = Rng::new(8);
    for k in [0usize, 1, 3, 7] {
        let shape = LossShape {
            batch: 2,
            pauses: k,
            seq: 4,
            vocab: 6,
        };
        let (logits, targets) = random_case(&mut rng, shape, 2.0, 3);
        let mut delta = vec![0.0; k + 1];
        delta[k] = 1.0;
        let ap = Objective::Ap {
            gamma: 1.0,
            omega: StepWeights::Explicit(delta),
        }
        .resolve(k)
        .unwrap();
        let marginal = Objective::Marginal.resolve(k).unwrap();
        let (mut d1, mut d2) = (vec![0.0; logits.len()], vec![0.0; logits.len()]);
        let a = cyb_loss(
            &logits,
            &targets,
            shape,
            &ap,
            Reduction::Mean,
            None,
            Some(&mut d1),
        )
        .unwrap();
        let m = cyb_loss(
            &logits,
            &targets,
            shape,
            &marginal,
            Reduction::Mean,
            None,
            Some(&mut d2),
        )
        .unwrap();
        assert!(
            (a.loss - m.loss).abs() < 1e-12 * (1.0 + m.loss.abs()),
            "K={k}: {} vs {}",
            a.loss,
            m.loss
        );
        assert_close(&format!("K={k} grads"), &d1, &d2, 1e-13, 1e-10);
    }
}

#[test]
fn extreme_logits_give_finite_loss_and_gradient() {
    let mut rng = Rng::new(21);
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 4,
        vocab: 5,
    };
    let width = shape.vocab + 1;
    let (base, targets) = random_case(&mut rng, shape, 1e4, 3);
    let mut dk_certain = base.clone();
    let mut dk_impossible = base.clone();
    for row in 0..shape.rows() {
        dk_certain[row * width + shape.vocab] = 5e4;
        dk_impossible[row * width + shape.vocab] = -5e4;
    }
    for (label, logits) in [
        ("|z|~1e4", &base),
        ("DK~1", &dk_certain),
        ("DK~0", &dk_impossible),
    ] {
        for obj in all_objectives() {
            let r = obj.resolve(3).unwrap();
            let mut d = vec![f64::NAN; logits.len()];
            let out = cyb_loss(
                logits,
                &targets,
                shape,
                &r,
                Reduction::Mean,
                None,
                Some(&mut d),
            )
            .unwrap();
            assert!(out.loss.is_finite(), "{label} {obj}: loss {}", out.loss);
            assert!(
                d.iter().all(|x| x.is_finite()),
                "{label} {obj}: non-finite gradient"
            );
            let f32_logits: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
            let mut d32 = vec![f32::NAN; logits.len()];
            let out32 = cyb_loss(
                &f32_logits,
                &targets,
                shape,
                &r,
                Reduction::Mean,
                None,
                Some(&mut d32),
            )
            .unwrap();
            assert!(
                out32.loss.is_finite() && d32.iter().all(|x| x.is_finite()),
                "{label} {obj} f32"
            );
        }
    }
}

#[test]
fn masked_logits_are_skipped_not_nan() {
    // -inf on some real logits (masking) must act like removing them from the softmax.
    let z = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 2.0, 0.5];
    let s = cyb::cpu::loss::row_scalar(&z, 3);
    let want = (1f64.exp() + 2f64.exp()).ln();
    assert!((s.r - want).abs() < 1e-12, "{} vs {want}", s.r);
    assert_eq!((s.e, s.u), (0.5, 2.0));
    let shape = LossShape {
        batch: 1,
        pauses: 1,
        seq: 1,
        vocab: 4,
    };
    let logits = [
        f32::NEG_INFINITY,
        1.0,
        0.0,
        2.0,
        -1.0,
        0.3,
        f32::NEG_INFINITY,
        1.5,
        0.0,
        0.2,
    ];
    let r = Objective::ap_default().resolve(1).unwrap();
    let mut d = vec![f32::NAN; 10];
    let out = cyb_loss(
        &logits,
        &[1],
        shape,
        &r,
        Reduction::Mean,
        None,
        Some(&mut d),
    )
    .unwrap();
    assert!(out.loss.is_finite());
    assert_eq!((d[0], d[6]), (0.0, 0.0), "masked logits get zero gradient");
    assert!(d.iter().all(|x| x.is_finite()));
}

#[test]
fn all_ignored_batch_is_zero_loss_zero_gradient() {
    let mut rng = Rng::new(2);
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 3,
        vocab: 4,
    };
    let (logits, _) = random_case(&mut rng, shape, 1.0, 0);
    let targets = vec![-1; shape.positions()];
    for obj in all_objectives() {
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let r = obj.resolve(3).unwrap();
            let mut d = vec![f64::NAN; logits.len()];
            let out =
                cyb_loss(&logits, &targets, shape, &r, reduction, None, Some(&mut d)).unwrap();
            assert_eq!(out.loss, 0.0, "{obj} {reduction:?}");
            assert!(
                d.iter().all(|&x| x == 0.0),
                "{obj} {reduction:?}: gradient not zero"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let shape = LossShape {
        batch: 1,
        pauses: 1,
        seq: 2,
        vocab: 3,
    };
    let logits = vec![0.0f64; shape.rows() * 4];
    let r = Objective::Marginal.resolve(1).unwrap();
    let run = |logits: &[f64], targets: &[i32], shape| {
        cyb_loss(logits, targets, shape, &r, Reduction::Mean, None, None)
    };
    assert!(matches!(
        run(&logits, &[0, 3], shape),
        Err(cyb::CybError::VocabRange {
            id: 3,
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        run(&logits, &[0, -2], shape),
        Err(cyb::CybError::VocabRange { .. })
    ));
    assert!(matches!(
        run(&logits[1..], &[0, 1], shape),
        Err(cyb::CybError::Shape(_))
    ));
    assert!(matches!(
        run(&logits, &[0], shape),
        Err(cyb::CybError::Shape(_))
    ));
    let wrong_k = Objective::Marginal.resolve(2).unwrap();
    assert!(cyb_loss(
        &logits,
        &[0, 1],
        shape,
        &wrong_k,
        Reduction::Mean,
        None,
        None
    )
    .is_err());
    assert!(cyb_loss(
        &logits,
        &[0, 1],
        shape,
        &r,
        Reduction::Mean,
        Some(&[1.0, -1.0]),
        None
    )
    .is_err());
    assert!(Objective::Va {
        beta: 0.1,
        prior: StepWeights::Explicit(vec![1.0, 0.0])
    }
    .resolve(1)
    .is_err());
    assert!(Objective::Ap {
        gamma: f64::NAN,
        omega: StepWeights::Uniform
    }
    .resolve(1)
    .is_err());
    assert!(Objective::Ap {
        gamma: 0.9,
        omega: StepWeights::Explicit(vec![1.0])
    }
    .resolve(1)
    .is_err());
    assert!("foo".parse::<Objective>().is_err());
}

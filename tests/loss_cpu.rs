//! The CPU loss reference against the independent SPEC vectors, f64 finite
//! differences, the SPEC identities, stability and reduction modes.

mod common;

use common::{all_objectives, assert_close, f64s, i32s, v2_objectives, vectors_v2};
use cyb::cpu::loss::{cyb_loss, halting_from_scalars, row_scalars, LossShape};
use cyb::rng::{seeded, CybRng};
use cyb::{Discount, Objective, Reduction, ResolvedObjective, StepWeights};
use rand::RngExt;
use rand_distr::StandardNormal;

/// `LossShape` of `[B, K+1, T, V+1]` logits.
fn dims(batch: usize, pauses: usize, seq: usize, vocab: usize) -> LossShape {
    LossShape {
        batch,
        pauses,
        seq,
        vocab,
    }
}

fn random_case(
    rng: &mut CybRng,
    shape: LossShape,
    scale: f64,
    ignore_every: usize,
) -> (Vec<f64>, Vec<i32>) {
    let logits = (0..shape.rows() * (shape.vocab + 1))
        .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let targets = (0..shape.positions())
        .map(|i| {
            if ignore_every > 0 && i % ignore_every == 1 {
                -1
            } else {
                rng.random_range(0..shape.vocab) as i32
            }
        })
        .collect();
    (logits, targets)
}

#[test]
fn reproduces_spec_v2_vectors() {
    let v = vectors_v2();
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (ci, case) in v["loss_cases"].as_array().unwrap().iter().enumerate() {
        let shape = dims(
            case["B"].as_u64().unwrap() as usize,
            case["K"].as_u64().unwrap() as usize,
            case["T"].as_u64().unwrap() as usize,
            case["V"].as_u64().unwrap() as usize,
        );
        let logits = f64s(&case["logits"]);
        let targets = i32s(&case["targets"]);
        for (name, obj) in v2_objectives(&case["params"], shape.pauses) {
            let want = &case["objectives"][name];
            if want.is_null() {
                // Absent only for `va` with a zero in rho: the API must refuse it.
                assert_eq!(name, "va", "case {ci}: {name} missing from the vectors");
                let err = obj.expect_err("va with a zero in rho must be an error");
                assert!(err.to_string().contains("rho"), "{err}");
                continue;
            }
            let obj = obj.unwrap();
            let (out, dlogits) = loss_and_grad(&logits, &targets, shape, &obj, Reduction::Mean);
            let what = format!("case {ci} {name}");
            let want_d = f64s(&want["dlogits"]);
            for (got, w) in [
                (vec![out.loss], vec![want["loss"].as_f64().unwrap()]),
                (
                    vec![out.stats.mean_pauses],
                    vec![want["mean_pauses"].as_f64().unwrap()],
                ),
                (dlogits.clone(), want_d.clone()),
            ] {
                for (g, w) in got.iter().zip(&w) {
                    worst = worst.max((g - w).abs() / w.abs().max(1e-12));
                }
            }
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
            assert_close(&format!("{what} dlogits"), &dlogits, &want_d, 1e-12, 1e-9);
            checked += 1;
        }
    }
    assert!(checked >= 24, "only {checked} objective cases checked");
    eprintln!("{checked} (case, objective) pairs; max relative error {worst:.3e}");
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

/// Every objective, with defaults and with non-default parameters for this `K`:
/// zeros in omega and rho, both discounts, a non-trivial beta and alpha; each with the
/// DK bias `dk_bias`.
fn objectives_for(k: usize, dk_bias: f64) -> Vec<ResolvedObjective> {
    // Ratios with zeros (for K >= 1): 0 at step 0, 2 at step 1 (when K >= 2), 1 at K.
    let with_zeros: Vec<f64> = (0..=k)
        .map(|i| match i {
            _ if i == k => 1.0,
            1 => 2.0,
            _ => 0.0,
        })
        .collect();
    let skewed: Vec<f64> = (0..=k).map(|i| 1.0 + (i % 3) as f64).collect();
    // Linear discount that stays > 0 at step K.
    let lin_gamma = 1.0 - 0.5 / (k as f64 + 1.0);
    let mut objectives = all_objectives();
    objectives.extend([
        Objective::Ap {
            omega: StepWeights::Explicit(with_zeros.clone()),
            gamma: 0.8,
            discount: Discount::Exp,
        },
        Objective::Ap {
            omega: StepWeights::Explicit(skewed.clone()),
            gamma: lin_gamma,
            discount: Discount::Linear,
        },
        Objective::Ap {
            omega: StepWeights::Uniform,
            gamma: 1.0,
            discount: Discount::Exp,
        },
        Objective::Va {
            rho: StepWeights::Explicit(skewed.clone()),
            beta: 0.7,
            gamma: lin_gamma,
            discount: Discount::Linear,
        },
        Objective::Va {
            rho: StepWeights::Uniform,
            beta: 1.0,
            gamma: 0.9,
            discount: Discount::Exp,
        },
        Objective::Dp {
            rho: StepWeights::Explicit(with_zeros),
            alpha: 0.3,
            gamma: 0.85,
            discount: Discount::Exp,
        },
        Objective::Dp {
            rho: StepWeights::Explicit(skewed),
            alpha: 0.1,
            gamma: lin_gamma,
            discount: Discount::Linear,
        },
    ]);
    objectives
        .iter()
        .map(|o| {
            o.resolve(k)
                .and_then(|r| r.with_dk_bias(dk_bias))
                .unwrap_or_else(|e| panic!("K={k} {o}: {e}"))
        })
        .collect()
}

/// `cyb_loss` with `dlogits` (poisoned with NaN first) and no weights.
fn loss_and_grad<T: num_traits::Float + Send + Sync>(
    logits: &[T],
    targets: &[i32],
    shape: LossShape,
    r: &ResolvedObjective,
    reduction: Reduction,
) -> (cyb::cpu::loss::LossForward, Vec<T>) {
    let mut d = vec![T::nan(); logits.len()];
    let out = cyb_loss(logits, targets, shape, r, reduction, None, Some(&mut d)).unwrap();
    (out, d)
}

fn mean_loss(x: &[f64], targets: &[i32], shape: LossShape, r: &ResolvedObjective) -> f64 {
    cyb_loss(x, targets, shape, r, Reduction::Mean, None, None)
        .unwrap()
        .loss
}

#[test]
fn gradients_match_finite_differences_every_objective_and_k() {
    let mut rng = seeded(11);
    for k in [0usize, 1, 3, 7] {
        let shape = dims(2, k, 3, 5);
        let (logits, targets) = random_case(&mut rng, shape, 1.5, 4);
        assert!(targets.contains(&-1));
        for dk_bias in [0.0, 1.3, -0.8] {
            for r in objectives_for(k, dk_bias) {
                let (_, d) = loss_and_grad(&logits, &targets, shape, &r, Reduction::Mean);
                let fd = finite_difference(&logits, |x| mean_loss(x, &targets, shape, &r));
                assert_close(&format!("K={k} b={dk_bias} {r:?}"), &d, &fd, 1e-7, 1e-5);
            }
        }
    }
}

#[test]
fn gradients_match_in_every_reduction_mode_with_weights() {
    let mut rng = seeded(5);
    let shape = dims(2, 3, 4, 6);
    let (logits, targets) = random_case(&mut rng, shape, 1.0, 3);
    let weights: Vec<f32> = (0..shape.positions())
        .map(|_| rng.random::<f64>() as f32 * 2.0)
        .collect();
    let upstream_pos: Vec<f64> = (0..shape.positions())
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    for r in objectives_for(3, 0.6) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for w in [None, Some(weights.as_slice())] {
                // The scalar whose gradient we check: upstream · output.
                let objective_value = |x: &[f64]| {
                    let out = cyb_loss(x, &targets, shape, &r, reduction, w, None).unwrap();
                    match reduction {
                        Reduction::None => out
                            .per_position
                            .iter()
                            .zip(&upstream_pos)
                            .map(|(l, g)| l * g)
                            .sum::<f64>(),
                        _ => 0.7 * out.loss,
                    }
                };
                let upstream: Vec<f64> = match reduction {
                    Reduction::None => upstream_pos.clone(),
                    _ => vec![0.7],
                };
                let scalars = row_scalars(&logits, &targets, shape, r.dk_bias).unwrap();
                let fwd = cyb::cpu::loss::position_objectives(
                    &scalars, &targets, shape, &r, reduction, w,
                )
                .unwrap();
                // Reported losses: Mean = Sum / sum w; None reports the sum.
                let total: f64 = fwd.per_position.iter().sum();
                let want = match reduction {
                    Reduction::Mean => total / fwd.stats.weight_sum,
                    _ => total,
                };
                // The same f64 numbers summed in another order: 1e-12 relative (absolute
                // below 1) is ~1e4 ulps, room for the summation order of a few hundred terms.
                approx::assert_relative_eq!(fwd.loss, want, epsilon = 1e-12, max_relative = 1e-12);
                let grads = fwd.row_grads(shape, &upstream).unwrap();
                let mut d = vec![f64::NAN; logits.len()];
                cyb::cpu::loss::dlogits_from_row_grads(
                    &logits, &targets, shape, &scalars, &grads, &mut d,
                )
                .unwrap();
                let fd = finite_difference(&logits, objective_value);
                assert_close(
                    &format!("{r:?} {reduction:?} weights={}", w.is_some()),
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
fn halting_sums_to_one_and_k0_is_cross_entropy_for_every_objective() {
    let mut rng = seeded(3);
    for k in [0usize, 1, 3, 7] {
        let shape = dims(1, k, 6, 9);
        let (logits, targets) = random_case(&mut rng, shape, 3.0, 0);
        let scalars = row_scalars(&logits, &targets, shape, 2.5).unwrap();
        for t in 0..shape.seq {
            let rows: Vec<_> = (0..=k).map(|kk| scalars[shape.row(0, kk, t)]).collect();
            let sum: f64 = halting_from_scalars(&rows).h().iter().sum();
            // At most 8 probabilities in f64 that sum to 1 by construction: a few ulps.
            approx::assert_abs_diff_eq!(sum, 1.0, epsilon = 1e-12);
        }
    }
    // K = 0: every objective (any parameters, any DK bias) is ordinary cross-entropy
    // over the real vocabulary, and the DK logit gets no gradient.
    let shape = dims(2, 0, 5, 7);
    let (logits, targets) = random_case(&mut rng, shape, 2.0, 0);
    let mut ce = 0.0;
    for (pos, z) in logits.chunks(8).enumerate() {
        let m = z[..7].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z[..7].iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        ce += lse - z[targets[pos] as usize];
    }
    let reference = objectives_for(0, 0.0).remove(0);
    let (_, d_ref) = loss_and_grad(&logits, &targets, shape, &reference, Reduction::Mean);
    for dk_bias in [0.0, 4.0] {
        for r in objectives_for(0, dk_bias) {
            let (out, d) = loss_and_grad(&logits, &targets, shape, &r, Reduction::Mean);
            // The same cross-entropy through the objective's log-space halting algebra
            // (with K = 0 every term but one is log 1 = 0): ulps of a loss of order 1.
            approx::assert_abs_diff_eq!(out.loss, ce / 10.0, epsilon = 1e-12);
            assert_eq!(out.stats.mean_pauses, 0.0);
            assert_close(&format!("{r:?} K=0 grads"), &d, &d_ref, 1e-14, 1e-11);
        }
    }
}

#[test]
fn ap_with_defaults_is_marginal() {
    let mut rng = seeded(8);
    for k in [0usize, 1, 3, 7] {
        let shape = dims(2, k, 4, 6);
        let (logits, targets) = random_case(&mut rng, shape, 2.0, 3);
        for dk_bias in [0.0, -2.0] {
            let ap = Objective::ap_default()
                .resolve(k)
                .and_then(|r| r.with_dk_bias(dk_bias))
                .unwrap();
            let marginal = Objective::Marginal
                .resolve(k)
                .and_then(|r| r.with_dk_bias(dk_bias))
                .unwrap();
            let (a, d1) = loss_and_grad(&logits, &targets, shape, &ap, Reduction::Mean);
            let (m, d2) = loss_and_grad(&logits, &targets, shape, &marginal, Reduction::Mean);
            // Two formulas for the same f64 value (AP with these weights is the marginal):
            // 1e-12 relative, absolute below 1, is a few thousand ulps.
            approx::assert_relative_eq!(a.loss, m.loss, epsilon = 1e-12, max_relative = 1e-12);
            assert_close(&format!("K={k} grads"), &d1, &d2, 1e-13, 1e-10);
        }
    }
}

/// `d_k` and `t_k` of one position straight from its logits (softmax in f64).
fn dk_and_t(
    logits: &[f64],
    shape: LossShape,
    b: usize,
    t: usize,
    y: usize,
    bias: f64,
) -> (Vec<f64>, Vec<f64>) {
    let width = shape.vocab + 1;
    (0..=shape.pauses)
        .map(|k| {
            let z = &logits[shape.row(b, k, t) * width..][..width];
            let real: f64 = z[..shape.vocab].iter().map(|x| x.exp()).sum();
            let dk = (z[shape.vocab] + bias).exp();
            (dk / (real + dk), z[y].exp() / real)
        })
        .unzip()
}

#[test]
fn ap_is_the_decision_tree_of_figure_3() {
    // Deadline m ~ omega; before m the model answers at k with probability
    // (1 - d_k) prod_{j<k} d_j; at m it must answer. AP = -log E[gamma_S t_S].
    let mut rng = seeded(31);
    for k in [0usize, 1, 3, 7] {
        let shape = dims(2, k, 3, 5);
        let (logits, targets) = random_case(&mut rng, shape, 1.0, 4);
        for dk_bias in [0.0, 0.9] {
            for r in objectives_for(k, dk_bias)
                .into_iter()
                .filter(|r| r.kind == cyb::ObjectiveKind::Ap)
            {
                let out =
                    cyb_loss(&logits, &targets, shape, &r, Reduction::None, None, None).unwrap();
                let gamma: Vec<f64> = r.log_gamma.iter().map(|l| l.exp()).collect();
                for b in 0..shape.batch {
                    for t in 0..shape.seq {
                        let pos = b * shape.seq + t;
                        if targets[pos] < 0 {
                            continue;
                        }
                        let (d, tk) =
                            dk_and_t(&logits, shape, b, t, targets[pos] as usize, dk_bias);
                        let mut expect = 0.0;
                        for m in 0..=k {
                            let mut reach = 1.0; // prod_{j<i} d_j
                            for i in 0..m {
                                expect += r.omega[m] * reach * (1.0 - d[i]) * gamma[i] * tk[i];
                                reach *= d[i];
                            }
                            expect += r.omega[m] * reach * gamma[m] * tk[m];
                        }
                        let got = out.per_position[pos];
                        // The closed form sums probabilities in linear space, the crate
                        // works in log space: 1e-11 relative (absolute below 1) covers
                        // the exp/log round trips on losses of order 1-10.
                        approx::assert_relative_eq!(
                            got,
                            -expect.ln(),
                            epsilon = 1e-11,
                            max_relative = 1e-11
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_inputs_give_finite_loss_and_gradient() {
    let mut rng = seeded(21);
    let shape = dims(2, 3, 4, 5);
    let width = shape.vocab + 1;
    let (base, targets) = random_case(&mut rng, shape, 1e4, 3);
    let mut dk_certain = base.clone();
    let mut dk_impossible = base.clone();
    for row in 0..shape.rows() {
        dk_certain[row * width + shape.vocab] = 5e4;
        dk_impossible[row * width + shape.vocab] = -5e4;
    }
    let (mild, _) = random_case(&mut rng, shape, 1.0, 3);
    for (label, logits) in [
        ("|z|~1e4", &base),
        ("DK~1", &dk_certain),
        ("DK~0", &dk_impossible),
        ("|z|~1", &mild),
    ] {
        for dk_bias in [0.0, 30.0, -30.0] {
            for r in objectives_for(3, dk_bias) {
                let (out, d) = loss_and_grad(logits, &targets, shape, &r, Reduction::Mean);
                assert!(
                    out.loss.is_finite() && out.stats.mean_pauses.is_finite(),
                    "{label} b={dk_bias} {r:?}: loss {}",
                    out.loss
                );
                assert!(
                    d.iter().all(|x| x.is_finite()),
                    "{label} b={dk_bias} {r:?}: non-finite gradient"
                );
                let f32_logits: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
                let (out32, d32) = loss_and_grad(&f32_logits, &targets, shape, &r, Reduction::Mean);
                assert!(
                    out32.loss.is_finite() && d32.iter().all(|x| x.is_finite()),
                    "{label} b={dk_bias} {r:?} f32"
                );
            }
        }
    }
}

#[test]
fn dk_bias_is_added_to_the_dk_logit() {
    // Shifting the DK column by b is the same as a DK bias of b, for loss and gradient.
    let mut rng = seeded(17);
    let shape = dims(1, 3, 5, 6);
    let (logits, targets) = random_case(&mut rng, shape, 1.0, 3);
    let mut shifted = logits.clone();
    for row in 0..shape.rows() {
        shifted[row * (shape.vocab + 1) + shape.vocab] += 2.2;
    }
    for (biased, plain) in objectives_for(3, 2.2)
        .into_iter()
        .zip(objectives_for(3, 0.0))
    {
        let (a, d1) = loss_and_grad(&logits, &targets, shape, &biased, Reduction::Mean);
        let (b, d2) = loss_and_grad(&shifted, &targets, shape, &plain, Reduction::Mean);
        // A bias added inside the scalar vs the same shift applied to the logits: one
        // rounding apart on values of order 1.
        approx::assert_abs_diff_eq!(a.loss, b.loss, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(a.stats.mean_pauses, b.stats.mean_pauses, epsilon = 1e-12);
        assert_close(&format!("{biased:?}"), &d1, &d2, 1e-14, 1e-10);
    }
    // psi = 0.9: equal logits give d_k = 0.9.
    let b = cyb::objective::dk_bias_from_prior(0.9, 6).unwrap();
    let s = cyb::cpu::loss::row_scalar(&[0.0f64; 7], 0, b);
    let d = (s.e - cyb::cpu::loss::log_add_exp(s.r, s.e)).exp();
    // log(0.9/0.1) + log V and back through exp/log-add-exp: ulps of 0.9.
    approx::assert_abs_diff_eq!(d, 0.9, epsilon = 1e-12);
}

#[test]
fn masked_logits_are_skipped_not_nan() {
    // -inf on some real logits (masking) must act like removing them from the softmax.
    let z = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 2.0, 0.5];
    let s = cyb::cpu::loss::row_scalar(&z, 3, 0.25);
    let want = (1f64.exp() + 2f64.exp()).ln();
    // The same log-sum-exp of two finite terms, computed two ways: ulps of ~2.3.
    approx::assert_abs_diff_eq!(s.r, want, epsilon = 1e-12);
    assert_eq!((s.e, s.u), (0.75, 2.0));
    let shape = dims(1, 1, 1, 4);
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
    // Target 3 is unmasked in both rows (a masked target at step K makes ce_final and
    // va infinite, as they should be).
    for r in objectives_for(1, 0.5) {
        let (out, d) = loss_and_grad(&logits, &[3], shape, &r, Reduction::Mean);
        assert!(out.loss.is_finite(), "{r:?}");
        assert_eq!((d[0], d[6]), (0.0, 0.0), "masked logits get zero gradient");
        assert!(d.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn all_ignored_batch_is_zero_loss_zero_gradient() {
    let mut rng = seeded(2);
    let shape = dims(2, 3, 3, 4);
    let (logits, _) = random_case(&mut rng, shape, 1.0, 0);
    let targets = vec![-1; shape.positions()];
    for r in objectives_for(3, 1.0) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let (out, d) = loss_and_grad(&logits, &targets, shape, &r, reduction);
            assert_eq!(out.loss, 0.0, "{r:?} {reduction:?}");
            assert!(
                d.iter().all(|&x| x == 0.0),
                "{r:?} {reduction:?}: gradient not zero"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let shape = dims(1, 1, 2, 3);
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
    assert!("foo".parse::<Objective>().is_err());
}

/// The parameter errors the issue lists, each a `CybError::Param` naming the problem.
#[test]
fn bad_parameters_are_clear_errors() {
    let ratios = |s: &str| s.parse::<StepWeights>().unwrap();
    let ap = |omega: &str, gamma: f64, discount| Objective::Ap {
        omega: ratios(omega),
        gamma,
        discount,
    };
    let va = |rho: &str, beta: f64| Objective::Va {
        rho: ratios(rho),
        beta,
        gamma: 1.0,
        discount: Discount::Exp,
    };
    let dp = |rho: &str, alpha: f64| Objective::Dp {
        rho: ratios(rho),
        alpha,
        gamma: 1.0,
        discount: Discount::Exp,
    };
    let cases: Vec<(Objective, &str)> = vec![
        (ap("0:0:1", 1.0, Discount::Exp), "exactly K+1 = 4"),
        (ap("0:0:0:0:1", 1.0, Discount::Exp), "exactly K+1 = 4"),
        (ap("1:-1:1:1", 1.0, Discount::Exp), ">= 0"),
        (ap("0:0:0:0", 1.0, Discount::Exp), "all zero"),
        (ap("0:0:0:1", 0.0, Discount::Exp), "(0, 1]"),
        (ap("0:0:0:1", 1.5, Discount::Exp), "(0, 1]"),
        (ap("0:0:0:1", f64::NAN, Discount::Exp), "(0, 1]"),
        (ap("0:0:0:1", 2.0 / 3.0, Discount::Linear), "step 3"),
        (va("0:1:1:2", 1.0), "rho"),
        (va("1:1:1:1", f64::NAN), "beta"),
        (va("1:1:1:1", f64::INFINITY), "beta"),
        (dp("1:1:1:1", f64::NAN), "alpha"),
        (dp("1:1:1", 0.01), "exactly K+1 = 4"),
        (dp("0:0:0:0", 0.01), "all zero"),
        // Ratios whose sum overflows would normalise to all zeros; KL weights beyond
        // MAX_KL_WEIGHT overflow the loss: refused, naming the flag.
        (va("1e308:1e308:1e308:1e308", 1.0), "--rho"),
        (dp("1e308:1e308:1:1e308", 0.01), "sum to more"),
        (ap("1e308:1e308:0:1e308", 1.0, Discount::Exp), "--omega"),
        (va("1:1:1:1", 1e308), "--beta"),
        (va("1:1:1:1", 2e6), "the default is 1"),
        (dp("1:1:1:1", 1e7), "--alpha"),
    ];
    for (o, needle) in cases {
        match o.resolve(3) {
            Err(cyb::CybError::Param(msg)) => {
                assert!(msg.contains(needle), "{o}: '{msg}' lacks '{needle}'")
            }
            other => panic!("{o}: expected a parameter error, got {other:?}"),
        }
    }
    // Linear with gamma_K > 0 is fine; dp allows zeros in rho; ap allows zeros in omega.
    assert!(ap("0:0:0:1", 0.7, Discount::Linear).resolve(3).is_ok());
    assert!(dp("0:1:1:2", 0.01).resolve(3).is_ok());
    assert!(ap("0:2:0:1", 0.99, Discount::Exp).resolve(3).is_ok());
    // Huge ratios whose sum is finite, and the largest KL weights, are fine.
    assert!(ap("1e308:1:0:1", 1.0, Discount::Exp).resolve(3).is_ok());
    let max = cyb::objective::MAX_KL_WEIGHT;
    assert!(va("1:1:1:1", max).resolve(3).is_ok() && dp("1:1:1:1", max).resolve(3).is_ok());
    assert!("1:x:1".parse::<StepWeights>().is_err());
    let r = Objective::ap_default().resolve(3).unwrap();
    assert!(r.clone().with_dk_bias(f64::NAN).is_err());
    assert!(r.with_dk_bias(f64::INFINITY).is_err());
    for psi in [-0.1, 1.0, 1.5, f64::NAN] {
        assert!(
            cyb::objective::dk_bias_from_prior(psi, 10).is_err(),
            "{psi}"
        );
    }
    // Defaults for K != 3: omega = delta_K, rho uniform.
    let r = Objective::ap_default().resolve(5).unwrap();
    assert_eq!(r.omega, vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    let r = Objective::dp_default().resolve(1).unwrap();
    assert_eq!(r.rho, vec![0.5, 0.5]);
}

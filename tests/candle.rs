//! The CYB loss as a candle custom op (feature `candle`): its forward and backward
//! against the CPU reference, the gradients of the candle trainer's parameters
//! (examples/candle_trainer.rs) through the op and candle's autograd against finite
//! differences of the reference loss, that the trainer's loss falls, and that bad
//! inputs are errors.

use approx::{assert_relative_eq, relative_eq};
use candle_core::{DType, Device, Tensor, Var};
use cyb::candle::{cyb_loss, CybLossOp};
use cyb::cpu::loss::{self, LossShape};
use cyb::{Discount, Objective, Reduction, ResolvedObjective, StepWeights};

#[path = "../examples/candle_trainer.rs"]
#[allow(dead_code)]
mod trainer;

/// The five objectives with parameters away from their defaults (discounts, a
/// deadline and reference distributions that are not uniform), and a DK bias, so that
/// every term of SPEC section 4 carries weight.
fn objectives(k: usize) -> Vec<ResolvedObjective> {
    let ratios = |s: &str| s.parse::<StepWeights>().unwrap();
    let steps = |v: [&'static str; 3]| v[k - 1];
    assert!((1..=3).contains(&k), "ratio strings below cover K = 1..=3");
    [
        Objective::CeFinal,
        Objective::Marginal,
        Objective::Ap {
            omega: ratios(steps(["1:3", "1:0:2", "1:0:2:4"])),
            gamma: 0.9,
            discount: Discount::Exp,
        },
        Objective::Va {
            rho: ratios(steps(["2:1", "3:2:1", "4:1:1:4"])),
            beta: 0.5,
            gamma: 0.95,
            discount: Discount::Linear,
        },
        Objective::Dp {
            rho: StepWeights::Uniform,
            alpha: 0.3,
            gamma: 0.9,
            discount: Discount::Exp,
        },
    ]
    .iter()
    .map(|o| o.resolve(k).unwrap().with_dk_bias(0.7).unwrap())
    .collect()
}

/// Deterministic logits with a spread of a few units, like a model's.
fn logits_f64(shape: LossShape) -> Vec<f64> {
    (0..shape.rows() * (shape.vocab + 1))
        .map(|i| 2.5 * (i as f64 * 0.731 + 0.3).sin() + (i as f64 * 0.127).cos())
        .collect()
}

/// Targets with ignored positions (-1) and the extremes 0 and V-1.
fn targets_for(shape: LossShape) -> Vec<i32> {
    (0..shape.positions())
        .map(|i| match i % 5 {
            1 => -1,
            3 => shape.vocab as i32 - 1,
            _ => ((i * 3) % shape.vocab) as i32,
        })
        .collect()
}

fn cpu_tensor<T: candle_core::WithDType>(v: Vec<T>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The op's backward against the reference's `dlogits` (and its forward against the
/// reference's loss) for every objective and every reduction, with position weights.
/// Both run the same f64 code on the same f64 logits; they differ only in where the
/// reduction's scale is applied (candle multiplies the upstream gradient, the
/// reference the row gradients), so they agree to a few ulps: rtol 1e-12.
#[test]
fn op_forward_and_backward_match_the_reference() {
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 5,
        vocab: 7,
    };
    let dims = [shape.batch, shape.pauses + 1, shape.seq, shape.vocab + 1];
    let x = logits_f64(shape);
    let targets = targets_for(shape);
    let weights: Vec<f32> = (0..shape.positions())
        .map(|i| 0.25 + (i % 4) as f32 * 0.5)
        .collect();
    // Upstream gradient per position for `Reduction::None`, not all equal.
    let upstream: Vec<f64> = (0..shape.positions())
        .map(|i| 1.0 - 0.15 * i as f64)
        .collect();
    let targets_t = cpu_tensor(
        targets.iter().map(|&y| y as i64).collect(),
        &[shape.batch, shape.seq],
    );
    let weights_t = cpu_tensor(weights.clone(), &[shape.batch, shape.seq]);
    let upstream_t = cpu_tensor(upstream.clone(), &[shape.batch, shape.seq]);

    for obj in objectives(shape.pauses) {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for weighted in [false, true] {
                let what = format!("{:?} {reduction:?} weighted {weighted}", obj.kind);
                let w = weighted.then_some(weights.as_slice());
                let scalars = loss::row_scalars(&x, &targets, shape, obj.dk_bias).unwrap();
                let fwd = loss::position_objectives(&scalars, &targets, shape, &obj, reduction, w)
                    .unwrap();
                let up = if reduction == Reduction::None {
                    upstream.clone()
                } else {
                    vec![1.0]
                };
                let grads = fwd.row_grads(shape, &up).unwrap();
                let mut want = vec![f64::NAN; x.len()];
                loss::dlogits_from_row_grads(&x, &targets, shape, &scalars, &grads, &mut want)
                    .unwrap();

                let logits = Var::from_tensor(&cpu_tensor(x.clone(), &dims)).unwrap();
                let out = cyb_loss(
                    &logits,
                    &targets_t,
                    &obj,
                    reduction,
                    weighted.then_some(&weights_t),
                )
                .unwrap();
                let scalar = if reduction == Reduction::None {
                    assert_eq!(out.dims(), &[shape.batch, shape.seq], "{what}");
                    for (i, (got, want)) in to_f64(&out).iter().zip(&fwd.per_position).enumerate() {
                        assert!(
                            relative_eq!(*got, *want, epsilon = 1e-15, max_relative = 1e-12),
                            "{what}: per-position loss {i}: {got} vs reference {want}"
                        );
                        assert!(targets[i] >= 0 || *got == 0.0, "{what}: ignored {i}");
                    }
                    (&out * &upstream_t).unwrap().sum_all().unwrap()
                } else {
                    assert_relative_eq!(
                        out.to_scalar::<f64>().unwrap(),
                        fwd.loss,
                        epsilon = 1e-15,
                        max_relative = 1e-12
                    );
                    out
                };
                let grads = scalar.backward().unwrap();
                let got = to_f64(grads.get(&logits).expect("logits have a gradient"));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(g.is_finite(), "{what}: dlogits[{i}] = {g}");
                    assert!(
                        relative_eq!(*g, *w, epsilon = 1e-15, max_relative = 1e-12),
                        "{what}: dlogits[{i}]: {g} vs reference {w}"
                    );
                }
            }
        }
    }
}

/// f32 logits: the op computes in f32 rows / f64 positions exactly as the reference
/// does for f32, so the loss and gradients equal the reference's f32 results up to
/// the f32 rounding of the reduction (rtol 1e-6, a few f32 ulps).
#[test]
fn f32_logits_match_the_f32_reference() {
    let shape = LossShape {
        batch: 3,
        pauses: 2,
        seq: 4,
        vocab: 9,
    };
    let dims = [shape.batch, shape.pauses + 1, shape.seq, shape.vocab + 1];
    let x: Vec<f32> = logits_f64(shape).iter().map(|&v| v as f32).collect();
    let targets = targets_for(shape);
    let targets_t = cpu_tensor(targets.clone(), &[shape.batch, shape.seq]);
    for obj in objectives(shape.pauses) {
        let mut want = vec![f32::NAN; x.len()];
        let fwd = loss::cyb_loss(
            &x,
            &targets,
            shape,
            &obj,
            Reduction::Mean,
            None,
            Some(&mut want),
        )
        .unwrap();
        let logits = Var::from_tensor(&cpu_tensor(x.clone(), &dims)).unwrap();
        let out = cyb_loss(&logits, &targets_t, &obj, Reduction::Mean, None).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        assert_relative_eq!(
            out.to_scalar::<f32>().unwrap() as f64,
            fwd.loss,
            epsilon = 1e-7,
            max_relative = 1e-6
        );
        let grads = out.backward().unwrap();
        let got: Vec<f32> = grads
            .get(&logits)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                relative_eq!(*g, *w, epsilon = 1e-8, max_relative = 1e-6),
                "{:?}: dlogits[{i}]: {g} vs reference {w}",
                obj.kind
            );
        }
    }
}

/// A small f64 version of the trainer's model.
fn small_model() -> trainer::Model {
    let dims = trainer::Dims {
        batch: 2,
        seq: 5,
        vocab: 6,
        pauses: 2,
        embed: 4,
        hidden: 5,
    };
    trainer::Model::new(dims, DType::F64).unwrap()
}

/// The reference loss (Mean) of the model's logits on batch 1, evaluated by
/// `cyb::cpu::loss::cyb_loss` without candle's autograd or the op.
fn reference_loss(model: &trainer::Model, obj: &ResolvedObjective) -> f64 {
    let d = model.dims;
    let shape = LossShape {
        batch: d.batch,
        pauses: d.pauses,
        seq: d.seq,
        vocab: d.vocab,
    };
    let (tokens, targets) = trainer::batch(d, 1).unwrap();
    let logits = to_f64(&model.forward(&tokens).unwrap());
    let targets: Vec<i32> = to_f64(&targets).iter().map(|&y| y as i32).collect();
    loss::cyb_loss(&logits, &targets, shape, obj, Reduction::Mean, None, None)
        .unwrap()
        .loss
}

/// Gradients of every trainer parameter, through the op's backward and candle's
/// autograd, against central finite differences of the reference loss in f64
/// (step 1e-5: truncation error ~1e-10 and rounding ~1e-11 against gradients of order
/// 1e-3..1, so 1e-8 absolute or 1e-6 relative leaves a wide margin and still catches
/// a wrong term: a DK gradient off by 0.1% fails).
#[test]
fn trainer_gradients_match_finite_differences_of_the_reference() {
    let model = small_model();
    for obj in objectives(model.dims.pauses) {
        let l = trainer::loss(&model, &obj, 1).unwrap();
        assert_relative_eq!(
            l.to_scalar::<f64>().unwrap(),
            reference_loss(&model, &obj),
            epsilon = 1e-14,
            max_relative = 1e-12
        );
        let grads = l.backward().unwrap();
        for (p, var) in model.vars.iter().enumerate() {
            let got = to_f64(grads.get(var).expect("every parameter has a gradient"));
            let x0 = to_f64(var.as_tensor());
            let eps = 1e-5;
            for i in 0..x0.len() {
                let at = |delta: f64| {
                    let mut x = x0.clone();
                    x[i] += delta;
                    var.set(&cpu_tensor(x, var.dims())).unwrap();
                    reference_loss(&model, &obj)
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&cpu_tensor(x0.clone(), var.dims())).unwrap();
                assert!(
                    relative_eq!(got[i], fd, epsilon = 1e-8, max_relative = 1e-6),
                    "{:?}: parameter {p} entry {i}: autograd {} finite difference {fd}",
                    obj.kind,
                    got[i]
                );
            }
        }
    }
}

/// The same parameter gradients once more, with the reference's own `dlogits` fed
/// into candle's autograd in place of the op (`sum(logits * dlogits_ref)` has
/// gradient `dlogits_ref`): the op's backward must hand candle exactly that, so the
/// two agree to rounding (rtol 1e-12).
#[test]
fn trainer_gradients_equal_the_reference_dlogits_mapped_back() {
    let model = small_model();
    let d = model.dims;
    let shape = LossShape {
        batch: d.batch,
        pauses: d.pauses,
        seq: d.seq,
        vocab: d.vocab,
    };
    let (tokens, targets) = trainer::batch(d, 2).unwrap();
    let targets_i32: Vec<i32> = to_f64(&targets).iter().map(|&y| y as i32).collect();
    for obj in objectives(d.pauses) {
        let logits = model.forward(&tokens).unwrap();
        let x = to_f64(&logits);
        let mut dlogits = vec![0.0; x.len()];
        loss::cyb_loss(
            &x,
            &targets_i32,
            shape,
            &obj,
            Reduction::Mean,
            None,
            Some(&mut dlogits),
        )
        .unwrap();
        let mapped = (&logits * cpu_tensor(dlogits, logits.dims()))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let through_op = cyb_loss(&logits, &targets, &obj, Reduction::Mean, None)
            .unwrap()
            .backward()
            .unwrap();
        for (p, var) in model.vars.iter().enumerate() {
            let want = to_f64(mapped.get(var).unwrap());
            let got = to_f64(through_op.get(var).unwrap());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    relative_eq!(*g, *w, epsilon = 1e-15, max_relative = 1e-12),
                    "{:?}: parameter {p} entry {i}: {g} through the op, {w} mapped back",
                    obj.kind
                );
            }
        }
    }
}

/// A few AdamW steps of the trainer (f32, deterministic) lower the loss: to under a tenth in
/// 40 steps with `ap`, and in 20 steps with every objective. The numbers are the
/// example's default run (README).
#[test]
fn trainer_loss_falls() {
    let dims = trainer::Dims::default();
    let losses = trainer::train(dims, &Objective::ap_default(), 40, false).unwrap();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.1 * first, "ap: loss {first} -> {last}: {losses:?}");
    for obj in ["ce_final", "marginal", "va", "dp"] {
        let losses = trainer::train(dims, &obj.parse().unwrap(), 20, false).unwrap();
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.8 * first,
            "{obj}: loss {first} -> {last}: {losses:?}"
        );
    }
}

/// Bad inputs are candle errors with this crate's message, never panics.
#[test]
fn bad_inputs_are_errors() {
    let shape = LossShape {
        batch: 1,
        pauses: 1,
        seq: 3,
        vocab: 4,
    };
    let dims = [1, 2, 3, 5];
    let obj = Objective::ap_default().resolve(1).unwrap();
    let logits = cpu_tensor(logits_f64(shape), &dims);
    let targets = cpu_tensor(vec![0i64, -1, 3], &[1, 3]);
    let err = |r: candle_core::Result<Tensor>| r.expect_err("must fail").to_string();
    // Sanity: the good call works.
    cyb_loss(&logits, &targets, &obj, Reduction::Mean, None).unwrap();

    let e = err(cyb_loss(
        &logits.reshape((2, 3, 5)).unwrap(),
        &targets,
        &obj,
        Reduction::Mean,
        None,
    ));
    assert!(e.contains("[B, K+1, T, V+1]"), "{e}");
    for bad in [4i64, -2, 1 << 40] {
        let t = cpu_tensor(vec![0i64, bad, 1], &[1, 3]);
        let e = err(cyb_loss(&logits, &t, &obj, Reduction::Mean, None));
        assert!(e.contains(&bad.to_string()), "{bad}: {e}");
    }
    let e = err(cyb_loss(
        &logits,
        &cpu_tensor(vec![0i64, 1], &[1, 2]),
        &obj,
        Reduction::Mean,
        None,
    ));
    assert!(e.contains("targets have 2 elements"), "{e}");
    let e = err(cyb_loss(
        &logits,
        &targets,
        &Objective::ap_default().resolve(2).unwrap(),
        Reduction::Mean,
        None,
    ));
    assert!(e.contains("K = 2"), "{e}");
    let w = cpu_tensor(vec![1.0f32, 1.0, -1.0], &[1, 3]);
    let e = err(cyb_loss(&logits, &targets, &obj, Reduction::Mean, Some(&w)));
    assert!(e.contains("weight"), "{e}");
    let e = err(cyb_loss(
        &logits.to_dtype(DType::BF16).unwrap(),
        &targets,
        &obj,
        Reduction::Mean,
        None,
    ));
    assert!(e.contains("f32 or f64"), "{e}");
    // The op applied directly to a strided view must refuse it, not misread it.
    let strided = cpu_tensor(logits_f64(shape), &[1, 3, 2, 5])
        .transpose(1, 2)
        .unwrap();
    let op = CybLossOp::new(obj.clone(), vec![0, -1, 3], None);
    let e = err(strided.apply_op1(op));
    assert!(e.contains("contiguous"), "{e}");
}

/// With no target at all the mean is 0 and so is every gradient (as the reference).
#[test]
fn all_ignored_is_zero_loss_and_zero_gradient() {
    let shape = LossShape {
        batch: 1,
        pauses: 2,
        seq: 2,
        vocab: 3,
    };
    let obj = Objective::dp_default().resolve(2).unwrap();
    let logits = Var::from_tensor(&cpu_tensor(logits_f64(shape), &[1, 3, 2, 4])).unwrap();
    let targets = cpu_tensor(vec![-1i64, -1], &[1, 2]);
    let l = cyb_loss(&logits, &targets, &obj, Reduction::Mean, None).unwrap();
    assert_eq!(l.to_scalar::<f64>().unwrap(), 0.0);
    // candle drops the branch behind a multiplication by 0 from the graph, so the
    // logits get no gradient entry at all, which its optimizers read as zero.
    let grads = l.backward().unwrap();
    let g = grads.get(&logits).map_or(vec![], to_f64);
    assert!(g.iter().all(|&x| x == 0.0), "{g:?}");
}

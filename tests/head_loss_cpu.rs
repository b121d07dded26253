//! The CPU fused head (`cpu::head_loss`) against the unfused path it replaces
//! (logits GEMM, `cyb_loss`, the two head GEMMs), against f64 finite differences, and
//! the CPU model's loss and gradients with the fused head against the unfused head.

mod common;

use common::{all_objectives, assert_close};
use cyb::config::{ModelConfig, PauseAttention};
use cyb::cpu::head_loss::{chunk_positions, head_loss, HeadGrads, HeadShape};
use cyb::cpu::loss::{cyb_loss, LossShape};
use cyb::cpu::model::{HeadMode, Model, Params, Workspace};
use cyb::cpu::scalar::{matmul, Op};
use cyb::rng::{seeded, CybRng};
use cyb::{CybError, Reduction, ResolvedObjective};
use rand::RngExt;
use rand_distr::StandardNormal;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// Random hidden `[rows, d]`, embedding `[V+1, d]`, targets with every `ignore_every`-th
/// (offset 1) ignored, and weights in `[0, 2)`.
struct Case {
    shape: LossShape,
    d: usize,
    hidden: Vec<f64>,
    emb: Vec<f64>,
    targets: Vec<i32>,
    weights: Vec<f32>,
}

fn random_case(rng: &mut CybRng, shape: LossShape, d: usize, ignore_every: usize) -> Case {
    let mut normal = |n: usize, scale: f64| -> Vec<f64> {
        (0..n)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect()
    };
    let hidden = normal(shape.rows() * d, 1.0);
    // Scale so that logits have std ~2: peaked rows, as a trained head gives.
    let emb = normal((shape.vocab + 1) * d, 2.0 / (d as f64).sqrt());
    let targets = (0..shape.positions())
        .map(|i| {
            if ignore_every > 0 && i % ignore_every == 1 {
                -1
            } else {
                rng.random_range(0..shape.vocab) as i32
            }
        })
        .collect();
    let weights = (0..shape.positions())
        .map(|_| rng.random_range(0.0..2.0f32))
        .collect();
    Case {
        shape,
        d,
        hidden,
        emb,
        targets,
        weights,
    }
}

/// What both paths produce: loss, per-position, pauses, stats (as f64s), d_hidden, dE.
struct Outputs {
    loss: f64,
    per_position: Vec<f64>,
    pauses: Vec<f64>,
    stats: [f64; 3],
    d_hidden: Vec<f64>,
    d_emb: Vec<f64>,
}

/// The unfused head: the whole logits tensor, `cyb_loss`, then the two head GEMMs.
/// `d_emb` starts from `d_emb0` (the head accumulates into it).
fn unfused(
    c: &Case,
    obj: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&[f32]>,
    d_emb0: &[f64],
) -> Outputs {
    let (s, d, v1) = (c.shape, c.d, c.shape.vocab + 1);
    let n = s.rows();
    let mut logits = vec![0.0; n * v1];
    matmul(
        &mut logits,
        &c.hidden,
        Op::N,
        &c.emb,
        Op::T,
        n,
        d,
        v1,
        false,
    );
    let mut dlogits = vec![0.0; logits.len()];
    let fwd = cyb_loss(
        &logits,
        &c.targets,
        s,
        obj,
        reduction,
        weights,
        Some(&mut dlogits),
    )
    .unwrap();
    let mut d_hidden = vec![0.0; n * d];
    matmul(
        &mut d_hidden,
        &dlogits,
        Op::N,
        &c.emb,
        Op::N,
        n,
        v1,
        d,
        false,
    );
    let mut d_emb = d_emb0.to_vec();
    matmul(
        &mut d_emb,
        &dlogits,
        Op::T,
        &c.hidden,
        Op::N,
        v1,
        n,
        d,
        true,
    );
    Outputs {
        loss: fwd.loss,
        per_position: fwd.per_position,
        pauses: fwd.pauses,
        stats: [
            fwd.stats.valid_positions as f64,
            fwd.stats.weight_sum,
            fwd.stats.mean_pauses,
        ],
        d_hidden,
        d_emb,
    }
}

fn fused(
    c: &Case,
    chunk: usize,
    obj: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&[f32]>,
    d_emb0: &[f64],
) -> Outputs {
    // Poisoned: every element must be written.
    let mut d_hidden = vec![f64::NAN; c.hidden.len()];
    let mut d_emb = d_emb0.to_vec();
    let shape = HeadShape {
        loss: c.shape,
        d: c.d,
        chunk_positions: chunk,
    };
    let grads = HeadGrads {
        d_hidden: &mut d_hidden,
        d_embedding: &mut d_emb,
    };
    let out = head_loss(
        &c.hidden,
        &c.emb,
        &c.targets,
        shape,
        obj,
        reduction,
        weights,
        Some(grads),
    )
    .unwrap();
    Outputs {
        loss: out.loss,
        per_position: out.per_position,
        pauses: out.pauses,
        stats: [
            out.stats.valid_positions as f64,
            out.stats.weight_sum,
            out.stats.mean_pauses,
        ],
        d_hidden,
        d_emb,
    }
}

fn assert_outputs_close(what: &str, got: &Outputs, want: &Outputs) {
    // Both paths run the same f64 math; they differ only in the GEMM blocking and the
    // order dE sums its rows (per chunk, then across chunks): rounding at 1e-16 relative
    // on sums of a few hundred terms, far below 1e-11.
    let (atol, rtol) = (1e-12, 1e-11);
    assert_close(
        &format!("{what} loss"),
        &[got.loss],
        &[want.loss],
        atol,
        rtol,
    );
    assert_close(
        &format!("{what} stats"),
        &got.stats,
        &want.stats,
        atol,
        rtol,
    );
    let pairs = [
        ("per_position", &got.per_position, &want.per_position),
        ("pauses", &got.pauses, &want.pauses),
        ("d_hidden", &got.d_hidden, &want.d_hidden),
        ("d_emb", &got.d_emb, &want.d_emb),
    ];
    for (name, g, w) in pairs {
        assert_close(&format!("{what} {name}"), g, w, atol, rtol);
    }
}

#[test]
fn fused_equals_unfused_for_every_objective_reduction_and_chunk() {
    let mut rng = seeded(20);
    // (B, K, T, V, d): K 0/1/3/7, odd V+1, a single position, sizes no chunk divides.
    let shapes = [
        (1, 0, 1, 6, 3),
        (2, 1, 5, 10, 4),
        (3, 3, 7, 12, 5),
        (2, 7, 3, 8, 2),
        (1, 3, 1, 4, 3),
    ];
    let mut cases = 0;
    for (batch, pauses, seq, vocab, d) in shapes {
        let shape = LossShape {
            batch,
            pauses,
            seq,
            vocab,
        };
        let c = random_case(&mut rng, shape, d, 3);
        let n = shape.positions();
        let d_emb0: Vec<f64> = (0..c.emb.len()).map(|i| (i as f64 * 0.1).sin()).collect();
        for objective in all_objectives() {
            let obj = objective
                .resolve(pauses)
                .unwrap()
                .with_dk_bias(0.7)
                .unwrap();
            for reduction in REDUCTIONS {
                for weights in [None, Some(c.weights.as_slice())] {
                    let want = unfused(&c, &obj, reduction, weights, &d_emb0);
                    // One position per chunk, an uneven split (and one crossing
                    // sequences), everything in one chunk, a chunk larger than the batch.
                    for chunk in [1, 2, n.div_ceil(2).max(1), n, n + 5] {
                        let got = fused(&c, chunk, &obj, reduction, weights, &d_emb0);
                        let what = format!(
                            "{shape:?} d {d} {:?} {reduction:?} weights {} chunk {chunk}",
                            obj.kind,
                            weights.is_some()
                        );
                        assert_outputs_close(&what, &got, &want);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 5 * 3 * 2 * 5);
}

#[test]
fn all_ignored_batch_gives_zero_loss_and_gradient() {
    let mut rng = seeded(21);
    let shape = LossShape {
        batch: 2,
        pauses: 2,
        seq: 3,
        vocab: 5,
    };
    let mut c = random_case(&mut rng, shape, 4, 0);
    c.targets.iter_mut().for_each(|y| *y = -1);
    let obj = cyb::Objective::ap_default().resolve(2).unwrap();
    let zeros = vec![0.0; c.emb.len()];
    let got = fused(&c, 2, &obj, Reduction::Mean, None, &zeros);
    assert_eq!(got.loss, 0.0);
    assert_eq!(got.stats, [0.0, 0.0, 0.0]);
    assert!(got.d_hidden.iter().chain(&got.d_emb).all(|&x| x == 0.0));
}

/// Central differences of the fused loss in f64: `∂L/∂hidden` and `∂L/∂E` (every
/// objective, weighted mean and per-position sum, chunks that split sequences).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = seeded(22);
    let shape = LossShape {
        batch: 2,
        pauses: 2,
        seq: 3,
        vocab: 5,
    };
    let c = random_case(&mut rng, shape, 3, 4);
    let head = |chunk| HeadShape {
        loss: shape,
        d: c.d,
        chunk_positions: chunk,
    };
    let weights = Some(c.weights.as_slice());
    for objective in all_objectives() {
        let obj = objective.resolve(2).unwrap().with_dk_bias(-0.4).unwrap();
        for reduction in [Reduction::Mean, Reduction::None] {
            let loss_at = |hidden: &[f64], emb: &[f64]| {
                head_loss(
                    hidden,
                    emb,
                    &c.targets,
                    head(4),
                    &obj,
                    reduction,
                    weights,
                    None,
                )
                .unwrap()
                .loss
            };
            let zeros = vec![0.0; c.emb.len()];
            let g = fused(&c, 4, &obj, reduction, weights, &zeros);
            let h = 1e-5;
            let (mut fd_hidden, mut fd_emb) = (Vec::new(), Vec::new());
            for i in 0..c.hidden.len() {
                let (mut up, mut down) = (c.hidden.clone(), c.hidden.clone());
                up[i] += h;
                down[i] -= h;
                fd_hidden.push((loss_at(&up, &c.emb) - loss_at(&down, &c.emb)) / (2.0 * h));
            }
            for i in 0..c.emb.len() {
                let (mut up, mut down) = (c.emb.clone(), c.emb.clone());
                up[i] += h;
                down[i] -= h;
                fd_emb.push((loss_at(&c.hidden, &up) - loss_at(&c.hidden, &down)) / (2.0 * h));
            }
            // Central differences with h = 1e-5: truncation ~h^2 * L''' ~ 1e-9, rounding
            // ~1e-16 / h ~ 1e-11.
            let what = format!("{:?} {reduction:?}", obj.kind);
            assert_close(
                &format!("{what} d_hidden"),
                &g.d_hidden,
                &fd_hidden,
                1e-7,
                1e-6,
            );
            assert_close(&format!("{what} d_emb"), &g.d_emb, &fd_emb, 1e-7, 1e-6);
        }
    }
}

#[test]
fn bad_inputs_are_errors_and_write_nothing() {
    let mut rng = seeded(23);
    let shape = LossShape {
        batch: 1,
        pauses: 1,
        seq: 4,
        vocab: 6,
    };
    let c = random_case(&mut rng, shape, 3, 0);
    let obj = cyb::Objective::CeFinal.resolve(1).unwrap();
    let good = HeadShape {
        loss: shape,
        d: 3,
        chunk_positions: 1,
    };
    let mut bad_weights = c.weights.clone();
    bad_weights[3] = f32::NAN;
    let mut bad_targets = c.targets.clone();
    bad_targets[2] = 6; // V: the DK index is never a target
    let short_hidden = &c.hidden[1..];
    let wrong_k = cyb::Objective::CeFinal.resolve(2).unwrap();
    let chunk0 = HeadShape {
        chunk_positions: 0,
        ..good
    };
    type Call<'a> = (
        &'a str,
        &'a [f64],
        &'a [i32],
        HeadShape,
        &'a ResolvedObjective,
        Option<&'a [f32]>,
    );
    let calls: [Call; 5] = [
        (
            "weights",
            &c.hidden,
            &c.targets,
            good,
            &obj,
            Some(&bad_weights),
        ),
        ("targets", &c.hidden, &bad_targets, good, &obj, None),
        ("hidden length", short_hidden, &c.targets, good, &obj, None),
        ("objective K", &c.hidden, &c.targets, good, &wrong_k, None),
        ("chunk 0", &c.hidden, &c.targets, chunk0, &obj, None),
    ];
    for (what, hidden, targets, shape, obj, weights) in calls {
        let mut d_hidden = vec![f64::NAN; c.hidden.len()];
        let mut d_emb = vec![f64::NAN; c.emb.len()];
        let grads = HeadGrads {
            d_hidden: &mut d_hidden,
            d_embedding: &mut d_emb,
        };
        let r = head_loss(
            hidden,
            &c.emb,
            targets,
            shape,
            obj,
            Reduction::Mean,
            weights,
            Some(grads),
        );
        assert!(
            matches!(
                r,
                Err(CybError::Shape(_) | CybError::Param(_) | CybError::VocabRange { .. })
            ),
            "{what}: {r:?}"
        );
        assert!(
            d_hidden.iter().chain(&d_emb).all(|x| x.is_nan()),
            "{what} wrote"
        );
    }
}

#[test]
fn chunk_size_comes_from_the_budget_only() {
    // 256 MiB of bf16 rows of GPT-2 small's padded vocabulary, K = 3.
    assert_eq!(chunk_positions(256 << 20, 3, 50304 * 2), 667);
    // A budget below one position still makes progress, one position at a time.
    assert_eq!(chunk_positions(10, 7, 1000), 1);
}

fn tiny_config(pause_attention: PauseAttention) -> ModelConfig {
    ModelConfig {
        vocab: 11,
        d_model: 8,
        n_layer: 2,
        n_head: 2,
        t_max: 6,
        k_max: 3,
        pause_attention,
        dk_bias: 0.3,
        layer_norm_eps: 1e-5,
    }
}

/// The model's loss and the gradient of every parameter with the fused head (chunk
/// budgets of one position, an uneven split, and the default) against the unfused head.
#[test]
fn model_step_with_fused_head_equals_unfused() {
    let mut rng = seeded(24);
    for mode in [PauseAttention::Private, PauseAttention::Shared] {
        let config = tiny_config(mode);
        let model: Model<f64> = Model::init(config.clone(), &mut rng).unwrap();
        for (b, t, k) in [(2, 5, 3), (1, 1, 0), (3, 4, 1)] {
            let tokens: Vec<i32> = (0..b * t)
                .map(|_| rng.random_range(0..config.vocab) as i32)
                .collect();
            let targets: Vec<i32> = (0..b * t)
                .map(|i| {
                    if i % 4 == 2 {
                        -1
                    } else {
                        rng.random_range(0..config.vocab) as i32
                    }
                })
                .collect();
            for objective in all_objectives() {
                let obj = objective
                    .resolve(k)
                    .unwrap()
                    .with_dk_bias(config.dk_bias)
                    .unwrap();
                let mut want_grads = Params::zeros(&config);
                let mut ws = Workspace::with_head(HeadMode::Unfused);
                let want = model
                    .forward_backward_with(
                        &mut ws,
                        &tokens,
                        &targets,
                        b,
                        t,
                        k,
                        &obj,
                        &mut want_grads,
                    )
                    .unwrap();
                let row_bytes = (config.vocab + 1) * 8;
                for chunk_bytes in [1, 3 * (k + 1) * row_bytes, 256 << 20] {
                    let head = HeadMode::Fused { chunk_bytes };
                    let mut grads = Params::zeros(&config);
                    let mut ws = Workspace::with_head(head);
                    let got = model
                        .forward_backward_with(
                            &mut ws, &tokens, &targets, b, t, k, &obj, &mut grads,
                        )
                        .unwrap();
                    let what =
                        format!("{mode:?} B{b} T{t} K{k} {:?} chunk {chunk_bytes}", obj.kind);
                    assert_close(
                        &format!("{what} loss"),
                        &[got.loss],
                        &[want.loss],
                        1e-13,
                        1e-12,
                    );
                    assert_eq!(got.stats.valid_positions, want.stats.valid_positions);
                    assert_close(
                        &format!("{what} pauses"),
                        &got.pauses,
                        &want.pauses,
                        1e-13,
                        1e-12,
                    );
                    for ((name, _, g), (_, _, w)) in
                        grads.tensors().into_iter().zip(want_grads.tensors())
                    {
                        assert_close(&format!("{what} grad {name}"), g, w, 1e-13, 1e-11);
                    }
                    let eval = model
                        .loss_with_head(head, &tokens, &targets, b, t, k, &obj)
                        .unwrap();
                    assert_eq!(eval, got, "{what}: evaluation = training forward");
                }
            }
        }
    }
}

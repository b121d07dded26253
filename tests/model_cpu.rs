//! The CPU model against the independent SPEC v2 vectors (`model_case_private`), f64 finite
//! differences for every parameter tensor and objective, the pause mask against a
//! brute-force masked softmax, position independence, and determinism.

mod common;

use common::{
    all_objectives, assert_close, f64s, i32s, v2_dir, v2_objectives, v2_objectives_with_dk_bias,
    vectors_v2,
};
use cyb::checkpoint;
use cyb::config::ModelConfig;
use cyb::cpu::attention::{attention_forward, pause_visible, AttnShape, PauseAttention};
use cyb::cpu::embedding::StepShape;
use cyb::cpu::model::{HeadMode, Model, Params, StepOutput, Workspace};
use cyb::rng::{seeded, CybRng};
use cyb::{CybError, Objective, ResolvedObjective, Result};
use rand::RngExt;
use rand_distr::StandardNormal;

/// The two SPEC v2 model cases: `model_case` (shared) and `model_case_private`.
const MODEL_CASES: [&str; 2] = ["model_case", "model_case_private"];

/// The checkpoint of a v2 model case, and the case.
fn spec_case(name: &str) -> (Model<f32>, serde_json::Value) {
    let case = vectors_v2()[name].clone();
    let file = case["checkpoint"].as_str().unwrap();
    let model =
        checkpoint::load(v2_dir().join(file)).unwrap_or_else(|e| panic!("{file} loads: {e}"));
    // The checkpoint's config is the case's config, key by key.
    let want: ModelConfig = serde_json::from_value(case["config"].clone()).unwrap();
    assert_eq!(model.config, want, "{name}: config");
    (model, case)
}

/// The batch of a v2 model case, `K = k_max`.
struct SpecBatch {
    tokens: Vec<i32>,
    targets: Vec<i32>,
    batch: usize,
    seq: usize,
    pauses: usize,
}

impl SpecBatch {
    fn loss(&self, m: &Model<f64>, head: HeadMode, obj: &ResolvedObjective) -> Result<StepOutput> {
        let (b, t, k) = (self.batch, self.seq, self.pauses);
        m.loss_with_head(head, &self.tokens, &self.targets, b, t, k, obj)
    }

    fn step(
        &self,
        m: &Model<f64>,
        obj: &ResolvedObjective,
        grads: &mut Params<f64>,
    ) -> Result<StepOutput> {
        let (b, t, k) = (self.batch, self.seq, self.pauses);
        m.forward_backward(&self.tokens, &self.targets, b, t, k, obj, grads)
    }
}

/// A v2 model case in f64, the case, and its batch.
fn spec_batch(name: &str) -> (Model<f64>, serde_json::Value, SpecBatch) {
    let (m32, case) = spec_case(name);
    let model: Model<f64> = m32.cast();
    let (tokens, targets) = (i32s(&case["tokens"]), i32s(&case["targets"]));
    let batch = 2;
    let b = SpecBatch {
        seq: tokens.len() / batch,
        pauses: model.config.k_max,
        tokens,
        targets,
        batch,
    };
    (model, case, b)
}

/// The objective of a case's `grads` entry, resolved with `dk_bias`.
fn grads_objective(case: &serde_json::Value, k: usize, dk_bias: f64) -> ResolvedObjective {
    let g = &case["grads"];
    let obj_name = g["objective"].as_str().unwrap();
    let (_, obj) = v2_objectives_with_dk_bias(&g["params"], k, dk_bias)
        .into_iter()
        .find(|(n, _)| *n == obj_name)
        .unwrap();
    obj.unwrap()
}

/// Every gradient against the case's `grads` entry. Gradients are sums of many terms:
/// 1e-9 relative plus a tiny absolute floor for entries that are ~0 up to rounding.
fn assert_spec_grads(what: &str, case: &serde_json::Value, grads: &Params<f64>) {
    let want = case["grads"]["by_name"].as_object().unwrap();
    assert_eq!(want.len(), grads.tensors().len(), "{what}: tensor count");
    for (tname, _, gx) in grads.tensors() {
        let w = f64s(&want[&tname]);
        assert_close(&format!("{what} grad {tname}"), gx, &w, 1e-12, 1e-9);
    }
}

/// The five losses (SPEC v2 defaults plus the model's `dk_bias`) and `mean_pauses` of
/// each case, and the gradient of every parameter for its `grads` objective, at 1e-9
/// relative; the evaluation path (`Model::loss`) gives the same numbers.
#[test]
fn reproduces_spec_model_losses_and_gradients_in_both_modes() {
    for name in MODEL_CASES {
        let (model, case, b) = spec_batch(name);
        let bias = model.config.dk_bias;
        assert_eq!(case["params"]["dk_bias"].as_f64(), Some(bias));
        let mut grads = Params::zeros(&model.config);
        for (obj_name, obj) in v2_objectives(&case["params"], b.pauses) {
            let obj = obj.unwrap();
            let want = &case["objectives"][obj_name];
            let out = b.step(&model, &obj, &mut grads).unwrap();
            let eval = b.loss(&model, HeadMode::default(), &obj).unwrap();
            assert_eq!(eval, out, "{name} {obj_name}");
            for (what, got) in [("loss", out.loss), ("mean_pauses", out.stats.mean_pauses)] {
                assert_close(
                    &format!("{name} {obj_name} {what}"),
                    &[got],
                    &[want[what].as_f64().unwrap()],
                    0.0,
                    1e-9,
                );
            }
        }
        let obj = grads_objective(&case, b.pauses, bias);
        let out = b.step(&model, &obj, &mut grads).unwrap();
        let want = case["grads"]["loss"].as_f64().unwrap();
        assert_close(
            &format!("{name} grads loss"),
            &[out.loss],
            &[want],
            0.0,
            1e-9,
        );
        assert_spec_grads(name, &case, &grads);
    }
}

/// The model scores with its own `config.dk_bias`: objectives resolved without one (as
/// `Objective::resolve` gives them) reproduce the SPEC losses and gradients of both
/// cases through `loss` (fused and unfused head) and `forward_backward`; the same
/// weights with the bias taken out of the config give other losses (what omitting the
/// bias used to compute, so this test can fail); an objective with another non-zero
/// bias is a `Param` error naming it, on every path.
#[test]
fn the_model_applies_its_own_dk_bias() {
    for name in MODEL_CASES {
        let (model, case, b) = spec_batch(name);
        let bias = model.config.dk_bias;
        assert!(bias != 0.0, "{name}: the case needs a DK bias to test");
        let mut without_bias = model.clone();
        without_bias.config.dk_bias = 0.0;
        let mut grads = Params::zeros(&model.config);
        for (obj_name, obj) in v2_objectives_with_dk_bias(&case["params"], b.pauses, 0.0) {
            let obj = obj.unwrap();
            assert_eq!(obj.dk_bias, 0.0);
            let want = case["objectives"][obj_name]["loss"].as_f64().unwrap();
            let what = format!("{name} {obj_name}");
            let step = b.step(&model, &obj, &mut grads).unwrap();
            let eval = b.loss(&model, HeadMode::default(), &obj).unwrap();
            let unfused = b.loss(&model, HeadMode::Unfused, &obj).unwrap();
            assert_eq!(eval, step, "{what}");
            for (path, got) in [("step", step.loss), ("unfused", unfused.loss)] {
                assert_close(&format!("{what} {path}"), &[got], &[want], 0.0, 1e-9);
            }
            let off = b
                .loss(&without_bias, HeadMode::default(), &obj)
                .unwrap()
                .loss;
            // ce_final scores the answer at step K alone and never reads d_k.
            let reads_dk = obj_name != "ce_final";
            assert_eq!(
                (off - want).abs() > 1e-6 * want.abs(),
                reads_dk,
                "{what}: the loss without the bias is {off}, with it {want}"
            );
            let other = obj.clone().with_dk_bias(bias + 1.0).unwrap();
            let refused = [
                b.loss(&model, HeadMode::default(), &other).map(|_| ()),
                b.loss(&model, HeadMode::Unfused, &other).map(|_| ()),
                b.step(&model, &other, &mut grads).map(|_| ()),
                // A model without a bias refuses an objective that carries one.
                b.loss(&without_bias, HeadMode::default(), &other)
                    .map(|_| ()),
            ];
            for r in refused {
                match r {
                    Err(CybError::Param(msg)) => assert!(msg.contains("dk_bias"), "{what}: {msg}"),
                    other => panic!("{what}: another model's DK bias gave {other:?}"),
                }
            }
        }
        // The gradients of the SPEC's `grads` objective, resolved without the bias.
        let obj = grads_objective(&case, b.pauses, 0.0);
        b.step(&model, &obj, &mut grads).unwrap();
        assert_spec_grads(
            &format!("{name} (objective without the bias)"),
            &case,
            &grads,
        );
    }
}

#[test]
fn reproduces_spec_model_logits_in_both_modes() {
    for name in MODEL_CASES {
        let (m32, case) = spec_case(name);
        let model: Model<f64> = m32.cast();
        let tokens = i32s(&case["tokens"]);
        let (batch, kk) = (2, model.config.k_max);
        let seq = tokens.len() / batch;
        let logits = model.forward(&tokens, batch, seq, kk).unwrap();
        assert_close(
            &format!("{name} logits"),
            &logits,
            &f64s(&case["logits"]),
            1e-12,
            1e-9,
        );
    }
}

fn tiny_config(pause_attention: PauseAttention) -> ModelConfig {
    ModelConfig {
        vocab: 7,
        d_model: 8,
        n_layer: 2,
        n_head: 2,
        t_max: 5,
        k_max: 3,
        pause_attention,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    }
}

/// A model whose parameters are far from the init (LayerNorm gains and biases not
/// 1/0, larger weights), so that no gradient is trivially zero or linear.
fn random_model(config: ModelConfig, seed: u64) -> Model<f64> {
    let mut rng = seeded(seed);
    let mut model: Model<f64> = Model::init(config, &mut rng).unwrap();
    for (name, _, x) in model.params.tensors_mut() {
        let (base, std) = if name.contains("ln") && name.ends_with(".weight") {
            (1.0, 0.3)
        } else {
            (0.0, 0.3)
        };
        x.iter_mut()
            .for_each(|v| *v = base + std * rng.sample::<f64, _>(StandardNormal));
    }
    model
}

fn random_tokens(rng: &mut CybRng, n: usize, vocab: usize) -> Vec<i32> {
    (0..n).map(|_| rng.random_range(0..vocab) as i32).collect()
}

#[test]
fn gradients_match_finite_differences() {
    for mode in MODES {
        let config = tiny_config(mode);
        let (b, t, k) = (2, 4, 2); // K < k_max and T < t_max: unused table rows get 0
        let mut rng = seeded(11);
        let tokens = random_tokens(&mut rng, b * t, config.vocab);
        let mut targets = random_tokens(&mut rng, b * t, config.vocab);
        targets[1] = -1;
        targets[6] = -1;
        let mut model = random_model(config.clone(), 3);
        for obj in all_objectives() {
            let mut grads = Params::zeros(&config);
            model
                .forward_backward(
                    &tokens,
                    &targets,
                    b,
                    t,
                    k,
                    &obj.resolve(k).unwrap(),
                    &mut grads,
                )
                .unwrap();
            let analytic: Vec<(String, Vec<f64>)> = grads
                .tensors()
                .into_iter()
                .map(|(n, _, g)| (n, g.to_vec()))
                .collect();
            for (ti, (name, g)) in analytic.iter().enumerate() {
                // Up to 5 random coordinates per tensor, plus the first one.
                let mut coords: Vec<usize> = (0..5).map(|_| rng.random_range(0..g.len())).collect();
                coords.push(0);
                for &i in &coords {
                    let h = 1e-5;
                    let orig = model.params.tensors()[ti].2[i];
                    let mut at = |x: f64| {
                        model.params.tensors_mut()[ti].2[i] = x;
                        model
                            .loss(&tokens, &targets, b, t, k, &obj.resolve(k).unwrap())
                            .unwrap()
                            .loss
                    };
                    let fd = (at(orig + h) - at(orig - h)) / (2.0 * h);
                    at(orig);
                    // Central differences: truncation ~h^2, rounding ~1e-16/h.
                    assert_close(
                        &format!("{mode} {} d{name}[{i}]", obj.name()),
                        &[g[i]],
                        &[fd],
                        1e-8,
                        1e-5,
                    );
                }
            }
            // Rows the batch never reads get exactly zero gradient.
            let d = config.d_model;
            assert!(grads.depth_emb[(k + 1) * d..].iter().all(|&x| x == 0.0));
            assert!(grads.pos_emb[t * d..].iter().all(|&x| x == 0.0));
        }
    }
}

/// Brute force: softmax over all `(K+1)T` steps, masked by `pause_visible`.
fn attention_brute_force(qkv: &[f64], s: AttnShape) -> Vec<f64> {
    let (d, h_n) = (s.d, s.heads);
    let dh = d / h_n;
    let st = s.steps;
    let mut out = vec![0.0; st.rows() * d];
    for b in 0..st.batch {
        for h in 0..h_n {
            for k in 0..=st.pauses {
                for t in 0..st.seq {
                    let q = &qkv[st.row(b, k, t) * 3 * d + h * dh..][..dh];
                    let mut scores = Vec::new();
                    for k2 in 0..=st.pauses {
                        for t2 in 0..st.seq {
                            if pause_visible(s.mode, t, k, t2, k2) {
                                let key = &qkv[st.row(b, k2, t2) * 3 * d + d + h * dh..][..dh];
                                let sc: f64 = q.iter().zip(key).map(|(a, b)| a * b).sum::<f64>()
                                    / (dh as f64).sqrt();
                                scores.push((sc, st.row(b, k2, t2)));
                            }
                        }
                    }
                    let max = scores.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s.0 - max).exp()).sum();
                    for (sc, row) in scores {
                        let p = (sc - max).exp() / z;
                        for i in 0..dh {
                            out[st.row(b, k, t) * d + h * dh + i] +=
                                p * qkv[row * 3 * d + 2 * d + h * dh + i];
                        }
                    }
                }
            }
        }
    }
    out
}

fn attn_shape(
    mode: PauseAttention,
    (batch, pauses, seq, heads, d): (usize, usize, usize, usize, usize),
) -> AttnShape {
    AttnShape {
        steps: StepShape { batch, pauses, seq },
        heads,
        d,
        mode,
    }
}

const MODES: [PauseAttention; 2] = [PauseAttention::Shared, PauseAttention::Private];

#[test]
fn pause_attention_equals_brute_force_masked_softmax() {
    let mut rng = seeded(5);
    for (mode, dims) in MODES.into_iter().flat_map(|m| {
        [
            (2, 3, 5, 2, 8),
            (1, 0, 7, 3, 6),
            (3, 1, 1, 1, 4),
            (1, 4, 3, 2, 4),
            (1, 7, 2, 2, 4),
        ]
        .map(|dims| (m, dims))
    }) {
        let s = attn_shape(mode, dims);
        let d = s.d;
        let qkv: Vec<f64> = (0..s.steps.rows() * 3 * d)
            .map(|_| rng.sample::<f64, _>(StandardNormal))
            .collect();
        let mut out = vec![f64::NAN; s.steps.rows() * d];
        let mut att = vec![f64::NAN; s.att_len()];
        attention_forward(&mut out, &mut att, &qkv, s);
        assert_close(
            &format!("attention {s:?}"),
            &out,
            &attention_brute_force(&qkv, s),
            1e-13,
            1e-12,
        );
    }
}

#[test]
fn a_pause_step_changes_exactly_the_steps_that_see_it() {
    // Perturb the q/k/v of one pause step (t0, k0); exactly the steps of the same batch
    // element that see it change: private, (t0, k >= k0); shared, also every later
    // position.
    for mode in MODES {
        a_pause_step_changes_exactly_the_steps_that_see_it_in(mode);
    }
}

fn a_pause_step_changes_exactly_the_steps_that_see_it_in(mode: PauseAttention) {
    let mut rng = seeded(8);
    let s = attn_shape(mode, (2, 3, 5, 2, 8));
    let d = s.d;
    let qkv: Vec<f64> = (0..s.steps.rows() * 3 * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    let run = |x: &[f64]| {
        let mut out = vec![0.0; s.steps.rows() * d];
        let mut att = vec![0.0; s.att_len()];
        attention_forward(&mut out, &mut att, x, s);
        out
    };
    let base = run(&qkv);
    let (b0, t0, k0) = (1, 2, 2);
    let mut changed = qkv.clone();
    changed[s.steps.row(b0, k0, t0) * 3 * d..][..3 * d]
        .iter_mut()
        .for_each(|x| *x += 1.0 + rng.sample::<f64, _>(StandardNormal));
    let after = run(&changed);
    for b in 0..2 {
        for k in 0..=3 {
            for t in 0..5 {
                let row = s.steps.row(b, k, t);
                let same = base[row * d..][..d] == after[row * d..][..d];
                let may_change = b == b0 && pause_visible(mode, t, k, t0, k0);
                assert_eq!(same, !may_change, "{mode}: step (b={b}, t={t}, k={k})");
            }
        }
    }
}

#[test]
fn private_real_plane_does_not_depend_on_pauses() {
    // Private: the k = 0 plane is a plain GPT: identical for K = 0 and K = 3, and a
    // position's plane k only depends on its own pause steps <= k, so planes 0..=1
    // with K = 1 equal those with K = 3. (Shared: later positions see earlier pauses,
    // so planes depend on K; see the next test for what holds in both modes.)
    let config = tiny_config(PauseAttention::Private);
    let model = random_model(config.clone(), 4);
    let mut rng = seeded(2);
    let (b, t) = (2, 5);
    let v1 = config.vocab + 1;
    let tokens = random_tokens(&mut rng, b * t, config.vocab);
    let plane = |logits: &[f64], kk: usize, bi: usize, k: usize| -> Vec<f64> {
        let start = (bi * (kk + 1) + k) * t * v1;
        logits[start..start + t * v1].to_vec()
    };
    let l0 = model.forward(&tokens, b, t, 0).unwrap();
    let l1 = model.forward(&tokens, b, t, 1).unwrap();
    let l3 = model.forward(&tokens, b, t, 3).unwrap();
    for bi in 0..b {
        assert_eq!(plane(&l0, 0, bi, 0), plane(&l3, 3, bi, 0));
        assert_eq!(plane(&l1, 1, bi, 0), plane(&l3, 3, bi, 0));
        assert_eq!(plane(&l1, 1, bi, 1), plane(&l3, 3, bi, 1));
        assert_ne!(plane(&l3, 3, bi, 1), plane(&l3, 3, bi, 2));
    }
}

#[test]
fn changing_a_token_never_changes_earlier_positions() {
    for mode in MODES {
        changing_a_token_never_changes_earlier_positions_in(mode);
    }
}

fn changing_a_token_never_changes_earlier_positions_in(mode: PauseAttention) {
    let config = tiny_config(mode);
    let model = random_model(config.clone(), 6);
    let mut rng = seeded(9);
    let (b, t, kk) = (1, 5, 3);
    let v1 = config.vocab + 1;
    let tokens = random_tokens(&mut rng, b * t, config.vocab);
    let base = model.forward(&tokens, b, t, kk).unwrap();
    let t0 = 2;
    let mut changed = tokens.clone();
    changed[t0] = (changed[t0] + 1) % config.vocab as i32;
    let after = model.forward(&changed, b, t, kk).unwrap();
    for k in 0..=kk {
        for pos in 0..t {
            let row = (k * t + pos) * v1;
            let same = base[row..row + v1] == after[row..row + v1];
            assert_eq!(same, pos < t0, "position {pos}, step {k}");
        }
    }
}

#[test]
fn forward_backward_is_deterministic_across_thread_counts() {
    let config = ModelConfig {
        vocab: 11,
        d_model: 16,
        n_layer: 2,
        n_head: 4,
        t_max: 9,
        k_max: 2,
        pause_attention: PauseAttention::Shared,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let model: Model<f32> = Model::init(config.clone(), &mut seeded(1)).unwrap();
    let mut rng = seeded(3);
    let (b, t, k) = (5, 9, 2);
    let tokens = random_tokens(&mut rng, b * t, config.vocab);
    let targets = random_tokens(&mut rng, b * t, config.vocab);
    let obj = Objective::ap_default().resolve(k).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut g = Params::zeros(&config);
            let out = model
                .forward_backward(&tokens, &targets, b, t, k, &obj, &mut g)
                .unwrap();
            (out, g)
        })
    };
    let (o1, g1) = run(1);
    let (o3, g3) = run(3);
    let (o3b, g3b) = run(3);
    assert_eq!(o1, o3);
    assert_eq!(g1, g3);
    assert_eq!(o3, o3b);
    assert_eq!(g3, g3b);
}

#[test]
fn bad_inputs_are_errors() {
    let config = tiny_config(PauseAttention::Shared);
    let model: Model<f32> = Model::init(config.clone(), &mut seeded(0)).unwrap();
    let obj = Objective::CeFinal.resolve(1).unwrap();
    let mut g = Params::zeros(&config);
    let v = config.vocab as i32;
    // PAUSE (= V) is not a user token.
    assert!(
        matches!(model.forward(&[0, v], 1, 2, 1), Err(CybError::VocabRange { id, index: 1, .. }) if id == v as i64)
    );
    assert!(matches!(
        model.forward(&[-2, 0], 1, 2, 1),
        Err(CybError::VocabRange { .. })
    ));
    assert!(matches!(
        model.forward(&[0; 6], 1, 6, 1),
        Err(CybError::Shape(_))
    )); // T > t_max
    assert!(matches!(
        model.forward(&[0; 2], 1, 2, 4),
        Err(CybError::TooManyPauses { k: 4, k_max: 3 })
    ));
    assert!(matches!(
        model.forward(&[0; 3], 1, 2, 1),
        Err(CybError::Shape(_))
    ));
    assert!(matches!(
        model.forward(&[], 0, 2, 1),
        Err(CybError::Shape(_))
    ));
    let fb = |m: &Model<f32>, targets: &[i32], g: &mut Params<f32>| {
        m.forward_backward(&[0, 1], targets, 1, 2, 1, &obj, g)
    };
    assert!(matches!(
        fb(&model, &[0, v], &mut g),
        Err(CybError::VocabRange { .. })
    ));
    assert!(matches!(fb(&model, &[0], &mut g), Err(CybError::Shape(_))));
    assert!(fb(&model, &[-1, 2], &mut g).is_ok());
    // K of the objective and of the call must agree.
    let obj2 = Objective::CeFinal.resolve(2).unwrap();
    assert!(model
        .forward_backward(&[0, 1], &[1, 2], 1, 2, 1, &obj2, &mut g)
        .is_err());
    // Gradients of another shape.
    let mut wrong = Params::zeros(&ModelConfig {
        d_model: 4,
        ..config.clone()
    });
    assert!(matches!(
        fb(&model, &[0, 1], &mut wrong),
        Err(CybError::Shape(_))
    ));
    // A model whose params do not match its config.
    let broken = Model {
        config: ModelConfig { vocab: 9, ..config },
        params: model.params.clone(),
    };
    assert!(matches!(
        broken.forward(&[0, 1], 1, 2, 1),
        Err(CybError::Shape(_))
    ));
}

#[test]
fn all_ignored_batch_has_zero_loss_and_gradient() {
    let config = tiny_config(PauseAttention::Shared);
    let model: Model<f64> = random_model(config.clone(), 2);
    let mut g = Params::zeros(&config);
    let out = model
        .forward_backward(
            &[1, 2, 3],
            &[-1, -1, -1],
            1,
            3,
            2,
            &Objective::ap_default().resolve(2).unwrap(),
            &mut g,
        )
        .unwrap();
    assert_eq!(out.loss, 0.0);
    assert!(g
        .tensors()
        .iter()
        .all(|(_, _, x)| x.iter().all(|&v| v == 0.0)));
}

#[test]
fn reused_workspace_matches_fresh_buffers_across_shapes() {
    for mode in MODES {
        let config = tiny_config(mode);
        let model = random_model(config.clone(), 12);
        let mut rng = seeded(4);
        let mut ws = Workspace::new();
        // Shrinking and growing B, T and K: stale buffer contents must never leak in.
        for (b, t, k) in [(3, 5, 3), (1, 2, 0), (2, 4, 2), (3, 5, 3)] {
            let tokens = random_tokens(&mut rng, b * t, config.vocab);
            let targets = random_tokens(&mut rng, b * t, config.vocab);
            let obj = Objective::va_default().resolve(k).unwrap();
            let (mut g_ws, mut g_fresh) = (Params::zeros(&config), Params::zeros(&config));
            let o_ws = model
                .forward_backward_with(&mut ws, &tokens, &targets, b, t, k, &obj, &mut g_ws)
                .unwrap();
            let o_fresh = model
                .forward_backward(&tokens, &targets, b, t, k, &obj, &mut g_fresh)
                .unwrap();
            assert_eq!(o_ws, o_fresh);
            assert_eq!(g_ws, g_fresh);
        }
    }
}

/// A plain GPT-2 forward written from SPEC section 5 with no pause machinery at all
/// (per sequence, nested loops, libm tanh): the `K = 0` model must equal it.
fn plain_gpt_logits(m: &Model<f64>, tokens: &[i32]) -> Vec<Vec<f64>> {
    let (p, d, nh) = (&m.params, m.config.d_model, m.config.n_head);
    let dh = d / nh;
    let t_len = tokens.len();
    let layernorm = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        let mean = x.iter().sum::<f64>() / d as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        (0..d)
            .map(|i| (x[i] - mean) / (var + 1e-5).sqrt() * w[i] + b[i])
            .collect()
    };
    // y = W x + b with W [out, in].
    let linear = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        (0..b.len())
            .map(|o| b[o] + (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum::<f64>())
            .collect()
    };
    let mut h: Vec<Vec<f64>> = (0..t_len)
        .map(|t| {
            let tok = tokens[t] as usize;
            (0..d)
                .map(|i| p.tok_emb[tok * d + i] + p.pos_emb[t * d + i] + p.depth_emb[i])
                .collect()
        })
        .collect();
    for bp in &p.blocks {
        let qkv: Vec<Vec<f64>> = h
            .iter()
            .map(|x| {
                linear(
                    &layernorm(x, &bp.ln1_weight, &bp.ln1_bias),
                    &bp.attn_qkv_weight,
                    &bp.attn_qkv_bias,
                )
            })
            .collect();
        for t in 0..t_len {
            let mut y = vec![0.0; d];
            for hd in 0..nh {
                let q = &qkv[t][hd * dh..(hd + 1) * dh];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        let k = &qkv[s][d + hd * dh..d + (hd + 1) * dh];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (s, sc) in scores.iter().enumerate() {
                    for i in 0..dh {
                        y[hd * dh + i] += (sc - max).exp() / z * qkv[s][2 * d + hd * dh + i];
                    }
                }
            }
            let o = linear(&y, &bp.attn_proj_weight, &bp.attn_proj_bias);
            h[t].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for x in h.iter_mut() {
            let f = linear(
                &layernorm(x, &bp.ln2_weight, &bp.ln2_bias),
                &bp.mlp_fc_weight,
                &bp.mlp_fc_bias,
            );
            let g: Vec<f64> = f
                .iter()
                .map(|&u| {
                    0.5 * u
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (u + 0.044715 * u.powi(3)))
                                .tanh())
                })
                .collect();
            let o = linear(&g, &bp.mlp_proj_weight, &bp.mlp_proj_bias);
            x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
    }
    let v1 = m.config.vocab + 1;
    h.iter()
        .map(|x| {
            let n = layernorm(x, &p.ln_f_weight, &p.ln_f_bias);
            (0..v1)
                .map(|v| (0..d).map(|i| n[i] * p.tok_emb[v * d + i]).sum())
                .collect()
        })
        .collect()
}

#[test]
fn without_pauses_the_model_is_a_plain_gpt() {
    for mode in MODES {
        let config = tiny_config(mode);
        let model = random_model(config.clone(), 21);
        let mut rng = seeded(13);
        let (b, t) = (2, 5);
        let tokens = random_tokens(&mut rng, b * t, config.vocab);
        let logits = model.forward(&tokens, b, t, 0).unwrap();
        let want: Vec<f64> = (0..b)
            .flat_map(|bi| plain_gpt_logits(&model, &tokens[bi * t..(bi + 1) * t]).concat())
            .collect();
        assert_close(
            &format!("{mode}: K = 0 logits vs plain GPT"),
            &logits,
            &want,
            1e-12,
            1e-10,
        );
    }
}

#[test]
fn init_follows_spec_section_5() {
    let config = ModelConfig {
        vocab: 50,
        d_model: 64,
        n_layer: 4,
        n_head: 4,
        t_max: 64,
        k_max: 3,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let p: Params<f64> = Params::init(&config, &mut seeded(7));
    let std = |x: &[f64]| (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    let resid = 0.02 / (2.0 * config.n_layer as f64).sqrt();
    for (name, shape, x) in p.tensors() {
        let want = if name.ends_with("attn.proj.weight") || name.ends_with("mlp.proj.weight") {
            Some(resid)
        } else if shape.len() == 2 {
            Some(0.02) // Linear weights and the three embedding tables
        } else {
            None
        };
        match want {
            // A sample standard deviation of n >= 64 normal draws has a relative spread of
            // about 1/sqrt(2n) <= 9%; the smallest tensors here have a few hundred values
            // (spread <= 4%), so 10% relative is > 2.5 sigma for every tensor, for any
            // seed, and still catches a wrong init scale (e.g. resid vs 0.02 is 50% off).
            Some(s) => approx::assert_relative_eq!(std(x), s, max_relative = 0.1),
            None if name.contains("ln") && name.ends_with(".weight") => {
                assert!(x.iter().all(|&v| v == 1.0), "{name}")
            }
            None => assert!(x.iter().all(|&v| v == 0.0), "{name}"),
        }
    }
    // Same seed, same model; the f32 model is the f64 one rounded.
    assert_eq!(p, Params::init(&config, &mut seeded(7)));
    assert_eq!(
        Params::<f32>::init(&config, &mut seeded(7)),
        p.cast::<f32>()
    );
}

#[test]
fn f32_training_path_matches_the_f64_reference() {
    // The same checkpoint in f32 (sgemm) and f64 (dgemm): f32 rounding only.
    for name in MODEL_CASES {
        let (m32, case) = spec_case(name);
        let m64: Model<f64> = m32.cast();
        let (tokens, targets) = (i32s(&case["tokens"]), i32s(&case["targets"]));
        let (b, kk) = (2, m32.config.k_max);
        let t = tokens.len() / b;
        for obj in all_objectives() {
            let obj = obj.resolve(kk).unwrap();
            let (mut g32, mut g64) = (Params::zeros(&m32.config), Params::zeros(&m64.config));
            let o32 = m32
                .forward_backward(&tokens, &targets, b, t, kk, &obj, &mut g32)
                .unwrap();
            let o64 = m64
                .forward_backward(&tokens, &targets, b, t, kk, &obj, &mut g64)
                .unwrap();
            assert_close(
                &format!("{name} f32 loss"),
                &[o32.loss],
                &[o64.loss],
                0.0,
                1e-5,
            );
            let g32 = g32.cast::<f64>();
            for ((tname, _, a), (_, _, w)) in g32.tensors().into_iter().zip(g64.tensors()) {
                // Gradients are ~1e-2..1e-4 here; f32 keeps ~6 digits of the largest terms.
                assert_close(&format!("{name} f32 grad {tname}"), a, w, 2e-6, 1e-3);
            }
        }
    }
}

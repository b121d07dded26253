//! The CPU model against the independent SPEC vectors (`model_case`), f64 finite
//! differences for every parameter tensor and objective, the pause mask against a
//! brute-force masked softmax, position independence, and determinism.

mod common;

use common::{assert_close, f64s, i32s, testdata_dir, vectors};
use cyb::checkpoint;
use cyb::cpu::model::{Model, Params};
use cyb::Objective;

fn spec_model() -> Model<f64> {
    checkpoint::load(testdata_dir().join("tiny_model.safetensors"))
        .expect("tiny_model.safetensors loads")
        .cast()
}

#[test]
fn reproduces_spec_model_case() {
    let v = vectors();
    let case = &v["model_case"];
    let model = spec_model();
    let c = &case["config"];
    assert_eq!(model.config.vocab, c["vocab"].as_u64().unwrap() as usize);
    let tokens = i32s(&case["tokens"]);
    let targets = i32s(&case["targets"]);
    let (batch, kk) = (2, model.config.k_max);
    let seq = tokens.len() / batch;
    // Losses and gradients are sums of many terms: 1e-9 relative plus a tiny absolute
    // floor for entries that are ~0 up to rounding.
    let logits = model.forward(&tokens, batch, seq, kk).unwrap();
    assert_close("logits", &logits, &f64s(&case["logits"]), 1e-12, 1e-9);
    for (name, want) in case["objectives"].as_object().unwrap() {
        let obj: Objective = name.parse().unwrap();
        let mut grads = Params::zeros(&model.config);
        let out = model
            .forward_backward(
                &tokens,
                &targets,
                batch,
                seq,
                kk,
                &obj.resolve(kk).unwrap(),
                &mut grads,
            )
            .unwrap();
        assert_close(
            &format!("{name} loss"),
            &[out.loss],
            &[want["loss"].as_f64().unwrap()],
            0.0,
            1e-9,
        );
        assert_close(
            &format!("{name} mean_pauses"),
            &[out.stats.mean_pauses],
            &[want["mean_pauses"].as_f64().unwrap()],
            0.0,
            1e-9,
        );
        if name == "ap" {
            let want_grads = case["ap_grads"].as_object().unwrap();
            assert_eq!(want_grads.len(), grads.tensors().len());
            for (tname, _, g) in grads.tensors() {
                assert_close(
                    &format!("ap grad {tname}"),
                    g,
                    &f64s(&want_grads[&tname]),
                    1e-12,
                    1e-9,
                );
            }
        }
    }
}

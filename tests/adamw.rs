//! AdamW against a hand-computed reference, gradient clipping, and the schedule.

use cyb::config::ModelConfig;
use cyb::cpu::adamw::{clip_grad_norm, lr_schedule, AdamW};
use cyb::cpu::params::Params;

fn config() -> ModelConfig {
    ModelConfig {
        vocab: 3,
        d_model: 2,
        n_layer: 1,
        n_head: 1,
        t_max: 2,
        k_max: 1,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    }
}

/// The textbook AdamW recurrence for one scalar, in f64.
fn reference(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
    let (b1, b2, eps) = (0.9, 0.95, 1e-8);
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, &g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let (mh, vh) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
        p -= lr * (mh / (vh.sqrt() + eps) + wd * p);
    }
    p
}

#[test]
fn adamw_matches_hand_computed_steps_and_decays_matrices_only() {
    let c = config();
    let mut p: Params<f32> = Params::zeros(&c);
    p.tok_emb[1] = 0.5; // a matrix: decayed
    p.ln_f_weight[0] = 0.5; // a LayerNorm gain: not decayed
    p.blocks[0].mlp_fc_bias[2] = -0.25; // a bias: not decayed
    let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
    let (lr, wd) = (0.01, 0.1);
    let steps = [[0.3f32, -0.2, 0.05], [-0.1, 0.4, 0.05]];
    for gs in &steps {
        let mut g: Params<f32> = Params::zeros(&c);
        g.tok_emb[1] = gs[0];
        g.ln_f_weight[0] = gs[1];
        g.blocks[0].mlp_fc_bias[2] = gs[2];
        opt.step(&mut p, &g, lr);
    }
    let col = |i: usize| steps.iter().map(|s| s[i] as f64).collect::<Vec<_>>();
    // The f32 update against an f64 transcription of the formula: two steps on values of
    // order 0.5 round to ~3e-8 per operation in f32, so 1e-6 absolute is loose for
    // rounding and tight for any wrong term (a missed bias correction moves them by ~1e-3).
    let close = |got: f32, want: f64| {
        approx::assert_abs_diff_eq!(got as f64, want, epsilon = 1e-6);
    };
    close(p.tok_emb[1], reference(0.5, &col(0), lr as f64, wd));
    close(p.ln_f_weight[0], reference(0.5, &col(1), lr as f64, 0.0));
    close(
        p.blocks[0].mlp_fc_bias[2],
        reference(-0.25, &col(2), lr as f64, 0.0),
    );
    // Zero parameters with zero gradients stay put (decay of 0 is 0).
    assert_eq!(p.tok_emb[0], 0.0);
    assert_eq!(p.blocks[0].mlp_fc_bias[0], 0.0);
    assert_eq!(opt.steps(), 2);
}

#[test]
fn clipping_scales_to_max_norm_and_reports_the_old_norm() {
    let c = config();
    let mut g: Params<f32> = Params::zeros(&c);
    g.tok_emb[0] = 6.0;
    g.blocks[0].attn_qkv_bias[1] = 8.0;
    assert_eq!(clip_grad_norm(&mut g, 2.0), 10.0);
    let norm: f32 = g
        .tensors()
        .iter()
        .map(|(_, _, x)| x.iter().map(|v| v * v).sum::<f32>())
        .sum::<f32>()
        .sqrt();
    // f32 sums and a square root of values of order 1-10: 1e-5 is ~100 f32 ulps, loose for
    // rounding, tight for a wrong scale.
    approx::assert_abs_diff_eq!(norm, 2.0, epsilon = 1e-5);
    approx::assert_abs_diff_eq!(g.tok_emb[0], 1.2, epsilon = 1e-5);
    // Under the limit: untouched.
    let before = g.clone();
    approx::assert_abs_diff_eq!(clip_grad_norm(&mut g, 5.0), 2.0, epsilon = 1e-5);
    assert_eq!(g, before);
}

#[test]
fn schedule_endpoints() {
    let (peak, min) = (1e-3f32, 1e-4f32);
    // The schedule is computed in f32 at ~1e-4..1e-3: an f32 ulp there is ~1e-11..1e-10,
    // so 1e-10 (1e-9 for the cosine midpoint, which goes through cos) allows a few ulps.
    approx::assert_abs_diff_eq!(lr_schedule(0, 100, 10, peak, min), 1e-4, epsilon = 1e-10); // peak/warmup
    assert_eq!(lr_schedule(9, 100, 10, peak, min), peak); // end of warmup
    assert_eq!(lr_schedule(10, 100, 10, peak, min), peak); // cosine starts at peak
    approx::assert_abs_diff_eq!(
        lr_schedule(55, 100, 10, peak, min),
        0.5 * (peak + min),
        epsilon = 1e-9
    );
    approx::assert_abs_diff_eq!(lr_schedule(100, 100, 10, peak, min), min, epsilon = 1e-10);
    approx::assert_abs_diff_eq!(lr_schedule(500, 100, 10, peak, min), min, epsilon = 1e-10);
    assert_eq!(lr_schedule(0, 100, 0, peak, min), peak); // no warmup
    let lrs: Vec<f32> = (10..=100)
        .map(|s| lr_schedule(s, 100, 10, peak, min))
        .collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
}

//! Times one CPU training step (forward + backward + AdamW) of a small model.
//!
//! `cargo run --release --example model_step -- [B] [T] [K]`

use cyb::config::ModelConfig;
use cyb::cpu::adamw::AdamW;
use cyb::cpu::model::{Model, Params, Workspace};
use cyb::rng::seeded;
use cyb::Objective;
use rand::RngExt;
use std::time::Instant;

fn main() -> cyb::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (batch, seq, pauses) = (arg(0, 16), arg(1, 32), arg(2, 3));
    let config = ModelConfig {
        vocab: 32,
        d_model: 64,
        n_layer: 2,
        n_head: 4,
        t_max: seq,
        k_max: pauses,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let mut rng = seeded(0);
    let mut model: Model<f32> = Model::init(config.clone(), &mut rng)?;
    let tokens: Vec<i32> = (0..batch * seq)
        .map(|_| rng.random_range(0..config.vocab) as i32)
        .collect();
    let targets: Vec<i32> = (0..batch * seq)
        .map(|_| rng.random_range(0..config.vocab) as i32)
        .collect();
    let obj = Objective::ap_default().resolve(pauses)?;
    let mut grads = Params::zeros(&config);
    let mut ws: Workspace<f32> = Workspace::new();
    let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
    let steps = 20;
    let mut fb = 0.0;
    let mut total = 0.0;
    for i in 0..steps + 3 {
        let t0 = Instant::now();
        let out = model.forward_backward_with(
            &mut ws, &tokens, &targets, batch, seq, pauses, &obj, &mut grads,
        )?;
        let t1 = Instant::now();
        opt.step(&mut model.params, &grads, 1e-3);
        let t2 = Instant::now();
        if i >= 3 {
            fb += (t1 - t0).as_secs_f64();
            total += (t2 - t0).as_secs_f64();
        }
        if i == steps + 2 {
            println!(
                "loss {:.4} mean_pauses {:.3}",
                out.loss, out.stats.mean_pauses
            );
        }
    }
    println!(
        "{config:?} B={batch} T={seq} K={pauses}: forward_backward {:.2} ms, with AdamW {:.2} ms per step",
        1e3 * fb / steps as f64,
        1e3 * total / steps as f64
    );
    Ok(())
}

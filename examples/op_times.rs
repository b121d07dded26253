//! Times the CPU ops one by one at the shapes of `model_step` (B=16, K=3, T=32,
//! d=64, H=4), to see where a training step goes.
//!
//! `cargo run --release --example op_times` (`RAYON_NUM_THREADS=1
//! MATMUL_NUM_THREADS=1` for single-thread numbers)
use cyb::cpu::attention::{attention_backward, attention_forward, AttnShape};
use cyb::cpu::embedding::StepShape;
use cyb::cpu::gelu::{gelu_backward, gelu_forward};
use cyb::cpu::layernorm::{layernorm_backward, layernorm_forward};
use cyb::cpu::linear::{linear_backward, linear_forward};
use std::time::Instant;

fn time(name: &str, mut f: impl FnMut()) {
    f();
    let t0 = Instant::now();
    for _ in 0..20 {
        f();
    }
    println!("{name}: {:.3} ms", t0.elapsed().as_secs_f64() * 1e3 / 20.0);
}

fn main() {
    let s = AttnShape {
        steps: StepShape {
            batch: 16,
            pauses: 3,
            seq: 32,
        },
        heads: 4,
        d: 64,
        mode: cyb::config::PauseAttention::Shared,
    };
    let (n, d) = (s.steps.rows(), 64);
    let x: Vec<f32> = (0..n * 4 * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let qkv = &x[..n * 3 * d];
    let mut out = vec![0.0f32; n * d];
    let mut att = vec![0.0f32; s.att_len()];
    let mut dqkv = vec![0.0f32; n * 3 * d];
    time("attention_forward", || {
        attention_forward(&mut out, &mut att, qkv, s)
    });
    time("attention_backward", || {
        attention_backward(&mut dqkv, &x[..n * d], qkv, &att, s)
    });
    let mut g = vec![0.0f32; n * 4 * d];
    time("gelu_forward", || gelu_forward(&mut g, &x));
    let mut dg = vec![0.0f32; n * 4 * d];
    time("gelu_backward", || gelu_backward(&mut dg, &x, &x));
    let (mut m, mut r) = (vec![0.0f32; n], vec![0.0f32; n]);
    let w = vec![1.0f32; d];
    time("layernorm_forward", || {
        layernorm_forward(&mut out, &mut m, &mut r, &x[..n * d], &w, &w, d, 1e-5)
    });
    let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    let mut dx = vec![0.0f32; n * d];
    time("layernorm_backward", || {
        layernorm_backward(
            &mut dx,
            &mut dw,
            &mut db,
            &x[..n * d],
            &x[..n * d],
            &w,
            &m,
            &r,
            d,
        )
    });
    let wt = &x[..4 * d * d];
    let b4 = vec![0.0f32; 4 * d];
    time("linear_forward fc", || {
        linear_forward(&mut g, &x[..n * d], wt, &b4, n, d, 4 * d)
    });
    let mut dwt = vec![0.0f32; 4 * d * d];
    let mut db4 = vec![0.0f32; 4 * d];
    time("linear_backward fc", || {
        linear_backward(
            &mut dx,
            &mut dwt,
            &mut db4,
            &x,
            &x[..n * d],
            wt,
            n,
            d,
            4 * d,
        )
    });
}

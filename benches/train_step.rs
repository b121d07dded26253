//! One whole training step: forward, CYB loss, backward, AdamW.
//!
//! - Always: the CPU model at a tiny shape (V=64, d=32, L=2, H=2, T=16, K=3, B=4,
//!   objective `ap`), so `cargo bench` works on any machine.
//! - With feature `cuda` and a device: [`cyb::gpu::model::GpuModel`] at the
//!   GPT-2-small shape of ANCHORS.md (V=32000, d=768, L=12, H=12, T=1024, K=3, B=8,
//!   objective `ap`), random tokens (never zeros), timed with CUDA events inside
//!   `iter_custom`; prints ms/step, real tokens/s (B*T per step; each real token
//!   carries K+1 = 4 steps) and the ratio to PyTorch's 84,000 tok/s (torch.compile +
//!   FlexAttention, bf16 autocast), one line each for the f32 step (SGEMM), the f32
//!   step with TF32 tensor-core GEMMs and the bf16 mixed-precision step
//!   (`Precision::Bf16`, the comparable one: PyTorch's number is bf16 autocast);
//!   criterion then times the bf16 step. No cache flush is needed: every step streams
//!   gigabytes of activations, far beyond the 50 MB L2.

use criterion::{criterion_group, criterion_main, Criterion};
use cyb::config::ModelConfig;
use cyb::cpu::adamw::{clip_grad_norm, AdamW};
use cyb::cpu::model::{Model, Params, Workspace};
use cyb::rng::seeded;
use cyb::Objective;
use rand::RngExt;
use std::time::Duration;

fn cpu_step(c: &mut Criterion) {
    let config = ModelConfig {
        vocab: 64,
        d_model: 32,
        n_layer: 2,
        n_head: 2,
        t_max: 16,
        k_max: 3,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let (b, t, k) = (4, 16, 3);
    let mut rng = seeded(3);
    let mut model: Model<f32> = Model::init(config.clone(), &mut rng).expect("model");
    let tokens: Vec<i32> = (0..b * t).map(|_| rng.random_range(0..64) as i32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| rng.random_range(0..64) as i32).collect();
    let obj = Objective::ap_default().resolve(k).expect("objective");
    let mut grads = Params::zeros(&config);
    let mut ws = Workspace::new();
    let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
    let mut group = c.benchmark_group("cpu_train_step_tiny");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("ap_k3", |bench| {
        bench.iter(|| {
            model
                .forward_backward_with(&mut ws, &tokens, &targets, b, t, k, &obj, &mut grads)
                .expect("step");
            clip_grad_norm(&mut grads, 1.0);
            opt.step(&mut model.params, &grads, 1e-4);
        })
    });
    group.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use cyb::gpu::cudarc::driver::sys::CUevent_flags;
    use cyb::gpu::model::{GpuModel, Precision};
    use cyb::gpu::GpuContext;

    const TORCH_TOK_S: f64 = 84_000.0;

    pub fn bench(c: &mut Criterion) {
        let gpu = match GpuContext::new(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("GPU train-step bench skipped: {e}");
                return;
            }
        };
        if gpu.is_emulator() {
            eprintln!("GPU train-step bench skipped: the device is the CPU emulator, not a GPU");
            return;
        }
        let config = ModelConfig {
            vocab: 32000,
            d_model: 768,
            n_layer: 12,
            n_head: 12,
            t_max: 1024,
            k_max: 3,
            pause_attention: cyb::config::PauseAttention::Private,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        };
        let (b, t, k) = (8, 1024, 3);
        let mut rng = seeded(11);
        let cpu: Model<f32> = Model::init(config.clone(), &mut rng).expect("model");
        let tokens: Vec<i32> = (0..b * t)
            .map(|_| rng.random_range(0..32000) as i32)
            .collect();
        let targets: Vec<i32> = (0..b * t)
            .map(|_| rng.random_range(0..32000) as i32)
            .collect();
        let obj = Objective::ap_default().resolve(k).expect("objective");
        let step = |model: &mut GpuModel| -> cyb::Result<()> {
            model.forward_backward(&tokens, &targets, b, t, k, &obj)?;
            model.step(1e-4, 1.0)
        };
        let stream = gpu.stream().clone();
        let ctx = gpu.context().clone();
        let time_ms = |model: &mut GpuModel, iters: u64| -> f64 {
            let start = ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            let end = ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            start.record(&stream).unwrap();
            for _ in 0..iters {
                step(model).expect("step");
            }
            end.record(&stream).unwrap();
            start.elapsed_ms(&end).unwrap() as f64
        };
        // Summary lines: full f32 SGEMM, TF32 tensor cores (f32 storage and
        // accumulation, inputs of the products rounded to 10 mantissa bits), then the
        // bf16 mixed-precision step. One model at a time (the activations of this shape
        // take tens of GB).
        let mut bf16_model = None;
        for (label, precision, tf32) in [
            ("f32", Precision::F32, false),
            ("f32+tf32", Precision::F32, true),
            ("bf16", Precision::Bf16, false),
        ] {
            let mut model = match GpuModel::with_precision(&gpu, &cpu, precision) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("GPU train-step bench ({label}) skipped: {e}");
                    continue;
                }
            };
            model.optimizer_mut().weight_decay = 0.1;
            model.set_tf32(tf32).expect("math mode");
            if let Err(e) = step(&mut model).and_then(|_| model.synchronize()) {
                eprintln!("GPU train-step bench ({label}) skipped: {e}");
                continue;
            }
            time_ms(&mut model, 2);
            let mut runs: Vec<f64> = (0..5).map(|_| time_ms(&mut model, 1)).collect();
            runs.sort_by(f64::total_cmp);
            let ms = runs[2];
            let tok_s = (b * t) as f64 / (ms * 1e-3);
            println!(
                "gpu train step GPT-2-small V=32000 d=768 L=12 H=12 T=1024 K=3 B=8 ap {label}: \
                 {ms:.1} ms/step, {tok_s:.0} real tokens/s, {:.2}x PyTorch's {TORCH_TOK_S} tok/s",
                tok_s / TORCH_TOK_S
            );
            if precision == Precision::Bf16 {
                bf16_model = Some(model);
            }
        }
        drop(cpu);
        let Some(mut model) = bf16_model else {
            return;
        };
        let mut group = c.benchmark_group("gpu_train_step_gpt2_small_k3_ap");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        group.bench_function("bf16", |bench| {
            bench.iter_custom(|iters| Duration::from_secs_f64(time_ms(&mut model, iters) * 1e-3))
        });
        group.finish();
    }
}

#[cfg(feature = "cuda")]
fn gpu_step(c: &mut Criterion) {
    gpu::bench(c);
}

#[cfg(not(feature = "cuda"))]
fn gpu_step(_c: &mut Criterion) {
    eprintln!("GPU train-step bench skipped: built without feature `cuda`");
}

criterion_group!(benches, cpu_step, gpu_step);
criterion_main!(benches);

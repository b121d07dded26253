//! CYB loss, forward + backward to the logits.
//!
//! - Always: the CPU reference (`cpu::loss::cyb_loss`) at a small shape
//!   `[2, 4, 128, 1001]` f32, so `cargo bench` works on any machine.
//! - With feature `cuda` and a device: the kernels at the ANCHORS.md shape
//!   `[B=8, K+1=4, T=1024, V+1=32001]` bf16 (2.1 GB of random logits, never zeros),
//!   rows padded to the model's stride (`padded_row_stride(32001)` = 32064, the layout
//!   the GPU model uses) and, for comparison, dense (stride 32001, rows misaligned),
//!   timed with CUDA events inside `iter_custom`; prints ms, effective GB/s for the
//!   6.3 GB that must move (read forward, read + write backward), and the ratios to
//!   the 1.46 ms memory floor of issue #12 and to torch.compile's 8.2 ms; first the
//!   kernel module load times of the context (milliseconds when the card loads the
//!   embedded SASS; seconds would mean a PTX JIT). No cache flush is needed: every
//!   pass streams 2.1 GB, 40x the H200's 50 MB L2.

use criterion::{criterion_group, criterion_main, Criterion};
use cyb::cpu::loss::{cyb_loss, LossShape};
use cyb::objective::dk_bias_from_prior;
use cyb::rng::Rng;
use cyb::{Discount, Objective, Reduction, ResolvedObjective, StepWeights};
use std::time::Duration;

/// The SPEC v2 objectives timed (K = 3), each with the DK bias of psi = 0.9 for
/// vocabulary `vocab`: `ap` with its defaults and with the grid's deadline 4:1:1:4,
/// `dp`, `va` and `ce_final`.
fn objectives(shape: LossShape) -> Vec<(&'static str, ResolvedObjective)> {
    let grid_ap = Objective::Ap {
        omega: StepWeights::Explicit(vec![4.0, 1.0, 1.0, 4.0]),
        gamma: 1.0,
        discount: Discount::Exp,
    };
    let bias = dk_bias_from_prior(0.9, shape.vocab).expect("psi");
    [
        ("ap", Objective::ap_default()),
        ("ap_4114", grid_ap),
        ("dp", Objective::dp_default()),
        ("va", Objective::va_default()),
        ("ce_final", Objective::CeFinal),
    ]
    .into_iter()
    .map(|(name, o)| {
        let r = o.resolve(shape.pauses).and_then(|r| r.with_dk_bias(bias));
        (name, r.expect("objective"))
    })
    .collect()
}

fn cpu_reference(c: &mut Criterion) {
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 128,
        vocab: 1000,
    };
    let mut rng = Rng::new(7);
    let logits: Vec<f32> = (0..shape.rows() * (shape.vocab + 1))
        .map(|_| 2.0 * rng.normal() as f32)
        .collect();
    let targets: Vec<i32> = (0..shape.positions())
        .map(|_| rng.below(shape.vocab) as i32)
        .collect();
    let mut dlogits = vec![0.0f32; logits.len()];
    let mut group = c.benchmark_group("cpu_loss_fwd_bwd_2x4x128x1001_f32");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for (name, obj) in objectives(shape) {
        group.bench_function(name, |b| {
            b.iter(|| {
                cyb_loss(
                    &logits,
                    &targets,
                    shape,
                    &obj,
                    Reduction::Mean,
                    None,
                    Some(&mut dlogits),
                )
                .expect("cpu loss")
            })
        });
    }
    group.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use cyb::gpu::cudarc::driver::sys::CUevent_flags;
    use cyb::gpu::{padded_row_stride, CybLoss, GpuContext, Upstream};
    use half::bf16;
    use rayon::prelude::*;

    /// Bytes that must move (logits read once forward, read + written once backward:
    /// 3 x 2.097 GB = 6.29 GB) at the card's bandwidth: issue #12's floor (ANCHORS.md
    /// rounds the same 6.3 GB to "about 1.5 ms" at its 4.20 TB/s copy rate).
    const FLOOR_MS: f64 = 1.46;
    const TORCH_COMPILE_MS: f64 = 8.2;

    /// Random logits without a serial generator: a SplitMix64 hash of the index, mapped
    /// to roughly N(0, 2) by summing four uniforms (cheap, parallel, reproducible).
    fn random_logit(i: u64) -> bf16 {
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = |k: u32| ((z >> (16 * k)) & 0xffff) as f32 / 65536.0;
        bf16::from_f32((u(0) + u(1) + u(2) + u(3) - 2.0) * 3.5)
    }

    pub fn bench(c: &mut Criterion) {
        if cyb::gpu::device_count() == 0 {
            eprintln!("GPU loss bench skipped: no CUDA device");
            return;
        }
        // A device that is there but unusable is an error, not a skip.
        let gpu = GpuContext::new(0).expect("open CUDA device 0");
        if gpu.is_emulator() {
            eprintln!("GPU loss bench skipped: the device is the CPU emulator, not a GPU");
            return;
        }
        for (file, t) in gpu.module_loads() {
            println!(
                "gpu module load {file}: {:.2} ms (embedded fatbin; SASS: milliseconds, a PTX JIT: seconds)",
                t.as_secs_f64() * 1e3
            );
        }
        let shape = LossShape {
            batch: 8,
            pauses: 3,
            seq: 1024,
            vocab: 32000,
        };
        let targets: Vec<i32> = (0..shape.positions())
            .map(|i| (random_logit(i as u64 ^ 0xABCD).to_f32().abs() * 4000.0) as i32 % 32000)
            .collect();
        // The bytes that must move are those of the dense logits, whatever the stride.
        let bytes = 3.0 * (shape.rows() * (shape.vocab + 1) * 2) as f64;
        let padded = padded_row_stride(shape.vocab + 1);
        for (layout, stride) in [("padded", padded), ("dense", shape.vocab + 1)] {
            // Every element random, padding included (the kernels never read it).
            let n = shape.rows() * stride;
            let host: Vec<bf16> = (0..n as u64).into_par_iter().map(random_logit).collect();
            let logits = gpu.htod(&host).expect("upload logits");
            drop(host);
            let mut dlogits = gpu.zeros::<bf16>(n).expect("dlogits buffer");
            let mut group = c.benchmark_group(format!(
                "gpu_loss_fwd_bwd_8x4x1024x32001_bf16_stride{stride}"
            ));
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(3));
            bench_layout(
                &gpu,
                &mut group,
                shape,
                &targets,
                &logits,
                &mut dlogits,
                (layout, stride),
                bytes,
            );
            group.finish();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bench_layout(
        gpu: &std::sync::Arc<GpuContext>,
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        shape: LossShape,
        targets: &[i32],
        logits: &cyb::gpu::cudarc::driver::CudaSlice<bf16>,
        dlogits: &mut cyb::gpu::cudarc::driver::CudaSlice<bf16>,
        (layout, stride): (&str, usize),
        bytes: f64,
    ) {
        for (name, obj) in objectives(shape) {
            let loss = CybLoss::new(gpu, &obj).expect("loss");
            let targets = loss.upload_targets(targets, shape).expect("targets");
            let stream = gpu.stream().clone();
            let ctx = gpu.context().clone();
            let mut step = || {
                let fwd = loss
                    .forward_strided(logits, stride, &targets, shape, Reduction::Mean, None)
                    .expect("forward");
                loss.backward(&fwd, Upstream::Scalar(1.0), logits, dlogits)
                    .expect("backward");
                fwd
            };
            let mut time_ms = |iters: u64| -> f64 {
                let start = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                let end = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                start.record(&stream).unwrap();
                for _ in 0..iters {
                    step();
                }
                end.record(&stream).unwrap();
                start.elapsed_ms(&end).unwrap() as f64
            };
            // Warm up, then the median of 10 single runs for the summary line.
            time_ms(3);
            let mut runs: Vec<f64> = (0..10).map(|_| time_ms(1)).collect();
            runs.sort_by(f64::total_cmp);
            let ms = runs[5];
            println!(
                "gpu cyb_loss {name:>8} fwd+bwd [8,4,1024,32001] bf16 {layout} stride {stride}: \
                 {ms:.3} ms, {:.0} GB/s effective, {:.2}x the {FLOOR_MS} ms floor, \
                 {:.2}x faster than torch.compile ({TORCH_COMPILE_MS} ms)",
                bytes / (ms * 1e-3) / 1e9,
                ms / FLOOR_MS,
                TORCH_COMPILE_MS / ms
            );
            group.bench_function(name, |b| {
                b.iter_custom(|iters| Duration::from_secs_f64(time_ms(iters) * 1e-3))
            });
        }
    }
}

#[cfg(feature = "cuda")]
fn gpu_kernels(c: &mut Criterion) {
    gpu::bench(c);
}

#[cfg(not(feature = "cuda"))]
fn gpu_kernels(_c: &mut Criterion) {
    eprintln!("GPU loss bench skipped: built without feature `cuda`");
}

criterion_group!(benches, cpu_reference, gpu_kernels);
criterion_main!(benches);

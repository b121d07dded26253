//! Pause-step attention (SPEC section 3), forward + backward, in both modes.
//!
//! - Always: the CPU reference (`cpu::attention`) at a small shape (B1 H2 T128 K3
//!   Dh64, f32), `shared` and `private`, so `cargo bench` works on any machine.
//! - With feature `cuda` and a device: the kernels in bf16 at the two ANCHORS.md shapes
//!   (B8 H12 T1024 K3 Dh64 and B4 H16 T2048 K3 Dh128), each mode, timed with CUDA events
//!   inside `iter_custom`; prints ms, useful TFLOP/s (only visible (query, key) pairs,
//!   4·Dh FLOPs per pair forward, 3.5x that forward + backward; per head `private`:
//!   `(K+1)·T(T+1)/2 + T·K(K+1)/2` pairs, `shared`: `n(n+1)/2` with `n = (K+1)T`, causal
//!   over the interleaved stream), the speed-up over the ANCHORS.md peer (`private`:
//!   FlexAttention with the mask, 2.04 ms / 6.17 ms; `shared`: PyTorch SDPA causal over
//!   the (K+1)T stream, 2.05 ms / 7.31 ms) and the fraction of the card's 766 TFLOP/s
//!   bf16 matmul ceiling. Inputs are random, never zeros; no cache flush: the working
//!   set (qkv, out, grads) is about the size of the 50 MB L2 at the first shape and 5x
//!   it at the second, as it is in training.
//!
//! Floors for `private` (useful FLOPs at 766 TFLOP/s; both shapes are compute-bound,
//! the bytes take ~0.1 ms / ~0.3 ms at 4.2 TB/s): B8 H12 T1024 K3 Dh64 = 181 GFLOP ->
//! 0.24 ms; B4 H16 T2048 K3 Dh128 = 964 GFLOP -> 1.26 ms; `shared` does about 4x the
//! useful work (722 GFLOP -> 0.94 ms; 3.85 TFLOP -> 5.0 ms). In this version every bf16 kernel
//! runs on tensor cores with mma.sync m16n8k16 (no wgmma, no ldmatrix, no cp.async
//! pipelining, scalar shared loads for the transposed operands). Prediction before
//! any GPU run: 50-150 useful TFLOP/s, roughly 1.2-3.6 ms and 6.5-19 ms, i.e. between
//! 0.6x and 1.7x FlexAttention. A second line per shape times the forward alone on
//! tensor cores and on CUDA cores (the f32 path, f32 FMAs, ~67 TFLOP/s peak).

use criterion::{criterion_group, criterion_main, Criterion};
use cyb::config::PauseAttention as Mode;
use cyb::cpu::attention::{attention_backward, attention_forward, AttnShape};
use cyb::cpu::embedding::StepShape;
use cyb::rng::seeded;
use rand::RngExt;
use rand_distr::StandardNormal;
use std::time::Duration;

fn cpu_reference(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_attention_fwd_bwd_b1h2t128k3d64_f32");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for mode in [Mode::Shared, Mode::Private] {
        let s = AttnShape {
            steps: StepShape {
                batch: 1,
                pauses: 3,
                seq: 128,
            },
            heads: 2,
            d: 128,
            mode,
        };
        let rows = s.steps.rows();
        let mut rng = seeded(11);
        let qkv: Vec<f32> = (0..rows * 3 * s.d)
            .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
            .collect();
        let dout: Vec<f32> = (0..rows * s.d)
            .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
            .collect();
        let mut out = vec![0.0f32; rows * s.d];
        let mut att = vec![0.0f32; s.att_len()];
        let mut dqkv = vec![0.0f32; qkv.len()];
        group.bench_function(format!("fwd_bwd_{mode}"), |b| {
            b.iter(|| {
                attention_forward(&mut out, &mut att, &qkv, s);
                attention_backward(&mut dqkv, &dout, &qkv, &att, s);
            })
        });
    }
    group.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use cyb::gpu::attention::{AttnDims, PauseAttention};
    use cyb::gpu::cudarc::driver::sys::CUevent_flags;
    use cyb::gpu::GpuContext;
    use half::bf16;
    use rayon::prelude::*;

    const CEILING_TFLOPS: f64 = 766.0;

    /// `n` draws of `scale * N(0, 1)` as bf16, generated in parallel: chunk `c` of 64 Ki
    /// values has its own generator `seeded(salt << 32 | c)` (distinct seeds; rand_xoshiro
    /// expands each through SplitMix64, so neighbouring seeds give unrelated streams), which
    /// keeps the data reproducible whatever the number of threads.
    fn random_bf16(n: usize, scale: f32, salt: u64) -> Vec<bf16> {
        let mut host = vec![bf16::ZERO; n];
        host.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = seeded(salt << 32 | c as u64);
                chunk.iter_mut().for_each(|x| {
                    *x = bf16::from_f32(scale * rng.sample::<f32, _>(StandardNormal))
                });
            });
        host
    }

    /// Useful FLOPs of forward + backward: visible pairs only (ANCHORS.md).
    fn useful_flops(d: AttnDims) -> f64 {
        let (t, k) = (d.seq as f64, d.pauses as f64);
        let pairs = match d.mode {
            Mode::Private => (k + 1.0) * t * (t + 1.0) / 2.0 + t * k * (k + 1.0) / 2.0,
            Mode::Shared => {
                let n = (k + 1.0) * t;
                n * (n + 1.0) / 2.0
            }
        };
        (d.batch * d.heads) as f64 * pairs * 4.0 * d.d_head as f64 * 3.5
    }

    pub fn bench(c: &mut Criterion) {
        let gpu = match GpuContext::new(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("GPU attention bench skipped: {e}");
                return;
            }
        };
        if gpu.is_emulator() {
            eprintln!("GPU attention bench skipped: the device is the CPU emulator, not a GPU");
            return;
        }
        let attn = PauseAttention::new(&gpu).expect("load attention kernels");
        let cores_attn = PauseAttention::new(&gpu)
            .expect("load attention kernels")
            .with_tensor_cores(false);
        // ANCHORS.md peers: private, FlexAttention with the mask; shared, SDPA causal
        // over the (K+1)T interleaved stream.
        let shapes = [
            ("b8h12t1024k3d64", 8, 12, 1024, 64, (2.05, 2.04)),
            ("b4h16t2048k3d128", 4, 16, 2048, 128, (7.31, 6.17)),
        ];
        let mut group = c.benchmark_group("gpu_attention_fwd_bwd_bf16");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        for ((shape, batch, heads, seq, d_head, (sdpa_ms, flex_ms)), mode) in shapes
            .into_iter()
            .flat_map(|s| [(s, Mode::Shared), (s, Mode::Private)])
        {
            let name = format!("{shape}_{mode}");
            let (peer, peer_ms) = match mode {
                Mode::Shared => ("SDPA causal over (K+1)T", sdpa_ms),
                Mode::Private => ("FlexAttention", flex_ms),
            };
            let d = AttnDims {
                batch,
                pauses: 3,
                seq,
                heads,
                d_head,
                mode,
            };
            let host = |n: usize, salt: u64| random_bf16(n, 1.0, salt);
            let qkv = gpu.htod(&host(d.qkv_len(), 1)).expect("qkv");
            let dout = gpu.htod(&host(d.out_len(), 2)).expect("dout");
            let mut out = gpu.zeros::<bf16>(d.out_len()).expect("out");
            let mut lse = gpu.zeros::<f32>(d.lse_len()).expect("lse");
            let mut dqkv = gpu.zeros::<bf16>(d.qkv_len()).expect("dqkv");
            let mut delta = gpu.zeros::<f32>(d.lse_len()).expect("delta");
            let stream = gpu.stream().clone();
            let ctx = gpu.context().clone();
            let mut time_ms = |iters: u64| -> f64 {
                let start = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                let end = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .unwrap();
                start.record(&stream).unwrap();
                for _ in 0..iters {
                    attn.forward(&qkv, &mut out, &mut lse, d).expect("forward");
                    attn.backward_with_scratch(&qkv, &out, &dout, &lse, &mut dqkv, &mut delta, d)
                        .expect("backward");
                }
                end.record(&stream).unwrap();
                start.elapsed_ms(&end).unwrap() as f64
            };
            time_ms(3);
            let mut runs: Vec<f64> = (0..10).map(|_| time_ms(1)).collect();
            runs.sort_by(f64::total_cmp);
            let ms = runs[5];
            let tflops = useful_flops(d) / (ms * 1e-3) / 1e12;
            println!(
                "gpu pause_attention fwd+bwd {name} bf16: {ms:.3} ms, {tflops:.1} useful TFLOP/s, \
                 {:.2}x {peer} ({peer_ms} ms), {:.1}% of {CEILING_TFLOPS} TFLOP/s",
                peer_ms / ms,
                100.0 * tflops / CEILING_TFLOPS
            );
            group.bench_function(&name, |b| {
                b.iter_custom(|iters| Duration::from_secs_f64(time_ms(iters) * 1e-3))
            });
            // The forward alone, tensor cores against CUDA cores (median of 10).
            let mut fwd_ms = |a: &PauseAttention| -> f64 {
                let mut runs: Vec<f64> = (0..13)
                    .map(|_| {
                        let start = ctx
                            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                            .unwrap();
                        let end = ctx
                            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                            .unwrap();
                        start.record(&stream).unwrap();
                        a.forward(&qkv, &mut out, &mut lse, d).expect("forward");
                        end.record(&stream).unwrap();
                        start.elapsed_ms(&end).unwrap() as f64
                    })
                    .skip(3)
                    .collect();
                runs.sort_by(f64::total_cmp);
                runs[5]
            };
            let tc = fwd_ms(&attn);
            let cores = fwd_ms(&cores_attn);
            let fwd_flops = useful_flops(d) / 3.5;
            println!(
                "gpu pause_attention fwd {name} bf16: tensor cores {tc:.3} ms ({:.1} TFLOP/s), \
                 CUDA cores {cores:.3} ms ({:.1} TFLOP/s)",
                fwd_flops / (tc * 1e-3) / 1e12,
                fwd_flops / (cores * 1e-3) / 1e12
            );
        }
        group.finish();
    }
}

#[cfg(feature = "cuda")]
fn gpu_kernels(c: &mut Criterion) {
    gpu::bench(c);
}

#[cfg(not(feature = "cuda"))]
fn gpu_kernels(_c: &mut Criterion) {
    eprintln!("GPU attention bench skipped: built without feature `cuda`");
}

criterion_group!(benches, cpu_reference, gpu_kernels);
criterion_main!(benches);

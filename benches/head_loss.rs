//! The tied LM head with the CYB loss, forward + backward: fused (chunks of whole
//! positions, no logits tensor) against unfused (the whole logits GEMM, the loss, the
//! two backward GEMMs) and against the GEMM-only floor (the same three GEMMs alone,
//! which both paths must do).
//!
//! - Always: the CPU reference (`cpu::head_loss::head_loss`) at a small shape, fused
//!   in chunks of 16 positions against one chunk for everything (the unfused memory
//!   layout), so `cargo bench` works on any machine.
//! - With feature `cuda` and a GPU (skipped on the CPU emulator): `GpuHead` against
//!   the unfused head, objective `ap` with the DK bias of psi = 0.9, at
//!   * GPT-2 small's shape: B 8, T 1024, K 3 (32,768 rows), d 768, V+1 = 50258 padded
//!     to 50304 (3.3 GB of bf16 logits), bf16 and f32;
//!   * a 256k vocabulary (V = 256,000, V+1 padded to 256,064), d 768: bf16 at B 8
//!     (16.8 GB of logits, which fit the 139 GB of an H200), f32 at B 2 (8,192 rows:
//!     the f32 SGEMMs at B 8 take about a second per call, too long for the device
//!     bundle's time; memory would fit).
//!
//!   Each line gives ms (median of 5 single calls timed with CUDA events, after a
//!   warm-up; buffers allocated beforehand), the peak device memory one call needs
//!   beyond its inputs and outputs (the memory pool's high watermark,
//!   `cyb::gpu::memory::PeakMemory`, over a call that allocates its own logits or chunk
//!   buffers), and the ratios fused/unfused and to the GEMM floor. The goal:
//!   fused within 1.05x of unfused, its memory at most the chunk budget (256 MiB, the
//!   CLI default). Criterion then times the three at GPT-2 small in bf16. No cache
//!   flush is needed: every call streams gigabytes (or hundreds of MB for the fused
//!   head's chunks) through a 50 MB L2. `CYB_HEAD_BENCH_TINY=1` runs every path once at
//!   a tiny shape, also on the CPU emulator, without criterion: a check that the bench
//!   runs through (its times mean nothing there).

use criterion::{criterion_group, criterion_main, Criterion};
use cyb::cpu::head_loss::{head_loss, HeadGrads, HeadShape};
use cyb::cpu::loss::LossShape;
use cyb::objective::dk_bias_from_prior;
use cyb::rng::seeded;
use cyb::{Objective, Reduction, ResolvedObjective};
use rand::RngExt;
use rand_distr::StandardNormal;
use std::time::Duration;

/// `ap` with its defaults and the DK bias of psi = 0.9 for `shape`'s vocabulary.
fn objective(shape: LossShape) -> ResolvedObjective {
    let bias = dk_bias_from_prior(0.9, shape.vocab).expect("psi");
    Objective::ap_default()
        .resolve(shape.pauses)
        .and_then(|o| o.with_dk_bias(bias))
        .expect("objective")
}

fn cpu_reference(c: &mut Criterion) {
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 64,
        vocab: 1000,
    };
    let d = 64;
    let mut rng = seeded(5);
    let mut normal = |n: usize, scale: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (scale * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    };
    let hidden = normal(shape.rows() * d, 1.0);
    let emb = normal((shape.vocab + 1) * d, 2.0 / (d as f64).sqrt());
    let targets: Vec<i32> = (0..shape.positions())
        .map(|_| rng.random_range(0..shape.vocab) as i32)
        .collect();
    let obj = objective(shape);
    let mut d_hidden = vec![0.0f32; hidden.len()];
    let mut d_emb = vec![0.0f32; emb.len()];
    let mut group = c.benchmark_group("cpu_head_loss_2x4x64_d64_v1001_f32");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for (name, chunk) in [("fused_chunk16", 16), ("one_chunk", shape.positions())] {
        let hs = HeadShape {
            loss: shape,
            d,
            chunk_positions: chunk,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let grads = HeadGrads {
                    d_hidden: &mut d_hidden,
                    d_embedding: &mut d_emb,
                };
                head_loss(
                    &hidden,
                    &emb,
                    &targets,
                    hs,
                    &obj,
                    Reduction::Mean,
                    None,
                    Some(grads),
                )
                .expect("cpu head loss")
            })
        });
    }
    group.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use cyb::cpu::head_loss::DEFAULT_HEAD_CHUNK_BYTES;
    use cyb::gpu::cudarc::cublas::{CudaBlas, Gemm};
    use cyb::gpu::cudarc::driver::sys::CUevent_flags;
    use cyb::gpu::cudarc::driver::CudaSlice;
    use cyb::gpu::linear::GemmElem;
    use cyb::gpu::memory::PeakMemory;
    use cyb::gpu::{
        padded_row_stride, CybLoss, GpuContext, GpuHead, GpuHeadGrads, Linear, Upstream,
    };
    use half::bf16;
    use rayon::prelude::*;
    use std::sync::Arc;

    /// An element type the head runs in, with its name and a conversion from f32.
    trait Elem: GemmElem + Send {
        const NAME: &'static str;
        fn of(x: f32) -> Self;
    }
    impl Elem for f32 {
        const NAME: &'static str = "f32";
        fn of(x: f32) -> Self {
            x
        }
    }
    impl Elem for bf16 {
        const NAME: &'static str = "bf16";
        fn of(x: f32) -> Self {
            bf16::from_f32(x)
        }
    }

    /// `n` draws of `scale * N(0, 1)`, generated in parallel (chunk `c` of 64 Ki values
    /// from `seeded(salt << 32 | c)`: reproducible whatever the number of threads).
    fn random<T: Elem>(n: usize, scale: f32, salt: u64) -> Vec<T> {
        let mut host = vec![T::of(0.0); n];
        host.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = seeded(salt << 32 | c as u64);
                for x in chunk {
                    *x = T::of(scale * rng.sample::<f32, _>(StandardNormal));
                }
            });
        host
    }

    /// One shape's inputs and outputs on the device.
    struct Case<T> {
        label: String,
        shape: LossShape,
        d: usize,
        hidden: CudaSlice<T>,
        emb: CudaSlice<T>,
        targets: CudaSlice<i32>,
        d_hidden: CudaSlice<T>,
        d_emb: CudaSlice<f32>,
    }

    fn case<T: Elem>(gpu: &GpuContext, label: &str, shape: LossShape, d: usize) -> Case<T> {
        let mut rng = seeded(17);
        let targets: Vec<i32> = (0..shape.positions())
            .map(|_| rng.random_range(0..shape.vocab) as i32)
            .collect();
        let v1 = shape.vocab + 1;
        // Logits of standard deviation ~2, as the tests draw them.
        let hidden = random::<T>(shape.rows() * d, 1.0, 1);
        let emb = random::<T>(v1 * d, 2.0 / (d as f32).sqrt(), 2);
        Case {
            label: format!("{label} {}", T::NAME),
            shape,
            d,
            hidden: gpu.htod(&hidden).expect("upload hidden"),
            emb: gpu.htod(&emb).expect("upload embedding"),
            targets: gpu.htod(&targets).expect("upload targets"),
            d_hidden: gpu.zeros::<T>(shape.rows() * d).expect("d_hidden"),
            d_emb: gpu.zeros::<f32>(v1 * d).expect("d_embedding"),
        }
    }

    /// The kernels and cuBLAS handle every path shares.
    struct Kit {
        gpu: Arc<GpuContext>,
        linear: Linear,
        loss: CybLoss,
        /// The fused head's chunk budget in bytes.
        budget: usize,
    }

    /// The unfused head: logits into the whole padded buffer, the loss forward and its
    /// backward in place, then `d_hidden = dlogits · E`, `dE += dlogits^T · hidden`.
    fn unfused<T: Elem>(kit: &Kit, c: &mut Case<T>, logits: &mut CudaSlice<T>)
    where
        CudaBlas: Gemm<T>,
    {
        let (s, d) = (c.shape, c.d);
        let (rows, v1) = (s.rows(), s.vocab + 1);
        let stride = padded_row_stride(v1);
        let lin = &kit.linear;
        lin.forward_ld(logits, &c.hidden, &c.emb, rows, d, v1, stride)
            .expect("logits GEMM");
        let fwd = kit
            .loss
            .forward_strided(logits, stride, &c.targets, s, Reduction::Mean, None)
            .expect("loss forward");
        kit.loss
            .backward_in_place(&fwd, Upstream::Scalar(1.0), logits)
            .expect("loss backward");
        lin.backward_input_ld(&mut c.d_hidden, logits, &c.emb, rows, d, v1, stride)
            .expect("d_hidden GEMM");
        lin.backward_weight_f32(&mut c.d_emb, logits, &c.hidden, rows, d, v1, stride)
            .expect("dE GEMM");
    }

    /// The fused head (`GpuHead`, chunks from its budget).
    fn fused<T: Elem>(kit: &Kit, c: &mut Case<T>, head: &mut GpuHead<T>)
    where
        CudaBlas: Gemm<T>,
    {
        let shape = HeadShape {
            loss: c.shape,
            d: c.d,
            chunk_positions: head.chunk_positions(c.shape.pauses, c.shape.vocab),
        };
        let grads = GpuHeadGrads {
            d_hidden: c.d_hidden.as_view_mut(),
            d_embedding: c.d_emb.as_view_mut(),
        };
        head.forward_backward(
            &kit.linear,
            &kit.loss,
            &c.hidden.as_view(),
            &c.emb.as_view(),
            &c.targets.as_view(),
            None,
            shape,
            Reduction::Mean,
            Some(grads),
        )
        .expect("fused head");
    }

    /// The three GEMMs alone, on the whole buffer: the floor both paths share.
    fn gemms<T: Elem>(kit: &Kit, c: &mut Case<T>, logits: &mut CudaSlice<T>)
    where
        CudaBlas: Gemm<T>,
    {
        let (s, d) = (c.shape, c.d);
        let (rows, v1) = (s.rows(), s.vocab + 1);
        let stride = padded_row_stride(v1);
        let lin = &kit.linear;
        lin.forward_ld(logits, &c.hidden, &c.emb, rows, d, v1, stride)
            .expect("logits GEMM");
        lin.backward_input_ld(&mut c.d_hidden, logits, &c.emb, rows, d, v1, stride)
            .expect("d_hidden GEMM");
        lin.backward_weight_f32(&mut c.d_emb, logits, &c.hidden, rows, d, v1, stride)
            .expect("dE GEMM");
    }

    /// Milliseconds of `iters` calls of `f`, by CUDA events on the stream.
    fn time_ms(gpu: &GpuContext, iters: u64, f: &mut dyn FnMut()) -> f64 {
        let ctx = gpu.context();
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event");
        let end = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event");
        start.record(gpu.stream()).expect("record");
        for _ in 0..iters {
            f();
        }
        end.record(gpu.stream()).expect("record");
        start.elapsed_ms(&end).expect("elapsed") as f64
    }

    /// One warm-up call, then the median of 5 single calls.
    fn median_ms(gpu: &GpuContext, f: &mut dyn FnMut()) -> f64 {
        time_ms(gpu, 1, f);
        let mut runs: Vec<f64> = (0..5).map(|_| time_ms(gpu, 1, f)).collect();
        runs.sort_by(f64::total_cmp);
        runs[2]
    }

    /// Peak device bytes of one call of `f` beyond what was allocated before it.
    fn peak_bytes(gpu: &Arc<GpuContext>, f: &mut dyn FnMut()) -> Option<usize> {
        gpu.synchronize().expect("sync");
        let meter = PeakMemory::new(gpu).expect("memory pool")?;
        f();
        gpu.synchronize().expect("sync");
        Some(meter.peak_bytes().expect("peak") - meter.start_bytes())
    }

    fn mib(bytes: Option<usize>) -> String {
        bytes.map_or("n/a (no memory pool)".into(), |b| {
            format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
        })
    }

    /// Times and measures the three paths on one case; prints one line.
    fn compare<T: Elem>(kit: &Kit, c: &mut Case<T>) -> Option<(f64, f64, f64)>
    where
        CudaBlas: Gemm<T>,
    {
        let gpu = &kit.gpu;
        let (s, d) = (c.shape, c.d);
        let stride = padded_row_stride(s.vocab + 1);
        let logits_bytes = s.rows() * stride * std::mem::size_of::<T>();
        // Memory first, each call allocating what it needs (logits or chunk buffers).
        let unfused_peak = peak_bytes(gpu, &mut || {
            let mut logits = gpu.zeros::<T>(s.rows() * stride).expect("logits");
            unfused(kit, c, &mut logits);
        });
        let fused_peak = peak_bytes(gpu, &mut || {
            let mut head = GpuHead::<T>::new(gpu, kit.budget).expect("head");
            fused(kit, c, &mut head);
        });
        // Then time, with the buffers allocated once.
        let mut logits = match gpu.zeros::<T>(s.rows() * stride) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("GPU head bench {}: skipped: {e}", c.label);
                return None;
            }
        };
        let mut head = GpuHead::<T>::new(gpu, kit.budget).expect("head");
        let unfused_ms = median_ms(gpu, &mut || unfused(kit, c, &mut logits));
        let floor_ms = median_ms(gpu, &mut || gemms(kit, c, &mut logits));
        drop(logits);
        let fused_ms = median_ms(gpu, &mut || fused(kit, c, &mut head));
        let chunks = s
            .positions()
            .div_ceil(head.chunk_positions(s.pauses, s.vocab));
        let tflops = 6.0 * (s.rows() * d * (s.vocab + 1)) as f64 / (floor_ms * 1e-3) / 1e12;
        println!(
            "gpu head_loss {} [{} rows, d {d}, V+1 {} stride {stride}]: fused {fused_ms:.2} ms \
             ({chunks} chunks of <= {}, peak {}), unfused {unfused_ms:.2} ms (peak {}, \
             logits {}), GEMM floor {floor_ms:.2} ms ({tflops:.0} TFLOP/s); fused/unfused \
             {:.3}x time, fused/floor {:.3}x, unfused/floor {:.3}x",
            c.label,
            s.rows(),
            s.vocab + 1,
            mib(Some(kit.budget)),
            mib(fused_peak),
            mib(unfused_peak),
            mib(Some(logits_bytes)),
            fused_ms / unfused_ms,
            fused_ms / floor_ms,
            unfused_ms / floor_ms,
        );
        Some((fused_ms, unfused_ms, floor_ms))
    }

    fn kit(gpu: &Arc<GpuContext>, shape: LossShape, budget: usize) -> Kit {
        Kit {
            gpu: gpu.clone(),
            linear: Linear::new(gpu).expect("cuBLAS"),
            loss: CybLoss::new(gpu, &objective(shape)).expect("loss"),
            budget,
        }
    }

    fn run_case<T: Elem>(
        gpu: &Arc<GpuContext>,
        label: &str,
        shape: LossShape,
        d: usize,
        budget: usize,
    ) where
        CudaBlas: Gemm<T>,
    {
        let kit = kit(gpu, shape, budget);
        let mut c = case::<T>(gpu, label, shape, d);
        compare(&kit, &mut c);
    }

    pub fn bench(c: &mut Criterion) {
        if cyb::gpu::device_count() == 0 {
            eprintln!("GPU head bench skipped: no CUDA device");
            return;
        }
        // A device that is there but unusable is an error, not a skip.
        let gpu = GpuContext::new(0).expect("open CUDA device 0");
        // CYB_HEAD_BENCH_TINY=1: every path at a tiny shape, also on the emulator (a
        // check that the bench runs through, before a GPU run depends on it; no timing).
        let tiny = std::env::var_os("CYB_HEAD_BENCH_TINY").is_some();
        if gpu.is_emulator() && !tiny {
            eprintln!("GPU head bench skipped: the device is the CPU emulator, not a GPU");
            return;
        }
        let shape = |batch: usize, vocab: usize| match tiny {
            false => LossShape {
                batch,
                pauses: 3,
                seq: 1024,
                vocab,
            },
            true => LossShape {
                batch: batch.div_ceil(4),
                pauses: 3,
                seq: 8,
                vocab: vocab / 256,
            },
        };
        // The CLI's default budget; 16 KiB (several chunks) at the tiny shape.
        let (d, budget) = if tiny {
            (32, 16 << 10)
        } else {
            (768, DEFAULT_HEAD_CHUNK_BYTES)
        };
        run_case::<f32>(&gpu, "GPT-2 small", shape(8, 50257), d, budget);
        run_case::<f32>(&gpu, "V=256k (B 2)", shape(2, 256_000), d, budget);
        run_case::<bf16>(&gpu, "V=256k", shape(8, 256_000), d, budget);

        // GPT-2 small in bf16 last, also through criterion.
        let s = shape(8, 50257);
        let kit = kit(&gpu, s, budget);
        let mut case = case::<bf16>(&gpu, "GPT-2 small", s, d);
        if compare(&kit, &mut case).is_none() || tiny {
            return;
        }
        let stride = padded_row_stride(s.vocab + 1);
        let mut logits = gpu.zeros::<bf16>(s.rows() * stride).expect("logits");
        let mut head = GpuHead::<bf16>::new(&gpu, kit.budget).expect("head");
        let mut group = c.benchmark_group("gpu_head_loss_gpt2_small_bf16");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("fused", |b| {
            b.iter_custom(|iters| {
                let ms = time_ms(&gpu, iters, &mut || fused(&kit, &mut case, &mut head));
                Duration::from_secs_f64(ms * 1e-3)
            })
        });
        group.bench_function("unfused", |b| {
            b.iter_custom(|iters| {
                let ms = time_ms(&gpu, iters, &mut || unfused(&kit, &mut case, &mut logits));
                Duration::from_secs_f64(ms * 1e-3)
            })
        });
        group.bench_function("gemm_floor", |b| {
            b.iter_custom(|iters| {
                let ms = time_ms(&gpu, iters, &mut || gemms(&kit, &mut case, &mut logits));
                Duration::from_secs_f64(ms * 1e-3)
            })
        });
        group.finish();
    }
}

#[cfg(feature = "cuda")]
fn gpu_head(c: &mut Criterion) {
    gpu::bench(c);
}

#[cfg(not(feature = "cuda"))]
fn gpu_head(_c: &mut Criterion) {
    eprintln!("GPU head bench skipped: built without feature `cuda`");
}

criterion_group!(benches, cpu_reference, gpu_head);
criterion_main!(benches);

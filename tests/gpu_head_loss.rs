//! The fused GPU head (`src/gpu/head_loss.rs`) against the unfused GPU head it
//! replaces (logits GEMM into a padded buffer, `CybLoss`, the two head GEMMs) and, in
//! f32, against the f64 CPU reference `cpu::head_loss`: every objective, every
//! reduction with and without weights, K = 0/1/3/7, odd V+1, a single position,
//! ignored targets, chunks of one position, uneven splits that cross sequences and one
//! chunk for everything, f32 and bf16. `d_hidden` is poisoned with NaN before each call
//! and `dE` starts from nonzero values (it is accumulated); the chunk buffers are
//! poisoned with NaN when allocated and reused across cases (stale or padding reads
//! would show). Determinism: two runs give the same bits. Memory: a training step's
//! peak device memory (the memory pool's high watermark) falls with the fused head by
//! at least the logits' bytes minus one chunk buffer, f32 and bf16, at a
//! GPT-2-small-shaped config.
//!
//! `harness = false` (libtest-mimic): without a CUDA device, or without feature
//! `cuda`, every test is reported as *ignored*. `CYB_TEST_SEED` fixes the inputs.

mod common;

use libtest_mimic::{Arguments, Trial};

fn names() -> Vec<String> {
    let mut v = Vec::new();
    for dtype in ["f32", "bf16"] {
        for obj in common::all_objectives() {
            v.push(format!(
                "fused_head_matches_unfused::{dtype}_{}",
                obj.name()
            ));
        }
    }
    v.push("fused_head_matches_cpu_f32".into());
    v.push("fused_head_is_deterministic".into());
    v.push("fused_head_bad_inputs_are_errors".into());
    v.push("fused_step_peak_memory_falls::f32".into());
    v.push("fused_step_peak_memory_falls::bf16".into());
    v
}

fn main() {
    let mut args = Arguments::from_args();
    // One test at a time: `fused_step_peak_memory_falls` reads the peak of the device's
    // memory pool, which tests running beside it in this process would raise (CI's
    // clean-clone run failed an earlier memory test that way; it passed alone).
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    names()
        .into_iter()
        .map(|name| Trial::test(name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    gpu_tests::trials()
}

#[cfg(feature = "cuda")]
mod gpu_tests {
    use super::common::{err, rel};
    use super::*;
    use cyb::cpu::head_loss::{head_loss, HeadGrads, HeadShape};
    use cyb::cpu::loss::LossShape;
    use cyb::gpu::cudarc::cublas::{CudaBlas, Gemm};
    use cyb::gpu::cudarc::driver::CudaSlice;
    use cyb::gpu::linear::GemmElem;
    use cyb::gpu::{
        padded_row_stride, CybLoss, GpuContext, GpuHead, GpuHeadGrads, Linear, Upstream,
    };
    use cyb::rng::{seeded, CybRng};
    use cyb::{CybError, Objective, Reduction, ResolvedObjective};
    use half::bf16;
    use libtest_mimic::Failed;
    use rand::RngExt;
    use rand_distr::StandardNormal;
    use std::sync::Arc;

    type R = Result<(), Failed>;

    const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

    /// (B, K, T, V, d): K 0/1/3/7, odd and even V+1, a single position.
    const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
        (1, 0, 1, 6, 8),
        (2, 1, 5, 40, 12),
        (3, 3, 7, 96, 16),
        (2, 7, 3, 20, 8),
        (1, 3, 1, 8, 4),
    ];

    pub fn trials() -> Vec<Trial> {
        let gpu = common::test_gpu("gpu_head_loss");
        let base = common::base_seed();
        let ignored = gpu.is_none();
        names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let gpu = gpu.clone();
                let seed = common::test_seed(base, i as u64);
                let n = name.clone();
                Trial::test(name, move || {
                    let gpu = gpu.expect("ignored without a device")?;
                    common::with_seed(base, seed, || run(&gpu, &n, seed))
                })
                .with_ignored_flag(ignored)
            })
            .collect()
    }

    fn run(gpu: &Arc<GpuContext>, name: &str, seed: u64) -> R {
        let mut rng = seeded(seed);
        if let Some(rest) = name.strip_prefix("fused_head_matches_unfused::") {
            let (dtype, obj) = rest.split_once('_').expect("case name");
            let obj = common::all_objectives()
                .into_iter()
                .find(|o| o.name() == obj)
                .expect("objective");
            return match dtype {
                "f32" => matches_unfused::<f32>(gpu, &mut rng, &obj),
                _ => matches_unfused::<bf16>(gpu, &mut rng, &obj),
            };
        }
        match name {
            "fused_head_matches_cpu_f32" => matches_cpu(gpu, &mut rng),
            "fused_head_is_deterministic" => deterministic(gpu, &mut rng),
            "fused_head_bad_inputs_are_errors" => bad_inputs(gpu, &mut rng),
            "fused_step_peak_memory_falls::f32" => step_peak_falls(gpu, &mut rng, "f32"),
            "fused_step_peak_memory_falls::bf16" => step_peak_falls(gpu, &mut rng, "bf16"),
            other => Err(format!("unknown test {other}").into()),
        }
    }

    /// f32 and bf16 with exact conversions to f64 for the comparisons.
    trait Elem: GemmElem {
        fn of(x: f64) -> Self;
        fn f64(self) -> f64;
    }
    impl Elem for f32 {
        fn of(x: f64) -> Self {
            x as f32
        }
        fn f64(self) -> f64 {
            self as f64
        }
    }
    impl Elem for bf16 {
        fn of(x: f64) -> Self {
            bf16::from_f64(x)
        }
        fn f64(self) -> f64 {
            self.to_f64()
        }
    }

    /// One random case on the host, rounded to `T` where the device sees `T`.
    struct Case {
        shape: LossShape,
        d: usize,
        hidden: Vec<f64>,
        emb: Vec<f64>,
        targets: Vec<i32>,
        weights: Vec<f32>,
        d_emb0: Vec<f32>,
    }

    fn case<T: Elem>(
        rng: &mut CybRng,
        (b, k, t, v, d): (usize, usize, usize, usize, usize),
    ) -> Case {
        let shape = LossShape {
            batch: b,
            pauses: k,
            seq: t,
            vocab: v,
        };
        let mut normal = |n: usize, scale: f64| -> Vec<f64> {
            (0..n)
                .map(|_| T::of(scale * rng.sample::<f64, _>(StandardNormal)).f64())
                .collect()
        };
        let hidden = normal(shape.rows() * d, 1.0);
        // Logits of std ~2: peaked rows, as a trained head gives.
        let emb = normal((v + 1) * d, 2.0 / (d as f64).sqrt());
        let targets = (0..shape.positions())
            .map(|i| {
                if i % 4 == 1 {
                    -1
                } else {
                    rng.random_range(0..v) as i32
                }
            })
            .collect();
        let weights = (0..shape.positions())
            .map(|_| rng.random_range(0.0..2.0f32))
            .collect();
        let d_emb0 = (0..(v + 1) * d).map(|i| (i as f32 * 0.1).sin()).collect();
        Case {
            shape,
            d,
            hidden,
            emb,
            targets,
            weights,
            d_emb0,
        }
    }

    /// What a head evaluation gives, on the host.
    #[derive(Debug, PartialEq)]
    struct Out {
        loss: f64,
        stats: [f64; 3],
        per_position: Vec<f64>,
        pauses: Vec<f64>,
        d_hidden: Vec<f64>,
        d_emb: Vec<f64>,
    }

    struct Dev<T> {
        hidden: CudaSlice<T>,
        emb: CudaSlice<T>,
        targets: CudaSlice<i32>,
        weights: CudaSlice<f32>,
    }

    fn upload<T: Elem>(gpu: &GpuContext, c: &Case) -> Result<Dev<T>, Failed> {
        let conv = |x: &[f64]| x.iter().map(|&v| T::of(v)).collect::<Vec<T>>();
        Ok(Dev {
            hidden: gpu.htod(&conv(&c.hidden)).map_err(err)?,
            emb: gpu.htod(&conv(&c.emb)).map_err(err)?,
            targets: gpu.htod(&c.targets).map_err(err)?,
            weights: gpu.htod(&c.weights).map_err(err)?,
        })
    }

    fn to_f64<T: Elem>(gpu: &GpuContext, x: &CudaSlice<T>) -> Result<Vec<f64>, Failed> {
        Ok(gpu.dtoh(x).map_err(err)?.into_iter().map(T::f64).collect())
    }

    fn f32s(x: Vec<f32>) -> Vec<f64> {
        x.into_iter().map(|v| v as f64).collect()
    }

    /// The unfused head on the device: the whole padded logits tensor.
    #[allow(clippy::too_many_arguments)]
    fn unfused<T: Elem>(
        gpu: &Arc<GpuContext>,
        linear: &Linear,
        loss: &CybLoss,
        c: &Case,
        dev: &Dev<T>,
        reduction: Reduction,
        weights: bool,
    ) -> Result<Out, Failed>
    where
        CudaBlas: Gemm<T>,
    {
        let (s, d) = (c.shape, c.d);
        let (rows, v1) = (s.rows(), s.vocab + 1);
        let stride = padded_row_stride(v1);
        let mut logits = gpu.zeros::<T>(rows * stride).map_err(err)?;
        linear
            .forward_ld(&mut logits, &dev.hidden, &dev.emb, rows, d, v1, stride)
            .map_err(err)?;
        let w = weights.then_some(&dev.weights);
        let fwd = loss
            .forward_strided(&logits, stride, &dev.targets, s, reduction, w)
            .map_err(err)?;
        loss.backward_in_place(&fwd, Upstream::Scalar(1.0), &mut logits)
            .map_err(err)?;
        let mut dh = gpu.zeros::<T>(rows * d).map_err(err)?;
        linear
            .backward_input_ld(&mut dh, &logits, &dev.emb, rows, d, v1, stride)
            .map_err(err)?;
        let mut de = gpu.htod(&c.d_emb0).map_err(err)?;
        linear
            .backward_weight_f32(&mut de, &logits, &dev.hidden, rows, d, v1, stride)
            .map_err(err)?;
        let st = fwd.stats().map_err(err)?;
        Ok(Out {
            loss: fwd.loss().map_err(err)?,
            stats: [st.valid_positions as f64, st.weight_sum, st.mean_pauses],
            per_position: f32s(fwd.per_position_to_host().map_err(err)?),
            pauses: f32s(fwd.pauses_to_host().map_err(err)?),
            d_hidden: to_f64(gpu, &dh)?,
            d_emb: f32s(gpu.dtoh(&de).map_err(err)?),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fused<T: Elem>(
        gpu: &Arc<GpuContext>,
        head: &mut GpuHead<T>,
        linear: &Linear,
        loss: &CybLoss,
        c: &Case,
        dev: &Dev<T>,
        reduction: Reduction,
        weights: bool,
        chunk: usize,
    ) -> Result<(Out, usize), Failed>
    where
        CudaBlas: Gemm<T>,
    {
        let (s, d) = (c.shape, c.d);
        let mut dh = gpu
            .htod(&vec![T::of(f64::NAN); s.rows() * d])
            .map_err(err)?;
        let mut de = gpu.htod(&c.d_emb0).map_err(err)?;
        let shape = HeadShape {
            loss: s,
            d,
            chunk_positions: chunk,
        };
        let w = weights.then(|| dev.weights.as_view());
        let grads = GpuHeadGrads {
            d_hidden: dh.as_view_mut(),
            d_embedding: de.as_view_mut(),
        };
        let fwd = head
            .forward_backward(
                linear,
                loss,
                &dev.hidden.as_view(),
                &dev.emb.as_view(),
                &dev.targets.as_view(),
                w.as_ref(),
                shape,
                reduction,
                Some(grads),
            )
            .map_err(err)?;
        let st = fwd.stats().map_err(err)?;
        let out = Out {
            loss: fwd.loss().map_err(err)?,
            stats: [st.valid_positions as f64, st.weight_sum, st.mean_pauses],
            per_position: f32s(fwd.per_position_to_host().map_err(err)?),
            pauses: f32s(fwd.pauses_to_host().map_err(err)?),
            d_hidden: to_f64(gpu, &dh)?,
            d_emb: f32s(gpu.dtoh(&de).map_err(err)?),
        };
        Ok((out, fwd.chunks()))
    }

    fn compare(what: &str, got: &Out, want: &Out, bound: f64) -> R {
        rel(&format!("{what} loss"), &[got.loss], &[want.loss], bound)?;
        rel(&format!("{what} stats"), &got.stats, &want.stats, bound)?;
        rel(
            &format!("{what} per_position"),
            &got.per_position,
            &want.per_position,
            bound,
        )?;
        rel(&format!("{what} pauses"), &got.pauses, &want.pauses, bound)?;
        rel(
            &format!("{what} d_hidden"),
            &got.d_hidden,
            &want.d_hidden,
            bound,
        )?;
        rel(&format!("{what} d_emb"), &got.d_emb, &want.d_emb, bound)
    }

    fn resolve(obj: &Objective, k: usize) -> Result<ResolvedObjective, Failed> {
        common::resolved(obj, k, 0.7)
    }

    /// Fused against unfused on the device, same precision: the same kernels and GEMMs
    /// on a chunk's rows instead of all rows. In f32 the only difference is the order of
    /// GEMM sums (cuBLAS may block differently for fewer rows) and dE summed chunk by
    /// chunk: 1e-5 norm-wise is ~100 ulps. In bf16 a differently blocked GEMM can round
    /// a logit or a gradient to the neighbouring bf16 value (2^-8 relative), and the
    /// loss reads the rounded logits: 2e-2 norm-wise.
    fn matches_unfused<T: Elem>(gpu: &Arc<GpuContext>, rng: &mut CybRng, obj: &Objective) -> R
    where
        CudaBlas: Gemm<T>,
    {
        let bound = if std::mem::size_of::<T>() == 4 {
            1e-5
        } else {
            2e-2
        };
        let linear = Linear::new(gpu).map_err(err)?;
        // One head for every case: buffers reused and reallocated as shapes change.
        let mut head = GpuHead::<T>::new(gpu, 1 << 20).map_err(err)?;
        for dims in SHAPES {
            let c = case::<T>(rng, dims);
            let dev = upload::<T>(gpu, &c)?;
            let loss = CybLoss::new(gpu, &resolve(obj, c.shape.pauses)?).map_err(err)?;
            let n = c.shape.positions();
            for reduction in REDUCTIONS {
                for weights in [false, true] {
                    let want = unfused(gpu, &linear, &loss, &c, &dev, reduction, weights)?;
                    for chunk in [1, 2, n.div_ceil(2).max(1), n + 3] {
                        let (got, chunks) = fused(
                            gpu, &mut head, &linear, &loss, &c, &dev, reduction, weights, chunk,
                        )?;
                        if chunks != n.div_ceil(chunk) {
                            return Err(
                                format!("{chunks} chunks for {n} positions by {chunk}").into()
                            );
                        }
                        let what =
                            format!("{dims:?} {reduction:?} weights {weights} chunk {chunk}");
                        compare(&what, &got, &want, bound)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// f32 fused head against the f64 CPU reference on the same (f32) inputs: f32 GEMMs
    /// and row sums over at most ~100 terms and an f32 exp: 1e-5 norm-wise.
    fn matches_cpu(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let linear = Linear::new(gpu).map_err(err)?;
        let mut head = GpuHead::<f32>::new(gpu, 1 << 20).map_err(err)?;
        for obj in common::all_objectives() {
            for dims in SHAPES {
                let c = case::<f32>(rng, dims);
                let dev = upload::<f32>(gpu, &c)?;
                let o = resolve(&obj, c.shape.pauses)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                for reduction in REDUCTIONS {
                    let (got, _) =
                        fused(gpu, &mut head, &linear, &loss, &c, &dev, reduction, true, 2)?;
                    let mut d_hidden = vec![0.0; c.hidden.len()];
                    let mut d_emb: Vec<f64> = c.d_emb0.iter().map(|&x| x as f64).collect();
                    let shape = HeadShape {
                        loss: c.shape,
                        d: c.d,
                        chunk_positions: 3,
                    };
                    let grads = HeadGrads {
                        d_hidden: &mut d_hidden,
                        d_embedding: &mut d_emb,
                    };
                    let w = Some(c.weights.as_slice());
                    let cpu = head_loss(
                        &c.hidden,
                        &c.emb,
                        &c.targets,
                        shape,
                        &o,
                        reduction,
                        w,
                        Some(grads),
                    )
                    .map_err(err)?;
                    let want = Out {
                        loss: cpu.loss,
                        stats: [
                            cpu.stats.valid_positions as f64,
                            cpu.stats.weight_sum,
                            cpu.stats.mean_pauses,
                        ],
                        per_position: cpu.per_position,
                        pauses: cpu.pauses,
                        d_hidden,
                        d_emb,
                    };
                    compare(
                        &format!("{} {dims:?} {reduction:?}", obj.name()),
                        &got,
                        &want,
                        1e-5,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn deterministic(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let linear = Linear::new(gpu).map_err(err)?;
        let mut head = GpuHead::<bf16>::new(gpu, 1 << 20).map_err(err)?;
        let c = case::<bf16>(rng, (3, 3, 7, 96, 16));
        let dev = upload::<bf16>(gpu, &c)?;
        let loss = CybLoss::new(gpu, &resolve(&Objective::ap_default(), 3)?).map_err(err)?;
        let run = |head: &mut GpuHead<bf16>| {
            fused(
                gpu,
                head,
                &linear,
                &loss,
                &c,
                &dev,
                Reduction::Mean,
                true,
                4,
            )
            .map(|o| o.0)
        };
        let (a, b) = (run(&mut head)?, run(&mut head)?);
        if a != b {
            return Err("two runs of the fused head differ".into());
        }
        Ok(())
    }

    /// GPT-2 small's head in proportion, at the emulator's scale: d 64 with one head of
    /// 64 (GPT-2's head size), V+1 = 4188 = 50258 / 12 (V/d ~ 65 as 50257/768), padded
    /// to 4224 columns as 50258 to 50304, K = 3; one layer, B 2, T 32 (256 rows): 4.3 MB
    /// of f32 logits (2.2 MB bf16) against 512 KiB chunks (7 positions, 10 chunks; 15
    /// in bf16). Sized for CI: under the race checker the two cases take ~30 s of CPU
    /// (two layers and T 64 took 63 s).
    const GPT2_SHAPED: (usize, usize, usize, usize, usize) = (4187, 64, 1, 32, 3);
    const GPT2_SHAPED_BATCH: usize = 2;
    const GPT2_SHAPED_CHUNK_BYTES: usize = 512 << 10;

    /// The peak of device memory (the memory pool's high watermark,
    /// `cyb::gpu::memory::PeakMemory`) over one training step of a fresh model in
    /// `precision` with `head`: upload, forward, head and loss, backward, AdamW. Returns
    /// (peak - bytes in use before, the fused head's chunk buffer bytes).
    fn step_peak(
        gpu: &Arc<GpuContext>,
        cpu: &cyb::cpu::model::Model<f32>,
        precision: cyb::gpu::model::Precision,
        head: cyb::cpu::model::HeadMode,
        tokens: &[i32],
        (b, t, k): (usize, usize, usize),
    ) -> Result<(usize, usize), Failed> {
        use cyb::gpu::memory::PeakMemory;
        use cyb::gpu::model::GpuModel;
        gpu.synchronize().map_err(err)?;
        let mut meter = PeakMemory::new(gpu)
            .map_err(err)?
            .ok_or("the device allocates from no memory pool: no peak to read")?;
        meter.reset().map_err(err)?;
        let mut m = GpuModel::with_precision(gpu, cpu, precision).map_err(err)?;
        m.set_head(head);
        let obj = Objective::ap_default().resolve(k).map_err(err)?;
        let step = m
            .forward_backward(tokens, tokens, b, t, k, &obj)
            .map_err(err)?;
        m.step(1e-3, 1.0).map_err(err)?;
        step.loss().map_err(err)?;
        m.synchronize().map_err(err)?;
        let peak = meter.peak_bytes().map_err(err)? - meter.start_bytes();
        Ok((peak, m.head_buffer_bytes()))
    }

    /// The step's PEAK device memory falls with the fused head by at least the logits'
    /// bytes minus one chunk buffer (and the chunks' small per-row loss state) at a
    /// GPT-2-small-shaped config ([`GPT2_SHAPED`], random weights and tokens).
    fn step_peak_falls(gpu: &Arc<GpuContext>, rng: &mut CybRng, dtype: &str) -> R {
        use cyb::config::{ModelConfig, PauseAttention};
        use cyb::cpu::model::{HeadMode, Model};
        use cyb::gpu::model::Precision;
        let (vocab, d, n_layer, t, k) = GPT2_SHAPED;
        let b = GPT2_SHAPED_BATCH;
        let (precision, elem) = match dtype {
            "f32" => (Precision::F32, 4),
            _ => (Precision::Bf16, 2),
        };
        let config = ModelConfig {
            vocab,
            d_model: d,
            n_layer,
            n_head: 1,
            t_max: t,
            k_max: k,
            pause_attention: PauseAttention::Shared,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        };
        let cpu: Model<f32> = Model::init(config.clone(), rng).map_err(err)?;
        let tokens: Vec<i32> = (0..b * t)
            .map(|_| rng.random_range(0..vocab as i32))
            .collect();
        let shape = (b, t, k);
        let (unfused, _) = step_peak(gpu, &cpu, precision, HeadMode::Unfused, &tokens, shape)?;
        let fused = HeadMode::Fused {
            chunk_bytes: GPT2_SHAPED_CHUNK_BYTES,
        };
        let (fused, chunk_buffers) = step_peak(gpu, &cpu, precision, fused, &tokens, shape)?;
        let rows = b * (k + 1) * t;
        let logits = rows * padded_row_stride(vocab + 1) * elem;
        let emulated = if gpu.is_emulator() { " (EMULATED)" } else { "" };
        eprintln!(
            "step peak {dtype}{emulated}: unfused {unfused} B, fused {fused} B (chunk buffers \
             {chunk_buffers} B), drop {} B, logits {logits} B",
            unfused as i64 - fused as i64
        );
        // Each chunk's loss state lives until the step is dropped (row scalars 12 B and
        // row gradients 24 B per row, per-position values, a summary per chunk), where
        // the unfused step has one: at most 64 B per row.
        let bound = logits - chunk_buffers - 64 * rows;
        if chunk_buffers == 0 || chunk_buffers >= logits / 4 || unfused < fused + bound {
            return Err(format!(
                "peak: unfused {unfused} B - fused {fused} B < logits {logits} B - chunk \
                 buffers {chunk_buffers} B - 64 B x {rows} rows"
            )
            .into());
        }
        Ok(())
    }

    fn bad_inputs(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let linear = Linear::new(gpu).map_err(err)?;
        let mut head = GpuHead::<f32>::new(gpu, 1 << 20).map_err(err)?;
        let c = case::<f32>(rng, (2, 1, 3, 10, 4));
        let dev = upload::<f32>(gpu, &c)?;
        let loss = CybLoss::new(gpu, &resolve(&Objective::CeFinal, 1)?).map_err(err)?;
        let good = HeadShape {
            loss: c.shape,
            d: c.d,
            chunk_positions: 2,
        };
        let wrong_d = HeadShape { d: 5, ..good };
        let chunk0 = HeadShape {
            chunk_positions: 0,
            ..good
        };
        let wrong_k = HeadShape {
            loss: LossShape {
                pauses: 0,
                seq: 6,
                ..c.shape
            },
            ..good
        };
        for (what, shape) in [("d", wrong_d), ("chunk 0", chunk0), ("K", wrong_k)] {
            let r = head.forward_backward(
                &linear,
                &loss,
                &dev.hidden.as_view(),
                &dev.emb.as_view(),
                &dev.targets.as_view(),
                None,
                shape,
                Reduction::Mean,
                None,
            );
            if !matches!(r, Err(CybError::Shape(_) | CybError::Param(_))) {
                return Err(format!("{what}: {r:?}").into());
            }
        }
        // A target out of range on the device: reported with its batch-wide index.
        let mut targets = c.targets.clone();
        targets[5] = 10;
        let t = gpu.htod(&targets).map_err(err)?;
        let fwd = head
            .forward_backward(
                &linear,
                &loss,
                &dev.hidden.as_view(),
                &dev.emb.as_view(),
                &t.as_view(),
                None,
                good,
                Reduction::Mean,
                None,
            )
            .map_err(err)?;
        match fwd.loss() {
            Err(CybError::VocabRange {
                index: 5, id: 10, ..
            }) => Ok(()),
            other => Err(format!("bad target: {other:?}").into()),
        }
    }
}

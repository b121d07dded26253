//! The CUDA loss kernels (`kernels/cyb_loss.cu`) against the CPU reference
//! (`src/cpu/loss.rs`) on fresh random inputs: one position, V+1 that is not a
//! multiple of the block size (47, 1001, 32001) and one that is (128), K = 0, 1, 3, 7
//! and K_MAX, ignored targets, f32 and bf16, every SPEC v2 objective with its defaults
//! and with a grid setting (zeros in omega and rho, both discounts, the DK bias of the
//! prior psi = 0.9), every reduction with and without weights, separate and in-place
//! dlogits (poisoned with NaN first), plus extreme inputs, error cases and determinism.
//! Padded row strides (`CybLoss::forward_strided`) with odd V+1 = 33, 97 and 1001: the
//! padding columns of the logits hold NaN (a kernel that reads one gives a NaN loss)
//! and those of `dlogits` must come back exactly zero, as documented.
//!
//! `harness = false` (libtest-mimic): when no CUDA device can be opened, or without
//! feature `cuda`, every test is reported as *ignored*, never as passed. With a device,
//! `cargo test --features cuda` runs them. `CYB_TEST_SEED` fixes the random inputs
//! (the seed is printed with every failure).

mod common;

use cyb::cpu::loss::LossShape;
use cyb::{Discount, Objective, Reduction, StepWeights};
use libtest_mimic::{Arguments, Trial};

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Dtype {
    F32,
    Bf16,
}

#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // only the names are used then
struct Case {
    name: String,
    shape: LossShape,
    dtype: Dtype,
    objective: Objective,
    /// The DK bias the objective is resolved with.
    dk_bias: f64,
    reduction: Reduction,
    weights: bool,
    in_place: bool,
    /// Position `i` is ignored when `i % ignore_every == 1` (0: none ignored).
    ignore_every: usize,
    /// Elements between rows of the logits; `None`: dense (V+1).
    row_stride: Option<usize>,
}

/// Every objective for `K` pause steps and vocabulary `V`, as (label, objective, DK
/// bias): the SPEC defaults without a DK bias, and grid settings with zeros in omega
/// and rho, both discounts and the DK bias of psi = 0.9.
fn objectives(k: usize, vocab: usize) -> Vec<(String, Objective, f64)> {
    // 4:1:..:1:4 with the second step zeroed (K >= 2), e.g. 4:0:1:4 for K = 3.
    let grid: Vec<f64> = (0..=k)
        .map(|i| match i {
            0 => 4.0,
            _ if i == k => 4.0,
            1 => 0.0,
            _ => 1.0,
        })
        .collect();
    let bias = cyb::objective::dk_bias_from_prior(0.9, vocab).expect("psi");
    let grid_ap = Objective::Ap {
        omega: StepWeights::Explicit(grid.clone()),
        gamma: 0.95, // linear: gamma_K = 1 - 0.05 K > 0 up to K_MAX = 16
        discount: Discount::Linear,
    };
    let grid_va = Objective::Va {
        rho: StepWeights::Explicit((0..=k).map(|i| 1.0 + (i % 3) as f64).collect()),
        beta: 0.5,
        gamma: 0.9,
        discount: Discount::Exp,
    };
    let grid_dp = Objective::Dp {
        rho: StepWeights::Explicit(grid),
        alpha: 0.1,
        gamma: 0.95,
        discount: Discount::Linear,
    };
    let mut out: Vec<(String, Objective, f64)> = [
        Objective::CeFinal,
        Objective::Marginal,
        Objective::ap_default(),
        Objective::va_default(),
        Objective::dp_default(),
    ]
    .into_iter()
    .map(|o| (o.name().to_string(), o, 0.0))
    .collect();
    for o in [grid_ap, grid_va, grid_dp] {
        out.push((format!("{}_grid", o.name()), o, bias));
    }
    out
}

fn shape(batch: usize, pauses: usize, seq: usize, vocab: usize) -> LossShape {
    LossShape {
        batch,
        pauses,
        seq,
        vocab,
    }
}

/// The comparison matrix: shapes × dtypes × objectives × reductions × weights, and an
/// in-place variant per shape × dtype × objective.
fn cases() -> Vec<Case> {
    let shapes = [
        (shape(1, 0, 1, 46), 0), // a single position, V+1 = 47
        (shape(2, 7, 5, 1000), 3),
        (shape(1, 7, 3, 32000), 2),
        (shape(2, 3, 31, 127), 4), // V+1 = 128: rows start 16-byte aligned
        (shape(3, 1, 47, 46), 5),
    ];
    let mut out = Vec::new();
    for (s, ignore_every) in shapes {
        for dtype in [Dtype::F32, Dtype::Bf16] {
            for (label, obj, dk_bias) in objectives(s.pauses, s.vocab) {
                let base = |reduction: Reduction, weights: bool, in_place: bool| Case {
                    name: format!(
                        "cyb_loss_matches_cpu::{}_{:?}{}{}_{}_b{}k{}t{}v{}",
                        label,
                        reduction,
                        if weights { "_weighted" } else { "" },
                        if in_place { "_inplace" } else { "" },
                        match dtype {
                            Dtype::F32 => "f32",
                            Dtype::Bf16 => "bf16",
                        },
                        s.batch,
                        s.pauses,
                        s.seq,
                        s.vocab
                    )
                    .to_lowercase(),
                    shape: s,
                    dtype,
                    objective: obj.clone(),
                    dk_bias,
                    reduction,
                    weights,
                    in_place,
                    ignore_every,
                    row_stride: None,
                };
                for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                    for weights in [false, true] {
                        out.push(base(reduction, weights, false));
                    }
                }
                out.push(base(Reduction::Mean, true, true));
                out.push(base(Reduction::None, false, true));
            }
        }
    }
    // Padded row strides with odd V+1: 33 -> 64 and 1001 -> 1024 (padded_row_stride),
    // and 97 -> 101, a stride that is no multiple of 8, so most rows start misaligned.
    let padded = [
        (shape(2, 3, 5, 32), 3, 64),
        (shape(1, 1, 7, 96), 4, 101),
        (shape(2, 7, 5, 1000), 3, 1024),
    ];
    for (s, ignore_every, stride) in padded {
        for dtype in [Dtype::F32, Dtype::Bf16] {
            for (label, obj, dk_bias) in objectives(s.pauses, s.vocab) {
                for (reduction, weights, in_place) in [
                    (Reduction::Mean, true, false),
                    (Reduction::None, false, true),
                ] {
                    out.push(Case {
                        name: format!(
                            "cyb_loss_padded_stride::{}_{:?}{}{}_{}_b{}k{}t{}v{}_s{}",
                            label,
                            reduction,
                            if weights { "_weighted" } else { "" },
                            if in_place { "_inplace" } else { "" },
                            match dtype {
                                Dtype::F32 => "f32",
                                Dtype::Bf16 => "bf16",
                            },
                            s.batch,
                            s.pauses,
                            s.seq,
                            s.vocab,
                            stride
                        )
                        .to_lowercase(),
                        shape: s,
                        dtype,
                        objective: obj.clone(),
                        dk_bias,
                        reduction,
                        weights,
                        in_place,
                        ignore_every,
                        row_stride: Some(stride),
                    });
                }
            }
        }
    }
    out
}

/// Tests that are not a comparison case.
const SPECIAL: &[&str] = &[
    "k_max_matches_cpu",
    "extreme_inputs_are_finite_and_match_cpu",
    "all_ignored_batch_gives_zero_loss_and_zero_grad",
    "invalid_target_is_reported",
    "invalid_weight_is_reported",
    "too_many_pauses_is_an_error",
    "shape_mismatches_are_errors",
    "results_are_bitwise_deterministic",
    "upstream_scalar_broadcasts_for_reduction_none",
    "reproduces_spec_v2_vectors",
];

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    // Built without feature `cuda`: nothing to run, everything reported as ignored.
    cases()
        .into_iter()
        .map(|c| c.name)
        .chain(SPECIAL.iter().map(|s| s.to_string()))
        .map(|name| Trial::test(name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    gpu_tests::trials()
}

#[cfg(feature = "cuda")]
mod gpu_tests {
    use super::common::assert_close;
    use super::common::{err, resolved};
    use super::*;
    use cyb::cpu::loss::{
        dlogits_from_row_grads, position_objectives, row_scalars, LossForward, RowScalar,
    };
    use cyb::gpu::cudarc::driver::CudaSlice;
    use cyb::gpu::{
        padded_row_stride, CybLoss, GpuContext, GpuLossForward, LogitElem, Upstream, K_MAX,
    };
    use cyb::rng::{seeded, CybRng};
    use cyb::CybError;
    use half::bf16;
    use libtest_mimic::Failed;
    use rand::{Rng, RngExt};
    use rand_distr::StandardNormal;
    use std::sync::Arc;

    // Tolerances for common::assert_close (approx::relative_eq!): an element passes when
    // |got - want| <= atol or <= rtol * max(|got|, |want|).
    //
    // Forward (loss, per-position values, row scalars), both dtypes: the CPU reference
    // sees exactly the values the kernel sees (bf16 logits are rounded first, then both
    // sides read the same numbers), so the only difference is the kernel's f32
    // logsumexp (expf is within 2 ulp, sums of <= 32000 terms accumulated per thread
    // then in a tree: ~1e-6 relative on r) and f32 storage of per-position values;
    // 1e-4 leaves a wide margin while catching any real mistake (wrong term ~1e-2).
    const FWD_ATOL: f64 = 1e-4;
    const FWD_RTOL: f64 = 1e-4;
    // dlogits in f32: each element is g_r*exp(z - r) in f32 with the f32 r above, so
    // ~2e-6 relative error per element; atol is relative to the largest gradient.
    const F32_DZ_ATOL: f64 = 1e-6;
    const F32_DZ_RTOL: f64 = 1e-4;
    // dlogits in bf16: the output is rounded to 8 significant bits (unit roundoff
    // 2^-8 = 3.9e-3); allow twice that, i.e. at most 2x a naive bf16 rounding of the
    // exact gradient.
    const BF16_DZ_ATOL: f64 = 1e-3;
    const BF16_DZ_RTOL: f64 = 7.9e-3;

    pub fn trials() -> Vec<Trial> {
        let gpu = common::test_gpu("gpu_loss");
        let base = common::base_seed();
        let ignored = gpu.is_none();
        let mut trials = Vec::new();
        for (i, case) in cases().into_iter().enumerate() {
            let gpu = gpu.clone();
            let seed = common::test_seed(base, i as u64);
            let name = case.name.clone();
            trials.push(
                Trial::test(name, move || {
                    let gpu = gpu.expect("ignored without a device")?;
                    common::with_seed(base, seed, || run_case(&gpu, &case, seed))
                })
                .with_ignored_flag(ignored),
            );
        }
        for (i, &name) in SPECIAL.iter().enumerate() {
            let gpu = gpu.clone();
            let seed = common::test_seed(base, (1000 + i) as u64);
            trials.push(
                Trial::test(name, move || {
                    let gpu = gpu.expect("ignored without a device")?;
                    common::with_seed(base, seed, || special(&gpu, name, seed))
                })
                .with_ignored_flag(ignored),
            );
        }
        trials
    }

    /// Host inputs of one comparison.
    struct Inputs {
        logits: Vec<f64>, // exactly the values the kernel sees
        targets: Vec<i32>,
        weights: Option<Vec<f32>>,
    }

    fn random_inputs(
        rng: &mut CybRng,
        shape: LossShape,
        dtype: Dtype,
        ignore_every: usize,
        weights: bool,
    ) -> Inputs {
        let n = shape.rows() * (shape.vocab + 1);
        let logits = (0..n)
            .map(|_| {
                let x = 2.0 * rng.sample::<f64, _>(StandardNormal);
                match dtype {
                    Dtype::F32 => x as f32 as f64,
                    Dtype::Bf16 => bf16::from_f64(x).to_f64(),
                }
            })
            .collect();
        let targets = (0..shape.positions())
            .map(|i| {
                if ignore_every > 0 && i % ignore_every == 1 {
                    -1
                } else {
                    rng.random_range(0..shape.vocab) as i32
                }
            })
            .collect();
        let weights = weights.then(|| {
            (0..shape.positions())
                .map(|i| {
                    if i % 5 == 2 {
                        0.0
                    } else {
                        (2.0 * rng.random::<f64>()) as f32
                    }
                })
                .collect()
        });
        Inputs {
            logits,
            targets,
            weights,
        }
    }

    fn upload<T: LogitElem>(
        gpu: &GpuContext,
        x: &[f64],
        conv: fn(f64) -> T,
    ) -> Result<CudaSlice<T>, Failed> {
        let host: Vec<T> = x.iter().map(|&v| conv(v)).collect();
        gpu.htod(&host).map_err(err)
    }

    fn to_f64_f32(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    /// CPU reference: forward, row scalars, and dlogits for `upstream`.
    fn reference(
        inp: &Inputs,
        shape: LossShape,
        obj: &cyb::ResolvedObjective,
        reduction: Reduction,
        upstream: &[f64],
    ) -> (LossForward, Vec<RowScalar>, Vec<f64>) {
        let scalars =
            row_scalars(&inp.logits, &inp.targets, shape, obj.dk_bias).expect("cpu row scalars");
        let fwd = position_objectives(
            &scalars,
            &inp.targets,
            shape,
            obj,
            reduction,
            inp.weights.as_deref(),
        )
        .expect("cpu forward");
        let grads = fwd.row_grads(shape, upstream).expect("cpu row grads");
        let mut dz = vec![0.0; inp.logits.len()];
        dlogits_from_row_grads(&inp.logits, &inp.targets, shape, &scalars, &grads, &mut dz)
            .expect("cpu dlogits");
        (fwd, scalars, dz)
    }

    fn compare_forward(
        what: &str,
        gpu_fwd: &GpuLossForward,
        cpu: &LossForward,
        cpu_scalars: &[RowScalar],
        inp: &Inputs,
        shape: LossShape,
    ) -> Result<(), Failed> {
        let loss = gpu_fwd.loss().map_err(err)?;
        assert_close(
            &format!("{what}: loss"),
            &[loss],
            &[cpu.loss],
            FWD_ATOL,
            FWD_RTOL,
        );
        let st = gpu_fwd.stats().map_err(err)?;
        if st.valid_positions != cpu.stats.valid_positions {
            return Err(format!(
                "{what}: valid positions {} vs cpu {}",
                st.valid_positions, cpu.stats.valid_positions
            )
            .into());
        }
        assert_close(
            &format!("{what}: stats [weight_sum, mean_pauses]"),
            &[st.weight_sum, st.mean_pauses],
            &[cpu.stats.weight_sum, cpu.stats.mean_pauses],
            1e-6,
            1e-5,
        );
        let pp = to_f64_f32(&gpu_fwd.per_position_to_host().map_err(err)?);
        assert_close(
            &format!("{what}: per-position w*L"),
            &pp,
            &cpu.per_position,
            FWD_ATOL,
            FWD_RTOL,
        );
        let pa = to_f64_f32(&gpu_fwd.pauses_to_host().map_err(err)?);
        assert_close(
            &format!("{what}: per-position E[pauses]"),
            &pa,
            &cpu.pauses,
            1e-5,
            1e-4,
        );
        // Stage 1 on the rows that are read (ignored rows are zeros on the GPU).
        let gs = gpu_fwd.row_scalars_to_host().map_err(err)?;
        let valid = |row: usize| inp.targets[shape.position_of_row(row)] >= 0;
        let pick = |s: &[RowScalar], f: fn(&RowScalar) -> f64| -> Vec<f64> {
            (0..s.len())
                .map(|r| if valid(r) { f(&s[r]) } else { 0.0 })
                .collect()
        };
        for (name, f) in [
            ("r", (|s: &RowScalar| s.r) as fn(&RowScalar) -> f64),
            ("e", |s: &RowScalar| s.e),
            ("u", |s: &RowScalar| s.u),
        ] {
            assert_close(
                &format!("{what}: row scalar {name}"),
                &pick(&gs, f),
                &pick(cpu_scalars, f),
                1e-5,
                1e-6,
            );
        }
        Ok(())
    }

    fn max_abs(x: &[f64]) -> f64 {
        x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    }

    fn compare_dlogits(what: &str, got: &[f64], want: &[f64], dtype: Dtype) {
        let scale = max_abs(want).max(1e-30);
        let (atol, rtol) = match dtype {
            Dtype::F32 => (F32_DZ_ATOL, F32_DZ_RTOL),
            Dtype::Bf16 => (BF16_DZ_ATOL, BF16_DZ_RTOL),
        };
        assert_close(what, got, want, atol * scale, rtol);
    }

    /// One forward + backward on the GPU: the inputs and how to call.
    struct GpuRun<'a> {
        inp: &'a Inputs,
        shape: LossShape,
        reduction: Reduction,
        upstream: &'a [f64],
        /// Pass `upstream[0]` as a host scalar instead of a device buffer.
        scalar_upstream: bool,
        in_place: bool,
        dtype: Dtype,
        /// Elements between rows on the device (`V+1`: dense, through `forward`).
        row_stride: usize,
    }

    /// Host conversions of the element types, for uploading and comparing.
    trait HostElem: LogitElem {
        fn from_f64(x: f64) -> Self;
        fn to_f64(self) -> f64;
    }
    impl HostElem for f32 {
        fn from_f64(x: f64) -> Self {
            x as f32
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
    }
    impl HostElem for bf16 {
        fn from_f64(x: f64) -> Self {
            bf16::from_f64(x)
        }
        fn to_f64(self) -> f64 {
            bf16::to_f64(self)
        }
    }

    /// Dense rows of `width` values spread to rows of `stride`, the padding set to
    /// `pad`.
    fn pad_rows(x: &[f64], width: usize, stride: usize, pad: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len() / width * stride);
        for row in x.chunks(width) {
            out.extend_from_slice(row);
            out.resize(out.len() + (stride - width), pad);
        }
        out
    }

    /// The dense rows of a padded buffer; fails unless every padding element is
    /// exactly zero (what the backward documents for `dlogits`).
    fn strip_zero_padding(x: Vec<f64>, width: usize, stride: usize) -> Result<Vec<f64>, Failed> {
        if stride == width {
            return Ok(x);
        }
        let mut out = Vec::with_capacity(x.len() / stride * width);
        for (r, row) in x.chunks(stride).enumerate() {
            if let Some(i) = row[width..].iter().position(|&v| v != 0.0) {
                return Err(format!(
                    "dlogits padding not zeroed: row {r} column {} holds {}",
                    width + i,
                    row[width + i]
                )
                .into());
            }
            out.extend_from_slice(&row[..width]);
        }
        Ok(out)
    }

    /// Runs forward + backward on the GPU and returns (forward, dlogits as f64,
    /// dense: the padding of a strided run is checked to be zero and dropped).
    fn run_gpu(
        gpu: &Arc<GpuContext>,
        loss: &CybLoss,
        run: &GpuRun,
    ) -> Result<(GpuLossForward, Vec<f64>), Failed> {
        match run.dtype {
            Dtype::F32 => run_typed::<f32>(gpu, loss, run),
            Dtype::Bf16 => run_typed::<bf16>(gpu, loss, run),
        }
    }

    fn run_typed<T: HostElem>(
        gpu: &Arc<GpuContext>,
        loss: &CybLoss,
        run: &GpuRun,
    ) -> Result<(GpuLossForward, Vec<f64>), Failed> {
        let inp = run.inp;
        let width = run.shape.vocab + 1;
        let stride = run.row_stride;
        // Padding poisoned with NaN: a kernel that reads it makes the loss NaN.
        let host_logits = pad_rows(&inp.logits, width, stride, f64::NAN);
        let mut logits = upload(gpu, &host_logits, T::from_f64)?;
        let targets = gpu.htod(&inp.targets).map_err(err)?;
        let weights = match &inp.weights {
            Some(w) => Some(gpu.htod(w).map_err(err)?),
            None => None,
        };
        let up_dev: CudaSlice<f32> = gpu
            .htod(&run.upstream.iter().map(|&u| u as f32).collect::<Vec<_>>())
            .map_err(err)?;
        let up = if run.scalar_upstream {
            Upstream::Scalar(run.upstream[0])
        } else {
            Upstream::Device(&up_dev)
        };
        let fwd = if stride == width {
            loss.forward(
                &logits,
                &targets,
                run.shape,
                run.reduction,
                weights.as_ref(),
            )
        } else {
            loss.forward_strided(
                &logits,
                stride,
                &targets,
                run.shape,
                run.reduction,
                weights.as_ref(),
            )
        }
        .map_err(err)?;
        if fwd.row_stride() != stride {
            return Err(format!("forward reports row stride {}", fwd.row_stride()).into());
        }
        let dz = if run.in_place {
            loss.backward_in_place(&fwd, up, &mut logits).map_err(err)?;
            gpu.dtoh(&logits).map_err(err)?
        } else {
            // Poisoned output: every element the kernel forgets stays NaN.
            let mut dz = upload(gpu, &vec![f64::NAN; host_logits.len()], T::from_f64)?;
            loss.backward(&fwd, up, &logits, &mut dz).map_err(err)?;
            gpu.dtoh(&dz).map_err(err)?
        };
        let dz = dz.into_iter().map(T::to_f64).collect();
        Ok((fwd, strip_zero_padding(dz, width, stride)?))
    }

    /// Forward + backward with `Reduction::Mean` and a host upstream of 1.
    fn run_mean(
        gpu: &Arc<GpuContext>,
        loss: &CybLoss,
        inp: &Inputs,
        shape: LossShape,
        dtype: Dtype,
    ) -> Result<(GpuLossForward, Vec<f64>), Failed> {
        run_gpu(
            gpu,
            loss,
            &GpuRun {
                inp,
                shape,
                reduction: Reduction::Mean,
                upstream: &[1.0],
                scalar_upstream: true,
                in_place: false,
                dtype,
                row_stride: shape.vocab + 1,
            },
        )
    }

    fn upstream_for(rng: &mut CybRng, shape: LossShape, reduction: Reduction) -> Vec<f64> {
        if reduction == Reduction::None {
            // f32-representable, so host and device see the same values.
            (0..shape.positions())
                .map(|_| (2.0 * rng.random::<f64>() - 1.0) as f32 as f64)
                .collect()
        } else {
            vec![0.75]
        }
    }

    fn run_case(gpu: &Arc<GpuContext>, case: &Case, seed: u64) -> Result<(), Failed> {
        let mut rng = seeded(seed);
        let shape = case.shape;
        let obj = resolved(&case.objective, shape.pauses, case.dk_bias)?;
        let inp = random_inputs(&mut rng, shape, case.dtype, case.ignore_every, case.weights);
        let upstream = upstream_for(&mut rng, shape, case.reduction);
        let (cpu, cpu_scalars, cpu_dz) = reference(&inp, shape, &obj, case.reduction, &upstream);
        let loss = CybLoss::new(gpu, &obj).map_err(err)?;
        // Mean/Sum pass the upstream as a host scalar, None as a device buffer.
        let scalar_up = case.reduction != Reduction::None;
        let (fwd, dz) = run_gpu(
            gpu,
            &loss,
            &GpuRun {
                inp: &inp,
                shape,
                reduction: case.reduction,
                upstream: &upstream,
                scalar_upstream: scalar_up,
                in_place: case.in_place,
                dtype: case.dtype,
                row_stride: case.row_stride.unwrap_or(shape.vocab + 1),
            },
        )?;
        compare_forward(&case.name, &fwd, &cpu, &cpu_scalars, &inp, shape)?;
        compare_dlogits(&format!("{}: dlogits", case.name), &dz, &cpu_dz, case.dtype);
        Ok(())
    }

    /// Logits of magnitude 1e4, DK logits that make d near 1 and near 0, and DK biases
    /// of +-30: the GPU gives finite losses and gradients, close to the CPU reference on
    /// the same f32 inputs (the kernel's f32 r is off by ~1e-7 relative, i.e. ~1e-3
    /// absolute at 1e4, which moves exp(z - r) by ~1e-3 relative).
    fn extreme_inputs(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> Result<(), Failed> {
        let s = shape(2, 3, 5, 37);
        let width = s.vocab + 1;
        for (label, dk_logit) in [("|z|~1e4", None), ("d~1", Some(5e4)), ("d~0", Some(-5e4))] {
            for dk_bias in [0.0, 30.0, -30.0] {
                for (name, obj, _) in objectives(s.pauses, s.vocab) {
                    let mut inp = random_inputs(rng, s, Dtype::F32, 3, false);
                    for (i, z) in inp.logits.iter_mut().enumerate() {
                        *z = match dk_logit {
                            Some(d) if i % width == s.vocab => d,
                            _ => (*z * 5e3) as f32 as f64,
                        };
                    }
                    let o = resolved(&obj, s.pauses, dk_bias)?;
                    let (cpu, _, cpu_dz) = reference(&inp, s, &o, Reduction::Mean, &[1.0]);
                    let loss = CybLoss::new(gpu, &o).map_err(err)?;
                    let (fwd, dz) = run_mean(gpu, &loss, &inp, s, Dtype::F32)?;
                    let what = format!("{label} b={dk_bias} {name}");
                    let l = fwd.loss().map_err(err)?;
                    if !l.is_finite() || dz.iter().any(|d| !d.is_finite()) {
                        return Err(format!("{what}: loss {l} or dlogits not finite").into());
                    }
                    assert_close(&format!("{what}: loss"), &[l], &[cpu.loss], 1e-2, 1e-4);
                    let scale = max_abs(&cpu_dz).max(1e-30);
                    assert_close(
                        &format!("{what}: dlogits"),
                        &dz,
                        &cpu_dz,
                        1e-4 * scale,
                        1e-2,
                    );
                }
            }
        }
        Ok(())
    }

    /// Every v2 `loss_cases` entry straight from the float64 vectors (the logits are
    /// rounded to f32 on upload, the only difference besides the kernels' f32 rows).
    fn spec_vectors(gpu: &Arc<GpuContext>) -> Result<(), Failed> {
        let v = common::vectors_v2();
        for (ci, case) in v["loss_cases"]
            .as_array()
            .expect("cases")
            .iter()
            .enumerate()
        {
            let dim = |k: &str| case[k].as_u64().expect(k) as usize;
            let s = shape(dim("B"), dim("K"), dim("T"), dim("V"));
            let inp = Inputs {
                logits: common::f64s(&case["logits"]),
                targets: common::i32s(&case["targets"]),
                weights: None,
            };
            for (name, obj) in common::v2_objectives(&case["params"], s.pauses) {
                let want = &case["objectives"][name];
                let Ok(obj) = obj else { continue }; // va with a zero in rho
                let loss = CybLoss::new(gpu, &obj).map_err(err)?;
                let (fwd, dz) = run_mean(gpu, &loss, &inp, s, Dtype::F32)?;
                let what = format!("case {ci} {name}");
                let l = fwd.loss().map_err(err)?;
                let st = fwd.stats().map_err(err)?;
                let want_d = common::f64s(&want["dlogits"]);
                assert_close(
                    &format!("{what}: loss"),
                    &[l],
                    &[want["loss"].as_f64().unwrap()],
                    FWD_ATOL,
                    FWD_RTOL,
                );
                assert_close(
                    &format!("{what}: mean pauses"),
                    &[st.mean_pauses],
                    &[want["mean_pauses"].as_f64().unwrap()],
                    1e-5,
                    1e-5,
                );
                compare_dlogits(&format!("{what}: dlogits"), &dz, &want_d, Dtype::F32);
            }
        }
        Ok(())
    }

    fn special(gpu: &Arc<GpuContext>, name: &str, seed: u64) -> Result<(), Failed> {
        let mut rng = seeded(seed);
        match name {
            "k_max_matches_cpu" => {
                for (label, obj, dk_bias) in objectives(K_MAX, 61) {
                    let case = Case {
                        name: format!("k_max_{label}"),
                        shape: shape(2, K_MAX, 3, 61),
                        dtype: Dtype::F32,
                        objective: obj,
                        dk_bias,
                        reduction: Reduction::Mean,
                        weights: true,
                        in_place: false,
                        ignore_every: 4,
                        row_stride: None,
                    };
                    run_case(gpu, &case, rng.next_u64())?;
                }
                Ok(())
            }
            "extreme_inputs_are_finite_and_match_cpu" => extreme_inputs(gpu, &mut rng),
            "reproduces_spec_v2_vectors" => spec_vectors(gpu),
            "all_ignored_batch_gives_zero_loss_and_zero_grad" => {
                let s = shape(2, 3, 4, 50);
                for (_, obj, dk_bias) in objectives(s.pauses, s.vocab) {
                    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                        let mut inp = random_inputs(&mut rng, s, Dtype::F32, 0, true);
                        inp.targets.iter_mut().for_each(|t| *t = -1);
                        let o = resolved(&obj, s.pauses, dk_bias)?;
                        let loss = CybLoss::new(gpu, &o).map_err(err)?;
                        let up = upstream_for(&mut rng, s, reduction);
                        let (fwd, dz) = run_gpu(
                            gpu,
                            &loss,
                            &GpuRun {
                                inp: &inp,
                                shape: s,
                                reduction,
                                upstream: &up,
                                scalar_upstream: false,
                                in_place: false,
                                dtype: Dtype::F32,
                                row_stride: s.vocab + 1,
                            },
                        )?;
                        let l = fwd.loss().map_err(err)?;
                        if l != 0.0 || dz.iter().any(|&d| d != 0.0) {
                            return Err(format!(
                                "{} {reduction:?}: all-ignored loss {l}, nonzero or NaN grads: {}",
                                obj.name(),
                                dz.iter().filter(|&&d| d != 0.0).count()
                            )
                            .into());
                        }
                    }
                }
                Ok(())
            }
            "invalid_target_is_reported" => {
                let s = shape(1, 2, 5, 30);
                let o = Objective::ap_default().resolve(2).map_err(err)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                for bad in [30, -2, i32::MAX] {
                    let mut inp = random_inputs(&mut rng, s, Dtype::F32, 0, false);
                    inp.targets[3] = bad;
                    match loss.upload_targets(&inp.targets, s) {
                        Err(CybError::VocabRange { index: 3, .. }) => {}
                        other => return Err(format!("upload_targets({bad}): {other:?}").into()),
                    }
                    let logits = upload(gpu, &inp.logits, |x| x as f32)?;
                    let targets = gpu.htod(&inp.targets).map_err(err)?;
                    let fwd = loss
                        .forward(&logits, &targets, s, Reduction::Mean, None)
                        .map_err(err)?;
                    let mut dz = gpu.zeros::<f32>(logits.len()).map_err(err)?;
                    loss.backward(&fwd, Upstream::Scalar(1.0), &logits, &mut dz)
                        .map_err(err)?;
                    match fwd.loss() {
                        Err(CybError::VocabRange {
                            id,
                            index: 3,
                            vocab: 30,
                        }) if id == bad as i64 => {}
                        other => return Err(format!("forward with target {bad}: {other:?}").into()),
                    }
                    gpu.synchronize().map_err(err)?; // no fault from the kernels
                }
                Ok(())
            }
            "invalid_weight_is_reported" => {
                let s = shape(2, 1, 3, 20);
                let o = Objective::va_default().resolve(1).map_err(err)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
                    let inp = random_inputs(&mut rng, s, Dtype::F32, 0, true);
                    let mut w = inp.weights.clone().expect("weights");
                    w[4] = bad;
                    let logits = upload(gpu, &inp.logits, |x| x as f32)?;
                    let targets = gpu.htod(&inp.targets).map_err(err)?;
                    let wd = gpu.htod(&w).map_err(err)?;
                    let fwd = loss
                        .forward(&logits, &targets, s, Reduction::Sum, Some(&wd))
                        .map_err(err)?;
                    match fwd.stats() {
                        Err(CybError::Param(msg)) if msg.contains("weight 4") => {}
                        other => return Err(format!("weight {bad}: {other:?}").into()),
                    }
                }
                Ok(())
            }
            "too_many_pauses_is_an_error" => {
                let o = Objective::CeFinal.resolve(K_MAX + 1).map_err(err)?;
                match CybLoss::new(gpu, &o) {
                    Err(CybError::TooManyPauses { k, k_max })
                        if k == K_MAX + 1 && k_max == K_MAX =>
                    {
                        Ok(())
                    }
                    other => Err(format!("K = K_MAX + 1: {other:?}").into()),
                }
            }
            "shape_mismatches_are_errors" => {
                let s = shape(1, 1, 4, 10);
                let o = Objective::Marginal.resolve(1).map_err(err)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                let inp = random_inputs(&mut rng, s, Dtype::F32, 0, false);
                let logits = upload(gpu, &inp.logits, |x| x as f32)?;
                let short = upload(gpu, &inp.logits[1..], |x| x as f32)?;
                let targets = gpu.htod(&inp.targets).map_err(err)?;
                let w3 = gpu.htod(&[1.0f32; 3]).map_err(err)?;
                let expect_shape = |r: cyb::Result<GpuLossForward>, what: &str| match r {
                    Err(CybError::Shape(_)) => Ok(()),
                    other => Err(Failed::from(format!("{what}: {other:?}"))),
                };
                expect_shape(
                    loss.forward(&short, &targets, s, Reduction::Mean, None),
                    "short logits",
                )?;
                expect_shape(
                    loss.forward(&logits, &targets, shape(1, 2, 4, 10), Reduction::Mean, None),
                    "K differs from the objective's",
                )?;
                expect_shape(
                    loss.forward(&logits, &targets, s, Reduction::Mean, Some(&w3)),
                    "short weights",
                )?;
                let fwd = loss
                    .forward(&logits, &targets, s, Reduction::None, None)
                    .map_err(err)?;
                let one = gpu.htod(&[1.0f32]).map_err(err)?;
                let mut dz = gpu.zeros::<f32>(logits.len()).map_err(err)?;
                match loss.backward(&fwd, Upstream::Device(&one), &logits, &mut dz) {
                    Err(CybError::Shape(_)) => {}
                    other => return Err(format!("1 upstream value for None: {other:?}").into()),
                }
                let mut dz_short = gpu.zeros::<f32>(3).map_err(err)?;
                match loss.backward(&fwd, Upstream::Scalar(1.0), &logits, &mut dz_short) {
                    Err(CybError::Shape(_)) => {}
                    other => return Err(format!("short dlogits: {other:?}").into()),
                }
                // Row strides: below V+1, and a buffer that is not rows*stride long.
                expect_shape(
                    loss.forward_strided(&logits, 10, &targets, s, Reduction::Mean, None),
                    "row stride V < V+1",
                )?;
                let stride = padded_row_stride(11);
                expect_shape(
                    loss.forward_strided(&logits, stride, &targets, s, Reduction::Mean, None),
                    "dense logits with a padded stride",
                )?;
                let padded = gpu.zeros::<f32>(s.rows() * stride).map_err(err)?;
                let fwd = loss
                    .forward_strided(&padded, stride, &targets, s, Reduction::Mean, None)
                    .map_err(err)?;
                match loss.backward(&fwd, Upstream::Scalar(1.0), &logits, &mut dz) {
                    Err(CybError::Shape(_)) => Ok(()),
                    other => Err(format!("dense backward of a padded forward: {other:?}").into()),
                }
            }
            "results_are_bitwise_deterministic" => {
                let s = shape(4, 3, 300, 997);
                let o = Objective::dp_default().resolve(3).map_err(err)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                let inp = random_inputs(&mut rng, s, Dtype::Bf16, 7, true);
                let run = || run_mean(gpu, &loss, &inp, s, Dtype::Bf16);
                let (f1, d1) = run()?;
                let (f2, d2) = run()?;
                let (l1, l2) = (f1.loss().map_err(err)?, f2.loss().map_err(err)?);
                if l1.to_bits() != l2.to_bits() {
                    return Err(format!("loss differs between runs: {l1:e} vs {l2:e}").into());
                }
                let differ = d1
                    .iter()
                    .zip(&d2)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                if differ > 0 {
                    return Err(format!("{differ} dlogits differ between runs").into());
                }
                Ok(())
            }
            "upstream_scalar_broadcasts_for_reduction_none" => {
                let s = shape(2, 2, 9, 33);
                let o = Objective::dp_default().resolve(2).map_err(err)?;
                let loss = CybLoss::new(gpu, &o).map_err(err)?;
                let inp = random_inputs(&mut rng, s, Dtype::F32, 3, true);
                let up = vec![0.5; s.positions()];
                let (cpu, _, cpu_dz) = reference(&inp, s, &o, Reduction::None, &up);
                let (fwd, dz) = run_gpu(
                    gpu,
                    &loss,
                    &GpuRun {
                        inp: &inp,
                        shape: s,
                        reduction: Reduction::None,
                        upstream: &up,
                        scalar_upstream: true,
                        in_place: false,
                        dtype: Dtype::F32,
                        row_stride: s.vocab + 1,
                    },
                )?;
                assert_close(
                    "loss under None (the sum)",
                    &[fwd.loss().map_err(err)?],
                    &[cpu.loss],
                    FWD_ATOL,
                    FWD_RTOL,
                );
                compare_dlogits(
                    "dlogits, scalar upstream under None",
                    &dz,
                    &cpu_dz,
                    Dtype::F32,
                );
                Ok(())
            }
            other => Err(format!("unknown special test {other}").into()),
        }
    }
}

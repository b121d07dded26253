//! The GPU model (`src/gpu/model.rs` and the kernels under it) against the CPU
//! reference (`src/cpu/`): every op on fresh random inputs with awkward sizes (one
//! row, widths that are not a multiple of the block, more rows than one reduction
//! chunk, K = 0 and K = 3), outputs poisoned with NaN before each launch; a whole
//! training step (loss and every parameter gradient) for every objective and K in
//! {0, 3}; 50 optimizer steps; checkpoints across the two backends. The same in
//! mixed precision ([`Precision::Bf16`]): the bf16 step against the f32 CPU reference
//! within tolerances derived from bf16's 8-bit significand (see `BF16_STEP_REL`), a
//! 50-step bf16 curve against the f32 one, f32 masters with an exactly rounded bf16
//! copy. The backward's final-gradient hook (`GradReady`): ranges in order, final when
//! reported, the same gradients.
//!
//! `harness = false` (libtest-mimic): when no CUDA device can be opened, or without
//! feature `cuda`, every test is reported as *ignored*, never as passed.
//! `CYB_TEST_SEED` fixes the random inputs (the seed is printed with every failure).
//!

mod common;

use libtest_mimic::{Arguments, Trial};

/// (attention mode, objective name, K) of the whole-step comparisons.
fn step_cases() -> Vec<(String, String, usize)> {
    let mut v = Vec::new();
    for mode in ["shared", "private"] {
        for obj in common::all_objectives() {
            for k in [0, 3] {
                v.push((mode.to_string(), obj.name().to_string(), k));
            }
        }
    }
    v
}

/// Every test name, known with or without the feature.
fn names() -> Vec<String> {
    let mut v: Vec<String> = [
        "layernorm_forward_matches_cpu",
        "layernorm_backward_matches_cpu",
        "gelu_forward_matches_cpu",
        "gelu_backward_matches_cpu",
        "gelu_backward_tail_matches_cpu",
        "bias_residual_matches_cpu",
        "linear_forward_matches_cpu",
        "linear_backward_matches_cpu",
        "tied_head_matches_cpu",
        "embedding_forward_matches_cpu",
        "embedding_backward_matches_cpu",
        "adamw_step_matches_cpu",
        "adamw_without_clipping_matches_cpu",
        "bf16_kernels_match_cpu",
        "checkpoint_gpu_to_cpu_round_trip",
        "checkpoint_cpu_to_gpu_round_trip",
        "forward_matches_cpu",
        "forward_backward_is_deterministic",
        "training_curves_agree_k3",
        "linear_bf16_strided_matches_cpu",
        "gemm_ex_refuses_unsupported_types",
        "forward_bf16_matches_cpu",
        "forward_backward_bf16_is_deterministic",
        "bf16_step_keeps_f32_masters",
        "training_curves_bf16_track_f32_k3",
        "model_applies_its_own_dk_bias",
        "backward_reports_final_gradient_ranges",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (mode, obj, k) in step_cases() {
        v.push(format!("model_step_matches_cpu::{mode}_{obj}_k{k}"));
    }
    for (mode, obj, k) in step_cases() {
        v.push(format!("model_step_bf16_matches_cpu::{mode}_{obj}_k{k}"));
    }
    v
}

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    // Built without feature `cuda`: nothing to run, everything reported as ignored.
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
    use cyb::checkpoint;
    use cyb::config::{ModelConfig, PauseAttention};
    use cyb::cpu::adamw::{clip_grad_norm, AdamW};
    use cyb::cpu::embedding::{embedding_backward, embedding_forward, StepShape};
    use cyb::cpu::gelu::{gelu_backward, gelu_forward};
    use cyb::cpu::layernorm::{layernorm_backward, layernorm_forward};
    use cyb::cpu::linear::{linear_backward, linear_forward};
    use cyb::cpu::loss::{cyb_loss as cpu_loss, LossShape};
    use cyb::cpu::model::{HeadMode, Model, Params, Workspace};
    use cyb::cpu::scalar::{matmul, Op};
    use cyb::gpu::adamw::GpuAdamW;
    use cyb::gpu::cudarc::driver::CudaSlice;
    use cyb::gpu::embedding::{EmbeddingKernels, TableDims, TokenIndex};
    use cyb::gpu::gelu::GeluKernels;
    use cyb::gpu::grad_ready::GradReady;
    use cyb::gpu::layernorm::LayerNormKernels;
    use cyb::gpu::linear::Linear;
    use cyb::gpu::model::{GpuModel, Precision};
    use cyb::gpu::residual::ResidualKernels;
    use cyb::gpu::GpuContext;
    use cyb::rng::{seeded, CybRng};
    use cyb::{CybError, Objective, Reduction};
    use libtest_mimic::Failed;
    use rand::RngExt;
    use rand_distr::StandardNormal;
    use std::sync::Arc;

    type R = Result<(), Failed>;

    /// The LayerNorm epsilon of the per-op LayerNorm tests: far from the default 1e-5
    /// (var of the inputs ~2.25, so rstd moves by ~1%), so that a kernel that ignored its
    /// `eps` argument fails.
    const EPS: f64 = 0.05;

    // Tolerances. Per-op checks compare f32 kernels with an f64 reference on the same
    // (f32-representable) inputs: elementwise ops differ by a few f32 ulps (expf/tanhf
    // within 2 ulp), so rtol 1e-5 with a small atol; reductions over up to ~600 terms
    // in a different order than the reference: norm-wise relative error 1e-5.
    const OP_ATOL: f64 = 1e-6;
    const OP_RTOL: f64 = 2e-5;
    const SUM_REL: f64 = 1e-5;
    // Whole step, f32 against f32 CPU: the brief's bound, norm-wise per tensor.
    const STEP_REL: f64 = 1e-4;

    pub fn trials() -> Vec<Trial> {
        let gpu = common::test_gpu("gpu_model");
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
        for (prefix, precision) in [
            ("model_step_matches_cpu::", Precision::F32),
            ("model_step_bf16_matches_cpu::", Precision::Bf16),
        ] {
            if let Some(rest) = name.strip_prefix(prefix) {
                let (mode_obj, k) = rest.rsplit_once("_k").expect("case name");
                let (mode, obj) = mode_obj.split_once('_').expect("case name");
                let k: usize = k.parse().expect("K");
                let mode = mode.parse().map_err(err)?;
                return model_step(gpu, &mut rng, mode, obj, k, precision);
            }
        }
        match name {
            "layernorm_forward_matches_cpu" => layernorm_fwd(gpu, &mut rng),
            "layernorm_backward_matches_cpu" => layernorm_bwd(gpu, &mut rng),
            "gelu_forward_matches_cpu" => gelu_fwd(gpu, &mut rng),
            "gelu_backward_matches_cpu" => gelu_bwd(gpu, &mut rng),
            "gelu_backward_tail_matches_cpu" => gelu_bwd_tail(gpu),
            "bias_residual_matches_cpu" => bias_residual(gpu, &mut rng),
            "linear_forward_matches_cpu" => linear_fwd(gpu, &mut rng),
            "linear_backward_matches_cpu" => linear_bwd(gpu, &mut rng),
            "tied_head_matches_cpu" => tied_head(gpu, &mut rng),
            "embedding_forward_matches_cpu" => embedding_fwd(gpu, &mut rng),
            "embedding_backward_matches_cpu" => embedding_bwd(gpu, &mut rng),
            "adamw_step_matches_cpu" => adamw(gpu, &mut rng, true),
            "adamw_without_clipping_matches_cpu" => adamw(gpu, &mut rng, false),
            "bf16_kernels_match_cpu" => bf16_kernels(gpu, &mut rng),
            "checkpoint_gpu_to_cpu_round_trip" => ckpt_gpu_to_cpu(gpu, &mut rng),
            "checkpoint_cpu_to_gpu_round_trip" => ckpt_cpu_to_gpu(gpu, &mut rng),
            "forward_matches_cpu" => forward(gpu, &mut rng),
            "forward_backward_is_deterministic" => deterministic(gpu, &mut rng),
            "training_curves_agree_k3" => curves(gpu, &mut rng),
            "linear_bf16_strided_matches_cpu" => linear_bf16_strided(gpu, &mut rng),
            "gemm_ex_refuses_unsupported_types" => gemm_ex_refuses(gpu),
            "forward_bf16_matches_cpu" => forward_bf16(gpu, &mut rng),
            "forward_backward_bf16_is_deterministic" => deterministic_bf16(gpu, &mut rng),
            "bf16_step_keeps_f32_masters" => bf16_masters(gpu, &mut rng),
            "training_curves_bf16_track_f32_k3" => curves_bf16(gpu, &mut rng),
            "model_applies_its_own_dk_bias" => own_dk_bias(gpu, &mut rng),
            "backward_reports_final_gradient_ranges" => reports_final_ranges(gpu, &mut rng),
            other => Err(format!("unknown test {other}").into()),
        }
    }

    // ---------------------------------------------------------------- helpers

    /// f32 values (so both sides see exactly the same inputs), as f32 and as f64.
    fn randn(rng: &mut CybRng, n: usize, scale: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (scale * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    }

    fn f64s(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    fn nan(gpu: &GpuContext, n: usize) -> Result<cyb::gpu::cudarc::driver::CudaSlice<f32>, Failed> {
        gpu.htod(&vec![f32::NAN; n.max(1)]).map_err(err)
    }

    fn host(gpu: &GpuContext, x: &cyb::gpu::cudarc::driver::CudaSlice<f32>, n: usize) -> Vec<f64> {
        let mut v = gpu.dtoh(x).expect("copy to host");
        v.truncate(n);
        f64s(&v)
    }

    /// Elementwise `approx::relative_eq!(got, want, epsilon = atol, max_relative = rtol)`
    /// (`|got - want| <= atol` or `<= rtol * max(|got|, |want|)`); see common::assert_close.
    fn close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) -> R {
        common::assert_close(what, got, want, atol, rtol);
        Ok(())
    }

    // Awkward (rows, width): one row, odd widths, more rows than one 256-row chunk.
    const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 47), (31, 123), (300, 64), (513, 33)];

    // ---------------------------------------------------------------- layernorm

    fn layernorm_fwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = LayerNormKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            let x = randn(rng, n * c, 1.5);
            let (w, b) = (randn(rng, c, 1.0), randn(rng, c, 1.0));
            let (mut out, mut mean, mut rstd) = (nan(gpu, n * c)?, nan(gpu, n)?, nan(gpu, n)?);
            let xd = gpu.htod(&x).map_err(err)?;
            let (wd, bd) = (gpu.htod(&w).map_err(err)?, gpu.htod(&b).map_err(err)?);
            k.forward(
                &mut out, &mut mean, &mut rstd, &xd, &wd, &bd, n, c, EPS as f32,
            )
            .map_err(err)?;
            let (mut ro, mut rm, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(
                &mut ro,
                &mut rm,
                &mut rs,
                &f64s(&x),
                &f64s(&w),
                &f64s(&b),
                c,
                EPS,
            );
            let tag = format!("n{n} c{c}");
            close(
                &format!("out {tag}"),
                &host(gpu, &out, n * c),
                &ro,
                1e-5,
                1e-4,
            )?;
            close(
                &format!("mean {tag}"),
                &host(gpu, &mean, n),
                &rm,
                OP_ATOL,
                OP_RTOL,
            )?;
            // c = 1: variance 0, rstd = 1/sqrt(eps) ~ 316, still f32-accurate.
            close(
                &format!("rstd {tag}"),
                &host(gpu, &rstd, n),
                &rs,
                1e-4,
                1e-4,
            )?;
        }
        Ok(())
    }

    fn layernorm_bwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = LayerNormKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            let x = randn(rng, n * c, 1.5);
            let (w, b) = (randn(rng, c, 1.0), randn(rng, c, 1.0));
            let dy = randn(rng, n * c, 1.0);
            // Outputs accumulate: start from random values on both sides.
            let dx0 = randn(rng, n * c, 1.0);
            let dp0 = randn(rng, 2 * c, 1.0);
            let (mut ro, mut rm, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(
                &mut ro,
                &mut rm,
                &mut rs,
                &f64s(&x),
                &f64s(&w),
                &f64s(&b),
                c,
                EPS,
            );
            let (mut rdx, mut rdw, mut rdb) = (f64s(&dx0), f64s(&dp0[..c]), f64s(&dp0[c..]));
            layernorm_backward(
                &mut rdx,
                &mut rdw,
                &mut rdb,
                &f64s(&dy),
                &f64s(&x),
                &f64s(&w),
                &rm,
                &rs,
                c,
            );
            // The GPU gets the statistics its own forward computed.
            let xd = gpu.htod(&x).map_err(err)?;
            let (wd, bd) = (gpu.htod(&w).map_err(err)?, gpu.htod(&b).map_err(err)?);
            let (mut out, mut mean, mut rstd) = (nan(gpu, n * c)?, nan(gpu, n)?, nan(gpu, n)?);
            k.forward(
                &mut out, &mut mean, &mut rstd, &xd, &wd, &bd, n, c, EPS as f32,
            )
            .map_err(err)?;
            let mut dx = gpu.htod(&dx0).map_err(err)?;
            let mut dp = gpu.htod(&dp0).map_err(err)?;
            let dyd = gpu.htod(&dy).map_err(err)?;
            k.backward(&mut dx, &mut dp, &dyd, &xd, &wd, &mean, &rstd, n, c)
                .map_err(err)?;
            let tag = format!("n{n} c{c}");
            rel(
                &format!("dinp {tag}"),
                &host(gpu, &dx, n * c),
                &rdx,
                SUM_REL,
            )?;
            let dp = host(gpu, &dp, 2 * c);
            rel(&format!("dweight {tag}"), &dp[..c], &rdw, SUM_REL)?;
            rel(&format!("dbias {tag}"), &dp[c..], &rdb, SUM_REL)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- gelu, bias

    fn gelu_fwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = GeluKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            for with_bias in [false, true] {
                let x = randn(rng, n * c, 3.0);
                let b = randn(rng, c, 1.0);
                let pre: Vec<f32> = if with_bias {
                    x.iter().enumerate().map(|(i, &v)| v + b[i % c]).collect()
                } else {
                    x.clone()
                };
                let mut want = vec![0.0; n * c];
                gelu_forward(&mut want, &f64s(&pre));
                let mut xd = gpu.htod(&x).map_err(err)?;
                let bd = gpu.htod(&b).map_err(err)?;
                let mut out = nan(gpu, n * c)?;
                let bias =
                    with_bias.then_some(&bd as &dyn cyb::gpu::cudarc::driver::DevicePtr<f32>);
                k.bias_gelu_forward(&mut xd, bias, &mut out, n, c)
                    .map_err(err)?;
                let tag = format!("n{n} c{c} bias {with_bias}");
                close(
                    &format!("pre {tag}"),
                    &host(gpu, &xd, n * c),
                    &f64s(&pre),
                    0.0,
                    0.0,
                )?;
                close(
                    &format!("gelu {tag}"),
                    &host(gpu, &out, n * c),
                    &want,
                    OP_ATOL,
                    OP_RTOL,
                )?;
            }
        }
        Ok(())
    }

    fn gelu_bwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = GeluKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            let x = randn(rng, n * c, 3.0);
            let dy = randn(rng, n * c, 1.0);
            let mut want = vec![0.0; n * c];
            gelu_backward(&mut want, &f64s(&x), &f64s(&dy));
            let (xd, dyd) = (gpu.htod(&x).map_err(err)?, gpu.htod(&dy).map_err(err)?);
            let mut dx = nan(gpu, n * c)?;
            k.backward(&mut dx, &xd, &dyd, n * c).map_err(err)?;
            close(
                &format!("dgelu n{n} c{c}"),
                &host(gpu, &dx, n * c),
                &want,
                OP_ATOL,
                OP_RTOL,
            )?;
        }
        Ok(())
    }

    /// The far left tail, where tanh(u) rounds to -1 in f32 and `1 + tanh(u)` loses every
    /// digit, while the true gradient is still above the tolerance (x in [-6.5, -4]):
    /// found by the emulator (a random x there failed `gelu_backward_matches_cpu`).
    fn gelu_bwd_tail(gpu: &Arc<GpuContext>) -> R {
        let k = GeluKernels::new(gpu).map_err(err)?;
        let n = 256;
        let x: Vec<f32> = (0..n).map(|i| -3.0 - 3.5 * i as f32 / n as f32).collect();
        let dy = vec![3.0f32; n]; // |dy| up to ~3 in gelu_backward_matches_cpu
        let mut want = vec![0.0; n];
        gelu_backward(&mut want, &f64s(&x), &f64s(&dy));
        let (xd, dyd) = (gpu.htod(&x).map_err(err)?, gpu.htod(&dy).map_err(err)?);
        let mut dx = nan(gpu, n)?;
        k.backward(&mut dx, &xd, &dyd, n).map_err(err)?;
        close("dgelu tail", &host(gpu, &dx, n), &want, OP_ATOL, OP_RTOL)
    }

    fn bias_residual(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = ResidualKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            let (y, b, r) = (
                randn(rng, n * c, 1.0),
                randn(rng, c, 1.0),
                randn(rng, n * c, 1.0),
            );
            let want: Vec<f64> = (0..n * c)
                .map(|i| ((y[i] + b[i % c]) + r[i]) as f64) // f32 arithmetic, as the CPU
                .collect();
            let mut yd = gpu.htod(&y).map_err(err)?;
            let (bd, rd) = (gpu.htod(&b).map_err(err)?, gpu.htod(&r).map_err(err)?);
            k.bias_residual(&mut yd, &bd, &rd, n, c).map_err(err)?;
            close("bias_residual", &host(gpu, &yd, n * c), &want, 0.0, 0.0)?;
            let mut yd = gpu.htod(&y).map_err(err)?;
            k.bias_add(&mut yd, &bd, n, c).map_err(err)?;
            let want: Vec<f64> = (0..n * c).map(|i| (y[i] + b[i % c]) as f64).collect();
            close("bias_add", &host(gpu, &yd, n * c), &want, 0.0, 0.0)?;
            // Column sums (bias gradients) accumulate onto what is there.
            let acc0 = randn(rng, c, 1.0);
            let mut acc = gpu.htod(&acc0).map_err(err)?;
            let xd = gpu.htod(&y).map_err(err)?;
            k.colsum(&mut acc, &xd, n, c).map_err(err)?;
            let mut want = f64s(&acc0);
            for row in y.chunks(c) {
                for (w, &v) in want.iter_mut().zip(row) {
                    *w += v as f64;
                }
            }
            rel(
                &format!("colsum n{n} c{c}"),
                &host(gpu, &acc, c),
                &want,
                SUM_REL,
            )?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- linear (cuBLAS)

    const LINEAR_SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 47, 3),
        (47, 31, 123),
        (300, 64, 3),
        (129, 96, 288),
    ];

    fn linear_fwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let lin = Linear::new(gpu).map_err(err)?;
        let res = ResidualKernels::new(gpu).map_err(err)?;
        for &(n, c, oc) in LINEAR_SHAPES {
            let (x, w, b) = (
                randn(rng, n * c, 1.0),
                randn(rng, oc * c, 0.5),
                randn(rng, oc, 1.0),
            );
            let mut want = vec![0.0; n * oc];
            linear_forward(&mut want, &f64s(&x), &f64s(&w), &f64s(&b), n, c, oc);
            let (xd, wd, bd) = (
                gpu.htod(&x).map_err(err)?,
                gpu.htod(&w).map_err(err)?,
                gpu.htod(&b).map_err(err)?,
            );
            let mut y = nan(gpu, n * oc)?;
            lin.forward(&mut y, &xd, &wd, n, c, oc).map_err(err)?;
            res.bias_add(&mut y, &bd, n, oc).map_err(err)?;
            rel(
                &format!("linear n{n} c{c} oc{oc}"),
                &host(gpu, &y, n * oc),
                &want,
                SUM_REL,
            )?;
        }
        Ok(())
    }

    fn linear_bwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let lin = Linear::new(gpu).map_err(err)?;
        let res = ResidualKernels::new(gpu).map_err(err)?;
        for &(n, c, oc) in LINEAR_SHAPES {
            let (x, w, dy) = (
                randn(rng, n * c, 1.0),
                randn(rng, oc * c, 0.5),
                randn(rng, n * oc, 1.0),
            );
            let (dw0, db0) = (randn(rng, oc * c, 1.0), randn(rng, oc, 1.0));
            let (mut rdx, mut rdw, mut rdb) = (vec![0.0; n * c], f64s(&dw0), f64s(&db0));
            linear_backward(
                &mut rdx,
                &mut rdw,
                &mut rdb,
                &f64s(&dy),
                &f64s(&x),
                &f64s(&w),
                n,
                c,
                oc,
            );
            let (xd, wd, dyd) = (
                gpu.htod(&x).map_err(err)?,
                gpu.htod(&w).map_err(err)?,
                gpu.htod(&dy).map_err(err)?,
            );
            let mut dx = nan(gpu, n * c)?;
            let mut dw = gpu.htod(&dw0).map_err(err)?;
            let mut db = gpu.htod(&db0).map_err(err)?;
            lin.backward_input(&mut dx, &dyd, &wd, n, c, oc)
                .map_err(err)?;
            lin.backward_weight(&mut dw, &dyd, &xd, n, c, oc)
                .map_err(err)?;
            res.colsum(&mut db, &dyd, n, oc).map_err(err)?;
            let tag = format!("n{n} c{c} oc{oc}");
            rel(
                &format!("dinp {tag}"),
                &host(gpu, &dx, n * c),
                &rdx,
                SUM_REL,
            )?;
            rel(
                &format!("dweight {tag}"),
                &host(gpu, &dw, oc * c),
                &rdw,
                SUM_REL,
            )?;
            rel(&format!("dbias {tag}"), &host(gpu, &db, oc), &rdb, SUM_REL)?;
        }
        Ok(())
    }

    /// logits = lnf · E^T and its backward, at a vocabulary that is not a multiple of
    /// anything (V+1 = 1001).
    fn tied_head(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let lin = Linear::new(gpu).map_err(err)?;
        let (n, d, v1) = (37, 48, 1001);
        let (h, e, dz) = (
            randn(rng, n * d, 1.0),
            randn(rng, v1 * d, 0.1),
            randn(rng, n * v1, 0.1),
        );
        let mut want = vec![0.0; n * v1];
        matmul(
            &mut want,
            &f64s(&h),
            Op::N,
            &f64s(&e),
            Op::T,
            n,
            d,
            v1,
            false,
        );
        let mut want_dh = vec![0.0; n * d];
        matmul(
            &mut want_dh,
            &f64s(&dz),
            Op::N,
            &f64s(&e),
            Op::N,
            n,
            v1,
            d,
            false,
        );
        let mut want_de = vec![0.0; v1 * d];
        matmul(
            &mut want_de,
            &f64s(&dz),
            Op::T,
            &f64s(&h),
            Op::N,
            v1,
            n,
            d,
            false,
        );
        let (hd, ed, dzd) = (
            gpu.htod(&h).map_err(err)?,
            gpu.htod(&e).map_err(err)?,
            gpu.htod(&dz).map_err(err)?,
        );
        let mut z = nan(gpu, n * v1)?;
        lin.forward(&mut z, &hd, &ed, n, d, v1).map_err(err)?;
        let mut dh = nan(gpu, n * d)?;
        lin.backward_input(&mut dh, &dzd, &ed, n, d, v1)
            .map_err(err)?;
        let mut de = gpu.zeros::<f32>(v1 * d).map_err(err)?;
        lin.backward_weight(&mut de, &dzd, &hd, n, d, v1)
            .map_err(err)?;
        rel("logits", &host(gpu, &z, n * v1), &want, SUM_REL)?;
        rel("dlnf", &host(gpu, &dh, n * d), &want_dh, SUM_REL)?;
        rel("dE", &host(gpu, &de, v1 * d), &want_de, SUM_REL)
    }

    // ---------------------------------------------------------------- embedding

    /// (B, K, T, d, V): K = 0 and K = 3, one position, B*T above one 256-row chunk.
    const EMB_SHAPES: &[(usize, usize, usize, usize, usize)] = &[
        (1, 0, 1, 1, 1),
        (1, 3, 1, 47, 5),
        (3, 0, 13, 33, 7),
        (2, 3, 150, 40, 11),
        (5, 3, 61, 129, 300),
    ];

    struct Emb {
        steps: StepShape,
        dims: TableDims,
        tokens: Vec<i32>,
        tables: Vec<f32>,
    }

    fn emb_case(rng: &mut CybRng, &(b, k, t, d, v): &(usize, usize, usize, usize, usize)) -> Emb {
        let dims = TableDims {
            vocab: v,
            t_max: t + 2,
            k_max: k + 1,
            d,
        };
        // Skewed tokens: some ids are frequent, some never appear.
        let tokens = (0..b * t)
            .map(|_| (rng.random_range(0..v).min(rng.random_range(0..v))) as i32)
            .collect();
        Emb {
            steps: StepShape {
                batch: b,
                pauses: k,
                seq: t,
            },
            dims,
            tokens,
            tables: randn(rng, dims.len(), 1.0),
        }
    }

    fn split_tables<T: Clone>(x: &[T], dims: TableDims) -> (Vec<T>, Vec<T>, Vec<T>) {
        let d = dims.d;
        let (a, rest) = x.split_at((dims.vocab + 1) * d);
        let (p, dd) = rest.split_at(dims.t_max * d);
        (a.to_vec(), p.to_vec(), dd.to_vec())
    }

    fn embedding_fwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = EmbeddingKernels::new(gpu).map_err(err)?;
        for shape in EMB_SHAPES {
            let e = emb_case(rng, shape);
            let (te, pe, de) = split_tables(&f64s(&e.tables), e.dims);
            let n = e.steps.rows() * e.dims.d;
            let mut want = vec![0.0; n];
            embedding_forward(
                &mut want,
                &e.tokens,
                &te,
                &pe,
                &de,
                e.steps,
                e.dims.d,
                e.dims.vocab,
            );
            let mut out = nan(gpu, n)?;
            let tok = gpu.htod(&e.tokens).map_err(err)?;
            let tab = gpu.htod(&e.tables).map_err(err)?;
            k.forward(&mut out, &tok, &tab, e.dims, e.steps)
                .map_err(err)?;
            // (E + P) + D in f32 versus f64: two roundings at most.
            close(
                &format!("embedding {shape:?}"),
                &host(gpu, &out, n),
                &want,
                OP_ATOL,
                OP_RTOL,
            )?;
        }
        Ok(())
    }

    fn embedding_bwd(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let k = EmbeddingKernels::new(gpu).map_err(err)?;
        for shape in EMB_SHAPES {
            let e = emb_case(rng, shape);
            let n = e.steps.rows() * e.dims.d;
            let dy = randn(rng, n, 1.0);
            let g0 = randn(rng, e.dims.len(), 1.0); // accumulated onto
            let (mut te, mut pe, mut de) = split_tables(&f64s(&g0), e.dims);
            embedding_backward(
                &mut te,
                &mut pe,
                &mut de,
                &f64s(&dy),
                &e.tokens,
                e.steps,
                e.dims.d,
                e.dims.vocab,
            );
            let index = TokenIndex::new(gpu, &e.tokens, e.dims.vocab).map_err(err)?;
            let mut g = gpu.htod(&g0).map_err(err)?;
            let dyd = gpu.htod(&dy).map_err(err)?;
            k.backward(&mut g, &dyd, &index, e.dims, e.steps)
                .map_err(err)?;
            let got = host(gpu, &g, e.dims.len());
            let (gt, gp, gd) = split_tables(&got, e.dims);
            rel(&format!("dtok {shape:?}"), &gt, &te, SUM_REL)?;
            rel(&format!("dpos {shape:?}"), &gp, &pe, SUM_REL)?;
            rel(&format!("ddepth {shape:?}"), &gd, &de, SUM_REL)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- AdamW

    /// d_head = 64: the head size the pause-attention kernels are sure to support
    /// (ANCHORS.md shapes use 64 and 128).
    fn small_config(pause_attention: PauseAttention) -> ModelConfig {
        ModelConfig {
            vocab: 37,
            d_model: 128,
            n_layer: 2,
            n_head: 2,
            t_max: 16,
            k_max: 3,
            pause_attention,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        }
    }

    fn flat(p: &Params<f32>) -> Vec<f32> {
        p.tensors()
            .iter()
            .flat_map(|(_, _, x)| x.to_vec())
            .collect()
    }

    fn random_params(c: &ModelConfig, rng: &mut CybRng, scale: f64) -> Params<f32> {
        let mut p = Params::zeros(c);
        for (_, _, x) in p.tensors_mut() {
            x.iter_mut()
                .for_each(|v| *v = (scale * rng.sample::<f64, _>(StandardNormal)) as f32);
        }
        p
    }

    fn adamw(gpu: &Arc<GpuContext>, rng: &mut CybRng, clip: bool) -> R {
        let c = small_config(PauseAttention::Shared);
        let mut p = random_params(&c, rng, 0.1);
        let mut pd = gpu.htod(&flat(&p)).map_err(err)?;
        let mut cpu = AdamW::new(0.9, 0.95, 1e-8, 0.1);
        let mut opt = GpuAdamW::new(gpu, &c, 0.9, 0.95, 1e-8, 0.1).map_err(err)?;
        for step in 0..3 {
            let mut g = random_params(&c, rng, 0.05);
            let gd = gpu.htod(&flat(&g)).map_err(err)?;
            // The norm is ~0.05*sqrt(#params) ~ 6: clip at 1 or not at all.
            let max = if clip { 1.0 } else { 1e9 };
            let lr = 1e-3 * (step + 1) as f32;
            let norm = clip_grad_norm(&mut g, max);
            cpu.step(&mut p, &g, lr);
            opt.step(&mut pd, &gd, lr, Some(max)).map_err(err)?;
            let got_norm = opt.grad_norm().map_err(err)? as f64;
            close("grad norm", &[got_norm], &[norm as f64], 0.0, 1e-6)?;
            close(
                &format!("params after step {}", step + 1),
                &host(gpu, &pd, p.num_params()),
                &f64s(&flat(&p)),
                1e-7,
                1e-5,
            )?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- bf16 storage

    // bf16 outputs carry 8 significant bits (unit roundoff 2^-8 = 3.9e-3): allow twice
    // that, i.e. at most 2x a naive bf16 rounding of the exact f64 result (STYLE.md).
    const BF16_ATOL: f64 = 1e-3;
    const BF16_RTOL: f64 = 7.9e-3;

    fn bf(x: &[f32]) -> Vec<half::bf16> {
        x.iter().map(|&v| half::bf16::from_f32(v)).collect()
    }

    /// The values the kernel sees: inputs rounded to bf16 first.
    fn bf_f64(x: &[f32]) -> Vec<f64> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f64())
            .collect()
    }

    fn bf_host(
        gpu: &GpuContext,
        x: &cyb::gpu::cudarc::driver::CudaSlice<half::bf16>,
        n: usize,
    ) -> Vec<f64> {
        let v = gpu.dtoh(x).expect("copy to host");
        v[..n].iter().map(|b| b.to_f64()).collect()
    }

    fn bf_nan(
        gpu: &GpuContext,
        n: usize,
    ) -> Result<cyb::gpu::cudarc::driver::CudaSlice<half::bf16>, Failed> {
        gpu.htod(&vec![half::bf16::NAN; n.max(1)]).map_err(err)
    }

    /// LayerNorm forward, GELU forward and backward, bias + residual and the embedding
    /// forward with bf16 activations (f32 parameters, f32 math).
    fn bf16_kernels(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let ln = LayerNormKernels::new(gpu).map_err(err)?;
        let ge = GeluKernels::new(gpu).map_err(err)?;
        let res = ResidualKernels::new(gpu).map_err(err)?;
        let emb = EmbeddingKernels::new(gpu).map_err(err)?;
        for &(n, c) in SHAPES {
            let tag = format!("n{n} c{c}");
            let x = randn(rng, n * c, 1.5);
            let (w, b) = (randn(rng, c, 1.0), randn(rng, c, 1.0));
            let xd = gpu.htod(&bf(&x)).map_err(err)?;
            let (wd, bd) = (gpu.htod(&w).map_err(err)?, gpu.htod(&b).map_err(err)?);
            let (mut out, mut mean, mut rstd) = (bf_nan(gpu, n * c)?, nan(gpu, n)?, nan(gpu, n)?);
            ln.forward(
                &mut out, &mut mean, &mut rstd, &xd, &wd, &bd, n, c, EPS as f32,
            )
            .map_err(err)?;
            let (mut ro, mut rm, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(
                &mut ro,
                &mut rm,
                &mut rs,
                &bf_f64(&x),
                &f64s(&w),
                &f64s(&b),
                c,
                EPS,
            );
            close(
                &format!("bf16 layernorm {tag}"),
                &bf_host(gpu, &out, n * c),
                &ro,
                BF16_ATOL,
                BF16_RTOL,
            )?;

            let mut pre = gpu.htod(&bf(&x)).map_err(err)?;
            let mut g = bf_nan(gpu, n * c)?;
            ge.bias_gelu_forward(&mut pre, None, &mut g, n, c)
                .map_err(err)?;
            let mut want = vec![0.0; n * c];
            gelu_forward(&mut want, &bf_f64(&x));
            close(
                &format!("bf16 gelu {tag}"),
                &bf_host(gpu, &g, n * c),
                &want,
                BF16_ATOL,
                BF16_RTOL,
            )?;
            let dy = randn(rng, n * c, 1.0);
            let dyd = gpu.htod(&bf(&dy)).map_err(err)?;
            let mut dx = bf_nan(gpu, n * c)?;
            ge.backward(&mut dx, &xd, &dyd, n * c).map_err(err)?;
            gelu_backward(&mut want, &bf_f64(&x), &bf_f64(&dy));
            close(
                &format!("bf16 dgelu {tag}"),
                &bf_host(gpu, &dx, n * c),
                &want,
                BF16_ATOL,
                BF16_RTOL,
            )?;

            let r = randn(rng, n * c, 1.0);
            let rd = gpu.htod(&bf(&r)).map_err(err)?;
            let mut y = gpu.htod(&bf(&x)).map_err(err)?;
            res.bias_residual(&mut y, &bd, &rd, n, c).map_err(err)?;
            let (xb, rb) = (bf_f64(&x), bf_f64(&r));
            // The kernel's exact arithmetic: f32 sums, each stored value rounded to bf16.
            let want: Vec<f64> = (0..n * c)
                .map(|i| {
                    let lin = half::bf16::from_f32(xb[i] as f32 + b[i % c]).to_f32();
                    half::bf16::from_f32(lin + rb[i] as f32).to_f64()
                })
                .collect();
            close(
                &format!("bf16 bias_residual {tag}"),
                &bf_host(gpu, &y, n * c),
                &want,
                0.0,
                0.0,
            )?;
        }
        for shape in EMB_SHAPES {
            let e = emb_case(rng, shape);
            let (te, pe, de) = split_tables(&f64s(&e.tables), e.dims);
            let n = e.steps.rows() * e.dims.d;
            let mut want = vec![0.0; n];
            embedding_forward(
                &mut want,
                &e.tokens,
                &te,
                &pe,
                &de,
                e.steps,
                e.dims.d,
                e.dims.vocab,
            );
            let mut out = bf_nan(gpu, n)?;
            let tok = gpu.htod(&e.tokens).map_err(err)?;
            let tab = gpu.htod(&e.tables).map_err(err)?;
            emb.forward(&mut out, &tok, &tab, e.dims, e.steps)
                .map_err(err)?;
            close(
                &format!("bf16 embedding {shape:?}"),
                &bf_host(gpu, &out, n),
                &want,
                BF16_ATOL,
                BF16_RTOL,
            )?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- whole model

    /// A random model whose every tensor is perturbed (biases and LayerNorm gains too).
    fn random_model(rng: &mut CybRng, mode: PauseAttention) -> Model<f32> {
        let c = small_config(mode);
        let mut m: Model<f32> = Model::init(c.clone(), rng).expect("init");
        for (_, _, x) in m.params.tensors_mut() {
            x.iter_mut()
                .for_each(|v| *v += (0.02 * rng.sample::<f64, _>(StandardNormal)) as f32);
        }
        m
    }

    /// (tokens, targets) for B = 3, T = 13, a few ignored targets.
    fn batch(rng: &mut CybRng, c: &ModelConfig) -> (Vec<i32>, Vec<i32>, usize, usize) {
        let (b, t) = (3, 13);
        let tokens = (0..b * t)
            .map(|_| rng.random_range(0..c.vocab) as i32)
            .collect();
        let targets = (0..b * t)
            .map(|i| {
                if i % 7 == 3 {
                    -1
                } else {
                    rng.random_range(0..c.vocab) as i32
                }
            })
            .collect();
        (tokens, targets, b, t)
    }

    fn objective(name: &str) -> Objective {
        common::all_objectives()
            .into_iter()
            .find(|o| o.name() == name)
            .expect("objective name")
    }

    fn model_step(
        gpu: &Arc<GpuContext>,
        rng: &mut CybRng,
        mode: PauseAttention,
        obj: &str,
        k: usize,
        precision: Precision,
    ) -> R {
        let (tol, loss_tol) = match precision {
            Precision::F32 => (STEP_REL, STEP_REL),
            Precision::Bf16 => (BF16_STEP_REL, BF16_LOSS_REL),
        };
        let m = random_model(rng, mode);
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let obj = objective(obj).resolve(k).map_err(err)?;
        let mut want_g = Params::zeros(&m.config);
        let want = m
            .forward_backward(&tokens, &targets, b, t, k, &obj, &mut want_g)
            .map_err(err)?;
        let mut g = GpuModel::with_precision(gpu, &m, precision).map_err(err)?;
        let got = g
            .forward_backward(&tokens, &targets, b, t, k, &obj)
            .map_err(err)?
            .to_step_output()
            .map_err(err)?;
        close("loss", &[got.loss], &[want.loss], 1e-6, loss_tol)?;
        // E[pauses] of a fresh model is small (~ d_0): its relative error is that of the
        // DK probabilities, i.e. of the logits (the step's per-element bound), not that of
        // the loss, a sum dominated by ln V (bf16 with loss_tol = u failed by 4e-3 > u
        // for one seed in CI).
        close(
            "mean pauses",
            &[got.stats.mean_pauses],
            &[want.stats.mean_pauses],
            1e-6,
            tol,
        )?;
        let got_g = g.grads_to_cpu().map_err(err)?;
        for ((name, _, gx), (_, _, wx)) in got_g.tensors().iter().zip(want_g.tensors()) {
            rel(&format!("grad {name}"), &f64s(gx), &f64s(wx), tol)?;
        }
        Ok(())
    }

    /// A model with a non-zero DK bias (the paper's prior 0.9) and objectives resolved
    /// without one: the GPU step, fused and unfused head, gives the raw CPU loss of the
    /// model's logits with the bias passed explicitly, and the CPU model's gradients (the
    /// CPU model's own bias is checked against the SPEC vectors in tests/model_cpu.rs;
    /// their d_head = 8 is below what the kernels take). The bias moves every loss but
    /// `ce_final`'s far beyond `STEP_REL`, so a step without it fails; an objective with
    /// another non-zero bias is a `Param` error.
    fn own_dk_bias(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let mut m = random_model(rng, PauseAttention::Shared);
        let without_bias = m.clone();
        let bias = cyb::objective::dk_bias_from_prior(0.9, m.config.vocab).map_err(err)?;
        m.config.dk_bias = bias;
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let k = m.config.k_max;
        let shape = LossShape {
            batch: b,
            pauses: k,
            seq: t,
            vocab: m.config.vocab,
        };
        let logits = m.forward(&tokens, b, t, k).map_err(err)?;
        let mut g = GpuModel::from_cpu(gpu, &m).map_err(err)?;
        for head in [HeadMode::default(), HeadMode::Unfused] {
            g.set_head(head);
            for objective in common::all_objectives() {
                let what = format!("{} {head:?}", objective.name());
                let obj = objective.resolve(k).map_err(err)?;
                let biased = obj.clone().with_dk_bias(bias).map_err(err)?;
                let want = cpu_loss(
                    &logits,
                    &targets,
                    shape,
                    &biased,
                    Reduction::Mean,
                    None,
                    None,
                )
                .map_err(err)?
                .loss;
                let got = g
                    .forward_backward(&tokens, &targets, b, t, k, &obj)
                    .map_err(err)?
                    .loss()
                    .map_err(err)?;
                close(&format!("{what} loss"), &[got], &[want], 1e-6, STEP_REL)?;
                let mut want_g = Params::zeros(&m.config);
                m.forward_backward(&tokens, &targets, b, t, k, &obj, &mut want_g)
                    .map_err(err)?;
                let got_g = g.grads_to_cpu().map_err(err)?;
                for ((name, _, gx), (_, _, wx)) in got_g.tensors().iter().zip(want_g.tensors()) {
                    rel(
                        &format!("{what} grad {name}"),
                        &f64s(gx),
                        &f64s(wx),
                        STEP_REL,
                    )?;
                }
                // The check above must be able to fail: without the bias the gradients
                // differ by far more than its tolerance. Gradients, not the mean loss: a
                // scalar can move by less than rounding for some draws (a fresh model
                // predicts alike at every step, which blinds `marginal` to the halting
                // distribution), while the halting distribution reweights every step's
                // gradient. ce_final reads step K alone and never d_k.
                let mut off_g = Params::zeros(&m.config);
                without_bias
                    .forward_backward(&tokens, &targets, b, t, k, &obj, &mut off_g)
                    .map_err(err)?;
                let (w, o) = (f64s(&flat(&want_g)), f64s(&flat(&off_g)));
                let diff = w.iter().zip(&o).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
                let moved = (diff / w.iter().map(|a| a * a).sum::<f64>().max(1e-300)).sqrt();
                let reads_dk = objective.name() != "ce_final";
                if reads_dk && moved <= 10.0 * STEP_REL {
                    return Err(format!(
                        "{what}: the gradients without the bias differ by only {moved:e} \
                         (norm-wise): the check cannot tell a dropped bias"
                    )
                    .into());
                }
                if !reads_dk && moved > 1e-12 {
                    return Err(format!("{what}: ce_final moved by {moved:e} with d_k").into());
                }
                let other = obj.with_dk_bias(bias + 1.0).map_err(err)?;
                match g.forward_backward(&tokens, &targets, b, t, k, &other) {
                    Err(CybError::Param(msg)) if msg.contains("dk_bias") => {}
                    Err(e) => return Err(format!("{what}: another bias gave {e}").into()),
                    Ok(_) => return Err(format!("{what}: another bias was accepted").into()),
                }
            }
        }
        Ok(())
    }

    fn forward(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        for mode in [PauseAttention::Shared, PauseAttention::Private] {
            let m = random_model(rng, mode);
            let (tokens, _, b, t) = batch(rng, &m.config);
            let mut g = GpuModel::from_cpu(gpu, &m).map_err(err)?;
            for k in [0, 1, 3] {
                let want = m.forward(&tokens, b, t, k).map_err(err)?;
                let got = g.forward_to_host(&tokens, b, t, k).map_err(err)?;
                rel(
                    &format!("{mode} logits K={k}"),
                    &f64s(&got),
                    &f64s(&want),
                    STEP_REL,
                )?;
            }
        }
        Ok(())
    }

    fn deterministic(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let obj = Objective::ap_default().resolve(3).map_err(err)?;
        let mut g = GpuModel::from_cpu(gpu, &m).map_err(err)?;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let loss = g
                .forward_backward(&tokens, &targets, b, t, 3, &obj)
                .map_err(err)?
                .loss()
                .map_err(err)?;
            runs.push((loss.to_bits(), flat(&g.grads_to_cpu().map_err(err)?)));
        }
        if runs[0].0 != runs[1].0 {
            return Err("loss differs between two identical runs".into());
        }
        let same = runs[0]
            .1
            .iter()
            .zip(&runs[1].1)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err("gradients differ bitwise between two identical runs".into());
        }
        Ok(())
    }

    /// Records each reported range with the gradients it holds at the report (a copy,
    /// which waits for the stream: everything queued before the report has run).
    struct RangeLog {
        gpu: Arc<GpuContext>,
        seen: Vec<(std::ops::Range<usize>, Vec<f32>)>,
    }

    impl GradReady for RangeLog {
        fn ready(
            &mut self,
            grads: &mut CudaSlice<f32>,
            range: std::ops::Range<usize>,
        ) -> cyb::Result<()> {
            let values = self.gpu.dtoh(&grads.slice(range.clone()))?;
            self.seen.push((range, values));
            Ok(())
        }
    }

    /// The backward's [`GradReady`] hook, f32 with the fused head and bf16 with the
    /// unfused one (the head decides how `tok_emb`'s gradient starts): the reported ranges
    /// descend through the flat buffer, each ending where the previous one started, and
    /// cover it (2 + 6 per layer: ln_f, each block's six weight/bias pairs, the tables);
    /// each holds its final gradients already when reported (what a bucketed all-reduce
    /// launched then would read); the gradients are the bits of the plain backward.
    fn reports_final_ranges(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let obj = Objective::ap_default().resolve(3).map_err(err)?;
        for (precision, head) in [
            (Precision::F32, HeadMode::default()),
            (Precision::Bf16, HeadMode::Unfused),
        ] {
            let what = format!("{precision:?} {head:?}");
            let mut g = GpuModel::with_precision(gpu, &m, precision).map_err(err)?;
            g.set_head(head);
            g.forward_backward(&tokens, &targets, b, t, 3, &obj)
                .map_err(err)?;
            let plain = flat(&g.grads_to_cpu().map_err(err)?);
            let mut log = RangeLog {
                gpu: gpu.clone(),
                seen: Vec::new(),
            };
            g.forward_backward_observed(&tokens, &targets, b, t, 3, &obj, &mut log)
                .map_err(err)?;
            let got = flat(&g.grads_to_cpu().map_err(err)?);
            if got
                .iter()
                .zip(&plain)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err(format!("{what}: observed gradients differ from plain").into());
            }
            let want = 2 + 6 * m.config.n_layer;
            if log.seen.len() != want {
                return Err(format!("{what}: {} ranges, want {want}", log.seen.len()).into());
            }
            let mut end = got.len();
            for (range, values) in &log.seen {
                if range.end != end || range.is_empty() {
                    return Err(format!("{what}: range {range:?} after start {end}").into());
                }
                end = range.start;
                let fin = &got[range.clone()];
                if values
                    .iter()
                    .zip(fin)
                    .any(|(a, b)| a.to_bits() != b.to_bits())
                {
                    return Err(format!("{what}: range {range:?} not final when reported").into());
                }
            }
            if end != 0 {
                return Err(format!("{what}: the ranges stop at {end}, not 0").into());
            }
        }
        Ok(())
    }

    /// 50 steps of AdamW with clipping, from the same model and on the same batches, on
    /// the CPU reference (f32) and on the GPU in `precision`: the two loss curves (CPU,
    /// GPU). A learnable task (the target is a fixed function of the token), so that the
    /// loss really falls and the curves are compared where they move.
    fn train_side_by_side(
        gpu: &Arc<GpuContext>,
        rng: &mut CybRng,
        m: &Model<f32>,
        k: usize,
        lr: f32,
        precision: Precision,
    ) -> Result<(Vec<f64>, Vec<f64>), Failed> {
        let c = m.config.clone();
        let obj = Objective::ap_default().resolve(k).map_err(err)?;
        let mut cpu = m.clone();
        let mut g = GpuModel::with_precision(gpu, m, precision).map_err(err)?;
        g.optimizer_mut().weight_decay = 0.1;
        let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
        let mut grads = Params::zeros(&c);
        let mut ws = Workspace::new();
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let (tokens, targets, b, t) = batch(rng, &c);
            let targets: Vec<i32> = tokens
                .iter()
                .zip(&targets)
                .map(|(&x, &y)| {
                    if y < 0 {
                        -1
                    } else {
                        (3 * x + 1) % c.vocab as i32
                    }
                })
                .collect();
            let out = cpu
                .forward_backward_with(&mut ws, &tokens, &targets, b, t, k, &obj, &mut grads)
                .map_err(err)?;
            clip_grad_norm(&mut grads, 1.0);
            opt.step(&mut cpu.params, &grads, lr);
            lc.push(out.loss);
            let step = g
                .forward_backward(&tokens, &targets, b, t, k, &obj)
                .map_err(err)?;
            g.step(lr, 1.0).map_err(err)?;
            lg.push(step.loss().map_err(err)?);
        }
        Ok((lc, lg))
    }

    /// 50 steps of AdamW with clipping on both backends from the same model and
    /// batches: the loss curves agree.
    fn curves(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let k = 3;
        // lr 1e-3, not the trainer's 3e-3: at 3e-3 this 50-step run is chaotic (one bf16
        // rounding of the initial weights moved the CPU curve's last-10 mean from 1.67 to
        // 3.39), so f32 GEMM-order differences alone broke the 1% agreement by step 15
        // (CYB_TEST_SEED=1796176187460660030); at 1e-3 that perturbation moves it < 1%.
        const LR: f32 = 1e-3;
        let (lc, lg) = train_side_by_side(gpu, rng, &m, k, LR, Precision::F32)?;
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        if mean(&lc[45..]) >= mean(&lc[..5]) {
            return Err(format!("the CPU loss did not decrease: {lc:?}").into());
        }
        // f32 rounding differences (different GEMM and reduction orders) are amplified by
        // Adam's normalisation step after step: over the first 25 steps the curves agree to
        // 1%, and a wrong gradient anywhere moves them far more than that. Later the two
        // trajectories drift apart chaotically (seen on the emulator: 2-4% from step ~34
        // for some seeds, with correct kernels), so there only their level is compared:
        // the mean of the last 10 losses within 10%.
        close("loss curve", &lg[..25], &lc[..25], 2e-3, 1e-2)?;
        close(
            "late loss level",
            &[mean(&lg[40..])],
            &[mean(&lc[40..])],
            2e-3,
            1e-1,
        )
    }

    // ---------------------------------------------------------------- mixed precision

    // Tolerances of the bf16 step (Precision::Bf16) against the f32 CPU reference.
    //
    // bf16 keeps 8 significant bits: one round-to-nearest moves a value by at most
    // u = 2^-8 = 3.9e-3 of itself. Everything else in the step is f32 (accumulation,
    // statistics, softmax, loss: errors near 1e-6, negligible here), so the error of a
    // tensor is the sum of the bf16 roundings on its path, each carried forward by the
    // normalised layers with a gain of order one. Roundings of different elements are
    // independent, so a tensor's norm-wise relative error grows like sqrt(R)*u for R
    // roundings on its path (R*u would need every rounding to push the same way in every
    // element). Counting for the test model (L = 2 blocks):
    // - forward, per block: the bf16 copies of W_qkv, W_o, W_1, W_2 (4), the stored
    //   activations ln1, qkv, atty, mid, ln2, fc, gelu, out (8) and the probabilities
    //   that the tensor-core attention multiplies with V in bf16 (1): 13; plus the
    //   embedding, ln_f, the tok_emb copy and the logits (4): R = 2*13 + 4 = 30 for the
    //   logits, sqrt(30)*u = 2.1e-2;
    // - backward, per block: dgelu, dfc, dln twice, datty, dqkv, the residual gradient
    //   after each half (2) and attention's bf16 dS and P operands (2): 10; plus dlogits
    //   and dln_f (2): the deepest gradient (the tables, block 0) sits on R = 30 + 22 =
    //   52 roundings, sqrt(52)*u = 2.8e-2.
    // Both get a factor 2 for the gains above one (LayerNorm's 1/std, the softmax's
    // sharpening), so: logits 4.3e-2, gradients 5.6e-2. A wrong index, mask or transpose
    // gives errors of order one, far above these.
    const U_BF16: f64 = 1.0 / 256.0;
    const BF16_LOGITS_REL: f64 = 2.0 * 5.48 * U_BF16; // 2 sqrt(30) u
    const BF16_STEP_REL: f64 = 2.0 * 7.22 * U_BF16; // 2 sqrt(52) u
                                                    // The loss is a mean over B*T*(K+1) = 156 terms whose logit errors are independent
                                                    // between positions and, within a row, weighted by (p - onehot), which sums to zero
                                                    // (a shift common to the row cancels): its relative error is far below the logits'.
                                                    // One bf16 rounding, u, bounds it with room; the mean E[pauses] likewise.
    const BF16_LOSS_REL: f64 = U_BF16;

    /// The mixed-precision GEMMs of the bf16 step, with the row stride of the `[N, OC]`
    /// side (`ld > OC`, as the padded logits): forward (bf16 out), input gradient (bf16
    /// out) and the f32-accumulated weight gradient (bf16 in, **+=** into f32), against
    /// an f64 reference on the same bf16 inputs. The padding of `out` is NaN before and
    /// must stay NaN (never written); the padding of `dout` is NaN and must not be read.
    fn linear_bf16_strided(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let lin = Linear::new(gpu).map_err(err)?;
        for &(n, c, oc, ld) in &[(1, 1, 1, 1), (13, 47, 39, 64), (300, 33, 65, 128)] {
            let tag = format!("n{n} c{c} oc{oc} ld{ld}");
            let (x, w) = (randn(rng, n * c, 1.0), randn(rng, oc * c, 0.5));
            let (xb, wb) = (bf_f64(&x), bf_f64(&w));
            let (xd, wd) = (
                gpu.htod(&bf(&x)).map_err(err)?,
                gpu.htod(&bf(&w)).map_err(err)?,
            );
            // Forward: every stored output is one bf16 rounding of an f32-accumulated
            // sum over c <= 47 products of exact bf16 values (f32 error ~1e-6): the
            // elementwise bf16 tolerance.
            let mut y = bf_nan(gpu, (n - 1) * ld + oc)?;
            lin.forward_ld(&mut y, &xd, &wd, n, c, oc, ld)
                .map_err(err)?;
            let yh = gpu.dtoh(&y).map_err(err)?;
            let mut got = Vec::with_capacity(n * oc);
            let mut want = Vec::with_capacity(n * oc);
            for r in 0..n {
                for j in 0..oc {
                    got.push(yh[r * ld + j].to_f64());
                    want.push((0..c).map(|i| xb[r * c + i] * wb[j * c + i]).sum::<f64>());
                }
                if let Some(j) =
                    (oc..ld).find(|&j| r * ld + j < yh.len() && !yh[r * ld + j].is_nan())
                {
                    return Err(format!("{tag}: padding [{r}, {j}] was written").into());
                }
            }
            close(
                &format!("bf16 linear {tag}"),
                &got,
                &want,
                BF16_ATOL,
                BF16_RTOL,
            )?;
            // dout with NaN padding: must not be read.
            let dy = randn(rng, n * oc, 1.0);
            let dyb = bf_f64(&dy);
            let mut dy_pad = vec![half::bf16::NAN; (n - 1) * ld + oc];
            for r in 0..n {
                for j in 0..oc {
                    dy_pad[r * ld + j] = half::bf16::from_f32(dy[r * oc + j]);
                }
            }
            let dyd = gpu.htod(&dy_pad).map_err(err)?;
            let mut dx = bf_nan(gpu, n * c)?;
            lin.backward_input_ld(&mut dx, &dyd, &wd, n, c, oc, ld)
                .map_err(err)?;
            let want: Vec<f64> = (0..n * c)
                .map(|e| {
                    let (r, i) = (e / c, e % c);
                    (0..oc).map(|j| dyb[r * oc + j] * wb[j * c + i]).sum()
                })
                .collect();
            close(
                &format!("bf16 dinp {tag}"),
                &bf_host(gpu, &dx, n * c),
                &want,
                BF16_ATOL,
                BF16_RTOL,
            )?;
            // Weight gradient: f32 output accumulated onto dw0, products of exact bf16
            // values summed in f32 over n <= 300 rows: f32 rounding only (SUM_REL).
            let dw0 = randn(rng, oc * c, 1.0);
            let mut dw = gpu.htod(&dw0).map_err(err)?;
            lin.backward_weight_f32(&mut dw, &dyd, &xd, n, c, oc, ld)
                .map_err(err)?;
            let want: Vec<f64> = (0..oc * c)
                .map(|e| {
                    let (j, i) = (e / c, e % c);
                    dw0[e] as f64 + (0..n).map(|r| dyb[r * oc + j] * xb[r * c + i]).sum::<f64>()
                })
                .collect();
            rel(
                &format!("f32 dweight from bf16 {tag}"),
                &host(gpu, &dw, oc * c),
                &want,
                SUM_REL,
            )?;
            // A stride below the row is a shape error, before any launch.
            if oc > 1 && lin.forward_ld(&mut y, &xd, &wd, n, c, oc, oc - 1).is_ok() {
                return Err(format!("{tag}: a row stride below OC was accepted").into());
            }
        }
        Ok(())
    }

    /// `cublasGemmEx` with A and B of different types (f32 and bf16) is not a
    /// combination cuBLAS supports: it fails (CUBLAS_STATUS_NOT_SUPPORTED) on the GPU,
    /// and the emulated cuBLAS must fail the same way rather than compute something.
    fn gemm_ex_refuses(gpu: &Arc<GpuContext>) -> R {
        use cyb::gpu::cudarc::cublas::{result::gemm_ex, sys, CudaBlas};
        use cyb::gpu::cudarc::driver::{DevicePtr, DevicePtrMut};
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(|e| format!("{e:?}"))?;
        let a = gpu.htod(&[1.0f32; 4]).map_err(err)?;
        let b = gpu.htod(&[half::bf16::ONE; 4]).map_err(err)?;
        let mut c = gpu.htod(&[0.0f32; 4]).map_err(err)?;
        let (one, zero) = (1.0f32, 0.0f32);
        let s = gpu.stream();
        let (ap, _g1) = a.device_ptr(s);
        let (bp, _g2) = b.device_ptr(s);
        let (cp, _g3) = c.device_ptr_mut(s);
        // SAFETY: 2x2 matrices of 4 elements each, host f32 scalars; the call is
        // expected to be refused before touching memory.
        let r = unsafe {
            gemm_ex(
                *blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasOperation_t::CUBLAS_OP_N,
                2,
                2,
                2,
                (&one) as *const f32 as *const _,
                ap as *const _,
                sys::cudaDataType_t::CUDA_R_32F,
                2,
                bp as *const _,
                sys::cudaDataType_t::CUDA_R_16BF,
                2,
                (&zero) as *const f32 as *const _,
                cp as *mut _,
                sys::cudaDataType_t::CUDA_R_32F,
                2,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        match r {
            Err(e) if format!("{e:?}").contains("NOT_SUPPORTED") => Ok(()),
            Err(e) => Err(format!("refused, but with {e:?} instead of NOT_SUPPORTED").into()),
            Ok(()) => Err("cublasGemmEx accepted f32 A with bf16 B".into()),
        }
    }

    /// The logits of the bf16 forward against the f32 CPU forward: both modes, K in
    /// {0, 1, 3}, T = 13 (not a multiple of the 64-row attention tiles), and a model
    /// with V = 38 (V + 1 = 39 logits per row, odd) at T = 5.
    fn forward_bf16(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        for mode in [PauseAttention::Shared, PauseAttention::Private] {
            let m = random_model(rng, mode);
            let (tokens, _, b, t) = batch(rng, &m.config);
            let mut g = GpuModel::with_precision(gpu, &m, Precision::Bf16).map_err(err)?;
            for k in [0, 1, 3] {
                let want = m.forward(&tokens, b, t, k).map_err(err)?;
                let got = g.forward_to_host(&tokens, b, t, k).map_err(err)?;
                rel(
                    &format!("bf16 {mode} logits K={k}"),
                    &f64s(&got),
                    &f64s(&want),
                    BF16_LOGITS_REL,
                )?;
            }
        }
        let mut c = small_config(PauseAttention::Private);
        c.vocab = 38;
        let m: Model<f32> = Model::init(c.clone(), rng).map_err(err)?;
        let (b, t, k) = (2, 5, 2);
        let tokens: Vec<i32> = (0..b * t)
            .map(|_| rng.random_range(0..c.vocab) as i32)
            .collect();
        let mut g = GpuModel::with_precision(gpu, &m, Precision::Bf16).map_err(err)?;
        let want = m.forward(&tokens, b, t, k).map_err(err)?;
        let got = g.forward_to_host(&tokens, b, t, k).map_err(err)?;
        rel(
            "bf16 logits V+1 = 39",
            &f64s(&got),
            &f64s(&want),
            BF16_LOGITS_REL,
        )
    }

    fn deterministic_bf16(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Private);
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let obj = Objective::ap_default().resolve(3).map_err(err)?;
        let mut g = GpuModel::with_precision(gpu, &m, Precision::Bf16).map_err(err)?;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let loss = g
                .forward_backward(&tokens, &targets, b, t, 3, &obj)
                .map_err(err)?
                .loss()
                .map_err(err)?;
            let bits: Vec<u32> = flat(&g.grads_to_cpu().map_err(err)?)
                .iter()
                .map(|x| x.to_bits())
                .collect();
            runs.push((loss.to_bits(), bits));
        }
        if runs[0] != runs[1] {
            return Err("bf16: loss or gradients differ bitwise between two identical runs".into());
        }
        Ok(())
    }

    /// After a bf16 step the masters are f32 values updated by f32 AdamW from the f32
    /// gradients (the CPU's AdamW applied to the GPU's own gradients gives the same
    /// parameters to f32 rounding), they are not rounded to bf16, and the bf16 copy is
    /// exactly round-to-nearest-even of the masters; a checkpoint holds the masters.
    fn bf16_masters(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let (tokens, targets, b, t) = batch(rng, &m.config);
        let obj = Objective::ap_default().resolve(2).map_err(err)?;
        let mut g = GpuModel::with_precision(gpu, &m, Precision::Bf16).map_err(err)?;
        g.optimizer_mut().weight_decay = 0.1;
        let check_copy = |g: &GpuModel, when: &str| -> R {
            let master = gpu.dtoh(g.params_device()).map_err(err)?;
            let copy = gpu
                .dtoh(
                    g.params_bf16_device()
                        .ok_or("a bf16 model has a bf16 copy")?,
                )
                .map_err(err)?;
            if let Some(i) = (0..master.len()).find(|&i| half::bf16::from_f32(master[i]) != copy[i])
            {
                return Err(format!(
                    "{when}: bf16 copy [{i}] = {} but round(master {}) = {}",
                    copy[i],
                    master[i],
                    half::bf16::from_f32(master[i])
                )
                .into());
            }
            Ok(())
        };
        check_copy(&g, "after the upload")?;
        let mut cpu = m.clone();
        let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
        for step in 1..=2 {
            g.forward_backward(&tokens, &targets, b, t, 2, &obj)
                .map_err(err)?;
            let mut grads = g.grads_to_cpu().map_err(err)?;
            g.step(1e-2, 1.0).map_err(err)?;
            clip_grad_norm(&mut grads, 1.0);
            opt.step(&mut cpu.params, &grads, 1e-2);
            let got = g.to_cpu().map_err(err)?;
            close(
                &format!("masters after step {step}"),
                &f64s(&flat(&got.params)),
                &f64s(&flat(&cpu.params)),
                1e-7,
                1e-5,
            )?;
            check_copy(&g, &format!("after step {step}"))?;
            // Masters stored back in bf16 (the copy written over them, or an update
            // computed in bf16) would all lie on the bf16 grid; f32 masters almost never
            // do (one value in 2^16 by chance).
            let masters = flat(&got.params);
            let off_grid = masters
                .iter()
                .filter(|&&x| half::bf16::from_f32(x).to_f32() != x)
                .count();
            if off_grid * 2 < masters.len() {
                return Err(format!(
                    "only {off_grid} of {} masters lie off the bf16 grid: are they rounded?",
                    masters.len()
                )
                .into());
            }
        }
        Ok(())
    }

    /// 50 steps of AdamW in bf16 on the GPU and in f32 on the CPU, same model and
    /// batches as `training_curves_agree_k3`, at a learning rate of 1e-3 instead of
    /// 3e-3. At 3e-3 this task's training is chaotic: measured on the CPU alone in f32,
    /// multiplying every initial weight by (1 + u N(0,1)) with u = 2^-8 (one bf16
    /// rounding) moved the mean of the last 10 losses from 1.67 to 3.39 for one seed and
    /// from 0.85 to 1.42 for another, so no bf16 run could be held to the f32 curve
    /// there. At 1e-3 the loss falls further and smoothly (3.6 to ~0.3 in 50 steps) and
    /// the same perturbation moved the last-10 mean by under 1% on five seeds: the
    /// comparison then measures bf16's arithmetic, not the chaos of the trajectory.
    fn curves_bf16(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        const LR: f32 = 1e-3;
        let m = random_model(rng, PauseAttention::Shared);
        let k = 3;
        let (lc, lg) = train_side_by_side(gpu, rng, &m, k, LR, Precision::Bf16)?;
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        if std::env::var("CYB_DEBUG_CURVES").is_ok() {
            for i in 0..50 {
                eprintln!("step {i}: f32 cpu {:.4} bf16 gpu {:.4}", lc[i], lg[i]);
            }
        }
        if mean(&lg[45..]) >= mean(&lg[..5]) {
            return Err(format!("the bf16 loss did not decrease: {lg:?}").into());
        }
        // Early steps: the bf16 loss differs from the f32 one by the forward's error
        // (below BF16_LOSS_REL = 0.4% per step) plus what the updates so far add; Adam
        // normalises the gradient, so a relative gradient error e (~BF16_STEP_REL/2 in
        // practice) moves each update by about e of its size, and in this smooth regime
        // those differences do not grow fast: 2% for the first 25 steps. Then only the
        // level is compared, as c0de4d3 learned for f32: the mean of the last 10 losses
        // within 5%. Seen on the emulator (seeds 1796167737499015260 and 11 among
        // others): every step within 0.7%, the last-10 means within 0.5%; the margins
        // leave room for the hardware's own rounding (tensor-core accumulation order,
        // FMA). A wrong or stale gradient, or a bf16 copy not refreshed after a step,
        // leaves the loss near its start (3.6) instead of ~0.3 and misses both.
        close("bf16 loss curve", &lg[..25], &lc[..25], 2e-3, 2e-2)?;
        close(
            "bf16 late loss level",
            &[mean(&lg[40..])],
            &[mean(&lc[40..])],
            2e-3,
            5e-2,
        )
    }

    // ---------------------------------------------------------------- checkpoints

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "cyb_gpu_model_{name}_{}.safetensors",
            std::process::id()
        ))
    }

    fn ckpt_gpu_to_cpu(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let g = GpuModel::from_cpu(gpu, &m).map_err(err)?;
        let path = temp("g2c");
        checkpoint::save(&path, &g.to_cpu().map_err(err)?).map_err(err)?;
        let loaded = checkpoint::load(&path).map_err(err)?;
        let _ = std::fs::remove_file(&path);
        if loaded != m {
            return Err("a checkpoint written from the GPU model differs from the original".into());
        }
        Ok(())
    }

    fn ckpt_cpu_to_gpu(gpu: &Arc<GpuContext>, rng: &mut CybRng) -> R {
        let m = random_model(rng, PauseAttention::Shared);
        let path = temp("c2g");
        checkpoint::save(&path, &m).map_err(err)?;
        let loaded = checkpoint::load(&path).map_err(err)?;
        let _ = std::fs::remove_file(&path);
        let g = GpuModel::from_cpu(gpu, &loaded).map_err(err)?;
        if g.to_cpu().map_err(err)? != m {
            return Err("a CPU checkpoint loaded on the GPU does not round trip".into());
        }
        Ok(())
    }
}

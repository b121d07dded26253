//! The pause-step attention kernels (`kernels/pause_attention.cu`) against the CPU
//! reference (`src/cpu/attention.rs`, run in f64) on fresh random inputs of awkward
//! shapes: T = 1, T not a multiple of the tile (47, 65, 123), K = 0, 3, 7, B = 1 and 2,
//! H = 1 and 3, d_head 64 and 128, f32 and bf16, both attention modes (SPEC section 3:
//! `shared` and `private`). Forward (`out`, `lse`) and backward
//! (`dqkv`) are compared; every output buffer is poisoned with NaN before the launch, so
//! an element the kernels forget to write fails the test.
//!
//! `harness = false` (libtest-mimic): without feature `cuda`, or when no CUDA device
//! can be opened, every GPU test is reported as *ignored*, never as passed. The host-side
//! validation test needs no device and runs in every `--features cuda` build.
//! `CYB_TEST_SEED` fixes the random inputs (the seed is printed with every failure).

mod common;

use cyb::config::PauseAttention as Mode;
use libtest_mimic::{Arguments, Trial};

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Dtype {
    F32,
    Bf16,
}

/// One comparison: `(B, K, T, H, d_head)` and the element type.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Case {
    batch: usize,
    pauses: usize,
    seq: usize,
    heads: usize,
    d_head: usize,
    dtype: Dtype,
    mode: Mode,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "pause_attention_matches_cpu::{}_{}_b{}k{}t{}h{}d{}",
            self.mode,
            match self.dtype {
                Dtype::F32 => "f32",
                Dtype::Bf16 => "bf16",
            },
            self.batch,
            self.pauses,
            self.seq,
            self.heads,
            self.d_head
        )
    }
}

fn cases() -> Vec<Case> {
    // (B, K, T, H, d_head)
    let shapes = [
        (1, 0, 1, 1, 64),    // a single step
        (1, 7, 1, 3, 128),   // one position, many pauses
        (2, 3, 47, 3, 64),   // T below one tile
        (2, 0, 123, 3, 64),  // plain causal, T not a multiple of 64
        (1, 7, 123, 1, 128), // T not a multiple of 32, deep pauses
        (2, 3, 65, 1, 128),  // one row past a tile boundary
        (1, 3, 130, 2, 64),  // three tiles, the last with 2 rows
        (2, 1, 64, 2, 64),   // exactly one tile (64 rows at d_head 64)
        (1, 3, 96, 2, 128),  // exactly three tiles (32 rows at d_head 128)
    ];
    let mut out = Vec::new();
    for (batch, pauses, seq, heads, d_head) in shapes {
        for mode in [Mode::Shared, Mode::Private] {
            for dtype in [Dtype::F32, Dtype::Bf16] {
                out.push(Case {
                    batch,
                    pauses,
                    seq,
                    heads,
                    d_head,
                    dtype,
                    mode,
                });
            }
        }
    }
    out
}

/// Tests that are not a comparison case.
const SPECIAL: &[&str] = &[
    "backward_is_bitwise_deterministic",
    "backward_with_scratch_matches_backward",
];
/// Runs in every `--features cuda` build, with or without a device.
const HOST_ONLY: &str = "validation_rejects_bad_shapes_and_lengths";

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    // Built without feature `cuda`: nothing to run, everything reported as ignored.
    cases()
        .iter()
        .map(Case::name)
        .chain(SPECIAL.iter().map(|s| s.to_string()))
        .chain(std::iter::once(HOST_ONLY.to_string()))
        .map(|name| Trial::test(name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    gpu_tests::trials()
}

#[cfg(feature = "cuda")]
mod gpu_tests {
    use super::common::{assert_close, base_seed, err, test_seed, with_seed};
    use super::*;
    use cyb::cpu::attention::{attention_backward, attention_forward, AttnShape};
    use cyb::cpu::embedding::StepShape;
    use cyb::gpu::attention::{AttnDims, PauseAttention};
    use cyb::gpu::cudarc::driver::CudaSlice;
    use cyb::gpu::{GpuContext, LogitElem};
    use cyb::rng::{seeded, CybRng};
    use cyb::CybError;
    use half::bf16;
    use libtest_mimic::Failed;
    use rand::RngExt;
    use rand_distr::StandardNormal;
    use std::sync::Arc;

    // Tolerances for common::assert_close (approx::relative_eq!: an element passes when
    // |got - want| <= atol or <= rtol * max(|got|, |want|)), against the f64 reference fed
    // exactly the values the kernel sees (inputs rounded to the dtype first).
    //
    // f32: scores are f32 dot products of <= 128 terms of N(0,1) values (error ~1e-6
    // relative to sqrt(d_head)), exp and the online rescaling add a few ulp; out and lse
    // are O(1). A wrong mask or a lost key changes values by ~1e-1.
    const F32_OUT: (f64, f64) = (2e-5, 2e-4);
    const F32_LSE: (f64, f64) = (2e-5, 2e-5);
    // f32 gradients: dS = p (dP - D) subtracts O(1) numbers, and dK/dV sum over up to
    // (K+1)T queries; atol is relative to the largest reference gradient.
    const F32_GRAD: (f64, f64) = (1e-4, 1e-3);
    // bf16 out: rounded to 8 significant bits at the end (relative half-ulp 2^-9), and
    // on tensor cores P is rounded to bf16 before P·V (another 2^-9 per term, averaging
    // out over the keys); allow ~2x a naive bf16 rounding of the exact result, relative
    // to max |out|.
    const BF16_OUT: (f64, f64) = (8e-3, 8e-3);
    // bf16 lse: f32 math on exactly the same (rounded) inputs, stored in f32.
    const BF16_LSE: (f64, f64) = (5e-5, 5e-5);
    // bf16 gradients: rounded to bf16 at the end (2^-9), and D = rowsum(dO * O) uses the
    // bf16-rounded O (the reference uses the exact one): an error of ~sqrt(d_head)*2^-9
    // relative to |dO||O| in D that every dS of the row carries. 2e-2 of the largest
    // gradient covers that with margin and still catches a wrong term (~1e-1 or more).
    const BF16_GRAD: (f64, f64) = (2e-2, 2e-2);

    pub fn trials() -> Vec<Trial> {
        let gpu = common::test_gpu("gpu_attention");
        let base = base_seed();
        let ignored = gpu.is_none();
        let mut trials = vec![Trial::test(HOST_ONLY, || {
            validation_errors().map_err(Failed::from)
        })];
        for (i, case) in cases().into_iter().enumerate() {
            let gpu = gpu.clone();
            let seed = test_seed(base, i as u64);
            trials.push(
                Trial::test(case.name(), move || {
                    let gpu = gpu.expect("ignored without a device")?;
                    with_seed(base, seed, || compare(&gpu, case, seed))
                })
                .with_ignored_flag(ignored),
            );
        }
        for (i, &name) in SPECIAL.iter().enumerate() {
            let gpu = gpu.clone();
            let seed = test_seed(base, (1000 + i) as u64);
            trials.push(
                Trial::test(name, move || {
                    let gpu = gpu.expect("ignored without a device")?;
                    with_seed(base, seed, || special(&gpu, name, seed))
                })
                .with_ignored_flag(ignored),
            );
        }
        trials
    }

    fn dims(c: Case) -> AttnDims {
        AttnDims {
            batch: c.batch,
            pauses: c.pauses,
            seq: c.seq,
            heads: c.heads,
            d_head: c.d_head,
            mode: c.mode,
        }
    }

    fn cpu_shape(d: AttnDims) -> AttnShape {
        AttnShape {
            steps: StepShape {
                batch: d.batch,
                pauses: d.pauses,
                seq: d.seq,
            },
            heads: d.heads,
            d: d.d(),
            mode: d.mode,
        }
    }

    fn round(dtype: Dtype, x: f64) -> f64 {
        match dtype {
            Dtype::F32 => x as f32 as f64,
            Dtype::Bf16 => bf16::from_f64(x).to_f64(),
        }
    }

    /// Random `qkv` and `dout`, already rounded to `dtype`.
    fn inputs(rng: &mut CybRng, d: AttnDims, dtype: Dtype) -> (Vec<f64>, Vec<f64>) {
        let qkv = (0..d.qkv_len())
            .map(|_| round(dtype, rng.sample::<f64, _>(StandardNormal)))
            .collect();
        let dout = (0..d.out_len())
            .map(|_| round(dtype, rng.sample::<f64, _>(StandardNormal)))
            .collect();
        (qkv, dout)
    }

    /// Logsumexp `[B, H, K+1, T]` of the scaled scores over the visible keys, in f64,
    /// straight from the definition (every step through `pause_visible`).
    fn reference_lse(qkv: &[f64], d: AttnDims) -> Vec<f64> {
        let s = cpu_shape(d);
        let (dm, dh, k1, seq) = (d.d(), d.d_head, d.pauses + 1, d.seq);
        let scale = 1.0 / (dh as f64).sqrt();
        let row = |b: usize, k: usize, t: usize| ((b * k1 + k) * seq + t) * 3 * dm;
        let mut lse = vec![0.0; d.lse_len()];
        for b in 0..d.batch {
            for h in 0..d.heads {
                for k in 0..k1 {
                    for t in 0..seq {
                        let q = &qkv[row(b, k, t) + h * dh..][..dh];
                        let scores: Vec<f64> = (0..k1 * seq)
                            .map(|j| (j % seq, j / seq))
                            .filter(|&(t2, k2)| s.visible(t, k, t2, k2))
                            .map(|(t2, k2)| {
                                let key = &qkv[row(b, k2, t2) + dm + h * dh..][..dh];
                                q.iter().zip(key).map(|(a, b)| a * b).sum::<f64>() * scale
                            })
                            .collect();
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                        lse[((b * d.heads + h) * k1 + k) * seq + t] = m + sum.ln();
                    }
                }
            }
        }
        lse
    }

    struct Reference {
        out: Vec<f64>,
        lse: Vec<f64>,
        dqkv: Vec<f64>,
    }

    fn reference(qkv: &[f64], dout: &[f64], d: AttnDims) -> Reference {
        let s = cpu_shape(d);
        let mut out = vec![0.0; d.out_len()];
        let mut att = vec![0.0; s.att_len()];
        attention_forward(&mut out, &mut att, qkv, s);
        let mut dqkv = vec![0.0; d.qkv_len()];
        attention_backward(&mut dqkv, dout, qkv, &att, s);
        Reference {
            out,
            lse: reference_lse(qkv, d),
            dqkv,
        }
    }

    struct Got {
        out: Vec<f64>,
        lse: Vec<f64>,
        dqkv: Vec<f64>,
    }

    /// Forward then backward on the device, every output poisoned with NaN first.
    #[allow(clippy::too_many_arguments)]
    fn run_gpu<T: LogitElem>(
        gpu: &Arc<GpuContext>,
        attn: &PauseAttention,
        qkv: &[f64],
        dout: &[f64],
        d: AttnDims,
        to: fn(f64) -> T,
        from: fn(T) -> f64,
        scratch: bool,
    ) -> Result<Got, Failed> {
        let up = |x: &[f64]| -> Result<CudaSlice<T>, Failed> {
            gpu.htod(&x.iter().map(|&v| to(v)).collect::<Vec<T>>())
                .map_err(err)
        };
        let qkv_d = up(qkv)?;
        let dout_d = up(dout)?;
        let mut out_d = up(&vec![f64::NAN; d.out_len()])?;
        let mut dqkv_d = up(&vec![f64::NAN; d.qkv_len()])?;
        let mut lse_d = gpu.htod(&vec![f32::NAN; d.lse_len()]).map_err(err)?;
        attn.forward(&qkv_d, &mut out_d, &mut lse_d, d)
            .map_err(err)?;
        if scratch {
            let mut delta = gpu.htod(&vec![f32::NAN; d.lse_len()]).map_err(err)?;
            attn.backward_with_scratch(&qkv_d, &out_d, &dout_d, &lse_d, &mut dqkv_d, &mut delta, d)
                .map_err(err)?;
        } else {
            attn.backward(&qkv_d, &out_d, &dout_d, &lse_d, &mut dqkv_d, d)
                .map_err(err)?;
        }
        let back = |x: &CudaSlice<T>| -> Result<Vec<f64>, Failed> {
            Ok(gpu.dtoh(x).map_err(err)?.into_iter().map(from).collect())
        };
        Ok(Got {
            out: back(&out_d)?,
            lse: gpu
                .dtoh(&lse_d)
                .map_err(err)?
                .into_iter()
                .map(f64::from)
                .collect(),
            dqkv: back(&dqkv_d)?,
        })
    }

    fn run_dtype(
        gpu: &Arc<GpuContext>,
        attn: &PauseAttention,
        qkv: &[f64],
        dout: &[f64],
        d: AttnDims,
        dtype: Dtype,
        scratch: bool,
    ) -> Result<Got, Failed> {
        match dtype {
            Dtype::F32 => run_gpu::<f32>(gpu, attn, qkv, dout, d, |x| x as f32, f64::from, scratch),
            Dtype::Bf16 => run_gpu::<bf16>(
                gpu,
                attn,
                qkv,
                dout,
                d,
                bf16::from_f64,
                bf16::to_f64,
                scratch,
            ),
        }
    }

    fn max_abs(x: &[f64]) -> f64 {
        x.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    fn compare(gpu: &Arc<GpuContext>, case: Case, seed: u64) -> Result<(), Failed> {
        let d = dims(case);
        let mut rng = seeded(seed);
        let (qkv, dout) = inputs(&mut rng, d, case.dtype);
        let want = reference(&qkv, &dout, d);
        let tols = match case.dtype {
            Dtype::F32 => (F32_OUT, F32_LSE, F32_GRAD),
            Dtype::Bf16 => (BF16_OUT, BF16_LSE, BF16_GRAD),
        };
        // bf16 runs twice: on the CUDA-core kernels, then on tensor cores (the
        // default). f32 always runs on CUDA cores.
        let cores_first = (case.dtype == Dtype::Bf16).then_some(false);
        for tensor_cores in cores_first.into_iter().chain([true]) {
            let attn = PauseAttention::new(gpu)
                .map_err(err)?
                .with_tensor_cores(tensor_cores);
            let got = run_dtype(gpu, &attn, &qkv, &dout, d, case.dtype, false)?;
            let tag = if tensor_cores { "" } else { " (CUDA cores)" };
            check(&got, &want, d, tols, tag);
        }
        Ok(())
    }

    type Tol = (f64, f64);

    /// out, lse, and each third of dqkv (dq, dk, dv have different scales, each gets
    /// an atol relative to its own largest reference value).
    fn check(got: &Got, want: &Reference, d: AttnDims, (o, l, g): (Tol, Tol, Tol), tag: &str) {
        let out_atol = o.0 * max_abs(&want.out);
        assert_close(&format!("out{tag}"), &got.out, &want.out, out_atol, o.1);
        assert_close(&format!("lse{tag}"), &got.lse, &want.lse, l.0, l.1);
        let third = |x: &[f64], m: usize| -> Vec<f64> {
            x.chunks(d.d())
                .skip(m)
                .step_by(3)
                .flatten()
                .copied()
                .collect()
        };
        for (m, what) in ["dq", "dk", "dv"].iter().enumerate() {
            let (gm, wm) = (third(&got.dqkv, m), third(&want.dqkv, m));
            // A third can be exactly zero (T = 1, K = 0: one visible key, so dS = p (dP - D)
            // = 0 and dq = dk = 0), where only rounding of dP - D remains: atol never drops
            // below 1e-2 of the largest reference gradient of all three.
            let scale = max_abs(&wm).max(1e-2 * max_abs(&want.dqkv));
            assert_close(&format!("{what}{tag}"), &gm, &wm, g.0 * scale, g.1);
        }
    }

    fn special(gpu: &Arc<GpuContext>, name: &str, seed: u64) -> Result<(), Failed> {
        let attn = PauseAttention::new(gpu).map_err(err)?;
        let mut rng = seeded(seed);
        match name {
            "backward_is_bitwise_deterministic" => {
                for (d, dtype) in [
                    (dims_of(2, 3, 123, 3, 64, Mode::Shared), Dtype::Bf16),
                    (dims_of(1, 7, 77, 2, 128, Mode::Shared), Dtype::F32),
                    (dims_of(2, 3, 123, 3, 64, Mode::Private), Dtype::Bf16),
                    (dims_of(1, 7, 77, 2, 128, Mode::Private), Dtype::F32),
                ] {
                    let (qkv, dout) = inputs(&mut rng, d, dtype);
                    let a = run_dtype(gpu, &attn, &qkv, &dout, d, dtype, false)?;
                    let b = run_dtype(gpu, &attn, &qkv, &dout, d, dtype, false)?;
                    let same = |x: &[f64], y: &[f64]| {
                        x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
                    };
                    if !same(&a.out, &b.out) || !same(&a.lse, &b.lse) || !same(&a.dqkv, &b.dqkv) {
                        return Err(format!("{d:?} {dtype:?}: two runs differ").into());
                    }
                }
                Ok(())
            }
            "backward_with_scratch_matches_backward" => {
                let d = dims_of(2, 3, 47, 1, 64, Mode::Shared);
                let (qkv, dout) = inputs(&mut rng, d, Dtype::F32);
                let a = run_dtype(gpu, &attn, &qkv, &dout, d, Dtype::F32, false)?;
                let b = run_dtype(gpu, &attn, &qkv, &dout, d, Dtype::F32, true)?;
                if a.dqkv
                    .iter()
                    .zip(&b.dqkv)
                    .any(|(p, q)| p.to_bits() != q.to_bits())
                {
                    return Err("backward_with_scratch differs from backward".into());
                }
                Ok(())
            }
            other => Err(format!("unknown special test {other}").into()),
        }
    }

    fn dims_of(
        batch: usize,
        pauses: usize,
        seq: usize,
        heads: usize,
        d_head: usize,
        mode: Mode,
    ) -> AttnDims {
        AttnDims {
            batch,
            pauses,
            seq,
            heads,
            d_head,
            mode,
        }
    }

    /// Host-side checks, no device needed: unsupported head dims, empty sizes and every
    /// buffer length are `CybError::Shape`.
    fn validation_errors() -> Result<(), String> {
        let ok = dims_of(2, 3, 47, 3, 64, Mode::Shared);
        ok.validate().map_err(|e| format!("{ok:?} rejected: {e}"))?;
        dims_of(1, 0, 1, 1, 128, Mode::Private)
            .validate()
            .map_err(|e| format!("K = 0, T = 1, d_head 128 rejected: {e}"))?;
        let expect_shape = |what: &str, r: cyb::Result<()>| -> Result<(), String> {
            match r {
                Err(CybError::Shape(msg)) => {
                    eprintln!("{what}: {msg}");
                    Ok(())
                }
                Err(e) => Err(format!("{what}: wrong error kind {e}")),
                Ok(()) => Err(format!("{what}: accepted")),
            }
        };
        for d_head in [0, 1, 32, 63, 96, 256] {
            expect_shape(
                &format!("d_head {d_head}"),
                AttnDims { d_head, ..ok }.validate(),
            )?;
        }
        expect_shape("T = 0", AttnDims { seq: 0, ..ok }.validate())?;
        expect_shape("B = 0", AttnDims { batch: 0, ..ok }.validate())?;
        expect_shape("H = 0", AttnDims { heads: 0, ..ok }.validate())?;
        expect_shape(
            "B*H too large for the grid",
            AttnDims {
                batch: 70_000,
                heads: 1,
                seq: 1,
                ..ok
            }
            .validate(),
        )?;
        expect_shape(
            "overflowing sizes",
            AttnDims {
                seq: usize::MAX / 2,
                ..ok
            }
            .validate(),
        )?;
        let (q, o, l) = (ok.qkv_len(), ok.out_len(), ok.lse_len());
        ok.check_forward(q, o, l)
            .map_err(|e| format!("right lengths rejected: {e}"))?;
        ok.check_backward(q, o, o, l, q, l)
            .map_err(|e| format!("right lengths rejected: {e}"))?;
        expect_shape("short qkv", ok.check_forward(q - 1, o, l))?;
        expect_shape("long out", ok.check_forward(q, o + 1, l))?;
        expect_shape("short lse", ok.check_forward(q, o, l - 1))?;
        expect_shape("short dout", ok.check_backward(q, o, o - 1, l, q, l))?;
        expect_shape("short dqkv", ok.check_backward(q, o, o, l, q - 3, l))?;
        expect_shape("short delta", ok.check_backward(q, o, o, l, q, l - 1))?;
        // The lengths follow the layouts of SPEC section 3.
        if q != 2 * 4 * 47 * 3 * 192 || o != 2 * 4 * 47 * 192 || l != 2 * 3 * 4 * 47 {
            return Err(format!("lengths {q} {o} {l} do not match the layouts"));
        }
        Ok(())
    }
}

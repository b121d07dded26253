//! Helpers shared by the integration tests: test vectors, comparisons, random inputs.
#![allow(dead_code)]

pub mod resume;

use std::path::PathBuf;

/// The folder with the SPEC test vectors: `$CYB_TESTDATA`, else the repository's own
/// copy `testdata/` (its `v2/` is copied from `../shared/testdata/v2` by
/// `scripts/sync_testdata.sh`; tests/testdata.rs fails when the two differ). A missing
/// file is a test failure, never a silent pass.
pub fn testdata_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CYB_TESTDATA") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The five objectives of SPEC section 4 with their default parameters.
pub fn all_objectives() -> Vec<cyb::Objective> {
    vec![
        cyb::Objective::CeFinal,
        cyb::Objective::Marginal,
        cyb::Objective::ap_default(),
        cyb::Objective::va_default(),
        cyb::Objective::dp_default(),
    ]
}

/// The SPEC v2 test vectors and checkpoints: `<testdata>/v2`.
pub fn v2_dir() -> PathBuf {
    testdata_dir().join("v2")
}

/// The SPEC v2 vectors, `v2/vectors.json` (see its README.md).
pub fn vectors_v2() -> serde_json::Value {
    let path = testdata_dir().join("v2/vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (set CYB_TESTDATA)", path.display()));
    serde_json::from_str(&text).expect("vectors.json parses")
}

/// The objectives of a v2 `loss_cases[]` entry, by name, built from its `params`
/// (`omega`/`rho` ratio strings, `gamma`, `discount`, `beta`, `alpha`), resolved for
/// `K` with its `dk_bias`. `va` is `Err` where `rho` has a zero.
pub fn v2_objectives(
    params: &serde_json::Value,
    k: usize,
) -> Vec<(&'static str, cyb::Result<cyb::ResolvedObjective>)> {
    let dk_bias = params["dk_bias"].as_f64().expect("dk_bias");
    v2_objectives_with_dk_bias(params, k, dk_bias)
}

/// [`v2_objectives`] with `dk_bias` instead of the entry's (0: none, as
/// `Objective::resolve` gives them, for a model that applies its own).
pub fn v2_objectives_with_dk_bias(
    params: &serde_json::Value,
    k: usize,
    dk_bias: f64,
) -> Vec<(&'static str, cyb::Result<cyb::ResolvedObjective>)> {
    use cyb::{Discount, Objective, StepWeights};
    let num = |key: &str| params[key].as_f64().expect(key);
    let ratios = |key: &str| -> StepWeights { params[key].as_str().expect(key).parse().unwrap() };
    let discount: Discount = params["discount"].as_str().unwrap().parse().unwrap();
    let gamma = num("gamma");
    let objectives = [
        ("ce_final", Objective::CeFinal),
        ("marginal", Objective::Marginal),
        (
            "ap",
            Objective::Ap {
                omega: ratios("omega"),
                gamma,
                discount,
            },
        ),
        (
            "va",
            Objective::Va {
                rho: ratios("rho"),
                beta: num("beta"),
                gamma,
                discount,
            },
        ),
        (
            "dp",
            Objective::Dp {
                rho: ratios("rho"),
                alpha: num("alpha"),
                gamma,
                discount,
            },
        ),
    ];
    objectives
        .into_iter()
        .map(|(name, o)| (name, o.resolve(k).and_then(|r| r.with_dk_bias(dk_bias))))
        .collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn i32s(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer") as i32)
        .collect()
}

/// Asserts `got ≈ want` elementwise with `approx::relative_eq!(g, w, epsilon = atol,
/// max_relative = rtol)`: an element passes when `|g - w| <= atol` or
/// `|g - w| <= rtol * max(|g|, |w|)` (equal infinities pass, NaN never does). The
/// decision is approx's; this helper only loops, counts the failures and reports the
/// first ones with their index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| !approx::relative_eq!(**g, **w, epsilon = atol, max_relative = rtol))
        .map(|(i, (g, w))| {
            format!(
                "[{i}] got {g:.12e}, want {w:.12e}, diff {:.3e}",
                (g - w).abs()
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} mismatch (atol {atol}, rtol {rtol}); first: {:#?}",
        bad.len(),
        got.len(),
        &bad[..bad.len().min(6)]
    );
}

/// A crate error as a libtest-mimic failure (its message).
pub fn err(e: cyb::CybError) -> libtest_mimic::Failed {
    format!("{e}").into()
}

/// `obj` resolved for `k` pause steps with DK bias `dk_bias`, as a test failure if not.
pub fn resolved(
    obj: &cyb::Objective,
    k: usize,
    dk_bias: f64,
) -> Result<cyb::ResolvedObjective, libtest_mimic::Failed> {
    obj.resolve(k)
        .and_then(|o| o.with_dk_bias(dk_bias))
        .map_err(err)
}

/// Norm-wise relative error: passes when `||got - want|| <= bound * ||want||` (absolute
/// when want = 0); a non-finite `got` fails, and the failure names the worst element.
pub fn rel(what: &str, got: &[f64], want: &[f64], bound: f64) -> Result<(), libtest_mimic::Failed> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} vs {}", got.len(), want.len()).into());
    }
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        return Err(format!("{what}: got non-finite {} at [{i}]", got[i]).into());
    }
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    let scale = if den > 0.0 { den.sqrt() } else { 1.0 };
    // The decision: ||got - want|| within `bound` times ||want|| (absolute when want = 0).
    if approx::abs_diff_eq!(num.sqrt(), 0.0, epsilon = bound * scale) {
        return Ok(());
    }
    let worst = got
        .iter()
        .zip(want)
        .enumerate()
        .max_by(|a, b| (a.1 .0 - a.1 .1).abs().total_cmp(&(b.1 .0 - b.1 .1).abs()))
        .map(|(i, (g, w))| format!("worst [{i}] got {g:e} want {w:e}"))
        .unwrap_or_default();
    Err(format!(
        "{what}: relative error {:.3e} > {bound:e}; {worst}",
        num.sqrt() / scale
    )
    .into())
}

/// The base seed of a randomized test run: `$CYB_TEST_SEED`, else the clock (printed
/// with every failure by [`with_seed`], so any run can be repeated).
pub fn base_seed() -> u64 {
    std::env::var("CYB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The seed of test number `index` of a run whose base seed is `base` (distinct per test;
/// the test's generator is `cyb::rng::seeded(test_seed(..))`).
pub fn test_seed(base: u64, index: u64) -> u64 {
    base.wrapping_add(index.wrapping_mul(0x9E37_79B9))
}

/// Runs a libtest-mimic test body, adding the run's base seed to any failure or panic
/// message: `CYB_TEST_SEED=<base>` repeats the run (every test derives its own `seed`
/// from the base with [`test_seed`]; the derived seed is printed too, for reference).
pub fn with_seed(
    base: u64,
    seed: u64,
    f: impl FnOnce() -> Result<(), libtest_mimic::Failed>,
) -> Result<(), libtest_mimic::Failed> {
    let tag = format!("CYB_TEST_SEED={base} repeats it; this test's seed {seed}");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{} ({tag})", e.message().unwrap_or("")).into()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{msg} ({tag})").into())
        }
    }
}

/// The GPU for a libtest-mimic GPU test binary named `binary`: `None` when there is no
/// CUDA device (every test is then reported *ignored*; unless `CYB_EXPECT_GPU=1`, which
/// scripts/host_emu/runner.sh and the device bundle set, and then every test fails); `Some(Err)` when a device is
/// there but cannot be used (e.g. a driver too old for the PTX), so every test fails
/// with the reason instead of passing silently as ignored.
#[cfg(feature = "cuda")]
pub fn test_gpu(binary: &str) -> Option<Result<std::sync::Arc<cyb::gpu::GpuContext>, String>> {
    if cyb::gpu::device_count() == 0 {
        // Where a device is expected (the emulator's runner, the device bundle), its
        // absence fails every test instead of letting the binary pass as all-ignored.
        if std::env::var_os("CYB_EXPECT_GPU").is_some_and(|v| v == "1") {
            return Some(Err(format!(
                "{binary}: CYB_EXPECT_GPU=1 but no CUDA device was found (no driver \
                 library on the library path, or cuInit/cuDeviceGetCount failed)"
            )));
        }
        eprintln!("{binary}: no CUDA device; every GPU test is ignored");
        return None;
    }
    let gpu = cyb::gpu::GpuContext::new(0).map_err(|e| format!("cannot use CUDA device 0: {e}"));
    if let Ok(g) = &gpu {
        if g.is_emulator() {
            eprintln!(
                "{binary}: EMULATED: running on the CPU emulator of the CUDA driver \
                 (scripts/build_emu.sh), not on a GPU. A pass checks indexing, masks, launch \
                 configuration, argument order, synchronisation, memory safety and the math; \
                 not timing, the hardware's own numerics or its scheduling."
            );
        } else {
            eprintln!("{binary}: on {}", g.name().unwrap_or_default());
        }
    }
    Some(gpu)
}

/// Whether the GPU tests run on the CPU emulator (they may shrink their shapes there).
#[cfg(feature = "cuda")]
pub fn emulated(gpu: &cyb::gpu::GpuContext) -> bool {
    gpu.is_emulator()
}

/// A training run small enough for a test: V = 10 (modsum), d 16, one layer, T 16,
/// batch 4, evaluation every 4 steps on 2 batches.
pub fn tiny_train(
    objective: cyb::Objective,
    pauses: usize,
    steps: usize,
) -> cyb::train::TrainConfig {
    cyb::train::TrainConfig {
        model: cyb::ModelConfig {
            vocab: 10,
            d_model: 16,
            n_layer: 1,
            n_head: 2,
            t_max: 16,
            k_max: pauses,
            pause_attention: cyb::config::PauseAttention::Private,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        },
        objective,
        pauses,
        steps,
        batch: 4,
        seq: 16,
        lr: 3e-3,
        min_lr_ratio: 0.1,
        warmup: 2,
        weight_decay: 0.1,
        grad_clip: 1.0,
        head: cyb::cpu::model::HeadMode::default(),
        seed: 9,
        eval_every: 4,
        eval_batches: 2,
    }
}

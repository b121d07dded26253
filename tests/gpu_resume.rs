//! Exact resumption of the GPU step: a run of 2N steps with a snapshot every N steps,
//! resumed from its step-N snapshot, ends bitwise equal to the uninterrupted run
//! (weights, AdamW moments, losses, the next batch), in f32 and in bf16 (whose bf16
//! weight copy is rebuilt from the f32 masters on resumption).
//!
//! `harness = false` (libtest-mimic): without a device (or feature `cuda`) the tests
//! are reported as ignored; `scripts/test_emulated.sh` runs them on the CPU emulator.

mod common;

use libtest_mimic::{Arguments, Trial};

const TESTS: &[&str] = &["resume_f32_is_bitwise", "resume_bf16_is_bitwise"];

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    TESTS
        .iter()
        .map(|name| Trial::test(*name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    use cyb::config::Precision;
    let gpu = common::test_gpu("gpu_resume");
    let ignored = gpu.is_none();
    TESTS
        .iter()
        .map(|&name| {
            let gpu = gpu.clone();
            Trial::test(name, move || {
                gpu.expect("ignored without a device")?;
                let precision = match name {
                    "resume_f32_is_bitwise" => Precision::F32,
                    "resume_bf16_is_bitwise" => Precision::Bf16,
                    other => return Err(format!("unknown test {other}").into()),
                };
                // The modsum run of tests/resume.rs, every objective term exercised
                // (CYB-AP, K = 2).
                let mut cfg = common::tiny_train(cyb::Objective::ap_default(), 2, 8);
                // The attention kernels take heads of 64 or 128 channels.
                cfg.model.d_model = 64;
                cfg.model.n_head = 1;
                common::resume::resumed_run_is_bitwise_equal(
                    &cfg,
                    &cyb::data::ModSum::default(),
                    &format!("gpu-{precision}"),
                    cyb::train::TrainDevice::Cuda(precision),
                );
                Ok(())
            })
            .with_ignored_flag(ignored)
        })
        .collect()
}

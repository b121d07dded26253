//! What a user of the crate sees after a kernel faults on the device: the call that
//! launched it returns an error naming the kernel and the driver's error, and the
//! context is lost: every later call fails with the same error, as on a GPU (where an
//! illegal address, a misaligned access or a trap is "sticky" until the process ends),
//! so the crate never carries on with a half-computed result.
//!
//! The correct kernels cannot be made to fault through the public API, so this test
//! runs on the CPU emulator of the CUDA driver only, which faults the kernel named in
//! `CYB_EMU_FAULT_KERNEL` on demand (scripts/host_emu/driver.cpp); on a GPU it is
//! reported as ignored. It is a binary of its own because the fault loses the context
//! for the rest of the process.
//!
//! `harness = false` (libtest-mimic): without feature `cuda` or a device the test is
//! reported as ignored.

mod common;

use libtest_mimic::{Arguments, Trial};

const NAME: &str = "a_kernel_fault_loses_the_context";

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    vec![Trial::test(NAME, || Ok(())).with_ignored_flag(true)]
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    let gpu = common::test_gpu("gpu_fault");
    // Faults can be injected on the emulator only.
    let ignored = !matches!(&gpu, Some(Ok(g)) if g.is_emulator());
    vec![Trial::test(NAME, move || {
        let gpu = gpu.expect("ignored without a device")?;
        fault::a_kernel_fault_loses_the_context(&gpu)
    })
    .with_ignored_flag(ignored)]
}

#[cfg(feature = "cuda")]
mod fault {
    use cyb::cpu::loss::LossShape;
    use cyb::gpu::{CybLoss, GpuContext};
    use cyb::{Objective, Reduction};
    use libtest_mimic::Failed;
    use std::sync::Arc;

    /// The kernel faulted on demand: the first of the loss forward, and the name the
    /// crate's error gives it (its f32 and bf16 variants share one).
    const KERNEL: &str = "cyb_row_scalars_f32";
    const KERNEL_IN_ERROR: &str = "cyb_row_scalars";
    const ERROR: &str = "CUDA_ERROR_ILLEGAL_ADDRESS";

    pub fn a_kernel_fault_loses_the_context(gpu: &Arc<GpuContext>) -> Result<(), Failed> {
        let err = |e: cyb::CybError| e.to_string();
        let shape = LossShape {
            batch: 2,
            pauses: 1,
            seq: 3,
            vocab: 4,
        };
        let rows = shape.batch * (shape.pauses + 1) * shape.seq;
        let logits: Vec<f32> = (0..rows * (shape.vocab + 1))
            .map(|i| (i % 7) as f32 * 0.25)
            .collect();
        let targets: Vec<i32> = (0..shape.positions())
            .map(|i| (i % shape.vocab) as i32)
            .collect();
        let obj = Objective::ap_default().resolve(shape.pauses).map_err(err)?;
        let loss = CybLoss::new(gpu, &obj).map_err(err)?;
        let logits = gpu.htod(&logits).map_err(err)?;
        let targets = gpu.htod(&targets).map_err(err)?;
        let forward = || -> Result<f64, cyb::CybError> {
            loss.forward(&logits, &targets, shape, Reduction::Mean, None)?
                .loss()
        };

        // Before the fault: a finite loss.
        let before = forward().map_err(err)?;
        if !before.is_finite() {
            return Err(format!("loss before the fault is {before}").into());
        }

        std::env::set_var("CYB_EMU_FAULT_KERNEL", KERNEL);
        let faulted = forward();
        std::env::remove_var("CYB_EMU_FAULT_KERNEL");
        let first = match faulted {
            Ok(l) => return Err(format!("the faulting forward returned a loss ({l})").into()),
            Err(e) => e.to_string(),
        };
        if !first.contains(KERNEL_IN_ERROR) || !first.contains(ERROR) {
            return Err(format!("the error does not name the kernel and {ERROR}: {first}").into());
        }

        // After it: no result, every call fails the same way (nothing is injected now).
        let again = forward().map(|l| l.to_string()).map_err(err);
        let copy = gpu
            .htod(&[1.0f32])
            .map(|_| "a buffer".to_string())
            .map_err(err);
        let read = gpu
            .dtoh(&logits)
            .map(|v| format!("{} values", v.len()))
            .map_err(err);
        println!("what a user sees after a fault in {KERNEL}:");
        println!("  the launching call: {first}");
        for (what, r) in [
            ("the same forward again", &again),
            ("a copy to the device", &copy),
            ("a copy to the host", &read),
        ] {
            println!(
                "  {what}: {}",
                r.as_ref()
                    .map_or_else(|e| e.clone(), |v| format!("Ok({v})"))
            );
            match r {
                Ok(v) => return Err(format!("{what} after the fault succeeded ({v})").into()),
                Err(e) if !e.contains(ERROR) => {
                    return Err(format!("{what} after the fault: not {ERROR}: {e}").into())
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

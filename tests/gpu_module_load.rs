//! Loading the crate's kernel modules (the fatbins of `build.rs`: sm_90 SASS plus
//! compute_80 PTX) into a device: every module loads, the load times are printed, and
//! on a card whose architecture the images carry SASS for (sm_90 by default: H100,
//! H200) that SASS is what the driver uses, so nothing is JIT-compiled.
//!
//! The device bundle (scripts/device_bundle.sh) runs this binary with
//! `CUDA_DISABLE_PTX_JIT=1 CUDA_CACHE_DISABLE=1`: the driver then refuses to
//! JIT-compile PTX, so a load that would need it fails, and the printed times are cold
//! loads. On the CPU emulator the modules load (its PTX is read) but the times say
//! nothing about a GPU.
//!
//! `every_kernel_declares_launch_bounds` needs no device: every `.entry` of every
//! image's PTX must carry `.maxntid` (from `__launch_bounds__`), so ptxas allots each
//! kernel at most the registers that let its largest block launch; without it a
//! register-hungry kernel can fail on hardware with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES.
//!
//! `harness = false` (libtest-mimic): without a device (or feature `cuda`) the device
//! tests are reported as ignored.

mod common;

use libtest_mimic::{Arguments, Trial};

const TESTS: &[&str] = &["every_module_loads", "sass_covers_this_device"];

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "cuda"))]
fn trials() -> Vec<Trial> {
    std::iter::once(&"every_kernel_declares_launch_bounds")
        .chain(TESTS)
        .map(|name| Trial::test(*name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "cuda")]
fn trials() -> Vec<Trial> {
    let gpu = common::test_gpu("gpu_module_load");
    let ignored = gpu.is_none();
    let host = Trial::test("every_kernel_declares_launch_bounds", || {
        gpu_tests::every_kernel_declares_launch_bounds()
    });
    std::iter::once(host)
        .chain(TESTS.iter().map(|&name| {
            let gpu = gpu.clone();
            Trial::test(name, move || {
                let gpu = gpu.expect("ignored without a device")?;
                match name {
                    "every_module_loads" => gpu_tests::every_module_loads(&gpu),
                    "sass_covers_this_device" => gpu_tests::sass_covers_this_device(&gpu),
                    other => Err(format!("unknown test {other}").into()),
                }
            })
            .with_ignored_flag(ignored)
        }))
        .collect()
}

#[cfg(feature = "cuda")]
mod gpu_tests {
    use cyb::gpu::{fatbin, images, GpuContext};
    use libtest_mimic::Failed;

    fn jit_setting() -> String {
        format!(
            "CUDA_DISABLE_PTX_JIT={} CUDA_CACHE_DISABLE={}",
            std::env::var("CUDA_DISABLE_PTX_JIT").unwrap_or_else(|_| "unset".into()),
            std::env::var("CUDA_CACHE_DISABLE").unwrap_or_else(|_| "unset".into())
        )
    }

    /// Every kernel (`.entry`) in the PTX of every image declares `.maxntid`, i.e. its
    /// source has `__launch_bounds__`.
    pub fn every_kernel_declares_launch_bounds() -> Result<(), Failed> {
        let mut missing = Vec::new();
        let mut kernels = 0;
        for (file, image) in images::ALL {
            let ptx = fatbin::ptx(image).map_err(|e| format!("{file}: {e}"))?;
            for (name, directives) in entries(ptx) {
                kernels += 1;
                if !directives.contains(".maxntid") {
                    missing.push(format!("{file}: {name}"));
                }
            }
        }
        if kernels == 0 {
            return Err("no .entry in any image's PTX".into());
        }
        if !missing.is_empty() {
            return Err(format!(
                "{} of {kernels} kernels lack __launch_bounds__ (.maxntid): {}",
                missing.len(),
                missing.join(", ")
            )
            .into());
        }
        println!("{kernels} kernels, each with .maxntid");
        Ok(())
    }

    /// `(name, directives)` of every `.entry` in `ptx`: the text between the closing
    /// parenthesis of its parameter list and its body's opening brace (where
    /// `.maxntid`, `.minnctapersm` and friends are).
    fn entries(ptx: &str) -> Vec<(&str, &str)> {
        ptx.split(".entry ")
            .skip(1)
            .filter_map(|rest| {
                let name = rest.split('(').next()?.trim();
                let after = &rest[rest.find(')')? + 1..];
                Some((name, &after[..after.find('{')?]))
            })
            .collect()
    }

    /// Loads every module again (the context loaded cyb_loss.cu at creation) and prints
    /// what each took: milliseconds with SASS, seconds when the PTX is JIT-compiled.
    pub fn every_module_loads(gpu: &GpuContext) -> Result<(), Failed> {
        let (major, minor) = gpu.compute_capability().map_err(|e| e.to_string())?;
        let loads = gpu.load_all_modules().map_err(|e| e.to_string())?;
        let first = *gpu
            .module_loads()
            .first()
            .ok_or("GpuContext recorded no module load at creation")?;
        let total: f64 = loads.iter().map(|(_, t)| t.as_secs_f64()).sum();
        println!(
            "module load on {} (sm_{major}{minor}{}), {}:",
            gpu.name().unwrap_or_default(),
            if gpu.is_emulator() {
                ", EMULATED: times are meaningless"
            } else {
                ""
            },
            jit_setting()
        );
        println!(
            "  {:<22} {:>9.2} ms (first load, at GpuContext creation)",
            first.0,
            first.1.as_secs_f64() * 1e3
        );
        for (file, t) in &loads {
            println!("  {file:<22} {:>9.2} ms", t.as_secs_f64() * 1e3);
        }
        println!(
            "  all {} modules: {:.2} ms (a JIT of their PTX takes seconds)",
            loads.len(),
            total * 1e3
        );
        if loads.len() != images::ALL.len() {
            return Err(format!("{} of {} modules loaded", loads.len(), images::ALL.len()).into());
        }
        Ok(())
    }

    /// The images carry SASS for this device's architecture, so the driver loads that
    /// and JIT-compiles nothing; required for sm_90 (the default target), reported for
    /// other cards (they load the compute_80 PTX, JIT-compiled once per driver cache).
    pub fn sass_covers_this_device(gpu: &GpuContext) -> Result<(), Failed> {
        let (major, minor) = gpu.compute_capability().map_err(|e| e.to_string())?;
        let arch = (major * 10 + minor) as u32;
        // The build's targets (build.rs reads the same variable at compile time).
        let default_targets = option_env!("CYB_CUDA_ARCH").is_none();
        for (file, image) in images::ALL {
            let sass = fatbin::sass_archs(image).map_err(|e| format!("{file}: {e}"))?;
            if sass.contains(&arch) {
                continue;
            }
            if arch == 90 && default_targets {
                return Err(format!(
                    "{file}: no sm_90 SASS in the image (only {sass:?}): the driver would \
                     JIT-compile the PTX on this sm_90 device"
                )
                .into());
            }
            println!(
                "{file}: no SASS for sm_{arch} (image has {sass:?}): the driver JIT-compiles \
                 the PTX on this device"
            );
        }
        println!("sm_{arch}: every image checked for its SASS");
        Ok(())
    }
}

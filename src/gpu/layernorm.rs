//! LayerNorm on the GPU (docs/MATH.md, "The model"): `kernels/layernorm.cu`, the twin of
//! [`crate::cpu::layernorm`]. Activations `T` (f32 or bf16), parameters and saved
//! statistics f32. The parameter gradients are reduced deterministically (per-chunk
//! partial sums, then a fixed-order pass), never with float atomics.

use super::kernels::{as_i32, both, check_len, f32_offset, KernelSet, ROWS_PER_CHUNK};
use super::{cuda_err, images, GpuContext, LogitElem};
use crate::error::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const WARPS_PER_BLOCK: usize = 8;

/// The LayerNorm kernels, loaded.
pub struct LayerNormKernels {
    gpu: Arc<GpuContext>,
    k: KernelSet,
}

impl LayerNormKernels {
    /// Loads `kernels/layernorm.cu`.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        for base in [
            "layernorm_forward",
            "layernorm_backward_dinp",
            "layernorm_backward_params_partial",
        ] {
            names.extend(both(base));
        }
        names.push("layernorm_backward_params_finalize".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(LayerNormKernels {
            gpu: gpu.clone(),
            k: KernelSet::load(gpu, images::LAYERNORM, "layernorm.cu", &names)?,
        })
    }

    fn row_cfg(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(WARPS_PER_BLOCK).max(1) as u32, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// out: `[N, C]`, mean, rstd: `[N]`; inp: `[N, C]`; weight, bias: `[C]`;
    /// `rstd = 1 / sqrt(var + eps)` (the model's `layer_norm_eps`, rounded to f32).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: LogitElem>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        mean: &mut impl DevicePtrMut<f32>,
        rstd: &mut impl DevicePtrMut<f32>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<f32>,
        bias: &impl DevicePtr<f32>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("layernorm out", out.len(), n * c)?;
        check_len("layernorm inp", inp.len(), n * c)?;
        check_len("layernorm mean", mean.len(), n)?;
        check_len("layernorm rstd", rstd.len(), n)?;
        check_len("layernorm weight", weight.len(), c)?;
        check_len("layernorm bias", bias.len(), c)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci) = (as_i32("rows", n)?, as_i32("C", c)?);
        as_i32("N*C", n * c)?;
        let s = self.gpu.stream();
        let (o, _g1) = out.device_ptr_mut(s);
        let (m, _g2) = mean.device_ptr_mut(s);
        let (r, _g3) = rstd.device_ptr_mut(s);
        let (x, _g4) = inp.device_ptr(s);
        let (w, _g5) = weight.device_ptr(s);
        let (b, _g6) = bias.device_ptr(s);
        let f = self.k.get(&format!("layernorm_forward_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&o)
            .arg(&m)
            .arg(&r)
            .arg(&x)
            .arg(&w)
            .arg(&b)
            .arg(&ni)
            .arg(&ci)
            .arg(&eps);
        // SAFETY: out/inp hold >= N*C, mean/rstd >= N, weight/bias >= C (checked); one
        // warp per row, rows >= N return.
        unsafe { l.launch(Self::row_cfg(n)) }.map_err(cuda_err("launching layernorm_forward"))?;
        Ok(())
    }

    /// Backward: **accumulates** `dinp += ...` (`[N, C]`) and the parameter gradients
    /// `dparams[0..C] += Σ dy·n̂` (weight), `dparams[C..2C] += Σ dy` (bias): the two
    /// gradient tensors are adjacent, as in the fixed tensor order.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: LogitElem>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        dparams: &mut impl DevicePtrMut<f32>,
        dout: &impl DevicePtr<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<f32>,
        mean: &impl DevicePtr<f32>,
        rstd: &impl DevicePtr<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len("layernorm dinp", dinp.len(), n * c)?;
        check_len("layernorm dout", dout.len(), n * c)?;
        check_len("layernorm inp", inp.len(), n * c)?;
        check_len("layernorm dweight+dbias", dparams.len(), 2 * c)?;
        check_len("layernorm weight", weight.len(), c)?;
        check_len("layernorm mean", mean.len(), n)?;
        check_len("layernorm rstd", rstd.len(), n)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci) = (as_i32("rows", n)?, as_i32("C", c)?);
        as_i32("N*C", n * c)?;
        let chunks = n.div_ceil(ROWS_PER_CHUNK);
        let (chunks_i, rpc) = (as_i32("chunks", chunks)?, ROWS_PER_CHUNK as i32);
        let s = self.gpu.stream();
        let mut partial = self.gpu.zeros::<f32>(chunks * 2 * c)?;
        let (dx, _g1) = dinp.device_ptr_mut(s);
        let (dp, _g2) = dparams.device_ptr_mut(s);
        let (dy, _g3) = dout.device_ptr(s);
        let (x, _g4) = inp.device_ptr(s);
        let (w, _g5) = weight.device_ptr(s);
        let (m, _g6) = mean.device_ptr(s);
        let (r, _g7) = rstd.device_ptr(s);
        let (part, _g8) = partial.device_ptr_mut(s);
        let db = dp + f32_offset(c);

        let f = self
            .k
            .get(&format!("layernorm_backward_dinp_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&dx)
            .arg(&dy)
            .arg(&x)
            .arg(&w)
            .arg(&m)
            .arg(&r)
            .arg(&ni)
            .arg(&ci);
        // SAFETY: dinp/dout/inp >= N*C, weight >= C, mean/rstd >= N (checked); one warp
        // per row, rows >= N return.
        unsafe { l.launch(Self::row_cfg(n)) }
            .map_err(cuda_err("launching layernorm_backward_dinp"))?;

        let f = self
            .k
            .get(&format!("layernorm_backward_params_partial_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&dy)
            .arg(&x)
            .arg(&m)
            .arg(&r)
            .arg(&ni)
            .arg(&ci)
            .arg(&rpc)
            .arg(&part);
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial has chunks*2*C elements; gridDim.y = chunks = ceil(N/rows per
        // chunk); columns >= C and rows >= N are skipped in the kernel.
        unsafe { l.launch(cfg) }
            .map_err(cuda_err("launching layernorm_backward_params_partial"))?;

        let f = self.k.get("layernorm_backward_params_finalize")?;
        let mut l = s.launch_builder(f);
        l.arg(&part).arg(&chunks_i).arg(&ci).arg(&dp).arg(&db);
        let cfg = LaunchConfig {
            grid_dim: ((2 * c).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial chunks*2*C; dparams >= 2C (dweight at 0, dbias at C); threads
        // >= 2C return.
        unsafe { l.launch(cfg) }
            .map_err(cuda_err("launching layernorm_backward_params_finalize"))?;
        Ok(())
    }
}

//! Bias and residual helpers on the GPU (docs/MATH.md, "The model"): `kernels/residual.cu`.
//! The bias gradient is a deterministic column sum (per-chunk partials, then a
//! fixed-order pass), never float atomics.

use super::kernels::{as_i32, both, check_len, elementwise_cfg, KernelSet, ROWS_PER_CHUNK};
use super::{cuda_err, images, GpuContext, LogitElem};
use crate::error::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// The residual/bias kernels, loaded.
pub struct ResidualKernels {
    gpu: Arc<GpuContext>,
    k: KernelSet,
}

impl ResidualKernels {
    /// Loads `kernels/residual.cu`.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        for base in ["bias_add", "bias_residual", "colsum_partial"] {
            names.extend(both(base));
        }
        names.push("colsum_finalize".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(ResidualKernels {
            gpu: gpu.clone(),
            k: KernelSet::load(gpu, images::RESIDUAL, "residual.cu", &names)?,
        })
    }

    /// `y: [N, C] += bias: [C]`.
    pub fn bias_add<T: LogitElem>(
        &self,
        y: &mut impl DevicePtrMut<T>,
        bias: &impl DevicePtr<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let total = n * c;
        check_len("bias_add y", y.len(), total)?;
        check_len("bias_add bias", bias.len(), c)?;
        if total == 0 {
            return Ok(());
        }
        let (ci, total_i) = (as_i32("C", c)?, total as i64);
        let s = self.gpu.stream();
        let (yp, _g1) = y.device_ptr_mut(s);
        let (b, _g2) = bias.device_ptr(s);
        let f = self.k.get(&format!("bias_add_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&yp).arg(&b).arg(&total_i).arg(&ci);
        // SAFETY: y >= N*C, bias >= C (checked); grid-stride below N*C.
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(cuda_err("launching bias_add"))?;
        Ok(())
    }

    /// `y: [N, C] = (y + bias) + resid` (a Linear output, its bias, the residual).
    pub fn bias_residual<T: LogitElem>(
        &self,
        y: &mut impl DevicePtrMut<T>,
        bias: &impl DevicePtr<f32>,
        resid: &impl DevicePtr<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let total = n * c;
        check_len("bias_residual y", y.len(), total)?;
        check_len("bias_residual bias", bias.len(), c)?;
        check_len("bias_residual resid", resid.len(), total)?;
        if total == 0 {
            return Ok(());
        }
        let (ci, total_i) = (as_i32("C", c)?, total as i64);
        let s = self.gpu.stream();
        let (yp, _g1) = y.device_ptr_mut(s);
        let (b, _g2) = bias.device_ptr(s);
        let (r, _g3) = resid.device_ptr(s);
        let f = self.k.get(&format!("bias_residual_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&yp).arg(&b).arg(&r).arg(&total_i).arg(&ci);
        // SAFETY: y and resid >= N*C, bias >= C (checked); grid-stride below N*C.
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(cuda_err("launching bias_residual"))?;
        Ok(())
    }

    /// **Accumulates** the column sums of `x: [N, C]` into `out: [C]` (a bias gradient),
    /// in a fixed order.
    pub fn colsum<T: LogitElem>(
        &self,
        out: &mut impl DevicePtrMut<f32>,
        x: &impl DevicePtr<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len("colsum x", x.len(), n * c)?;
        check_len("colsum out", out.len(), c)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci) = (as_i32("rows", n)?, as_i32("C", c)?);
        as_i32("N*C", n * c)?;
        let chunks = n.div_ceil(ROWS_PER_CHUNK);
        let (chunks_i, rpc) = (as_i32("chunks", chunks)?, ROWS_PER_CHUNK as i32);
        let s = self.gpu.stream();
        let mut partial = self.gpu.zeros::<f32>(chunks * c)?;
        let (xp, _g1) = x.device_ptr(s);
        let (o, _g2) = out.device_ptr_mut(s);
        let (part, _g3) = partial.device_ptr_mut(s);
        let f = self.k.get(&format!("colsum_partial_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&xp).arg(&ni).arg(&ci).arg(&rpc).arg(&part);
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x >= N*C (checked), partial chunks*C; the kernel skips columns >= C
        // and rows >= N.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching colsum_partial"))?;
        let f = self.k.get("colsum_finalize")?;
        let mut l = s.launch_builder(f);
        l.arg(&part).arg(&chunks_i).arg(&ci).arg(&o);
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial chunks*C, out >= C (checked); threads >= C return.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching colsum_finalize"))?;
        Ok(())
    }
}

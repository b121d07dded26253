//! GELU (tanh approximation, docs/MATH.md, "The model") on the GPU with the preceding bias
//! fused: `kernels/gelu.cu`, the twin of [`crate::cpu::gelu`].

use super::kernels::{as_i32, both, check_len, elementwise_cfg, KernelSet};
use super::{cuda_err, images, GpuContext, LogitElem};
use crate::error::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};
use std::sync::Arc;

/// The GELU kernels, loaded.
pub struct GeluKernels {
    gpu: Arc<GpuContext>,
    k: KernelSet,
}

impl GeluKernels {
    /// Loads `kernels/gelu.cu`.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        names.extend(both("bias_gelu_forward"));
        names.extend(both("gelu_backward"));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(GeluKernels {
            gpu: gpu.clone(),
            k: KernelSet::load(gpu, images::GELU, "gelu.cu", &names)?,
        })
    }

    /// `pre: [N, C]` gets `+= bias` (when given), then `out = gelu(pre)`.
    pub fn bias_gelu_forward<T: LogitElem>(
        &self,
        pre: &mut impl DevicePtrMut<T>,
        bias: Option<&dyn DevicePtr<f32>>,
        out: &mut impl DevicePtrMut<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let total = n * c;
        check_len("gelu pre", pre.len(), total)?;
        check_len("gelu out", out.len(), total)?;
        if let Some(b) = bias {
            check_len("gelu bias", b.len(), c)?;
        }
        if total == 0 {
            return Ok(());
        }
        let ci = as_i32("C", c)?;
        let total_i = total as i64;
        let s = self.gpu.stream();
        let (p, _g1) = pre.device_ptr_mut(s);
        let (o, _g2) = out.device_ptr_mut(s);
        let bias_ptr = bias.map(|b| b.device_ptr(s));
        let b = bias_ptr.as_ref().map_or(0u64, |(p, _)| *p);
        let f = self.k.get(&format!("bias_gelu_forward_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&p).arg(&b).arg(&o).arg(&total_i).arg(&ci);
        // SAFETY: pre/out hold >= N*C elements, bias >= C or null (checked);
        // grid-stride loop below N*C.
        unsafe { l.launch(elementwise_cfg(total)) }
            .map_err(cuda_err("launching bias_gelu_forward"))?;
        Ok(())
    }

    /// Overwrites `dinp: [len]` with `dout · gelu'(inp)`.
    pub fn backward<T: LogitElem>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        inp: &impl DevicePtr<T>,
        dout: &impl DevicePtr<T>,
        len: usize,
    ) -> Result<()> {
        check_len("gelu dinp", dinp.len(), len)?;
        check_len("gelu inp", inp.len(), len)?;
        check_len("gelu dout", dout.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let total_i = len as i64;
        let s = self.gpu.stream();
        let (dx, _g1) = dinp.device_ptr_mut(s);
        let (x, _g2) = inp.device_ptr(s);
        let (dy, _g3) = dout.device_ptr(s);
        let f = self.k.get(&format!("gelu_backward_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&dx).arg(&x).arg(&dy).arg(&total_i);
        // SAFETY: the three buffers hold >= len elements (checked); grid-stride below len.
        unsafe { l.launch(elementwise_cfg(len)) }.map_err(cuda_err("launching gelu_backward"))?;
        Ok(())
    }
}

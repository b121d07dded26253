//! AdamW with global-norm clipping on the GPU: `kernels/adamw.cu`, the twin of
//! [`crate::cpu::adamw`] (`clip_grad_norm` then `AdamW::step`).
//!
//! Parameters, gradients and both moments are flat `f32` buffers in the fixed tensor
//! order ([`crate::cpu::params::tensor_layout`]). The global gradient norm is reduced
//! on the device in a fixed order (f64), and the clip scale it implies is read by the
//! update kernels from device memory: a step never waits for the host. The norm is
//! copied back only when asked for ([`GpuAdamW::grad_norm`]).

use super::kernels::{check_len, elementwise_cfg, f32_offset, KernelSet};
use super::{cuda_err, images, GpuContext};
use crate::config::ModelConfig;
use crate::cpu::adamw::AdamWState;
use crate::cpu::params::{is_matrix, tensor_layout};
use crate::error::{CybError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

// Keep in sync with kernels/adamw.cu.
const ADAMW_THREADS: u32 = 256;
const NORM_BLOCKS: usize = 512;

/// One tensor of the flat buffers: where it starts, how long, whether it is decayed.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// checkpoint name.
    pub name: String,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// Weight decay applies ([`is_matrix`]).
    pub decay: bool,
}

/// The segments of a model's flat parameter buffer, in the fixed tensor order.
pub fn segments(config: &ModelConfig) -> Vec<Segment> {
    let mut offset = 0;
    tensor_layout(config)
        .into_iter()
        .map(|(name, shape)| {
            let len = shape.iter().product();
            let seg = Segment {
                decay: is_matrix(&name),
                name,
                offset,
                len,
            };
            offset += len;
            seg
        })
        .collect()
}

/// AdamW state on the device (first and second moments, step count) and its kernels.
pub struct GpuAdamW {
    /// β1 (default 0.9)
    pub beta1: f32,
    /// β2 (default 0.95)
    pub beta2: f32,
    /// ε (default 1e-8)
    pub eps: f32,
    /// Decoupled weight decay on the matrices.
    pub weight_decay: f32,
    gpu: Arc<GpuContext>,
    k: KernelSet,
    segments: Vec<Segment>,
    total: usize,
    t: u64,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    partial: CudaSlice<f64>,
    /// `[norm, clip scale]` of the last step.
    norm_scale: CudaSlice<f32>,
}

impl GpuAdamW {
    /// Zero moments for a model of this config (the flat layout of [`segments`]).
    pub fn new(
        gpu: &Arc<GpuContext>,
        config: &ModelConfig,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    ) -> Result<Self> {
        let segments = segments(config);
        let total: usize = segments.iter().map(|s| s.len).sum();
        Ok(GpuAdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            gpu: gpu.clone(),
            k: KernelSet::load(
                gpu,
                images::ADAMW,
                "adamw.cu",
                &[
                    "grad_sq_partial",
                    "grad_norm_finalize",
                    "adamw_update",
                    "cast_f32_to_bf16",
                ],
            )?,
            segments,
            total,
            t: 0,
            m: gpu.zeros(total.max(1))?,
            v: gpu.zeros(total.max(1))?,
            partial: gpu.zeros(NORM_BLOCKS)?,
            norm_scale: gpu.htod(&[0.0f32, 1.0])?,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The step count and moments, per tensor (what [`crate::cpu::adamw::AdamW::state`]
    /// gives on the CPU: the same layout, so a snapshot resumes on either device).
    pub fn state(&self) -> Result<AdamWState> {
        if self.t == 0 {
            return Ok(AdamWState::default());
        }
        let (m, v) = (self.gpu.dtoh(&self.m)?, self.gpu.dtoh(&self.v)?);
        let split = |flat: &[f32]| -> Vec<Vec<f32>> {
            self.segments
                .iter()
                .map(|s| flat[s.offset..s.offset + s.len].to_vec())
                .collect()
        };
        Ok(AdamWState {
            t: self.t,
            m: split(&m),
            v: split(&v),
        })
    }

    /// Restores [`GpuAdamW::state`] (or a CPU optimiser's state of the same model).
    pub fn set_state(&mut self, state: &AdamWState) -> Result<()> {
        if state.m.is_empty() && state.v.is_empty() {
            self.m = self.gpu.zeros(self.total.max(1))?;
            self.v = self.gpu.zeros(self.total.max(1))?;
            self.t = state.t;
            return Ok(());
        }
        let flat = |x: &[Vec<f32>]| -> Result<Vec<f32>> {
            let fits = x.len() == self.segments.len()
                && x.iter().zip(&self.segments).all(|(x, s)| x.len() == s.len);
            if !fits {
                return Err(CybError::Shape(format!(
                    "AdamW state of {} tensors does not fit this model's {} tensors",
                    x.len(),
                    self.segments.len()
                )));
            }
            Ok(x.concat())
        };
        let (m, v) = (flat(&state.m)?, flat(&state.v)?);
        self.m = self.gpu.htod(&m)?;
        self.v = self.gpu.htod(&v)?;
        self.t = state.t;
        Ok(())
    }

    /// The tensors of the flat buffers.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Queues the global norm of `grads` and the clip scale for `max_norm` (the CPU's
    /// `clip_grad_norm`: scale `max/(norm + 1e-6)` when the norm is finite and above
    /// `max_norm`, else 1); `None` never clips.
    pub fn compute_grad_norm(
        &mut self,
        grads: &impl DevicePtr<f32>,
        max_norm: Option<f32>,
    ) -> Result<()> {
        check_len("gradients", grads.len(), self.total)?;
        let s = self.gpu.stream();
        let n = self.total as i64;
        let nblocks = NORM_BLOCKS as i32;
        let max = max_norm.unwrap_or(f32::INFINITY);
        let (g, _g1) = grads.device_ptr(s);
        let f = self.k.get("grad_sq_partial")?;
        let mut l = s.launch_builder(f);
        l.arg(&g).arg(&n).arg(&mut self.partial);
        let cfg = LaunchConfig {
            grid_dim: (NORM_BLOCKS as u32, 1, 1),
            block_dim: (ADAMW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: grads >= total (checked); partial has NORM_BLOCKS = gridDim entries.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching grad_sq_partial"))?;
        let f = self.k.get("grad_norm_finalize")?;
        let mut l = s.launch_builder(f);
        l.arg(&self.partial)
            .arg(&nblocks)
            .arg(&max)
            .arg(&mut self.norm_scale);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (ADAMW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial NORM_BLOCKS values, norm_scale 2; one block.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching grad_norm_finalize"))?;
        Ok(())
    }

    /// One AdamW update of `params` from `grads` (flat, [`segments`] layout) with
    /// learning rate `lr`, after clipping the global gradient norm to `max_norm`
    /// (`None`: no clipping). Queued; nothing is read back.
    pub fn step(
        &mut self,
        params: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        lr: f32,
        max_norm: Option<f32>,
    ) -> Result<()> {
        check_len("parameters", params.len(), self.total)?;
        self.compute_grad_norm(grads, max_norm)?;
        self.t += 1;
        let bc1 = 1.0 - (self.beta1 as f64).powf(self.t as f64);
        let bc2 = 1.0 - (self.beta2 as f64).powf(self.t as f64);
        let s = self.gpu.stream();
        let f = self.k.get("adamw_update")?;
        let (p0, _g1) = params.device_ptr_mut(s);
        let (g0, _g2) = grads.device_ptr(s);
        let (m0, _g3) = self.m.device_ptr_mut(s);
        let (v0, _g4) = self.v.device_ptr_mut(s);
        let (ns, _g5) = self.norm_scale.device_ptr(s);
        for seg in &self.segments {
            if seg.len == 0 {
                continue;
            }
            let off = f32_offset(seg.offset);
            let (p, g, m, v) = (p0 + off, g0 + off, m0 + off, v0 + off);
            let n = seg.len as i64;
            let wd = if seg.decay { self.weight_decay } else { 0.0 };
            let mut l = s.launch_builder(f);
            l.arg(&p).arg(&g).arg(&m).arg(&v).arg(&n);
            l.arg(&lr)
                .arg(&self.beta1)
                .arg(&self.beta2)
                .arg(&self.eps)
                .arg(&wd)
                .arg(&bc1)
                .arg(&bc2)
                .arg(&ns);
            // SAFETY: params, grads, m and v all hold >= total elements (checked; m, v
            // allocated with total) and [offset, offset+len) lies inside total;
            // norm_scale has 2 values; grid-stride below len.
            unsafe { l.launch(elementwise_cfg(seg.len)) }
                .map_err(cuda_err("launching adamw_update"))?;
        }
        Ok(())
    }

    /// Queues `copy[i] = bf16(params[i])` (round to nearest even) over the whole flat
    /// buffer: the bf16 working copy of the f32 master weights that a mixed-precision
    /// step multiplies with, refreshed after every [`GpuAdamW::step`].
    pub fn cast_to_bf16(
        &self,
        params: &CudaSlice<f32>,
        copy: &mut CudaSlice<half::bf16>,
    ) -> Result<()> {
        check_len("parameters", params.len(), self.total)?;
        check_len("bf16 parameter copy", copy.len(), self.total)?;
        if self.total == 0 {
            return Ok(());
        }
        let s = self.gpu.stream();
        let n = self.total as i64;
        let f = self.k.get("cast_f32_to_bf16")?;
        let mut l = s.launch_builder(f);
        l.arg(params).arg(copy).arg(&n);
        // SAFETY: params and copy both hold >= total elements (checked); grid-stride
        // below total.
        unsafe { l.launch(elementwise_cfg(self.total)) }
            .map_err(cuda_err("launching cast_f32_to_bf16"))?;
        Ok(())
    }

    /// The global gradient norm before clipping, of the last step (waits for the stream).
    pub fn grad_norm(&self) -> Result<f32> {
        Ok(self.gpu.dtoh(&self.norm_scale)?[0])
    }

    /// The moments `(m, v)` copied to the host, flat.
    pub fn moments_to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut m = self.gpu.dtoh(&self.m)?;
        let mut v = self.gpu.dtoh(&self.v)?;
        m.truncate(self.total);
        v.truncate(self.total);
        Ok((m, v))
    }

    /// Elements of the flat buffers.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the model has no parameters at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Fails with a clear message when the flat buffers do not match a config.
pub(crate) fn check_flat(what: &str, len: usize, config: &ModelConfig) -> Result<()> {
    let want: usize = segments(config).iter().map(|s| s.len).sum();
    if len != want {
        return Err(CybError::Shape(format!(
            "{what} has {len} elements, the model {want}"
        )));
    }
    Ok(())
}

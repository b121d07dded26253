//! Pause-step attention on the GPU (docs/MATH.md, "Attention: two modes", both modes,
//! [`AttnDims::mode`]): `kernels/pause_attention.cu`, the twin of
//! [`crate::cpu::attention`].
//!
//! [`PauseAttention::forward`] computes `out [B, K+1, T, d]` and the per-query
//! logsumexp `lse [B, H, K+1, T]` (f32, natural log of the scaled scores) from
//! `qkv [B, K+1, T, 3d]` without ever storing scores or probabilities;
//! [`PauseAttention::backward`] recomputes them from `lse` and overwrites
//! `dqkv [B, K+1, T, 3d]`. The backward has no float atomics: every gradient element is
//! summed by one thread in a fixed order, so results are bitwise reproducible.
//!
//! Head dims 64 and 128 are supported ([`SUPPORTED_D_HEAD`]); anything else, and every
//! length or size mismatch, is a [`CybError::Shape`] before anything is launched.

use super::{cuda_err, GpuContext, LogitElem};
use crate::config::PauseAttention as Mode;
use crate::error::{CybError, Result};
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Head dims the kernels are compiled for.
pub const SUPPORTED_D_HEAD: [usize; 2] = [64, 128];

// Keep in sync with kernels/pause_attention.cu (ATTN_THREADS, AttnCfg::ROWS, TC_*).
const THREADS: u32 = 256;
const TC_THREADS: u32 = 128;
const TC_ROWS: usize = 64;

/// Sizes of one attention call: `B`, `K`, `T`, `H`, `d_head` (model width `H * d_head`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// `B`
    pub batch: usize,
    /// `K` (there are `K+1` steps per position)
    pub pauses: usize,
    /// `T`
    pub seq: usize,
    /// `H`
    pub heads: usize,
    /// `d_head`
    pub d_head: usize,
    /// Which keys a pause step sees (docs/MATH.md, "Attention: two modes").
    pub mode: Mode,
}

impl AttnDims {
    /// Model width `d = H * d_head`.
    pub fn d(&self) -> usize {
        self.heads * self.d_head
    }
    /// Rows `B * (K+1) * T`.
    pub fn rows(&self) -> usize {
        self.batch * (self.pauses + 1) * self.seq
    }
    /// Length of `qkv` and `dqkv`: `B * (K+1) * T * 3d`.
    pub fn qkv_len(&self) -> usize {
        self.rows() * 3 * self.d()
    }
    /// Length of `out` and `dout`: `B * (K+1) * T * d`.
    pub fn out_len(&self) -> usize {
        self.rows() * self.d()
    }
    /// Length of `lse` (and of the backward's scratch `delta`): `B * H * (K+1) * T`.
    pub fn lse_len(&self) -> usize {
        self.rows() * self.heads
    }

    /// Checks that the kernels can run this shape: `B, H, T >= 1`, `d_head` in
    /// [`SUPPORTED_D_HEAD`], and every index fits the kernels' grid and 32-bit sizes.
    /// (`K = 0` is allowed: plain causal attention.)
    ///
    /// ```
    /// use cyb::gpu::attention::AttnDims;
    /// use cyb::config::PauseAttention;
    /// let ok = AttnDims { batch: 2, pauses: 3, seq: 47, heads: 3, d_head: 64, mode: PauseAttention::Shared };
    /// assert!(ok.validate().is_ok());
    /// assert!(AttnDims { d_head: 96, ..ok }.validate().is_err());
    /// assert!(AttnDims { seq: 0, ..ok }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CybError::Shape(format!("attention {self:?}: {msg}")));
        if self.batch == 0 || self.seq == 0 || self.heads == 0 {
            return bad("B, T and H must be at least 1".into());
        }
        if !SUPPORTED_D_HEAD.contains(&self.d_head) {
            return bad(format!(
                "d_head = {} is not supported by the kernels (supported: {SUPPORTED_D_HEAD:?})",
                self.d_head
            ));
        }
        let qkv = self
            .batch
            .checked_mul(self.pauses + 1)
            .and_then(|x| x.checked_mul(self.seq))
            .and_then(|x| x.checked_mul(3 * self.d()));
        match qkv {
            Some(n) if n <= i64::MAX as usize => {}
            _ => return bad("B*(K+1)*T*3d overflows".into()),
        }
        if self.batch * self.heads > 65_535 {
            return bad("B*H must be at most 65535 (grid z)".into());
        }
        if self.pauses + 1 > 65_535 {
            return bad("K+1 must be at most 65535 (grid y)".into());
        }
        if i32::try_from(self.seq).is_err()
            || i32::try_from(self.lse_len()).is_err()
            || i32::try_from(self.d()).is_err()
        {
            return bad("T, B*(K+1)*T and d must fit in 32 bits".into());
        }
        Ok(())
    }

    fn check_len(&self, what: &str, got: usize, want: usize, formula: &str) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(CybError::Shape(format!(
                "attention {self:?}: {what} has {got} elements, expected {formula} = {want}"
            )))
        }
    }

    /// Checks the lengths of the forward's buffers (after [`AttnDims::validate`]).
    pub fn check_forward(&self, qkv: usize, out: usize, lse: usize) -> Result<()> {
        self.validate()?;
        self.check_len("qkv", qkv, self.qkv_len(), "B*(K+1)*T*3d")?;
        self.check_len("out", out, self.out_len(), "B*(K+1)*T*d")?;
        self.check_len("lse", lse, self.lse_len(), "B*H*(K+1)*T")
    }

    /// Checks the lengths of the backward's buffers (after [`AttnDims::validate`]).
    pub fn check_backward(
        &self,
        qkv: usize,
        out: usize,
        dout: usize,
        lse: usize,
        dqkv: usize,
        delta: usize,
    ) -> Result<()> {
        self.check_forward(qkv, out, lse)?;
        self.check_len("dout", dout, self.out_len(), "B*(K+1)*T*d")?;
        self.check_len("dqkv", dqkv, self.qkv_len(), "B*(K+1)*T*3d")?;
        self.check_len("delta", delta, self.lse_len(), "B*H*(K+1)*T")
    }

    /// Rows per block of the fwd/dQ/dK/dV kernels: 256 threads, `d_head/16` per row.
    fn block_rows(&self) -> usize {
        THREADS as usize / (self.d_head / 16)
    }

    /// The tensor-core forward: 64 queries (4 warps of 16) per block.
    fn tc_config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                self.seq.div_ceil(TC_ROWS) as u32,
                (self.pauses + 1) as u32,
                (self.batch * self.heads) as u32,
            ),
            block_dim: (TC_THREADS, 1, 1),
            shared_mem_bytes: 0, // static shared memory only (< 48 KB)
        }
    }

    fn tiles_config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                self.seq.div_ceil(self.block_rows()) as u32,
                (self.pauses + 1) as u32,
                (self.batch * self.heads) as u32,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0, // static shared memory only (< 48 KB)
        }
    }

    /// `(B, K+1, T, H)` as the kernels' `int` arguments (valid after `validate`).
    fn args(&self) -> [i32; 4] {
        [
            self.batch as i32,
            (self.pauses + 1) as i32,
            self.seq as i32,
            self.heads as i32,
        ]
    }

    /// The mode as the kernels' last `int` argument (`PauseMode` in
    /// kernels/pause_mask.cuh: 0 shared, 1 private).
    fn mode_arg(&self) -> i32 {
        match self.mode {
            Mode::Shared => 0,
            Mode::Private => 1,
        }
    }
}

/// The four kernels of one (element type, head dim).
struct Set {
    fwd: CudaFunction,
    dq: CudaFunction,
    dkdv: CudaFunction,
}

/// Pause-step attention kernels loaded on one [`GpuContext`].
///
/// ```no_run
/// use cyb::gpu::attention::{AttnDims, PauseAttention};
/// use cyb::gpu::GpuContext;
/// let gpu = GpuContext::new(0)?;
/// let attn = PauseAttention::new(&gpu)?;
/// let dims = AttnDims { batch: 1, pauses: 3, seq: 16, heads: 2, d_head: 64, mode: cyb::config::PauseAttention::Shared };
/// let qkv = gpu.htod(&vec![0.1f32; dims.qkv_len()])?;
/// let mut out = gpu.zeros::<f32>(dims.out_len())?;
/// let mut lse = gpu.zeros::<f32>(dims.lse_len())?;
/// attn.forward(&qkv, &mut out, &mut lse, dims)?;
/// # Ok::<(), cyb::CybError>(())
/// ```
pub struct PauseAttention {
    gpu: Arc<GpuContext>,
    /// Indexed by `[bf16 as usize][d_head == 128 as usize]`.
    sets: [[Set; 2]; 2],
    /// bf16 forward, dQ and dK/dV on tensor cores, `[d_head == 128 as usize]`.
    fwd_tc: [CudaFunction; 2],
    dq_tc: [CudaFunction; 2],
    dkdv_tc: [CudaFunction; 2],
    tensor_cores: bool,
    delta_f32: CudaFunction,
    delta_bf16: CudaFunction,
}

impl std::fmt::Debug for PauseAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseAttention").finish_non_exhaustive()
    }
}

impl PauseAttention {
    /// Loads the kernels of `kernels/pause_attention.cu` into the context of `gpu`.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        let module = gpu.load_module(super::images::PAUSE_ATTENTION, "pause_attention.cu")?;
        let f = |name: String| {
            module
                .load_function(&name)
                .map_err(cuda_err(&format!("loading kernel {name}")))
        };
        let set = |ty: &str, dh: usize| -> Result<Set> {
            Ok(Set {
                fwd: f(format!("pause_attn_fwd_{ty}_d{dh}"))?,
                dq: f(format!("pause_attn_dq_{ty}_d{dh}"))?,
                dkdv: f(format!("pause_attn_dkdv_{ty}_d{dh}"))?,
            })
        };
        Ok(PauseAttention {
            gpu: gpu.clone(),
            sets: [
                [set("f32", 64)?, set("f32", 128)?],
                [set("bf16", 64)?, set("bf16", 128)?],
            ],
            fwd_tc: [
                f("pause_attn_fwd_tc_bf16_d64".into())?,
                f("pause_attn_fwd_tc_bf16_d128".into())?,
            ],
            dq_tc: [
                f("pause_attn_dq_tc_bf16_d64".into())?,
                f("pause_attn_dq_tc_bf16_d128".into())?,
            ],
            dkdv_tc: [
                f("pause_attn_dkdv_tc_bf16_d64".into())?,
                f("pause_attn_dkdv_tc_bf16_d128".into())?,
            ],
            tensor_cores: true,
            delta_f32: f("pause_attn_delta_f32".into())?,
            delta_bf16: f("pause_attn_delta_bf16".into())?,
        })
    }

    /// The context the kernels run on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.gpu
    }

    /// Whether the bf16 kernels run on tensor cores (`mma.sync`, the default) or on the
    /// CUDA-core kernels that f32 uses. Both compute the same function; the switch
    /// exists so the two can be compared and timed against each other.
    pub fn with_tensor_cores(mut self, on: bool) -> Self {
        self.tensor_cores = on;
        self
    }

    fn set<T: LogitElem>(&self, dims: AttnDims) -> &Set {
        &self.sets[(T::SUFFIX == "bf16") as usize][(dims.d_head == 128) as usize]
    }

    /// `qkv [B,K+1,T,3d]` → `out [B,K+1,T,d]`, `lse [B,H,K+1,T]` (f32). Queued on the
    /// context's stream; returns without waiting.
    pub fn forward<T: LogitElem>(
        &self,
        qkv: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        dims: AttnDims,
    ) -> Result<()> {
        dims.check_forward(qkv.len(), out.len(), lse.len())?;
        let [b, k1, t, h] = dims.args();
        let mode = dims.mode_arg();
        let tc = self.tensor_cores && T::SUFFIX == "bf16";
        let (f, cfg) = if tc {
            (
                &self.fwd_tc[(dims.d_head == 128) as usize],
                dims.tc_config(),
            )
        } else {
            (&self.set::<T>(dims).fwd, dims.tiles_config())
        };
        let mut l = self.gpu.stream().launch_builder(f);
        l.arg(qkv)
            .arg(out)
            .arg(lse)
            .arg(&b)
            .arg(&k1)
            .arg(&t)
            .arg(&h)
            .arg(&mode);
        // SAFETY: dims validated (d_head is one the kernel was compiled for, sizes fit
        // the grid and 64-bit offsets); qkv, out and lse have exactly the lengths the
        // kernel indexes (checked above); the tensor-core kernel is only chosen for bf16
        // elements; rows past T are clamped for reads, never written.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching pause_attn_fwd"))?;
        Ok(())
    }

    /// `dqkv [B,K+1,T,3d]` (overwritten) from `dout [B,K+1,T,d]`, the forward's `qkv`,
    /// `out` and `lse`. Allocates the `B*H*(K+1)*T` f32 scratch for `D = rowsum(dO∘O)`;
    /// [`PauseAttention::backward_with_scratch`] takes it from the caller.
    pub fn backward<T: LogitElem>(
        &self,
        qkv: &CudaSlice<T>,
        out: &CudaSlice<T>,
        dout: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        dqkv: &mut CudaSlice<T>,
        dims: AttnDims,
    ) -> Result<()> {
        dims.validate()?;
        let mut delta = self.gpu.zeros::<f32>(dims.lse_len())?;
        self.backward_with_scratch(qkv, out, dout, lse, dqkv, &mut delta, dims)
    }

    /// [`PauseAttention::backward`] with a caller-owned scratch `delta` of
    /// [`AttnDims::lse_len`] f32 (its contents are overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_scratch<T: LogitElem>(
        &self,
        qkv: &CudaSlice<T>,
        out: &CudaSlice<T>,
        dout: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        dqkv: &mut CudaSlice<T>,
        delta: &mut CudaSlice<f32>,
        dims: AttnDims,
    ) -> Result<()> {
        dims.check_backward(
            qkv.len(),
            out.len(),
            dout.len(),
            lse.len(),
            dqkv.len(),
            delta.len(),
        )?;
        let stream = self.gpu.stream();
        let [b, k1, t, h] = dims.args();
        let mode = dims.mode_arg();
        let dh = dims.d_head as i32;

        let warps = dims.rows() * dims.heads; // one warp per (row, head)
        let per_block = (THREADS / 32) as usize;
        let cfg = LaunchConfig {
            grid_dim: (warps.div_ceil(per_block) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let delta_fn = if T::SUFFIX == "bf16" {
            &self.delta_bf16
        } else {
            &self.delta_f32
        };
        let mut l = stream.launch_builder(delta_fn);
        l.arg(out)
            .arg(dout)
            .arg(&mut *delta)
            .arg(&b)
            .arg(&k1)
            .arg(&t)
            .arg(&h)
            .arg(&dh);
        // SAFETY: out and dout have B*(K+1)*T*d elements, delta B*H*(K+1)*T (checked);
        // warps past B*(K+1)*T*H return before touching memory.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching pause_attn_delta"))?;

        let set = self.set::<T>(dims);
        let tc = self.tensor_cores && T::SUFFIX == "bf16";
        let i = (dims.d_head == 128) as usize;
        let (dq, dkdv, cfg) = if tc {
            (&self.dq_tc[i], &self.dkdv_tc[i], dims.tc_config())
        } else {
            (&set.dq, &set.dkdv, dims.tiles_config())
        };
        for (f, what) in [
            (dq, "launching pause_attn_dq"),
            (dkdv, "launching pause_attn_dkdv"),
        ] {
            let mut l = stream.launch_builder(f);
            l.arg(qkv)
                .arg(dout)
                .arg(lse)
                .arg(&*delta)
                .arg(&mut *dqkv)
                .arg(&b)
                .arg(&k1)
                .arg(&t)
                .arg(&h)
                .arg(&mode);
            // SAFETY: dims validated; qkv and dqkv have B*(K+1)*T*3d elements, dout
            // B*(K+1)*T*d, lse and delta B*H*(K+1)*T (checked above). The dQ kernel
            // writes only the q third of dqkv, the dK/dV kernel only the k and v thirds,
            // so the two launches never write the same element. The tensor-core kernels
            // are only chosen for bf16 elements.
            unsafe { l.launch(cfg) }.map_err(cuda_err(what))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Kernel parameters in launch order (`p` pointer, `i` 32-bit int), checked against
    /// the PTX from build.rs so that a signature drifting from its launch fails without
    /// a GPU.
    fn params(name: &str) -> String {
        let ptx = super::super::kernels::image_ptx(super::super::images::PAUSE_ATTENTION);
        let start = ptx
            .find(&format!(".entry {name}("))
            .unwrap_or_else(|| panic!("no .entry {name} in the PTX"));
        let list = &ptx[start..][..ptx[start..].find(')').expect("parameter list")];
        list.split(',')
            .map(|p| {
                match p
                    .split_whitespace()
                    .find(|w| w.starts_with(".u") || w.starts_with(".s"))
                {
                    Some(".u64") => 'p',
                    Some(".u32") | Some(".s32") => 'i',
                    other => panic!("{name}: unexpected parameter type {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn kernel_signatures_match_launches() {
        for ty in ["f32", "bf16"] {
            for dh in super::SUPPORTED_D_HEAD {
                // forward(qkv, out, lse, B, K+1, T, H, mode)
                assert_eq!(params(&format!("pause_attn_fwd_{ty}_d{dh}")), "pppiiiii");
                if ty == "bf16" {
                    assert_eq!(params(&format!("pause_attn_fwd_tc_{ty}_d{dh}")), "pppiiiii");
                    assert_eq!(
                        params(&format!("pause_attn_dq_tc_{ty}_d{dh}")),
                        "pppppiiiii"
                    );
                    assert_eq!(
                        params(&format!("pause_attn_dkdv_tc_{ty}_d{dh}")),
                        "pppppiiiii"
                    );
                }
                // dq/dkdv(qkv, dout, lse, delta, dqkv, B, K+1, T, H, mode)
                assert_eq!(params(&format!("pause_attn_dq_{ty}_d{dh}")), "pppppiiiii");
                assert_eq!(params(&format!("pause_attn_dkdv_{ty}_d{dh}")), "pppppiiiii");
            }
            // delta(out, dout, delta, B, K+1, T, H, dh)
            assert_eq!(params(&format!("pause_attn_delta_{ty}")), "pppiiiii");
        }
    }
}

//! STUB of `src/gpu/attention.rs` (pause-step attention, SPEC section 3), which is
//! being written in parallel: the same public API, so that [`super::model`] compiles,
//! but `forward`/`backward` return [`CybError::Unavailable`]. At the merge, delete this
//! file and point the `use` in `model.rs` at `super::attention`.

use super::{GpuContext, LogitElem};
use crate::error::{CybError, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

const NOT_MERGED: &str = "pause attention kernels not merged yet";

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub pauses: usize,
    pub seq: usize,
    pub heads: usize,
    pub d_head: usize,
}

/// The pause-attention kernels (stub).
#[derive(Debug)]
pub struct PauseAttention;

impl PauseAttention {
    /// Succeeds, so that a model can be built and copied without attention.
    pub fn new(_gpu: &Arc<GpuContext>) -> Result<Self> {
        Ok(PauseAttention)
    }

    /// qkv `[B,K+1,T,3d]` → out `[B,K+1,T,d]`, lse `[B,H,K+1,T]` (f32).
    pub fn forward<T: LogitElem>(
        &self,
        _qkv: &CudaSlice<T>,
        _out: &mut CudaSlice<T>,
        _lse: &mut CudaSlice<f32>,
        _dims: AttnDims,
    ) -> Result<()> {
        Err(CybError::Unavailable(NOT_MERGED.into()))
    }

    /// dqkv `[B,K+1,T,3d]` (overwritten) from dout `[B,K+1,T,d]`.
    pub fn backward<T: LogitElem>(
        &self,
        _qkv: &CudaSlice<T>,
        _out: &CudaSlice<T>,
        _dout: &CudaSlice<T>,
        _lse: &CudaSlice<f32>,
        _dqkv: &mut CudaSlice<T>,
        _dims: AttnDims,
    ) -> Result<()> {
        Err(CybError::Unavailable(NOT_MERGED.into()))
    }
}

//! Device memory: the bytes the crate's buffers hold and their **peak** over a stretch
//! of work, read from the device's memory pool.
//!
//! On a device that supports memory pools (every card since Pascal on Linux, the H200
//! included) `cudarc` allocates every [`cudarc::driver::CudaSlice`] stream-ordered
//! (`cuMemAllocAsync`) from the device's current pool, and the driver keeps two counters
//! for it: the bytes in use (`CU_MEMPOOL_ATTR_USED_MEM_CURRENT`) and their high
//! watermark since the last reset (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`). So a step's peak,
//! temporaries freed inside it included, is: reset, run, read. `cuMemGetInfo` (device
//! memory in use by everything, the context and cuBLAS's workspace too) only sees what is
//! still allocated when it is called.
//!
//! The CPU emulator of the driver (`scripts/host_emu/driver.cpp`) keeps the same two
//! counters over all its allocations, so a test measures the peak the same way there.
//!
//! ```
//! use cyb::gpu::{memory::PeakMemory, GpuContext};
//! # fn main() -> Result<(), cyb::CybError> {
//! if !cyb::gpu::device_available() {
//!     return Ok(()); // compiled everywhere, runs where there is a device
//! }
//! let gpu = GpuContext::new(0)?;
//! let Some(mut meter) = PeakMemory::new(&gpu)? else {
//!     return Ok(()); // no memory pool: no peak to read
//! };
//! meter.reset()?;
//! let a = gpu.zeros::<f32>(1 << 20)?; // 4 MiB, freed again below
//! drop(a);
//! let b = gpu.zeros::<f32>(1 << 10)?;
//! gpu.synchronize()?;
//! assert!(meter.peak_bytes()? >= meter.start_bytes() + (4 << 20));
//! # drop(b);
//! # Ok(())
//! # }
//! ```

use super::{cuda_err, GpuContext};
use crate::error::Result;
use cudarc::driver::result::{device, mem_pool};
use cudarc::driver::sys::{CUmemPool_attribute, CUmemoryPool};
use std::sync::Arc;

/// The peak of the device memory the crate's buffers hold (the device's current memory
/// pool, where `cudarc` allocates), since [`PeakMemory::reset`].
#[derive(Debug)]
pub struct PeakMemory {
    /// Keeps the context (and so the pool's device) alive while the pool is read.
    _gpu: Arc<GpuContext>,
    pool: CUmemoryPool,
    start: usize,
}

impl PeakMemory {
    /// The meter of `gpu`'s device, `None` when its context does not allocate from a
    /// memory pool (a device without `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`: then
    /// no peak can be read; [`device_bytes_in_use`] still works). Starts reset.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Option<Self>> {
        if !gpu.context().has_async_alloc() {
            return Ok(None);
        }
        // SAFETY: the device handle comes from the live context.
        let pool = unsafe { device::get_mem_pool(gpu.context().cu_device()) }
            .map_err(cuda_err("querying the device's memory pool"))?;
        let mut meter = PeakMemory {
            _gpu: gpu.clone(),
            pool,
            start: 0,
        };
        meter.reset()?;
        Ok(Some(meter))
    }

    fn attribute(&self, attr: CUmemPool_attribute) -> Result<usize> {
        let mut value: u64 = 0;
        // SAFETY: both attributes read are cuuint64_t, `value` is one; the pool is the
        // device's, alive with the context this meter holds.
        unsafe { mem_pool::get_attribute(self.pool, attr, (&mut value as *mut u64).cast()) }
            .map_err(cuda_err("reading the memory pool's counters"))?;
        Ok(value as usize)
    }

    /// Bytes the pool's allocations hold now.
    pub fn used_bytes(&self) -> Result<usize> {
        self.attribute(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    /// Starts the peak again from the bytes in use now ([`PeakMemory::start_bytes`]).
    pub fn reset(&mut self) -> Result<()> {
        let mut zero: u64 = 0;
        // SAFETY: the high watermark is a cuuint64_t that can only be set to 0.
        unsafe {
            mem_pool::set_attribute(
                self.pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        }
        .map_err(cuda_err("resetting the memory pool's high watermark"))?;
        self.start = self.used_bytes()?;
        Ok(())
    }

    /// Bytes in use at the last [`PeakMemory::reset`].
    pub fn start_bytes(&self) -> usize {
        self.start
    }

    /// The most bytes the pool's allocations held at once since the last
    /// [`PeakMemory::reset`] (at least what they held then: the driver's watermark
    /// restarts from 0). Read it after waiting for the stream
    /// ([`GpuContext::synchronize`]): stream-ordered frees complete in stream order.
    pub fn peak_bytes(&self) -> Result<usize> {
        let high = self.attribute(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        Ok(high.max(self.start))
    }
}

/// Device memory in use by everything on the device (`total - free` from
/// `cuMemGetInfo`: the contexts, cuBLAS's workspaces and every allocation, of this
/// process and others), for the context current on the calling thread.
pub fn device_bytes_in_use(gpu: &GpuContext) -> Result<usize> {
    gpu.context()
        .bind_to_thread()
        .map_err(cuda_err("binding the CUDA context"))?;
    let (free, total) =
        cudarc::driver::result::mem_get_info().map_err(cuda_err("querying device memory"))?;
    Ok(total.saturating_sub(free))
}

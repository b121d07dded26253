//! Bucketed gradient all-reduce overlapping the backward (llm.c's and PyTorch DDP's
//! design), the [`GradReady`] observer of a data-parallel replica.
//!
//! The backward reports each range of the flat gradient buffer as soon as its last
//! kernel is queued; the ranges descend through the buffer and each ends where the
//! previous one started ([`super::grad_ready`]), so consecutive ranges join into one
//! contiguous bucket. When a bucket holds at least the cap's bytes it is launched: the
//! communication stream waits for an event recorded now on the compute stream (every
//! kernel that wrote the bucket is before it), then `ncclAllReduce` (sum, in place) of
//! the bucket runs there while the compute stream goes on with the layers below.
//! [`GradBuckets::finish`] launches the last bucket and makes the compute stream wait
//! for the communication stream, so the optimizer step (and the norm its clipping
//! reads) sees every reduced gradient. A range that does not end at the open bucket's
//! start (not the model's order) closes the open bucket first: buckets stay
//! contiguous whatever the order, only bigger buckets are lost.
//!
//! The buckets are the same on every rank (same model, same cap), so the ranks' n-th
//! collectives match. The sums equal one all-reduce of the whole buffer element by
//! element where the reduction order does not depend on the count (the emulator's
//! fixed rank order); NCCL's ring and tree may chunk differently per count, so on
//! hardware the bucketed and unbucketed sums may differ in the last bits (the replicas
//! still agree with each other).

use super::cuda_err;
use super::grad_ready::GradReady;
use crate::error::{CybError, Result};
use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::safe::{Comm, ReduceOp};
use std::ops::Range;
use std::sync::Arc;

/// One backward's buckets on one replica.
pub(crate) struct GradBuckets<'a> {
    /// Runs every all-reduce on its own stream (the communication stream).
    comm: &'a Comm,
    /// The stream the backward is queued on.
    compute: &'a Arc<CudaStream>,
    /// A bucket is launched once it holds this many elements (at least 1).
    cap: usize,
    /// The bucket being filled (descending: a new range is prepended).
    open: Option<Range<usize>>,
    /// Elements reported so far (must be the whole buffer at the end).
    reported: usize,
    /// Buckets launched so far.
    launched: usize,
    /// Rank that fails at the first report (tests of the failure path).
    fail_rank: Option<usize>,
}

impl<'a> GradBuckets<'a> {
    /// Buckets of at least `cap_bytes` (> 0) of f32 gradients, reduced by `comm` on its
    /// stream, which must not be `compute`. With `fail_rank`, the first report fails
    /// as a rank that crashed before its first collective would.
    pub(crate) fn new(
        comm: &'a Comm,
        compute: &'a Arc<CudaStream>,
        cap_bytes: usize,
        fail_rank: Option<usize>,
    ) -> GradBuckets<'a> {
        GradBuckets {
            comm,
            compute,
            cap: (cap_bytes / std::mem::size_of::<f32>()).max(1),
            open: None,
            reported: 0,
            launched: 0,
            fail_rank,
        }
    }

    /// Launches the open bucket, if any, on the communication stream.
    fn launch(&mut self, grads: &mut CudaSlice<f32>) -> Result<()> {
        let Some(range) = self.open.take() else {
            return Ok(());
        };
        let comm_stream = self.comm.stream();
        // Everything queued on the compute stream so far, the bucket's last writes
        // included, happens before the all-reduce.
        comm_stream
            .join(self.compute)
            .map_err(cuda_err("ordering a gradient bucket after its backward"))?;
        self.comm
            .all_reduce_in_place(&mut grads.slice_mut(range.clone()), &ReduceOp::Sum)
            .map_err(|e| {
                CybError::Cuda(format!(
                    "NCCL all-reduce of gradient bucket {} (elements {range:?}): {:?}",
                    self.launched, e.0
                ))
            })?;
        self.launched += 1;
        Ok(())
    }

    /// Launches the last bucket and makes the compute stream wait for every
    /// all-reduce; checks that the backward reported the whole buffer. Returns the
    /// number of buckets.
    pub(crate) fn finish(mut self, grads: &mut CudaSlice<f32>) -> Result<usize> {
        self.launch(grads)?;
        // A collective that failed (a rank lost) may surface only here, where the
        // compute stream waits for it.
        self.compute.join(&self.comm.stream()).map_err(cuda_err(
            "NCCL all-reduce of the gradients (waiting for it)",
        ))?;
        if self.reported != grads.len() {
            return Err(CybError::Shape(format!(
                "the backward reported {} of {} gradient elements as final",
                self.reported,
                grads.len()
            )));
        }
        Ok(self.launched)
    }
}

impl GradReady for GradBuckets<'_> {
    fn ready(&mut self, grads: &mut CudaSlice<f32>, range: Range<usize>) -> Result<()> {
        if let Some(rank) = self.fail_rank {
            return Err(CybError::Cuda(format!(
                "rank {rank}: failure injected before the gradient all-reduce"
            )));
        }
        self.reported += range.len();
        match &mut self.open {
            Some(open) if open.start == range.end => open.start = range.start,
            _ => {
                self.launch(grads)?;
                self.open = Some(range);
            }
        }
        if self.open.as_ref().is_some_and(|b| b.len() >= self.cap) {
            self.launch(grads)?;
        }
        Ok(())
    }
}

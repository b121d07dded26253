//! The backward's "these gradients are final" hook: [`GradReady`], told by
//! [`GpuModel::forward_backward_observed`] which range of the flat gradient buffer
//! ([`GpuModel::grads_device`]) holds its final values as soon as the backward has
//! queued the last kernel that writes it, so that an observer can start work on it
//! (data parallel: an all-reduce on a second stream, see [`super::data_parallel`])
//! while the rest of the backward runs. The model knows nothing of what the observer
//! does; without an observer ([`GpuModel::forward_backward`]) nothing is reported.
//!
//! **Order.** The flat buffer holds the tensors in the order the checkpoint lists them
//! (docs/MATH.md, "Checkpoints"; `cyb::cpu::params::tensor_layout`):
//! `[tok_emb | pos_emb | depth_emb | block 0 | ... | block L-1 | ln_f]`, each block
//! `[ln1 | qkv | proj | ln2 | fc | mlp.proj]` (weight, bias). The backward runs the
//! other way: `ln_f`, then block `L-1` down to block 0 (inside a block `mlp.proj`,
//! `fc`, `ln2`, `proj`, `qkv`, `ln1`), and the embedding tables last (`tok_emb` is the
//! tied head's weight: the head's gradient lands in it first, the embedding backward
//! adds to it at the very end). So the ranges come in **descending** buffer order: the
//! first ends at the buffer's end, each next one ends where the previous one started,
//! the last starts at 0. The completed part is always a suffix of the buffer, so a
//! bucket of consecutive ranges is one contiguous slice.
//!
//! [`GpuModel::forward_backward_observed`]: super::model::GpuModel::forward_backward_observed
//! [`GpuModel::forward_backward`]: super::model::GpuModel::forward_backward
//! [`GpuModel::grads_device`]: super::model::GpuModel::grads_device
//!
//! ```no_run
//! use cyb::gpu::{cudarc::driver::CudaSlice, grad_ready::GradReady, model::GpuModel, GpuContext};
//! use cyb::{config::ModelConfig, rng::seeded, Model, Objective};
//! use std::ops::Range;
//! /// Remembers what was reported.
//! struct Log(Vec<Range<usize>>);
//! impl GradReady for Log {
//!     fn ready(&mut self, _grads: &mut CudaSlice<f32>, range: Range<usize>) -> cyb::Result<()> {
//!         self.0.push(range);
//!         Ok(())
//!     }
//! }
//! let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 2, n_head: 2, t_max: 4, k_max: 1,
//!     pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
//! let cpu: Model<f32> = Model::init(c, &mut seeded(0))?;
//! let mut m = GpuModel::from_cpu(&GpuContext::new(0)?, &cpu)?;
//! let obj = Objective::ap_default().resolve(1)?;
//! let mut log = Log(Vec::new());
//! m.forward_backward_observed(&[1, 2], &[2, 3], 1, 2, 1, &obj, &mut log)?;
//! assert_eq!(log.0.first().map(|r| r.end), Some(m.grads_device().len()));
//! assert_eq!(log.0.last().map(|r| r.start), Some(0));
//! # Ok::<(), cyb::CybError>(())
//! ```

use crate::error::Result;
use cudarc::driver::CudaSlice;
use std::ops::Range;

/// Told by the GPU backward when a range of the flat gradient buffer is final.
pub trait GradReady {
    /// `range` (elements of `grads`, the model's flat gradient buffer) holds its final
    /// gradients once the work queued so far on the model's stream has run: nothing
    /// later in this backward writes it. Called in backward order with disjoint,
    /// adjacent ranges that cover the buffer (see the module docs). An observer that
    /// works on the range on another stream must make that stream wait for the
    /// model's stream first (an event recorded now), and the model's stream must wait
    /// for it before anything reads or writes the range again (the optimizer step, the
    /// next backward). An error stops the backward and is returned by it.
    fn ready(&mut self, grads: &mut CudaSlice<f32>, range: Range<usize>) -> Result<()>;
}

/// The observer of a plain backward: ignores every report.
pub(crate) struct Unobserved;

impl GradReady for Unobserved {
    fn ready(&mut self, _grads: &mut CudaSlice<f32>, _range: Range<usize>) -> Result<()> {
        Ok(())
    }
}

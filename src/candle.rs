//! The CYB loss as a [`candle`](https://github.com/huggingface/candle) custom op
//! (feature `candle`): a candle model produces the logits, this crate's loss scores
//! them, and candle's autograd carries the gradient back into the model.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use cyb::{candle::cyb_loss, Objective, Reduction};
//!
//! // Logits [B, K+1, T, V+1] from any candle model (here a leaf variable), targets
//! // [B, T] (-1 = ignored position).
//! let (b, k, t, v) = (2, 3, 4, 10);
//! let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, k + 1, t, v + 1), &Device::Cpu)?)?;
//! let targets = Tensor::new(&[[1i64, 2, -1, 9], [0, 5, 5, 3]], &Device::Cpu)?;
//!
//! let objective = Objective::ap_default().resolve(k)?;
//! let loss = cyb_loss(&logits, &targets, &objective, Reduction::Mean, None)?;
//! let grads = loss.backward()?; // through the op's backward (this crate's CPU reference)
//! let dlogits = grads.get(&logits).expect("logits take part in the loss");
//! assert_eq!(dlogits.dims(), &[b, k + 1, t, v + 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **DK bias.** The op adds the objective's `dk_bias` to every DK logit, and no other:
//! a candle model has no `cyb` config, so `Objective::resolve` (bias 0) is right for
//! it. Logits of a `cyb` model (whose config carries `dk_bias`) are scored as the
//! model scores them with `objective.for_model(config.dk_bias)`.
//!
//! [`CybLossOp`] is the op itself: `logits.apply_op1(op)` gives the per-position
//! losses `w_i L_i`, `[B, T]` (0 at ignored positions), and its backward takes one
//! upstream gradient per position; [`cyb_loss`] adds the reduction with ordinary
//! candle ops. Targets and weights are constants (no gradient).
//!
//! **Devices.** The op runs on candle's CPU device through [`crate::cpu::loss`] (the
//! reference, f64 per-position math), for `f32` and `f64` logits. There is no CUDA path,
//! and no buffer sharing with `cyb::gpu::loss` (feature `cuda`): candle 0.11 is built
//! on `cudarc` 0.19.10, the same release as this crate, so its `CudaStorage`
//! (`as_cuda_slice`, `wrap_cuda_slice`) holds the very `CudaSlice` type
//! `cyb::gpu::CybLoss` takes, and a `cuda_fwd` could pass it without a copy. But
//! candle's `cuda` feature turns on cudarc's `dynamic-linking` while this crate's
//! `cuda` feature uses `dynamic-loading` (nothing CUDA needed to build), and cudarc's
//! build script refuses both at once ("Both `dynamic-loading` and `dynamic-linking`
//! features are active, this is a bug"; checked with a crate that asks for both): the
//! two features cannot be in one build, so the CUDA half of the op cannot even be
//! compiled. A tensor on a CUDA device therefore gets candle's own "no cuda
//! implementation" error from [`CybLossOp`]. A trainer that owns its cudarc buffers
//! calls `cyb::gpu::loss` directly (see the example in its module docs).

use crate::cpu::loss::{
    check_targets, dlogits_from_row_grads, position_objectives, row_scalars, LossForward,
    LossShape, RowScalar,
};
use crate::error::CybError;
use crate::objective::{Reduction, ResolvedObjective};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use num_traits::Float;

/// A [`CybError`] as a candle error (keeps its message).
fn cyb_err(e: CybError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The loss shape of logits dimensions `[B, K+1, T, V+1]`.
fn loss_shape(dims: &[usize]) -> candle_core::Result<LossShape> {
    match *dims {
        [batch, k1, seq, v1] if k1 >= 1 && v1 >= 2 => Ok(LossShape {
            batch,
            pauses: k1 - 1,
            seq,
            vocab: v1 - 1,
        }),
        _ => Err(cyb_err(CybError::Shape(format!(
            "CYB logits must be [B, K+1, T, V+1] with K+1 >= 1 and V+1 >= 2, got {dims:?}"
        )))),
    }
}

/// The CYB loss per position as a candle [`CustomOp1`] on logits `[B, K+1, T, V+1]`
/// (depth-major, docs/MATH.md, "Pause steps"): the output is `[B, T]`, position `i` holding
/// `w_i L_i` (0 where the target is `-1`), in the logits' dtype (`f32` or `f64`).
///
/// Forward and backward are [`crate::cpu::loss`] with [`Reduction::None`]; the
/// backward recomputes the row scalars and the per-position objectives from the
/// logits instead of keeping them from the forward (candle hands the op only the
/// input, the output and the upstream gradient, and the recomputation costs one pass
/// over the logits, as much as the `dlogits` pass itself).
#[derive(Clone, Debug)]
pub struct CybLossOp {
    objective: ResolvedObjective,
    targets: Vec<i32>,
    weights: Option<Vec<f32>>,
}

impl CybLossOp {
    /// The op for one batch: `targets` `[B, T]` flattened (`-1` or `0..V`, checked
    /// against the logits' `V` when the op runs), optional `weights` `[B, T]` (finite,
    /// `>= 0`), and an objective resolved for the logits' `K` (with its `dk_bias`, the
    /// only DK bias the op adds: see the module docs).
    pub fn new(objective: ResolvedObjective, targets: Vec<i32>, weights: Option<Vec<f32>>) -> Self {
        CybLossOp {
            objective,
            targets,
            weights,
        }
    }

    /// `sum_i w_i` over positions with a target: the denominator of
    /// [`Reduction::Mean`] (the number of valid positions without weights).
    pub fn weight_sum(&self) -> f64 {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, y)| **y >= 0)
            // A weights vector of the wrong length is reported when the op runs.
            .map(|(i, _)| {
                self.weights
                    .as_ref()
                    .map_or(1.0, |w| w.get(i).map_or(0.0, |x| *x as f64))
            })
            .sum()
    }

    fn check(&self, shape: LossShape, logits_len: usize) -> candle_core::Result<()> {
        shape
            .check_lengths(
                logits_len,
                self.targets.len(),
                self.weights.as_ref().map(|w| w.len()),
            )
            .and_then(|()| check_targets(&self.targets, shape.vocab))
            .map_err(cyb_err)
    }

    /// The reference's forward on contiguous logits: the row scalars and the
    /// per-position objectives (`Reduction::None`; the op reduces with candle ops).
    fn forward<T: Float + Send + Sync>(
        &self,
        logits: &[T],
        shape: LossShape,
    ) -> candle_core::Result<(Vec<RowScalar>, LossForward)> {
        self.check(shape, logits.len())?;
        let scalars =
            row_scalars(logits, &self.targets, shape, self.objective.dk_bias).map_err(cyb_err)?;
        let fwd = position_objectives(
            &scalars,
            &self.targets,
            shape,
            &self.objective,
            Reduction::None,
            self.weights.as_deref(),
        )
        .map_err(cyb_err)?;
        Ok((scalars, fwd))
    }

    /// Per-position `w_i L_i` of contiguous logits.
    fn per_position<T: Float + Send + Sync>(
        &self,
        logits: &[T],
        shape: LossShape,
    ) -> candle_core::Result<Vec<f64>> {
        Ok(self.forward(logits, shape)?.1.per_position)
    }

    /// `dlogits` for one upstream gradient per position.
    fn dlogits<T: Float + Send + Sync>(
        &self,
        logits: &[T],
        shape: LossShape,
        upstream: &[f64],
    ) -> candle_core::Result<Vec<T>> {
        let (scalars, fwd) = self.forward(logits, shape)?;
        let grads = fwd.row_grads(shape, upstream).map_err(cyb_err)?;
        let mut dlogits = vec![T::zero(); logits.len()];
        dlogits_from_row_grads(logits, &self.targets, shape, &scalars, &grads, &mut dlogits)
            .map_err(cyb_err)?;
        Ok(dlogits)
    }
}

impl CustomOp1 for CybLossOp {
    fn name(&self) -> &'static str {
        "cyb-loss"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = loss_shape(layout.dims())?;
        // The reference reads rows of V+1 consecutive logits; `cyb_loss` makes the
        // tensor contiguous before applying the op, a direct `apply_op1` must too.
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            cyb_err(CybError::Shape(
                "CYB logits must be contiguous (call .contiguous() first)".into(),
            ))
        })?;
        let out_shape = Shape::from((shape.batch, shape.seq));
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(
                self.per_position(&x[start..end], shape)?
                    .into_iter()
                    .map(|l| l as f32)
                    .collect(),
            ),
            CpuStorage::F64(x) => CpuStorage::F64(self.per_position(&x[start..end], shape)?),
            other => {
                return Err(cyb_err(CybError::Param(format!(
                    "CYB logits must be f32 or f64, got {:?} (convert with .to_dtype)",
                    other.dtype()
                ))))
            }
        };
        Ok((out, out_shape))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _per_position: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let shape = loss_shape(logits.dims())?;
        let upstream = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let flat = logits.flatten_all()?;
        let dlogits = match logits.dtype() {
            DType::F32 => Tensor::from_vec(
                self.dlogits(&flat.to_vec1::<f32>()?, shape, &upstream)?,
                logits.shape(),
                logits.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                self.dlogits(&flat.to_vec1::<f64>()?, shape, &upstream)?,
                logits.shape(),
                logits.device(),
            )?,
            other => {
                return Err(cyb_err(CybError::Param(format!(
                    "CYB logits must be f32 or f64, got {other:?}"
                ))))
            }
        };
        Ok(Some(dlogits))
    }
}

/// The CYB loss of candle logits `[B, K+1, T, V+1]` (`f32` or `f64`, CPU device),
/// differentiable with respect to them, reduced as [`crate::cpu::loss::cyb_loss`]
/// reduces: `Mean` gives the scalar `sum_i w_i L_i / sum_i w_i` over positions with a
/// target (0 when there are none), `Sum` the scalar `sum_i w_i L_i`, `None` the
/// per-position `w_i L_i`, `[B, T]`.
///
/// `targets` is `[B, T]` of an integer dtype (`-1` = ignored), `weights` optional
/// `[B, T]` of any float dtype; neither gets a gradient. `objective` must be resolved
/// for the logits' `K`. Errors (shapes, targets, weights, dtype, device) are candle
/// errors carrying this crate's message.
pub fn cyb_loss(
    logits: &Tensor,
    targets: &Tensor,
    objective: &ResolvedObjective,
    reduction: Reduction,
    weights: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let targets = targets
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?
        .into_iter()
        .enumerate()
        .map(|(index, y)| {
            i32::try_from(y).map_err(|_| {
                cyb_err(CybError::VocabRange {
                    id: y,
                    index,
                    vocab: logits.dims().last().map_or(0, |v1| v1.saturating_sub(1)),
                })
            })
        })
        .collect::<candle_core::Result<Vec<i32>>>()?;
    let weights = weights
        .map(|w| w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let op = CybLossOp::new(objective.clone(), targets, weights);
    let scale = match reduction {
        Reduction::Mean => {
            let sum = op.weight_sum();
            if sum > 0.0 {
                1.0 / sum
            } else {
                0.0
            }
        }
        Reduction::Sum | Reduction::None => 1.0,
    };
    let per_position = logits.contiguous()?.apply_op1(op)?;
    match reduction {
        Reduction::None => Ok(per_position),
        Reduction::Mean | Reduction::Sum => per_position.sum_all()?.affine(scale, 0.0),
    }
}

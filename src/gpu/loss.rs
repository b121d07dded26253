//! The CYB loss on the GPU (docs/MATH.md, "The five objectives"): `kernels/cyb_loss.cu`,
//! the twin of [`crate::cpu::loss`] stage by stage, with the same semantics for reductions,
//! position weights, ignored targets (`-1`) and the DK bias (the objective's
//! `dk_bias`, added to every DK logit; [`crate::gpu::model::GpuModel`] gives it its
//! config's, a trainer with logits of a `cyb` model uses
//! [`crate::ResolvedObjective::for_model`]).
//!
//! [`CybLoss::forward`] queues three kernels (row scalars, per-position objectives
//! with per-block partial sums, and a tiny kernel that reduces them and computes the
//! loss and the gradient scale on the device) and returns at once;
//! [`CybLoss::backward`] queues the streaming `dlogits` pass. Nothing is copied to
//! the host in between: the loss is read back only when asked for
//! ([`GpuLossForward::loss`]).
//!
//! **Validation.** Shapes, `K <= K_MAX` and parameters are checked on the host before
//! anything is launched. Targets and weights live on the device, so they are checked
//! there: an out-of-range target (not `-1` and not in `0..V`) or a negative or
//! non-finite weight never causes an out-of-bounds access (the position is treated as
//! ignored, resp. weight 0) and is reported as an error ([`CybError::VocabRange`],
//! [`CybError::Param`]) by the first method that reads results back
//! ([`GpuLossForward::loss`], [`GpuLossForward::stats`], [`GpuLossForward::check`]).
//! Targets coming from the host can be checked before the upload with
//! [`CybLoss::upload_targets`].
//!
//! **Row stride.** The logits may be padded: [`CybLoss::forward_strided`] takes the
//! element distance between consecutive `(position, step)` rows separately from `V`
//! (`row_stride >= V+1`; [`padded_row_stride`] rounds `V+1` up to a multiple of
//! [`ROW_STRIDE_ALIGN`] = 64 elements, so that every row of a 256-byte aligned buffer
//! starts 128-byte aligned for bf16, as 16-byte vector and tensor-memory loads want:
//! `V+1 = 32001` gives 32064). The padding columns `[V+1, row_stride)` are never read
//! (they may hold anything, NaN included) and the backward writes **zeros** there, so
//! `dlogits` holds no stale values and a GEMM that runs over the padded width against
//! zero-padded weights adds nothing. Any `row_stride >= V+1` is accepted: the kernels
//! find each row's first 16-byte boundary, so a stride that is not a multiple of 8
//! (bf16) or 4 (f32) elements only costs a few scalar loads at the start of the rows
//! it misaligns. [`CybLoss::forward`] is the dense case `row_stride = V+1`; the
//! backward takes the stride from the forward.
//!
//! Reductions are fixed-shape trees (no float atomics), so the same inputs give
//! bit-for-bit the same loss and gradients on every run.
//!
//! **In another trainer.** A trainer that owns its `cudarc` context, stream and
//! buffers (the same `cudarc` release, re-exported as [`crate::gpu::cudarc`]) hands
//! its stream to [`GpuContext::with_stream`], so the loss kernels queue behind its
//! LM head and before its own backward with no extra sync, and passes its buffers as
//! they are: logits `[B, K+1, T, V+1]` (`f32` or `bf16`), targets `[B, T]` (`i32`,
//! `-1` = ignored), optional weights `[B, T]` (`f32`). Nothing is copied.
//!
//! ```
//! use cyb::cpu::loss::LossShape;
//! use cyb::gpu::cudarc::driver::{CudaContext, CudaSlice};
//! use cyb::gpu::{CybLoss, GpuContext, Upstream};
//! use cyb::{Objective, Reduction};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if !cyb::gpu::device_available() {
//!     return Ok(()); // compiled everywhere, runs where there is a device
//! }
//! // The trainer's own context, stream and buffers: plain cudarc.
//! let ctx = CudaContext::new(0)?;
//! let stream = ctx.new_stream()?;
//! let shape = LossShape { batch: 2, pauses: 2, seq: 8, vocab: 50 };
//! let n_logits = shape.rows() * (shape.vocab + 1);
//! let host: Vec<f32> = (0..n_logits).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut logits: CudaSlice<f32> = stream.clone_htod(&host)?; // its LM head's output
//! let mut dlogits: CudaSlice<f32> = stream.alloc_zeros(n_logits)?;
//! let targets: CudaSlice<i32> = stream.clone_htod(
//!     &(0..shape.positions()).map(|i| if i % 5 == 4 { -1 } else { (i % 50) as i32 }).collect::<Vec<_>>(),
//! )?;
//! let weights: CudaSlice<f32> = stream.clone_htod(&vec![0.5f32; shape.positions()])?;
//!
//! // Once: the loss kernels on the trainer's stream, for one objective and K.
//! let gpu = GpuContext::with_stream(stream.clone())?;
//! let loss = CybLoss::new(&gpu, &Objective::dp_default().resolve(shape.pauses)?)?;
//!
//! // Every step. Forward: weighted mean over the positions with a target.
//! let fwd = loss.forward(&logits, &targets, shape, Reduction::Mean, Some(&weights))?;
//! // Per-position w_i * L_i and E[pauses], [B, T], stay on the device for the trainer.
//! let _per_position: &CudaSlice<f32> = fwd.per_position();
//! let _pauses: &CudaSlice<f32> = fwd.pauses();
//! // Backward into the trainer's dlogits buffer (upstream gradient 1 of the mean) ...
//! loss.backward(&fwd, Upstream::Scalar(1.0), &logits, &mut dlogits)?;
//! // ... or in place, overwriting the logits with their gradient (one buffer less).
//! loss.backward_in_place(&fwd, Upstream::Scalar(1.0), &mut logits)?;
//! // Reading anything back waits for the stream; errors in targets/weights show here.
//! println!("loss {:.4}, mean pauses {:.3}", fwd.loss()?, fwd.stats()?.mean_pauses);
//! assert_eq!(stream.clone_dtoh(&dlogits)?, stream.clone_dtoh(&logits)?);
//!
//! // Per-position losses with the trainer's own upstream gradient, [B, T] on the
//! // device (e.g. a per-sequence weighting it computes itself).
//! let upstream: CudaSlice<f32> = stream.clone_htod(&vec![1.0f32; shape.positions()])?;
//! let logits: CudaSlice<f32> = stream.clone_htod(&host)?;
//! let fwd = loss.forward(&logits, &targets, shape, Reduction::None, Some(&weights))?;
//! loss.backward(&fwd, Upstream::Device(&upstream), &logits, &mut dlogits)?;
//! let per_position: Vec<f32> = fwd.per_position_to_host()?;
//! assert_eq!(per_position.len(), shape.positions());
//! # Ok(())
//! # }
//! ```

use super::{cuda_err, GpuContext};
use crate::cpu::loss::{check_targets, LossShape, LossStats, RowScalar};
use crate::error::{CybError, Result};
use crate::objective::{ObjectiveKind, Reduction, ResolvedObjective};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use half::bf16;
use std::sync::{Arc, OnceLock};

/// Largest number of pause steps `K` the kernels support (`CYB_K_MAX` in the kernel).
pub const K_MAX: usize = 16;

/// The multiple of elements [`padded_row_stride`] rounds a row up to: 64 elements are
/// 128 bytes in bf16 and 256 in f32, a whole number of 16-byte vectors and of the
/// 128-byte lines (and tensor-memory rows) the hardware moves.
pub const ROW_STRIDE_ALIGN: usize = 64;

/// The padded row stride for `v_plus_1 = V+1` logits per row: the next multiple of
/// [`ROW_STRIDE_ALIGN`] (`v_plus_1` itself when it already is one, or, for a value so
/// large that rounding up would overflow `usize` and that no buffer can hold, when the
/// rounding overflows).
///
/// ```
/// use cyb::gpu::loss::padded_row_stride;
/// assert_eq!(padded_row_stride(32001), 32064);
/// assert_eq!(padded_row_stride(128), 128);
/// assert_eq!(padded_row_stride(33), 64);
/// ```
pub fn padded_row_stride(v_plus_1: usize) -> usize {
    v_plus_1
        .checked_next_multiple_of(ROW_STRIDE_ALIGN)
        .unwrap_or(v_plus_1)
}

// Keep in sync with kernels/cyb_loss.cu.
const ROW_THREADS: u32 = 256;
const POS_THREADS: u32 = 256;
const FIN_THREADS: u32 = 256;
const P_LOG_OMEGA: usize = 0;
const P_LOG_TAIL: usize = K_MAX + 1;
const P_LOG_GAMMA: usize = 2 * (K_MAX + 1);
const P_RHO: usize = 3 * (K_MAX + 1);
const P_BETA: usize = 4 * (K_MAX + 1);
const P_ALPHA: usize = P_BETA + 1;
const P_DK_BIAS: usize = P_BETA + 2;
const PARAMS_LEN: usize = P_BETA + 3;
const NPART: usize = 6;
const S_LOSS: usize = 0;
const S_WEIGHT_SUM: usize = 1;
const S_MEAN_PAUSES: usize = 2;
const S_VALID: usize = 3;
const S_BAD_Y: usize = 6;
const S_BAD_W: usize = 7;
const SUMMARY_LEN: usize = 8;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

/// Element types the loss kernels take for logits and write for `dlogits`: `f32` and
/// `half::bf16`. Internally the row math is f32 and the per-position math f64.
pub trait LogitElem: DeviceRepr + ValidAsZeroBits + Copy + sealed::Sealed {
    /// Kernel name suffix.
    #[doc(hidden)]
    const SUFFIX: &'static str;
}
impl LogitElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl LogitElem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// The gradient flowing into the loss, for [`CybLoss::backward`].
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a> {
    /// One host value: the gradient of the reduced loss (`Mean`/`Sum`, usually 1), or
    /// for `Reduction::None` the same value at every position.
    Scalar(f64),
    /// A device buffer: 1 value for `Mean`/`Sum`, `B*T` values for `Reduction::None`.
    Device(&'a CudaSlice<f32>),
}

struct Kernels {
    row_f32: CudaFunction,
    row_bf16: CudaFunction,
    positions: CudaFunction,
    finalize: CudaFunction,
    dlogits_f32: CudaFunction,
    dlogits_bf16: CudaFunction,
    dlogits_inplace_f32: CudaFunction,
    dlogits_inplace_bf16: CudaFunction,
}

impl Kernels {
    fn row(&self, suffix: &str) -> &CudaFunction {
        if suffix == "bf16" {
            &self.row_bf16
        } else {
            &self.row_f32
        }
    }
    fn dlogits(&self, suffix: &str, in_place: bool) -> &CudaFunction {
        match (suffix == "bf16", in_place) {
            (false, false) => &self.dlogits_f32,
            (true, false) => &self.dlogits_bf16,
            (false, true) => &self.dlogits_inplace_f32,
            (true, true) => &self.dlogits_inplace_bf16,
        }
    }
}

/// One CYB objective, resolved for one `K`, ready to run on a [`GpuContext`].
///
/// ```no_run
/// use cyb::cpu::loss::LossShape;
/// use cyb::gpu::{CybLoss, GpuContext, Upstream};
/// use cyb::{Objective, Reduction};
///
/// let gpu = GpuContext::new(0)?;
/// let shape = LossShape { batch: 2, pauses: 3, seq: 16, vocab: 100 };
/// let loss = CybLoss::new(&gpu, &Objective::ap_default().resolve(shape.pauses)?)?;
///
/// let host_logits: Vec<f32> = (0..shape.rows() * (shape.vocab + 1))
///     .map(|i| (i as f32 * 0.37).sin())
///     .collect();
/// let host_targets: Vec<i32> = (0..shape.positions()).map(|i| (i % 100) as i32).collect();
/// let logits = gpu.htod(&host_logits)?;
/// let targets = loss.upload_targets(&host_targets, shape)?; // checked on the host
/// let mut dlogits = gpu.zeros::<f32>(logits.len())?;
///
/// let fwd = loss.forward(&logits, &targets, shape, Reduction::Mean, None)?;
/// loss.backward(&fwd, Upstream::Scalar(1.0), &logits, &mut dlogits)?; // no sync needed
/// println!("loss {} mean pauses {}", fwd.loss()?, fwd.stats()?.mean_pauses);
/// # Ok::<(), cyb::CybError>(())
/// ```
pub struct CybLoss {
    gpu: Arc<GpuContext>,
    obj: ResolvedObjective,
    params: CudaSlice<f64>,
    kernels: Kernels,
}

impl std::fmt::Debug for CybLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CybLoss").field("obj", &self.obj).finish()
    }
}

fn as_i32(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        CybError::Shape(format!(
            "{what} = {n} is too large for the kernels' 32-bit indices"
        ))
    })
}

/// Kernel dimensions of a shape, checked to fit the kernels' `int` indices.
struct Dims {
    rows: i32,
    k1: i32,
    pauses: i32,
    batch: i32,
    seq: i32,
    vocab: i32,
    stride: i32,
}

impl Dims {
    /// Checks `row_stride >= V+1` and that `rows * row_stride` elements are addressable.
    fn new(shape: LossShape, row_stride: usize) -> Result<Dims> {
        if shape.vocab == 0 {
            return Err(CybError::Shape("vocabulary size V must be >= 1".into()));
        }
        if shape.pauses > K_MAX {
            return Err(CybError::TooManyPauses {
                k: shape.pauses,
                k_max: K_MAX,
            });
        }
        let rows = shape
            .batch
            .checked_mul(shape.pauses + 1)
            .and_then(|x| x.checked_mul(shape.seq))
            .ok_or_else(|| CybError::Shape(format!("{shape:?} overflows")))?;
        as_i32("positions B*T", shape.positions())?;
        if row_stride < shape.vocab + 1 {
            return Err(CybError::Shape(format!(
                "row stride {row_stride} is smaller than a row of V+1 = {} logits",
                shape.vocab + 1
            )));
        }
        rows.checked_mul(row_stride)
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| {
                CybError::Shape(format!("{rows} rows of stride {row_stride} overflow"))
            })?;
        Ok(Dims {
            rows: as_i32("rows B*(K+1)*T", rows)?,
            k1: as_i32("K+1", shape.pauses + 1)?,
            pauses: as_i32("K", shape.pauses)?,
            batch: as_i32("B", shape.batch)?,
            seq: as_i32("T", shape.seq)?,
            vocab: as_i32("V+1", shape.vocab + 1)? - 1,
            stride: as_i32("row stride", row_stride)?,
        })
    }
}

fn reduction_code(r: Reduction) -> i32 {
    match r {
        Reduction::Mean => 0,
        Reduction::Sum => 1,
        Reduction::None => 2,
    }
}

fn row_config(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CybLoss {
    /// Uploads the objective's parameters and loads its kernels. Fails with
    /// [`CybError::TooManyPauses`] when `obj.k > K_MAX`.
    pub fn new(gpu: &Arc<GpuContext>, obj: &ResolvedObjective) -> Result<Self> {
        if obj.k > K_MAX {
            return Err(CybError::TooManyPauses {
                k: obj.k,
                k_max: K_MAX,
            });
        }
        let k1 = obj.k + 1;
        if [obj.omega.len(), obj.rho.len(), obj.log_gamma.len()] != [k1; 3] {
            return Err(CybError::Param(format!(
                "resolved objective for K = {} has {} omega, {} rho and {} gamma values",
                obj.k,
                obj.omega.len(),
                obj.rho.len(),
                obj.log_gamma.len()
            )));
        }
        // The same derived numbers the CPU reference uses (ResolvedObjective).
        let (log_omega, log_tail) = obj.log_omega_and_tail();
        let mut params = vec![0.0f64; PARAMS_LEN];
        for (at, v) in [
            (P_LOG_OMEGA, &log_omega),
            (P_LOG_TAIL, &log_tail),
            (P_LOG_GAMMA, &obj.log_gamma),
            (P_RHO, &obj.rho),
        ] {
            params[at..at + k1].copy_from_slice(v);
        }
        params[P_BETA] = obj.beta;
        params[P_ALPHA] = obj.alpha;
        params[P_DK_BIAS] = obj.dk_bias;
        let params = gpu.htod(&params)?;
        let f = |name: &str| gpu.loss_function(name);
        let kernels = Kernels {
            row_f32: f("cyb_row_scalars_f32")?,
            row_bf16: f("cyb_row_scalars_bf16")?,
            positions: f("cyb_position_objectives")?,
            finalize: f("cyb_loss_finalize")?,
            dlogits_f32: f("cyb_dlogits_f32")?,
            dlogits_bf16: f("cyb_dlogits_bf16")?,
            dlogits_inplace_f32: f("cyb_dlogits_inplace_f32")?,
            dlogits_inplace_bf16: f("cyb_dlogits_inplace_bf16")?,
        };
        Ok(CybLoss {
            gpu: gpu.clone(),
            obj: obj.clone(),
            params,
            kernels,
        })
    }

    /// The objective this loss computes.
    pub fn objective(&self) -> &ResolvedObjective {
        &self.obj
    }

    /// The context the kernels run on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.gpu
    }

    /// Checks host targets (`-1` or `0..V`, `B*T` of them) and uploads them.
    pub fn upload_targets(&self, targets: &[i32], shape: LossShape) -> Result<CudaSlice<i32>> {
        if targets.len() != shape.positions() {
            return Err(CybError::Shape(format!(
                "targets have {} elements, expected B*T = {}",
                targets.len(),
                shape.positions()
            )));
        }
        check_targets(targets, shape.vocab)?;
        self.gpu.htod(targets)
    }

    /// Forward of the loss over dense `logits [B, K+1, T, V+1]` (depth-major) with
    /// targets `[B, T]` and optional per-position weights `[B, T]`: the same as
    /// [`CybLoss::forward_strided`] with `row_stride = V+1`.
    pub fn forward<T: LogitElem>(
        &self,
        logits: &CudaSlice<T>,
        targets: &CudaSlice<i32>,
        shape: LossShape,
        reduction: Reduction,
        weights: Option<&CudaSlice<f32>>,
    ) -> Result<GpuLossForward> {
        self.forward_strided(logits, shape.vocab + 1, targets, shape, reduction, weights)
    }

    /// Forward of the loss over `logits [B, K+1, T, V+1]` (depth-major) stored with
    /// `row_stride` elements between consecutive rows (`row_stride >= V+1`, see the
    /// module docs and [`padded_row_stride`]; `logits` must hold exactly
    /// `B*(K+1)*T*row_stride` elements), with targets `[B, T]` and optional
    /// per-position weights `[B, T]`. Queues the kernels and returns without waiting;
    /// see the module docs for how bad targets/weights are reported.
    ///
    /// ```no_run
    /// use cyb::cpu::loss::LossShape;
    /// use cyb::gpu::loss::padded_row_stride;
    /// use cyb::gpu::{CybLoss, GpuContext, Upstream};
    /// use cyb::{Objective, Reduction};
    /// use half::bf16;
    ///
    /// let gpu = GpuContext::new(0)?;
    /// let shape = LossShape { batch: 2, pauses: 3, seq: 16, vocab: 1000 };
    /// let stride = padded_row_stride(shape.vocab + 1); // 1024: rows start aligned
    /// let loss = CybLoss::new(&gpu, &Objective::ap_default().resolve(shape.pauses)?)?;
    /// // Padding columns 1001..1024 of each row are never read.
    /// let mut logits = gpu.zeros::<bf16>(shape.rows() * stride)?;
    /// let targets = loss.upload_targets(&vec![7; shape.positions()], shape)?;
    /// let fwd = loss.forward_strided(&logits, stride, &targets, shape, Reduction::Mean, None)?;
    /// // Same stride for the gradient; its padding columns become zeros.
    /// loss.backward_in_place(&fwd, Upstream::Scalar(1.0), &mut logits)?;
    /// # Ok::<(), cyb::CybError>(())
    /// ```
    pub fn forward_strided<T: LogitElem>(
        &self,
        logits: &CudaSlice<T>,
        row_stride: usize,
        targets: &CudaSlice<i32>,
        shape: LossShape,
        reduction: Reduction,
        weights: Option<&CudaSlice<f32>>,
    ) -> Result<GpuLossForward> {
        let weights = weights.map(CudaSlice::as_view);
        self.forward_strided_view(
            &logits.as_view(),
            row_stride,
            &targets.as_view(),
            shape,
            reduction,
            weights.as_ref(),
        )
    }

    /// [`CybLoss::forward_strided`] on views: parts of larger buffers (the fused
    /// head's chunk, [`crate::gpu::head_loss`]), with the same exact-length checks.
    pub fn forward_strided_view<T: LogitElem>(
        &self,
        logits: &CudaView<'_, T>,
        row_stride: usize,
        targets: &CudaView<'_, i32>,
        shape: LossShape,
        reduction: Reduction,
        weights: Option<&CudaView<'_, f32>>,
    ) -> Result<GpuLossForward> {
        let d = Dims::new(shape, row_stride)?;
        let kind = self.obj.kind as u32 as i32;
        let null: u64 = 0;
        if self.obj.k != shape.pauses {
            return Err(CybError::Shape(format!(
                "objective resolved for K = {} but the logits have K = {}",
                self.obj.k, shape.pauses
            )));
        }
        // Targets and weights through the dense check; the logits against the stride.
        shape.check_lengths(
            shape.rows() * (shape.vocab + 1),
            targets.len(),
            weights.map(|w| w.len()),
        )?;
        check_logits_len(logits.len(), shape, row_stride)?;
        let gpu = &self.gpu;
        let stream = gpu.stream();
        let rows = shape.rows();
        let n = shape.positions();
        let pos_blocks = n.div_ceil(POS_THREADS as usize);
        // Zero-length allocations are not allowed: empty shapes get one spare element.
        let mut scalars = gpu.zeros::<f32>((3 * rows).max(1))?;
        let mut grad_loss = gpu.zeros::<f64>((3 * rows).max(1))?;
        let mut per_position = gpu.zeros::<f32>(n.max(1))?;
        let mut pauses = gpu.zeros::<f32>(n.max(1))?;
        let mut partials = gpu.zeros::<f64>((pos_blocks * NPART).max(1))?;
        let mut summary = gpu.zeros::<f64>(SUMMARY_LEN)?;
        let targets_copy = if n > 0 {
            stream
                .clone_dtod(targets)
                .map_err(cuda_err("copying the targets"))?
        } else {
            gpu.zeros::<i32>(1)?
        };

        if rows > 0 {
            let mut b = stream.launch_builder(self.kernels.row(T::SUFFIX));
            b.arg(logits)
                .arg(targets)
                .arg(&d.rows)
                .arg(&d.k1)
                .arg(&d.seq)
                .arg(&d.vocab)
                .arg(&d.stride)
                .arg(&mut scalars);
            // SAFETY: logits has rows*stride elements with stride >= V+1, and targets
            // B*T (checked above); scalars has 3*rows; the kernel reads logits only at
            // rows whose target is in 0..V, and indexes within [row*stride,
            // row*stride+V].
            unsafe { b.launch(row_config(d.rows)) }
                .map_err(cuda_err("launching cyb_row_scalars"))?;

            let mut b = stream.launch_builder(&self.kernels.positions);
            b.arg(&scalars).arg(targets);
            match weights {
                Some(w) => b.arg(w),
                None => b.arg(&null),
            };
            b.arg(&self.params)
                .arg(&kind)
                .arg(&d.batch)
                .arg(&d.pauses)
                .arg(&d.seq)
                .arg(&d.vocab)
                .arg(&mut per_position)
                .arg(&mut pauses)
                .arg(&mut grad_loss)
                .arg(&mut partials);
            let cfg = LaunchConfig {
                grid_dim: (pos_blocks as u32, 1, 1),
                block_dim: (POS_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one thread per position < B*T (guarded in the kernel); scalars
            // 3*rows, targets/weights/per_position/pauses B*T, grad_loss 3*rows, partials
            // ceil(B*T/256)*NPART = gridDim*NPART, params PARAMS_LEN with K <= K_MAX
            // (checked above); a null weights pointer means all ones.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launching cyb_position_objectives"))?;
        }

        let nblocks = as_i32("position blocks", pos_blocks)?;
        let red = reduction_code(reduction);
        let mut b = stream.launch_builder(&self.kernels.finalize);
        b.arg(&partials).arg(&nblocks).arg(&red).arg(&mut summary);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (FIN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partials holds nblocks*NPART values (written by the launch above, or
        // unread when nblocks = 0); summary has SUMMARY_LEN; one block.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launching cyb_loss_finalize"))?;

        Ok(GpuLossForward {
            shape,
            row_stride,
            reduction,
            kind: self.obj.kind,
            dk_bias: self.obj.dk_bias,
            stream: stream.clone(),
            targets: targets_copy,
            scalars,
            grad_loss,
            per_position,
            pauses,
            summary,
            host_summary: OnceLock::new(),
        })
    }

    /// `dlogits` for the given upstream gradient, into a separate buffer of the same
    /// shape and row stride as `logits` (which must be the logits `fwd` was computed
    /// from, with [`GpuLossForward::row_stride`]). Ignored positions get zero rows and
    /// the padding columns zeros. Queued, no host sync.
    pub fn backward<T: LogitElem>(
        &self,
        fwd: &GpuLossForward,
        upstream: Upstream<'_>,
        logits: &CudaSlice<T>,
        dlogits: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.check_backward(fwd, upstream, logits.len())?;
        if dlogits.len() != logits.len() {
            return Err(CybError::Shape(format!(
                "dlogits have {} elements but the logits {}",
                dlogits.len(),
                logits.len()
            )));
        }
        let d = Dims::new(fwd.shape, fwd.row_stride)?;
        if d.rows == 0 {
            return Ok(());
        }
        let (null, up_scalar, red) = backward_scalars(fwd, upstream);
        let stream = self.gpu.stream();
        let mut b = stream.launch_builder(self.kernels.dlogits(T::SUFFIX, false));
        b.arg(logits).arg(dlogits);
        push_dlogits_args(&mut b, fwd, upstream, &null, &up_scalar, &red, &d);
        // SAFETY: logits and dlogits both have rows*stride elements, stride >= V+1
        // (checked against fwd.shape and fwd.row_stride); fwd's buffers were sized for that shape (targets B*T, scalars
        // 3*rows, grad_loss 3*rows, summary SUMMARY_LEN); upstream has 1 or B*T values as
        // the reduction needs (checked), or is null with the scalar used instead.
        unsafe { b.launch(row_config(d.rows)) }.map_err(cuda_err("launching cyb_dlogits"))?;
        Ok(())
    }

    /// Like [`CybLoss::backward`], but overwrites the logits with their gradient
    /// (each element is read before it is written), saving a buffer.
    pub fn backward_in_place<T: LogitElem>(
        &self,
        fwd: &GpuLossForward,
        upstream: Upstream<'_>,
        logits: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.backward_in_place_view(fwd, upstream, &mut logits.as_view_mut())
    }

    /// [`CybLoss::backward_in_place`] on a view (the fused head's chunk).
    pub fn backward_in_place_view<T: LogitElem>(
        &self,
        fwd: &GpuLossForward,
        upstream: Upstream<'_>,
        logits: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        self.check_backward(fwd, upstream, logits.len())?;
        let d = Dims::new(fwd.shape, fwd.row_stride)?;
        if d.rows == 0 {
            return Ok(());
        }
        let (null, up_scalar, red) = backward_scalars(fwd, upstream);
        let stream = self.gpu.stream();
        let mut b = stream.launch_builder(self.kernels.dlogits(T::SUFFIX, true));
        b.arg(logits);
        push_dlogits_args(&mut b, fwd, upstream, &null, &up_scalar, &red, &d);
        // SAFETY: as in `backward`, with one buffer of rows*stride elements that the
        // kernel reads and then writes element by element in the same thread.
        unsafe { b.launch(row_config(d.rows)) }
            .map_err(cuda_err("launching cyb_dlogits_inplace"))?;
        Ok(())
    }

    fn check_backward(
        &self,
        fwd: &GpuLossForward,
        upstream: Upstream<'_>,
        logits_len: usize,
    ) -> Result<()> {
        if fwd.kind != self.obj.kind {
            return Err(CybError::Param(format!(
                "forward was computed with objective {:?}, this loss is {:?}",
                fwd.kind, self.obj.kind
            )));
        }
        check_logits_len(logits_len, fwd.shape, fwd.row_stride)
            .map_err(|e| CybError::Shape(format!("backward: {e} (as in the forward)")))?;
        if let Upstream::Device(u) = upstream {
            let per_position = fwd.reduction == Reduction::None;
            let want = if per_position {
                fwd.shape.positions()
            } else {
                1
            };
            if u.len() != want {
                return Err(CybError::Shape(format!(
                    "upstream gradient has {} values, expected {want} for reduction {:?}",
                    u.len(),
                    fwd.reduction
                )));
            }
        }
        Ok(())
    }
}

/// Fails unless `len` is exactly `rows * row_stride` (the caller checked that the
/// product does not overflow, see [`Dims::new`]).
fn check_logits_len(len: usize, shape: LossShape, row_stride: usize) -> Result<()> {
    let want = shape.rows().saturating_mul(row_stride);
    if len != want {
        return Err(CybError::Shape(format!(
            "logits have {len} elements, expected B*(K+1)*T*row_stride = {}*{}*{}*{row_stride} \
             = {want} (V+1 = {})",
            shape.batch,
            shape.pauses + 1,
            shape.seq,
            shape.vocab + 1
        )));
    }
    Ok(())
}

/// Kernel arguments of the backward besides the buffers: a null pointer (used when
/// the upstream is a host scalar), that scalar, and the reduction code.
fn backward_scalars(fwd: &GpuLossForward, upstream: Upstream<'_>) -> (u64, f64, i32) {
    let up_scalar = match upstream {
        Upstream::Scalar(x) => x,
        Upstream::Device(_) => 0.0,
    };
    (0u64, up_scalar, reduction_code(fwd.reduction))
}

/// The arguments of `cyb_dlogits*` after the logits (see `CYB_DLOGITS_ARGS` in
/// kernels/cyb_loss.cu): targets, scalars, grad_loss, summary, upstream
/// (device pointer or null), up_scalar, reduction, rows, k1, seq, vocab, stride.
fn push_dlogits_args<'a>(
    b: &mut cudarc::driver::LaunchArgs<'a>,
    fwd: &'a GpuLossForward,
    upstream: Upstream<'a>,
    null: &'a u64,
    up_scalar: &'a f64,
    red: &'a i32,
    d: &'a Dims,
) {
    b.arg(&fwd.targets)
        .arg(&fwd.scalars)
        .arg(&fwd.grad_loss)
        .arg(&fwd.summary);
    match upstream {
        Upstream::Device(u) => b.arg(u),
        Upstream::Scalar(_) => b.arg(null),
    };
    b.arg(up_scalar)
        .arg(red)
        .arg(&d.rows)
        .arg(&d.k1)
        .arg(&d.seq)
        .arg(&d.vocab)
        .arg(&d.stride);
}

/// What [`CybLoss::forward`] leaves on the device: per-position values, the summary
/// (loss, weight sum, mean pauses, gradient scale), and what the backward
/// needs. Reading anything to the host waits for the stream.
pub struct GpuLossForward {
    shape: LossShape,
    row_stride: usize,
    reduction: Reduction,
    kind: ObjectiveKind,
    dk_bias: f64,
    stream: Arc<CudaStream>,
    targets: CudaSlice<i32>,
    scalars: CudaSlice<f32>,
    grad_loss: CudaSlice<f64>,
    per_position: CudaSlice<f32>,
    pauses: CudaSlice<f32>,
    summary: CudaSlice<f64>,
    host_summary: OnceLock<Vec<f64>>,
}

impl std::fmt::Debug for GpuLossForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLossForward")
            .field("shape", &self.shape)
            .field("row_stride", &self.row_stride)
            .field("reduction", &self.reduction)
            .field("kind", &self.kind)
            .finish()
    }
}

impl GpuLossForward {
    /// The shape the forward ran on.
    pub fn shape(&self) -> LossShape {
        self.shape
    }

    /// The element distance between rows of the logits the forward read (`V+1` for
    /// [`CybLoss::forward`]); the backward's logits and `dlogits` must have it too.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// The reduction the forward ran with.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    fn summary(&self) -> Result<&[f64]> {
        if let Some(s) = self.host_summary.get() {
            return Ok(s);
        }
        let s = self
            .stream
            .clone_dtoh(&self.summary)
            .map_err(cuda_err("reading the loss summary"))?;
        Ok(self.host_summary.get_or_init(|| s))
    }

    /// Errors for invalid targets or weights found by the kernels (waits for the stream).
    pub fn check(&self) -> Result<()> {
        let s = self.summary()?;
        if s[S_BAD_Y] >= 0.0 {
            let index = s[S_BAD_Y] as usize;
            let id = self
                .stream
                .clone_dtoh(&self.targets.slice(index..index + 1))
                .map_err(cuda_err("reading a bad target"))?[0];
            return Err(CybError::VocabRange {
                id: id as i64,
                index,
                vocab: self.shape.vocab,
            });
        }
        if s[S_BAD_W] >= 0.0 {
            return Err(CybError::Param(format!(
                "position weight {} is negative or not finite; weights must be finite and >= 0",
                s[S_BAD_W] as usize
            )));
        }
        Ok(())
    }

    /// The reduced loss (`Mean`; the sum for `Sum` and `None`), exactly as
    /// [`crate::cpu::loss::LossForward::loss`]. Waits for the stream.
    pub fn loss(&self) -> Result<f64> {
        self.check()?;
        Ok(self.summary()?[S_LOSS])
    }

    /// Valid positions, weight sum, weighted mean `E[pauses]`.
    pub fn stats(&self) -> Result<LossStats> {
        self.check()?;
        let s = self.summary()?;
        Ok(LossStats {
            valid_positions: s[S_VALID] as usize,
            weight_sum: s[S_WEIGHT_SUM],
            mean_pauses: s[S_MEAN_PAUSES],
        })
    }

    /// Per-position `w_i L_i` (0 at ignored positions), `[B, T]`, on the device.
    pub fn per_position(&self) -> &CudaSlice<f32> {
        &self.per_position
    }

    /// Per-position `E[pauses]` (0 at ignored positions), `[B, T]`, on the device.
    pub fn pauses(&self) -> &CudaSlice<f32> {
        &self.pauses
    }

    /// The summary on the device, `f64`: `[loss, weight_sum, mean_pauses,
    /// valid_positions, grad_scale, sum w*L, first bad target (-1 none), first bad
    /// weight (-1 none)]`. Lets a trainer use the loss without a sync.
    pub fn summary_device(&self) -> &CudaSlice<f64> {
        &self.summary
    }

    /// [`GpuLossForward::per_position`] copied to the host.
    pub fn per_position_to_host(&self) -> Result<Vec<f32>> {
        self.to_host(&self.per_position, self.shape.positions())
    }

    /// [`GpuLossForward::pauses`] copied to the host.
    pub fn pauses_to_host(&self) -> Result<Vec<f32>> {
        self.to_host(&self.pauses, self.shape.positions())
    }

    /// The row scalars `r, e, u` (stage 1; zeros at ignored rows), in row order, with
    /// `e` including the DK bias as in [`crate::cpu::loss::row_scalar`].
    pub fn row_scalars_to_host(&self) -> Result<Vec<RowScalar>> {
        let rows = self.shape.rows();
        let s = self.to_host(&self.scalars, 3 * rows)?;
        Ok((0..rows)
            .map(|i| RowScalar {
                r: s[i] as f64,
                e: s[rows + i] as f64 + self.dk_bias,
                u: s[2 * rows + i] as f64,
            })
            .collect())
    }

    fn to_host<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        let mut v = self
            .stream
            .clone_dtoh(buf)
            .map_err(cuda_err("copying loss outputs to the host"))?;
        v.truncate(len);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    /// Parameter types of every kernel in the order the launches above push them:
    /// `p` a pointer (a `CudaSlice` or the null `u64`), `i` an `i32`, `d` an `f64`.
    /// Checked against the PTX in the fatbin that build.rs produced, so a kernel signature that
    /// drifts from its launch fails here, without a GPU.
    const SIGNATURES: &[(&str, &str)] = &[
        ("cyb_row_scalars_f32", "ppiiiiip"),
        ("cyb_row_scalars_bf16", "ppiiiiip"),
        ("cyb_position_objectives", "ppppiiiiipppp"),
        ("cyb_loss_finalize", "piip"),
        ("cyb_dlogits_f32", "pppppppdiiiiii"),
        ("cyb_dlogits_bf16", "pppppppdiiiiii"),
        ("cyb_dlogits_inplace_f32", "ppppppdiiiiii"),
        ("cyb_dlogits_inplace_bf16", "ppppppdiiiiii"),
    ];

    #[test]
    fn kernel_signatures_match_launches() {
        use super::super::kernels::{image_ptx, ptx_params};
        for (name, want) in SIGNATURES {
            assert_eq!(
                ptx_params(image_ptx(super::super::images::CYB_LOSS), name),
                *want,
                "parameters of {name}"
            );
        }
    }
}

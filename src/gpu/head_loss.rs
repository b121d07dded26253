//! The tied LM head fused with the CYB loss on the GPU: the twin of
//! [`crate::cpu::head_loss`]. The `[B, K+1, T, V+1]` logits tensor never exists; one
//! chunk of whole positions at a time goes through
//!
//! ```text
//! gather   hidden rows of positions [p0, p1) -> hidden_c [K+1, P, d]   (K+1 copies per sequence touched)
//! GEMM     logits_c = hidden_c · E^T          (cuBLAS, rows padded to padded_row_stride(V+1))
//! loss     row scalars, per-position objectives (reduction Sum), dlogits in place
//! GEMM     dhidden_c = dlogits_c · E          -> scattered back to d_hidden
//! GEMM     dE += dlogits_c^T · hidden_c        (f32 accumulation, chunks in order)
//! ```
//!
//! with one reused chunk buffer whose size comes from a byte budget
//! ([`GpuHead::new`], the CLI's `--head-chunk-mb`), never from the batch. The GEMM FLOPs
//! are the unfused head's (nothing is recomputed). `dE` accumulates chunk after chunk on
//! one stream with `beta = 1`: a fixed order, so a step gives the same bits every run.
//!
//! **Exact Mean.** The divisor, the weight sum over *all* valid positions, is computed
//! from targets and weights alone by one small kernel (`cyb_inverse_weight_sum`) before
//! the first chunk; each chunk's backward takes `1/weight_sum` as its device upstream
//! gradient. The chunks' sums are combined on the host when the loss is read
//! ([`GpuHeadForward::loss`]).
//!
//! **Buffers.** The chunk buffers are allocated once per `(K, d, V)` and poisoned with
//! NaN bytes at allocation: the loss never reads the padding columns, and a test that
//! compares against the CPU would see any stale read.
//!
//! The DK bias is the one of the [`CybLoss`]'s objective (see [`crate::gpu::loss`]).
//!
//! A trainer that owns its buffers hands views of them (hidden states, the tied
//! embedding, targets, optional weights, and its gradient buffers):
//!
//! ```
//! use cyb::cpu::head_loss::HeadShape;
//! use cyb::cpu::loss::LossShape;
//! use cyb::gpu::cudarc::driver::{CudaContext, CudaSlice};
//! use cyb::gpu::head_loss::{GpuHead, GpuHeadGrads};
//! use cyb::gpu::{CybLoss, GpuContext, Linear};
//! use cyb::{Objective, Reduction};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if !cyb::gpu::device_available() {
//!     return Ok(()); // compiled everywhere, runs where there is a device
//! }
//! // The trainer's own context, stream and buffers: plain cudarc.
//! let ctx = CudaContext::new(0)?;
//! let stream = ctx.new_stream()?;
//! let loss_shape = LossShape { batch: 2, pauses: 3, seq: 5, vocab: 50 };
//! let d = 16;
//! let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
//! let hidden: CudaSlice<f32> = stream.clone_htod(&wave(loss_shape.rows() * d, 0.37))?; // LN_f output
//! let emb: CudaSlice<f32> = stream.clone_htod(&wave((loss_shape.vocab + 1) * d, 0.11))?; // tied E
//! let targets: CudaSlice<i32> = stream.clone_htod(&[3i32, 7, -1, 0, 49, 8, 8, 1, -1, 2])?;
//! let mut d_hidden: CudaSlice<f32> = stream.alloc_zeros(loss_shape.rows() * d)?;
//! let mut d_emb: CudaSlice<f32> = stream.alloc_zeros((loss_shape.vocab + 1) * d)?;
//!
//! // Once: kernels, cuBLAS and the chunk budget (here 4 KiB: several chunks).
//! let gpu = GpuContext::with_stream(stream.clone())?;
//! let linear = Linear::new(&gpu)?;
//! let loss = CybLoss::new(&gpu, &Objective::ap_default().resolve(loss_shape.pauses)?)?;
//! let mut head = GpuHead::<f32>::new(&gpu, 4096)?;
//!
//! // Every step: loss, d_hidden (overwritten) and dE (accumulated), queued.
//! let shape = HeadShape { loss: loss_shape, d, chunk_positions: head.chunk_positions(3, 50) };
//! let grads = GpuHeadGrads { d_hidden: d_hidden.as_view_mut(), d_embedding: d_emb.as_view_mut() };
//! let fwd = head.forward_backward(
//!     &linear, &loss, &hidden.as_view(), &emb.as_view(), &targets.as_view(), None,
//!     shape, Reduction::Mean, Some(grads),
//! )?;
//! println!("loss {:.4}, {} chunks", fwd.loss()?, fwd.chunks());
//! assert_eq!(fwd.stats()?.valid_positions, 8);
//! # Ok(())
//! # }
//! ```

use super::linear::{GemmElem, Linear};
use super::loss::{padded_row_stride, CybLoss, GpuLossForward, Upstream};
use super::{cuda_err, GpuContext};
use crate::cpu::head_loss::{chunk_positions, HeadShape};
use crate::cpu::loss::{LossShape, LossStats};
use crate::error::{CybError, Result};
use crate::objective::Reduction;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// Threads of `cyb_inverse_weight_sum` (`CYB_FIN_THREADS` in kernels/cyb_loss.cu).
const INV_THREADS: u32 = 256;

/// The gradients [`GpuHead::forward_backward`] writes: `d_hidden` `[rows, d]` in `T`,
/// **overwritten**; `d_embedding` `[V+1, d]` in f32, **accumulated** (the tied
/// embedding's gradient, which the embedding lookup also adds to).
pub struct GpuHeadGrads<'a, T> {
    pub d_hidden: CudaViewMut<'a, T>,
    pub d_embedding: CudaViewMut<'a, f32>,
}

/// One chunk's buffers, allocated for the largest chunk of one `(K, d, V)`.
struct ChunkBuffers<T> {
    key: (usize, usize, usize, usize),
    hidden: CudaSlice<T>,
    /// Logits, then (in place) dlogits; rows `stride` apart.
    logits: CudaSlice<T>,
    dhidden: CudaSlice<T>,
}

/// The fused head's kernels, budget and reused chunk buffers, for one element type
/// (`f32`, or `bf16` with f32 accumulation as in [`Linear`]).
pub struct GpuHead<T> {
    gpu: Arc<GpuContext>,
    inverse_weight_sum: CudaFunction,
    budget_bytes: usize,
    bufs: Option<ChunkBuffers<T>>,
    inv_weight_sum: CudaSlice<f32>,
    /// The weight sum `Mean` divides the gradients by, when the batch is one shard of
    /// a larger one ([`GpuHead::set_mean_divisor`]); `None`: this batch's own.
    mean_divisor: Option<f64>,
}

impl<T> std::fmt::Debug for GpuHead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHead")
            .field("budget_bytes", &self.budget_bytes)
            .finish()
    }
}

/// Calls `copy(k, global_row, chunk_row, len)` for every run of consecutive rows that
/// positions `[p0, p1)` occupy: per sequence touched and per step `k`, `len` rows that
/// are consecutive both in the depth-major batch and in the chunk's `[K+1, P]` layout.
fn chunk_runs(
    s: LossShape,
    p0: usize,
    p1: usize,
    mut copy: impl FnMut(usize, usize, usize) -> Result<()>,
) -> Result<()> {
    let pc = p1 - p0;
    let mut p = p0;
    while p < p1 {
        let (b, t0) = (p / s.seq, p % s.seq);
        let len = (s.seq - t0).min(p1 - p);
        for k in 0..=s.pauses {
            copy(s.row(b, k, t0), k * pc + (p - p0), len)?;
        }
        p += len;
    }
    Ok(())
}

impl<T: GemmElem> GpuHead<T>
where
    CudaBlas: Gemm<T>,
{
    /// The fused head on `gpu` with chunks of at most `budget_bytes` of logits (at
    /// least one position each; [`crate::cpu::head_loss::DEFAULT_HEAD_CHUNK_BYTES`] is
    /// the CLI default).
    pub fn new(gpu: &Arc<GpuContext>, budget_bytes: usize) -> Result<Self> {
        Ok(GpuHead {
            gpu: gpu.clone(),
            inverse_weight_sum: gpu.loss_function("cyb_inverse_weight_sum")?,
            budget_bytes,
            bufs: None,
            inv_weight_sum: gpu.zeros::<f32>(1)?,
            mean_divisor: None,
        })
    }

    /// Makes the gradients of a `Reduction::Mean` step divide by `weight_sum` (the
    /// weight sum of a global batch this batch is one shard of, as in data-parallel
    /// training) instead of this batch's own: then the shards' gradients add up to the
    /// global batch's, and each position's gradient is bit for bit the one the whole
    /// batch gives it (`1/weight_sum` is rounded to f32 as the device kernel does).
    /// `None` restores the batch's own. The reported loss stays this batch's mean.
    pub fn set_mean_divisor(&mut self, weight_sum: Option<f64>) {
        self.mean_divisor = weight_sum;
    }

    /// Positions per chunk for `K = pauses` and vocabulary `V`: what fits the budget
    /// with rows of `padded_row_stride(V+1)` elements of `T`.
    pub fn chunk_positions(&self, pauses: usize, vocab: usize) -> usize {
        let row_bytes = padded_row_stride(vocab + 1) * std::mem::size_of::<T>();
        chunk_positions(self.budget_bytes, pauses, row_bytes)
    }

    /// Bytes of device memory the chunk buffers hold now (0 before the first call).
    pub fn buffer_bytes(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| {
            (b.hidden.len() + b.logits.len() + b.dhidden.len()) * std::mem::size_of::<T>()
        })
    }

    /// The head `logits = hidden · E^T` followed by `loss` (its objective, the DK bias
    /// included), chunk by chunk (module docs), with optional gradients for upstream
    /// gradient 1 (at every position for `Reduction::None`). `hidden` is `[B, K+1, T,
    /// d]` depth-major, `embedding` `[V+1, d]`, `targets` and `weights` `[B, T]`.
    /// Queued: nothing is read back until [`GpuHeadForward::loss`] or
    /// [`GpuHeadForward::stats`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        linear: &Linear,
        loss: &CybLoss,
        hidden: &CudaView<'_, T>,
        embedding: &CudaView<'_, T>,
        targets: &CudaView<'_, i32>,
        weights: Option<&CudaView<'_, f32>>,
        shape: HeadShape,
        reduction: Reduction,
        mut grads: Option<GpuHeadGrads<'_, T>>,
    ) -> Result<GpuHeadForward> {
        let s = shape.loss;
        let (d, v1, n) = (shape.d, s.vocab + 1, s.positions());
        s.check_lengths(s.rows() * v1, targets.len(), weights.map(|w| w.len()))?;
        if shape.chunk_positions == 0 {
            return Err(CybError::Param("head chunk must hold >= 1 position".into()));
        }
        if loss.objective().k != s.pauses {
            return Err(CybError::Shape(format!(
                "objective resolved for K = {} but the head has K = {}",
                loss.objective().k,
                s.pauses
            )));
        }
        let mut want = vec![
            ("hidden", hidden.len(), s.rows() * d),
            ("embedding", embedding.len(), v1 * d),
        ];
        if let Some(g) = &grads {
            want.push(("d_hidden", g.d_hidden.len(), s.rows() * d));
            want.push(("d_embedding", g.d_embedding.len(), v1 * d));
        }
        for (what, got, expected) in want {
            if got != expected {
                return Err(CybError::Shape(format!(
                    "{what} has {got} elements, expected {expected} for {shape:?}"
                )));
            }
        }
        let stream = self.gpu.stream().clone();
        let chunk_reduction = match reduction {
            Reduction::Mean => Reduction::Sum,
            r => r,
        };
        if let (Reduction::Mean, Some(_), Some(w)) = (reduction, &grads, self.mean_divisor) {
            // As cyb_inverse_weight_sum: 1/sum in double, rounded to float, 0 for none.
            let inv = if w > 0.0 { (1.0 / w) as f32 } else { 0.0 };
            stream
                .memcpy_htod(&[inv], &mut self.inv_weight_sum)
                .map_err(cuda_err("uploading the global batch's mean divisor"))?;
        } else if reduction == Reduction::Mean && grads.is_some() && n > 0 {
            let (n32, v32) = (as_i32("positions", n)?, as_i32("V", s.vocab)?);
            let null: u64 = 0;
            let mut b = stream.launch_builder(&self.inverse_weight_sum);
            b.arg(targets);
            match weights {
                Some(w) => b.arg(w),
                None => b.arg(&null),
            };
            b.arg(&n32).arg(&v32).arg(&mut self.inv_weight_sum);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (INV_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: targets and weights have B*T = n elements (checked above), a null
            // weights pointer means all ones; out has 1 element; one block.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launching cyb_inverse_weight_sum"))?;
        }
        let stride = padded_row_stride(v1);
        let chunk = shape.chunk_positions.min(n).max(1);
        let inv = &self.inv_weight_sum;
        let bufs = Self::buffers(&mut self.bufs, &self.gpu, shape, stride)?;
        let mut chunks = Vec::new();
        for p0 in (0..n).step_by(chunk) {
            let p1 = (p0 + chunk).min(n);
            let cs = LossShape {
                batch: 1,
                pauses: s.pauses,
                seq: p1 - p0,
                vocab: s.vocab,
            };
            let rows = cs.rows();
            chunk_runs(s, p0, p1, |from, to, len| {
                let src = hidden.slice(from * d..(from + len) * d);
                let mut dst = bufs.hidden.slice_mut(to * d..(to + len) * d);
                stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(cuda_err("gathering the head's hidden rows"))
            })?;
            let hc = bufs.hidden.slice(..rows * d);
            linear.forward_ld(
                &mut bufs.logits.slice_mut(..rows * stride),
                &hc,
                embedding,
                rows,
                d,
                v1,
                stride,
            )?;
            let fwd = loss.forward_strided_view(
                &bufs.logits.slice(..rows * stride),
                stride,
                &targets.slice(p0..p1),
                cs,
                chunk_reduction,
                weights.map(|w| w.slice(p0..p1)).as_ref(),
            )?;
            if let Some(g) = grads.as_mut() {
                let upstream = match reduction {
                    Reduction::Mean => Upstream::Device(inv),
                    _ => Upstream::Scalar(1.0),
                };
                loss.backward_in_place_view(
                    &fwd,
                    upstream,
                    &mut bufs.logits.slice_mut(..rows * stride),
                )?;
                let dl = bufs.logits.slice(..rows * stride);
                linear.backward_input_ld(
                    &mut bufs.dhidden.slice_mut(..rows * d),
                    &dl,
                    embedding,
                    rows,
                    d,
                    v1,
                    stride,
                )?;
                linear.backward_weight_f32(&mut g.d_embedding, &dl, &hc, rows, d, v1, stride)?;
                chunk_runs(s, p0, p1, |to, from, len| {
                    let src = bufs.dhidden.slice(from * d..(from + len) * d);
                    let mut dst = g.d_hidden.slice_mut(to * d..(to + len) * d);
                    stream
                        .memcpy_dtod(&src, &mut dst)
                        .map_err(cuda_err("scattering the head's hidden gradient"))
                })?;
            }
            chunks.push((p0, fwd));
        }
        Ok(GpuHeadForward {
            shape: s,
            reduction,
            chunks,
        })
    }

    /// The chunk buffers for `shape`, (re)allocated and poisoned when it changed.
    fn buffers<'b>(
        bufs: &'b mut Option<ChunkBuffers<T>>,
        gpu: &Arc<GpuContext>,
        shape: HeadShape,
        stride: usize,
    ) -> Result<&'b mut ChunkBuffers<T>> {
        let s = shape.loss;
        let positions = shape.chunk_positions.min(s.positions()).max(1);
        let key = (s.pauses, shape.d, s.vocab, positions);
        if bufs.as_ref().map(|b| b.key) != Some(key) {
            *bufs = None; // free the old buffers first
            let rows = (s.pauses + 1) * positions;
            let stream = gpu.stream();
            let poisoned = |len: usize| -> Result<CudaSlice<T>> {
                let mut buf = gpu.zeros::<T>(len.max(1))?;
                let bytes = buf.len() * std::mem::size_of::<T>();
                let (ptr, guard) = buf.device_ptr_mut(stream);
                // SAFETY: `bytes` is exactly the allocation's size; 0xFF bytes are NaN
                // in f32 and in bf16.
                unsafe {
                    cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream())
                }
                .map_err(cuda_err("poisoning the head's chunk buffer"))?;
                drop(guard);
                Ok(buf)
            };
            *bufs = Some(ChunkBuffers {
                key,
                hidden: poisoned(rows * shape.d)?,
                logits: poisoned(rows * stride)?,
                dhidden: poisoned(rows * shape.d)?,
            });
        }
        Ok(bufs.as_mut().expect("allocated above"))
    }
}

fn as_i32(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| CybError::Shape(format!("{what} = {n} is too large for 32-bit indices")))
}

/// What [`GpuHead::forward_backward`] leaves on the device: each chunk's loss forward.
/// Reading anything waits for the stream.
#[derive(Debug)]
pub struct GpuHeadForward {
    shape: LossShape,
    reduction: Reduction,
    /// (first position, the chunk's loss forward with reduction Sum or None).
    chunks: Vec<(usize, GpuLossForward)>,
}

impl GpuHeadForward {
    /// Number of chunks the batch was split into.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Errors in device-side targets or weights, with batch-wide position indices.
    pub fn check(&self) -> Result<()> {
        for (p0, fwd) in &self.chunks {
            fwd.check().map_err(|e| match e {
                CybError::VocabRange { id, index, vocab } => CybError::VocabRange {
                    id,
                    index: index + p0,
                    vocab,
                },
                CybError::Param(m) => CybError::Param(format!("{m} (chunk at position {p0})")),
                e => e,
            })?;
        }
        Ok(())
    }

    /// The reduced loss: weighted mean over valid positions (`Mean`), or the sum.
    pub fn loss(&self) -> Result<f64> {
        self.check()?;
        let mut total = 0.0;
        for (_, fwd) in &self.chunks {
            total += fwd.loss()?;
        }
        let weight_sum = self.stats()?.weight_sum;
        Ok(match self.reduction {
            Reduction::Mean if weight_sum > 0.0 => total / weight_sum,
            Reduction::Mean => 0.0,
            Reduction::Sum | Reduction::None => total,
        })
    }

    /// Valid positions, weight sum and mean `E[pauses]` over the whole batch.
    pub fn stats(&self) -> Result<LossStats> {
        self.check()?;
        let mut out = LossStats::default();
        let mut weighted_pauses = 0.0;
        for (_, fwd) in &self.chunks {
            let s = fwd.stats()?;
            out.valid_positions += s.valid_positions;
            out.weight_sum += s.weight_sum;
            weighted_pauses += s.mean_pauses * s.weight_sum;
        }
        if out.weight_sum > 0.0 {
            out.mean_pauses = weighted_pauses / out.weight_sum;
        }
        Ok(out)
    }

    /// Per-position `w_i L_i`, `[B, T]`, on the host.
    pub fn per_position_to_host(&self) -> Result<Vec<f32>> {
        self.gather(GpuLossForward::per_position_to_host)
    }

    /// Per-position `E[pauses]`, `[B, T]`, on the host.
    pub fn pauses_to_host(&self) -> Result<Vec<f32>> {
        self.gather(GpuLossForward::pauses_to_host)
    }

    fn gather(&self, f: impl Fn(&GpuLossForward) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.shape.positions());
        for (_, fwd) in &self.chunks {
            out.extend(f(fwd)?);
        }
        Ok(out)
    }
}

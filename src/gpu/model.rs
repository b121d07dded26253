//! The CYB model on the GPU (docs/MATH.md, "The model"), forward, backward and AdamW, the
//! twin of [`crate::cpu::model`] op by op, in the depth-major layout `[B, K+1, T, d]` of
//! docs/MATH.md, "Pause steps".
//!
//! Everything lives on the device: the parameters, their gradients and the AdamW
//! moments as flat f32 buffers in the fixed tensor order (docs/MATH.md, "Checkpoints"), and
//! the activations the backward needs (allocated for the first batch shape, reused while
//! it stays the same). A training step queues its work on the context's stream and
//! never waits for the host: the loss, the statistics and the gradient norm are read
//! back only when asked for ([`GpuStep::loss`], [`GpuModel::grad_norm`]).
//!
//! Precision ([`Precision`], chosen at [`GpuModel::with_precision`]):
//! - `F32`: f32 storage and f32 arithmetic (cuBLAS SGEMM without TF32, f32
//!   elementwise kernels; the loss rows in f32 and per-position math in f64, as in
//!   `kernels/cyb_loss.cu`), the twin of the CPU reference.
//! - `Bf16` (mixed precision): the activations, their gradients and the logits are
//!   bf16, and the GEMMs multiply a bf16 copy of the weights (`cublasGemmEx`, bf16
//!   inputs, `CUBLAS_COMPUTE_32F`: f32 accumulation); attention runs on the bf16
//!   tensor-core kernels (f32 softmax and logsumexp). LayerNorm statistics, GELU,
//!   biases and the loss are computed in f32 from the bf16 values; LayerNorm gains,
//!   biases and the embedding tables are read in f32. The parameters themselves stay
//!   f32 (the masters), the gradients are f32 (weight-gradient GEMMs write f32 with
//!   f32 accumulation, bias/LayerNorm/embedding gradients are f32 reductions), AdamW
//!   updates the masters in f32, and the bf16 copy is refreshed from them after every
//!   step (`cast_f32_to_bf16` in `kernels/adamw.cu`).
//!
//! Determinism: no float atomics anywhere; every reduction has a fixed shape, so a step
//! gives the same bits on every run (in both precisions).

use super::attention::{AttnDims, PauseAttention};

use super::adamw::{check_flat, segments, GpuAdamW, Segment};
use super::embedding::{EmbeddingKernels, TableDims, TokenIndex};
use super::gelu::GeluKernels;
use super::grad_ready::{GradReady, Unobserved};
use super::head_loss::{GpuHead, GpuHeadForward, GpuHeadGrads};
use super::layernorm::LayerNormKernels;
use super::linear::{GemmElem, Linear};
use super::loss::{padded_row_stride, CybLoss, GpuLossForward, Upstream};
use super::residual::ResidualKernels;
use super::{cuda_err, GpuContext};
use crate::config::ModelConfig;
pub use crate::config::Precision;
use crate::cpu::embedding::StepShape;
use crate::cpu::head_loss::HeadShape;
use crate::cpu::loss::{check_targets, LossShape, LossStats};
use crate::cpu::model::{check_batch, HeadMode, Model, Params, StepOutput};
use crate::error::{CybError, Result};
use crate::objective::{Reduction, ResolvedObjective};
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;
use std::ops::Range;
use std::sync::Arc;

// Tensors of one block, in the fixed order of src/cpu/params.rs.
const LN1_W: usize = 0;
const LN1_B: usize = 1;
const QKV_W: usize = 2;
const QKV_B: usize = 3;
const PROJ_W: usize = 4;
const PROJ_B: usize = 5;
const LN2_W: usize = 6;
const LN2_B: usize = 7;
const FC_W: usize = 8;
const FC_B: usize = 9;
const MLP_PROJ_W: usize = 10;
const MLP_PROJ_B: usize = 11;
const PER_BLOCK: usize = 12;

/// Where each tensor lies in the flat buffers.
struct Layout {
    segs: Vec<Segment>,
    layers: usize,
}

impl Layout {
    fn range(&self, i: usize) -> Range<usize> {
        let s = &self.segs[i];
        s.offset..s.offset + s.len
    }
    fn block(&self, l: usize, j: usize) -> Range<usize> {
        self.range(3 + PER_BLOCK * l + j)
    }
    /// A LayerNorm's weight and bias, adjacent.
    fn block_ln(&self, l: usize, w: usize) -> Range<usize> {
        self.block_pair(l, w)
    }
    /// Block `l`'s tensor `w` and the next one (a weight and its bias), adjacent.
    fn block_pair(&self, l: usize, w: usize) -> Range<usize> {
        self.block(l, w).start..self.block(l, w + 1).end
    }
    fn tok_emb(&self) -> Range<usize> {
        self.range(0)
    }
    /// `[tok_emb | pos_emb | depth_emb]`.
    fn tables(&self) -> Range<usize> {
        self.range(0).start..self.range(2).end
    }
    fn ln_f_weight(&self) -> Range<usize> {
        self.range(3 + PER_BLOCK * self.layers)
    }
    fn ln_f_bias(&self) -> Range<usize> {
        self.range(3 + PER_BLOCK * self.layers + 1)
    }
    fn ln_f(&self) -> Range<usize> {
        self.ln_f_weight().start..self.ln_f_bias().end
    }
}

/// The loaded kernels and the cuBLAS handle.
struct Kernels {
    gpu: Arc<GpuContext>,
    linear: Linear,
    ln: LayerNormKernels,
    gelu: GeluKernels,
    resid: ResidualKernels,
    emb: EmbeddingKernels,
    attn: PauseAttention,
}

/// What the forward of one block keeps for the backward (`N = B*(K+1)*T` rows):
/// activations in the step's element type `T`, statistics always in f32.
struct BlockActs<T> {
    ln1: CudaSlice<T>,        // [N, d]
    ln1_mean: CudaSlice<f32>, // [N]
    ln1_rstd: CudaSlice<f32>, // [N]
    qkv: CudaSlice<T>,        // [N, 3d]
    atty: CudaSlice<T>,       // [N, d] attention output before W_o
    lse: CudaSlice<f32>,      // [B, H, K+1, T]
    mid: CudaSlice<T>,        // [N, d] residual after the attention half
    ln2: CudaSlice<T>,        // [N, d]
    ln2_mean: CudaSlice<f32>, // [N]
    ln2_rstd: CudaSlice<f32>, // [N]
    fc: CudaSlice<T>,         // [N, 4d] before gelu (bias included)
    gelu: CudaSlice<T>,       // [N, 4d]
}

/// Activations and backward scratch for one batch shape.
struct Acts<T> {
    steps: StepShape,
    tokens: CudaSlice<i32>,  // [B, T]
    targets: CudaSlice<i32>, // [B, T]
    /// `resid[0]` = embeddings, `resid[l+1]` = output of block `l`; each `[N, d]`.
    resid: Vec<CudaSlice<T>>,
    blocks: Vec<BlockActs<T>>,
    lnf: CudaSlice<T>,        // [N, d]
    lnf_mean: CudaSlice<f32>, // [N]
    lnf_rstd: CudaSlice<f32>, // [N]
    /// `[N, V+1]` with rows `logits_ld` apart (`N * logits_ld` elements, see
    /// [`logits_row_stride`]); after an unfused backward it holds `dlogits` (computed
    /// in place). Allocated on first use ([`Acts::ensure_logits`]): a step with the
    /// fused head never needs it.
    logits: CudaSlice<T>,
    logits_ld: usize,
    dresid: CudaSlice<T>, // [N, d]
    dln: CudaSlice<T>,    // [N, d]
    datty: CudaSlice<T>,  // [N, d]
    dqkv: CudaSlice<T>,   // [N, 3d]
    dgelu: CudaSlice<T>,  // [N, 4d]
    dfc: CudaSlice<T>,    // [N, 4d]
}

/// The row stride of the logits buffer for `V+1` columns: padded to a multiple of 64
/// elements ([`padded_row_stride`]), so that every row starts 128-byte aligned for the
/// loss kernels' vector loads (`V+1 = 32001` would give a 64,002-byte bf16 stride). The
/// logits GEMM writes columns `0..=V` with `ldc` = the stride; the padding columns stay
/// zero from the allocation and the loss backward writes zeros there; the backward
/// GEMMs read only columns `0..=V`.
fn logits_row_stride(v1: usize) -> usize {
    padded_row_stride(v1)
}

impl<T: GemmElem> Acts<T> {
    fn new(gpu: &GpuContext, c: &ModelConfig, steps: StepShape) -> Result<Acts<T>> {
        let (n, d) = (steps.rows(), c.d_model);
        let z = |len: usize| gpu.zeros::<T>(len.max(1));
        let zf = |len: usize| gpu.zeros::<f32>(len.max(1));
        let lse_len = steps.batch * c.n_head * (steps.pauses + 1) * steps.seq;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            blocks.push(BlockActs {
                ln1: z(n * d)?,
                ln1_mean: zf(n)?,
                ln1_rstd: zf(n)?,
                qkv: z(n * 3 * d)?,
                atty: z(n * d)?,
                lse: zf(lse_len)?,
                mid: z(n * d)?,
                ln2: z(n * d)?,
                ln2_mean: zf(n)?,
                ln2_rstd: zf(n)?,
                fc: z(n * 4 * d)?,
                gelu: z(n * 4 * d)?,
            });
        }
        let logits_ld = logits_row_stride(c.vocab + 1);
        Ok(Acts {
            steps,
            tokens: gpu.zeros(steps.batch * steps.seq)?,
            targets: gpu.zeros(steps.batch * steps.seq)?,
            resid: (0..=c.n_layer).map(|_| z(n * d)).collect::<Result<_>>()?,
            blocks,
            lnf: z(n * d)?,
            lnf_mean: zf(n)?,
            lnf_rstd: zf(n)?,
            logits: z(1)?,
            logits_ld,
            dresid: z(n * d)?,
            dln: z(n * d)?,
            datty: z(n * d)?,
            dqkv: z(n * 3 * d)?,
            dgelu: z(n * 4 * d)?,
            dfc: z(n * 4 * d)?,
        })
    }

    /// Allocates the whole logits buffer unless it is there (zeros: the padding
    /// columns stay zero).
    fn ensure_logits(&mut self, gpu: &GpuContext) -> Result<()> {
        let want = (self.steps.rows() * self.logits_ld).max(1);
        if self.logits.len() != want {
            self.logits = gpu.zeros(want)?;
        }
        Ok(())
    }
}

/// The activations in the model's precision.
enum AnyActs {
    F32(Acts<f32>),
    Bf16(Acts<bf16>),
}

impl AnyActs {
    fn steps(&self) -> StepShape {
        match self {
            AnyActs::F32(a) => a.steps,
            AnyActs::Bf16(a) => a.steps,
        }
    }
    fn tokens_mut(&mut self) -> &mut CudaSlice<i32> {
        match self {
            AnyActs::F32(a) => &mut a.tokens,
            AnyActs::Bf16(a) => &mut a.tokens,
        }
    }
}

/// The logits of [`GpuModel::forward`] on the device: `[B, K+1, T, V+1]` rows
/// [`GpuModel::logits_row_stride`] elements apart, in the model's precision.
#[derive(Debug)]
pub enum GpuLogits<'a> {
    /// [`Precision::F32`]
    F32(&'a CudaSlice<f32>),
    /// [`Precision::Bf16`]
    Bf16(&'a CudaSlice<bf16>),
}

/// What [`GpuModel::forward_backward`] leaves on the device: the loss forward (loss,
/// statistics, per-position `E[pauses]`). Reading anything waits for the stream.
pub struct GpuStep {
    fwd: StepForward,
}

/// The loss forward of a step with the unfused or the fused head.
enum StepForward {
    Unfused(Box<GpuLossForward>),
    Fused(GpuHeadForward),
}

impl GpuStep {
    /// The mean loss (plus the `dp` batch term), as [`StepOutput::loss`].
    pub fn loss(&self) -> Result<f64> {
        match &self.fwd {
            StepForward::Unfused(f) => f.loss(),
            StepForward::Fused(f) => f.loss(),
        }
    }

    /// Valid positions, weight sum, mean `E[pauses]`.
    pub fn stats(&self) -> Result<LossStats> {
        match &self.fwd {
            StepForward::Unfused(f) => f.stats(),
            StepForward::Fused(f) => f.stats(),
        }
    }

    /// The loss forward itself (device buffers, summary) of a step with the unfused
    /// head ([`HeadMode::Unfused`]); `None` with the fused head (see
    /// [`GpuStep::head_forward`]).
    pub fn loss_forward(&self) -> Option<&GpuLossForward> {
        match &self.fwd {
            StepForward::Unfused(f) => Some(f),
            StepForward::Fused(_) => None,
        }
    }

    /// The fused head's forward (its chunks' loss forwards) of a step with the fused
    /// head; `None` with the unfused head.
    pub fn head_forward(&self) -> Option<&GpuHeadForward> {
        match &self.fwd {
            StepForward::Fused(f) => Some(f),
            StepForward::Unfused(_) => None,
        }
    }

    /// Everything the CPU's [`StepOutput`] holds, read back to the host.
    pub fn to_step_output(&self) -> Result<StepOutput> {
        let pauses = match &self.fwd {
            StepForward::Unfused(f) => f.pauses_to_host()?,
            StepForward::Fused(f) => f.pauses_to_host()?,
        };
        Ok(StepOutput {
            loss: self.loss()?,
            stats: self.stats()?,
            pauses: pauses.into_iter().map(|x| x as f64).collect(),
        })
    }
}

/// A CYB model on the GPU: parameters, gradients, AdamW state and activations.
///
/// ```no_run
/// use cyb::{config::ModelConfig, cpu::model::Model, gpu::GpuContext};
/// use cyb::gpu::model::{GpuModel, Precision};
/// use cyb::{rng::seeded, Objective};
/// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let cpu: Model<f32> = Model::init(c, &mut seeded(0))?;
/// let gpu = GpuContext::new(0)?;
/// // Mixed precision (bf16 activations and GEMMs, f32 masters); `from_cpu` is f32.
/// let mut m = GpuModel::with_precision(&gpu, &cpu, Precision::Bf16)?;
/// let obj = Objective::ap_default().resolve(1)?;
/// let step = m.forward_backward(&[1, 2], &[2, 3], 1, 2, 1, &obj)?;
/// m.step(1e-3, 1.0)?;
/// println!("loss {} grad norm {}", step.loss()?, m.grad_norm()?);
/// let back: Model<f32> = m.to_cpu()?;
/// # Ok::<(), cyb::CybError>(())
/// ```
pub struct GpuModel {
    config: ModelConfig,
    k: Kernels,
    layout: Layout,
    precision: Precision,
    /// The f32 master weights.
    params: CudaSlice<f32>,
    /// Their bf16 copy (round to nearest even), for [`Precision::Bf16`] only.
    params_bf16: Option<CudaSlice<bf16>>,
    grads: CudaSlice<f32>,
    opt: GpuAdamW,
    acts: Option<AnyActs>,
    loss: Option<CybLoss>,
    /// How the training step computes the head (fused by default).
    head: HeadMode,
    /// The fused head's kernels and chunk buffers, per precision, made on first use.
    head_f32: Option<GpuHead<f32>>,
    head_bf16: Option<GpuHead<bf16>>,
    /// The global batch's weight sum when this model steps one shard of it
    /// ([`GpuModel::set_mean_divisor`], data parallel).
    mean_divisor: Option<f64>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("config", &self.config)
            .field("precision", &self.precision)
            .finish()
    }
}

impl GpuModel {
    /// Uploads a CPU model for f32 steps ([`Precision::F32`], the CPU reference's
    /// twin); [`GpuModel::with_precision`] chooses. The optimiser starts fresh (AdamW
    /// β = (0.9, 0.95), ε = 1e-8, no weight decay; change them through
    /// [`GpuModel::optimizer_mut`]).
    pub fn from_cpu(gpu: &Arc<GpuContext>, model: &Model<f32>) -> Result<Self> {
        Self::with_precision(gpu, model, Precision::F32)
    }

    /// Uploads a CPU model (its f32 parameters become the master weights) for steps
    /// in `precision`; with [`Precision::Bf16`] the bf16 copy is made on the device.
    pub fn with_precision(
        gpu: &Arc<GpuContext>,
        model: &Model<f32>,
        precision: Precision,
    ) -> Result<Self> {
        let config = model.config.clone();
        config.validate()?;
        model.params.check(&config)?;
        let segs = segments(&config);
        let mut flat = Vec::with_capacity(segs.iter().map(|s| s.len).sum());
        for (_, _, x) in model.params.tensors() {
            flat.extend_from_slice(x);
        }
        check_flat("parameters", flat.len(), &config)?;
        let total = flat.len();
        let k = Kernels {
            gpu: gpu.clone(),
            linear: Linear::new(gpu)?,
            ln: LayerNormKernels::new(gpu)?,
            gelu: GeluKernels::new(gpu)?,
            resid: ResidualKernels::new(gpu)?,
            emb: EmbeddingKernels::new(gpu)?,
            attn: PauseAttention::new(gpu)?,
        };
        let params = gpu.htod(&flat)?;
        let opt = GpuAdamW::new(gpu, &config, 0.9, 0.95, 1e-8, 0.0)?;
        let params_bf16 = match precision {
            Precision::F32 => None,
            Precision::Bf16 => {
                let mut copy = gpu.zeros::<bf16>(total.max(1))?;
                opt.cast_to_bf16(&params, &mut copy)?;
                Some(copy)
            }
        };
        Ok(GpuModel {
            layout: Layout {
                segs,
                layers: config.n_layer,
            },
            precision,
            params,
            params_bf16,
            grads: gpu.zeros(total)?,
            opt,
            config,
            k,
            acts: None,
            loss: None,
            head: HeadMode::default(),
            head_f32: None,
            head_bf16: None,
            mean_divisor: None,
        })
    }

    /// Makes [`GpuModel::forward_backward`] divide the gradients by `valid_positions`,
    /// the valid positions of a global batch whose shard this model steps (data
    /// parallel, [`super::data_parallel`]), instead of its own batch's: the shards'
    /// gradients then sum to the global batch's ([`GpuHead::set_mean_divisor`]). The
    /// reported loss stays the shard's mean. Needs the fused head (the default); `None`
    /// restores the plain step.
    pub fn set_mean_divisor(&mut self, valid_positions: Option<f64>) {
        self.mean_divisor = valid_positions;
    }

    /// The flat gradient buffer, writable (to all-reduce it in place between
    /// [`GpuModel::forward_backward`] and [`GpuModel::step`]).
    pub fn grads_device_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.grads
    }

    /// How [`GpuModel::forward_backward`] computes the head: fused with the loss in
    /// chunks of at most `chunk_bytes` of logits (the default,
    /// [`crate::cpu::head_loss::DEFAULT_HEAD_CHUNK_BYTES`]; the whole logits tensor is
    /// never allocated), or unfused. [`GpuModel::forward`] always computes logits.
    pub fn set_head(&mut self, head: HeadMode) {
        self.head = head;
        self.head_f32 = None;
        self.head_bf16 = None;
    }

    /// The head mode of the training step.
    pub fn head(&self) -> HeadMode {
        self.head
    }

    /// Bytes of device memory the fused head's chunk buffers hold (0 before the first
    /// fused step).
    pub fn head_buffer_bytes(&self) -> usize {
        self.head_f32.as_ref().map_or(0, GpuHead::buffer_bytes)
            + self.head_bf16.as_ref().map_or(0, GpuHead::buffer_bytes)
    }

    /// The precision of the steps.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The parameters copied back into a CPU model (waits for the stream).
    pub fn to_cpu(&self) -> Result<Model<f32>> {
        let params = self.flat_to_params(&self.params)?;
        Model::new(self.config.clone(), params)
    }

    /// The gradients of the last [`GpuModel::forward_backward`], on the host.
    pub fn grads_to_cpu(&self) -> Result<Params<f32>> {
        self.flat_to_params(&self.grads)
    }

    fn flat_to_params(&self, buf: &CudaSlice<f32>) -> Result<Params<f32>> {
        let flat = self.k.gpu.dtoh(buf)?;
        let tensors = self
            .layout
            .segs
            .iter()
            .map(|s| flat[s.offset..s.offset + s.len].to_vec())
            .collect();
        let p = Params::from_ordered(self.config.n_layer, tensors);
        p.check(&self.config)?;
        Ok(p)
    }

    /// The model's sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The context the model runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.k.gpu
    }

    /// The flat parameter buffer, the f32 masters (fixed tensor order, see
    /// [`super::adamw::segments`]).
    pub fn params_device(&self) -> &CudaSlice<f32> {
        &self.params
    }

    /// The bf16 copy of the masters that [`Precision::Bf16`] steps multiply with (same
    /// layout; `None` in f32).
    pub fn params_bf16_device(&self) -> Option<&CudaSlice<bf16>> {
        self.params_bf16.as_ref()
    }

    /// Elements between consecutive rows of the logits (`>= V+1`).
    pub fn logits_row_stride(&self) -> usize {
        logits_row_stride(self.config.vocab + 1)
    }

    /// The flat gradient buffer, same layout.
    pub fn grads_device(&self) -> &CudaSlice<f32> {
        &self.grads
    }

    /// The AdamW state and hyper-parameters.
    pub fn optimizer_mut(&mut self) -> &mut GpuAdamW {
        &mut self.opt
    }

    /// The AdamW state and hyper-parameters.
    pub fn optimizer(&self) -> &GpuAdamW {
        &self.opt
    }

    /// Allocates the activations for `steps` unless they already fit, and uploads the
    /// tokens.
    fn prepare(&mut self, tokens: &[i32], steps: StepShape) -> Result<()> {
        if self.acts.as_ref().map(|a| a.steps()) != Some(steps) {
            self.acts = None; // free the old buffers first
            let (gpu, c) = (&self.k.gpu, &self.config);
            self.acts = Some(match self.precision {
                Precision::F32 => AnyActs::F32(Acts::new(gpu, c, steps)?),
                Precision::Bf16 => AnyActs::Bf16(Acts::new(gpu, c, steps)?),
            });
        }
        let acts = self.acts.as_mut().expect("allocated above");
        self.k.gpu.copy_into(tokens, acts.tokens_mut())
    }

    /// Logits `[B, K+1, T, V+1]` (depth-major, rows [`GpuModel::logits_row_stride`]
    /// apart) for tokens `[B, T]`, on the device in the model's precision (valid until
    /// the next call on this model).
    pub fn forward(
        &mut self,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
    ) -> Result<GpuLogits<'_>> {
        check_batch(&self.config, tokens, batch, seq, pauses)?;
        let steps = StepShape { batch, pauses, seq };
        self.prepare(tokens, steps)?;
        let GpuModel {
            config,
            k,
            layout,
            params,
            params_bf16,
            acts,
            ..
        } = self;
        match acts.as_mut().expect("prepared") {
            AnyActs::F32(a) => {
                forward_acts(k, layout, config, params, params, a, true)?;
                Ok(GpuLogits::F32(&a.logits))
            }
            AnyActs::Bf16(a) => {
                let w = params_bf16.as_ref().ok_or_else(missing_copy)?;
                forward_acts(k, layout, config, params, w, a, true)?;
                Ok(GpuLogits::Bf16(&a.logits))
            }
        }
    }

    /// [`GpuModel::forward`] copied to the host as f32 `[B, K+1, T, V+1]` (no padding;
    /// bf16 logits widened exactly).
    pub fn forward_to_host(
        &mut self,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
    ) -> Result<Vec<f32>> {
        let gpu = self.k.gpu.clone();
        let (v1, ld) = (self.config.vocab + 1, self.logits_row_stride());
        let padded: Vec<f32> = match self.forward(tokens, batch, seq, pauses)? {
            GpuLogits::F32(l) => gpu.dtoh(l)?,
            GpuLogits::Bf16(l) => gpu.dtoh(l)?.into_iter().map(bf16::to_f32).collect(),
        };
        let rows = StepShape { batch, pauses, seq }.rows();
        Ok((0..rows)
            .flat_map(|r| padded[r * ld..r * ld + v1].iter().copied())
            .collect())
    }

    /// Loss (`Reduction::Mean`) and the gradients of every parameter (overwritten, on
    /// the device: [`GpuModel::grads_to_cpu`]). Queued: nothing is read back. The DK
    /// bias is the model's `config.dk_bias`, as in [`crate::cpu::model::Model::loss`]:
    /// `objective` has none or this model's; another non-zero bias is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
    ) -> Result<GpuStep> {
        self.forward_backward_observed(
            tokens,
            targets,
            batch,
            seq,
            pauses,
            objective,
            &mut Unobserved,
        )
    }

    /// [`GpuModel::forward_backward`], telling `observer` each range of the flat
    /// gradient buffer as soon as the backward has queued its last write (in backward
    /// order; see [`super::grad_ready`]), e.g. to all-reduce it on another stream
    /// while the rest of the backward runs. The gradients are the same bits.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_observed(
        &mut self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
        observer: &mut dyn GradReady,
    ) -> Result<GpuStep> {
        check_batch(&self.config, tokens, batch, seq, pauses)?;
        if targets.len() != batch * seq {
            return Err(CybError::Shape(format!(
                "targets have {} elements, expected B*T = {batch}*{seq}",
                targets.len()
            )));
        }
        check_targets(targets, self.config.vocab)?;
        let objective = objective.for_model(self.config.dk_bias)?;
        if self.loss.as_ref().map(|l| l.objective()) != Some(&*objective) {
            self.loss = Some(CybLoss::new(&self.k.gpu, &objective)?);
        }
        let steps = StepShape { batch, pauses, seq };
        self.prepare(tokens, steps)?;
        let index = TokenIndex::new(&self.k.gpu, tokens, self.config.vocab)?;
        if let HeadMode::Fused { chunk_bytes } = self.head {
            match self.precision {
                Precision::F32 if self.head_f32.is_none() => {
                    self.head_f32 = Some(GpuHead::new(&self.k.gpu, chunk_bytes)?)
                }
                Precision::Bf16 if self.head_bf16.is_none() => {
                    self.head_bf16 = Some(GpuHead::new(&self.k.gpu, chunk_bytes)?)
                }
                _ => {}
            }
        } else if self.mean_divisor.is_some() {
            return Err(CybError::Param(
                "a shard of a global batch (data parallel) needs the fused head \
                 (--head-chunk-mb > 0)"
                    .into(),
            ));
        }
        for head in self.head_f32.iter_mut() {
            head.set_mean_divisor(self.mean_divisor);
        }
        for head in self.head_bf16.iter_mut() {
            head.set_mean_divisor(self.mean_divisor);
        }
        let GpuModel {
            config,
            k,
            layout,
            params,
            params_bf16,
            grads,
            acts,
            loss,
            head_f32,
            head_bf16,
            ..
        } = self;
        let loss = loss.as_ref().expect("created above");
        let shape = LossShape {
            batch,
            pauses,
            seq,
            vocab: config.vocab,
        };
        let fwd = match acts.as_mut().expect("prepared") {
            AnyActs::F32(a) => {
                k.gpu.copy_into(targets, &mut a.targets)?;
                let head = head_f32.as_mut();
                step_acts(
                    k, layout, config, params, params, grads, a, &index, loss, head, shape,
                    observer,
                )?
            }
            AnyActs::Bf16(a) => {
                let w = params_bf16.as_ref().ok_or_else(missing_copy)?;
                k.gpu.copy_into(targets, &mut a.targets)?;
                let head = head_bf16.as_mut();
                step_acts(
                    k, layout, config, params, w, grads, a, &index, loss, head, shape, observer,
                )?
            }
        };
        Ok(GpuStep { fwd })
    }

    /// One AdamW step with learning rate `lr`, the gradients clipped to global norm
    /// `grad_clip` first (as `clip_grad_norm` then `AdamW::step` on the CPU), on the
    /// f32 masters; in [`Precision::Bf16`] the bf16 copy is then refreshed from them.
    /// Queued.
    pub fn step(&mut self, lr: f32, grad_clip: f32) -> Result<()> {
        self.opt
            .step(&mut self.params, &self.grads, lr, Some(grad_clip))?;
        if let Some(copy) = self.params_bf16.as_mut() {
            self.opt.cast_to_bf16(&self.params, copy)?;
        }
        Ok(())
    }

    /// The global gradient norm (before clipping) of the last [`GpuModel::step`]; waits
    /// for the stream.
    pub fn grad_norm(&self) -> Result<f32> {
        self.opt.grad_norm()
    }

    /// Runs the f32 GEMMs on the TF32 tensor cores (see [`Linear::set_tf32`]); off by
    /// default; no effect on the bf16 GEMMs of [`Precision::Bf16`].
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        self.k.linear.set_tf32(on)
    }

    /// Waits until all queued work is done.
    pub fn synchronize(&self) -> Result<()> {
        self.k.gpu.synchronize()
    }
}

fn attn_dims(c: &ModelConfig, s: StepShape) -> AttnDims {
    AttnDims {
        batch: s.batch,
        pauses: s.pauses,
        seq: s.seq,
        heads: c.n_head,
        d_head: c.d_model / c.n_head,
        mode: c.pause_attention,
    }
}

fn table_dims(c: &ModelConfig) -> TableDims {
    TableDims {
        vocab: c.vocab,
        t_max: c.t_max,
        k_max: c.k_max,
        d: c.d_model,
    }
}

/// The forward on checked inputs (tokens already uploaded), keeping every activation.
///
/// `p` holds the f32 parameters (LayerNorm gains, biases and the embedding tables are
/// read from it), `wt` the same flat layout in `T` (the GEMM weights are read from it:
/// `p` itself in f32, the bf16 copy in bf16).
fn forward_acts<T: GemmElem>(
    k: &Kernels,
    lay: &Layout,
    c: &ModelConfig,
    p: &CudaSlice<f32>,
    wt: &CudaSlice<T>,
    a: &mut Acts<T>,
    with_logits: bool,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let st = a.steps;
    let (n, d, v1, ld) = (st.rows(), c.d_model, c.vocab + 1, a.logits_ld);
    let dims = attn_dims(c, st);
    k.emb.forward(
        &mut a.resid[0],
        &a.tokens,
        &p.slice(lay.tables()),
        table_dims(c),
        st,
    )?;
    for l in 0..c.n_layer {
        let (done, rest) = a.resid.split_at_mut(l + 1);
        let (x, out) = (&done[l], &mut rest[0]);
        let b = &mut a.blocks[l];
        let w = |j: usize| p.slice(lay.block(l, j));
        let wm = |j: usize| wt.slice(lay.block(l, j));
        // Attention half: mid = x + W_o · Attn(LN1(x) W_qkv + b_qkv) + b_o.
        k.ln.forward(
            &mut b.ln1,
            &mut b.ln1_mean,
            &mut b.ln1_rstd,
            x,
            &w(LN1_W),
            &w(LN1_B),
            n,
            d,
            c.layer_norm_eps as f32,
        )?;
        k.linear
            .forward(&mut b.qkv, &b.ln1, &wm(QKV_W), n, d, 3 * d)?;
        k.resid.bias_add(&mut b.qkv, &w(QKV_B), n, 3 * d)?;
        k.attn.forward(&b.qkv, &mut b.atty, &mut b.lse, dims)?;
        k.linear
            .forward(&mut b.mid, &b.atty, &wm(PROJ_W), n, d, d)?;
        k.resid.bias_residual(&mut b.mid, &w(PROJ_B), x, n, d)?;
        // MLP half: out = mid + W_2 · gelu(LN2(mid) W_1 + b_1) + b_2.
        k.ln.forward(
            &mut b.ln2,
            &mut b.ln2_mean,
            &mut b.ln2_rstd,
            &b.mid,
            &w(LN2_W),
            &w(LN2_B),
            n,
            d,
            c.layer_norm_eps as f32,
        )?;
        k.linear
            .forward(&mut b.fc, &b.ln2, &wm(FC_W), n, d, 4 * d)?;
        let fc_bias = w(FC_B);
        k.gelu.bias_gelu_forward(
            &mut b.fc,
            Some(&fc_bias as &dyn DevicePtr<f32>),
            &mut b.gelu,
            n,
            4 * d,
        )?;
        k.linear
            .forward(&mut *out, &b.gelu, &wm(MLP_PROJ_W), n, 4 * d, d)?;
        k.resid
            .bias_residual(&mut *out, &w(MLP_PROJ_B), &b.mid, n, d)?;
    }
    k.ln.forward(
        &mut a.lnf,
        &mut a.lnf_mean,
        &mut a.lnf_rstd,
        &a.resid[c.n_layer],
        &p.slice(lay.ln_f_weight()),
        &p.slice(lay.ln_f_bias()),
        n,
        d,
        c.layer_norm_eps as f32,
    )?;
    if !with_logits {
        return Ok(());
    }
    // Tied head: logits[N, V+1] (rows ld apart) = lnf[N, d] · tok_emb[V+1, d]^T.
    a.ensure_logits(&k.gpu)?;
    k.linear.forward_ld(
        &mut a.logits,
        &a.lnf,
        &wt.slice(lay.tok_emb()),
        n,
        d,
        v1,
        ld,
    )
}

/// Forward, head and loss forward and backward, and the backward of one step on
/// checked inputs (tokens and targets already uploaded); `p` and `wt` as in
/// [`forward_acts`]. With `head`, the fused head (no logits tensor); without, the
/// logits, the loss backward in place and the two head GEMMs.
#[allow(clippy::too_many_arguments)]
fn step_acts<T: GemmElem>(
    k: &Kernels,
    lay: &Layout,
    c: &ModelConfig,
    p: &CudaSlice<f32>,
    wt: &CudaSlice<T>,
    g: &mut CudaSlice<f32>,
    a: &mut Acts<T>,
    index: &TokenIndex,
    loss: &CybLoss,
    head: Option<&mut GpuHead<T>>,
    shape: LossShape,
    observer: &mut dyn GradReady,
) -> Result<StepForward>
where
    CudaBlas: Gemm<T>,
{
    forward_acts(k, lay, c, p, wt, a, head.is_none())?;
    k.gpu
        .stream()
        .memset_zeros(g)
        .map_err(cuda_err("zeroing the gradients"))?;
    let e = wt.slice(lay.tok_emb());
    let fwd = match head {
        Some(head) => {
            let hs = HeadShape {
                loss: shape,
                d: c.d_model,
                chunk_positions: head.chunk_positions(shape.pauses, shape.vocab),
            };
            // dlnf (overwritten) and dE (accumulated into the zeroed gradient).
            let grads = GpuHeadGrads {
                d_hidden: a.dln.as_view_mut(),
                d_embedding: g.slice_mut(lay.tok_emb()),
            };
            let f = head.forward_backward(
                &k.linear,
                loss,
                &a.lnf.as_view(),
                &e,
                &a.targets.as_view(),
                None,
                hs,
                Reduction::Mean,
                Some(grads),
            )?;
            StepForward::Fused(f)
        }
        None => {
            let fwd = loss.forward_strided(
                &a.logits,
                a.logits_ld,
                &a.targets,
                shape,
                Reduction::Mean,
                None,
            )?;
            loss.backward_in_place(&fwd, Upstream::Scalar(1.0), &mut a.logits)?;
            // Tied head: dlnf = dlogits · E, dE += dlogits^T · lnf.
            let (n, v1, ld) = (a.steps.rows(), c.vocab + 1, a.logits_ld);
            k.linear
                .backward_input_ld(&mut a.dln, &a.logits, &e, n, c.d_model, v1, ld)?;
            k.linear.backward_weight_f32(
                &mut g.slice_mut(lay.tok_emb()),
                &a.logits,
                &a.lnf,
                n,
                c.d_model,
                v1,
                ld,
            )?;
            StepForward::Unfused(Box::new(fwd))
        }
    };
    backward(k, lay, c, p, wt, g, a, index, observer)?;
    Ok(fwd)
}

/// The backward from `a.dln` (holding dlnf, the head's gradient) through the
/// activations, adding to the f32 gradients `g` (zeroed, holding the head's `tok_emb`
/// gradient; every weight-gradient GEMM accumulates in f32 into f32). Each
/// (weight, bias) pair is reported to `observer` right after its last write: the
/// ranges descend through the buffer (see [`super::grad_ready`]).
#[allow(clippy::too_many_arguments)]
fn backward<T: GemmElem>(
    k: &Kernels,
    lay: &Layout,
    c: &ModelConfig,
    p: &CudaSlice<f32>,
    wt: &CudaSlice<T>,
    g: &mut CudaSlice<f32>,
    a: &mut Acts<T>,
    index: &TokenIndex,
    observer: &mut dyn GradReady,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let st = a.steps;
    let (n, d) = (st.rows(), c.d_model);
    let dims = attn_dims(c, st);
    let stream = k.gpu.stream();
    stream
        .memset_zeros(&mut a.dresid)
        .map_err(cuda_err("zeroing the residual gradient"))?;
    k.ln.backward(
        &mut a.dresid,
        &mut g.slice_mut(lay.ln_f()),
        &a.dln,
        &a.resid[c.n_layer],
        &p.slice(lay.ln_f_weight()),
        &a.lnf_mean,
        &a.lnf_rstd,
        n,
        d,
    )?;
    observer.ready(g, lay.ln_f())?;
    for l in (0..c.n_layer).rev() {
        let b = &a.blocks[l];
        let w = |j: usize| p.slice(lay.block(l, j));
        let wm = |j: usize| wt.slice(lay.block(l, j));
        // MLP half (dresid is ∂L/∂out; it becomes ∂L/∂mid).
        k.linear
            .backward_input(&mut a.dgelu, &a.dresid, &wm(MLP_PROJ_W), n, 4 * d, d)?;
        k.linear.backward_weight_f32(
            &mut g.slice_mut(lay.block(l, MLP_PROJ_W)),
            &a.dresid,
            &b.gelu,
            n,
            4 * d,
            d,
            d,
        )?;
        k.resid
            .colsum(&mut g.slice_mut(lay.block(l, MLP_PROJ_B)), &a.dresid, n, d)?;
        observer.ready(g, lay.block_pair(l, MLP_PROJ_W))?;
        k.gelu.backward(&mut a.dfc, &b.fc, &a.dgelu, n * 4 * d)?;
        k.linear
            .backward_input(&mut a.dln, &a.dfc, &wm(FC_W), n, d, 4 * d)?;
        k.linear.backward_weight_f32(
            &mut g.slice_mut(lay.block(l, FC_W)),
            &a.dfc,
            &b.ln2,
            n,
            d,
            4 * d,
            4 * d,
        )?;
        k.resid
            .colsum(&mut g.slice_mut(lay.block(l, FC_B)), &a.dfc, n, 4 * d)?;
        observer.ready(g, lay.block_pair(l, FC_W))?;
        k.ln.backward(
            &mut a.dresid,
            &mut g.slice_mut(lay.block_ln(l, LN2_W)),
            &a.dln,
            &b.mid,
            &w(LN2_W),
            &b.ln2_mean,
            &b.ln2_rstd,
            n,
            d,
        )?;
        observer.ready(g, lay.block_pair(l, LN2_W))?;
        // Attention half (dresid becomes ∂L/∂x, the block input).
        k.linear
            .backward_input(&mut a.datty, &a.dresid, &wm(PROJ_W), n, d, d)?;
        k.linear.backward_weight_f32(
            &mut g.slice_mut(lay.block(l, PROJ_W)),
            &a.dresid,
            &b.atty,
            n,
            d,
            d,
            d,
        )?;
        k.resid
            .colsum(&mut g.slice_mut(lay.block(l, PROJ_B)), &a.dresid, n, d)?;
        observer.ready(g, lay.block_pair(l, PROJ_W))?;
        k.attn
            .backward(&b.qkv, &b.atty, &a.datty, &b.lse, &mut a.dqkv, dims)?;
        k.linear
            .backward_input(&mut a.dln, &a.dqkv, &wm(QKV_W), n, d, 3 * d)?;
        k.linear.backward_weight_f32(
            &mut g.slice_mut(lay.block(l, QKV_W)),
            &a.dqkv,
            &b.ln1,
            n,
            d,
            3 * d,
            3 * d,
        )?;
        k.resid
            .colsum(&mut g.slice_mut(lay.block(l, QKV_B)), &a.dqkv, n, 3 * d)?;
        observer.ready(g, lay.block_pair(l, QKV_W))?;
        k.ln.backward(
            &mut a.dresid,
            &mut g.slice_mut(lay.block_ln(l, LN1_W)),
            &a.dln,
            &a.resid[l],
            &w(LN1_W),
            &b.ln1_mean,
            &b.ln1_rstd,
            n,
            d,
        )?;
        observer.ready(g, lay.block_pair(l, LN1_W))?;
    }
    k.emb.backward(
        &mut g.slice_mut(lay.tables()),
        &a.dresid,
        index,
        table_dims(c),
        st,
    )?;
    observer.ready(g, lay.tables())
}

fn missing_copy() -> CybError {
    CybError::Cuda("the bf16 weight copy of a bf16 model is missing".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-tensor constants, the adjacent LayerNorm pairs and the table range
    /// name the tensors they mean (host only, no GPU).
    #[test]
    fn layout_names_the_right_tensors() {
        let c = ModelConfig {
            vocab: 5,
            d_model: 8,
            n_layer: 3,
            n_head: 2,
            t_max: 4,
            k_max: 2,
            pause_attention: crate::config::PauseAttention::Private,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        };
        let lay = Layout {
            segs: segments(&c),
            layers: c.n_layer,
        };
        let name_at = |r: Range<usize>| {
            let s = lay
                .segs
                .iter()
                .find(|s| s.offset == r.start)
                .expect("segment");
            assert_eq!(s.offset + s.len, r.end, "{} spans one tensor", s.name);
            s.name.clone()
        };
        let parts = [
            (LN1_W, "ln1.weight"),
            (LN1_B, "ln1.bias"),
            (QKV_W, "attn.qkv.weight"),
            (QKV_B, "attn.qkv.bias"),
            (PROJ_W, "attn.proj.weight"),
            (PROJ_B, "attn.proj.bias"),
            (LN2_W, "ln2.weight"),
            (LN2_B, "ln2.bias"),
            (FC_W, "mlp.fc.weight"),
            (FC_B, "mlp.fc.bias"),
            (MLP_PROJ_W, "mlp.proj.weight"),
            (MLP_PROJ_B, "mlp.proj.bias"),
        ];
        for l in 0..c.n_layer {
            for (j, name) in parts {
                assert_eq!(name_at(lay.block(l, j)), format!("blocks.{l}.{name}"));
            }
            for w in [LN1_W, LN2_W] {
                let r = lay.block_ln(l, w);
                assert_eq!(r.len(), 2 * c.d_model);
                assert_eq!(r.start, lay.block(l, w).start);
            }
        }
        assert_eq!(name_at(lay.tok_emb()), "tok_emb");
        assert_eq!(name_at(lay.ln_f_weight()), "ln_f.weight");
        assert_eq!(name_at(lay.ln_f_bias()), "ln_f.bias");
        assert_eq!(lay.ln_f().len(), 2 * c.d_model);
        assert_eq!(lay.tables().start, 0);
        assert_eq!(lay.tables().len(), table_dims(&c).len());
        let total: usize = lay.segs.iter().map(|s| s.len).sum();
        assert_eq!(lay.ln_f().end, total);
    }

    /// The logits rows are padded to a multiple of 64 elements (128-byte aligned bf16
    /// rows), never narrower than `V+1`.
    #[test]
    fn logits_rows_are_padded_to_64() {
        for (v1, want) in [
            (1, 64),
            (6, 64),
            (38, 64),
            (64, 64),
            (65, 128),
            (32001, 32064),
        ] {
            assert_eq!(logits_row_stride(v1), want, "V+1 = {v1}");
        }
    }
}

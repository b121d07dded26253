//! The CPU training loop: seeded data, AdamW with warmup + cosine learning rate and
//! gradient clipping, a progress bar, and evaluation under the greedy pause policy.

use crate::config::ModelConfig;
use crate::cpu::adamw::{clip_grad_norm, lr_schedule, AdamW, AdamWState};
use crate::cpu::loss::LossShape;
use crate::cpu::model::{HeadMode, Model, Params, Workspace};
use crate::data::{DataSource, Split};
use crate::error::{CybError, Result};
use crate::limits;
use crate::metrics::{greedy_outcomes, EvalSummary, PositionOutcome};
use crate::number::Num;
use crate::objective::{Objective, ResolvedObjective};
use crate::rng::{seeded, split, CybRng};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// Everything that defines a training run (besides the data).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub objective: Objective,
    /// Pause steps `K` used in training (`<= model.k_max`).
    pub pauses: usize,
    pub steps: usize,
    pub batch: usize,
    /// Sequence length (`<= model.t_max`).
    pub seq: usize,
    pub lr: f32,
    /// Final learning rate as a fraction of `lr` (cosine floor).
    pub min_lr_ratio: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub seed: u64,
    /// Evaluate on validation every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// How the training step computes the LM head (fused with the loss by default).
    pub head: HeadMode,
}

impl TrainConfig {
    /// The validation setting used for the learning curve and the final report.
    pub fn eval_config(&self) -> EvalConfig {
        EvalConfig {
            pauses: self.pauses,
            batches: self.eval_batches,
            batch: self.batch,
            seq: self.seq,
            threshold: 0.5,
            seed: self.seed,
            split: Split::Validation,
        }
    }
}

/// One logged training step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub mean_pauses: f64,
    pub grad_norm: f32,
    pub lr: f32,
    /// Real (non-pause) tokens trained on so far, this step included.
    pub tokens_seen: usize,
}

/// A validation point on the learning curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub tokens_seen: usize,
    /// Marginal NLL (the model's own halting) and forced-final NLL.
    pub nll: f64,
    pub nll_final: f64,
    /// Greedy-policy accuracy, and the accuracy of the forced answer at step K.
    pub accuracy: f64,
    pub accuracy_final: f64,
    pub mean_pauses: f64,
}

/// A learning curve as CSV (one row per evaluation point).
pub fn curve_csv(curve: &[EvalPoint]) -> String {
    let mut csv =
        String::from("step,tokens_seen,nll,nll_final,accuracy,accuracy_final,mean_pauses\n");
    for p in curve {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            p.step, p.tokens_seen, p.nll, p.nll_final, p.accuracy, p.accuracy_final, p.mean_pauses
        ));
    }
    csv
}

/// What a run produced.
pub struct TrainOutcome {
    pub model: Model<f32>,
    pub history: Vec<StepLog>,
    pub curve: Vec<EvalPoint>,
    /// Real tokens per second over the whole run (training steps only; of this
    /// process's steps when resumed).
    pub tokens_per_sec: f64,
    pub seconds: f64,
    /// `Some(snapshot)` when the run stopped early on [`RunControl::stop`], after saving
    /// this snapshot (`None` if nothing could be saved: no snapshot base was given).
    pub stopped: Option<Stopped>,
    /// Data-parallel replicas the steps ran on (1: one device, or the CPU).
    pub replicas: usize,
}

/// Where an interrupted run stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Stopped {
    /// Steps done.
    pub step: usize,
    /// The model snapshot to `--resume` from, if one was written.
    pub snapshot: Option<std::path::PathBuf>,
}

/// Snapshots, resumption and stopping of a run (`--save-every`, `--keep`, `--resume`,
/// SIGINT/SIGTERM); the default does none of them.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// Snapshot base name (`model.safetensors` -> `model.step000300.safetensors`, see
    /// [`crate::train_state`]).
    pub snapshot_base: Option<std::path::PathBuf>,
    /// Write a snapshot every this many steps (0 = only when stopped).
    pub save_every: usize,
    /// Snapshots kept on disk (the newest ones; at least 1).
    pub keep: usize,
    /// Continue this run (its model is the `init` of [`train_with`]).
    pub resume: Option<crate::train_state::TrainState>,
    /// Checked after every step: when set, the run saves a snapshot and stops.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Data-parallel replicas on several GPUs ([`crate::launch::Launch`], feature
    /// `nccl`, `--device cuda` only); `None`: one device. The steps equal one device's
    /// on the global batch, so snapshots resume with any world size that divides it.
    pub launch: Option<crate::launch::Launch>,
}

/// Generator for validation batches: fixed by the seed, independent of training.
pub fn validation_rng(seed: u64) -> CybRng {
    seeded(seed ^ 0x0005_EED0_F0A1_1DA7)
}

/// Generator for the evaluation batches of `split`: [`validation_rng`] for validation,
/// a stream of its own for test (and for evaluating on training data). For a generated
/// task the generator *is* the split (see [`crate::data::Split`]); for text and shards
/// it only picks the windows within the split's part.
pub fn eval_rng(split: Split, seed: u64) -> CybRng {
    match split {
        Split::Validation => validation_rng(seed),
        Split::Test => seeded(seed ^ 0x7E57_5EED_0B5E_55ED),
        Split::Train => seeded(seed ^ 0x0007_2A1E_7A1E_0A7D),
    }
}

/// Where the training steps run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainDevice {
    /// The CPU reference model (always available).
    #[default]
    Cpu,
    /// CUDA device 0 through [`crate::gpu::model::GpuModel`] (feature `cuda`), its
    /// steps in this precision (bf16 mixed precision by default on a GPU).
    Cuda(crate::config::Precision),
}

/// Train a model (fresh from `cfg.seed`, or continuing `init`) on `data`, on the CPU.
pub fn train(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<Model<f32>>,
    show_progress: bool,
) -> Result<TrainOutcome> {
    train_on(cfg, data, init, show_progress, TrainDevice::Cpu)
}

/// [`train`] on a chosen device. The GPU run draws the same batches and learning rates,
/// and evaluates by copying the model back to the CPU ([`evaluate`]).
pub fn train_on(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<Model<f32>>,
    show_progress: bool,
    device: TrainDevice,
) -> Result<TrainOutcome> {
    train_with(
        cfg,
        data,
        init,
        show_progress,
        device,
        RunControl::default(),
    )
}

/// The settings fingerprint of a run on `device` ([`crate::train_state::fingerprint`]).
pub fn run_fingerprint(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    device: TrainDevice,
) -> crate::train_state::Fingerprint {
    let device = match device {
        TrainDevice::Cpu => "cpu f32".to_string(),
        TrainDevice::Cuda(p) => format!("cuda {p}"),
    };
    crate::train_state::fingerprint(cfg, &data.describe(), &device)
}

/// [`train_on`] with snapshots, resumption and stopping ([`RunControl`]). Resuming
/// refuses a run whose settings differ from the snapshot's, naming each difference.
pub fn train_with(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<Model<f32>>,
    show_progress: bool,
    device: TrainDevice,
    control: RunControl,
) -> Result<TrainOutcome> {
    cfg.model.validate()?;
    cfg.check()?;
    // The data's ids must be the model's tokens; a model with more tokens (a pretrained
    // one fine-tuned on a built-in task) reads them as they are.
    if data.vocab() > cfg.model.vocab {
        return Err(CybError::Data(format!(
            "data has vocabulary {} but the model only {} tokens",
            data.vocab(),
            cfg.model.vocab
        )));
    }
    if cfg.pauses > cfg.model.k_max {
        return Err(CybError::TooManyPauses {
            k: cfg.pauses,
            k_max: cfg.model.k_max,
        });
    }
    if cfg.seq == 0 || cfg.seq > cfg.model.t_max || cfg.batch == 0 {
        return Err(CybError::Shape(format!(
            "batch {} x context {} (the model allows context up to {})",
            cfg.batch, cfg.seq, cfg.model.t_max
        )));
    }
    // A resumed run must be the snapshot's run: checked first, so the error names
    // every difference (the model shape included).
    let fingerprint = run_fingerprint(cfg, data, device);
    if let Some(state) = &control.resume {
        if init.is_none() {
            return Err(CybError::Param(
                "resuming needs the snapshot's model as `init`".into(),
            ));
        }
        let diff = crate::train_state::differences(&state.fingerprint, &fingerprint);
        if !diff.is_empty() {
            return Err(CybError::Param(format!(
                "cannot resume: this run's settings differ from the snapshot's (step {}): {}",
                state.step,
                diff.join("; ")
            )));
        }
        if state.step > cfg.steps {
            return Err(CybError::Param(format!(
                "cannot resume: the snapshot is at step {}, past the run's {} steps",
                state.step, cfg.steps
            )));
        }
    }
    // The loss reads d_k with the model's DK bias, as decoding and the metrics do. The
    // models add it themselves; resolving with it once spares them a copy every step.
    let objective = cfg
        .objective
        .resolve(cfg.pauses)?
        .with_dk_bias(cfg.model.dk_bias)?;
    let mut rng = seeded(cfg.seed);
    let model = match init {
        Some(m) => {
            if m.config != cfg.model {
                return Err(CybError::Param(format!(
                    "loaded model config {:?} differs from the requested {:?}",
                    m.config, cfg.model
                )));
            }
            m
        }
        None => Model {
            config: cfg.model.clone(),
            params: Params::init(&cfg.model, &mut split(&mut rng)),
        },
    };
    let data_rng = split(&mut rng);
    let run = RunLoop {
        cfg,
        data,
        objective: &objective,
        show_progress,
        fingerprint,
        control,
    };
    if let Some(launch) = &run.control.launch {
        check_data_parallel(cfg, device, launch)?;
    }
    match device {
        TrainDevice::Cpu => {
            let stepper = CpuStepper {
                grads: Params::<f32>::zeros(&cfg.model),
                workspace: Workspace::with_head(cfg.head),
                opt: AdamW::new(0.9, 0.95, 1e-8, cfg.weight_decay),
                model,
            };
            run.run(stepper, data_rng)
        }
        TrainDevice::Cuda(precision) => match run.control.launch.clone() {
            Some(launch) => cuda::train_data_parallel(run, model, data_rng, precision, launch),
            None => cuda::train(run, model, data_rng, precision),
        },
    }
}

/// Whether `cfg` can run on the data-parallel replicas of `launch` on `device`: a
/// GPU, a global batch that splits evenly over the replicas, a build with feature
/// `nccl`, and the fused head. Checked by [`train_with`] before any step, and by the
/// experiment before any run, so that every refusal reads the same.
///
/// ```
/// use cyb::launch::Launch;
/// use cyb::train::{check_data_parallel, TrainDevice};
/// # let model = cyb::config::ModelConfig { vocab: 10, d_model: 8, n_layer: 1, n_head: 2,
/// #     t_max: 8, k_max: 1, pause_attention: cyb::config::PauseAttention::Shared,
/// #     dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let cfg = cyb::train::TrainConfig {
///     model, objective: cyb::Objective::CeFinal, pauses: 1, steps: 10, batch: 6, seq: 8,
///     lr: 1e-3, min_lr_ratio: 0.1, warmup: 1, weight_decay: 0.1, grad_clip: 1.0, seed: 1,
///     eval_every: 5, eval_batches: 1, head: Default::default(),
/// };
/// let two = Launch::single_process(2)?;
/// // The CPU reference has no replicas.
/// assert!(check_data_parallel(&cfg, TrainDevice::Cpu, &two).is_err());
/// // 6 sequences do not split over 4 replicas: the error names sizes that do.
/// let four = Launch::single_process(4)?;
/// let gpu = TrainDevice::Cuda(cyb::config::Precision::F32);
/// let e = check_data_parallel(&cfg, gpu, &four).unwrap_err().to_string();
/// assert!(e.contains("(1, 2, 3, 6)"), "{e}");
/// # Ok::<(), cyb::CybError>(())
/// ```
pub fn check_data_parallel(
    cfg: &TrainConfig,
    device: TrainDevice,
    launch: &crate::launch::Launch,
) -> Result<()> {
    let n = launch.world_size;
    if device == TrainDevice::Cpu {
        return Err(CybError::Param(format!(
            "{n} data-parallel replicas need --device cuda"
        )));
    }
    launch.check_batch(cfg.batch)?;
    if !cfg!(feature = "nccl") {
        return Err(CybError::Unavailable(format!(
            "{n} data-parallel replicas: this build has no NCCL support; rebuild with \
             `cargo build --release --features nccl`"
        )));
    }
    if cfg.head == HeadMode::Unfused {
        return Err(CybError::Param(
            "data parallel needs the fused head (--head-chunk-mb > 0)".into(),
        ));
    }
    Ok(())
}

/// One backend of the training loop: a step on a batch, and the model for evaluation.
trait Stepper {
    /// Forward, backward, clipping and AdamW with learning rate `lr`: returns the loss,
    /// the mean `E[pauses]` and the gradient norm before clipping.
    fn step(
        &mut self,
        batch: &crate::data::Batch,
        cfg: &TrainConfig,
        objective: &ResolvedObjective,
        lr: f32,
    ) -> Result<(f64, f64, f32)>;
    /// Calls `f` with the current model (on the CPU).
    fn eval(
        &mut self,
        f: &mut dyn FnMut(&Model<f32>) -> Result<EvalSummary>,
    ) -> Result<EvalSummary>;
    /// The trained model.
    fn into_model(self) -> Result<Model<f32>>;
    /// Calls `f` with the current model and optimiser state (for a snapshot).
    fn with_state(
        &mut self,
        f: &mut dyn FnMut(&Model<f32>, AdamWState) -> Result<()>,
    ) -> Result<()>;
    /// Restores the optimiser state of a snapshot.
    fn set_optimizer_state(&mut self, state: AdamWState) -> Result<()>;
    /// Data-parallel replicas each step runs on.
    fn replicas(&self) -> usize {
        1
    }
}

struct CpuStepper {
    model: Model<f32>,
    grads: Params<f32>,
    workspace: Workspace<f32>,
    opt: AdamW,
}

impl Stepper for CpuStepper {
    fn step(
        &mut self,
        batch: &crate::data::Batch,
        cfg: &TrainConfig,
        objective: &ResolvedObjective,
        lr: f32,
    ) -> Result<(f64, f64, f32)> {
        let out = self.model.forward_backward_with(
            &mut self.workspace,
            &batch.tokens,
            &batch.targets,
            cfg.batch,
            cfg.seq,
            cfg.pauses,
            objective,
            &mut self.grads,
        )?;
        if !out.loss.is_finite() {
            return Ok((out.loss, out.stats.mean_pauses, f32::NAN));
        }
        let grad_norm = clip_grad_norm(&mut self.grads, cfg.grad_clip);
        self.opt.step(&mut self.model.params, &self.grads, lr);
        Ok((out.loss, out.stats.mean_pauses, grad_norm))
    }

    fn eval(
        &mut self,
        f: &mut dyn FnMut(&Model<f32>) -> Result<EvalSummary>,
    ) -> Result<EvalSummary> {
        f(&self.model)
    }

    fn into_model(self) -> Result<Model<f32>> {
        Ok(self.model)
    }

    fn with_state(
        &mut self,
        f: &mut dyn FnMut(&Model<f32>, AdamWState) -> Result<()>,
    ) -> Result<()> {
        f(&self.model, self.opt.state())
    }

    fn set_optimizer_state(&mut self, state: AdamWState) -> Result<()> {
        self.opt.set_state(state);
        Ok(())
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use crate::config::Precision;
    use crate::gpu::memory::{device_bytes_in_use, PeakMemory};
    use crate::gpu::{model::GpuModel, GpuContext};

    struct GpuStepper {
        model: GpuModel,
        gpu: std::sync::Arc<GpuContext>,
        /// Device bytes in use before the first step (`None` once reported).
        used_at_start: Option<usize>,
        /// The peak of the buffers' memory over the first step (the memory pool's high
        /// watermark), where the device has a memory pool.
        peak: Option<PeakMemory>,
    }

    impl GpuStepper {
        /// After the first step: its peak device memory (the memory pool's high
        /// watermark, temporaries freed inside the step included) and what stays in use
        /// (cuMemGetInfo: activations, chunk buffers, optimizer state, the context).
        fn report_memory(&mut self, start: usize, cfg: &TrainConfig) -> Result<()> {
            self.gpu.synchronize()?;
            let now = device_bytes_in_use(&self.gpu)?;
            let mib = |b: usize| b as f64 / (1 << 20) as f64;
            let peak = match self.peak.take() {
                Some(p) => format!(
                    "peak device memory in the first step {:.1} MiB (the buffers' memory \
                     pool, {:.1} MiB before it), ",
                    mib(p.peak_bytes()?),
                    mib(p.start_bytes()),
                ),
                None => "no memory pool, so no peak; ".into(),
            };
            crate::console::note(format!(
                "cuda: {peak}in use after it {:.1} MiB ({:.1} MiB allocated by the model and \
                 the step; cuMemGetInfo); head {:?}, chunk buffers {:.1} MiB",
                mib(now),
                mib(now.saturating_sub(start)),
                cfg.head,
                mib(self.model.head_buffer_bytes()),
            ));
            Ok(())
        }
    }

    impl Stepper for GpuStepper {
        fn step(
            &mut self,
            batch: &crate::data::Batch,
            cfg: &TrainConfig,
            objective: &ResolvedObjective,
            lr: f32,
        ) -> Result<(f64, f64, f32)> {
            let out = self.model.forward_backward(
                &batch.tokens,
                &batch.targets,
                cfg.batch,
                cfg.seq,
                cfg.pauses,
                objective,
            )?;
            // The update is queued behind the backward; reading the loss waits for both.
            self.model.step(lr, cfg.grad_clip)?;
            let stats = out.stats()?;
            if let Some(start) = self.used_at_start.take() {
                self.report_memory(start, cfg)?;
            }
            Ok((out.loss()?, stats.mean_pauses, self.model.grad_norm()?))
        }

        fn eval(
            &mut self,
            f: &mut dyn FnMut(&Model<f32>) -> Result<EvalSummary>,
        ) -> Result<EvalSummary> {
            f(&self.model.to_cpu()?)
        }

        fn into_model(self) -> Result<Model<f32>> {
            self.model.to_cpu()
        }

        fn with_state(
            &mut self,
            f: &mut dyn FnMut(&Model<f32>, AdamWState) -> Result<()>,
        ) -> Result<()> {
            f(&self.model.to_cpu()?, self.model.optimizer().state()?)
        }

        fn set_optimizer_state(&mut self, state: AdamWState) -> Result<()> {
            self.model.optimizer_mut().set_state(&state)
        }
    }

    pub(super) fn train(
        run: RunLoop<'_>,
        model: Model<f32>,
        data_rng: CybRng,
        precision: Precision,
    ) -> Result<TrainOutcome> {
        let cfg = run.cfg;
        let gpu = GpuContext::new(0).map_err(|e| match e {
            CybError::Unavailable(m) => CybError::Unavailable(format!("--device cuda: {m}")),
            other => other,
        })?;
        let mut model = GpuModel::with_precision(&gpu, &model, precision)?;
        model.optimizer_mut().weight_decay = cfg.weight_decay;
        model.set_head(cfg.head);
        gpu.synchronize()?;
        let stepper = GpuStepper {
            model,
            used_at_start: Some(device_bytes_in_use(&gpu)?),
            peak: PeakMemory::new(&gpu)?,
            gpu,
        };
        run.run(stepper, data_rng)
    }

    /// The steps on data-parallel replicas (feature `nccl`).
    #[cfg(feature = "nccl")]
    pub(super) fn train_data_parallel(
        run: RunLoop<'_>,
        model: Model<f32>,
        data_rng: CybRng,
        precision: Precision,
        launch: crate::launch::Launch,
    ) -> Result<TrainOutcome> {
        use crate::gpu::data_parallel::{DataParallel, ReplicaSettings};
        let cfg = run.cfg;
        launch.check_batch(cfg.batch)?;
        let settings = ReplicaSettings {
            precision,
            head: cfg.head,
            weight_decay: cfg.weight_decay,
        };
        let dp = DataParallel::new(&model, &launch, &settings)?;
        run.run(DataParallelStepper { dp }, data_rng)
    }

    #[cfg(not(feature = "nccl"))]
    pub(super) fn train_data_parallel(
        _run: RunLoop<'_>,
        _model: Model<f32>,
        _data_rng: CybRng,
        _precision: Precision,
        launch: crate::launch::Launch,
    ) -> Result<TrainOutcome> {
        Err(CybError::Unavailable(format!(
            "{} data-parallel replicas: this build has no NCCL support; rebuild with \
             `cargo build --release --features nccl`",
            launch.world_size
        )))
    }

    /// The replicas of [`crate::gpu::data_parallel::DataParallel`] as a training backend.
    #[cfg(feature = "nccl")]
    struct DataParallelStepper {
        dp: crate::gpu::data_parallel::DataParallel,
    }

    #[cfg(feature = "nccl")]
    impl Stepper for DataParallelStepper {
        fn step(
            &mut self,
            batch: &crate::data::Batch,
            cfg: &TrainConfig,
            objective: &ResolvedObjective,
            lr: f32,
        ) -> Result<(f64, f64, f32)> {
            let out = self.dp.step(
                &batch.tokens,
                &batch.targets,
                cfg.batch,
                cfg.seq,
                cfg.pauses,
                objective,
                lr,
                cfg.grad_clip,
            )?;
            Ok((out.loss, out.stats.mean_pauses, out.grad_norm))
        }

        fn eval(
            &mut self,
            f: &mut dyn FnMut(&Model<f32>) -> Result<EvalSummary>,
        ) -> Result<EvalSummary> {
            f(&self.dp.model()?)
        }

        fn into_model(mut self) -> Result<Model<f32>> {
            self.dp.model()
        }

        fn with_state(
            &mut self,
            f: &mut dyn FnMut(&Model<f32>, AdamWState) -> Result<()>,
        ) -> Result<()> {
            f(&self.dp.model()?, self.dp.optimizer_state()?)
        }

        fn set_optimizer_state(&mut self, state: AdamWState) -> Result<()> {
            self.dp.set_optimizer_state(&state)
        }

        fn replicas(&self) -> usize {
            self.dp.launch().world_size
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub(super) fn train(
        _run: RunLoop<'_>,
        _model: Model<f32>,
        _data_rng: CybRng,
        _precision: crate::config::Precision,
    ) -> Result<TrainOutcome> {
        Err(CybError::Unavailable(
            "--device cuda: this build has no GPU support; rebuild with \
             `cargo build --release --features cuda`, or use --device cpu"
                .into(),
        ))
    }

    pub(super) fn train_data_parallel(
        run: RunLoop<'_>,
        model: Model<f32>,
        data_rng: CybRng,
        precision: crate::config::Precision,
        _launch: crate::launch::Launch,
    ) -> Result<TrainOutcome> {
        train(run, model, data_rng, precision)
    }
}

/// A run's settings and controls, shared by both devices.
struct RunLoop<'a> {
    cfg: &'a TrainConfig,
    data: &'a dyn DataSource,
    objective: &'a ResolvedObjective,
    show_progress: bool,
    fingerprint: crate::train_state::Fingerprint,
    control: RunControl,
}

impl RunLoop<'_> {
    /// Writes the snapshot of the run after `step` steps; `None` without a base name.
    fn snapshot<S: Stepper>(
        &self,
        stepper: &mut S,
        step: usize,
        data_rng: &CybRng,
        history: &[StepLog],
        curve: &[EvalPoint],
    ) -> Result<Option<std::path::PathBuf>> {
        let Some(base) = &self.control.snapshot_base else {
            return Ok(None);
        };
        let mut saved = None;
        stepper.with_state(&mut |model, adamw| {
            let state = crate::train_state::TrainState {
                step,
                fingerprint: self.fingerprint.clone(),
                data_rng: data_rng.clone(),
                adamw,
                history: history.to_vec(),
                curve: curve.to_vec(),
            };
            saved = Some(crate::train_state::save_snapshot(
                base,
                model,
                &state,
                self.control.keep,
            )?);
            Ok(())
        })?;
        Ok(saved)
    }

    /// The training loop: batches, learning-rate schedule, progress bar, evaluation
    /// points, snapshots.
    fn run<S: Stepper>(mut self, mut stepper: S, mut data_rng: CybRng) -> Result<TrainOutcome> {
        let cfg = self.cfg;
        let (data, objective) = (self.data, self.objective);
        let mut history = Vec::with_capacity(cfg.steps);
        let mut curve = Vec::new();
        let mut first = 0;
        if let Some(state) = self.control.resume.take() {
            first = state.step;
            data_rng = state.data_rng;
            history = state.history;
            curve = state.curve;
            stepper.set_optimizer_state(state.adamw)?;
        }
        let bar = if self.show_progress {
            let bar = ProgressBar::new(cfg.steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(first as u64);
            bar
        } else {
            ProgressBar::hidden()
        };
        let tokens_per_step = cfg.batch * cfg.seq;
        let mut lines = ProgressLines::new(self.show_progress, cfg.steps)?;
        let start = Instant::now();
        let mut eval_time = 0.0;
        let mut stopped = None;
        for step in first..cfg.steps {
            let batch = data.sample(Split::Train, cfg.batch, cfg.seq, &mut data_rng);
            let lr = lr_schedule(
                step,
                cfg.steps,
                cfg.warmup,
                cfg.lr,
                cfg.lr * cfg.min_lr_ratio,
            );
            let (loss, mean_pauses, grad_norm) = stepper.step(&batch, cfg, objective, lr)?;
            if !loss.is_finite() {
                return Err(CybError::Param(format!(
                    "loss became {loss} at step {step} with --lr {} and --grad-clip {}; try \
                     a lower --lr (e.g. {})",
                    Num::from(cfg.lr),
                    Num::from(cfg.grad_clip),
                    Num::from((cfg.lr / 10.0).min(3e-3))
                )));
            }
            history.push(StepLog {
                step,
                loss,
                mean_pauses,
                grad_norm,
                lr,
                tokens_seen: (step + 1) * tokens_per_step,
            });
            let last = step + 1 == cfg.steps;
            if last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) {
                let t0 = Instant::now();
                let eval_cfg = cfg.eval_config();
                let summary = stepper.eval(&mut |m| evaluate(m, data, &eval_cfg))?;
                eval_time += t0.elapsed().as_secs_f64();
                curve.push(EvalPoint {
                    step: step + 1,
                    tokens_seen: (step + 1) * tokens_per_step,
                    nll: summary.overall.nll,
                    nll_final: summary.nll_final,
                    accuracy: summary.overall.accuracy,
                    accuracy_final: summary.overall.accuracy_at_final,
                    mean_pauses: summary.overall.mean_pauses,
                });
            }
            let stop = self
                .control
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            let every = self.control.save_every;
            if stop || (every > 0 && ((step + 1) % every == 0 || last)) {
                let t0 = Instant::now();
                let snap = self.snapshot(&mut stepper, step + 1, &data_rng, &history, &curve)?;
                // Saving is not training: its time stays out of tokens/s.
                eval_time += t0.elapsed().as_secs_f64();
                // A stop at the last step is a finished run.
                if stop && !last {
                    stopped = Some(Stopped {
                        step: step + 1,
                        snapshot: snap,
                    });
                }
            }
            let done = step + 1 - first;
            let secs = (start.elapsed().as_secs_f64() - eval_time).max(1e-9);
            let tok_s = done as f64 * tokens_per_step as f64 / secs;
            bar.set_message(format!(
                "loss {:.4}  pauses {:.2}  {tok_s:.0} tok/s",
                Num(loss),
                Num(mean_pauses)
            ));
            lines.step(
                step + 1,
                loss,
                mean_pauses,
                tok_s,
                start.elapsed().as_secs_f64(),
            );
            bar.inc(1);
            if stopped.is_some() {
                break;
            }
        }
        bar.finish();
        let seconds = start.elapsed().as_secs_f64();
        let train_secs = (seconds - eval_time).max(1e-9);
        let done = history.len().saturating_sub(first);
        let replicas = stepper.replicas();
        Ok(TrainOutcome {
            replicas,
            model: stepper.into_model()?,
            history,
            curve,
            tokens_per_sec: (done * tokens_per_step) as f64 / train_secs,
            seconds,
            stopped,
        })
    }
}

/// Without a terminal (a log file, CI) the progress bar is hidden: a plain progress
/// line goes to stderr instead, every `$CYB_PROGRESS_SECS` seconds (default 10) and at
/// the last step.
struct ProgressLines {
    on: bool,
    every: f64,
    next: f64,
    steps: usize,
}

impl ProgressLines {
    fn new(show_progress: bool, steps: usize) -> Result<Self> {
        use std::io::IsTerminal;
        let every = crate::limits::progress_secs()?;
        Ok(ProgressLines {
            on: show_progress && !std::io::stderr().is_terminal(),
            every,
            next: every,
            steps,
        })
    }

    fn step(&mut self, done: usize, loss: f64, pauses: f64, tok_s: f64, elapsed: f64) {
        if !self.on || (elapsed < self.next && done < self.steps) {
            return;
        }
        self.next = elapsed + self.every;
        let eta = elapsed / done as f64 * (self.steps - done) as f64;
        crate::console::note(format!(
            "step {done}/{}  loss {:.4}  pauses {:.2}  {tok_s:.0} tok/s  \
             elapsed {}  ETA {}",
            self.steps,
            Num(loss),
            Num(pauses),
            clock(elapsed),
            clock(eta)
        ));
    }
}

/// Progress of an evaluation: a bar on a terminal, plain lines otherwise.
struct EvalProgress {
    bar: ProgressBar,
    lines: bool,
    every: f64,
    next: f64,
    batches: usize,
    start: Instant,
}

impl EvalProgress {
    fn new(show_progress: bool, batches: usize) -> Result<Self> {
        use std::io::IsTerminal;
        let every = crate::limits::progress_secs()?;
        let tty = std::io::stderr().is_terminal();
        let bar = if show_progress && tty {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "evaluating {bar:30} {pos}/{len} batches  {elapsed_precise} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        Ok(EvalProgress {
            bar,
            lines: show_progress && !tty,
            every,
            next: every,
            batches,
            start: Instant::now(),
        })
    }

    /// Called after `done` batches are evaluated.
    fn batch(&mut self, done: usize) {
        self.bar.set_position(done as u64);
        let elapsed = self.start.elapsed().as_secs_f64();
        if !self.lines || done == 0 || elapsed < self.next {
            return;
        }
        self.next = elapsed + self.every;
        let eta = elapsed / done as f64 * (self.batches - done) as f64;
        crate::console::note(format!(
            "evaluating batch {done}/{}  elapsed {}  ETA {}",
            self.batches,
            clock(elapsed),
            clock(eta)
        ));
    }
}

impl Drop for EvalProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Seconds as `1h02m03s`, `2m03s` or `3s`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// How to evaluate: which validation batches, how many pauses, which DK threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    pub pauses: usize,
    pub batches: usize,
    pub batch: usize,
    pub seq: usize,
    /// Greedy policy: DK at step `k < K` when `p(DK) > threshold` (SPEC default 0.5).
    pub threshold: f64,
    /// Batches are drawn from [`eval_rng`]`(split, seed)`.
    pub seed: u64,
    /// The split evaluated on: validation for learning curves and choices, test for
    /// reporting a chosen model.
    pub split: Split,
}

/// Outcomes of the greedy policy on the validation batches of `cfg`.
pub fn validation_outcomes(
    model: &Model<f32>,
    data: &dyn DataSource,
    cfg: &EvalConfig,
) -> Result<Vec<PositionOutcome>> {
    validation_detail(model, data, cfg).map(|(o, _)| o)
}

/// Per position of [`validation_outcomes`] (same order): `d_k`, `t_k = p(y | answer at
/// k)` and `h_k`, for the calibration and latency measures of SPEC section 8.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionHalting {
    /// The input token at the position: the token the pauses follow.
    pub input: i32,
    pub d: Vec<f64>,
    pub t: Vec<f64>,
    pub h: Vec<f64>,
}

/// [`validation_outcomes`] and, for the same positions, their [`PositionHalting`].
pub fn validation_detail(
    model: &Model<f32>,
    data: &dyn DataSource,
    cfg: &EvalConfig,
) -> Result<(Vec<PositionOutcome>, Vec<PositionHalting>)> {
    validation_detail_shown(model, data, cfg, false)
}

/// [`validation_detail`] showing its progress on stderr when `show_progress`: a bar on
/// a terminal, else a plain line every `$CYB_PROGRESS_SECS` seconds (as training).
fn validation_detail_shown(
    model: &Model<f32>,
    data: &dyn DataSource,
    cfg: &EvalConfig,
    show_progress: bool,
) -> Result<(Vec<PositionOutcome>, Vec<PositionHalting>)> {
    cfg.check(&model.config)?;
    let mut progress = EvalProgress::new(show_progress, cfg.batches)?;
    let mut rng = eval_rng(cfg.split, cfg.seed);
    let batches = (0..cfg.batches)
        .map(|_| data.sample(cfg.split, cfg.batch, cfg.seq, &mut rng))
        .map(Ok);
    let mut done = 0;
    batches_detail(model, cfg.pauses, cfg.threshold, batches, &mut |_| {
        done += 1;
        progress.batch(done);
    })
}

/// [`validation_detail`] over given batches (each with its own `batch` x `seq`, e.g. a
/// stream over a validation set); `seen(tokens)` is called after each batch with its
/// number of positions (for progress).
pub fn batches_detail(
    model: &Model<f32>,
    pauses: usize,
    threshold: f64,
    batches: impl Iterator<Item = Result<crate::data::Batch>>,
    seen: &mut dyn FnMut(usize),
) -> Result<(Vec<PositionOutcome>, Vec<PositionHalting>)> {
    let (mut outcomes, mut detail) = (Vec::new(), Vec::new());
    for b in batches {
        let b = b?;
        let shape = LossShape {
            batch: b.batch,
            pauses,
            seq: b.seq,
            vocab: model.config.vocab,
        };
        let width = shape.vocab + 1;
        let logits = model.forward(&b.tokens, b.batch, b.seq, pauses)?;
        outcomes.extend(greedy_outcomes(
            &logits,
            &b.targets,
            &b.classes,
            shape,
            model.config.dk_bias,
            threshold,
        )?);
        for bi in 0..b.batch {
            for t in 0..b.seq {
                let y = b.targets[bi * b.seq + t];
                if y < 0 {
                    continue;
                }
                let rows: Vec<_> = (0..=pauses)
                    .map(|k| {
                        let z = &logits[shape.row(bi, k, t) * width..][..width];
                        crate::cpu::loss::row_scalar(z, y, model.config.dk_bias)
                    })
                    .collect();
                let hal = crate::cpu::loss::halting_from_scalars(&rows);
                detail.push(PositionHalting {
                    input: b.tokens[bi * b.seq + t],
                    d: hal.p_dk.clone(),
                    t: hal.a.iter().map(|a| a.exp()).collect(),
                    h: hal.h(),
                });
            }
        }
        seen(b.batch * b.seq);
    }
    Ok((outcomes, detail))
}

/// Validation summary: marginal NLL, greedy accuracy and pauses, by class and token.
pub fn evaluate(
    model: &Model<f32>,
    data: &dyn DataSource,
    cfg: &EvalConfig,
) -> Result<EvalSummary> {
    evaluate_shown(model, data, cfg, false)
}

/// [`evaluate`], showing its progress on stderr when `show_progress` (`cyb eval`: a
/// long `--eval-batches` is not silent).
pub fn evaluate_shown(
    model: &Model<f32>,
    data: &dyn DataSource,
    cfg: &EvalConfig,
    show_progress: bool,
) -> Result<EvalSummary> {
    let (outcomes, _) = validation_detail_shown(model, data, cfg, show_progress)?;
    Ok(EvalSummary::from_outcomes(
        &outcomes,
        cfg.pauses,
        &data.class_names(),
    ))
}

// The settings checks of the run types above, built on the generic checks of
// `crate::limits` (below this module: it knows nothing of training).
impl TrainConfig {
    /// Every number in range ([`limits::check_schedule`], the learning-rate floor, the
    /// objective's parameters for `K = pauses`) and the memory estimate within what the
    /// machine has ([`TrainConfig::memory_bytes`], [`limits::check_memory`]).
    pub fn check(&self) -> Result<()> {
        limits::check_schedule(
            self.lr,
            self.weight_decay,
            self.grad_clip,
            self.steps,
            self.batch,
            self.seq,
            self.eval_batches,
        )?;
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(CybError::Param(format!(
                "min_lr_ratio = {}: must be in [0, 1]",
                self.min_lr_ratio
            )));
        }
        self.objective
            .resolve(self.pauses)
            .map_err(|e| CybError::Param(format!("--objective {}: {e}", self.objective.name())))?;
        limits::check_memory("this training run", self.memory_bytes())
    }

    /// Estimated peak bytes of the run: the weights with their gradients and AdamW
    /// moments, the forward's activations twice (the backward's buffers mirror them)
    /// plus the logit gradient, the log of every step and evaluation point, and one
    /// evaluation.
    pub fn memory_bytes(&self) -> f64 {
        let m = &self.model;
        let weights = 4.0 * limits::F32_BYTES * limits::param_count(m);
        let rows = self.batch as f64 * (self.pauses as f64 + 1.0) * self.seq as f64;
        let acts = 2.0 * limits::forward_bytes(m, self.batch, self.seq, self.pauses)
            + limits::F32_BYTES * rows * (m.vocab as f64 + 1.0);
        let evals = 1 + self.steps.checked_div(self.eval_every).unwrap_or(0);
        let logs = self.steps as f64 * std::mem::size_of::<StepLog>() as f64
            + evals as f64 * std::mem::size_of::<EvalPoint>() as f64;
        weights + acts + logs + self.eval_config().outcome_bytes()
    }

    /// This run as the widest run of an experiment: [`TrainConfig::check`], its memory
    /// estimate with the outcomes it keeps of all `runs` runs, and at least one pause
    /// step to compare (`pauses`, [`limits::experiment_pauses`]).
    pub fn check_experiment(&self, pauses: usize, runs: usize) -> Result<()> {
        limits::experiment_pauses(pauses)?;
        self.check()?;
        limits::check_memory(
            "this experiment",
            self.memory_bytes() + runs as f64 * self.eval_config().outcome_bytes(),
        )
    }
}

impl EvalConfig {
    /// The numbers of an evaluation of a `model`-shaped model, and its memory estimate.
    pub fn check(&self, model: &ModelConfig) -> Result<()> {
        limits::at_least_one("--eval-batches", self.batches)?;
        limits::at_least_one("--batch", self.batch)?;
        limits::at_least_one("--ctx", self.seq)?;
        limits::threshold(self.threshold)?;
        limits::check_memory("this evaluation", self.memory_bytes(model))
    }

    /// Estimated peak bytes of the evaluation: one forward and every position's outcome.
    pub fn memory_bytes(&self, model: &ModelConfig) -> f64 {
        limits::F32_BYTES * limits::param_count(model)
            + limits::forward_bytes(model, self.batch, self.seq, self.pauses)
            + self.outcome_bytes()
    }

    /// Bytes of the outcome of every position evaluated.
    fn outcome_bytes(&self) -> f64 {
        self.batches as f64
            * self.batch as f64
            * self.seq as f64
            * std::mem::size_of::<PositionOutcome>() as f64
    }
}

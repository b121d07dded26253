//! Data-parallel training on NCCL (feature `nccl`): one full [`GpuModel`] replica per
//! device, one host thread per replica, the global batch split evenly over the ranks,
//! the gradients summed by an NCCL all-reduce, and the same AdamW step on every
//! replica, so that a step equals one device's step on the global batch (up to the
//! order of the gradient sums) and the replicas stay bit-identical.
//!
//! **The mean.** The loss is a mean over the valid positions of the *global* batch
//! (`N` of them, counted on the host from the targets, which every rank has). Each
//! replica divides its positions' gradients by that `N` rather than by its own count
//! ([`GpuModel::set_mean_divisor`]), so every position's gradient is bit for bit the
//! one the whole batch gives it, and the all-reduce **sum** of the replicas' gradients
//! is the global mean's gradient: nothing is rescaled afterwards, and clipping sees
//! the global norm. The reported loss and mean `E[pauses]` are the replicas' sums
//! all-reduced (f64) and divided by `N`.
//!
//! **One process or many.** [`Launch`] says which ranks this process runs: all of
//! them (`--gpus N`, the NCCL id made here) or one of `W` processes (`--world-size`,
//! rank 0 writes the id to the rendezvous file atomically, the others poll it until
//! [`Launch::timeout`]). Both go through the same code: every replica thread calls
//! `ncclCommInitRank` with the shared id.
//!
//! **Overlap.** With [`Launch::bucket_bytes`] > 0 (the default, 25 MiB as PyTorch
//! DDP's `bucket_cap_mb`; `--bucket-mb`), each replica has a second, communication
//! stream, and the backward tells a bucketing observer (`src/gpu/grad_buckets.rs`) each
//! range of the gradient buffer that is final ([`super::grad_ready`]): consecutive
//! ranges fill a contiguous bucket, and a full bucket is all-reduced on the
//! communication stream (after an event of the compute stream) while the compute
//! stream runs the layers below; the compute stream waits for the communication
//! stream before AdamW, so clipping sees the reduced gradients. With 0, one all-reduce
//! of the whole buffer after the backward on the compute stream: the reference path.
//! Both give the same sums wherever NCCL's reduction order does not depend on the
//! count (the emulator's; on hardware the last bits may differ, the replicas still
//! agree with each other). Bucketing replicas order their two streams themselves:
//! cudarc's per-buffer event tracking is off in their contexts, since it would make the
//! compute stream wait for every all-reduce of the gradient buffer before writing any
//! other part of it, which is no overlap.
//!
//! **Failures.** A rank that fails answers with its error; the others' collectives fail
//! when NCCL gives up on it, and every answer is awaited at most [`Launch::timeout`].
//! The step then returns one error naming every rank's failure, and the
//! [`DataParallel`] refuses further work (its replicas may disagree). Real NCCL does not
//! time out by itself: a rank lost inside a collective leaves the others' threads
//! blocked; this process still returns its error at the timeout (the blocked threads
//! are left behind), and a multi-process run should be launched so that one failed
//! process ends the others (e.g. `srun --kill-on-bad-exit=1`).
//!
//! ```no_run
//! use cyb::{config::ModelConfig, Model, Objective, rng::seeded};
//! use cyb::gpu::data_parallel::{DataParallel, ReplicaSettings};
//! use cyb::launch::Launch;
//! let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 1,
//!     pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
//! let cpu: Model<f32> = Model::init(c, &mut seeded(0))?;
//! let mut dp = DataParallel::new(&cpu, &Launch::single_process(2)?, &ReplicaSettings::default())?;
//! let obj = Objective::ap_default().resolve(1)?;
//! // A global batch of 2 sequences: one per device.
//! let out = dp.step(&[1, 2, 3, 4], &[2, 3, 4, 5], 2, 2, 1, &obj, 1e-3, 1.0)?;
//! println!("loss {} grad norm {}", out.loss, out.grad_norm);
//! let trained = dp.model()?;
//! # Ok::<(), cyb::CybError>(())
//! ```

use super::grad_buckets::GradBuckets;
use super::model::{GpuModel, Precision};
use super::{cuda_err, GpuContext};
use crate::cpu::adamw::AdamWState;
use crate::cpu::loss::{check_targets, LossStats};
use crate::cpu::model::{check_batch, HeadMode, Model, Params};
use crate::error::{CybError, Result};
use crate::launch::{Launch, LocalRank};
use crate::objective::ResolvedObjective;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How every replica is built.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// Arithmetic of the steps.
    pub precision: Precision,
    /// The head of the training step; data parallel needs the fused head.
    pub head: HeadMode,
    /// AdamW's decoupled weight decay (β, ε are [`GpuModel`]'s defaults).
    pub weight_decay: f32,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            precision: Precision::F32,
            head: HeadMode::default(),
            weight_decay: 0.0,
        }
    }
}

/// A data-parallel step's results, the same on every rank.
#[derive(Clone, Debug, PartialEq)]
pub struct DataParallelStep {
    /// Mean loss over the global batch's valid positions.
    pub loss: f64,
    /// Valid positions, weight sum and mean `E[pauses]` of the global batch.
    pub stats: LossStats,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// All-reduces the gradients took: the buckets ([`Launch::bucket_bytes`]), 1 with
    /// one all-reduce after the backward.
    pub grad_buckets: usize,
}

/// What libnccl is needed for, said when it cannot be loaded: cudarc 0.19 dlopens
/// `libnccl.so` (or `.so.13`, `.so.12`, ... `.so.1`) but never `libnccl.so.2`, the
/// only name NCCL's runtime packages install; this says how to make the link. Never
/// panics (cudarc's loader would).
pub fn check_nccl_library() -> Result<()> {
    // SAFETY: only dlopen()s and drops the library to see whether it exists.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    // SAFETY: as above; libnccl's initialisers have no preconditions.
    let so2 = unsafe { libloading::Library::new("libnccl.so.2") }.is_ok();
    Err(CybError::Unavailable(if so2 {
        "NCCL: libnccl.so.2 is installed, but cudarc (the CUDA bindings) loads NCCL only as \
         libnccl.so: make that name in a folder of your own and put it on the library path, \
         e.g. `mkdir -p ~/nccl-link && ln -sf /path/to/libnccl.so.2 ~/nccl-link/libnccl.so && \
         export LD_LIBRARY_PATH=~/nccl-link:$LD_LIBRARY_PATH` (find the file with \
         `ldconfig -p | grep libnccl`; pip's nvidia-nccl-cu12 keeps it in \
         site-packages/nvidia/nccl/lib)"
            .into()
    } else {
        "NCCL: no libnccl on the library path (looked for libnccl.so and libnccl.so.2): \
         install NCCL (e.g. the libnccl2 package, or pip's nvidia-nccl-cu12) and add its lib \
         folder to LD_LIBRARY_PATH"
            .into()
    }))
}

fn nccl_err(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> CybError + '_ {
    move |e| CybError::Cuda(format!("NCCL {what}: {:?}", e.0))
}

/// NCCL's unique id as 256 hex digits (the rendezvous file's content).
fn id_to_hex(id: &Id) -> String {
    id.internal()
        .iter()
        .map(|&c| format!("{:02x}", c as u8))
        .collect()
}

fn id_from_hex(text: &str) -> Option<Id> {
    let text = text.trim();
    if text.len() != 256 || !text.is_ascii() {
        return None;
    }
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, out) in internal.iter_mut().enumerate() {
        *out = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()? as std::ffi::c_char;
    }
    Some(Id::uninit(internal))
}

/// Rank 0's side of the rendezvous: a new id, written atomically to `path`, which must
/// not exist yet (a stale id from an earlier run would send the other ranks to a
/// rendezvous nobody keeps).
fn publish_id(path: &Path) -> Result<Id> {
    if path.exists() {
        return Err(CybError::Param(format!(
            "rendezvous file {} already exists (an earlier run's?): remove it, or use a \
             fresh path per run (e.g. with $SLURM_JOB_ID in its name)",
            path.display()
        )));
    }
    let id = Id::new().map_err(nccl_err("making the unique id"))?;
    crate::atomic_file::write_atomic(path, format!("{}\n", id_to_hex(&id)).as_bytes())?;
    Ok(id)
}

/// The other ranks' side: waits for rank 0's file until `timeout`.
fn wait_for_id(path: &Path, rank: usize, timeout: Duration) -> Result<Id> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return id_from_hex(&text).ok_or_else(|| {
                CybError::Param(format!(
                    "rendezvous file {} does not hold an NCCL id (256 hex digits)",
                    path.display()
                ))
            });
        }
        if start.elapsed() >= timeout {
            return Err(CybError::Unavailable(format!(
                "rank {rank} waited {} s for rank 0 to write the rendezvous file {}: is \
                 rank 0 running, and is the file on a filesystem every rank sees? \
                 (CYB_NCCL_TIMEOUT_S sets the wait)",
                timeout.as_secs(),
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One step's work for one replica: its shard of the global batch.
struct StepWork {
    tokens: Vec<i32>,
    targets: Vec<i32>,
    batch: usize,
    seq: usize,
    pauses: usize,
    objective: Arc<ResolvedObjective>,
    global_valid: usize,
    lr: f32,
    grad_clip: f32,
    fail: bool,
}

/// A request to a replica thread, with where its answer goes.
enum Request {
    Step(Box<StepWork>, Sender<Result<DataParallelStep>>),
    Model(Sender<Result<Model<f32>>>),
    Grads(Sender<Result<Params<f32>>>),
    OptimizerState(Sender<Result<AdamWState>>),
    SetOptimizerState(AdamWState, Sender<Result<()>>),
}

/// A replica as its thread holds it.
struct Replica {
    rank: usize,
    model: GpuModel,
    /// On the communication stream when bucketing, else on the model's stream.
    comm: Comm,
    /// [`Launch::bucket_bytes`]: 0 = one all-reduce after the backward.
    bucket_bytes: usize,
    /// `[loss sum, valid positions, E[pauses] sum]` of a step, all-reduced.
    sums: cudarc::driver::CudaSlice<f64>,
}

impl Replica {
    fn new(
        local: LocalRank,
        world_size: usize,
        id: Id,
        model: &Model<f32>,
        settings: &ReplicaSettings,
        bucket_bytes: usize,
    ) -> Result<Replica> {
        let gpu = if bucket_bytes > 0 {
            let ctx = CudaContext::new(local.device)
                .map_err(cuda_err(&format!("opening CUDA device {}", local.device)))?;
            // SAFETY: before any buffer of this context exists. Every buffer is used on
            // the compute stream alone, except the gradients and `sums`, whose uses on
            // the communication stream are ordered by the events of `GradBuckets` and
            // `Replica::all_reduce_sums` (module docs: why tracking is off).
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
            GpuContext::with_stream(stream)?
        } else {
            GpuContext::new(local.device)?
        };
        // NCCL works on the calling thread's current device.
        gpu.context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let mut m = GpuModel::with_precision(&gpu, model, settings.precision)?;
        m.optimizer_mut().weight_decay = settings.weight_decay;
        m.set_head(settings.head);
        let comm_stream = if bucket_bytes > 0 {
            gpu.context()
                .new_stream()
                .map_err(cuda_err("creating the communication stream"))?
        } else {
            gpu.stream().clone()
        };
        let comm = Comm::from_rank(comm_stream, local.rank, world_size, id)
            .map_err(nccl_err(&format!("setting up rank {}", local.rank)))?;
        Ok(Replica {
            rank: local.rank,
            sums: gpu.zeros(3)?,
            model: m,
            comm,
            bucket_bytes,
        })
    }

    /// Whether the collectives run on a stream of their own.
    fn comm_stream(&self) -> Option<Arc<CudaStream>> {
        let s = self.comm.stream();
        (!Arc::ptr_eq(&s, self.model.context().stream())).then_some(s)
    }

    /// All-reduces `sums` (written on the compute stream, read there afterwards).
    fn all_reduce_sums(&mut self) -> Result<()> {
        let compute = self.model.context().stream().clone();
        let comm = self.comm_stream();
        if let Some(c) = &comm {
            c.join(&compute)
                .map_err(cuda_err("ordering the loss all-reduce"))?;
        }
        self.comm
            .all_reduce_in_place(&mut self.sums, &ReduceOp::Sum)
            .map_err(nccl_err("all-reduce of the loss"))?;
        if let Some(c) = &comm {
            compute
                .join(c)
                .map_err(cuda_err("NCCL all-reduce of the loss (waiting for it)"))?;
        }
        Ok(())
    }

    fn step(&mut self, w: &StepWork) -> Result<DataParallelStep> {
        self.model.set_mean_divisor(Some(w.global_valid as f64));
        // Sum over the ranks: each holds its positions' share of the global mean.
        let (out, grad_buckets) = if self.bucket_bytes > 0 {
            let compute = self.model.context().stream().clone();
            let fail = w.fail.then_some(self.rank);
            let mut buckets = GradBuckets::new(&self.comm, &compute, self.bucket_bytes, fail);
            let m = &mut self.model;
            let out = m.forward_backward_observed(
                &w.tokens,
                &w.targets,
                w.batch,
                w.seq,
                w.pauses,
                &w.objective,
                &mut buckets,
            )?;
            let n = buckets.finish(m.grads_device_mut())?;
            (out, n)
        } else {
            let m = &mut self.model;
            let out = m.forward_backward(
                &w.tokens,
                &w.targets,
                w.batch,
                w.seq,
                w.pauses,
                &w.objective,
            )?;
            if w.fail {
                return Err(CybError::Cuda(format!(
                    "rank {}: failure injected before the gradient all-reduce",
                    self.rank
                )));
            }
            self.comm
                .all_reduce_in_place(m.grads_device_mut(), &ReduceOp::Sum)
                .map_err(nccl_err("all-reduce of the gradients"))?;
            (out, 1)
        };
        self.finish_step(w, &out, grad_buckets)
            .map_err(|e| match e {
                // NCCL's collectives are queued on a stream: one that fails (a rank lost)
                // fails the next call that waits for it, whatever that call was.
                CybError::Cuda(msg) => CybError::Cuda(format!(
                    "{msg} (after the NCCL all-reduce of the gradients was queued)"
                )),
                other => other,
            })
    }

    /// AdamW on the reduced gradients, then the global loss statistics.
    fn finish_step(
        &mut self,
        w: &StepWork,
        out: &super::model::GpuStep,
        grad_buckets: usize,
    ) -> Result<DataParallelStep> {
        self.model.step(w.lr, w.grad_clip)?;
        let stats = out.stats()?;
        let local = [
            out.loss()? * stats.weight_sum,
            stats.weight_sum,
            stats.mean_pauses * stats.weight_sum,
        ];
        let gpu = self.model.context().clone();
        gpu.copy_into(&local, &mut self.sums)?;
        self.all_reduce_sums()?;
        let sums = gpu.dtoh(&self.sums)?;
        let per = |x: f64| if sums[1] > 0.0 { x / sums[1] } else { 0.0 };
        Ok(DataParallelStep {
            loss: per(sums[0]),
            stats: LossStats {
                valid_positions: w.global_valid,
                weight_sum: sums[1],
                mean_pauses: per(sums[2]),
            },
            grad_norm: self.model.grad_norm()?,
            grad_buckets,
        })
    }

    fn serve(&mut self, req: Request) {
        // A closed answer channel means the caller gave up waiting: nothing to do.
        match req {
            Request::Step(w, back) => {
                let _ = back.send(self.step(&w));
            }
            Request::Model(back) => {
                let _ = back.send(self.model.to_cpu());
            }
            Request::Grads(back) => {
                let _ = back.send(self.model.grads_to_cpu());
            }
            Request::OptimizerState(back) => {
                let _ = back.send(self.model.optimizer().state());
            }
            Request::SetOptimizerState(s, back) => {
                let _ = back.send(self.model.optimizer_mut().set_state(&s));
            }
        }
    }
}

/// The body of a replica thread: builds the replica, says so, serves requests until
/// its request channel closes.
#[allow(clippy::too_many_arguments)]
fn replica_thread(
    local: LocalRank,
    world_size: usize,
    id: Id,
    model: Model<f32>,
    settings: ReplicaSettings,
    bucket_bytes: usize,
    ready: Sender<Result<()>>,
    requests: Receiver<Request>,
) {
    let mut replica = match Replica::new(local, world_size, id, &model, &settings, bucket_bytes) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(model);
    let _ = ready.send(Ok(()));
    while let Ok(req) = requests.recv() {
        replica.serve(req);
    }
}

/// The replicas of this process (all ranks with `--gpus N`, one with `--world-size`).
pub struct DataParallel {
    launch: Launch,
    /// Request channel and thread of each local replica, in `launch.local` order.
    replicas: Vec<(Sender<Request>, Option<JoinHandle<()>>)>,
    config: crate::config::ModelConfig,
    /// Set by a failed call: the replicas may disagree, so nothing more runs.
    failed: Option<String>,
    /// Local replica (index) that fails its next step, for tests of the failure path.
    fail_next: Option<usize>,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("launch", &self.launch)
            .field("failed", &self.failed)
            .finish()
    }
}

impl DataParallel {
    /// Starts this process's replicas of `model` and joins the run (rendezvous, NCCL
    /// set-up); returns when every rank of the run is connected, or with an error after
    /// [`Launch::timeout`].
    pub fn new(model: &Model<f32>, launch: &Launch, settings: &ReplicaSettings) -> Result<Self> {
        if let HeadMode::Unfused = settings.head {
            return Err(CybError::Param(
                "data parallel needs the fused head (--head-chunk-mb > 0)".into(),
            ));
        }
        if launch.local.is_empty() || launch.local.iter().any(|l| l.rank >= launch.world_size) {
            return Err(CybError::Param(format!(
                "ranks {:?} do not fit a world of {}",
                launch.local, launch.world_size
            )));
        }
        check_nccl_library()?;
        let id = match (&launch.rendezvous, launch.local.first()) {
            (None, _) => Id::new().map_err(nccl_err("making the unique id"))?,
            (Some(path), Some(l)) if l.rank == 0 => publish_id(path)?,
            (Some(path), Some(l)) => wait_for_id(path, l.rank, launch.timeout)?,
            (Some(_), None) => unreachable!("checked above"),
        };
        let (world_size, bucket_bytes) = (launch.world_size, launch.bucket_bytes);
        let (ready_tx, ready_rx) = channel();
        let mut dp = DataParallel {
            launch: launch.clone(),
            replicas: Vec::with_capacity(launch.local.len()),
            config: model.config.clone(),
            failed: None,
            fail_next: None,
        };
        for &local in &launch.local {
            let (tx, rx) = channel();
            let (m, s, ready) = (model.clone(), settings.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("cyb-rank-{}", local.rank))
                .spawn(move || replica_thread(local, world_size, id, m, s, bucket_bytes, ready, rx))
                .map_err(|e| CybError::Param(format!("starting a replica thread: {e}")))?;
            dp.replicas.push((tx, Some(thread)));
        }
        drop(ready_tx);
        // Every replica answers once (built, or why not); NCCL's set-up returns only
        // when every rank of the run has arrived.
        let deadline = Instant::now() + launch.timeout;
        let answers: Vec<_> = (0..launch.local.len())
            .map(|_| recv_until(&ready_rx, deadline))
            .collect();
        let errors: Vec<String> = answers
            .into_iter()
            .filter_map(|a| match a {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(()) => Some(format!(
                    "a replica was not ready after {} s (is every rank of the {} started?)",
                    launch.timeout.as_secs(),
                    world_size
                )),
            })
            .collect();
        if !errors.is_empty() {
            let msg = format!("data-parallel set-up failed: {}", errors.join("; "));
            dp.failed = Some(msg.clone());
            return Err(CybError::Cuda(msg));
        }
        Ok(dp)
    }

    /// The launch this runs.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// Makes the `index`-th replica of this process fail its next step after its
    /// backward, before it joins the gradient all-reduce, as a crashed rank would: for
    /// tests that every rank then returns an error rather than waiting forever.
    pub fn fail_next_step(&mut self, index: usize) {
        self.fail_next = Some(index);
    }

    /// One training step on the global batch `tokens`/`targets` `[batch, seq]` (every
    /// rank passes the same global batch; each replica takes its rows): forward and
    /// backward of each shard, gradients all-reduced, AdamW with learning rate `lr`
    /// after clipping to `grad_clip`. Waits for the step's results.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
        lr: f32,
        grad_clip: f32,
    ) -> Result<DataParallelStep> {
        // Checked here, on the global batch every rank holds, so that bad input fails
        // every rank alike before any collective.
        check_batch(&self.config, tokens, batch, seq, pauses)?;
        if targets.len() != batch * seq {
            return Err(CybError::Shape(format!(
                "targets have {} elements, expected B*T = {batch}*{seq}",
                targets.len()
            )));
        }
        check_targets(targets, self.config.vocab)?;
        let per = self.launch.check_batch(batch)?;
        let global_valid = targets.iter().filter(|&&y| y >= 0).count();
        let objective = Arc::new(objective.clone());
        let fail = self.fail_next.take();
        let work: Vec<_> = self
            .launch
            .local
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let rows = l.rank * per * seq..(l.rank + 1) * per * seq;
                Box::new(StepWork {
                    tokens: tokens[rows.clone()].to_vec(),
                    targets: targets[rows].to_vec(),
                    batch: per,
                    seq,
                    pauses,
                    objective: objective.clone(),
                    global_valid,
                    lr,
                    grad_clip,
                    fail: fail == Some(i),
                })
            })
            .collect();
        let mut work = work.into_iter();
        let answers = self.ask("step", |back| {
            Request::Step(work.next().expect("one shard per replica"), back)
        })?;
        // Every rank computed the same all-reduced sums: any answer is the step's.
        answers
            .into_iter()
            .next()
            .ok_or_else(|| CybError::Param("no replica in this process".into()))
    }

    /// The trained model, from this process's first replica (the replicas are
    /// bit-identical).
    pub fn model(&mut self) -> Result<Model<f32>> {
        self.models()?
            .into_iter()
            .next()
            .ok_or_else(|| CybError::Param("no replica in this process".into()))
    }

    /// Every replica's model in this process, in rank order (for checks that they
    /// agree).
    pub fn models(&mut self) -> Result<Vec<Model<f32>>> {
        self.ask("copy of the model", Request::Model)
    }

    /// Every replica's gradients of the last step (all-reduced: the global batch's),
    /// in rank order.
    pub fn grads(&mut self) -> Result<Vec<Params<f32>>> {
        self.ask("copy of the gradients", Request::Grads)
    }

    /// The AdamW step count and moments (of the first replica; all hold the same).
    pub fn optimizer_state(&mut self) -> Result<AdamWState> {
        self.ask("copy of the optimizer state", Request::OptimizerState)?
            .into_iter()
            .next()
            .ok_or_else(|| CybError::Param("no replica in this process".into()))
    }

    /// Restores the AdamW state on every replica (resuming a run).
    pub fn set_optimizer_state(&mut self, state: &AdamWState) -> Result<()> {
        self.ask("optimizer state restore", |back| {
            Request::SetOptimizerState(state.clone(), back)
        })?;
        Ok(())
    }

    /// Sends one request to every replica and waits (until [`Launch::timeout`]) for
    /// all the answers; any failure fails the call and every later one.
    fn ask<T>(
        &mut self,
        what: &str,
        mut request: impl FnMut(Sender<Result<T>>) -> Request,
    ) -> Result<Vec<T>> {
        if let Some(f) = &self.failed {
            return Err(CybError::Cuda(format!(
                "these replicas stopped after an earlier failure ({f})"
            )));
        }
        let deadline = Instant::now() + self.launch.timeout;
        let pending: Vec<_> = self
            .replicas
            .iter()
            .map(|(tx, _)| {
                let (back, rx) = channel();
                tx.send(request(back)).ok().map(|()| rx)
            })
            .collect();
        let (mut got, mut errors) = (Vec::new(), Vec::new());
        for (l, rx) in self.launch.local.iter().zip(pending) {
            match rx.map(|rx| recv_until(&rx, deadline)) {
                Some(Ok(Ok(v))) => got.push(v),
                Some(Ok(Err(e))) => errors.push(format!("rank {}: {e}", l.rank)),
                Some(Err(())) => errors.push(format!(
                    "rank {}: no answer within {} s (a rank lost or blocked in NCCL;                      CYB_NCCL_TIMEOUT_S sets the wait)",
                    l.rank,
                    self.launch.timeout.as_secs()
                )),
                None => errors.push(format!("rank {}: its thread has ended", l.rank)),
            }
        }
        if errors.is_empty() {
            return Ok(got);
        }
        let msg = format!("data-parallel {what} failed: {}", errors.join("; "));
        self.failed = Some(msg.clone());
        Err(CybError::Cuda(msg))
    }
}

/// The next value of `rx`, or `Err(())` at `deadline` or when its sender is gone.
fn recv_until<T>(rx: &Receiver<T>, deadline: Instant) -> std::result::Result<T, ()> {
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left).map_err(|e| match e {
        RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected => (),
    })
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        // Closing the request channels ends the replica threads. After a failure a
        // thread may be blocked inside NCCL for good: it is left behind, not joined.
        let handles: Vec<_> = self.replicas.drain(..).map(|(_, h)| h).collect();
        if self.failed.is_none() {
            for h in handles.into_iter().flatten() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendezvous file's hex round-trips every byte value; junk is refused.
    #[test]
    fn id_hex_round_trip() {
        let mut internal = [0 as std::ffi::c_char; 128];
        for (i, c) in internal.iter_mut().enumerate() {
            *c = (i as u8).wrapping_mul(37) as std::ffi::c_char;
        }
        let id = Id::uninit(internal);
        let hex = id_to_hex(&id);
        assert_eq!(hex.len(), 256);
        let back = id_from_hex(&format!("{hex}\n")).expect("parses");
        assert_eq!(back.internal(), id.internal());
        assert!(id_from_hex(&hex[..254]).is_none());
        assert!(id_from_hex(&format!("zz{}", &hex[2..])).is_none());
    }
}

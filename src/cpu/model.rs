//! The CYB model on the CPU (docs/MATH.md, "The model"), forward and backward, in the
//! depth-major pause-step layout of docs/MATH.md, "Pause steps":
//!
//! ```text
//! h = E[tok] + P[t] + D[k]                                  [B, K+1, T, d]
//! repeat L times:
//!     h = h + W_o · Attn(LN1(h) W_qkv + b_qkv) + b_o        (H heads, section 3 mask)
//!     h = h + W_2 · gelu_tanh(LN2(h) W_1 + b_1) + b_2        (hidden 4d)
//! logits = LN_f(h) · E^T                                    [B, K+1, T, V+1]
//! ```
//!
//! The head and the loss (docs/MATH.md, "The five objectives") are by default fused
//! (`cpu::head_loss::head_loss`: one chunk of positions' logits at a time, never the
//! whole `[B, K+1, T, V+1]` tensor); [`HeadMode::Unfused`] computes the logits, runs
//! `cpu::loss::cyb_loss` on them and sends `dlogits` back through the head GEMMs. The
//! gradient flows back through the same functions in reverse. Every reduction across rows runs in a fixed
//! order, so `forward_backward` is bit-for-bit deterministic whatever the threads do.

use crate::config::ModelConfig;
use crate::cpu::attention::{attention_backward, attention_forward, AttnShape};
use crate::cpu::embedding::{embedding_backward, embedding_forward, StepShape};
use crate::cpu::gelu::{gelu_backward, gelu_forward};
use crate::cpu::head_loss::{chunk_positions, head_loss, HeadGrads, HeadShape};
use crate::cpu::layernorm::{layernorm_backward, layernorm_forward};
use crate::cpu::linear::{linear_backward, linear_forward};
use crate::cpu::loss::{check_targets, cyb_loss, LossShape, LossStats};
use crate::cpu::scalar::{matmul, Op, Scalar};
use crate::error::{CybError, Result};
use crate::objective::{Reduction, ResolvedObjective};
use std::borrow::Cow;

pub use crate::cpu::params::{is_matrix, tensor_layout, BlockParams, Params};

/// What one training step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean loss over positions with a target (plus the `dp` batch term).
    pub loss: f64,
    /// Valid positions, weight sum, mean `E[pauses]`.
    pub stats: LossStats,
    /// `E[pauses]` per position `[B, T]` (0 where the target is ignored).
    pub pauses: Vec<f64>,
}

/// How the head (`logits = LN_f(h) · E^T`) meets the loss in training and evaluation.
/// [`Model::forward`] always computes the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadMode {
    /// The head fused with the loss, chunks of whole positions whose logits take at
    /// most `chunk_bytes` (at least one position per chunk); the default, with
    /// [`crate::cpu::head_loss::DEFAULT_HEAD_CHUNK_BYTES`].
    Fused { chunk_bytes: usize },
    /// The whole `[B, K+1, T, V+1]` logits tensor and its gradient.
    Unfused,
}

impl Default for HeadMode {
    fn default() -> Self {
        HeadMode::Fused {
            chunk_bytes: crate::cpu::head_loss::DEFAULT_HEAD_CHUNK_BYTES,
        }
    }
}

/// A model: its config and parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model<T> {
    pub config: ModelConfig,
    pub params: Params<T>,
}

/// What the forward of one block keeps for the backward. Rows are `N = B*(K+1)*T`.
#[derive(Clone, Debug, Default)]
struct BlockActs<T> {
    ln1: Vec<T>,      // [N, d]
    ln1_mean: Vec<T>, // [N]
    ln1_rstd: Vec<T>, // [N]
    qkv: Vec<T>,      // [N, 3d]
    att: Vec<T>,      // [B, H, K+1, T, width] (AttnShape::width)
    atty: Vec<T>,     // [N, d] attention output before W_o
    mid: Vec<T>,      // [N, d] residual after the attention half
    ln2: Vec<T>,      // [N, d]
    ln2_mean: Vec<T>, // [N]
    ln2_rstd: Vec<T>, // [N]
    fc: Vec<T>,       // [N, 4d] before gelu
    gelu: Vec<T>,     // [N, 4d]
}

/// Everything the forward keeps for the backward.
#[derive(Clone, Debug, Default)]
struct Activations<T> {
    steps: StepShape,
    /// `resid[0]` = embeddings, `resid[l+1]` = output of block `l`; each `[N, d]`.
    resid: Vec<Vec<T>>,
    blocks: Vec<BlockActs<T>>,
    lnf: Vec<T>,      // [N, d]
    lnf_mean: Vec<T>, // [N]
    lnf_rstd: Vec<T>, // [N]
    logits: Vec<T>,   // [N, V+1], only for `forward` and the unfused head
}

/// Reusable buffers for [`Model::forward_backward_with`]: the activations the backward
/// needs and its scratch. They grow to the largest batch seen and are reused, so a
/// training loop does not allocate (and page-fault) megabytes every step.
///
/// ```
/// use cyb::{config::ModelConfig, cpu::model::{Model, Params, Workspace}, rng::seeded, Objective};
/// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let m: Model<f32> = Model::init(c.clone(), &mut seeded(0)).unwrap();
/// let (mut ws, mut grads) = (Workspace::new(), Params::zeros(&c));
/// let obj = Objective::CeFinal.resolve(1).unwrap();
/// for _ in 0..2 {
///     m.forward_backward_with(&mut ws, &[1, 2], &[2, 3], 1, 2, 1, &obj, &mut grads).unwrap();
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    head: HeadMode,
    acts: Activations<T>,
    dlogits: Vec<T>, // [N, V+1]
    dlnf: Vec<T>,    // [N, d]
    dresid: Vec<T>,  // [N, d]
    dgelu: Vec<T>,   // [N, 4d]
    dfc: Vec<T>,     // [N, 4d]
    dln: Vec<T>,     // [N, d]
    datty: Vec<T>,   // [N, d]
    dqkv: Vec<T>,    // [N, 3d]
}

impl<T: Scalar> Workspace<T> {
    /// An empty workspace with the fused head ([`HeadMode::default`]); buffers are
    /// allocated on first use.
    pub fn new() -> Workspace<T> {
        Self::with_head(HeadMode::default())
    }

    /// An empty workspace whose steps use `head`.
    pub fn with_head(head: HeadMode) -> Workspace<T> {
        Workspace {
            head,
            acts: Activations::default(),
            dlogits: Vec::new(),
            dlnf: Vec::new(),
            dresid: Vec::new(),
            dgelu: Vec::new(),
            dfc: Vec::new(),
            dln: Vec::new(),
            datty: Vec::new(),
            dqkv: Vec::new(),
        }
    }
}

/// Sets `v` to `len` elements, keeping its allocation. The old contents are left in
/// place: every op writes all of its output before anything reads it.
fn sized<T: Scalar>(v: &mut Vec<T>, len: usize) -> &mut Vec<T> {
    v.resize(len, T::zero());
    v
}

impl<T: Scalar> Model<T> {
    /// A model from a config and matching parameters.
    pub fn new(config: ModelConfig, params: Params<T>) -> Result<Model<T>> {
        config.validate()?;
        params.check(&config)?;
        Ok(Model { config, params })
    }

    /// A freshly initialised model (docs/MATH.md, "The model"), drawn from `rng` (any
    /// `rand::Rng`; see [`Params::init`]).
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::model::Model, rng::seeded};
    /// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 2, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
    /// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
    /// let logits = m.forward(&[1, 2, 3, 0, 6, 5], 2, 3, 2).unwrap();
    /// assert_eq!(logits.len(), 2 * 3 * 3 * 8); // [B, K+1, T, V+1]
    /// ```
    pub fn init<R: rand::Rng + ?Sized>(config: ModelConfig, rng: &mut R) -> Result<Model<T>> {
        config.validate()?;
        let params = Params::init(&config, rng);
        Ok(Model { config, params })
    }

    /// The same model in another float type.
    pub fn cast<U: Scalar>(&self) -> Model<U> {
        Model {
            config: self.config.clone(),
            params: self.params.cast(),
        }
    }

    /// Checks the config, the parameters and the inputs (tokens `0..V`, lengths,
    /// `T <= t_max`, `K <= k_max`).
    fn check_inputs(&self, tokens: &[i32], batch: usize, seq: usize, pauses: usize) -> Result<()> {
        self.config.validate()?;
        self.params.check(&self.config)?;
        check_batch(&self.config, tokens, batch, seq, pauses)
    }

    /// Logits `[B, K+1, T, V+1]` (depth-major, docs/MATH.md, "Pause steps") for tokens `[B,
    /// T]` with `K = pauses` pause steps per position.
    pub fn forward(
        &self,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
    ) -> Result<Vec<T>> {
        self.check_inputs(tokens, batch, seq, pauses)?;
        let mut acts = Activations::default();
        self.forward_acts(&mut acts, tokens, batch, seq, pauses, true);
        Ok(acts.logits)
    }

    /// [`Model::check_inputs`] plus the targets (`[B, T]`, each `-1` or `0..V`); returns
    /// the objective with this model's DK bias ([`ResolvedObjective::for_model`]).
    #[allow(clippy::too_many_arguments)]
    fn check_step_inputs<'o>(
        &self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &'o ResolvedObjective,
    ) -> Result<Cow<'o, ResolvedObjective>> {
        self.check_inputs(tokens, batch, seq, pauses)?;
        if targets.len() != batch * seq {
            return Err(CybError::Shape(format!(
                "targets have {} elements, expected B*T = {batch}*{seq}",
                targets.len()
            )));
        }
        check_targets(targets, self.config.vocab)?;
        objective.for_model(self.config.dk_bias)
    }

    /// Loss (`Reduction::Mean`) and statistics without gradients, for evaluation.
    ///
    /// The DK bias is the model's own `config.dk_bias`: `objective` comes from
    /// [`crate::Objective::resolve`] (no bias), or carries this model's bias; a
    /// different non-zero bias is a [`CybError::Param`] (see
    /// [`ResolvedObjective::for_model`]). The same holds for every loss of the model.
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::model::Model, rng::seeded, Objective};
    /// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 2, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
    /// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
    /// let obj = Objective::Marginal.resolve(2).unwrap();
    /// let out = m.loss(&[1, 2, 3], &[2, 3, 4], 1, 3, 2, &obj).unwrap();
    /// // Weights of std 0.02 give almost uniform predictions: the loss is near ln 7 (0.1 is
    /// // loose for the init's spread and far from a broken forward).
    /// approx::assert_abs_diff_eq!(out.loss, 7f64.ln(), epsilon = 0.1);
    /// // Another model's DK bias is refused, not silently used.
    /// let other = obj.with_dk_bias(2.0).unwrap();
    /// assert!(m.loss(&[1, 2, 3], &[2, 3, 4], 1, 3, 2, &other).is_err());
    /// ```
    pub fn loss(
        &self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
    ) -> Result<StepOutput> {
        self.loss_with_head(
            HeadMode::default(),
            tokens,
            targets,
            batch,
            seq,
            pauses,
            objective,
        )
    }

    /// [`Model::loss`] with the head computed as `head` says.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_with_head(
        &self,
        head: HeadMode,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
    ) -> Result<StepOutput> {
        let objective = self.check_step_inputs(tokens, targets, batch, seq, pauses, objective)?;
        let mut ws = Workspace::with_head(head);
        self.forward_acts(
            &mut ws.acts,
            tokens,
            batch,
            seq,
            pauses,
            head == HeadMode::Unfused,
        );
        self.head_loss_step(&mut ws, targets, &objective, None)
    }

    /// Loss (`Reduction::Mean`, with the model's DK bias as in [`Model::loss`]) and
    /// gradients of every parameter. `grads` is
    /// overwritten (not accumulated); it must have this model's shapes (e.g.
    /// `Params::zeros(&model.config)`). Allocates its buffers on every call: a training
    /// loop should keep a [`Workspace`] and call [`Model::forward_backward_with`].
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::model::{Model, Params}, rng::seeded, Objective};
    /// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 2, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
    /// let m: Model<f32> = Model::init(c.clone(), &mut seeded(0)).unwrap();
    /// let mut grads = Params::zeros(&c);
    /// let obj = Objective::ap_default().resolve(2).unwrap();
    /// let out = m.forward_backward(&[1, 2, 3], &[2, 3, -1], 1, 3, 2, &obj, &mut grads).unwrap();
    /// assert!(out.loss > 0.0 && out.stats.valid_positions == 2);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
        grads: &mut Params<T>,
    ) -> Result<StepOutput> {
        let mut ws = Workspace::new();
        self.forward_backward_with(
            &mut ws, tokens, targets, batch, seq, pauses, objective, grads,
        )
    }

    /// [`Model::forward_backward`] with caller-held buffers, reused across steps.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_with(
        &self,
        ws: &mut Workspace<T>,
        tokens: &[i32],
        targets: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        objective: &ResolvedObjective,
        grads: &mut Params<T>,
    ) -> Result<StepOutput> {
        let objective = self.check_step_inputs(tokens, targets, batch, seq, pauses, objective)?;
        grads.check(&self.config)?;
        let logits = ws.head == HeadMode::Unfused;
        self.forward_acts(&mut ws.acts, tokens, batch, seq, pauses, logits);
        grads.fill_zero();
        let out = self.head_loss_step(ws, targets, &objective, Some(grads))?;
        self.backward(ws, tokens, grads);
        Ok(out)
    }

    /// The head and the loss (`Reduction::Mean`) on `ws.acts.lnf`, as `ws.head` says;
    /// with `grads`, also `ws.dlnf` (overwritten) and `grads.tok_emb` (accumulated).
    fn head_loss_step(
        &self,
        ws: &mut Workspace<T>,
        targets: &[i32],
        objective: &ResolvedObjective,
        grads: Option<&mut Params<T>>,
    ) -> Result<StepOutput> {
        let (p, steps, d) = (&self.params, ws.acts.steps, self.config.d_model);
        let shape = LossShape {
            batch: steps.batch,
            pauses: steps.pauses,
            seq: steps.seq,
            vocab: self.config.vocab,
        };
        let (n, v1) = (shape.rows(), shape.vocab + 1);
        let (loss, stats, pauses) = match ws.head {
            HeadMode::Fused { chunk_bytes } => {
                let head = HeadShape {
                    loss: shape,
                    d,
                    chunk_positions: chunk_positions(
                        chunk_bytes,
                        shape.pauses,
                        v1 * std::mem::size_of::<T>(),
                    ),
                };
                let head_grads = grads.map(|g| HeadGrads {
                    d_hidden: sized(&mut ws.dlnf, n * d).as_mut_slice(),
                    d_embedding: g.tok_emb.as_mut_slice(),
                });
                let out = head_loss(
                    &ws.acts.lnf,
                    &p.tok_emb,
                    targets,
                    head,
                    objective,
                    Reduction::Mean,
                    None,
                    head_grads,
                )?;
                (out.loss, out.stats, out.pauses)
            }
            HeadMode::Unfused => {
                let logits = &ws.acts.logits;
                let Some(g) = grads else {
                    let fwd = cyb_loss(
                        logits,
                        targets,
                        shape,
                        objective,
                        Reduction::Mean,
                        None,
                        None,
                    )?;
                    return Ok(StepOutput {
                        loss: fwd.loss,
                        stats: fwd.stats,
                        pauses: fwd.pauses,
                    });
                };
                let dlogits = sized(&mut ws.dlogits, logits.len());
                let fwd = cyb_loss(
                    logits,
                    targets,
                    shape,
                    objective,
                    Reduction::Mean,
                    None,
                    Some(dlogits),
                )?;
                // Tied head: dlnf = dlogits · E, dE += dlogits^T · lnf.
                let dlnf = sized(&mut ws.dlnf, n * d);
                matmul(dlnf, dlogits, Op::N, &p.tok_emb, Op::N, n, v1, d, false);
                matmul(
                    &mut g.tok_emb,
                    dlogits,
                    Op::T,
                    &ws.acts.lnf,
                    Op::N,
                    v1,
                    n,
                    d,
                    true,
                );
                (fwd.loss, fwd.stats, fwd.pauses)
            }
        };
        Ok(StepOutput {
            loss,
            stats,
            pauses,
        })
    }

    fn attn_shape(&self, steps: StepShape) -> AttnShape {
        AttnShape {
            steps,
            heads: self.config.n_head,
            d: self.config.d_model,
            mode: self.config.pause_attention,
        }
    }

    /// The forward on checked inputs, keeping every activation in `acts`.
    fn forward_acts(
        &self,
        acts: &mut Activations<T>,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
        with_logits: bool,
    ) {
        let (p, c) = (&self.params, &self.config);
        let steps = StepShape { batch, pauses, seq };
        let (n, d, v1) = (steps.rows(), c.d_model, c.vocab + 1);
        let ashape = self.attn_shape(steps);
        acts.steps = steps;
        acts.resid.resize_with(c.n_layer + 1, Vec::new);
        acts.blocks.resize_with(c.n_layer, BlockActs::default);

        let h0 = sized(&mut acts.resid[0], n * d);
        embedding_forward(
            h0,
            tokens,
            &p.tok_emb,
            &p.pos_emb,
            &p.depth_emb,
            steps,
            d,
            c.vocab,
        );
        for (l, bp) in p.blocks.iter().enumerate() {
            let (done, rest) = acts.resid.split_at_mut(l + 1);
            let (x, out) = (&done[l], &mut rest[0]);
            let a = &mut acts.blocks[l];
            // Attention half: mid = x + W_o · Attn(LN1(x) W_qkv + b_qkv) + b_o.
            layernorm_forward(
                sized(&mut a.ln1, n * d),
                sized(&mut a.ln1_mean, n),
                sized(&mut a.ln1_rstd, n),
                x,
                &bp.ln1_weight,
                &bp.ln1_bias,
                d,
                c.layer_norm_eps,
            );
            let qkv = sized(&mut a.qkv, n * 3 * d);
            linear_forward(
                qkv,
                &a.ln1,
                &bp.attn_qkv_weight,
                &bp.attn_qkv_bias,
                n,
                d,
                3 * d,
            );
            let (atty, att) = (
                sized(&mut a.atty, n * d),
                sized(&mut a.att, ashape.att_len()),
            );
            attention_forward(atty, att, &a.qkv, ashape);
            let mid = sized(&mut a.mid, n * d);
            linear_forward(
                mid,
                &a.atty,
                &bp.attn_proj_weight,
                &bp.attn_proj_bias,
                n,
                d,
                d,
            );
            add_in_place(mid, x);
            // MLP half: out = mid + W_2 · gelu(LN2(mid) W_1 + b_1) + b_2.
            layernorm_forward(
                sized(&mut a.ln2, n * d),
                sized(&mut a.ln2_mean, n),
                sized(&mut a.ln2_rstd, n),
                &a.mid,
                &bp.ln2_weight,
                &bp.ln2_bias,
                d,
                c.layer_norm_eps,
            );
            let fc = sized(&mut a.fc, n * 4 * d);
            linear_forward(fc, &a.ln2, &bp.mlp_fc_weight, &bp.mlp_fc_bias, n, d, 4 * d);
            gelu_forward(sized(&mut a.gelu, n * 4 * d), &a.fc);
            let out = sized(out, n * d);
            linear_forward(
                out,
                &a.gelu,
                &bp.mlp_proj_weight,
                &bp.mlp_proj_bias,
                n,
                4 * d,
                d,
            );
            add_in_place(out, &a.mid);
        }
        layernorm_forward(
            sized(&mut acts.lnf, n * d),
            sized(&mut acts.lnf_mean, n),
            sized(&mut acts.lnf_rstd, n),
            &acts.resid[c.n_layer],
            &p.ln_f_weight,
            &p.ln_f_bias,
            d,
            c.layer_norm_eps,
        );
        if with_logits {
            // Tied head: logits[N, V+1] = lnf[N, d] · tok_emb[V+1, d]^T.
            let logits = sized(&mut acts.logits, n * v1);
            matmul(logits, &acts.lnf, Op::N, &p.tok_emb, Op::T, n, d, v1, false);
        }
    }

    /// The backward from `ws.dlnf: [N, d]` (the head's, see
    /// [`Model::head_loss_step`]) through `ws.acts`, adding to `grads` (zeroed and
    /// holding the head's `tok_emb` gradient).
    fn backward(&self, ws: &mut Workspace<T>, tokens: &[i32], grads: &mut Params<T>) {
        let (p, c) = (&self.params, &self.config);
        let acts = &ws.acts;
        let steps = acts.steps;
        let (n, d) = (steps.rows(), c.d_model);
        let ashape = self.attn_shape(steps);
        // `dresid` carries ∂L/∂h down the residual stream; each half adds its branch.
        let dresid = sized(&mut ws.dresid, n * d);
        dresid.iter_mut().for_each(|x| *x = T::zero());
        layernorm_backward(
            dresid,
            &mut grads.ln_f_weight,
            &mut grads.ln_f_bias,
            &ws.dlnf,
            &acts.resid[c.n_layer],
            &p.ln_f_weight,
            &acts.lnf_mean,
            &acts.lnf_rstd,
            d,
        );
        let dgelu = sized(&mut ws.dgelu, n * 4 * d);
        let dfc = sized(&mut ws.dfc, n * 4 * d);
        let dln = sized(&mut ws.dln, n * d);
        let datty = sized(&mut ws.datty, n * d);
        let dqkv = sized(&mut ws.dqkv, n * 3 * d);
        for l in (0..c.n_layer).rev() {
            let (bp, a, g) = (&p.blocks[l], &acts.blocks[l], &mut grads.blocks[l]);
            // MLP half (dresid is ∂L/∂out; it becomes ∂L/∂mid).
            linear_backward(
                dgelu,
                &mut g.mlp_proj_weight,
                &mut g.mlp_proj_bias,
                dresid,
                &a.gelu,
                &bp.mlp_proj_weight,
                n,
                4 * d,
                d,
            );
            gelu_backward(dfc, &a.fc, dgelu);
            linear_backward(
                dln,
                &mut g.mlp_fc_weight,
                &mut g.mlp_fc_bias,
                dfc,
                &a.ln2,
                &bp.mlp_fc_weight,
                n,
                d,
                4 * d,
            );
            layernorm_backward(
                dresid,
                &mut g.ln2_weight,
                &mut g.ln2_bias,
                dln,
                &a.mid,
                &bp.ln2_weight,
                &a.ln2_mean,
                &a.ln2_rstd,
                d,
            );
            // Attention half (dresid becomes ∂L/∂x, the block input).
            linear_backward(
                datty,
                &mut g.attn_proj_weight,
                &mut g.attn_proj_bias,
                dresid,
                &a.atty,
                &bp.attn_proj_weight,
                n,
                d,
                d,
            );
            attention_backward(dqkv, datty, &a.qkv, &a.att, ashape);
            linear_backward(
                dln,
                &mut g.attn_qkv_weight,
                &mut g.attn_qkv_bias,
                dqkv,
                &a.ln1,
                &bp.attn_qkv_weight,
                n,
                d,
                3 * d,
            );
            layernorm_backward(
                dresid,
                &mut g.ln1_weight,
                &mut g.ln1_bias,
                dln,
                &acts.resid[l],
                &bp.ln1_weight,
                &a.ln1_mean,
                &a.ln1_rstd,
                d,
            );
        }
        embedding_backward(
            &mut grads.tok_emb,
            &mut grads.pos_emb,
            &mut grads.depth_emb,
            dresid,
            tokens,
            steps,
            d,
            c.vocab,
        );
    }
}

/// Checks a batch of inputs against a model's sizes: `B, T > 0`, `B*T` tokens,
/// `T <= t_max`, `K <= k_max`, every token in `0..V` (PAUSE = V is inserted by the model
/// itself, never given as input). Shared by every backend.
pub fn check_batch(
    c: &ModelConfig,
    tokens: &[i32],
    batch: usize,
    seq: usize,
    pauses: usize,
) -> Result<()> {
    if batch == 0 || seq == 0 {
        return Err(CybError::Shape(format!(
            "batch ({batch}) and sequence length ({seq}) must be > 0"
        )));
    }
    if tokens.len() != batch * seq {
        return Err(CybError::Shape(format!(
            "tokens have {} elements, expected B*T = {batch}*{seq}",
            tokens.len()
        )));
    }
    if seq > c.t_max {
        return Err(CybError::Shape(format!(
            "sequence length T = {seq} exceeds the model's t_max = {}",
            c.t_max
        )));
    }
    if pauses > c.k_max {
        return Err(CybError::TooManyPauses {
            k: pauses,
            k_max: c.k_max,
        });
    }
    if let Some((index, &id)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &x)| x < 0 || x as usize >= c.vocab)
    {
        return Err(CybError::VocabRange {
            id: id as i64,
            index,
            vocab: c.vocab,
        });
    }
    Ok(())
}

fn add_in_place<T: Scalar>(acc: &mut [T], x: &[T]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

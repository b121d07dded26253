//! The CYB model on the CPU (SPEC section 5), forward and backward, in the
//! depth-major pause-step layout of SPEC section 3:
//!
//! ```text
//! h = E[tok] + P[t] + D[k]                                  [B, K+1, T, d]
//! repeat L times:
//!     h = h + W_o · Attn(LN1(h) W_qkv + b_qkv) + b_o        (H heads, pause mask)
//!     h = h + W_2 · gelu_tanh(LN2(h) W_1 + b_1) + b_2        (hidden 4d)
//! logits = LN_f(h) · E^T                                    [B, K+1, T, V+1]
//! ```
//!
//! The loss is `cpu::loss::cyb_loss` (SPEC section 4); its `dlogits` flows back
//! through the same functions in reverse. Every reduction across rows runs in a fixed
//! order, so `forward_backward` is bit-for-bit deterministic whatever the threads do.

use crate::config::ModelConfig;
use crate::cpu::attention::{attention_backward, attention_forward, AttnShape};
use crate::cpu::embedding::{embedding_backward, embedding_forward, StepShape};
use crate::cpu::gelu::{gelu_backward, gelu_forward};
use crate::cpu::layernorm::{layernorm_backward, layernorm_forward};
use crate::cpu::linear::{linear_backward, linear_forward};
use crate::cpu::loss::{check_targets, cyb_loss, LossShape, LossStats};
use crate::cpu::scalar::{matmul, Op, Scalar};
use crate::error::{CybError, Result};
use crate::objective::{Reduction, ResolvedObjective};
use crate::rng::Rng;

pub use crate::cpu::params::{is_matrix, tensor_layout, BlockParams, Params};

/// What one training step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean loss over positions with a target (plus the `dp` batch term).
    pub loss: f64,
    /// Valid positions, mean `E[pauses]`, `dp` penalty.
    pub stats: LossStats,
    /// `E[pauses]` per position `[B, T]` (0 where the target is ignored).
    pub pauses: Vec<f64>,
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
    att: Vec<T>,      // [B, H, K+1, T, T+K]
    atty: Vec<T>,     // [N, d] attention output before W_o
    mid: Vec<T>,      // [N, d] residual after the attention half
    ln2: Vec<T>,      // [N, d]
    ln2_mean: Vec<T>, // [N]
    ln2_rstd: Vec<T>, // [N]
    fc: Vec<T>,       // [N, 4d] before gelu
    gelu: Vec<T>,     // [N, 4d]
}

/// Everything the forward keeps for the backward.
#[derive(Clone, Debug)]
struct Activations<T> {
    steps: StepShape,
    /// `resid[0]` = embeddings, `resid[l+1]` = output of block `l`; each `[N, d]`.
    resid: Vec<Vec<T>>,
    blocks: Vec<BlockActs<T>>,
    lnf: Vec<T>,      // [N, d]
    lnf_mean: Vec<T>, // [N]
    lnf_rstd: Vec<T>, // [N]
    logits: Vec<T>,   // [N, V+1]
}

impl<T: Scalar> Model<T> {
    /// A model from a config and matching parameters.
    pub fn new(config: ModelConfig, params: Params<T>) -> Result<Model<T>> {
        config.validate()?;
        params.check(&config)?;
        Ok(Model { config, params })
    }

    /// A freshly initialised model (SPEC section 5).
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::model::Model, rng::Rng};
    /// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 2 };
    /// let m: Model<f32> = Model::init(c, &mut Rng::new(0)).unwrap();
    /// let logits = m.forward(&[1, 2, 3, 0, 6, 5], 2, 3, 2).unwrap();
    /// assert_eq!(logits.len(), 2 * 3 * 3 * 8); // [B, K+1, T, V+1]
    /// ```
    pub fn init(config: ModelConfig, rng: &mut Rng) -> Result<Model<T>> {
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
        let c = &self.config;
        c.validate()?;
        self.params.check(c)?;
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
        // PAUSE (= V) is inserted by the model itself, never given as input.
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

    /// Logits `[B, K+1, T, V+1]` (depth-major, SPEC section 3) for tokens `[B, T]`
    /// with `K = pauses` pause steps per position.
    pub fn forward(
        &self,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
    ) -> Result<Vec<T>> {
        self.check_inputs(tokens, batch, seq, pauses)?;
        Ok(self.forward_acts(tokens, batch, seq, pauses).logits)
    }

    /// Loss (`Reduction::Mean`) and gradients of every parameter. `grads` is
    /// overwritten (not accumulated); it must have this model's shapes (e.g.
    /// `Params::zeros(&model.config)`).
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::model::{Model, Params}, rng::Rng, Objective};
    /// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 4, k_max: 2 };
    /// let m: Model<f32> = Model::init(c.clone(), &mut Rng::new(0)).unwrap();
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
        self.check_inputs(tokens, batch, seq, pauses)?;
        if targets.len() != batch * seq {
            return Err(CybError::Shape(format!(
                "targets have {} elements, expected B*T = {batch}*{seq}",
                targets.len()
            )));
        }
        check_targets(targets, self.config.vocab)?;
        grads.check(&self.config)?;
        let acts = self.forward_acts(tokens, batch, seq, pauses);
        let shape = LossShape {
            batch,
            pauses,
            seq,
            vocab: self.config.vocab,
        };
        let mut dlogits = vec![T::zero(); acts.logits.len()];
        let fwd = cyb_loss(
            &acts.logits,
            targets,
            shape,
            objective,
            Reduction::Mean,
            None,
            Some(&mut dlogits),
        )?;
        self.backward(&acts, tokens, &dlogits, grads);
        Ok(StepOutput {
            loss: fwd.loss,
            stats: fwd.stats,
            pauses: fwd.pauses,
        })
    }

    fn attn_shape(&self, steps: StepShape) -> AttnShape {
        AttnShape {
            steps,
            heads: self.config.n_head,
            d: self.config.d_model,
        }
    }

    /// The forward on checked inputs, keeping every activation.
    fn forward_acts(
        &self,
        tokens: &[i32],
        batch: usize,
        seq: usize,
        pauses: usize,
    ) -> Activations<T> {
        let (p, c) = (&self.params, &self.config);
        let steps = StepShape { batch, pauses, seq };
        let (n, d, v1) = (steps.rows(), c.d_model, c.vocab + 1);
        let zeros = |len: usize| vec![T::zero(); len];
        let ashape = self.attn_shape(steps);

        let mut h = zeros(n * d);
        embedding_forward(
            &mut h,
            tokens,
            &p.tok_emb,
            &p.pos_emb,
            &p.depth_emb,
            steps,
            d,
            c.vocab,
        );
        let mut resid = vec![h];
        let mut blocks = Vec::with_capacity(c.n_layer);
        for bp in &p.blocks {
            let x = &resid[resid.len() - 1];
            let mut a = BlockActs {
                ln1: zeros(n * d),
                ln1_mean: zeros(n),
                ln1_rstd: zeros(n),
                qkv: zeros(n * 3 * d),
                att: zeros(ashape.att_len()),
                atty: zeros(n * d),
                mid: zeros(n * d),
                ln2: zeros(n * d),
                ln2_mean: zeros(n),
                ln2_rstd: zeros(n),
                fc: zeros(n * 4 * d),
                gelu: zeros(n * 4 * d),
            };
            // Attention half: mid = x + W_o · Attn(LN1(x) W_qkv + b_qkv) + b_o.
            layernorm_forward(
                &mut a.ln1,
                &mut a.ln1_mean,
                &mut a.ln1_rstd,
                x,
                &bp.ln1_weight,
                &bp.ln1_bias,
                d,
            );
            linear_forward(
                &mut a.qkv,
                &a.ln1,
                &bp.attn_qkv_weight,
                &bp.attn_qkv_bias,
                n,
                d,
                3 * d,
            );
            attention_forward(&mut a.atty, &mut a.att, &a.qkv, ashape);
            linear_forward(
                &mut a.mid,
                &a.atty,
                &bp.attn_proj_weight,
                &bp.attn_proj_bias,
                n,
                d,
                d,
            );
            add_in_place(&mut a.mid, x);
            // MLP half: out = mid + W_2 · gelu(LN2(mid) W_1 + b_1) + b_2.
            layernorm_forward(
                &mut a.ln2,
                &mut a.ln2_mean,
                &mut a.ln2_rstd,
                &a.mid,
                &bp.ln2_weight,
                &bp.ln2_bias,
                d,
            );
            linear_forward(
                &mut a.fc,
                &a.ln2,
                &bp.mlp_fc_weight,
                &bp.mlp_fc_bias,
                n,
                d,
                4 * d,
            );
            gelu_forward(&mut a.gelu, &a.fc);
            let mut out = zeros(n * d);
            linear_forward(
                &mut out,
                &a.gelu,
                &bp.mlp_proj_weight,
                &bp.mlp_proj_bias,
                n,
                4 * d,
                d,
            );
            add_in_place(&mut out, &a.mid);
            resid.push(out);
            blocks.push(a);
        }
        let (mut lnf, mut lnf_mean, mut lnf_rstd) = (zeros(n * d), zeros(n), zeros(n));
        let last = &resid[resid.len() - 1];
        layernorm_forward(
            &mut lnf,
            &mut lnf_mean,
            &mut lnf_rstd,
            last,
            &p.ln_f_weight,
            &p.ln_f_bias,
            d,
        );
        // Tied head: logits[N, V+1] = lnf[N, d] · tok_emb[V+1, d]^T.
        let mut logits = zeros(n * v1);
        matmul(&mut logits, &lnf, Op::N, &p.tok_emb, Op::T, n, d, v1, false);
        Activations {
            steps,
            resid,
            blocks,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
        }
    }

    /// The backward from `dlogits: [N, V+1]`, overwriting `grads`.
    fn backward(
        &self,
        acts: &Activations<T>,
        tokens: &[i32],
        dlogits: &[T],
        grads: &mut Params<T>,
    ) {
        let (p, c) = (&self.params, &self.config);
        let steps = acts.steps;
        let (n, d, v1) = (steps.rows(), c.d_model, c.vocab + 1);
        let ashape = self.attn_shape(steps);
        grads.fill_zero();

        // Tied head: dlnf = dlogits · E, dE += dlogits^T · lnf.
        let mut dlnf = vec![T::zero(); n * d];
        matmul(
            &mut dlnf,
            dlogits,
            Op::N,
            &p.tok_emb,
            Op::N,
            n,
            v1,
            d,
            false,
        );
        matmul(
            &mut grads.tok_emb,
            dlogits,
            Op::T,
            &acts.lnf,
            Op::N,
            v1,
            n,
            d,
            true,
        );
        // `dresid` carries ∂L/∂h down the residual stream; each half adds its branch.
        let mut dresid = vec![T::zero(); n * d];
        layernorm_backward(
            &mut dresid,
            &mut grads.ln_f_weight,
            &mut grads.ln_f_bias,
            &dlnf,
            &acts.resid[c.n_layer],
            &p.ln_f_weight,
            &acts.lnf_mean,
            &acts.lnf_rstd,
            d,
        );
        // Scratch reused by every layer.
        let mut dgelu = vec![T::zero(); n * 4 * d];
        let mut dfc = vec![T::zero(); n * 4 * d];
        let mut dln = vec![T::zero(); n * d];
        let mut datty = vec![T::zero(); n * d];
        let mut dqkv = vec![T::zero(); n * 3 * d];
        for l in (0..c.n_layer).rev() {
            let (bp, a, g) = (&p.blocks[l], &acts.blocks[l], &mut grads.blocks[l]);
            // MLP half (dresid is ∂L/∂out; it becomes ∂L/∂mid).
            linear_backward(
                &mut dgelu,
                &mut g.mlp_proj_weight,
                &mut g.mlp_proj_bias,
                &dresid,
                &a.gelu,
                &bp.mlp_proj_weight,
                n,
                4 * d,
                d,
            );
            gelu_backward(&mut dfc, &a.fc, &dgelu);
            linear_backward(
                &mut dln,
                &mut g.mlp_fc_weight,
                &mut g.mlp_fc_bias,
                &dfc,
                &a.ln2,
                &bp.mlp_fc_weight,
                n,
                d,
                4 * d,
            );
            layernorm_backward(
                &mut dresid,
                &mut g.ln2_weight,
                &mut g.ln2_bias,
                &dln,
                &a.mid,
                &bp.ln2_weight,
                &a.ln2_mean,
                &a.ln2_rstd,
                d,
            );
            // Attention half (dresid becomes ∂L/∂x, the block input).
            linear_backward(
                &mut datty,
                &mut g.attn_proj_weight,
                &mut g.attn_proj_bias,
                &dresid,
                &a.atty,
                &bp.attn_proj_weight,
                n,
                d,
                d,
            );
            attention_backward(&mut dqkv, &datty, &a.qkv, &a.att, ashape);
            linear_backward(
                &mut dln,
                &mut g.attn_qkv_weight,
                &mut g.attn_qkv_bias,
                &dqkv,
                &a.ln1,
                &bp.attn_qkv_weight,
                n,
                d,
                3 * d,
            );
            layernorm_backward(
                &mut dresid,
                &mut g.ln1_weight,
                &mut g.ln1_bias,
                &dln,
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
            &dresid,
            tokens,
            steps,
            d,
            c.vocab,
        );
    }
}

fn add_in_place<T: Scalar>(acc: &mut [T], x: &[T]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

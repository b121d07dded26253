//! The parameters of the model (docs/MATH.md, "The model") under their checkpoint names and
//! shapes (docs/MATH.md, "Checkpoints"), and their initialisation.
//!
//! The order of [`tensor_layout`] is the one fixed order of the crate: `tensors()`,
//! `tensors_mut()`, the optimiser state and the checkpoint all follow it.

use crate::config::ModelConfig;
use crate::cpu::scalar::Scalar;
use rand::RngExt;
use rand_distr::StandardNormal;

/// One transformer block (docs/MATH.md, "The model"); names follow `blocks.{i}.*` of
/// docs/MATH.md, "Checkpoints".
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParams<T> {
    /// `ln1.weight [d]`
    pub ln1_weight: Vec<T>,
    /// `ln1.bias [d]`
    pub ln1_bias: Vec<T>,
    /// `attn.qkv.weight [3d, d]` (rows q, then k, then v; heads contiguous)
    pub attn_qkv_weight: Vec<T>,
    /// `attn.qkv.bias [3d]`
    pub attn_qkv_bias: Vec<T>,
    /// `attn.proj.weight [d, d]` (`W_o`)
    pub attn_proj_weight: Vec<T>,
    /// `attn.proj.bias [d]`
    pub attn_proj_bias: Vec<T>,
    /// `ln2.weight [d]`
    pub ln2_weight: Vec<T>,
    /// `ln2.bias [d]`
    pub ln2_bias: Vec<T>,
    /// `mlp.fc.weight [4d, d]` (`W_1`)
    pub mlp_fc_weight: Vec<T>,
    /// `mlp.fc.bias [4d]`
    pub mlp_fc_bias: Vec<T>,
    /// `mlp.proj.weight [d, 4d]` (`W_2`)
    pub mlp_proj_weight: Vec<T>,
    /// `mlp.proj.bias [d]`
    pub mlp_proj_bias: Vec<T>,
}

/// Names and shapes of the tensors of one block, in the fixed order.
fn block_layout(i: usize, d: usize) -> [(String, Vec<usize>); 12] {
    let n = |s: &str| format!("blocks.{i}.{s}");
    [
        (n("ln1.weight"), vec![d]),
        (n("ln1.bias"), vec![d]),
        (n("attn.qkv.weight"), vec![3 * d, d]),
        (n("attn.qkv.bias"), vec![3 * d]),
        (n("attn.proj.weight"), vec![d, d]),
        (n("attn.proj.bias"), vec![d]),
        (n("ln2.weight"), vec![d]),
        (n("ln2.bias"), vec![d]),
        (n("mlp.fc.weight"), vec![4 * d, d]),
        (n("mlp.fc.bias"), vec![4 * d]),
        (n("mlp.proj.weight"), vec![d, 4 * d]),
        (n("mlp.proj.bias"), vec![d]),
    ]
}

impl<T> BlockParams<T> {
    fn parts(&self) -> [&Vec<T>; 12] {
        [
            &self.ln1_weight,
            &self.ln1_bias,
            &self.attn_qkv_weight,
            &self.attn_qkv_bias,
            &self.attn_proj_weight,
            &self.attn_proj_bias,
            &self.ln2_weight,
            &self.ln2_bias,
            &self.mlp_fc_weight,
            &self.mlp_fc_bias,
            &self.mlp_proj_weight,
            &self.mlp_proj_bias,
        ]
    }
    fn parts_mut(&mut self) -> [&mut Vec<T>; 12] {
        [
            &mut self.ln1_weight,
            &mut self.ln1_bias,
            &mut self.attn_qkv_weight,
            &mut self.attn_qkv_bias,
            &mut self.attn_proj_weight,
            &mut self.attn_proj_bias,
            &mut self.ln2_weight,
            &mut self.ln2_bias,
            &mut self.mlp_fc_weight,
            &mut self.mlp_fc_bias,
            &mut self.mlp_proj_weight,
            &mut self.mlp_proj_bias,
        ]
    }
}

/// All parameters. Tables: `tok_emb [V+1, d]` (row `V` = PAUSE input and DK output),
/// `pos_emb [t_max, d]`, `depth_emb [k_max+1, d]`; the output head is tied to `tok_emb`.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T> {
    /// `tok_emb [V+1, d]`
    pub tok_emb: Vec<T>,
    /// `pos_emb [t_max, d]`
    pub pos_emb: Vec<T>,
    /// `depth_emb [k_max+1, d]`
    pub depth_emb: Vec<T>,
    /// `blocks.{i}.*`
    pub blocks: Vec<BlockParams<T>>,
    /// `ln_f.weight [d]`
    pub ln_f_weight: Vec<T>,
    /// `ln_f.bias [d]`
    pub ln_f_bias: Vec<T>,
}

/// Every tensor name and shape of a model with this config, in the fixed order.
///
/// ```
/// let c = cyb::config::ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let layout = cyb::cpu::params::tensor_layout(&c);
/// assert_eq!(layout[0], ("tok_emb".to_string(), vec![6, 4]));
/// assert_eq!(layout.len(), 3 + 12 + 2);
/// ```
pub fn tensor_layout(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    layout_of(
        config.vocab + 1,
        config.t_max,
        config.k_max + 1,
        config.d_model,
        config.n_layer,
    )
}

fn layout_of(
    v1: usize,
    t_max: usize,
    k1: usize,
    d: usize,
    layers: usize,
) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![
        ("tok_emb".to_string(), vec![v1, d]),
        ("pos_emb".to_string(), vec![t_max, d]),
        ("depth_emb".to_string(), vec![k1, d]),
    ];
    for i in 0..layers {
        out.extend(block_layout(i, d));
    }
    out.push(("ln_f.weight".to_string(), vec![d]));
    out.push(("ln_f.bias".to_string(), vec![d]));
    out
}

/// Whether AdamW decays this tensor: the 2-D ones (every Linear weight and the three
/// embedding tables, as in GPT-2/nanoGPT practice), never biases or LayerNorm gains.
///
/// ```
/// assert!(cyb::cpu::params::is_matrix("blocks.0.mlp.fc.weight"));
/// assert!(cyb::cpu::params::is_matrix("tok_emb"));
/// assert!(!cyb::cpu::params::is_matrix("blocks.0.ln1.weight"));
/// assert!(!cyb::cpu::params::is_matrix("blocks.0.mlp.fc.bias"));
/// ```
pub fn is_matrix(name: &str) -> bool {
    name.ends_with("_emb")
        || (name.ends_with(".weight") && !name.contains(".ln") && !name.starts_with("ln_"))
}

impl<T: Scalar> Params<T> {
    /// Builds the struct from tensors given in [`tensor_layout`] order. The caller
    /// guarantees `n_layer` matches the number of tensors.
    pub(crate) fn from_ordered(n_layer: usize, tensors: Vec<Vec<T>>) -> Params<T> {
        let mut it = tensors.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let (tok_emb, pos_emb, depth_emb) = (next(), next(), next());
        let blocks = (0..n_layer)
            .map(|_| BlockParams {
                ln1_weight: next(),
                ln1_bias: next(),
                attn_qkv_weight: next(),
                attn_qkv_bias: next(),
                attn_proj_weight: next(),
                attn_proj_bias: next(),
                ln2_weight: next(),
                ln2_bias: next(),
                mlp_fc_weight: next(),
                mlp_fc_bias: next(),
                mlp_proj_weight: next(),
                mlp_proj_bias: next(),
            })
            .collect();
        let (ln_f_weight, ln_f_bias) = (next(), next());
        Params {
            tok_emb,
            pos_emb,
            depth_emb,
            blocks,
            ln_f_weight,
            ln_f_bias,
        }
    }

    /// All-zero parameters (a gradient buffer) for this config.
    pub fn zeros(config: &ModelConfig) -> Params<T> {
        let tensors = tensor_layout(config)
            .into_iter()
            .map(|(_, shape)| vec![T::zero(); shape.iter().product()])
            .collect();
        Params::from_ordered(config.n_layer, tensors)
    }

    /// The initialisation of docs/MATH.md ("The model"): normal(0, 0.02) for every weight
    /// matrix and embedding table, `W_o` (`attn.proj.weight`) and `W_2` (`mlp.proj.weight`)
    /// also scaled by `1/sqrt(2L)`; zero biases; LayerNorm weight 1, bias 0. Tensors are
    /// drawn in the fixed order from `rng` (any `rand::Rng`; the normal draws are
    /// `rand_distr::StandardNormal` in f64), so a seed of [`crate::rng::seeded`] gives the
    /// same model everywhere (see [`crate::rng`] for what fixes the stream).
    ///
    /// ```
    /// use cyb::{config::ModelConfig, cpu::params::Params, rng::seeded};
    /// let c = ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
    /// let p: Params<f32> = Params::init(&c, &mut seeded(1));
    /// assert_eq!(p.blocks[0].ln1_weight, vec![1.0; 4]);
    /// ```
    pub fn init<R: rand::Rng + ?Sized>(config: &ModelConfig, rng: &mut R) -> Params<T> {
        let mut p = Params::zeros(config);
        let residual_scale = 1.0 / (2.0 * config.n_layer.max(1) as f64).sqrt();
        for (name, _, data) in p.tensors_mut() {
            if is_matrix(&name) {
                let std = if name.ends_with("proj.weight") {
                    0.02 * residual_scale
                } else {
                    0.02
                };
                data.iter_mut()
                    .for_each(|x| *x = T::of(std * rng.sample::<f64, _>(StandardNormal)));
            } else if name.contains("ln") && name.ends_with(".weight") {
                data.iter_mut().for_each(|x| *x = T::one());
            }
        }
        p
    }

    /// `(V+1, t_max, k_max+1, d, L)` read back from the tensor lengths.
    fn dims(&self) -> (usize, usize, usize, usize, usize) {
        let d = self.ln_f_weight.len();
        let rows = |v: &Vec<T>| v.len() / d.max(1);
        (
            rows(&self.tok_emb),
            rows(&self.pos_emb),
            rows(&self.depth_emb),
            d,
            self.blocks.len(),
        )
    }

    fn refs(&self) -> Vec<&Vec<T>> {
        let mut v = vec![&self.tok_emb, &self.pos_emb, &self.depth_emb];
        for b in &self.blocks {
            v.extend(b.parts());
        }
        v.push(&self.ln_f_weight);
        v.push(&self.ln_f_bias);
        v
    }

    fn refs_mut(&mut self) -> Vec<&mut Vec<T>> {
        let mut v = vec![&mut self.tok_emb, &mut self.pos_emb, &mut self.depth_emb];
        for b in &mut self.blocks {
            v.extend(b.parts_mut());
        }
        v.push(&mut self.ln_f_weight);
        v.push(&mut self.ln_f_bias);
        v
    }

    /// Every tensor as `(checkpoint name, shape, data)`, in the fixed order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let (v1, t, k1, d, l) = self.dims();
        layout_of(v1, t, k1, d, l)
            .into_iter()
            .zip(self.refs())
            .map(|((n, s), x)| (n, s, x.as_slice()))
            .collect()
    }

    /// Like [`Params::tensors`], mutable.
    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [T])> {
        let (v1, t, k1, d, l) = self.dims();
        layout_of(v1, t, k1, d, l)
            .into_iter()
            .zip(self.refs_mut())
            .map(|((n, s), x)| (n, s, x.as_mut_slice()))
            .collect()
    }

    /// The same parameters in another float type (rounding to nearest for `f32`).
    pub fn cast<U: Scalar>(&self) -> Params<U> {
        let tensors = self
            .refs()
            .into_iter()
            .map(|v| v.iter().map(|&x| U::of(x.to_f64_lossless())).collect())
            .collect();
        Params::from_ordered(self.blocks.len(), tensors)
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.refs().iter().map(|v| v.len()).sum()
    }

    /// Sets every element to zero, keeping the allocation.
    pub fn fill_zero(&mut self) {
        for v in self.refs_mut() {
            v.iter_mut().for_each(|x| *x = T::zero());
        }
    }

    /// Checks that every tensor has the length `config` implies; names the first that
    /// does not.
    pub fn check(&self, config: &ModelConfig) -> crate::Result<()> {
        if self.blocks.len() != config.n_layer {
            return Err(crate::CybError::Shape(format!(
                "params have {} blocks, config says n_layer = {}",
                self.blocks.len(),
                config.n_layer
            )));
        }
        for ((name, shape), v) in tensor_layout(config).into_iter().zip(self.refs()) {
            let want: usize = shape.iter().product();
            if v.len() != want {
                return Err(crate::CybError::Shape(format!(
                    "parameter {name} has {} elements, expected {shape:?} = {want}",
                    v.len()
                )));
            }
        }
        Ok(())
    }
}

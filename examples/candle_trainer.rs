//! A small trainer built on candle whose loss is this crate's CYB loss
//! ([`cyb::candle::cyb_loss`], a candle custom op with forward and backward).
//!
//! The model is candle's own: an embedding, one hidden layer with tanh, and a head
//! that gives every position `K+1` rows of `V+1` logits (answer classes and DK),
//! reshaped to the depth-major `[B, K+1, T, V+1]` the loss takes (SPEC section 3).
//! The task maps each token to a fixed other token; some targets are `-1` (ignored).
//! Everything is deterministic (no random initialisation), so runs repeat exactly.
//!
//! ```text
//! cargo run --release --example candle_trainer --features candle [-- STEPS [OBJECTIVE]]
//! ```
//!
//! prints the loss per step (default 40 steps of `ap`). `tests/candle.rs` includes
//! this file to check its gradients and that its loss falls.

use candle_core::{DType, Device, Module, Result, Shape, Tensor, Var};
use candle_nn::{AdamW, Embedding, Linear, Optimizer, ParamsAdamW};
use cyb::{Objective, Reduction, ResolvedObjective};

/// Sizes of the toy problem.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    /// Real vocabulary `V` (the logits have `V+1` classes, the last is DK).
    pub vocab: usize,
    /// Pause steps `K`.
    pub pauses: usize,
    pub embed: usize,
    pub hidden: usize,
}

impl Default for Dims {
    fn default() -> Self {
        Dims {
            batch: 4,
            seq: 12,
            vocab: 16,
            pauses: 2,
            embed: 16,
            hidden: 32,
        }
    }
}

/// Embedding, tanh hidden layer, and a head with `(K+1)*(V+1)` outputs per position.
pub struct Model {
    pub dims: Dims,
    embedding: Embedding,
    hidden: Linear,
    head: Linear,
    /// Every trainable tensor, for the optimizer and the gradient checks.
    pub vars: Vec<Var>,
}

/// A deterministic pseudo-random tensor in `[-scale, scale]` (no RNG, so runs and
/// the test repeat exactly): a sine of a large multiple of the index.
fn init<S: Into<Shape>>(shape: S, salt: f64, scale: f64, dtype: DType) -> Result<Var> {
    let shape = shape.into();
    let values: Vec<f64> = (0..shape.elem_count())
        .map(|i| scale * ((i as f64 + 1.0) * 12.9898 + salt * 78.233).sin())
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

impl Model {
    /// A model with deterministic weights of dtype `dtype` (f32 to train, f64 for
    /// finite differences), on the CPU.
    pub fn new(dims: Dims, dtype: DType) -> Result<Model> {
        let rows = (dims.pauses + 1) * (dims.vocab + 1);
        let emb = init((dims.vocab, dims.embed), 1.0, 1.0, dtype)?;
        let w1 = init(
            (dims.hidden, dims.embed),
            2.0,
            1.0 / (dims.embed as f64).sqrt(),
            dtype,
        )?;
        let b1 = init(dims.hidden, 3.0, 0.1, dtype)?;
        let w2 = init(
            (rows, dims.hidden),
            4.0,
            1.0 / (dims.hidden as f64).sqrt(),
            dtype,
        )?;
        let b2 = init(rows, 5.0, 0.1, dtype)?;
        Ok(Model {
            dims,
            embedding: Embedding::new(emb.as_tensor().clone(), dims.embed),
            hidden: Linear::new(w1.as_tensor().clone(), Some(b1.as_tensor().clone())),
            head: Linear::new(w2.as_tensor().clone(), Some(b2.as_tensor().clone())),
            vars: vec![emb, w1, b1, w2, b2],
        })
    }

    /// Logits `[B, K+1, T, V+1]` (contiguous) of tokens `[B, T]` (u32).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let d = self.dims;
        let (b, t) = tokens.dims2()?;
        let x = self.embedding.forward(tokens)?; // [B, T, E]
        let h = self.hidden.forward(&x)?.tanh()?; // [B, T, H]
        self.head
            .forward(&h)? // [B, T, (K+1)*(V+1)]
            .reshape((b, t, d.pauses + 1, d.vocab + 1))?
            .transpose(1, 2)? // depth-major: [B, K+1, T, V+1]
            .contiguous()
    }
}

/// Batch `step` of the task: tokens `[B, T]` (u32) and targets `[B, T]` (i64), where
/// the target of token `x` is `(5x + 3) mod V` and every 7th position is ignored (-1).
pub fn batch(dims: Dims, step: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, v) = (dims.batch, dims.seq, dims.vocab);
    let tokens: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7 + step * 3 + i / t) % v) as u32)
        .collect();
    let targets: Vec<i64> = tokens
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (i + step) % 7 == 0 {
                -1
            } else {
                ((5 * x as usize + 3) % v) as i64
            }
        })
        .collect();
    Ok((
        Tensor::from_vec(tokens, (b, t), &Device::Cpu)?,
        Tensor::from_vec(targets, (b, t), &Device::Cpu)?,
    ))
}

/// The model's mean CYB loss on batch `step`.
pub fn loss(model: &Model, objective: &ResolvedObjective, step: usize) -> Result<Tensor> {
    let (tokens, targets) = batch(model.dims, step)?;
    let logits = model.forward(&tokens)?;
    cyb::candle::cyb_loss(&logits, &targets, objective, Reduction::Mean, None)
}

/// Trains `steps` AdamW steps (f32) and returns the loss before each step.
pub fn train(dims: Dims, objective: &Objective, steps: usize, print: bool) -> Result<Vec<f64>> {
    let objective = objective
        .resolve(dims.pauses)
        .map_err(candle_core::Error::wrap)?;
    let model = Model::new(dims, DType::F32)?;
    let mut opt = AdamW::new(
        model.vars.clone(),
        ParamsAdamW {
            lr: 0.03,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let l = loss(&model, &objective, step)?;
        let value = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if print {
            println!("step {step:3}  loss {value:.5}");
        }
        losses.push(value);
        opt.backward_step(&l)?;
    }
    Ok(losses)
}

#[allow(dead_code)] // tests/candle.rs includes this file as a module
fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps = match args.next() {
        Some(s) => s.parse().map_err(candle_core::Error::wrap)?,
        None => 40,
    };
    let objective: Objective = match args.next() {
        Some(s) => s.parse().map_err(candle_core::Error::wrap)?,
        None => Objective::ap_default(),
    };
    let dims = Dims::default();
    println!("candle trainer, CYB loss {objective}, {dims:?}");
    let losses = train(dims, &objective, steps, true)?;
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        println!("loss {first:.5} -> {last:.5} in {steps} steps");
    }
    Ok(())
}

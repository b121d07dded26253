//! Decoding (docs/MATH.md, "Decoding") with a KV cache, in both attention modes
//! (docs/MATH.md, "Attention: two modes").
//!
//! A readout policy picks the step `S` at which a position answers (greedy threshold
//! on `p(DK)`, `S ~ h`, or forced `S = K`); `p(DK)` includes the model's `dk_bias`.
//!
//! - `private`: adaptive. The keys and values of real tokens never depend on anyone's
//!   pauses, so the cache holds exactly one entry per real position. The pause steps
//!   of the position being answered attend to the cache plus their own pause keys,
//!   which live in a scratch list that is dropped as soon as the position answers. A
//!   token costs `1 + pauses taken` row evaluations.
//! - `shared` (the paper's Recipe 1): later positions attend to earlier positions'
//!   pause steps, so every position runs all `K+1` steps at `push` and all of them go
//!   into the cache, in stream order `(t, 0), .., (t, K), (t+1, 0), ..`. A token costs
//!   `K+1` row evaluations whatever the policy; the policy only picks the readout step.

use crate::config::PauseAttention;
use crate::cpu::gelu::gelu_forward;
use crate::cpu::layernorm::layernorm_forward;
use crate::cpu::linear::linear_forward;
use crate::cpu::loss::{halting_from_scalars, log_add_exp, row_scalar, RowScalar};
use crate::cpu::model::Model;
use crate::cpu::scalar::Scalar;
use crate::error::{CybError, Result};
use crate::number::Num;
use crate::rng::{seeded, CybRng};
use rand::RngExt;

/// When to say DK and how to pick the answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// DK at step `k < K` when `p(DK) > threshold` (default 0.5); answer argmax.
    Greedy { threshold: f64 },
    /// DK drawn with probability `p(DK)`; the answer drawn from the answer distribution
    /// at `temperature`, restricted to the `top_k` most likely tokens (0 = all) and to
    /// the smallest set with mass `>= top_p`.
    Sample {
        temperature: f64,
        top_k: usize,
        top_p: f64,
    },
    /// Always take all `K` pauses, then answer argmax (for comparison).
    ForcedK,
}

impl Policy {
    /// The policy's numbers in range: a greedy threshold that is a number, a sampling
    /// temperature finite and `> 0`, `top_p` in `(0, 1]`.
    pub fn check(&self) -> Result<()> {
        match self {
            Policy::Greedy { threshold } if threshold.is_nan() => {
                Err(CybError::Param("threshold is NaN".into()))
            }
            Policy::Sample { temperature, .. }
                if !(temperature.is_finite() && *temperature > 0.0) =>
            {
                Err(CybError::Param(format!(
                    "--temperature = {}: sampling needs a finite temperature > 0 (the default 1 \
                     works)",
                    Num(*temperature)
                )))
            }
            Policy::Sample { top_p, .. } if !(*top_p > 0.0 && *top_p <= 1.0) => {
                Err(CybError::Param(format!(
                    "--top-p = {}: sampling needs top_p in (0, 1] (the default 1 works)",
                    Num(*top_p)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// One emitted token.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub token: usize,
    /// The readout step `S`: pauses taken before answering.
    pub pauses: usize,
    /// `p(DK)` at every step evaluated: all `K+1` in `shared` mode (and in `private`
    /// mode with [`Decoder::with_full_halting`]), else `pauses + 1`. The entry at `K`
    /// is the model's raw `p(DK)` there, although step `K` must answer.
    pub p_dk: Vec<f64>,
    /// `E[pauses] = sum_k k h_k` under the model's halting distribution `h` (docs/MATH.md,
    /// "Three numbers per step"), when every step's `p(DK)` is known (see `p_dk`).
    pub expected_pauses: Option<f64>,
}

/// Keys and values of one layer, `[len, d]` each (heads contiguous).
#[derive(Clone, Debug, Default)]
struct LayerKv<T> {
    keys: Vec<T>,
    values: Vec<T>,
}

/// Steps one token at a time through a model with a KV cache (real tokens only in
/// `private` mode, every step in `shared` mode).
///
/// ```
/// use cyb::{config::ModelConfig, cpu::model::Model, rng::seeded};
/// use cyb::decode::{Decoder, Policy};
/// let c = ModelConfig { vocab: 7, d_model: 8, n_layer: 1, n_head: 2, t_max: 8, k_max: 2, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
/// let mut dec = Decoder::new(&m, 2, Policy::Greedy { threshold: 0.5 }, 1).unwrap();
/// let out = dec.generate(&[1, 2, 3], 4).unwrap();
/// assert_eq!(out.len(), 4);
/// assert!(out.iter().all(|e| e.pauses <= 2 && e.p_dk.len() == e.pauses + 1));
/// ```
pub struct Decoder<'m, T: Scalar> {
    model: &'m Model<T>,
    pauses_max: usize,
    policy: Policy,
    rng: CybRng,
    /// Keys/values per layer: real tokens (`private`), every step in stream order
    /// (`shared`).
    cache: Vec<LayerKv<T>>,
    /// `private`: pause keys/values of the current position per layer (dropped on the
    /// next push). Unused in `shared` mode.
    scratch: Vec<LayerKv<T>>,
    /// `shared`: logits of steps `1..=K` of the current position, computed at `push`.
    ahead: Vec<Vec<T>>,
    /// Positions pushed so far.
    positions: usize,
    /// Pause steps taken (`private`) or read (`shared`) at the current position.
    depth: usize,
    /// `private`: after the answer, also evaluate the remaining pause steps so that
    /// `p_dk` and `E[pauses]` cover every step (for reports; costs the compute back).
    full_halting: bool,
}

impl<'m, T: Scalar> Decoder<'m, T> {
    /// A decoder allowing up to `pauses` pause steps per token (`<= k_max`). `seed`
    /// seeds the generator of the sampling policy ([`crate::rng::seeded`]; token and
    /// halting draws are `rand`'s uniform `f64`s); the other policies draw nothing.
    pub fn new(model: &'m Model<T>, pauses: usize, policy: Policy, seed: u64) -> Result<Self> {
        model.config.validate()?;
        if pauses > model.config.k_max {
            return Err(CybError::TooManyPauses {
                k: pauses,
                k_max: model.config.k_max,
            });
        }
        policy.check()?;
        let layers = model.config.n_layer;
        Ok(Decoder {
            model,
            pauses_max: pauses,
            policy,
            rng: seeded(seed),
            cache: vec![LayerKv::default(); layers],
            scratch: vec![LayerKv::default(); layers],
            ahead: Vec::new(),
            positions: 0,
            depth: 0,
            full_halting: false,
        })
    }

    /// In `private` mode, evaluate every pause step of a position even after the
    /// policy answered, so that each [`Emitted`] has all `K+1` `p_dk` and
    /// `expected_pauses`. (`shared` mode always has them.)
    pub fn with_full_halting(mut self) -> Self {
        self.full_halting = true;
        self
    }

    fn shared(&self) -> bool {
        self.model.config.pause_attention == PauseAttention::Shared
    }

    /// Positions pushed so far (the position of the next `push`).
    pub fn len(&self) -> usize {
        self.positions
    }

    /// Whether no token has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything (start a new sequence).
    pub fn reset(&mut self) {
        for kv in self.cache.iter_mut().chain(self.scratch.iter_mut()) {
            kv.keys.clear();
            kv.values.clear();
        }
        self.ahead.clear();
        self.positions = 0;
        self.depth = 0;
    }

    /// Feed a real token at the next position; returns the logits `[V+1]` of its step 0.
    /// In `shared` mode this also runs the position's `K` pause steps (later positions
    /// attend to them), whose logits [`Decoder::pause`] then hands out.
    pub fn push(&mut self, token: usize) -> Result<Vec<T>> {
        let c = &self.model.config;
        if token >= c.vocab {
            return Err(CybError::VocabRange {
                id: token as i64,
                index: self.len(),
                vocab: c.vocab,
            });
        }
        if self.len() >= c.t_max {
            return Err(CybError::Shape(format!(
                "the context is full: the model's t_max is {}",
                c.t_max
            )));
        }
        for kv in &mut self.scratch {
            kv.keys.clear();
            kv.values.clear();
        }
        self.depth = 0;
        self.positions += 1;
        let logits = self.step(token, 0);
        if self.shared() {
            self.ahead = (1..=self.pauses_max)
                .map(|k| self.step(self.model.config.vocab, k))
                .collect();
        }
        Ok(logits)
    }

    /// Take one more pause step at the current position; returns its logits `[V+1]`.
    pub fn pause(&mut self) -> Result<Vec<T>> {
        if self.is_empty() {
            return Err(CybError::Shape("pause before any token was pushed".into()));
        }
        if self.depth >= self.pauses_max {
            return Err(CybError::TooManyPauses {
                k: self.depth + 1,
                k_max: self.pauses_max,
            });
        }
        self.depth += 1;
        if self.shared() {
            return Ok(self.ahead[self.depth - 1].clone());
        }
        Ok(self.step(self.model.config.vocab, self.depth))
    }

    /// The three numbers (docs/MATH.md, "Three numbers per step") of a row of logits
    /// `[V+1]`, `e` with the model's DK bias, and its `p(DK) = exp(e - logaddexp(r, e))`.
    fn scalars(&self, logits: &[T]) -> (RowScalar, f64) {
        let s = row_scalar(logits, -1, self.model.config.dk_bias);
        (s, (s.e - log_add_exp(s.r, s.e)).exp())
    }

    /// Decide at which step the current position (the last pushed token) answers and
    /// which token comes next, per the policy. Does not push the answer.
    pub fn answer(&mut self, step0_logits: Vec<T>) -> Result<Emitted> {
        let v = self.model.config.vocab;
        let mut logits = step0_logits;
        let (mut p_dk, mut rows) = (Vec::new(), Vec::new());
        loop {
            let (row, dk) = self.scalars(&logits);
            p_dk.push(dk);
            rows.push(row);
            let k = self.depth;
            let say_dk = k < self.pauses_max
                && match &self.policy {
                    Policy::Greedy { threshold } => dk > *threshold,
                    Policy::Sample { .. } => self.rng.random::<f64>() < dk,
                    Policy::ForcedK => true,
                };
            if !say_dk {
                let real: Vec<f64> = logits[..v]
                    .iter()
                    .map(|x| x.to_f64().unwrap_or(f64::NAN))
                    .collect();
                let token = match &self.policy {
                    Policy::Sample {
                        temperature,
                        top_k,
                        top_p,
                    } => sample(&real, *temperature, *top_k, *top_p, &mut self.rng),
                    _ => argmax(&real),
                };
                // The remaining steps' p(DK), for E[pauses]: already computed in
                // shared mode, evaluated on request in private mode.
                if self.shared() || self.full_halting {
                    while self.depth < self.pauses_max {
                        let next = self.pause()?;
                        let (row, dk) = self.scalars(&next);
                        p_dk.push(dk);
                        rows.push(row);
                    }
                }
                let expected_pauses = (rows.len() == self.pauses_max + 1)
                    .then(|| halting_from_scalars(&rows).expected_pauses());
                return Ok(Emitted {
                    token,
                    pauses: k,
                    p_dk,
                    expected_pauses,
                });
            }
            logits = self.pause()?;
        }
    }

    /// Feed `prompt`, then emit `n` tokens, each with the pauses it took.
    pub fn generate(&mut self, prompt: &[usize], n: usize) -> Result<Vec<Emitted>> {
        if prompt.is_empty() {
            return Err(CybError::Shape("the prompt is empty".into()));
        }
        let c = &self.model.config;
        if prompt.len().saturating_add(n) > c.t_max + 1 {
            // The last new token is emitted, never fed back: t_max + 1 in all.
            let fit = (c.t_max + 1).saturating_sub(prompt.len());
            if fit == 0 {
                return Err(CybError::Shape(format!(
                    "the prompt has {} tokens and fills the model's context t_max = {}: \
                     shorten it to at most {} tokens so that a new token fits",
                    prompt.len(),
                    c.t_max,
                    c.t_max
                )));
            }
            return Err(CybError::Shape(format!(
                "prompt ({} tokens) plus {n} new tokens exceed the context t_max = {}: \
                 {fit} new tokens fit (pass --max-new {fit} or a shorter prompt)",
                prompt.len(),
                c.t_max
            )));
        }
        let mut logits = Vec::new();
        for &tok in prompt {
            // Earlier prompt positions need no readout: their next token is given.
            // (Private: their pauses never change the cache; shared: `push` runs them.)
            logits = self.push(tok)?;
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let e = self.answer(std::mem::take(&mut logits))?;
            if i + 1 < n {
                logits = self.push(e.token)?;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// One row through the model: input `token` at the current position `t` and
    /// depth `k`. Its keys/values go to the cache (depth 0, or any depth in `shared`
    /// mode) or to the scratch (`private` pauses).
    fn step(&mut self, token: usize, k: usize) -> Vec<T> {
        let shared = self.shared();
        let c = &self.model.config;
        let p = &self.model.params;
        let (d, h) = (c.d_model, c.n_head);
        let dh = d / h;
        let t = self.positions - 1;
        let mut x: Vec<T> = (0..d)
            .map(|i| p.tok_emb[token * d + i] + p.pos_emb[t * d + i] + p.depth_emb[k * d + i])
            .collect();
        let (mut ln, mut mean, mut rstd) = (vec![T::zero(); d], [T::zero()], [T::zero()]);
        let mut qkv = vec![T::zero(); 3 * d];
        let mut y = vec![T::zero(); d];
        let mut proj = vec![T::zero(); d];
        let mut fc = vec![T::zero(); 4 * d];
        let mut act = vec![T::zero(); 4 * d];
        let scale = T::of(1.0 / (dh as f64).sqrt());
        for (l, b) in p.blocks.iter().enumerate() {
            layernorm_forward(
                &mut ln,
                &mut mean,
                &mut rstd,
                &x,
                &b.ln1_weight,
                &b.ln1_bias,
                d,
                c.layer_norm_eps,
            );
            linear_forward(
                &mut qkv,
                &ln,
                &b.attn_qkv_weight,
                &b.attn_qkv_bias,
                1,
                d,
                3 * d,
            );
            let kv = if k == 0 || shared {
                &mut self.cache[l]
            } else {
                &mut self.scratch[l]
            };
            kv.keys.extend_from_slice(&qkv[d..2 * d]);
            kv.values.extend_from_slice(&qkv[2 * d..]);
            // Visible keys (docs/MATH.md, "Attention: two modes"). Shared: every step
            // before this one in stream order plus itself = the whole cache. Private: real
            // steps (t' <= t, k' = 0) = the whole cache, then this position's pauses 1..=k
            // = the whole scratch (empty at k = 0).
            let (real, own) = (&self.cache[l], &self.scratch[l]);
            let n_real = real.keys.len() / d;
            let n_own = if k == 0 || shared {
                0
            } else {
                own.keys.len() / d
            };
            for head in 0..h {
                let q = &qkv[head * dh..][..dh];
                let key = |j: usize| {
                    let (src, row) = if j < n_real {
                        (real, j)
                    } else {
                        (own, j - n_real)
                    };
                    (
                        &src.keys[row * d + head * dh..][..dh],
                        &src.values[row * d + head * dh..][..dh],
                    )
                };
                let scores: Vec<T> = (0..n_real + n_own)
                    .map(|j| {
                        key(j)
                            .0
                            .iter()
                            .zip(q)
                            .fold(T::zero(), |a, (&u, &w)| a + u * w)
                            * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(T::neg_infinity(), T::max);
                let w: Vec<T> = scores.iter().map(|&s| (s - m).exp()).collect();
                let z = w.iter().copied().sum::<T>();
                let o = &mut y[head * dh..][..dh];
                o.iter_mut().for_each(|v| *v = T::zero());
                for (j, &wj) in w.iter().enumerate() {
                    let a = wj / z;
                    for (ov, &vv) in o.iter_mut().zip(key(j).1) {
                        *ov += a * vv;
                    }
                }
            }
            linear_forward(
                &mut proj,
                &y,
                &b.attn_proj_weight,
                &b.attn_proj_bias,
                1,
                d,
                d,
            );
            x.iter_mut().zip(&proj).for_each(|(a, &b)| *a += b);
            layernorm_forward(
                &mut ln,
                &mut mean,
                &mut rstd,
                &x,
                &b.ln2_weight,
                &b.ln2_bias,
                d,
                c.layer_norm_eps,
            );
            linear_forward(&mut fc, &ln, &b.mlp_fc_weight, &b.mlp_fc_bias, 1, d, 4 * d);
            gelu_forward(&mut act, &fc);
            linear_forward(
                &mut proj,
                &act,
                &b.mlp_proj_weight,
                &b.mlp_proj_bias,
                1,
                4 * d,
                d,
            );
            x.iter_mut().zip(&proj).for_each(|(a, &b)| *a += b);
        }
        layernorm_forward(
            &mut ln,
            &mut mean,
            &mut rstd,
            &x,
            &p.ln_f_weight,
            &p.ln_f_bias,
            d,
            c.layer_norm_eps,
        );
        let vocab1 = c.vocab + 1;
        let mut logits = vec![T::zero(); vocab1];
        let zero_bias = vec![T::zero(); vocab1];
        linear_forward(&mut logits, &ln, &p.tok_emb, &zero_bias, 1, d, vocab1);
        logits
    }
}

fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Draw from `softmax(x / temperature)` restricted by top-k and top-p.
fn sample<R: rand::Rng + ?Sized>(
    x: &[f64],
    temperature: f64,
    top_k: usize,
    top_p: f64,
    rng: &mut R,
) -> usize {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let m = x[order[0]];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((x[i] - m) / temperature).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    let mut keep = 0;
    let mut mass = 0.0;
    while keep < probs.len() {
        mass += probs[keep];
        keep += 1;
        if mass >= top_p {
            break;
        }
    }
    let u = rng.random::<f64>() * mass;
    let mut acc = 0.0;
    for i in 0..keep {
        acc += probs[i];
        if u < acc {
            return order[i];
        }
    }
    order[keep - 1]
}

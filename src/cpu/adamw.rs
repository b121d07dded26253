//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), global-norm gradient
//! clipping and the learning-rate schedule (linear warmup, then cosine).
//!
//! Weight decay applies to the 2-D tensors only ([`is_matrix`]: every Linear weight
//! and the three embedding tables, GPT-2/nanoGPT practice); biases and LayerNorm
//! parameters are not decayed.

use crate::cpu::params::{is_matrix, Params};

/// AdamW hyper-parameters and state (first and second moments, step count).
///
/// ```
/// use cyb::{config::ModelConfig, cpu::{adamw::AdamW, params::Params}, rng::seeded};
/// let c = ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let mut p: Params<f32> = Params::init(&c, &mut seeded(0));
/// let mut g = Params::zeros(&c);
/// g.ln_f_bias[0] = 1.0;
/// let mut opt = AdamW::new(0.9, 0.95, 1e-8, 0.1);
/// opt.step(&mut p, &g, 1e-3);
/// // The first Adam step moves a zero-init bias by lr * m/(sqrt(v) + eps) = ~lr (eps and
/// // f32 rounding are far below 1e-6).
/// approx::assert_abs_diff_eq!(p.ln_f_bias[0], -1e-3, epsilon = 1e-6);
/// ```
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Steps taken so far (for bias correction).
    t: u64,
    /// First moments, one vector per tensor in the fixed order (empty before step 1).
    m: Vec<Vec<f32>>,
    /// Second moments, likewise.
    v: Vec<Vec<f32>>,
}

/// The state of an [`AdamW`] (its hyper-parameters aside): what a training snapshot
/// saves so that a resumed run takes bit-for-bit the same steps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamWState {
    /// Steps taken.
    pub t: u64,
    /// First moments, one vector per tensor in [`Params::tensors`] order.
    pub m: Vec<Vec<f32>>,
    /// Second moments, likewise.
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// A fresh optimiser (moments are allocated on the first step).
    pub fn new(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> AdamW {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The state a resumed run needs: step count and moments (tensor order of
    /// [`Params::tensors`]; empty before the first step).
    pub fn state(&self) -> AdamWState {
        AdamWState {
            t: self.t,
            m: self.m.clone(),
            v: self.v.clone(),
        }
    }

    /// Restores [`AdamW::state`]: the next [`AdamW::step`] continues exactly where the
    /// saved optimiser stopped (moments of the wrong sizes are reset by `step`).
    pub fn set_state(&mut self, state: AdamWState) {
        self.t = state.t;
        self.m = state.m;
        self.v = state.v;
    }

    /// One AdamW update with learning rate `lr`:
    /// `m = β1 m + (1-β1) g`, `v = β2 v + (1-β2) g²`,
    /// `p -= lr·(m̂ / (sqrt(v̂) + eps) + wd·p)` (decay on matrices only), with
    /// `m̂ = m/(1-β1^t)`, `v̂ = v/(1-β2^t)`.
    ///
    /// `params` and `grads` must come from the same config; the moments are
    /// (re)allocated whenever the tensor sizes do not match them.
    pub fn step(&mut self, params: &mut Params<f32>, grads: &Params<f32>, lr: f32) {
        let g_tensors = grads.tensors();
        let p_tensors = params.tensors_mut();
        let fits = |s: &Vec<Vec<f32>>| {
            s.len() == p_tensors.len()
                && s.iter().zip(&p_tensors).all(|(a, b)| a.len() == b.2.len())
        };
        if !fits(&self.m) || !fits(&self.v) {
            self.m = p_tensors
                .iter()
                .map(|(_, _, x)| vec![0.0; x.len()])
                .collect();
            self.v = self.m.clone();
            self.t = 0;
        }
        self.t += 1;
        let bc1 = 1.0 - (self.beta1 as f64).powf(self.t as f64);
        let bc2 = 1.0 - (self.beta2 as f64).powf(self.t as f64);
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        for (((name, _, p), (_, _, g)), (m, v)) in p_tensors
            .into_iter()
            .zip(g_tensors)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let decay = if is_matrix(&name) {
                self.weight_decay
            } else {
                0.0
            };
            for i in 0..p.len().min(g.len()) {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let m_hat = m[i] as f64 / bc1;
                let v_hat = v[i] as f64 / bc2;
                let update = m_hat / (v_hat.sqrt() + eps as f64) + decay as f64 * p[i] as f64;
                p[i] -= (lr as f64 * update) as f32;
            }
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`, and
/// returns the norm before clipping (summed in f64 in the fixed tensor order).
/// A non-finite norm leaves the gradients untouched (the caller should skip the step).
///
/// ```
/// use cyb::{config::ModelConfig, cpu::{adamw::clip_grad_norm, params::Params}};
/// let c = ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let mut g: Params<f32> = Params::zeros(&c);
/// g.ln_f_bias[0] = 3.0;
/// g.ln_f_bias[1] = 4.0;
/// assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
/// approx::assert_abs_diff_eq!(g.ln_f_bias[0], 0.6, epsilon = 1e-6); // 3/5 in f32: ulps
/// ```
pub fn clip_grad_norm(grads: &mut Params<f32>, max_norm: f32) -> f32 {
    let sq: f64 = grads
        .tensors()
        .iter()
        .map(|(_, _, x)| x.iter().map(|&g| g as f64 * g as f64).sum::<f64>())
        .sum();
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm as f64 {
        let scale = (max_norm as f64 / (norm + 1e-6)) as f32;
        for (_, _, x) in grads.tensors_mut() {
            x.iter_mut().for_each(|g| *g *= scale);
        }
    }
    norm as f32
}

/// Learning rate at `step` (0-based) of `total`: linear warmup from `peak/warmup` to
/// `peak` over the first `warmup` steps, then cosine decay from `peak` to `min`,
/// reaching `min` at `step = total` (and staying there after).
///
/// ```
/// use cyb::cpu::adamw::lr_schedule;
/// assert_eq!(lr_schedule(9, 100, 10, 1e-3, 1e-4), 1e-3);
/// // The cosine's end in f32: within an ulp or two of 1e-4.
/// approx::assert_abs_diff_eq!(lr_schedule(100, 100, 10, 1e-3, 1e-4), 1e-4, epsilon = 1e-9);
/// ```
pub fn lr_schedule(step: usize, total: usize, warmup: usize, peak: f32, min: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    (min as f64 + (peak as f64 - min as f64) * cosine) as f32
}

//! Checks of a run's settings before any work: every number in its range, and the
//! memory the run's shape needs against what the machine has, so that nonsense
//! settings fail with one clear line instead of a plausible report, a capacity
//! overflow or an allocation abort.
//!
//! The CLI calls these before it reads data or builds a model. The checks of a whole
//! run live with its types, on top of these: [`crate::train::TrainConfig::check`],
//! [`crate::train::EvalConfig::check`] (which [`crate::train::train_on`],
//! [`crate::train::evaluate`] and [`crate::experiment::run_experiment`] call, so the
//! library API refuses the same settings). This module knows nothing of training.

use crate::config::{ModelConfig, PauseAttention};
use crate::error::{CybError, Result};
use crate::number::Num;

fn bad(msg: String) -> CybError {
    CybError::Param(msg)
}

/// `x` is finite and `> 0`.
pub fn positive(name: &str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(bad(format!(
            "{name} = {}: must be a finite number > 0",
            Num(x)
        )))
    }
}

/// `x` is finite and `>= 0`.
pub fn non_negative(name: &str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(bad(format!(
            "{name} = {}: must be a finite number >= 0",
            Num(x)
        )))
    }
}

/// A count that must be at least 1.
pub fn at_least_one(name: &str, n: usize) -> Result<()> {
    if n >= 1 {
        Ok(())
    } else {
        Err(bad(format!("{name} = 0: must be at least 1")))
    }
}

/// The greedy policy's DK threshold: a number in [0, 1].
pub fn threshold(x: f64) -> Result<()> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(bad(format!(
            "--threshold = {}: must be a probability in [0, 1] (the default 0.5 works)",
            Num(x)
        )))
    }
}

/// The optimiser and schedule of a training run: `--lr` finite and `> 0`,
/// `--weight-decay` finite and `>= 0`, `--grad-clip` finite and `> 0`, `--steps`,
/// `--batch`, `--ctx` and `--eval-batches` at least 1. Shape-independent, so the CLI
/// checks it before reading any data.
#[allow(clippy::too_many_arguments)]
pub fn check_schedule(
    lr: f32,
    weight_decay: f32,
    grad_clip: f32,
    steps: usize,
    batch: usize,
    seq: usize,
    eval_batches: usize,
) -> Result<()> {
    let (lr, weight_decay) = (Num::from(lr).0, Num::from(weight_decay).0);
    positive("--lr", lr)?;
    non_negative("--weight-decay", weight_decay)?;
    positive("--grad-clip", Num::from(grad_clip).0)?;
    // Decoupled weight decay multiplies every weight by 1 - lr * weight_decay per step:
    // at 1 or more it zeroes or flips the weights, whatever the gradients say.
    let shrink = lr * weight_decay;
    if shrink >= 1.0 {
        return Err(bad(format!(
            "--weight-decay = {} with --lr = {}: AdamW multiplies every weight by \
             1 - lr * weight_decay = {} each step; it must stay above 0, so --weight-decay \
             must be below {} (the default 0.1 works)",
            Num(weight_decay),
            Num(lr),
            crate::number::sig(1.0 - shrink, 4),
            crate::number::sig(1.0 / lr, 4)
        )));
    }
    at_least_one("--steps", steps)?;
    at_least_one("--batch", batch)?;
    at_least_one("--ctx", seq)?;
    at_least_one("--eval-batches", eval_batches)
}

/// The learning rates of a sweep (`cyb experiment --lrs`): at least one, each finite and
/// `> 0`, none given twice (a rate counted twice would be one run reported as two).
///
/// ```
/// use cyb::limits::learning_rates;
/// assert!(learning_rates(&[3e-3, 1e-3]).is_ok());
/// assert!(learning_rates(&[1e-3, 0.001]).is_err()); // the same rate twice
/// assert!(learning_rates(&[]).is_err());
/// ```
pub fn learning_rates(lrs: &[f32]) -> Result<()> {
    if lrs.is_empty() {
        return Err(bad(
            "--lrs: give at least one learning rate (e.g. --lrs 3e-3,1e-3,3e-4)".into(),
        ));
    }
    for (i, &lr) in lrs.iter().enumerate() {
        positive("--lrs", Num::from(lr).0)?;
        if lrs[..i].contains(&lr) {
            return Err(bad(format!(
                "--lrs: {} is given twice; every rate counts once (e.g. --lrs 3e-3,1e-3,3e-4)",
                Num::from(lr)
            )));
        }
    }
    Ok(())
}

/// `--eval-every` of the CLI: at most `--steps` (0 = only at the end); a larger value
/// would silently give a curve of one point. (The library takes any value.)
pub fn eval_every(eval_every: usize, steps: usize) -> Result<()> {
    if eval_every > steps {
        return Err(bad(format!(
            "--eval-every = {eval_every} is more than --steps = {steps} (0 = evaluate only at the end)"
        )));
    }
    Ok(())
}

/// Bytes of one f32 value. Estimates are in f64 bytes: a product of huge sizes
/// saturates to a huge number instead of overflowing.
pub const F32_BYTES: f64 = 4.0;

/// Parameters of a model of this shape (the tensors of docs/MATH.md, "Checkpoints").
pub fn param_count(m: &ModelConfig) -> f64 {
    let d = m.d_model as f64;
    let per_block = 12.0 * d * d + 13.0 * d;
    (m.vocab as f64 + 1.0) * d
        + m.t_max as f64 * d
        + (m.k_max as f64 + 1.0) * d
        + m.n_layer as f64 * per_block
        + 2.0 * d
}

/// Bytes of the activations one forward over `batch x seq` with `pauses` keeps (f32):
/// per layer 16 values of width d and 6 scalars per step row plus the attention
/// weights, then the residual stream, the final LayerNorm and the logits.
pub fn forward_bytes(m: &ModelConfig, batch: usize, seq: usize, pauses: usize) -> f64 {
    let (b, t, k1) = (batch as f64, seq as f64, pauses as f64 + 1.0);
    let rows = b * k1 * t;
    let d = m.d_model as f64;
    let keys = match m.pause_attention {
        PauseAttention::Private => t + pauses as f64,
        PauseAttention::Shared => k1 * t,
    };
    let att = b * m.n_head as f64 * k1 * t * keys;
    let per_layer = rows * (16.0 * d + 6.0) + att;
    let rest = rows * (2.0 * d + 2.0) + rows * (m.vocab as f64 + 1.0);
    F32_BYTES * (m.n_layer as f64 * per_layer + rest)
}

/// An experiment compares pause variants with the no-pause baseline: `K >= 1`.
pub fn experiment_pauses(pauses: usize) -> Result<()> {
    if pauses == 0 {
        return Err(bad(
            "--pauses = 0: the experiment compares pause variants with the no-pause \
             baseline, so it needs K >= 1 (use `cyb train --pauses 0` for a plain GPT)"
                .into(),
        ));
    }
    Ok(())
}

/// An environment variable the program reads, as a number `>= min`: `None` when unset;
/// a value that does not parse, is not finite or is below `min` is an error naming the
/// variable and a value that works (`example`), never a silent fall-back to the default.
pub fn env_number(name: &str, min: f64, example: &str) -> Result<Option<f64>> {
    let Some(raw) = std::env::var_os(name) else {
        return Ok(None);
    };
    let text = raw.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= min => Ok(Some(x)),
        _ => Err(bad(format!(
            "environment variable {name}={text:?}: must be a finite number >= {}, e.g. \
             {name}={example} (or unset it for the default)",
            Num(min)
        ))),
    }
}

/// Seconds between the plain progress lines written when stderr is not a terminal:
/// `$CYB_PROGRESS_SECS` (a number `>= 0`), default 10.
pub fn progress_secs() -> Result<f64> {
    Ok(env_number("CYB_PROGRESS_SECS", 0.0, "30")?.unwrap_or(10.0))
}

/// The memory a run may use: `$CYB_MEMORY_LIMIT` (bytes, at least 1) if set, else the
/// machine's available memory (`MemAvailable` of /proc/meminfo, or less where the
/// process's cgroup allows less: `memory.max - memory.current`); `None` where neither
/// is known. A bad `$CYB_MEMORY_LIMIT` is an error.
pub fn memory_limit() -> Result<Option<f64>> {
    if let Some(n) = env_number("CYB_MEMORY_LIMIT", 1.0, "8000000000")? {
        return Ok(Some(n));
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let available = read("/proc/meminfo").and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024.0)
    });
    let number = |p: &str| read(p).and_then(|v| v.trim().parse::<f64>().ok());
    let cgroup = number("/sys/fs/cgroup/memory.max")
        .map(|max| (max - number("/sys/fs/cgroup/memory.current").unwrap_or(0.0)).max(0.0));
    Ok(match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    })
}

/// Bytes as B, KiB, MiB, GiB, TiB or in powers of ten beyond.
pub fn human_bytes(x: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = x;
    for u in UNITS {
        if v < 1024.0 {
            return format!("{v:.1} {u}");
        }
        v /= 1024.0;
    }
    format!("{x:.1e} B")
}

/// Refuses `need` bytes when it exceeds [`memory_limit`]; where the limit is unknown
/// only sizes no machine has (over 2^60 bytes) are refused.
pub fn check_memory(what: &str, need: f64) -> Result<()> {
    let limit = memory_limit()?.unwrap_or(2f64.powi(60));
    if need.is_finite() && need <= limit {
        return Ok(());
    }
    Err(bad(format!(
        "{what} needs about {} of memory, more than the {} available (the estimate grows \
         with --ctx, --pauses, --batch, --d-model, --layers, the vocabulary and --steps; \
         make them smaller, or set CYB_MEMORY_LIMIT in bytes to override the limit)",
        human_bytes(need),
        human_bytes(limit)
    )))
}

//! GPU smoke run of the pretrained-model path at GPT-2 small's shape (V = 50257 + 1,
//! d 768, 12 layers, 12 heads, 1024 positions): writes a **random** GPT-2 in Hugging
//! Face's own layout (f32 `model.safetensors` with the causal-mask buffers the hub's
//! `gpt2` file carries, `config.json`, a `tokenizer.json` naming 50257 ids), imports it
//! with `cyb::hf_import` (`K = 3`, shared pauses, DK prior 0.9), and fine-tunes it for
//! 30 bf16 CYB-AP steps on the GPU. Prints the loss of every step, real tokens/s and the
//! peak device memory of its buffers ([`cyb::gpu::memory::PeakMemory`]); exits non-zero
//! unless the loss falls (mean of the last 5 steps below the mean of the first 5). No
//! weights are downloaded: the weights are random, so the numbers measure speed and
//! memory, not quality.
//!
//! ```text
//! cargo run --release --features cuda --example gpt2_finetune_smoke            # GPT-2 124M shape
//! cargo run --release --features cuda --example gpt2_finetune_smoke -- tiny    # 2 layers, d 128 (emulator)
//! ```
//!
//! `scripts/device_bundle.sh` builds it and `run_all.sh` runs it on the GPU machine.

use cyb::config::{PauseAttention, Precision};
use cyb::data::task_by_name;
use cyb::gpu::{memory::PeakMemory, GpuContext};
use cyb::hf_import::{import, ImportOptions};
use cyb::rng::seeded;
use cyb::train::{train_on, TrainConfig, TrainDevice};
use cyb::{CybError, Objective, Result};
use rand::RngExt;
use rand_distr::StandardNormal;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// A GPT-2 shape: vocabulary, width, layers, heads, positions; the run: batch, context.
struct Shape {
    vocab: usize,
    d: usize,
    layers: usize,
    heads: usize,
    positions: usize,
    batch: usize,
    ctx: usize,
}

const GPT2_SMALL: Shape = Shape {
    vocab: 50257,
    d: 768,
    layers: 12,
    heads: 12,
    positions: 1024,
    batch: 4,
    ctx: 1024,
};

/// The smallest shape the attention kernels take (d_head 64), for the emulator.
const TINY: Shape = Shape {
    vocab: 300,
    d: 128,
    layers: 2,
    heads: 2,
    positions: 32,
    batch: 2,
    ctx: 32,
};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CybError + '_ {
    move |e| CybError::io(path, e)
}

/// Writes a random GPT-2 (normal(0, 0.02) weights, zero biases, unit LayerNorm gains)
/// in Hugging Face's layout into `dir`.
fn write_random_gpt2(dir: &Path, s: &Shape) -> Result<()> {
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": s.vocab, "n_embd": s.d, "n_layer": s.layers, "n_head": s.heads,
        "n_positions": s.positions, "n_ctx": s.positions, "n_inner": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true, "scale_attn_weights": true,
    });
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).map_err(io(&path))?;
    let mut vocab = serde_json::Map::new();
    for id in 0..s.vocab - 1 {
        vocab.insert(format!("t{id}"), id.into());
    }
    let tokenizer = serde_json::json!({
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "added_tokens": [{"id": s.vocab - 1, "content": "<|endoftext|>", "special": true}],
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_string()).map_err(io(&path))?;

    let mut rng = seeded(124);
    let d = s.d;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut normal = |shape: Vec<usize>| -> (Vec<usize>, Vec<f32>) {
        let n = shape.iter().product();
        let x = (0..n)
            .map(|_| 0.02 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        (shape, x)
    };
    let (sh, x) = normal(vec![s.vocab, d]);
    tensors.push(("wte.weight".into(), sh, x));
    let (sh, x) = normal(vec![s.positions, d]);
    tensors.push(("wpe.weight".into(), sh, x));
    let mask: Vec<f32> = (0..s.positions * s.positions)
        .map(|i| f32::from(i % s.positions <= i / s.positions))
        .collect();
    for l in 0..s.layers {
        let h = |n: &str| format!("h.{l}.{n}");
        for (name, shape) in [
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
        ] {
            let (sh, x) = normal(shape);
            tensors.push((h(name), sh, x));
        }
        for (name, len, value) in [
            ("ln_1.weight", d, 1.0),
            ("ln_1.bias", d, 0.0),
            ("ln_2.weight", d, 1.0),
            ("ln_2.bias", d, 0.0),
            ("attn.c_attn.bias", 3 * d, 0.0),
            ("attn.c_proj.bias", d, 0.0),
            ("mlp.c_fc.bias", 4 * d, 0.0),
            ("mlp.c_proj.bias", d, 0.0),
        ] {
            tensors.push((h(name), vec![len], vec![value; len]));
        }
        tensors.push((
            h("attn.bias"),
            vec![1, 1, s.positions, s.positions],
            mask.clone(),
        ));
        tensors.push((h("attn.masked_bias"), vec![], vec![-1e4]));
    }
    tensors.push(("ln_f.weight".into(), vec![d], vec![1.0; d]));
    tensors.push(("ln_f.bias".into(), vec![d], vec![0.0; d]));
    let views = tensors
        .iter()
        .map(|(n, sh, x)| {
            TensorView::new(Dtype::F32, sh.clone(), bytemuck::cast_slice(x))
                .map(|v| (n.clone(), v))
                .map_err(|e| CybError::Shape(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| CybError::Shape(format!("{}: {e}", path.display())))
}

fn main() -> Result<()> {
    let tiny = std::env::args().nth(1).as_deref() == Some("tiny");
    let s = if tiny { TINY } else { GPT2_SMALL };
    let dir = std::env::temp_dir().join(format!("cyb-gpt2-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let t0 = std::time::Instant::now();
    write_random_gpt2(&dir, &s)?;
    let opts = ImportOptions {
        pauses: 3,
        pause_attention: PauseAttention::Shared,
        dk_prior: 0.9,
    };
    let model = import(&dir, &opts)?.model;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "random GPT-2 (V = {} + 1, d {}, {} layers, {} heads, {} positions, {:.1} M parameters) \
         written and imported in {:.1} s",
        s.vocab,
        s.d,
        s.layers,
        s.heads,
        s.positions,
        model.params.num_params() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let data = task_by_name("modsum")?;
    let steps = 30;
    let cfg = TrainConfig {
        model: model.config.clone(),
        objective: Objective::ap_default(),
        pauses: 3,
        steps,
        batch: s.batch,
        seq: s.ctx,
        lr: 3e-4,
        min_lr_ratio: 0.1,
        warmup: 3,
        weight_decay: 0.1,
        grad_clip: 1.0,
        seed: 1,
        eval_every: 0,
        eval_batches: 1,
        // The training step's default: the LM head fused with the loss.
        head: Default::default(),
    };
    // The peak of every buffer of the run, temporaries freed inside a step included: the
    // memory pool's high watermark (the training step resets it once more when it
    // starts, after uploading the model it then holds, so the end reads the whole run).
    let gpu = GpuContext::new(0)?;
    let meter = PeakMemory::new(&gpu)?;
    let out = train_on(
        &cfg,
        data.as_ref(),
        Some(model),
        false,
        TrainDevice::Cuda(Precision::Bf16),
    )?;
    gpu.synchronize()?;
    let peak = match &meter {
        Some(m) => format!(
            "peak device memory {:.1} MiB (the memory pool's high watermark)",
            m.peak_bytes()?.saturating_sub(m.start_bytes()) as f64 / (1u64 << 20) as f64
        ),
        None => "no peak device memory (the device has no memory pool)".into(),
    };
    let losses: Vec<f64> = out.history.iter().map(|h| h.loss).collect();
    for h in &out.history {
        println!(
            "step {:>2}  loss {:.4}  E[pauses] {:.3}  grad norm {:.3}",
            h.step + 1,
            h.loss,
            h.mean_pauses,
            h.grad_norm
        );
    }
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    println!(
        "gpu gpt2-smoke{}: 30 bf16 steps B={} T={} K=3 shared ap: loss {first:.3} -> {last:.3} \
         (mean of first/last 5), {:.0} real tokens/s, {:.1} s training, {peak}",
        if tiny { " (tiny)" } else { "" },
        s.batch,
        s.ctx,
        out.tokens_per_sec,
        out.seconds
    );
    if last.is_finite() && last < first {
        Ok(())
    } else {
        Err(CybError::Param(format!(
            "the loss did not fall: first 5 steps {first}, last 5 {last}"
        )))
    }
}

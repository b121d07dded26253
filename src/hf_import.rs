//! Import a Hugging Face GPT-2 checkpoint (`config.json`, `model.safetensors`,
//! `tokenizer.json`) as a CYB model: the paper's "tail patching" starting point
//! (arXiv 2510.13879, section 5: a pretrained model gains the PAUSE input and the DK
//! output, then is fine-tuned with pauses).
//!
//! What the import does, and why:
//!
//! - Every GPT-2 tensor maps to its checkpoint name. Hugging Face's `Conv1D`
//!   layers (`c_attn`, `c_proj`, `c_fc`) store weights `[in, out]` (`y = x W + b`);
//!   a CYB checkpoint stores `[out, in]`, so they are transposed. `c_attn`'s outputs
//!   are already ordered q, k, v with heads contiguous, as the checkpoint's `qkv`.
//! - Names with or without the `transformer.` prefix (`GPT2LMHeadModel` or `GPT2Model`
//!   files) are read alike; the causal-mask buffers older files carry
//!   (`h.{i}.attn.bias`, `h.{i}.attn.masked_bias`) are recognised and skipped (the mask
//!   is the attention rule of docs/MATH.md, "Attention: two modes", not a weight);
//!   `lm_head.weight` may be absent (tied) or present and equal to `wte.weight`.
//! - The PAUSE/DK row `V` of `tok_emb` is the **mean of the `V` real-token rows**. As
//!   the DK output vector it makes the DK logit the mean of the real logits, so the DK
//!   probability no longer depends on the absolute level of the logits (GPT-2's logits
//!   are around -100): `d_k = sigmoid(mean(z) - logsumexp(z) + b_DK)`, which with
//!   `b_DK = log(psi/(1-psi)) + log V` is exactly `psi` for a uniform prediction and
//!   less the more confident the model is (Jensen: `logsumexp(z) >= mean(z) + log V`).
//!   As the PAUSE input it is an "average token", the row Hugging Face itself gives new
//!   tokens (`resize_token_embeddings`' mean initialisation). A zero row would give a DK
//!   logit of 0, and with GPT-2's negative logits `p(DK) ~ 1` everywhere.
//! - The depth table is all zeros: `D[0] = 0` makes step 0 compute exactly what the
//!   pretrained model computes, and the pause depths start equal (they differ through
//!   what they attend to, and training separates them).
//! - `dk_bias` comes from the DK prior `psi` (`--dk-prior`, default 0.9, the paper's).
//! - The LayerNorm epsilon is the model's `layer_norm_epsilon`, kept in the config.
//!
//! Whatever the import cannot represent exactly is an error naming the key or tensor
//! and its value, never a silently different model: another `model_type`, another
//! activation than the tanh GELU, `n_inner` other than `4 n_embd`, attention variants
//! (`scale_attn_by_inverse_layer_idx`, `reorder_and_upcast_attn`, no
//! `scale_attn_weights`, `add_cross_attention`), an untied head that differs from the
//! embedding, missing or extra tensors, wrong shapes, non-finite weights, a tokenizer
//! with ids the model has no row for.
//!
//! The tokenizer travels with the checkpoint ([`import_to_file`]), as
//! [`crate::checkpoint_tokenizer`] saves it: `tokenizer.json` is copied verbatim beside
//! it as `<stem>.tokenizer.json`, and the checkpoint's `__metadata__` gains the key
//! [`crate::checkpoint_tokenizer::METADATA_KEY`] whose value is the JSON string
//! `{"file":"<that name>","sha256":"<hex>"}` (the file relative to the checkpoint's
//! folder).

use crate::checkpoint;
use crate::checkpoint_tokenizer;
use crate::config::{ModelConfig, PauseAttention};
use crate::cpu::model::Model;
use crate::cpu::params::{BlockParams, Params};
use crate::error::{CybError, Result};
use crate::input_file::{read_bounded, MAX_METADATA_BYTES, MAX_TOKENIZER_BYTES};
use crate::objective::dk_bias_from_prior;
use safetensors::tensor::SafeTensors;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The `activation_function` values that are the tanh GELU of docs/MATH.md ("The model").
const TANH_GELUS: [&str; 2] = ["gelu_new", "gelu_pytorch_tanh"];

/// How the imported model gains its pauses.
///
/// ```
/// let o = cyb::hf_import::ImportOptions::default();
/// assert_eq!((o.pauses, o.dk_prior), (3, 0.9));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOptions {
    /// `k_max`: pause steps the model can take per position (the depth table has
    /// `pauses + 1` rows). 0 imports a plain GPT.
    pub pauses: usize,
    /// The attention mode of the pause steps (docs/MATH.md, "Attention: two modes").
    pub pause_attention: PauseAttention,
    /// The DK prior `psi` in `[0, 1)` that sets `dk_bias` (0 = no bias).
    pub dk_prior: f64,
}

impl Default for ImportOptions {
    /// The paper's setting: `K = 3`, `shared` pauses (its Recipe 1), `psi = 0.9`.
    fn default() -> Self {
        ImportOptions {
            pauses: 3,
            pause_attention: PauseAttention::Shared,
            dk_prior: 0.9,
        }
    }
}

/// A model read from a Hugging Face folder, with its tokenizer file.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The CYB model (f32).
    pub model: Model<f32>,
    /// `HF_DIR/tokenizer.json`.
    pub tokenizer_path: PathBuf,
    /// Its bytes, as copied beside an imported checkpoint.
    pub tokenizer_bytes: Vec<u8>,
    /// Token ids the tokenizer can produce (its largest id + 1); at most `vocab`.
    pub tokenizer_vocab: usize,
}

impl Imported {
    /// Lowercase hex SHA-256 of the tokenizer file, as recorded in the metadata.
    pub fn tokenizer_sha256(&self) -> String {
        checkpoint_tokenizer::sha256_hex(&self.tokenizer_bytes)
    }
}

fn bad(dir: &Path, msg: impl Into<String>) -> CybError {
    CybError::Checkpoint {
        path: dir.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads `dir/config.json`, `dir/model.safetensors` and `dir/tokenizer.json` and builds
/// the CYB model they describe (see the module docs for the mapping).
///
/// ```
/// use cyb::hf_import::{import, ImportOptions};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/hf/tiny-gpt2");
/// let plain = ImportOptions { pauses: 0, ..Default::default() };
/// let hf = import(dir.as_ref(), &plain).unwrap();
/// assert_eq!((hf.model.config.vocab, hf.model.config.d_model), (1000, 64));
/// assert_eq!(hf.model.config.k_max, 0);
/// ```
pub fn import(dir: &Path, opts: &ImportOptions) -> Result<Imported> {
    let cfg_path = dir.join("config.json");
    let text = read_bounded(&cfg_path, "config.json", MAX_METADATA_BYTES)?;
    let json: Value = serde_json::from_slice(&text)
        .map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}")))?;
    let hf = HfConfig::read(&json).map_err(|m| bad(&cfg_path, m))?;

    let tok_path = dir.join("tokenizer.json");
    let tokenizer_bytes = read_bounded(&tok_path, "tokenizer.json", MAX_TOKENIZER_BYTES)?;
    let tokenizer_vocab = tokenizer_vocab(&tokenizer_bytes).map_err(|m| bad(&tok_path, m))?;
    if tokenizer_vocab > hf.vocab_size {
        return Err(bad(
            dir,
            format!(
                "config.json vocab_size = {} but tokenizer.json has ids up to {}: the model \
                 has no embedding row for the tokenizer's last {} ids",
                hf.vocab_size,
                tokenizer_vocab - 1,
                tokenizer_vocab - hf.vocab_size
            ),
        ));
    }

    let st_path = dir.join("model.safetensors");
    let bytes = std::fs::read(&st_path).map_err(|e| CybError::io(&st_path, e))?;
    let weights = read_weights(&bytes, &hf).map_err(|m| bad(&st_path, m))?;

    let config = ModelConfig {
        vocab: hf.vocab_size,
        d_model: hf.n_embd,
        n_layer: hf.n_layer,
        n_head: hf.n_head,
        t_max: hf.n_positions,
        k_max: opts.pauses,
        pause_attention: opts.pause_attention,
        dk_bias: dk_bias_from_prior(opts.dk_prior, hf.vocab_size)?,
        layer_norm_eps: hf.layer_norm_epsilon,
    };
    config
        .validate()
        .map_err(|e| bad(&cfg_path, e.to_string()))?;
    let model = Model::new(config.clone(), weights.into_params(&config))?;
    Ok(Imported {
        model,
        tokenizer_path: tok_path,
        tokenizer_bytes,
        tokenizer_vocab,
    })
}

/// [`import`], then writes the model to `out` (an ordinary CYB checkpoint, atomically)
/// with its tokenizer file beside it, byte for byte, as
/// [`checkpoint_tokenizer::save_with_tokenizer_file`] does (`<out stem>.tokenizer.json`,
/// recorded with its hash in the checkpoint's metadata). Returns what was imported.
pub fn import_to_file(dir: &Path, out: &Path, opts: &ImportOptions) -> Result<Imported> {
    crate::atomic_file::check_writable_file(out)?;
    let imported = import(dir, opts)?;
    checkpoint_tokenizer::save_with_tokenizer_file(
        out,
        &imported.model,
        &imported.tokenizer_bytes,
    )?;
    Ok(imported)
}

/// The ids a `tokenizer.json` can produce: its largest id + 1, over the model's
/// vocabulary and the added tokens.
fn tokenizer_vocab(bytes: &[u8]) -> std::result::Result<usize, String> {
    let json: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let vocab = json
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or("no `model.vocab` object (not a Hugging Face tokenizers file?)")?;
    let added = json
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.get("id")).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut max = None;
    for id in vocab.values().chain(added) {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("token id {id} is not a non-negative integer"))?;
        max = max.max(Some(id));
    }
    let max = max.ok_or("the vocabulary is empty")?;
    usize::try_from(max + 1).map_err(|_| format!("token id {max} is too large"))
}

/// The `config.json` keys that decide the model, checked for what a CYB model can
/// represent.
#[derive(Debug)]
struct HfConfig {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_positions: usize,
    layer_norm_epsilon: f64,
    tie_word_embeddings: bool,
}

impl HfConfig {
    fn read(json: &Value) -> std::result::Result<HfConfig, String> {
        let obj = json.as_object().ok_or("not a JSON object")?;
        match obj.get("model_type") {
            Some(Value::String(t)) if t == "gpt2" => {}
            Some(other) => {
                return Err(format!(
                    "model_type = {other}: only \"gpt2\" models can be imported (a CYB \
                     model is GPT-2's architecture: docs/MATH.md, \"The model\")"
                ))
            }
            None => return Err("no model_type (expected \"gpt2\")".into()),
        }
        let size = |key: &str| -> std::result::Result<usize, String> {
            match obj.get(key) {
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("{key} = {v}: expected a positive integer")),
                None => Err(format!("no {key}")),
            }
        };
        let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("{key} = {v}: expected true or false")),
            }
        };
        let n_embd = size("n_embd")?;
        let activation = match obj.get("activation_function") {
            None => "gelu_new".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("activation_function = {v}: expected a string")),
        };
        if !TANH_GELUS.contains(&activation.as_str()) {
            return Err(format!(
                "activation_function = \"{activation}\": the model's MLP is the tanh GELU \
                 (docs/MATH.md, \"The model\"), which is {TANH_GELUS:?}"
            ));
        }
        match obj.get("n_inner") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(4 * n_embd as u64) => {}
            Some(v) => {
                return Err(format!(
                    "n_inner = {v}: the MLP width must be 4 n_embd = {} (docs/MATH.md, \
                     \"The model\")",
                    4 * n_embd
                ))
            }
        }
        for (key, allowed, why) in [
            (
                "scale_attn_by_inverse_layer_idx",
                false,
                "attention scores are scaled by 1/sqrt(d_head) only",
            ),
            (
                "reorder_and_upcast_attn",
                false,
                "the attention is computed in one order and precision, without HF's reordering",
            ),
            (
                "scale_attn_weights",
                true,
                "attention scores are always scaled by 1/sqrt(d_head)",
            ),
            (
                "add_cross_attention",
                false,
                "the model has no cross-attention",
            ),
        ] {
            let default = allowed;
            let v = flag(key, default)?;
            if v != allowed {
                return Err(format!("{key} = {v}: not representable ({why})"));
            }
        }
        let layer_norm_epsilon = match obj.get("layer_norm_epsilon") {
            None => 1e-5,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("layer_norm_epsilon = {v}: expected a number"))?,
        };
        if !(layer_norm_epsilon > 0.0
            && layer_norm_epsilon <= 1.0
            && (layer_norm_epsilon as f32) > 0.0)
        {
            return Err(format!(
                "layer_norm_epsilon = {layer_norm_epsilon}: must be in (0, 1] and a positive f32"
            ));
        }
        Ok(HfConfig {
            vocab_size: size("vocab_size")?,
            n_embd,
            n_layer: size("n_layer")?,
            n_head: size("n_head")?,
            n_positions: size("n_positions")?,
            layer_norm_epsilon,
            tie_word_embeddings: flag("tie_word_embeddings", true)?,
        })
    }
}

/// GPT-2's tensors as f32, in the checkpoint orientation (`[out, in]`).
struct HfWeights {
    wte: Vec<f32>,
    wpe: Vec<f32>,
    blocks: Vec<BlockParams<f32>>,
    ln_f_weight: Vec<f32>,
    ln_f_bias: Vec<f32>,
}

impl HfWeights {
    /// The CYB parameters: `tok_emb` = `wte` plus the mean row (PAUSE/DK), a zero
    /// depth table.
    fn into_params(self, c: &ModelConfig) -> Params<f32> {
        let d = c.d_model;
        let mut tok_emb = self.wte;
        let mut mean = vec![0f64; d];
        for row in tok_emb.chunks(d) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        tok_emb.extend(mean.iter().map(|&m| (m / c.vocab as f64) as f32));
        Params {
            tok_emb,
            pos_emb: self.wpe,
            depth_emb: vec![0.0; (c.k_max + 1) * d],
            blocks: self.blocks,
            ln_f_weight: self.ln_f_weight,
            ln_f_bias: self.ln_f_bias,
        }
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// Reads every GPT-2 tensor of `bytes` (a `model.safetensors`), checking names, shapes
/// and values against `hf`.
fn read_weights(bytes: &[u8], hf: &HfConfig) -> std::result::Result<HfWeights, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let names: BTreeSet<&str> = st.names().into_iter().collect();
    let prefixed = names.iter().any(|n| n.starts_with("transformer."));
    let prefix = if prefixed { "transformer." } else { "" };
    let (v, d, p) = (hf.vocab_size, hf.n_embd, hf.n_positions);
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut take = |name: &str, shape: &[usize]| -> std::result::Result<Vec<f32>, String> {
        let full = format!("{prefix}{name}");
        let view = st.tensor(&full).map_err(|_| {
            format!("missing tensor {full} (expected shape {shape:?} for this config.json)")
        })?;
        if view.shape() != shape {
            return Err(format!(
                "tensor {full} has shape {:?}, expected {shape:?} for this config.json",
                view.shape()
            ));
        }
        let data = checkpoint::decode(&full, &view)?;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "tensor {full} has a non-finite weight ({} at flat index {i})",
                data[i]
            ));
        }
        used.insert(full);
        Ok(data)
    };
    let wte = take("wte.weight", &[v, d])?;
    let wpe = take("wpe.weight", &[p, d])?;
    let mut blocks = Vec::with_capacity(hf.n_layer);
    for i in 0..hf.n_layer {
        let h = |s: &str| format!("h.{i}.{s}");
        blocks.push(BlockParams {
            ln1_weight: take(&h("ln_1.weight"), &[d])?,
            ln1_bias: take(&h("ln_1.bias"), &[d])?,
            attn_qkv_weight: transpose(&take(&h("attn.c_attn.weight"), &[d, 3 * d])?, d, 3 * d),
            attn_qkv_bias: take(&h("attn.c_attn.bias"), &[3 * d])?,
            attn_proj_weight: transpose(&take(&h("attn.c_proj.weight"), &[d, d])?, d, d),
            attn_proj_bias: take(&h("attn.c_proj.bias"), &[d])?,
            ln2_weight: take(&h("ln_2.weight"), &[d])?,
            ln2_bias: take(&h("ln_2.bias"), &[d])?,
            mlp_fc_weight: transpose(&take(&h("mlp.c_fc.weight"), &[d, 4 * d])?, d, 4 * d),
            mlp_fc_bias: take(&h("mlp.c_fc.bias"), &[4 * d])?,
            mlp_proj_weight: transpose(&take(&h("mlp.c_proj.weight"), &[4 * d, d])?, 4 * d, d),
            mlp_proj_bias: take(&h("mlp.c_proj.bias"), &[d])?,
        });
    }
    let ln_f_weight = take("ln_f.weight", &[d])?;
    let ln_f_bias = take("ln_f.bias", &[d])?;

    // The output head: absent (tied) or an exact copy of the embedding.
    if names.contains("lm_head.weight") {
        let view = st.tensor("lm_head.weight").map_err(|e| e.to_string())?;
        if view.shape() != [v, d] {
            return Err(format!(
                "tensor lm_head.weight has shape {:?}, expected {:?} (the embedding's)",
                view.shape(),
                [v, d]
            ));
        }
        let head = checkpoint::decode("lm_head.weight", &view)?;
        if let Some(i) = head
            .iter()
            .zip(&wte)
            .position(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(format!(
                "lm_head.weight differs from {prefix}wte.weight (first at row {}, column {}: \
                 {} vs {}): an untied output head cannot be represented (a CYB model ties \
                 the head to the embedding: docs/MATH.md, \"Tokens\")",
                i / d,
                i % d,
                head[i],
                wte[i]
            ));
        }
        used.insert("lm_head.weight".into());
    } else if !hf.tie_word_embeddings {
        return Err(
            "tie_word_embeddings = false but there is no lm_head.weight: an untied output \
             head cannot be represented (a CYB model ties the head to the embedding: docs/MATH.md, \"Tokens\")"
                .into(),
        );
    }

    // Everything else must be a causal-mask buffer of an existing layer.
    let is_buffer = |n: &str| {
        let rest = n.strip_prefix(prefix).unwrap_or(n);
        (0..hf.n_layer).any(|i| {
            rest == format!("h.{i}.attn.bias") || rest == format!("h.{i}.attn.masked_bias")
        })
    };
    let extra: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !used.contains(*n) && !is_buffer(n))
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "unexpected tensors {extra:?} (not part of a {}-layer GPT-2{})",
            hf.n_layer,
            if prefixed {
                " with `transformer.` names"
            } else {
                " without the `transformer.` prefix"
            }
        ));
    }
    Ok(HfWeights {
        wte,
        wpe,
        blocks,
        ln_f_weight,
        ln_f_bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_its_own_inverse_and_moves_elements() {
        let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = transpose(&x, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), x);
    }

    #[test]
    fn tokenizer_vocab_counts_added_tokens() {
        let j = br#"{"model":{"vocab":{"a":0,"b":1}},"added_tokens":[{"id":5,"content":"x"}]}"#;
        assert_eq!(tokenizer_vocab(j).unwrap(), 6);
        assert!(tokenizer_vocab(br#"{"model":{}}"#).is_err());
        assert!(tokenizer_vocab(b"nonsense").is_err());
    }
}

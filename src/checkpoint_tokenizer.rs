//! The tokenizer that travels with a checkpoint, so that `eval`, `generate` and
//! `train --load` encode text as the model was trained without being told again.
//!
//! A model trained with a Hugging Face tokenizer (`--tokenizer`, `--bpe`, or imported)
//! is saved as `NAME.safetensors` plus `NAME.tokenizer.json` beside it, and the
//! checkpoint's `__metadata__` gets the key `"tokenizer"` whose value is the JSON string
//! `{"file":"NAME.tokenizer.json","sha256":"<hex of the file's bytes>"}` (`file` relative
//! to the checkpoint's folder). A byte-level model (`V = 256`) has no such key. On load
//! the file must exist and have that hash: a changed or missing file is an error, never
//! a silently different tokenization.
//!
//! ```
//! use cyb::{checkpoint_tokenizer, config::ModelConfig, cpu::model::Model, rng::seeded};
//! use cyb::tokenizer::TextTokenizer;
//! let text = "a tokenizer travels with its model. ".repeat(20);
//! let tok = TextTokenizer::train_bpe(&text, 280).unwrap();
//! let c = ModelConfig { vocab: tok.vocab(), d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
//! let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
//! let dir = std::env::temp_dir().join(format!("cyb_doc_tok_{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! checkpoint_tokenizer::save(&dir.join("m.safetensors"), &m, &tok).unwrap();
//! assert!(dir.join("m.tokenizer.json").exists());
//! let (back, back_tok) = checkpoint_tokenizer::load(&dir.join("m.safetensors")).unwrap();
//! assert_eq!(back, m);
//! assert_eq!(back_tok.unwrap().encode("its model").unwrap(), tok.encode("its model").unwrap());
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use crate::checkpoint;
use crate::cpu::model::Model;
use crate::data::DataSource;
use crate::error::{CybError, Result};
use crate::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The `__metadata__` key that names the tokenizer file.
pub const METADATA_KEY: &str = "tokenizer";

/// The value of the `tokenizer` metadata entry (a JSON object, stored as its string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerRef {
    /// The tokenizer file, relative to the checkpoint's folder.
    pub file: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `NAME.tokenizer.json` for the checkpoint `NAME.safetensors` (its file stem).
pub fn tokenizer_file_name(checkpoint: &Path) -> Result<String> {
    let stem = checkpoint
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CybError::Param(format!(
                "{}: a checkpoint path needs a UTF-8 file name to name its tokenizer file",
                checkpoint.display()
            ))
        })?;
    Ok(format!("{stem}.tokenizer.json"))
}

fn folder_of(checkpoint: &Path) -> PathBuf {
    match checkpoint.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where [`save`] writes the tokenizer of `checkpoint`: [`tokenizer_file_name`] in the
/// checkpoint's folder.
pub fn tokenizer_path(checkpoint: &Path) -> Result<PathBuf> {
    Ok(folder_of(checkpoint).join(tokenizer_file_name(checkpoint)?))
}

/// Saves `model` to `checkpoint`; a Hugging Face tokenizer is written first (atomically)
/// as `NAME.tokenizer.json` beside it and named with its hash in the metadata, so the
/// checkpoint never names a file that is not there. Bytes need no file: a plain
/// [`checkpoint::save`].
pub fn save(checkpoint: &Path, model: &Model<f32>, tokenizer: &TextTokenizer) -> Result<()> {
    save_with(checkpoint, model, tokenizer, &[])
}

/// [`save`] with `extra` `__metadata__` entries besides `config` and `tokenizer` (e.g.
/// [`checkpoint::DATA_KEY`]).
pub fn save_with(
    checkpoint: &Path,
    model: &Model<f32>,
    tokenizer: &TextTokenizer,
    extra: &[(&str, String)],
) -> Result<()> {
    match tokenizer.to_json()? {
        None => checkpoint::save_with_metadata(checkpoint, model, extra),
        Some(json) => tokenizer_file_with(checkpoint, model, json.as_bytes(), extra),
    }
}

/// Saves a model trained on `data` with `tokenizer`, as a training run saves every
/// checkpoint it writes (the final `--save` and each `--save-every` snapshot alike):
/// the tokenizer beside it ([`save_with`]) and the data's identity under
/// [`checkpoint::DATA_KEY`], so that `eval`, `generate`, `train --load` and `--resume`
/// read any of them as the run's own model.
///
/// ```
/// use cyb::{checkpoint, checkpoint_tokenizer, config::ModelConfig, cpu::model::Model, rng::seeded};
/// use cyb::data::{DataSource, ModSum};
/// use cyb::tokenizer::TextTokenizer;
/// let data = ModSum::default();
/// let c = ModelConfig { vocab: data.vocab(), d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
/// let path = std::env::temp_dir().join(format!("cyb_doc_trained_{}.safetensors", std::process::id()));
/// checkpoint_tokenizer::save_trained(&path, &m, &TextTokenizer::Bytes, &data).unwrap();
/// let (_, meta) = checkpoint::load_with_metadata(&path).unwrap();
/// assert_eq!(meta[checkpoint::DATA_KEY], data.identity());
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_trained(
    checkpoint: &Path,
    model: &Model<f32>,
    tokenizer: &TextTokenizer,
    data: &dyn DataSource,
) -> Result<()> {
    save_with(
        checkpoint,
        model,
        tokenizer,
        &[(checkpoint::DATA_KEY, data.identity())],
    )
}

/// [`save`] with the tokenizer given as the bytes of its `tokenizer.json`, written
/// verbatim (e.g. a Hugging Face model's own file, so that its hash is the original's).
/// The bytes must parse as a tokenizer whose vocabulary fits the model's.
pub fn save_with_tokenizer_file(
    checkpoint: &Path,
    model: &Model<f32>,
    tokenizer_json: &[u8],
) -> Result<()> {
    tokenizer_file_with(checkpoint, model, tokenizer_json, &[])
}

fn tokenizer_file_with(
    checkpoint: &Path,
    model: &Model<f32>,
    tokenizer_json: &[u8],
    extra: &[(&str, String)],
) -> Result<()> {
    let tokenizer = TextTokenizer::from_json_bytes(tokenizer_json)?;
    if tokenizer.vocab() > model.config.vocab {
        return Err(CybError::Param(format!(
            "a tokenizer of {} tokens cannot go with a model of vocabulary {}",
            tokenizer.vocab(),
            model.config.vocab
        )));
    }
    let file = tokenizer_file_name(checkpoint)?;
    crate::atomic_file::write_atomic(&tokenizer_path(checkpoint)?, tokenizer_json)?;
    let entry = TokenizerRef {
        file,
        sha256: sha256_hex(tokenizer_json),
    };
    let value = serde_json::to_string(&entry)
        .map_err(|e| CybError::Param(format!("cannot write the tokenizer entry: {e}")))?;
    let mut meta = vec![(METADATA_KEY, value)];
    meta.extend(extra.iter().cloned());
    checkpoint::save_with_metadata(checkpoint, model, &meta)
}

/// Loads a checkpoint and the tokenizer its metadata names (`None`: no `tokenizer`
/// entry, a byte-level or task model). The file must exist beside the checkpoint and
/// have the recorded hash.
pub fn load(checkpoint: &Path) -> Result<(Model<f32>, Option<TextTokenizer>)> {
    load_with_metadata(checkpoint).map(|(model, tokenizer, _)| (model, tokenizer))
}

/// Every `__metadata__` entry of a checkpoint (`config` included).
pub type Metadata = HashMap<String, String>;

/// [`load`], also returning every `__metadata__` entry of the checkpoint.
pub fn load_with_metadata(
    checkpoint: &Path,
) -> Result<(Model<f32>, Option<TextTokenizer>, Metadata)> {
    let (model, meta) = checkpoint::load_with_metadata(checkpoint)?;
    let tokenizer = match meta.get(METADATA_KEY) {
        None => None,
        Some(value) => Some(resolve(checkpoint, value, model.config.vocab)?),
    };
    Ok((model, tokenizer, meta))
}

fn ckpt_err(checkpoint: &Path, msg: String) -> CybError {
    CybError::Checkpoint {
        path: checkpoint.to_path_buf(),
        msg,
    }
}

/// The tokenizer a `tokenizer` metadata `value` of `checkpoint` names, checked.
fn resolve(checkpoint: &Path, value: &str, model_vocab: usize) -> Result<TextTokenizer> {
    let entry: TokenizerRef = serde_json::from_str(value).map_err(|e| {
        ckpt_err(
            checkpoint,
            format!(
                "metadata `{METADATA_KEY}` = {value:?} is not {{\"file\": ..., \"sha256\": ...}} ({e})"
            ),
        )
    })?;
    let rel = Path::new(&entry.file);
    let plain = !entry.file.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(ckpt_err(
            checkpoint,
            format!(
                "metadata `{METADATA_KEY}` names the file {:?}: it must be a path inside the \
                 checkpoint's folder",
                entry.file
            ),
        ));
    }
    let path = folder_of(checkpoint).join(rel);
    let bytes = crate::input_file::read_bounded(
        &path,
        "the tokenizer file",
        crate::input_file::MAX_TOKENIZER_BYTES,
    )
    .map_err(|e| {
        ckpt_err(
            checkpoint,
            format!(
                "its tokenizer file {} cannot be read ({e}); it is saved beside the \
                 checkpoint and must travel with it",
                path.display()
            ),
        )
    })?;
    let hash = sha256_hex(&bytes);
    if !hash.eq_ignore_ascii_case(&entry.sha256) {
        return Err(ckpt_err(
            checkpoint,
            format!(
                "its tokenizer file {} has SHA-256 {hash}, but the checkpoint was saved with \
                 {}: the file was changed or replaced",
                path.display(),
                entry.sha256
            ),
        ));
    }
    let tok = TextTokenizer::from_json_bytes(&bytes)
        .map_err(|e| ckpt_err(checkpoint, format!("{}: {e}", path.display())))?;
    if tok.vocab() > model_vocab {
        return Err(ckpt_err(
            checkpoint,
            format!(
                "its tokenizer {} has {} tokens, more than the model's vocabulary {model_vocab}",
                path.display(),
                tok.vocab()
            ),
        ));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FIPS 180-2 example ("abc").
    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

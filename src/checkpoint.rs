//! Checkpoints (docs/MATH.md, "Checkpoints"): safetensors with the tensor names and shapes
//! listed there, little-endian f32 (bf16 and f16 weights are accepted on load), and
//! `__metadata__ = {"config": <ModelConfig as JSON>}`, plus `"tokenizer"` for a model
//! whose tokenizer file travels with it (see [`crate::checkpoint_tokenizer`]), and
//! `"data"`: what the model was trained on ([`crate::data::DataSource::identity`],
//! written by `cyb train`), so that evaluating or fine-tuning it on another task is
//! refused instead of scored.
//!
//! The tensor data are read and written as byte views of the `f32`/`bf16`/`f16` slices
//! (`bytemuck`), which is the file's little-endian layout only on a little-endian host:
//! on a big-endian host [`to_bytes`] and [`from_bytes`] return an error instead of
//! writing or reading byte-swapped weights.
//!
//! `save` writes a temporary file next to the target and renames it into place, so a
//! crash or error never leaves a half-written checkpoint under the real name.

use crate::atomic_file::write_atomic;
use crate::config::ModelConfig;
use crate::cpu::model::Model;
use crate::cpu::params::{tensor_layout, Params};
use crate::error::{CybError, Result};
use bytemuck::PodCastError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

fn err(path: &Path, msg: impl Into<String>) -> CybError {
    CybError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The `__metadata__` key that records the data a model was trained on.
pub const DATA_KEY: &str = "data";

/// The serialised bytes of a model (what [`save`] writes).
pub fn to_bytes(model: &Model<f32>) -> Result<Vec<u8>> {
    to_bytes_with_metadata(model, &[])
}

/// The serialised bytes of a model with `extra` `__metadata__` entries besides `config`
/// (which they may not replace).
pub fn to_bytes_with_metadata(model: &Model<f32>, extra: &[(&str, String)]) -> Result<Vec<u8>> {
    model.config.validate()?;
    model.params.check(&model.config)?;
    little_endian_host().map_err(CybError::Shape)?;
    let tensors = model.params.tensors();
    // The weights are viewed as bytes in place (no copy until `serialize`).
    let views = tensors
        .iter()
        .map(|(name, shape, x)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(x))
                .map(|v| (name.clone(), v))
                .map_err(|e| CybError::Shape(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::from([("config".to_string(), model.config.to_json())]);
    for (key, value) in extra {
        if meta.insert(key.to_string(), value.clone()).is_some() {
            return Err(CybError::Param(format!(
                "checkpoint metadata key `{key}` given twice (or replacing `config`)"
            )));
        }
    }
    safetensors::serialize(views, Some(meta))
        .map_err(|e| CybError::Shape(format!("cannot serialise checkpoint: {e}")))
}

/// Writes `model` to `path` (f32), atomically: a temporary file in the same directory
/// is written, flushed to disk and renamed over `path`; on any error it is removed.
///
/// ```
/// use cyb::{checkpoint, config::ModelConfig, cpu::model::Model, rng::seeded};
/// let c = ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
/// let path = std::env::temp_dir().join(format!("cyb_doc_{}.safetensors", std::process::id()));
/// checkpoint::save(&path, &m).unwrap();
/// assert_eq!(checkpoint::load(&path).unwrap(), m);
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save(path: impl AsRef<Path>, model: &Model<f32>) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes(model)?)
}

/// [`save`] with `extra` `__metadata__` entries (see [`to_bytes_with_metadata`]).
pub fn save_with_metadata(
    path: impl AsRef<Path>,
    model: &Model<f32>,
    extra: &[(&str, String)],
) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes_with_metadata(model, extra)?)
}

/// [`save`] with the identity of the training data under [`DATA_KEY`].
///
/// ```
/// use cyb::{checkpoint, config::ModelConfig, cpu::model::Model, rng::seeded};
/// let c = ModelConfig { vocab: 5, d_model: 4, n_layer: 1, n_head: 2, t_max: 3, k_max: 1, pause_attention: cyb::config::PauseAttention::Private, dk_bias: 0.0, layer_norm_eps: 1e-5 };
/// let m: Model<f32> = Model::init(c, &mut seeded(0)).unwrap();
/// let path = std::env::temp_dir().join(format!("cyb_doc_data_{}.safetensors", std::process::id()));
/// checkpoint::save_with_data(&path, &m, "task modsum:5:4").unwrap();
/// let (loaded, meta) = checkpoint::load_with_metadata(&path).unwrap();
/// assert_eq!(loaded, m);
/// assert_eq!(meta[checkpoint::DATA_KEY], "task modsum:5:4");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_with_data(path: impl AsRef<Path>, model: &Model<f32>, data: &str) -> Result<()> {
    save_with_metadata(path, model, &[(DATA_KEY, data.to_string())])
}

/// Reads a checkpoint: every tensor of docs/MATH.md ("Checkpoints") present with its shape
/// (no unknown ones), f32/bf16/f16 data, and a `config` that parses and validates. Errors
/// say exactly which tensor or field is wrong.
pub fn load(path: impl AsRef<Path>) -> Result<Model<f32>> {
    load_with_metadata(path).map(|(model, _)| model)
}

/// [`load`], also returning every `__metadata__` entry (`config` included).
pub fn load_with_metadata(path: impl AsRef<Path>) -> Result<(Model<f32>, HashMap<String, String>)> {
    let path = path.as_ref();
    let bytes = crate::input_file::read_bounded(
        path,
        "the checkpoint",
        crate::input_file::MAX_INPUT_BYTES,
    )?;
    from_bytes_with_metadata(&bytes).map_err(|msg| err(path, msg))
}

/// Parses checkpoint bytes; the error is the message [`load`] reports.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Model<f32>, String> {
    from_bytes_with_metadata(bytes).map(|(model, _)| model)
}

/// [`from_bytes`], also returning the `__metadata__` entries.
pub fn from_bytes_with_metadata(
    bytes: &[u8],
) -> std::result::Result<(Model<f32>, HashMap<String, String>), String> {
    little_endian_host()?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let config_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or("no `config` entry in __metadata__")?;
    let config: ModelConfig = serde_json::from_str(config_json)
        .map_err(|e| format!("config metadata does not parse: {e}"))?;
    config
        .validate()
        .map_err(|e| format!("config {config_json}: {e}"))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let layout = tensor_layout(&config);
    let mut unknown: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !layout.iter().any(|(name, _)| name == n))
        .map(str::to_string)
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(format!(
            "unknown tensors {unknown:?} (not a tensor of docs/MATH.md, \"Checkpoints\", for {config:?})"
        ));
    }
    let mut tensors = Vec::with_capacity(layout.len());
    for (name, shape) in &layout {
        let view = st
            .tensor(name)
            .map_err(|_| format!("missing tensor {name} (expected shape {shape:?})"))?;
        if view.shape() != shape.as_slice() {
            return Err(format!(
                "tensor {name} has shape {:?}, expected {shape:?} for config {config:?}",
                view.shape()
            ));
        }
        let data = decode(name, &view)?;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "tensor {name} has a non-finite weight ({} at flat index {i}); the file \
                 holds a diverged or damaged model",
                data[i]
            ));
        }
        tensors.push(data);
    }
    let params = Params::from_ordered(config.n_layer, tensors);
    let model = Model::new(config, params).map_err(|e| e.to_string())?;
    Ok((model, meta.metadata().clone().unwrap_or_default()))
}

/// The checkpoint format is little-endian; the byte views below are the host's layout.
fn little_endian_host() -> std::result::Result<(), String> {
    if cfg!(target_endian = "little") {
        Ok(())
    } else {
        Err(
            "checkpoints are little-endian safetensors and this build reads and writes \
             them as in-memory byte views, which needs a little-endian host"
                .into(),
        )
    }
}

/// `data` as a slice of `T`: borrowed when the bytes happen to be aligned for `T`,
/// copied into an aligned vector when not (a `Vec<u8>` read from a file guarantees no
/// alignment, and safetensors places tensors at arbitrary byte offsets).
fn pod_slice<'a, T: bytemuck::Pod>(
    name: &str,
    data: &'a [u8],
) -> std::result::Result<Cow<'a, [T]>, String> {
    match bytemuck::try_cast_slice(data) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(PodCastError::TargetAlignmentGreaterAndInputNotAligned) => {
            Ok(Cow::Owned(bytemuck::pod_collect_to_vec(data)))
        }
        Err(e) => Err(format!(
            "tensor {name}: {} data bytes do not form whole elements ({e})",
            data.len()
        )),
    }
}

/// Little-endian f32, bf16 or f16 data as f32.
pub(crate) fn decode(name: &str, view: &TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(pod_slice::<f32>(name, data)?.into_owned()),
        // Half floats are viewed as their u16 bit patterns (half's own `bytemuck` feature
        // would pull in bytemuck's derive macros for this one use).
        Dtype::BF16 => Ok(pod_slice::<u16>(name, data)?
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect()),
        Dtype::F16 => Ok(pod_slice::<u16>(name, data)?
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect()),
        other => Err(format!(
            "tensor {name} has dtype {other:?}; expected F32 (or BF16/F16)"
        )),
    }
}

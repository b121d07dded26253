//! Training snapshots that resume exactly: `--save-every N`, `--keep M`, `--resume PATH`.
//!
//! A snapshot at step `s` of a run saved as `model.safetensors` is two files:
//!
//! - `model.step000300.safetensors`: the model, saved as the run's final checkpoint is
//!   (its tokenizer beside it as `model.step000300.tokenizer.json` where the run has one,
//!   and the data's identity in its metadata: see
//!   [`crate::checkpoint_tokenizer::save_trained`]), so every tool that loads a
//!   checkpoint loads it as the run's own model;
//! - `model.step000300.train-state.safetensors`: what else the run needs to continue
//!   bit for bit: the AdamW moments (tensors `adamw.m.<name>` and `adamw.v.<name>`, f32)
//!   and, in the metadata key `cyb_train_state` (JSON), the AdamW step count, the steps
//!   done (which is the learning-rate schedule's position), the data generator's state
//!   (the only generator a run draws from after initialisation; it is also the position
//!   in the data, see [`crate::shard_data`]), the device and precision, the losses and
//!   evaluation points so far, and the [`Fingerprint`] of the run's settings.
//!
//! The step has at least six digits (`step000300`, `step1234567`). The state file is
//! written first, then the model, each atomically ([`crate::atomic_file`]), so a model
//! snapshot that exists always has its state beside it, and a run killed during a save
//! leaves the previous snapshot whole. After a save only the newest `keep` snapshots
//! remain.

use crate::checkpoint_tokenizer::{self, Metadata};
use crate::cpu::adamw::AdamWState;
use crate::cpu::model::Model;
use crate::data::DataSource;
use crate::error::{CybError, Result};
use crate::rng::CybRng;
use crate::tokenizer::TextTokenizer;
use crate::train::{EvalPoint, StepLog, TrainConfig};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The settings a resumed run must share with the run it continues, by name (model
/// shape, objective, data, batch, schedule, seed, device), as display strings.
pub type Fingerprint = BTreeMap<String, String>;

/// The fingerprint of `cfg` trained on data described as `data` and cut as `split`
/// ([`crate::data::DataSource::split`]; an entry only where there is one, so that
/// snapshots of other data from before the entry existed still resume) on `device`.
pub fn fingerprint(
    cfg: &TrainConfig,
    data: &str,
    split: Option<&str>,
    device: &str,
) -> Fingerprint {
    let m = &cfg.model;
    let mut f = Fingerprint::new();
    let mut put = |k: &str, v: String| {
        f.insert(k.to_string(), v);
    };
    put(
        "model shape",
        format!(
            "vocab {} d_model {} layers {} heads {} t_max {} k_max {}",
            m.vocab, m.d_model, m.n_layer, m.n_head, m.t_max, m.k_max
        ),
    );
    put("pause attention", m.pause_attention.name().to_string());
    put("dk bias", format!("{:?}", m.dk_bias));
    put("objective", cfg.objective.to_string());
    put("pauses", cfg.pauses.to_string());
    put("data", data.to_string());
    if let Some(split) = split {
        put(SPLIT_KEY, split.to_string());
    }
    put("batch", cfg.batch.to_string());
    put("context", cfg.seq.to_string());
    put("steps", cfg.steps.to_string());
    put("learning rate", format!("{:?}", cfg.lr));
    put("min lr ratio", format!("{:?}", cfg.min_lr_ratio));
    put("warmup", cfg.warmup.to_string());
    put("weight decay", format!("{:?}", cfg.weight_decay));
    put("grad clip", format!("{:?}", cfg.grad_clip));
    put("seed", cfg.seed.to_string());
    put("eval every", cfg.eval_every.to_string());
    put("eval batches", cfg.eval_batches.to_string());
    put("device", device.to_string());
    f
}

/// The fingerprint entry of the data's cut ([`crate::data::DataSource::split`]).
pub const SPLIT_KEY: &str = "data split";

/// Refuses to resume a snapshot of the same data that does not record how the data was
/// cut while this run does: a `--text` snapshot from before the 80/10/10 split, which
/// trained on the first 90% of the text. Resuming it would continue on another
/// training part (and test on text it trained on), so it is an error, not a silent
/// change; the error says how to go on.
pub fn refuse_unknown_split(saved: &Fingerprint, now: &Fingerprint, step: usize) -> Result<()> {
    let (None, Some(split)) = (saved.get(SPLIT_KEY), now.get(SPLIT_KEY)) else {
        return Ok(());
    };
    if saved.get("data") != now.get("data") {
        // Other data altogether: `differences` names it.
        return Ok(());
    }
    Err(CybError::Param(format!(
        "cannot resume: the snapshot (step {step}) does not record how its text was cut; \
         snapshots written before the text was cut {split} trained on the first 90% and \
         validated on the last 10%, so resuming would continue on another training part. \
         Refused, not converted: start a new run from its weights with --load SNAPSHOT \
         (without its optimiser state), or resume it with the build that wrote it"
    )))
}

/// The differences between a snapshot's settings and the current ones, one line each
/// (`name: snapshot X, now Y`); empty when the run may resume.
pub fn differences(saved: &Fingerprint, now: &Fingerprint) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = saved.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(absent)".to_string(), |v| v.clone());
            format!(
                "{k}: snapshot {}, now {}",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

/// Everything of a run at a step boundary besides the model.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Steps done.
    pub step: usize,
    pub fingerprint: Fingerprint,
    /// The generator of the training batches.
    pub data_rng: CybRng,
    pub adamw: AdamWState,
    pub history: Vec<StepLog>,
    pub curve: Vec<EvalPoint>,
}

/// The JSON part of the state file.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateMeta {
    format: u32,
    step: usize,
    adamw_step: u64,
    fingerprint: Fingerprint,
    data_rng: CybRng,
    history: Vec<StepLog>,
    curve: Vec<EvalPoint>,
}

const META_KEY: &str = "cyb_train_state";
const FORMAT: u32 = 1;

/// `model.safetensors` + step 300 -> `model.step000300.safetensors`.
pub fn snapshot_path(base: &Path, step: usize) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.with_file_name(format!("{stem}.step{step:06}.safetensors"))
}

/// The state file beside a model snapshot: `X.safetensors` -> `X.train-state.safetensors`.
pub fn state_path(snapshot: &Path) -> PathBuf {
    let stem = snapshot
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    snapshot.with_file_name(format!("{stem}.train-state.safetensors"))
}

/// The step of a snapshot file of `base` (`model.step000300.safetensors` -> 300).
fn snapshot_step(base: &Path, file: &Path) -> Option<usize> {
    let stem = base.file_stem()?.to_str()?;
    let name = file.file_name()?.to_str()?;
    let digits = name
        .strip_prefix(stem)?
        .strip_prefix(".step")?
        .strip_suffix(".safetensors")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The snapshots of `base` on disk, oldest first: `(step, model path)`.
pub fn list_snapshots(base: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| CybError::io(&dir, e))? {
        let p = e.map_err(|e| CybError::io(&dir, e))?.path();
        if let Some(step) = snapshot_step(base, &p) {
            found.push((step, p));
        }
    }
    found.sort();
    Ok(found)
}

fn state_err(path: &Path, msg: impl Into<String>) -> CybError {
    CybError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Writes the snapshot of step `state.step` (state file, then the model of a run on
/// `data` with `tokenizer`, saved as the run's final checkpoint is:
/// [`checkpoint_tokenizer::save_trained`]), then removes all but the newest `keep`
/// snapshots of `base`. Returns the model snapshot's path.
pub fn save_snapshot(
    base: &Path,
    model: &Model<f32>,
    state: &TrainState,
    keep: usize,
    tokenizer: &TextTokenizer,
    data: &dyn DataSource,
) -> Result<PathBuf> {
    let snap = snapshot_path(base, state.step);
    let spath = state_path(&snap);
    crate::atomic_file::write_atomic(&spath, &state_bytes(model, state)?)?;
    checkpoint_tokenizer::save_trained(&snap, model, tokenizer, data)?;
    let all = list_snapshots(base)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        // The model first: a snapshot without its state or tokenizer is never left
        // behind.
        let tokenizer = checkpoint_tokenizer::tokenizer_path(old)?;
        for p in [old.clone(), state_path(old), tokenizer] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CybError::io(p, e)),
            }
        }
    }
    Ok(snap)
}

fn state_bytes(model: &Model<f32>, state: &TrainState) -> Result<Vec<u8>> {
    let names: Vec<String> = model
        .params
        .tensors()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let a = &state.adamw;
    if !(a.m.is_empty() && a.v.is_empty()) && (a.m.len() != names.len() || a.v.len() != names.len())
    {
        return Err(CybError::Shape(format!(
            "AdamW state has {} + {} moment tensors, the model {}",
            a.m.len(),
            a.v.len(),
            names.len()
        )));
    }
    let mut views = Vec::new();
    for (which, moments) in [("m", &a.m), ("v", &a.v)] {
        for (name, x) in names.iter().zip(moments) {
            let key = format!("adamw.{which}.{name}");
            let view = TensorView::new(Dtype::F32, vec![x.len()], bytemuck::cast_slice(x))
                .map_err(|e| CybError::Shape(format!("{key}: {e}")))?;
            views.push((key, view));
        }
    }
    let meta = StateMeta {
        format: FORMAT,
        step: state.step,
        adamw_step: a.t,
        fingerprint: state.fingerprint.clone(),
        data_rng: state.data_rng.clone(),
        history: state.history.clone(),
        curve: state.curve.clone(),
    };
    let json = serde_json::to_string(&meta)
        .map_err(|e| CybError::Shape(format!("cannot serialise the training state: {e}")))?;
    safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), json)])))
        .map_err(|e| CybError::Shape(format!("cannot serialise the training state: {e}")))
}

/// A snapshot as [`open_snapshot`] reads it.
#[derive(Debug)]
pub struct Snapshot {
    pub model: Model<f32>,
    /// The run's tokenizer (`None`: bytes or a task; snapshots from before they carried
    /// it also have none).
    pub tokenizer: Option<TextTokenizer>,
    /// The model file's `__metadata__` ([`crate::checkpoint::DATA_KEY`] included,
    /// except in snapshots from before they carried it).
    pub meta: Metadata,
    pub state: TrainState,
}

/// Loads a snapshot: the model (`path`, a model snapshot) and the state beside it.
pub fn load_snapshot(path: &Path) -> Result<(Model<f32>, TrainState)> {
    open_snapshot(path).map(|s| (s.model, s.state))
}

/// [`load_snapshot`], also returning the tokenizer and the metadata saved with the
/// model (as [`checkpoint_tokenizer::load_with_metadata`] checks them).
pub fn open_snapshot(path: &Path) -> Result<Snapshot> {
    let (model, tokenizer, checkpoint_meta) = checkpoint_tokenizer::load_with_metadata(path)?;
    let spath = state_path(path);
    let bytes = std::fs::read(&spath).map_err(|e| {
        state_err(
            &spath,
            format!(
                "cannot read the training state that --resume needs beside {} ({e}); \
                 give a model snapshot written by --save-every (NAME.stepNNNNNN.safetensors)",
                path.display()
            ),
        )
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| state_err(&spath, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| state_err(&spath, format!("not a valid safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| state_err(&spath, format!("no `{META_KEY}` metadata")))?;
    let meta: StateMeta =
        serde_json::from_str(json).map_err(|e| state_err(&spath, format!("`{META_KEY}`: {e}")))?;
    if meta.format != FORMAT {
        return Err(state_err(
            &spath,
            format!("state format {}, this build reads {FORMAT}", meta.format),
        ));
    }
    let tensors = model.params.tensors();
    let moments = |which: &str| -> Result<Vec<Vec<f32>>> {
        if meta.adamw_step == 0 {
            return Ok(Vec::new());
        }
        tensors
            .iter()
            .map(|(name, _, x)| {
                let key = format!("adamw.{which}.{name}");
                let t = st
                    .tensor(&key)
                    .map_err(|e| state_err(&spath, format!("{key}: {e}")))?;
                if t.dtype() != Dtype::F32 || t.shape() != [x.len()] {
                    return Err(state_err(
                        &spath,
                        format!(
                            "{key}: {:?} {:?}, expected F32 [{}]",
                            t.dtype(),
                            t.shape(),
                            x.len()
                        ),
                    ));
                }
                Ok(bytemuck::pod_collect_to_vec(t.data()))
            })
            .collect()
    };
    let adamw = AdamWState {
        t: meta.adamw_step,
        m: moments("m")?,
        v: moments("v")?,
    };
    if meta.history.len() != meta.step {
        return Err(state_err(
            &spath,
            format!(
                "{} logged steps for step {}: the file is inconsistent",
                meta.history.len(),
                meta.step
            ),
        ));
    }
    Ok(Snapshot {
        model,
        tokenizer,
        meta: checkpoint_meta,
        state: TrainState {
            step: meta.step,
            fingerprint: meta.fingerprint,
            data_rng: meta.data_rng,
            adamw,
            history: meta.history,
            curve: meta.curve,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_carry_the_step() {
        let base = Path::new("/x/model.safetensors");
        let s = snapshot_path(base, 300);
        assert_eq!(s, Path::new("/x/model.step000300.safetensors"));
        assert_eq!(
            state_path(&s),
            Path::new("/x/model.step000300.train-state.safetensors")
        );
        assert_eq!(snapshot_step(base, &s), Some(300));
        assert_eq!(
            snapshot_step(base, &snapshot_path(base, 12_345_678)),
            Some(12_345_678)
        );
        assert_eq!(snapshot_step(base, &state_path(&s)), None);
        assert_eq!(snapshot_step(base, Path::new("/x/model.safetensors")), None);
        assert_eq!(
            snapshot_step(base, Path::new("/x/other.step000300.safetensors")),
            None
        );
    }

    #[test]
    fn differences_name_each_setting() {
        let mut a = Fingerprint::new();
        a.insert("batch".into(), "32".into());
        a.insert("seed".into(), "1".into());
        let mut b = a.clone();
        assert!(differences(&a, &b).is_empty());
        b.insert("batch".into(), "16".into());
        assert_eq!(differences(&a, &b), vec!["batch: snapshot 32, now 16"]);
    }
}

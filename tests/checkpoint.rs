//! Checkpoints (SPEC section 7): the v2 tiny models load in both attention modes, config keys are strict, round trips are
//! bit-exact, bf16 is accepted, and every kind of bad file is a clear error.

mod common;

use common::v2_dir;
use cyb::checkpoint;
use cyb::config::{ModelConfig, PauseAttention};
use cyb::cpu::model::Model;
use cyb::cpu::params::tensor_layout;
use cyb::rng::seeded;
use cyb::CybError;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh empty directory for one test (removed at the end of the test).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cyb_ckpt_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab: 9,
        d_model: 8,
        n_layer: 2,
        n_head: 2,
        t_max: 6,
        k_max: 3,
        pause_attention: PauseAttention::Shared,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    }
}

fn model(seed: u64) -> Model<f32> {
    Model::init(config(), &mut seeded(seed)).unwrap()
}

/// Hand-built safetensors bytes: `(name, shape, dtype, data)` tensors plus metadata.
fn raw_file(
    tensors: &[(String, Vec<usize>, Dtype, Vec<u8>)],
    config_json: Option<&str>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, dt, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    let meta = config_json.map(|c| HashMap::from([("config".to_string(), c.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

/// The f32 tensors of a config's layout, filled with `0.25`.
fn layout_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>, Dtype, Vec<u8>)> {
    tensor_layout(c)
        .into_iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            (
                n,
                s,
                Dtype::F32,
                bytemuck::cast_slice(&vec![0.25f32; len]).to_vec(),
            )
        })
        .collect()
}

fn checkpoint_error(path: &Path) -> String {
    match checkpoint::load(path) {
        Err(CybError::Checkpoint { msg, .. }) => msg,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn v2_tiny_models_load_with_their_attention_mode() {
    for (file, vocab, n_head, k_max, mode) in [
        ("tiny_model.safetensors", 13, 2, 2, PauseAttention::Shared),
        (
            "tiny_model_private.safetensors",
            11,
            4,
            3,
            PauseAttention::Private,
        ),
    ] {
        let m = checkpoint::load(v2_dir().join(file)).unwrap();
        let c = &m.config;
        assert_eq!(
            (c.vocab, c.n_head, c.k_max, c.pause_attention),
            (vocab, n_head, k_max, mode),
            "{file}"
        );
        // SPEC section 4: psi = 0.9 gives b_DK = log(0.9/0.1) + log V.
        // The file stores the f64 the writer computed the same way; 1e-12 absolute on a
        // value ~4.5 allows a few ulps of a different summation order, nothing more.
        approx::assert_abs_diff_eq!(c.dk_bias, 9f64.ln() + (vocab as f64).ln(), epsilon = 1e-12);
        assert!(m
            .params
            .tensors()
            .iter()
            .all(|(_, _, x)| x.iter().all(|v| v.is_finite())));
    }
}

/// The `config` metadata of a checkpoint: a v1 file (no `pause_attention`, no
/// `dk_bias`) loads as private without bias, both modes round-trip, and an unknown key
/// or mode is an error that names it.
#[test]
fn checkpoint_config_keys_are_strict() {
    let dir = TempDir::new("keys");
    let c = config();
    let tensors = layout_tensors(&c);
    let load_with = |name: &str, json: &str| {
        let p = dir.path(name);
        std::fs::write(&p, raw_file(&tensors, Some(json))).unwrap();
        checkpoint::load(&p)
    };
    let v1 = r#"{"vocab":9,"d_model":8,"n_layer":2,"n_head":2,"t_max":6,"k_max":3}"#;
    let m = load_with("v1.safetensors", v1).unwrap();
    assert_eq!(m.config.pause_attention, PauseAttention::Private);
    assert_eq!(m.config.dk_bias, 0.0);
    for mode in [PauseAttention::Shared, PauseAttention::Private] {
        let want = ModelConfig {
            pause_attention: mode,
            dk_bias: 1.5,
            ..c.clone()
        };
        let m = load_with("mode.safetensors", &want.to_json()).unwrap();
        assert_eq!(m.config, want);
        let path = dir.path("saved.safetensors");
        checkpoint::save(
            &path,
            &Model {
                config: want.clone(),
                params: m.params,
            },
        )
        .unwrap();
        assert_eq!(checkpoint::load(&path).unwrap().config, want);
    }
    let unknown = v1.replace('}', r#","pause_policy":"greedy"}"#);
    let msg = checkpoint_error(&{
        let p = dir.path("unknown.safetensors");
        std::fs::write(&p, raw_file(&tensors, Some(&unknown))).unwrap();
        p
    });
    assert!(msg.contains("pause_policy"), "{msg}");
    let bad_mode = v1.replace('}', r#","pause_attention":"both"}"#);
    assert!(load_with("badmode.safetensors", &bad_mode).is_err());
    let msg = checkpoint_error(&dir.path("badmode.safetensors"));
    assert!(msg.contains("both"), "{msg}");
}

#[test]
fn round_trip_is_bit_exact_and_overwrites_atomically() {
    let dir = TempDir::new("roundtrip");
    let path = dir.path("m.safetensors");
    let (a, b) = (model(1), model(2));
    checkpoint::save(&path, &a).unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded, a);
    assert_eq!(
        checkpoint::to_bytes(&loaded).unwrap(),
        std::fs::read(&path).unwrap()
    );
    checkpoint::save(&path, &b).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap(), b);
    assert_eq!(dir.entries(), vec!["m.safetensors"]); // no temp file left behind
}

#[test]
fn bf16_weights_are_accepted() {
    let c = config();
    let mut tensors = layout_tensors(&c);
    // 1.5 and -0.375 are exact in bf16.
    let (_, shape, dt, data) = &mut tensors[0];
    let len: usize = shape.iter().product();
    *dt = Dtype::BF16;
    let weights: Vec<u16> = (0..len)
        .map(|i| half::bf16::from_f32(if i % 2 == 0 { 1.5 } else { -0.375 }).to_bits())
        .collect();
    *data = bytemuck::cast_slice(&weights).to_vec();
    let m = checkpoint::from_bytes(&raw_file(&tensors, Some(&c.to_json()))).unwrap();
    assert_eq!(m.params.tok_emb[0..2], [1.5, -0.375]);
    assert_eq!(m.params.pos_emb[0], 0.25);
}

/// The reader views tensor bytes as `f32` in place when they are aligned and copies them
/// when not: the same file at every byte offset of a buffer loads to the same model.
#[test]
fn unaligned_buffers_load() {
    let m = model(5);
    let bytes = checkpoint::to_bytes(&m).unwrap();
    for offset in 0..4 {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(&bytes);
        assert_eq!(
            checkpoint::from_bytes(&buf[offset..]).unwrap(),
            m,
            "offset {offset}"
        );
    }
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = TempDir::new("bad");
    let c = config();
    let json = c.to_json();
    let good = checkpoint::to_bytes(&model(3)).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    assert!(matches!(
        checkpoint::load(dir.path("absent.safetensors")),
        Err(CybError::Io { .. })
    ));
    let msg = checkpoint_error(&write("trunc.safetensors", &good[..good.len() - 10]));
    assert!(msg.contains("not a valid safetensors"), "{msg}");
    let msg = checkpoint_error(&write(
        "garbage.safetensors",
        b"definitely not a checkpoint",
    ));
    assert!(msg.contains("not a valid safetensors"), "{msg}");

    let mut missing = layout_tensors(&c);
    missing.remove(5);
    let msg = checkpoint_error(&write(
        "missing.safetensors",
        &raw_file(&missing, Some(&json)),
    ));
    assert!(
        msg.contains("missing tensor blocks.0.attn.qkv.weight (expected shape [24, 8])"),
        "{msg}"
    );

    let mut extra = layout_tensors(&c);
    extra.push(("head.weight".into(), vec![1], Dtype::F32, vec![0; 4]));
    let msg = checkpoint_error(&write("extra.safetensors", &raw_file(&extra, Some(&json))));
    assert!(msg.contains("unknown tensors [\"head.weight\"]"), "{msg}");

    // A checkpoint of another shape: tensors of a d_model = 4 model, config says 8.
    let other = layout_tensors(&ModelConfig {
        d_model: 4,
        ..c.clone()
    });
    let msg = checkpoint_error(&write("shape.safetensors", &raw_file(&other, Some(&json))));
    assert!(
        msg.contains("tok_emb has shape [10, 4], expected [10, 8]"),
        "{msg}"
    );

    let msg = checkpoint_error(&write(
        "nometa.safetensors",
        &raw_file(&layout_tensors(&c), None),
    ));
    assert!(msg.contains("no `config`"), "{msg}");
    let msg = checkpoint_error(&write(
        "badjson.safetensors",
        &raw_file(&layout_tensors(&c), Some("{\"vocab\": 9}")),
    ));
    assert!(msg.contains("config metadata does not parse"), "{msg}");
    let bad_heads = ModelConfig {
        n_head: 3,
        ..c.clone()
    };
    let msg = checkpoint_error(&write(
        "heads.safetensors",
        &raw_file(&layout_tensors(&bad_heads), Some(&bad_heads.to_json())),
    ));
    assert!(msg.contains("not a multiple of n_head"), "{msg}");

    let mut ints = layout_tensors(&c);
    ints[1].2 = Dtype::I32;
    let msg = checkpoint_error(&write("dtype.safetensors", &raw_file(&ints, Some(&json))));
    assert!(msg.contains("pos_emb has dtype I32"), "{msg}");
}

#[test]
fn failed_save_leaves_no_file() {
    let dir = TempDir::new("failsave");
    // Invalid model: rejected before anything is written.
    let mut broken = model(4);
    broken.params.ln_f_bias.pop();
    let path = dir.path("broken.safetensors");
    assert!(checkpoint::save(&path, &broken).is_err());
    // The rename fails (target is a non-empty directory): the temp file is removed.
    let blocked = dir.path("blocked.safetensors");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    assert!(matches!(
        checkpoint::save(&blocked, &model(5)),
        Err(CybError::Io { .. })
    ));
    // Directory that does not exist.
    assert!(checkpoint::save(dir.path("nodir/m.safetensors"), &model(5)).is_err());
    assert_eq!(dir.entries(), vec!["blocked.safetensors"]);
}

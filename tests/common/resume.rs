//! Resumption checks shared by tests/resume.rs (CPU) and tests/gpu_resume.rs (the GPU
//! step, f32 and bf16).

use cyb::checkpoint;
use cyb::data::{DataSource, Split};
use cyb::tokenize::{tokenize, TokenizeConfig, TokenizerSpec};
use cyb::train::{train_with, RunControl, TrainConfig, TrainDevice, TrainOutcome};
use cyb::train_state::{load_snapshot, snapshot_path};
use std::path::{Path, PathBuf};

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn control(base: &Path, every: usize, keep: usize) -> RunControl {
    RunControl {
        snapshot_base: Some(base.to_path_buf()),
        save_every: every,
        keep,
        ..RunControl::default()
    }
}

pub fn run(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<cyb::Model<f32>>,
    c: RunControl,
) -> TrainOutcome {
    run_on(cfg, data, init, c, TrainDevice::Cpu)
}

/// [`run`] on `device`.
pub fn run_on(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<cyb::Model<f32>>,
    c: RunControl,
    device: TrainDevice,
) -> TrainOutcome {
    train_with(cfg, data, init, false, device, c).unwrap()
}

/// Byte-level shards of a small text (this crate's README, repeated), tokenized here.
pub fn byte_shards(dir: &Path) -> PathBuf {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let input = dir.join("corpus.txt");
    std::fs::write(&input, text.repeat(2)).unwrap();
    let out = dir.join("shards");
    tokenize(
        &TokenizeConfig {
            inputs: vec![input],
            tokenizer: TokenizerSpec::Bytes,
            out: out.clone(),
            val_tokens: 20_000,
            shard_tokens: 50_000,
            version: None,
        },
        false,
    )
    .unwrap();
    out
}

/// The check of the issue: uninterrupted 2N steps vs N steps + resume for N more.
pub fn resumed_run_is_bitwise_equal(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    name: &str,
    device: TrainDevice,
) {
    let n = cfg.steps / 2;
    let dir = tmpdir(name);
    let (a_base, b_base) = (
        dir.join("a/model.safetensors"),
        dir.join("b/model.safetensors"),
    );
    std::fs::create_dir_all(a_base.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b_base.parent().unwrap()).unwrap();
    let a = run_on(cfg, data, None, control(&a_base, n, 10), device);
    let (model, state) = load_snapshot(&snapshot_path(&a_base, n)).unwrap();
    assert_eq!(state.step, n);
    assert_eq!(state.adamw.t, n as u64);
    let b = run_on(
        cfg,
        data,
        Some(model),
        RunControl {
            resume: Some(state),
            ..control(&b_base, n, 10)
        },
        device,
    );
    // Weights, bit for bit (the checkpoint bytes are the f32 bits).
    assert_eq!(
        checkpoint::to_bytes(&a.model).unwrap(),
        checkpoint::to_bytes(&b.model).unwrap()
    );
    // Losses and evaluation points of every step, the resumed ones included.
    assert_eq!(a.history.len(), cfg.steps);
    assert_eq!(a.history, b.history);
    assert_eq!(a.curve, b.curve);
    // Moments, step count and the data generator at the end.
    let (_, end_a) = load_snapshot(&snapshot_path(&a_base, 2 * n)).unwrap();
    let (_, end_b) = load_snapshot(&snapshot_path(&b_base, 2 * n)).unwrap();
    let bits = |x: &Vec<Vec<f32>>| -> Vec<u32> { x.concat().iter().map(|v| v.to_bits()).collect() };
    assert_eq!(end_a.adamw.t, 2 * n as u64);
    assert_eq!(bits(&end_a.adamw.m), bits(&end_b.adamw.m));
    assert_eq!(bits(&end_a.adamw.v), bits(&end_b.adamw.v));
    assert!(end_a.adamw.v.concat().iter().any(|&v| v > 0.0));
    assert_eq!(end_a, end_b);
    // The next batch either run would draw.
    let (mut ra, mut rb) = (end_a.data_rng.clone(), end_b.data_rng.clone());
    let (ba, bb) = (
        data.sample(Split::Train, cfg.batch, cfg.seq, &mut ra),
        data.sample(Split::Train, cfg.batch, cfg.seq, &mut rb),
    );
    assert_eq!((ba.tokens, ba.targets), (bb.tokens, bb.targets));
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Training snapshots: a run of 2N steps with a snapshot every N steps, resumed from its
//! step-N snapshot, ends bitwise equal to the uninterrupted run (weights, AdamW moments,
//! losses, evaluation points, the next batch); resuming with other settings is refused,
//! naming each difference; old snapshots are pruned.

mod common;

use common::tiny_train as tiny;
use cyb::checkpoint;
use cyb::data::{DataSource, ModSum, Split};
use cyb::shard_data::ShardData;
use cyb::tokenize::{tokenize, TokenizeConfig, TokenizerSpec};
use cyb::train::{train_with, RunControl, TrainConfig, TrainDevice, TrainOutcome};
use cyb::train_state::{list_snapshots, load_snapshot, snapshot_path, state_path};
use cyb::Objective;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cyb-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn control(base: &Path, every: usize, keep: usize) -> RunControl {
    RunControl {
        snapshot_base: Some(base.to_path_buf()),
        save_every: every,
        keep,
        ..RunControl::default()
    }
}

fn run(
    cfg: &TrainConfig,
    data: &dyn DataSource,
    init: Option<cyb::Model<f32>>,
    c: RunControl,
) -> TrainOutcome {
    train_with(cfg, data, init, false, TrainDevice::Cpu, c).unwrap()
}

/// Byte-level shards of a small text (this crate's README, repeated), tokenized here.
fn byte_shards(dir: &Path) -> PathBuf {
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
fn resumed_run_is_bitwise_equal(cfg: &TrainConfig, data: &dyn DataSource, name: &str) {
    let n = cfg.steps / 2;
    let dir = tmpdir(name);
    let (a_base, b_base) = (
        dir.join("a/model.safetensors"),
        dir.join("b/model.safetensors"),
    );
    std::fs::create_dir_all(a_base.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b_base.parent().unwrap()).unwrap();
    let a = run(cfg, data, None, control(&a_base, n, 10));
    let (model, state) = load_snapshot(&snapshot_path(&a_base, n)).unwrap();
    assert_eq!(state.step, n);
    assert_eq!(state.adamw.t, n as u64);
    let b = run(
        cfg,
        data,
        Some(model),
        RunControl {
            resume: Some(state),
            ..control(&b_base, n, 10)
        },
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

#[test]
fn resumed_modsum_run_is_bitwise_equal() {
    for (objective, pauses) in [(Objective::ap_default(), 2), (Objective::CeFinal, 0)] {
        let cfg = tiny(objective, pauses, 12);
        resumed_run_is_bitwise_equal(&cfg, &ModSum::default(), &format!("modsum{pauses}"));
    }
}

#[test]
fn resumed_shard_run_is_bitwise_equal() {
    let dir = tmpdir("shardrun");
    let shards = byte_shards(&dir);
    let data = ShardData::open(shards.to_str().unwrap(), None, 16).unwrap();
    let mut cfg = tiny(Objective::ap_default(), 1, 10);
    cfg.model.vocab = 256;
    resumed_run_is_bitwise_equal(&cfg, &data, "shards");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each setting that changes the run is refused by name; a snapshot can resume from
/// any step, and only the newest `keep` snapshots stay on disk.
#[test]
fn resuming_other_settings_is_refused_and_old_snapshots_go() {
    let dir = tmpdir("refuse");
    let base = dir.join("model.safetensors");
    let cfg = tiny(Objective::ap_default(), 2, 8);
    run(&cfg, &ModSum::default(), None, control(&base, 2, 2));
    let steps: Vec<usize> = list_snapshots(&base).unwrap().iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![6, 8], "--keep 2 keeps the newest two");
    assert!(!state_path(&snapshot_path(&base, 4)).exists());
    let snap = snapshot_path(&base, 6);
    let mut shape = cfg.clone();
    shape.model.d_model = 32;
    let mut batch = cfg.clone();
    batch.batch = 8;
    let mut objective = cfg.clone();
    objective.objective = Objective::CeFinal;
    let other_data = ModSum {
        modulus: 5,
        max_span: 4,
    };
    let mut data_cfg = cfg.clone();
    data_cfg.seed = 3;
    for (changed, data, needle) in [
        (
            &shape,
            &ModSum::default(),
            "model shape: snapshot vocab 10 d_model 16",
        ),
        (&batch, &ModSum::default(), "batch: snapshot 4, now 8"),
        (&objective, &ModSum::default(), "objective: snapshot ap("),
        (&data_cfg, &other_data, "seed: snapshot 9, now 3"),
    ] {
        let (model, state) = load_snapshot(&snap).unwrap();
        let e = train_with(
            changed,
            data,
            Some(model),
            false,
            TrainDevice::Cpu,
            RunControl {
                resume: Some(state),
                ..RunControl::default()
            },
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            e.contains("cannot resume") && e.contains(needle),
            "{needle}: {e}"
        );
    }
    // Other data (same vocabulary, other description) is refused too.
    let dir2 = tmpdir("refuse-data");
    let shards = byte_shards(&dir2);
    let bytes_a = ShardData::open(shards.to_str().unwrap(), None, 16).unwrap();
    let mut bcfg = tiny(Objective::ap_default(), 1, 4);
    bcfg.model.vocab = 256;
    let bbase = dir2.join("m.safetensors");
    run(&bcfg, &bytes_a, None, control(&bbase, 2, 5));
    let (model, state) = load_snapshot(&snapshot_path(&bbase, 2)).unwrap();
    let text = cyb::data::ByteText::from_bytes("other".into(), vec![b'x'; 400], 16).unwrap();
    let e = train_with(
        &bcfg,
        &text,
        Some(model),
        false,
        TrainDevice::Cpu,
        RunControl {
            resume: Some(state),
            ..RunControl::default()
        },
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("data: snapshot token shards"), "{e}");
    // A model file without its state beside it is no snapshot.
    let lone = dir.join("lone.safetensors");
    std::fs::copy(&snap, &lone).unwrap();
    let e = load_snapshot(&lone).err().expect("no state").to_string();
    assert!(e.contains("train-state"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

//! Training snapshots: a run of 2N steps with a snapshot every N steps, resumed from its
//! step-N snapshot, ends bitwise equal to the uninterrupted run (weights, AdamW moments,
//! losses, evaluation points, the next batch); resuming with other settings is refused,
//! naming each difference; old snapshots are pruned.

mod common;

use common::resume::{byte_shards, control, resumed_run_is_bitwise_equal, run, tmpdir};
use common::tiny_train as tiny;
use cyb::data::ModSum;
use cyb::shard_data::ShardData;
use cyb::train::{train_with, RunControl, TrainDevice};
use cyb::train_state::{list_snapshots, load_snapshot, snapshot_path, state_path, SPLIT_KEY};
use cyb::Objective;

#[test]
fn resumed_modsum_run_is_bitwise_equal() {
    for (objective, pauses) in [(Objective::ap_default(), 2), (Objective::CeFinal, 0)] {
        let cfg = tiny(objective, pauses, 12);
        resumed_run_is_bitwise_equal(
            &cfg,
            &ModSum::default(),
            &format!("modsum{pauses}"),
            TrainDevice::Cpu,
        );
    }
}

#[test]
fn resumed_shard_run_is_bitwise_equal() {
    let dir = tmpdir("shardrun");
    let shards = byte_shards(&dir);
    let data = ShardData::open(shards.to_str().unwrap(), None, 16).unwrap();
    let mut cfg = tiny(Objective::ap_default(), 1, 10);
    cfg.model.vocab = 256;
    resumed_run_is_bitwise_equal(&cfg, &data, "shards", TrainDevice::Cpu);
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
    let e = load_snapshot(&lone).expect_err("no state").to_string();
    assert!(e.contains("train-state"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

/// A `--text` run records how the text is cut (80/10/10) and resumes bit for bit; a
/// snapshot of the same text that does not record it (written before the test split,
/// when training read the first 90%) is refused with an error that says why and how to
/// go on, never resumed on the smaller training part.
#[test]
fn text_snapshots_record_their_split_and_pre_split_ones_are_refused() {
    let text: Vec<u8> = b"the cat sat on the mat; the dog sat on the log. ".repeat(40);
    let data = cyb::data::ByteText::from_bytes("corpus".into(), text, 16).unwrap();
    let mut cfg = tiny(Objective::ap_default(), 1, 6);
    cfg.model.vocab = 256;
    resumed_run_is_bitwise_equal(&cfg, &data, "text", TrainDevice::Cpu);

    let dir = tmpdir("presplit");
    let base = dir.join("model.safetensors");
    run(&cfg, &data, None, control(&base, 3, 5));
    let (model, state) = load_snapshot(&snapshot_path(&base, 3)).unwrap();
    assert_eq!(
        state.fingerprint.get(SPLIT_KEY).map(String::as_str),
        Some(cyb::data::TEXT_SPLIT)
    );
    let mut old = state.clone();
    old.fingerprint.remove(SPLIT_KEY);
    let resume = |state, model| {
        let c = RunControl {
            resume: Some(state),
            ..RunControl::default()
        };
        train_with(&cfg, &data, Some(model), false, TrainDevice::Cpu, c)
    };
    let e = resume(old, model.clone())
        .err()
        .expect("a snapshot without the split is refused")
        .to_string();
    for needle in [
        "cannot resume",
        "does not record how its text was cut",
        "first 90%",
        "--load",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // The snapshot as written resumes.
    assert_eq!(resume(state, model).unwrap().history.len(), cfg.steps);
    std::fs::remove_dir_all(&dir).unwrap();
}

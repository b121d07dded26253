//! Whole runs on data-parallel replicas (feature `nccl`): `experiment` with its
//! pretraining and arms on `--gpus 2` against `--gpus 1` (and `cyb experiment --gpus 2`
//! end to end), and resumption with another
//! world size: a run saved at 2 replicas resumes at 1, 2 and 3 and continues the
//! uninterrupted run's curve; with two `--world-size 2` processes only rank 0 writes
//! (snapshots, the model, the report); an uneven world size on resume is refused.
//! (`tests/gpu_nccl.rs` checks the step itself: one data-parallel step against one
//! device on the global batch.)
//!
//! Needs as many CUDA devices as replicas: under the CPU emulator `CYB_EMU_DEVICES=3`
//! (scripts/test_emulated.sh sets it for the `gpu_nccl*` binaries) with its stand-in
//! libnccl. `harness = false` (libtest-mimic): without a device, without the feature,
//! or with too few devices, every test is reported as *ignored*. `CYB_TEST_SEED` fixes
//! the random seeds of the runs.

mod common;

use libtest_mimic::{Arguments, Trial};

/// (test name, replicas it needs).
const TESTS: &[(&str, usize)] = &[
    ("experiment_gpus_2_equals_gpus_1", 2),
    ("resume_at_other_world_sizes_continues_the_curve", 3),
    ("cli_world_size_2_only_rank_0_writes_then_resumes_on_1", 2),
    ("cli_experiment_gpus_2", 2),
];

fn main() {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

#[cfg(not(feature = "nccl"))]
fn trials() -> Vec<Trial> {
    // Built without feature `nccl`: nothing to run, everything reported as ignored.
    TESTS
        .iter()
        .map(|&(name, _)| Trial::test(name, || Ok(())).with_ignored_flag(true))
        .collect()
}

#[cfg(feature = "nccl")]
fn trials() -> Vec<Trial> {
    runs::trials()
}

#[cfg(feature = "nccl")]
mod runs {
    use super::*;
    use common::err;
    use cyb::config::{ModelConfig, PauseAttention, Precision};
    use cyb::data::ModSum;
    use cyb::experiment::{default_variants, run_experiment, ExperimentConfig, RunResult};
    use cyb::launch::Launch;
    use cyb::train::{train_with, RunControl, TrainConfig, TrainDevice, TrainOutcome};
    use cyb::train_state::{load_snapshot, snapshot_path, TrainState};
    use libtest_mimic::Failed;
    use std::path::{Path, PathBuf};

    type R = Result<(), Failed>;

    /// f32 unit roundoff.
    const U: f64 = 1.0 / (1u64 << 24) as f64;
    /// Global batch (divisible by 1, 2 and 3), context, pauses.
    const B: usize = 6;
    const T: usize = 8;
    const K: usize = 1;
    const LR: f32 = 1e-3;
    /// Relative tolerance of losses and evaluation numbers after steps on replicas whose
    /// gradients differ from one device's (or another world size's) only in the order of
    /// the sums over rows (tests/gpu_nccl.rs bounds one step's difference by `20 N u`).
    /// Adam's normalisation amplifies such differences in gradients that are rounding
    /// noise (their update is about `lr * sign(g)` either way), step after step; over at
    /// most 20 steps at lr 1e-3 the curves stay within 1% (the bound tests/gpu_nccl.rs's
    /// 20-step curve test and the CPU-vs-GPU curve test use). Measured on the emulator:
    /// at most 1e-7 apart; a bug planted to try the tests (every replica on the first
    /// shard) moved the experiment's numbers by 3e-2, and a lost optimizer state on
    /// resume fails the moments and the step count.
    const CURVE_RTOL: f64 = 1e-2;
    const CURVE_ATOL: f64 = 2e-3;

    pub fn trials() -> Vec<Trial> {
        let gpu = common::test_gpu("gpu_nccl_runs");
        let devices = cyb::gpu::device_count();
        if gpu.is_some() && devices < 3 {
            eprintln!(
                "gpu_nccl_runs: {devices} CUDA device(s): tests needing more are ignored \
                 (under the emulator set CYB_EMU_DEVICES=3)"
            );
        }
        if let Err(e) = cyb::gpu::data_parallel::check_nccl_library() {
            eprintln!("gpu_nccl_runs: {e}");
        }
        let base = common::base_seed();
        TESTS
            .iter()
            .enumerate()
            .map(|(i, &(name, need))| {
                let ignored = gpu.is_none() || devices < need;
                let gpu = gpu.clone();
                let seed = common::test_seed(base, i as u64);
                Trial::test(name, move || {
                    gpu.expect("ignored without a device")?;
                    common::with_seed(base, seed, || match name {
                        "experiment_gpus_2_equals_gpus_1" => experiment(seed),
                        "resume_at_other_world_sizes_continues_the_curve" => resume(seed),
                        "cli_world_size_2_only_rank_0_writes_then_resumes_on_1" => cli_ranks(),
                        "cli_experiment_gpus_2" => cli_experiment(),
                        other => Err(format!("unknown test {other}").into()),
                    })
                })
                .with_ignored_flag(ignored)
            })
            .collect()
    }

    /// A run small enough for the race checker: d_head 64 (what every attention kernel
    /// supports) in one head and one layer, modsum, f32.
    fn tiny(seed: u64, steps: usize) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                vocab: 10,
                d_model: 64,
                n_layer: 1,
                n_head: 1,
                t_max: T,
                k_max: K,
                pause_attention: PauseAttention::Shared,
                dk_bias: 0.0,
                layer_norm_eps: 1e-5,
            },
            objective: cyb::Objective::ap_default(),
            pauses: K,
            steps,
            batch: B,
            seq: T,
            lr: LR,
            min_lr_ratio: 0.1,
            warmup: 1,
            weight_decay: 0.1,
            grad_clip: 1.0,
            seed,
            eval_every: 1,
            eval_batches: 1,
            head: Default::default(),
        }
    }

    const DEVICE: TrainDevice = TrainDevice::Cuda(Precision::F32);

    fn launch(n: usize) -> Result<Launch, Failed> {
        Launch::single_process(n).map_err(err)
    }

    /// A fresh temporary folder.
    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cyb_nccl_runs_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp folder");
        d
    }

    /// The numbers an arm reports: its validation curve (marginal and final NLL, mean
    /// pauses at every point) and its final NLLs on validation and test.
    fn arm_numbers(r: &RunResult) -> Vec<f64> {
        let mut v: Vec<f64> = r
            .curve
            .iter()
            .flat_map(|p| [p.nll, p.nll_final, p.mean_pauses])
            .collect();
        v.extend([
            r.summary.overall.nll,
            r.summary.nll_final,
            r.test.overall.nll,
            r.test.nll_final,
        ]);
        v
    }

    /// The experiment (per seed a pretrained no-pause model, then no-pause and CYB-AP
    /// fine-tuned from it) on `--gpus 2` and on `--gpus 1`: every run reports the
    /// replicas it ran on, and every arm's numbers agree within [`CURVE_RTOL`] (at most
    /// 3 + 3 chained steps at lr 1e-3); the report says where it ran.
    fn experiment(seed: u64) -> R {
        let arms: Vec<_> = default_variants(K)
            .into_iter()
            .filter(|v| v.name == "no-pause" || v.name == "cyb-ap")
            .collect();
        let cfg = |n: usize| -> Result<ExperimentConfig, Failed> {
            Ok(ExperimentConfig {
                pretrain: 3,
                device: DEVICE,
                launch: Some(launch(n)?),
                ..ExperimentConfig::new(tiny(seed, 3), arms.clone(), vec![seed % 1000 + 1])
            })
        };
        let run = |n: usize| {
            run_experiment(&cfg(n)?, &ModSum::default(), false, |_, _, _| {}).map_err(err)
        };
        let (one, two) = (run(1)?, run(2)?);
        let report = cyb::experiment::render_report(&two, "cyb experiment --gpus 2");
        if !report.contains("trained on 2 GPUs, data parallel") {
            return Err(format!("the report does not say it ran on 2 GPUs: {report}").into());
        }
        if one.runs.len() != arms.len() || two.runs.len() != arms.len() {
            return Err(format!("{} and {} runs", one.runs.len(), two.runs.len()).into());
        }
        for (a, b) in one.runs.iter().zip(&two.runs) {
            let name = &arms[a.variant].name;
            if (a.replicas, b.replicas) != (1, 2) {
                return Err(format!(
                    "{name}: ran on {} and {} replicas, expected 1 and 2",
                    a.replicas, b.replicas
                )
                .into());
            }
            let (x, y) = (arm_numbers(b), arm_numbers(a));
            if x.iter().any(|v| !v.is_finite()) {
                return Err(format!("{name}: non-finite numbers {x:?}").into());
            }
            eprintln!(
                "experiment: {name} on 2 GPUs vs 1: largest relative difference {:.2e}",
                max_rel(&x, &y)
            );
            common::assert_close(
                &format!("{name} on 2 GPUs vs 1"),
                &x,
                &y,
                CURVE_ATOL,
                CURVE_RTOL,
            );
        }
        Ok(())
    }

    /// `cfg` on `n` replicas, snapshots beside `base` every `every` steps, resuming
    /// `from` when given.
    fn run_dp(
        cfg: &TrainConfig,
        n: usize,
        base: &Path,
        every: usize,
        from: Option<(cyb::Model<f32>, TrainState)>,
    ) -> Result<TrainOutcome, Failed> {
        let (init, resume) = match from {
            Some((m, s)) => (Some(m), Some(s)),
            None => (None, None),
        };
        let control = RunControl {
            snapshot_base: Some(base.to_path_buf()),
            save_every: every,
            keep: 10,
            resume,
            launch: Some(launch(n)?),
            ..RunControl::default()
        };
        let out = train_with(cfg, &ModSum::default(), init, false, DEVICE, control).map_err(err)?;
        if out.replicas != n {
            return Err(format!("ran on {} replicas, expected {n}", out.replicas).into());
        }
        Ok(out)
    }

    /// The largest relative difference of `got` from `want` (for the log).
    fn max_rel(got: &[f64], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1e-30))
            .fold(0.0, f64::max)
    }

    /// `||got - want|| <= bound * ||want||` over all tensors of two moment sets.
    fn moments_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], bound: f64) -> R {
        let f = |x: &[Vec<f32>]| -> Vec<f64> { x.concat().iter().map(|&v| v as f64).collect() };
        common::rel(what, &f(got), &f(want), bound)
    }

    /// A run of 4 steps on 2 replicas with a snapshot at step 2, against its step-2
    /// snapshot resumed on 1, 2 and 3 replicas:
    /// - the first 2 steps of the history are the snapshot's, bit for bit;
    /// - on 2 replicas again the rest is bit for bit the uninterrupted run (the same
    ///   replicas, the same fixed reduction order);
    /// - on 1 and 3, step 3 starts from the same parameters, so its loss differs only in
    ///   the order of the per-position losses' sum (relative `2 gamma_{BT}`, as in
    ///   tests/gpu_nccl.rs) and its gradient norm only in the order of the gradient sums
    ///   (`20 N u` norm-wise, N = B(K+1)T rows, as there); the last step, the final
    ///   evaluation and the AdamW moments at the end within [`CURVE_RTOL`]; the step
    ///   count continues (a lost optimizer state would restart the moments' averages).
    fn resume(seed: u64) -> R {
        const HALF: usize = 2;
        let cfg = tiny(seed, 2 * HALF);
        let dir = tmpdir("resume");
        let a_base = dir.join("a/model.safetensors");
        std::fs::create_dir_all(a_base.parent().expect("folder")).expect("folder");
        let a = run_dp(&cfg, 2, &a_base, HALF, None)?;
        let (_, end_a) = load_snapshot(&snapshot_path(&a_base, 2 * HALF)).map_err(err)?;
        let gamma = |k: usize| k as f64 * U / (1.0 - k as f64 * U);
        for n in [2, 1, 3] {
            let snap = load_snapshot(&snapshot_path(&a_base, HALF)).map_err(err)?;
            let b_base = dir.join(format!("b{n}/model.safetensors"));
            std::fs::create_dir_all(b_base.parent().expect("folder")).expect("folder");
            let b = run_dp(&cfg, n, &b_base, HALF, Some(snap))?;
            let (_, end_b) = load_snapshot(&snapshot_path(&b_base, 2 * HALF)).map_err(err)?;
            let tag = |what: &str| format!("resumed on {n} replicas: {what}");
            if b.history[..HALF] != a.history[..HALF] || b.curve[..HALF] != a.curve[..HALF] {
                return Err(tag("the steps before the snapshot are not the snapshot's").into());
            }
            if end_b.adamw.t != 2 * HALF as u64 {
                return Err(tag(&format!("AdamW step count {}", end_b.adamw.t)).into());
            }
            if n == 2 {
                if b.history != a.history || b.curve != a.curve || end_b != end_a {
                    return Err(tag("not bit for bit the uninterrupted run").into());
                }
                continue;
            }
            let (la, lb) = (a.history[HALF].loss, b.history[HALF].loss);
            let loss_tol = 2.0 * gamma(B * T);
            if ((lb - la) / la).abs() > loss_tol {
                return Err(tag(&format!(
                    "the first resumed step's loss {lb}, uninterrupted {la} (relative tolerance {loss_tol:e})"
                ))
                .into());
            }
            let (ga, gb) = (
                a.history[HALF].grad_norm as f64,
                b.history[HALF].grad_norm as f64,
            );
            let norm_tol = 20.0 * (B * (K + 1) * T) as f64 * U;
            if ((gb - ga) / ga).abs() > norm_tol {
                return Err(tag(&format!(
                    "the first resumed step's gradient norm {gb}, uninterrupted {ga} (relative tolerance \
                     {norm_tol:e})"
                ))
                .into());
            }
            let losses =
                |o: &TrainOutcome| -> Vec<f64> { o.history.iter().map(|h| h.loss).collect() };
            eprintln!(
                "resume: on {n} replicas: first resumed step: loss {:.2e}, gradient norm {:.2e}, losses \
                 {:.2e} (largest relative differences from the uninterrupted run)",
                ((lb - la) / la).abs(),
                ((gb - ga) / ga).abs(),
                max_rel(&losses(&b), &losses(&a))
            );
            common::assert_close(
                &tag("loss curve"),
                &losses(&b),
                &losses(&a),
                CURVE_ATOL,
                CURVE_RTOL,
            );
            let evals = |o: &TrainOutcome| -> Vec<f64> {
                o.curve
                    .iter()
                    .flat_map(|p| [p.nll, p.nll_final, p.mean_pauses])
                    .collect()
            };
            common::assert_close(
                &tag("validation curve"),
                &evals(&b),
                &evals(&a),
                CURVE_ATOL,
                CURVE_RTOL,
            );
            moments_close(
                &tag("first moments"),
                &end_b.adamw.m,
                &end_a.adamw.m,
                CURVE_RTOL,
            )?;
            moments_close(
                &tag("second moments"),
                &end_b.adamw.v,
                &end_a.adamw.v,
                CURVE_RTOL,
            )?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Every file under `dir`, recursively.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// The tiny `cyb train` run's flags (the batch of 4 splits over 1, 2 and 4).
    fn tiny_cli() -> Vec<String> {
        "train --device cuda --precision f32 --task modsum --steps 2 --batch 4 --ctx 6 \
         --d-model 64 --heads 1 --layers 1 --pauses 1 --eval-batches 1 --save-every 1"
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    fn cyb(args: &[String], env: &[(&str, String)]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cyb"));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Two `cyb train --world-size 2` processes, each told to save into a folder of its
    /// own (`--save`, `--save-every 1`, `--out`): rank 0's folder gets the model, a
    /// snapshot per step and the report, rank 1's nothing. Rank 0's step-1 snapshot
    /// then resumes with `--gpus 1` (a smaller world) to the end; with `--gpus 3`,
    /// which does not split the batch of 4, it is refused, naming the sizes that do.
    fn cli_ranks() -> R {
        let dir = tmpdir("cli");
        let folder = |r: usize| dir.join(format!("rank{r}"));
        let rdv = dir.join("rendezvous.id").to_string_lossy().into_owned();
        let ranks: Vec<_> = (0..2)
            .map(|r| {
                let f = folder(r);
                std::fs::create_dir_all(&f).expect("folder");
                let mut args = tiny_cli();
                args.extend(
                    [
                        "--world-size",
                        "2",
                        "--rank",
                        &r.to_string(),
                        "--rendezvous",
                        &rdv,
                        "--save",
                        &f.join("model.safetensors").to_string_lossy(),
                        "--out",
                        &f.join("out").to_string_lossy(),
                    ]
                    .map(String::from),
                );
                let mut cmd = cyb(&args, &[("LOCAL_RANK", r.to_string())]);
                cmd.stdout(std::process::Stdio::null());
                cmd.stderr(std::process::Stdio::piped());
                cmd.spawn().expect("cyb starts")
            })
            .collect();
        for (r, child) in ranks.into_iter().enumerate() {
            let out = child.wait_with_output().expect("cyb ends");
            if !out.status.success() {
                let e = String::from_utf8_lossy(&out.stderr);
                return Err(format!("rank {r} failed: {e}").into());
            }
        }
        let written = files_under(&folder(1));
        if !written.is_empty() {
            return Err(format!("rank 1 wrote {written:?}").into());
        }
        let base = folder(0).join("model.safetensors");
        for want in [
            base.clone(),
            snapshot_path(&base, 1),
            snapshot_path(&base, 2),
            folder(0).join("out/report.md"),
        ] {
            if !want.exists() {
                return Err(format!("rank 0 did not write {}", want.display()).into());
            }
        }
        let snap = snapshot_path(&base, 1).to_string_lossy().into_owned();
        let resume = |gpus: &str, save: &str| {
            let mut args = tiny_cli();
            args.extend(
                [
                    "--gpus",
                    gpus,
                    "--resume",
                    &snap,
                    "--save",
                    &dir.join(save).to_string_lossy(),
                ]
                .map(String::from),
            );
            cyb(&args, &[]).output().expect("cyb runs")
        };
        let uneven = resume("3", "three.safetensors");
        let e = String::from_utf8_lossy(&uneven.stderr);
        if uneven.status.success()
            || !e.contains("cannot resume on 3 replicas")
            || !e.contains("(1, 2, 4)")
        {
            return Err(format!("resuming a batch of 4 on 3 GPUs: {e}").into());
        }
        let one = resume("1", "one.safetensors");
        let e = String::from_utf8_lossy(&one.stderr);
        if !one.status.success() || !e.contains("resuming at step 1 of 2") {
            return Err(format!("resuming on 1 GPU failed: {e}").into());
        }
        let (_, state) =
            load_snapshot(&snapshot_path(&dir.join("one.safetensors"), 2)).map_err(err)?;
        if state.step != 2 || state.adamw.t != 2 || state.history.len() != 2 {
            return Err(format!(
                "the resumed run ended at step {} (AdamW {}, {} logged steps)",
                state.step,
                state.adamw.t,
                state.history.len()
            )
            .into());
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// `cyb experiment --device cuda --gpus 2` end to end (one step per run): the files
    /// are written and the report says where every run trained.
    fn cli_experiment() -> R {
        let dir = tmpdir("cli_experiment");
        let out = dir.join("exp");
        let args: Vec<String> = "experiment --device cuda --gpus 2 --precision f32 --task modsum \
             --seeds 1 --pretrain 1 --steps 1 --batch 4 --ctx 6 --d-model 64 --heads 1 \
             --layers 1 --pauses 1 --eval-batches 1 --out"
            .split_whitespace()
            .map(String::from)
            .chain([out.to_string_lossy().into_owned()])
            .collect();
        let run = cyb(&args, &[]).output().expect("cyb runs");
        let e = String::from_utf8_lossy(&run.stderr);
        if !run.status.success() {
            return Err(format!("experiment --gpus 2 failed: {e}").into());
        }
        let report = std::fs::read_to_string(out.join("report.md")).map_err(|e| e.to_string())?;
        if !report
            .contains("trained on 2 GPUs, data parallel (f32; every run, the pretraining included)")
            || !out.join("curves.csv").exists()
        {
            return Err(format!("the report does not say it ran on 2 GPUs: {report}").into());
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

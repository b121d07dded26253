//! Where the replicas of a data-parallel run are: the world size, this process's ranks
//! and devices, and how the ranks meet (from `train --gpus N`, `--world-size W --rank R
//! --rendezvous FILE`, or a launcher's environment). Host-only logic, available without
//! any GPU feature; [`crate::gpu::data_parallel`] (feature `nccl`) runs it.
//!
//! ```
//! use cyb::launch::Launch;
//! // One process driving 4 GPUs: ranks 0..4 on devices 0..4.
//! let l = Launch::single_process(4)?;
//! assert_eq!(l.world_size, 4);
//! assert!(l.writes_checkpoints());
//! assert!(l.check_batch(8).is_ok());
//! assert!(l.check_batch(6).is_err()); // 6 does not split over 4 ranks
//! # Ok::<(), cyb::CybError>(())
//! ```

use crate::error::{CybError, Result};
use std::path::PathBuf;
use std::time::Duration;

/// How long a rank waits for the others (the rendezvous file, NCCL's set-up, a step's
/// answers) before it gives up with an error, unless `CYB_NCCL_TIMEOUT_S` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The gradient bucket of a data-parallel step: 25 MiB, PyTorch DDP's `bucket_cap_mb`
/// (`--bucket-mb`, [`Launch::bucket_bytes`]).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// One replica run by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRank {
    /// Rank in the whole run (`0..world_size`).
    pub rank: usize,
    /// CUDA device ordinal in this process.
    pub device: usize,
}

/// The layout of a data-parallel run as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Replicas in the whole run.
    pub world_size: usize,
    /// The replicas this process runs (one host thread each).
    pub local: Vec<LocalRank>,
    /// Where rank 0 writes NCCL's unique id for the others (`None`: every rank is in
    /// this process and the id never leaves it).
    pub rendezvous: Option<PathBuf>,
    /// How long to wait for the other ranks before failing.
    pub timeout: Duration,
    /// Gradients are all-reduced in buckets of at least this many bytes, each launched
    /// on a communication stream as soon as the backward has finished it, so that the
    /// reduction overlaps the rest of the backward; 0: one all-reduce of the whole
    /// gradient after the backward, on the compute stream (the reference path). Default
    /// [`DEFAULT_BUCKET_BYTES`].
    pub bucket_bytes: usize,
}

impl Launch {
    /// One process, `gpus` devices: ranks `0..gpus` on devices `0..gpus`.
    pub fn single_process(gpus: usize) -> Result<Launch> {
        if gpus == 0 {
            return Err(CybError::Param("--gpus must be at least 1".into()));
        }
        Ok(Launch {
            world_size: gpus,
            local: (0..gpus)
                .map(|i| LocalRank { rank: i, device: i })
                .collect(),
            rendezvous: None,
            timeout: timeout_from_env()?,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// One rank of `world_size` processes, on device `device`, meeting through the file
    /// `rendezvous` (on a filesystem every rank sees).
    pub fn one_rank(
        world_size: usize,
        rank: usize,
        device: usize,
        rendezvous: PathBuf,
    ) -> Result<Launch> {
        if world_size == 0 || rank >= world_size {
            return Err(CybError::Param(format!(
                "--rank {rank} with --world-size {world_size}: the rank must be in 0..{world_size}"
            )));
        }
        Ok(Launch {
            world_size,
            local: vec![LocalRank { rank, device }],
            rendezvous: Some(rendezvous),
            timeout: timeout_from_env()?,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// The launch asked for by the flags, or else by a launcher's environment (`RANK`,
    /// `WORLD_SIZE`, `LOCAL_RANK` as torchrun sets them, else SLURM's `SLURM_PROCID`,
    /// `SLURM_NTASKS`, `SLURM_LOCALID`); `None` for a plain one-device run. `env` reads
    /// a variable (`std::env::var(..).ok()` in the CLI; a map in tests). The device of a
    /// rank is `LOCAL_RANK`/`SLURM_LOCALID`, else the rank itself (one machine).
    ///
    /// ```
    /// use cyb::launch::Launch;
    /// let env = |k: &str| match k {
    ///     "SLURM_PROCID" => Some("9".to_string()),
    ///     "SLURM_NTASKS" => Some("16".to_string()),
    ///     "SLURM_LOCALID" => Some("1".to_string()),
    ///     _ => None,
    /// };
    /// let l = Launch::from_flags_and_env(None, None, None, Some("/shared/id".into()), &env)?
    ///     .expect("a launch");
    /// assert_eq!((l.world_size, l.local[0].rank, l.local[0].device), (16, 9, 1));
    /// # Ok::<(), cyb::CybError>(())
    /// ```
    pub fn from_flags_and_env(
        gpus: Option<usize>,
        world_size: Option<usize>,
        rank: Option<usize>,
        rendezvous: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Launch>> {
        if let Some(g) = gpus {
            if world_size.is_some() || rank.is_some() || rendezvous.is_some() {
                return Err(CybError::Param(
                    "--gpus N runs N devices in one process; --world-size/--rank/--rendezvous \
                     run one device per process: give one or the other"
                        .into(),
                ));
            }
            return Launch::single_process(g).map(Some);
        }
        let var = |names: [&str; 2]| -> Result<Option<(String, usize)>> {
            for name in names {
                if let Some(v) = env(name) {
                    let n = v.trim().parse::<usize>().map_err(|_| {
                        CybError::Param(format!("{name}={v:?} is not a whole number"))
                    })?;
                    return Ok(Some((name.to_string(), n)));
                }
            }
            Ok(None)
        };
        let world = match world_size {
            Some(w) => Some(("--world-size".to_string(), w)),
            None => var(["WORLD_SIZE", "SLURM_NTASKS"])?,
        };
        let rank = match rank {
            Some(r) => Some(("--rank".to_string(), r)),
            None => var(["RANK", "SLURM_PROCID"])?,
        };
        let (world, rank) = match (world, rank) {
            (None, None) => return Ok(None),
            // One task (a plain `srun` of one process, WORLD_SIZE=1): a one-device run.
            (Some((_, 1)), None | Some((_, 0))) if rendezvous.is_none() => return Ok(None),
            (Some(w), Some(r)) => (w, r),
            (Some((w, _)), None) => {
                return Err(CybError::Param(format!(
                    "{w} is given but no rank: give --rank R (or set RANK)"
                )))
            }
            (None, Some((r, _))) => {
                return Err(CybError::Param(format!(
                    "{r} is given but no world size: give --world-size W (or set WORLD_SIZE)"
                )))
            }
        };
        let Some(file) = rendezvous else {
            return Err(CybError::Param(format!(
                "a run of {} = {} ranks needs --rendezvous FILE: a path on a filesystem every \
                 rank sees, where rank 0 writes NCCL's id (use a fresh one per run, e.g. \
                 with $SLURM_JOB_ID in its name)",
                world.0, world.1
            )));
        };
        let device = var(["LOCAL_RANK", "SLURM_LOCALID"])?.map_or(rank.1, |(_, d)| d);
        Launch::one_rank(world.1, rank.1, device, file).map(Some)
    }

    /// Whether this process writes checkpoints and snapshots: the one with rank 0.
    pub fn writes_checkpoints(&self) -> bool {
        self.local.iter().any(|l| l.rank == 0)
    }

    /// Sequences per replica for a global batch of `batch`, or an error naming the
    /// batch sizes that split evenly.
    pub fn check_batch(&self, batch: usize) -> Result<usize> {
        let w = self.world_size;
        if batch == 0 || batch % w != 0 {
            let below = (batch / w).max(1) * w;
            return Err(CybError::Param(format!(
                "--batch {batch} does not split evenly over {w} replicas: use a multiple of \
                 {w} (e.g. {below} or {}), or a number of replicas that divides {batch}{}",
                below + w,
                divisors_note(batch)
            )));
        }
        Ok(batch / w)
    }

    /// [`Launch::check_batch`] for a resumed run, which keeps its snapshot's `batch`:
    /// the error names the world sizes it can resume on.
    ///
    /// ```
    /// let l = cyb::launch::Launch::single_process(3)?;
    /// let e = l.check_resumed_batch(4).unwrap_err().to_string();
    /// assert!(e.contains("(1, 2, 4)"), "{e}");
    /// # Ok::<(), cyb::CybError>(())
    /// ```
    pub fn check_resumed_batch(&self, batch: usize) -> Result<usize> {
        self.check_batch(batch).map_err(|_| {
            CybError::Param(format!(
                "cannot resume on {} replicas: the run keeps its snapshot's --batch {batch}, \
                 which does not split evenly over {}; resume on a number of replicas that \
                 divides {batch}{}",
                self.world_size,
                self.world_size,
                divisors_note(batch)
            ))
        })
    }
}

/// " (1, 2, 4, 8)": the world sizes that split `batch`.
fn divisors_note(batch: usize) -> String {
    if batch == 0 {
        return String::new();
    }
    let d: Vec<String> = (1..=batch)
        .filter(|w| batch % w == 0)
        .take(12)
        .map(|w| w.to_string())
        .collect();
    format!(" ({})", d.join(", "))
}

/// `CYB_NCCL_TIMEOUT_S` (whole seconds > 0), else [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var("CYB_NCCL_TIMEOUT_S") {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(CybError::Param(format!(
                "CYB_NCCL_TIMEOUT_S={v:?}: give whole seconds above 0, e.g. 300"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file() -> Option<PathBuf> {
        Some(PathBuf::from("/shared/cyb.id"))
    }

    #[test]
    fn flags_win_over_the_environment() {
        let env = env_of(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3")]);
        let l = Launch::from_flags_and_env(None, Some(2), Some(1), file(), &env)
            .unwrap()
            .unwrap();
        assert_eq!(l.world_size, 2);
        // The device still comes from LOCAL_RANK (there is no flag for it).
        assert_eq!(l.local, vec![LocalRank { rank: 1, device: 3 }]);
        assert!(!l.writes_checkpoints());
    }

    #[test]
    fn torchrun_and_slurm_variables() {
        let env = env_of(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
        let l = Launch::from_flags_and_env(None, None, None, file(), &env)
            .unwrap()
            .unwrap();
        assert_eq!(l.local, vec![LocalRank { rank: 0, device: 0 }]);
        assert!(l.writes_checkpoints());
        let env = env_of(&[
            ("SLURM_PROCID", "11"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "3"),
        ]);
        let l = Launch::from_flags_and_env(None, None, None, file(), &env)
            .unwrap()
            .unwrap();
        assert_eq!(l.world_size, 16);
        assert_eq!(
            l.local,
            vec![LocalRank {
                rank: 11,
                device: 3
            }]
        );
    }

    #[test]
    fn plain_runs_stay_plain() {
        let none = env_of(&[]);
        assert_eq!(
            Launch::from_flags_and_env(None, None, None, None, &none).unwrap(),
            None
        );
        // `srun -n 1` sets SLURM_NTASKS=1, SLURM_PROCID=0: one device.
        let one = env_of(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")]);
        assert_eq!(
            Launch::from_flags_and_env(None, None, None, None, &one).unwrap(),
            None
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let none = env_of(&[]);
        let err = |r: Result<Option<Launch>>| r.unwrap_err().to_string();
        assert!(err(Launch::from_flags_and_env(
            Some(2),
            Some(2),
            None,
            None,
            &none
        ))
        .contains("one or the other"));
        assert!(err(Launch::from_flags_and_env(
            None,
            Some(2),
            Some(1),
            None,
            &none
        ))
        .contains("--rendezvous FILE"));
        assert!(err(Launch::from_flags_and_env(
            None,
            Some(2),
            None,
            file(),
            &none
        ))
        .contains("no rank"));
        assert!(err(Launch::from_flags_and_env(
            None,
            Some(2),
            Some(2),
            file(),
            &none
        ))
        .contains("0..2"));
        let bad = env_of(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(
            err(Launch::from_flags_and_env(None, None, None, file(), &bad)).contains("RANK=\"x\"")
        );
        assert!(Launch::single_process(0).is_err());
    }

    #[test]
    fn uneven_batches_name_the_sizes_that_work() {
        let l = Launch::single_process(3).unwrap();
        assert_eq!(l.check_batch(12).unwrap(), 4);
        let e = l.check_batch(8).unwrap_err().to_string();
        assert!(e.contains("6 or 9"), "{e}");
        assert!(e.contains("(1, 2, 4, 8)"), "{e}");
        assert!(l.check_batch(0).is_err());
    }
}

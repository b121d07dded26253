//! # cyb — Catch Your Breath
//!
//! Language models that decide for themselves how long to think on each token: at
//! every position the model answers or says DK ("don't know"), which buys a pause
//! step. This crate holds the CPU reference of the model and the CYB losses
//! (SPEC.md), and (feature `cuda`) hand-written CUDA kernels checked against it.

pub mod cpu;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod objective;
pub mod rng;

pub use error::{CybError, Result};
pub use objective::{Objective, ObjectiveKind, Reduction, ResolvedObjective, StepWeights};

//! # cyb — Catch Your Breath
//!
//! Language models that decide for themselves how long to think on each token: at
//! every position the model answers or says DK ("don't know"), which buys a pause
//! step. This crate holds the CPU reference of the model and the CYB losses
//! (docs/MATH.md), and (feature `cuda`) hand-written CUDA kernels checked against it.

pub mod atomic_file;
#[cfg(feature = "candle")]
pub mod candle;
pub mod checkpoint;
pub mod checkpoint_tokenizer;
pub mod config;
pub mod console;
pub mod cpu;
pub mod data;
pub mod decode;
pub mod error;
pub mod experiment;
pub mod generated_text;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod hf_import;
pub mod input_file;
pub mod launch;
pub mod limits;
pub mod metrics;
pub mod number;
pub mod objective;
pub mod plot;
pub mod report;
pub mod rng;
pub mod shard_data;
pub mod shards;
pub mod tokenize;
pub mod tokenizer;
pub mod train;
pub mod train_state;

pub use config::ModelConfig;
pub use cpu::model::Model;
pub use error::{CybError, Result};
pub use objective::{
    Discount, Objective, ObjectiveKind, Reduction, ResolvedObjective, StepWeights,
};

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

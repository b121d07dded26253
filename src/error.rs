//! The one error type of the crate: every bad input becomes a `CybError`, never a panic.

use std::path::PathBuf;

/// Everything that can go wrong in `cyb`, with enough context to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum CybError {
    /// A buffer or tensor does not have the length/shape the operation needs.
    #[error("shape error: {0}")]
    Shape(String),
    /// A token or target id outside the vocabulary (targets may also be -1 = ignore).
    #[error("token id {id} at index {index} is out of range for vocabulary size {vocab}")]
    VocabRange { id: i64, index: usize, vocab: usize },
    /// Asked for more pause steps than the model or kernel supports.
    #[error("K = {k} pause steps requested but the maximum is {k_max}")]
    TooManyPauses { k: usize, k_max: usize },
    /// An objective or optimiser parameter that makes no sense (negative weight, NaN, ...).
    #[error("invalid parameter: {0}")]
    Param(String),
    /// A checkpoint that is missing, truncated, or does not match the expected config.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// The training loss became NaN or infinite at `step` (a learning rate too high for
    /// the run): what `cyb experiment --lrs` records as a diverged rate.
    #[error("training diverged: {msg}")]
    Diverged { step: usize, msg: String },
    /// Input data (text file, task name) that cannot be used.
    #[error("data error: {0}")]
    Data(String),
    /// File system errors, with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Anything the CUDA driver, NVRTC or cuBLAS reported (including out of memory).
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// The requested backend is not available in this build or on this machine.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, CybError>;

impl CybError {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CybError::Io {
            path: path.into(),
            source,
        }
    }
}

//! The CPU reference: plain functions that read like docs/MATH.md, checked by f64
//! finite differences and by the independent test vectors in `testdata/v2`.
//!
//! One concern per file: [`embedding`], [`layernorm`], [`attention`], [`gelu`],
//! [`linear`] (the ops, forward and backward), [`params`] and [`model`] (the model of
//! docs/MATH.md, "The model"), [`loss`] (docs/MATH.md, "The five objectives"),
//! [`head_loss`] (the tied head fused with the loss), [`adamw`] (the optimiser), and
//! [`scalar`] (f32/f64 and the GEMM).

// Index loops here mirror docs/MATH.md's subscripts (`a_k`, `h_k`, row `(b, k, t)`), which
// is the point of a reference; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod gelu;
pub mod head_loss;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod model;
pub mod params;
pub mod scalar;

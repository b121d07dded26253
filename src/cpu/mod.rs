//! The CPU reference: plain functions that read like SPEC.md, checked by f64
//! finite differences and by the independent test vectors in `shared/testdata`.

pub mod loss;

//! The size of a model (SPEC sections 2, 5 and 7): what a checkpoint's `config`
//! metadata holds and what every backend is built from.

use crate::error::{CybError, Result};

/// Model sizes. `vocab` counts real tokens only: the embedding table and the output
/// head have `vocab + 1` rows/columns, index `vocab` being PAUSE (input) / DK (output).
///
/// ```
/// let c = cyb::config::ModelConfig { vocab: 32, d_model: 64, n_layer: 2, n_head: 4, t_max: 32, k_max: 3 };
/// assert!(c.validate().is_ok());
/// assert_eq!(c.d_head(), 16);
/// let bad = cyb::config::ModelConfig { n_head: 3, ..c };
/// assert!(bad.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Real tokens `0..vocab` (PAUSE/DK is the extra index `vocab`).
    pub vocab: usize,
    /// Width of the residual stream `d`.
    pub d_model: usize,
    /// Number of transformer blocks `L`.
    pub n_layer: usize,
    /// Attention heads `H`; `d_model` must be a multiple of it.
    pub n_head: usize,
    /// Rows of the position table: the longest sequence `T` the model accepts.
    pub t_max: usize,
    /// Largest pause count `K`: the depth table has `k_max + 1` rows.
    pub k_max: usize,
}

impl ModelConfig {
    /// Checks that every size is usable: nonzero sizes, `d_model % n_head == 0`.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("t_max", self.t_max),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(CybError::Param(format!("config: {name} must be > 0")));
            }
        }
        if self.d_model % self.n_head != 0 {
            return Err(CybError::Param(format!(
                "config: d_model = {} is not a multiple of n_head = {}",
                self.d_model, self.n_head
            )));
        }
        // The PAUSE id `vocab` is stored in i32 token buffers next to real ids.
        if self.vocab >= i32::MAX as usize {
            return Err(CybError::Param(format!(
                "config: vocab = {} does not fit token ids in i32",
                self.vocab
            )));
        }
        Ok(())
    }

    /// Width of one attention head, `d_model / n_head`.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_head.max(1)
    }

    /// The config as the JSON object stored in a checkpoint's `__metadata__`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

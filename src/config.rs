//! The size of a model (docs/MATH.md: "Tokens", "The model", "Checkpoints"): what a
//! checkpoint's `config` metadata holds and what every backend is built from.

use crate::error::{CybError, Result};

/// Model sizes. `vocab` counts real tokens only: the embedding table and the output
/// head have `vocab + 1` rows/columns, index `vocab` being PAUSE (input) / DK (output).
///
/// ```
/// use cyb::config::{ModelConfig, PauseAttention};
/// let c = ModelConfig {
///     vocab: 32, d_model: 64, n_layer: 2, n_head: 4, t_max: 32, k_max: 3,
///     pause_attention: PauseAttention::Shared, dk_bias: 0.0, layer_norm_eps: 1e-5,
/// };
/// assert!(c.validate().is_ok());
/// assert_eq!(c.d_head(), 16);
/// let bad = ModelConfig { n_head: 3, ..c };
/// assert!(bad.validate().is_err());
/// ```
///
/// In a checkpoint (docs/MATH.md, "Checkpoints") `pause_attention` may be absent (v1 files:
/// private), `dk_bias` may be absent (0) and `layer_norm_eps` may be absent (`1e-5`, the
/// value every checkpoint before the key had); any key not listed here is an error, so a
/// file that describes a different model is never evaluated as this one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Which earlier steps a pause step attends to (docs/MATH.md, "Attention: two modes").
    #[serde(default = "PauseAttention::v1_default")]
    pub pause_attention: PauseAttention,
    /// Constant added to the DK logit by the loss and by decoding, never learned
    /// (docs/MATH.md, "DK bias", `b_DK`); 0 means no prior towards DK.
    #[serde(default)]
    pub dk_bias: f64,
    /// The epsilon of every LayerNorm (`1 / sqrt(var + eps)`): `1e-5` of docs/MATH.md ("The
    /// model") for the crate's own models, whatever `layer_norm_epsilon` an imported
    /// Hugging Face model was trained with. Used by the CPU reference, the kernels and
    /// decoding.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// The LayerNorm epsilon of docs/MATH.md, "The model" (and of GPT-2): new models use it,
/// and a checkpoint without the `layer_norm_eps` key was written with it.
pub const DEFAULT_LAYER_NORM_EPS: f64 = 1e-5;

fn default_layer_norm_eps() -> f64 {
    DEFAULT_LAYER_NORM_EPS
}

/// The two attention visibility rules of docs/MATH.md, "Attention: two modes".
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseAttention {
    /// Causal attention over the interleaved stream `x_0, pause.., x_1, ..` (the
    /// paper's Recipe 1): query `(t, k)` sees `(t', k')` iff `t' < t` or
    /// (`t' = t` and `k' <= k`). The default for new models.
    Shared,
    /// No position sees another position's pauses: query `(t, k)` sees `(t', k')` iff
    /// (`k' = 0` and `t' <= t`) or (`t' = t` and `1 <= k' <= k`). Training equals
    /// adaptive inference, and a KV cache holds real tokens only.
    Private,
}

impl PauseAttention {
    /// What a checkpoint without the key means: v1 wrote private-attention models only.
    fn v1_default() -> Self {
        PauseAttention::Private
    }

    /// The name used in checkpoints and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PauseAttention::Shared => "shared",
            PauseAttention::Private => "private",
        }
    }
}

impl std::str::FromStr for PauseAttention {
    type Err = CybError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shared" => Ok(PauseAttention::Shared),
            "private" => Ok(PauseAttention::Private),
            other => Err(CybError::Param(format!(
                "pause attention must be `shared` or `private`, got `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for PauseAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The arithmetic of a GPU training step (`--precision` of `cyb train` and
/// `cyb experiment`; the CPU reference always runs in f32).
///
/// - `F32`: every tensor and every GEMM in f32 (cuBLAS SGEMM, no TF32): the GPU twin
///   of the CPU reference, to about 1e-4.
/// - `Bf16`: mixed precision as trainers use it. Activations, their gradients and a
///   bf16 copy of the weights in bf16; the GEMMs on bf16 tensor cores with f32
///   accumulation (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`), attention on the bf16
///   tensor-core kernels; LayerNorm statistics, softmax and the loss computed in f32;
///   f32 master weights, f32 gradients (the weight-gradient GEMMs write f32), f32
///   AdamW, and the bf16 copy refreshed from the masters after every step. The default
///   on a GPU.
///
/// ```
/// use cyb::config::Precision;
/// assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
/// assert_eq!(Precision::default(), Precision::Bf16);
/// assert!("fp16".parse::<Precision>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// bf16 activations and GEMM inputs, f32 accumulation, statistics and masters.
    #[default]
    Bf16,
}

impl Precision {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = CybError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(CybError::Param(format!(
                "precision must be `f32` or `bf16`, got `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
        if !self.dk_bias.is_finite() {
            return Err(CybError::Param(format!(
                "config: dk_bias = {} must be finite",
                self.dk_bias
            )));
        }
        // f32 kernels add it to a variance: it must be a positive f32 (not 0, which
        // divides by zero on a constant row).
        if !(self.layer_norm_eps.is_finite()
            && self.layer_norm_eps > 0.0
            && (self.layer_norm_eps as f32) > 0.0
            && self.layer_norm_eps <= 1.0)
        {
            return Err(CybError::Param(format!(
                "config: layer_norm_eps = {} must be in (0, 1] and representable in f32",
                self.layer_norm_eps
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"vocab":5,"d_model":4,"n_layer":1,"n_head":2,"t_max":3,"k_max":1}"#;

    /// A v1 config (neither key) loads as private attention without DK bias, with the
    /// LayerNorm epsilon every model had before the key existed.
    #[test]
    fn v1_config_defaults_to_private_without_bias() {
        let c: ModelConfig = serde_json::from_str(V1).unwrap();
        assert_eq!(c.pause_attention, PauseAttention::Private);
        assert_eq!(c.dk_bias, 0.0);
        assert_eq!(c.layer_norm_eps, 1e-5);
    }

    /// The epsilon round-trips, and one the kernels cannot use is an error naming it.
    #[test]
    fn layer_norm_eps_round_trips_and_is_checked() {
        let c = ModelConfig {
            layer_norm_eps: 1e-6,
            ..serde_json::from_str(V1).unwrap()
        };
        let back: ModelConfig = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back.layer_norm_eps, 1e-6);
        for bad in [0.0, -1e-5, f64::NAN, f64::INFINITY, 1e-300, 2.0] {
            let err = ModelConfig {
                layer_norm_eps: bad,
                ..c.clone()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(err.contains("layer_norm_eps"), "{bad}: {err}");
        }
    }

    /// Both keys round-trip, and a key the crate does not know is an error naming it.
    #[test]
    fn v2_keys_round_trip_and_unknown_keys_fail() {
        let c = ModelConfig {
            pause_attention: PauseAttention::Shared,
            dk_bias: 2.2,
            ..serde_json::from_str(V1).unwrap()
        };
        let back: ModelConfig = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back, c);
        let unknown = V1.replace("}", r#","pause_policy":"x"}"#);
        let err = serde_json::from_str::<ModelConfig>(&unknown).unwrap_err();
        assert!(err.to_string().contains("pause_policy"), "{err}");
        let bad_mode = V1.replace("}", r#","pause_attention":"sharde"}"#);
        assert!(serde_json::from_str::<ModelConfig>(&bad_mode).is_err());
        assert_eq!(
            "private".parse::<PauseAttention>().unwrap(),
            PauseAttention::Private
        );
        assert!("both".parse::<PauseAttention>().is_err());
    }
}

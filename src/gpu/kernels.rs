//! Shared launch plumbing for the model's kernel wrappers: a loaded kernel module with its
//! functions by name, launch shapes, and the checks every wrapper makes before a launch
//! (lengths against the shapes, sizes that fit the kernels' `int` indices).

use super::{cuda_err, GpuContext};
use crate::error::{CybError, Result};
use cudarc::driver::{CudaFunction, LaunchConfig};
use std::collections::HashMap;

/// Threads per block of the elementwise (grid-stride) kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;
/// Upper bound on the blocks of a grid-stride launch (enough to fill an H200 many times).
const MAX_GRID: usize = 16384;
/// Rows per chunk of the two-pass column sums (layernorm, bias, embedding gradients).
pub(crate) const ROWS_PER_CHUNK: usize = 256;

/// The functions of one `kernels/*.cu`, loaded into a context.
pub(crate) struct KernelSet {
    file: &'static str,
    funcs: HashMap<String, CudaFunction>,
}

impl KernelSet {
    /// Loads `image` (the fatbin of `kernels/{file}`, from [`super::images`]) and the
    /// functions `names`.
    pub(crate) fn load(
        gpu: &GpuContext,
        image: &'static [u8],
        file: &'static str,
        names: &[&str],
    ) -> Result<Self> {
        let module = gpu.load_module(image, file)?;
        let mut funcs = HashMap::new();
        for &name in names {
            let f = module.load_function(name).map_err(cuda_err(&format!(
                "loading kernel {name} of kernels/{file}"
            )))?;
            funcs.insert(name.to_string(), f);
        }
        Ok(KernelSet { file, funcs })
    }

    /// A function loaded by [`KernelSet::load`].
    pub(crate) fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| {
            CybError::Cuda(format!(
                "kernel {name} was not loaded from kernels/{}",
                self.file
            ))
        })
    }
}

/// `base` with both dtype suffixes, for [`KernelSet::load`].
pub(crate) fn both(base: &str) -> [String; 2] {
    [format!("{base}_f32"), format!("{base}_bf16")]
}

/// A grid-stride launch over `total` elements (at least one block).
pub(crate) fn elementwise_cfg(total: usize) -> LaunchConfig {
    let blocks = total
        .div_ceil(ELEMENTWISE_THREADS as usize)
        .clamp(1, MAX_GRID);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `n` as the kernels' `int`, or a shape error naming it.
pub(crate) fn as_i32(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        CybError::Shape(format!(
            "{what} = {n} is too large for the kernels' 32-bit indices"
        ))
    })
}

/// Fails unless a buffer holds at least `want` elements.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(CybError::Shape(format!(
            "{what} has {got} elements, needs {want}"
        )));
    }
    Ok(())
}

/// Byte offset of element `i` of an `f32` buffer.
pub(crate) fn f32_offset(i: usize) -> u64 {
    (i * std::mem::size_of::<f32>()) as u64
}

/// The PTX text embedded in a fatbin of [`super::images`], for the signature tests.
#[cfg(test)]
pub(crate) fn image_ptx(image: &'static [u8]) -> &'static str {
    super::fatbin::ptx(image).unwrap_or_else(|e| panic!("{e}"))
}

/// Parameter types of kernel `name` in `ptx`, one letter each: `p` a 64-bit value (a
/// pointer or a `long long`), `i` a 32-bit integer, `f` a `float`, `d` a `double`.
/// Lets unit tests check, without a GPU, that a launch pushes what the kernel takes.
#[cfg(test)]
pub(crate) fn ptx_params(ptx: &str, name: &str) -> String {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no .entry {name} in the PTX"));
    let body = &ptx[start..];
    let end = body.find(')').expect("closing parenthesis");
    body[..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with(".param .u64") || l.starts_with(".param .s64") {
                Some('p')
            } else if l.starts_with(".param .u32") || l.starts_with(".param .s32") {
                Some('i')
            } else if l.starts_with(".param .f32") {
                Some('f')
            } else if l.starts_with(".param .f64") {
                Some('d')
            } else if l.starts_with(".param") {
                Some('?')
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::images;
    use super::{image_ptx, ptx_params};

    /// Parameter types of every model kernel in the order the wrappers push them:
    /// `p` a 64-bit value (a pointer or a `long long`), `i` an `int`, `f` a `float`,
    /// `d` a `double`. Checked against the PTX in the fatbins that build.rs produced, so a kernel
    /// signature that drifts from its launch fails here, without a GPU.
    const SIGNATURES: &[(&str, &str, &str)] = &[
        ("layernorm", "layernorm_forward_f32", "ppppppiif"),
        ("layernorm", "layernorm_forward_bf16", "ppppppiif"),
        ("layernorm", "layernorm_backward_dinp_f32", "ppppppii"),
        ("layernorm", "layernorm_backward_dinp_bf16", "ppppppii"),
        (
            "layernorm",
            "layernorm_backward_params_partial_f32",
            "ppppiiip",
        ),
        (
            "layernorm",
            "layernorm_backward_params_partial_bf16",
            "ppppiiip",
        ),
        ("layernorm", "layernorm_backward_params_finalize", "piipp"),
        ("gelu", "bias_gelu_forward_f32", "ppppi"),
        ("gelu", "bias_gelu_forward_bf16", "ppppi"),
        ("gelu", "gelu_backward_f32", "pppp"),
        ("gelu", "gelu_backward_bf16", "pppp"),
        ("residual", "bias_add_f32", "pppi"),
        ("residual", "bias_add_bf16", "pppi"),
        ("residual", "bias_residual_f32", "ppppi"),
        ("residual", "bias_residual_bf16", "ppppi"),
        ("residual", "colsum_partial_f32", "piiip"),
        ("residual", "colsum_partial_bf16", "piiip"),
        ("residual", "colsum_finalize", "piip"),
        ("embedding", "embedding_forward_f32", "pppppiiiii"),
        ("embedding", "embedding_forward_bf16", "pppppiiiii"),
        ("embedding", "embedding_pos_backward_f32", "ppiiii"),
        ("embedding", "embedding_pos_backward_bf16", "ppiiii"),
        ("embedding", "embedding_plane_partial_f32", "piiiiip"),
        ("embedding", "embedding_plane_partial_bf16", "piiiiip"),
        ("embedding", "embedding_tok_backward_f32", "pppppiii"),
        ("embedding", "embedding_tok_backward_bf16", "pppppiii"),
        ("embedding", "embedding_depth_finalize", "piiipp"),
        ("adamw", "grad_sq_partial", "ppp"),
        ("adamw", "grad_norm_finalize", "pifp"),
        ("adamw", "adamw_update", "pppppfffffddp"),
        ("adamw", "cast_f32_to_bf16", "ppp"),
    ];

    fn ptx_of(file: &str) -> &'static str {
        image_ptx(match file {
            "layernorm" => images::LAYERNORM,
            "gelu" => images::GELU,
            "residual" => images::RESIDUAL,
            "embedding" => images::EMBEDDING,
            "adamw" => images::ADAMW,
            other => panic!("no kernels for {other}"),
        })
    }

    #[test]
    fn model_kernel_signatures_match_launches() {
        for (file, name, want) in SIGNATURES {
            assert_eq!(
                ptx_params(ptx_of(file), name),
                *want,
                "parameters of {name} in kernels/{file}.cu"
            );
        }
    }
}

//! Linear layers `y = x W^T (+ b)` with `W: [out, in]` (SPEC sections 5 and 7) through
//! cuBLAS: the twin of [`crate::cpu::linear`] and of the tied head
//! `logits = LN_f(h) · E^T` (a Linear without bias whose weight is `tok_emb`).
//!
//! cuBLAS is column-major; a row-major `[r, c]` matrix is its column-major transpose,
//! so every product below is the transposed product of the row-major formula. Biases
//! are added by [`super::residual::ResidualKernels`] (fused with the residual where
//! there is one) and their gradients reduced there. f32 runs `cublasSgemm` in the
//! default math mode (full f32, no TF32), so results are reproducible run to run.

use super::{GpuContext, LogitElem};
use crate::error::{CybError, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::sync::Arc;

use super::kernels::check_len;

/// A cuBLAS handle on the context's stream.
pub struct Linear {
    blas: CudaBlas,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linear")
    }
}

fn dim(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| CybError::Shape(format!("{what} = {n} is too large for cuBLAS")))
}

fn blas_err(what: &str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> CybError + '_ {
    move |e| CybError::Cuda(format!("cuBLAS {what}: {e:?}"))
}

/// `T` that cuBLAS multiplies (f32; bf16 with f32 accumulation).
pub trait GemmElem: LogitElem {
    /// 1 and 0 in `T`.
    #[doc(hidden)]
    fn one_zero() -> (Self, Self);
}
impl GemmElem for f32 {
    fn one_zero() -> (f32, f32) {
        (1.0, 0.0)
    }
}
impl GemmElem for half::bf16 {
    fn one_zero() -> (half::bf16, half::bf16) {
        (half::bf16::ONE, half::bf16::ZERO)
    }
}

impl Linear {
    /// A cuBLAS handle whose work is queued on `gpu`'s stream.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        // SAFETY: only dlopen()s the library to see whether it exists.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CybError::Unavailable(
                "cuBLAS (libcublas.so.13) is not on the library path; the GPU model needs it \
                 for its GEMMs (add the directory holding it, e.g. the nvidia-cublas wheel's \
                 lib/, to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        // cudarc panics when a symbol is missing (a library older than the bindings).
        let stream = gpu.stream().clone();
        let blas = std::panic::catch_unwind(move || CudaBlas::new(stream))
            .map_err(|_| {
                CybError::Unavailable("cuBLAS could not be loaded (missing symbols)".into())
            })?
            .map_err(blas_err("creating a handle"))?;
        Ok(Linear { blas })
    }

    /// Lets f32 GEMMs use the TF32 tensor cores (inputs rounded to a 10-bit mantissa,
    /// f32 accumulation): several times faster, with relative errors near 3e-4 instead
    /// of ~1e-6. Off by default: the CPU comparisons assume full f32.
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        use cudarc::cublas::sys::cublasMath_t::{CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH};
        let mode = if on {
            CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle lives as long as `self.blas`; the call only sets a mode.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .map_err(blas_err("setting the math mode"))
    }

    /// out: `[N, OC]` = inp `[N, C]` · weight `[OC, C]`^T (overwritten; no bias).
    pub fn forward<T: GemmElem>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        check_len("linear out", out.len(), n * oc)?;
        check_len("linear inp", inp.len(), n * c)?;
        check_len("linear weight", weight.len(), oc * c)?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        let (one, zero) = T::one_zero();
        let cfg = GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: dim("OC", oc)?,
            n: dim("N", n)?,
            k: dim("C", c)?,
            alpha: one,
            lda: dim("C", c.max(1))?,
            ldb: dim("C", c.max(1))?,
            beta: zero,
            ldc: dim("OC", oc)?,
        };
        // SAFETY: column-major Y^T [OC, N] (ld OC) = W^T' [OC, C] (W row-major read
        // transposed, ld C) · X^T [C, N] (ld C); the three lengths were checked above.
        unsafe { self.blas.gemm(cfg, weight, inp, out) }.map_err(blas_err("linear forward"))
    }

    /// dinp: `[N, C]` = dout `[N, OC]` · weight `[OC, C]` (overwritten).
    pub fn backward_input<T: GemmElem>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        dout: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        check_len("linear dinp", dinp.len(), n * c)?;
        check_len("linear dout", dout.len(), n * oc)?;
        check_len("linear weight", weight.len(), oc * c)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (one, zero) = T::one_zero();
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: dim("C", c)?,
            n: dim("N", n)?,
            k: dim("OC", oc)?,
            alpha: one,
            lda: dim("C", c)?,
            ldb: dim("OC", oc.max(1))?,
            beta: zero,
            ldc: dim("C", c)?,
        };
        // SAFETY: column-major dX^T [C, N] (ld C) = W^T [C, OC] (W row-major, ld C) ·
        // dY^T [OC, N] (ld OC); lengths checked above.
        unsafe { self.blas.gemm(cfg, weight, dout, dinp) }
            .map_err(blas_err("linear backward (input)"))
    }

    /// dweight: `[OC, C]` **+=** dout `[N, OC]`^T · inp `[N, C]`.
    pub fn backward_weight<T: GemmElem>(
        &self,
        dweight: &mut impl DevicePtrMut<T>,
        dout: &impl DevicePtr<T>,
        inp: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        check_len("linear dweight", dweight.len(), oc * c)?;
        check_len("linear dout", dout.len(), n * oc)?;
        check_len("linear inp", inp.len(), n * c)?;
        if c == 0 || oc == 0 || n == 0 {
            return Ok(());
        }
        let (one, _) = T::one_zero();
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_T,
            m: dim("C", c)?,
            n: dim("OC", oc)?,
            k: dim("N", n)?,
            alpha: one,
            lda: dim("C", c)?,
            ldb: dim("OC", oc)?,
            beta: one,
            ldc: dim("C", c)?,
        };
        // SAFETY: column-major dW^T [C, OC] (ld C) += X^T [C, N] (ld C) · dY [N, OC]
        // (dY^T stored [OC, N] with ld OC, read transposed); lengths checked above.
        unsafe { self.blas.gemm(cfg, inp, dout, dweight) }
            .map_err(blas_err("linear backward (weight)"))
    }
}

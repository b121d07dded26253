//! Linear layers `y = x W^T (+ b)` with `W: [out, in]` (docs/MATH.md, "The model" and
//! "Checkpoints") through cuBLAS: the twin of [`crate::cpu::linear`] and of the tied head
//! `logits = LN_f(h) · E^T` (a Linear without bias whose weight is `tok_emb`).
//!
//! cuBLAS is column-major; a row-major `[r, c]` matrix is its column-major transpose,
//! so every product below is the transposed product of the row-major formula. Biases
//! are added by [`super::residual::ResidualKernels`] (fused with the residual where
//! there is one) and their gradients reduced there. f32 runs `cublasSgemm` in the
//! default math mode (full f32, no TF32), so results are reproducible run to run; bf16
//! runs `cublasGemmEx` with bf16 inputs and `CUBLAS_COMPUTE_32F` (f32 accumulation).
//! [`Linear::backward_weight_f32`] is the mixed-precision weight gradient: `T` inputs,
//! an f32 gradient accumulated in f32 (the model uses it in both precisions: for f32 it
//! is the same product as SGEMM). The `_ld` variants take the row stride of the
//! `[N, OC]` side separately (the model's padded logits).

use super::{GpuContext, LogitElem};
use crate::error::{CybError, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

use super::kernels::check_len;

/// A cuBLAS handle on the context's stream.
pub struct Linear {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
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
    /// The `cudaDataType` of `T` for `cublasGemmEx`.
    #[doc(hidden)]
    fn data_type() -> cudaDataType_t;
}
impl GemmElem for f32 {
    fn one_zero() -> (f32, f32) {
        (1.0, 0.0)
    }
    fn data_type() -> cudaDataType_t {
        cudaDataType_t::CUDA_R_32F
    }
}
impl GemmElem for half::bf16 {
    fn one_zero() -> (half::bf16, half::bf16) {
        (half::bf16::ONE, half::bf16::ZERO)
    }
    fn data_type() -> cudaDataType_t {
        cudaDataType_t::CUDA_R_16BF
    }
}

/// Elements a row-major `[rows, cols]` matrix with row stride `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

fn check_ld(what: &str, ld: usize, cols: usize) -> Result<()> {
    if ld < cols {
        return Err(CybError::Shape(format!(
            "{what}: row stride {ld} is smaller than the row ({cols} elements)"
        )));
    }
    Ok(())
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
        let s2 = stream.clone();
        let blas = std::panic::catch_unwind(move || CudaBlas::new(s2))
            .map_err(|_| {
                CybError::Unavailable("cuBLAS could not be loaded (missing symbols)".into())
            })?
            .map_err(blas_err("creating a handle"))?;
        Ok(Linear { blas, stream })
    }

    /// Lets f32 GEMMs use the TF32 tensor cores (inputs rounded to a 10-bit mantissa,
    /// f32 accumulation): several times faster, with relative errors near 3e-4 instead
    /// of ~1e-6. Off by default: the CPU comparisons assume full f32. bf16 GEMMs are not
    /// affected (they always run on the bf16 tensor cores with f32 accumulation).
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

    /// out: `[N, OC]` = inp `[N, C]` · weight `[OC, C]`^T (overwritten; no bias). For
    /// bf16 this is `cublasGemmEx` with bf16 inputs and output and `CUBLAS_COMPUTE_32F`
    /// (f32 accumulation, one rounding to bf16 at the end).
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
        self.forward_ld(out, inp, weight, n, c, oc, oc)
    }

    /// [`Linear::forward`] writing rows of `out` with stride `ld_out >= OC` (a padded
    /// logits buffer; the padding is not written).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_ld<T: GemmElem>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
        ld_out: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        check_ld("linear out", ld_out, oc)?;
        check_len("linear out", out.len(), span(n, oc, ld_out))?;
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
            ldc: dim("row stride", ld_out)?,
        };
        // SAFETY: column-major Y^T [OC, N] (ld = the row stride) = W^T' [OC, C] (W
        // row-major read transposed, ld C) · X^T [C, N] (ld C); the three spans were
        // checked above.
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
        self.backward_input_ld(dinp, dout, weight, n, c, oc, oc)
    }

    /// [`Linear::backward_input`] reading rows of `dout` with stride `ld_out >= OC`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input_ld<T: GemmElem>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        dout: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
        ld_out: usize,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        check_ld("linear dout", ld_out, oc)?;
        check_len("linear dinp", dinp.len(), n * c)?;
        check_len("linear dout", dout.len(), span(n, oc, ld_out))?;
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
            ldb: dim("row stride", ld_out.max(1))?,
            beta: zero,
            ldc: dim("C", c)?,
        };
        // SAFETY: column-major dX^T [C, N] (ld C) = W^T [C, OC] (W row-major, ld C) ·
        // dY^T [OC, N] (ld = the row stride); spans checked above.
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

    /// Mixed precision: dweight (**f32**) `[OC, C]` **+=** dout `[N, OC]`^T · inp
    /// `[N, C]` with `dout` and `inp` in `T` (bf16 activations) read with `dout`'s row
    /// stride `ld_out >= OC`. One `cublasGemmEx` with `T` inputs, an f32 output and
    /// `CUBLAS_COMPUTE_32F`: the products are accumulated in f32 and added to the f32
    /// gradient without a rounding to bf16 in between.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_weight_f32<T: GemmElem>(
        &self,
        dweight: &mut impl DevicePtrMut<f32>,
        dout: &impl DevicePtr<T>,
        inp: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
        ld_out: usize,
    ) -> Result<()> {
        check_ld("linear dout", ld_out, oc)?;
        check_len("linear dweight", dweight.len(), oc * c)?;
        check_len("linear dout", dout.len(), span(n, oc, ld_out))?;
        check_len("linear inp", inp.len(), n * c)?;
        if c == 0 || oc == 0 || n == 0 {
            return Ok(());
        }
        let (m, nn, k) = (dim("C", c)?, dim("OC", oc)?, dim("N", n)?);
        let (lda, ldb, ldc) = (dim("C", c)?, dim("row stride", ld_out)?, dim("C", c)?);
        let (alpha, beta) = (1.0f32, 1.0f32);
        let (a, _ga) = inp.device_ptr(&self.stream);
        let (b, _gb) = dout.device_ptr(&self.stream);
        let (cp, _gc) = dweight.device_ptr_mut(&self.stream);
        // SAFETY: column-major dW^T [C, OC] (ld C, f32) += X^T [C, N] (ld C) · dY [N, OC]
        // (dY^T stored [OC, N] with ld = the row stride, read transposed); spans checked
        // above; alpha and beta are host f32 scalars, as CUBLAS_COMPUTE_32F requires;
        // the pointers stay valid while the guards live (to the end of this call, the
        // work is ordered on the handle's stream).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                CUBLAS_OP_N,
                CUBLAS_OP_T,
                m,
                nn,
                k,
                (&alpha) as *const f32 as *const _,
                a as *const _,
                T::data_type(),
                lda,
                b as *const _,
                T::data_type(),
                ldb,
                (&beta) as *const f32 as *const _,
                cp as *mut _,
                cudaDataType_t::CUDA_R_32F,
                ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("linear backward (weight, f32 accumulation)"))
    }
}

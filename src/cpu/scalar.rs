//! The float types the CPU model runs in, and the one GEMM entry point.
//!
//! Training runs in `f32`; gradient checks and the reference vectors of `testdata/v2`
//! run the same code in `f64`. All the heavy lifting is `matrixmultiply`'s sgemm/dgemm (threaded). Its
//! threads split the output `C` into blocks and each block sums over `k` in a fixed
//! order, so results do not depend on thread scheduling.

use num_traits::Float;
use std::fmt::{Debug, Display};
use std::ops::{AddAssign, MulAssign, SubAssign};

/// A float the model can be computed in (`f32` or `f64`).
pub trait Scalar:
    Float
    + Send
    + Sync
    + Default
    + Debug
    + Display
    + AddAssign
    + SubAssign
    + MulAssign
    + std::iter::Sum
    + 'static
{
    /// `c = alpha * a * b + beta * c` for `a: [m, k]`, `b: [k, n]` given by strides
    /// (matrixmultiply's convention). `beta = 0` never reads `c`.
    ///
    /// # Safety
    /// Every element addressed by the sizes and strides must lie inside the
    /// allocations behind `a`, `b` and `c`, and `c` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );

    /// The nearest value of this type (rounding for `f32`).
    fn of(x: f64) -> Self;

    /// As `f64` (exact).
    fn to_f64_lossless(self) -> f64;
}

macro_rules! impl_scalar {
    ($t:ty, $gemm:path) => {
        impl Scalar for $t {
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded; the caller guarantees the extents (see the trait).
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
            fn of(x: f64) -> Self {
                x as $t
            }
            fn to_f64_lossless(self) -> f64 {
                self as f64
            }
        }
    };
}

impl_scalar!(f32, matrixmultiply::sgemm);
impl_scalar!(f64, matrixmultiply::dgemm);

/// How an operand of [`matmul`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// As used: `a` is `[m, k]`, `b` is `[k, n]`.
    N,
    /// Transposed in memory: `a` is stored `[k, m]`, `b` is stored `[n, k]`.
    T,
}

/// `c[m, n] (+)= op(a)[m, k] · op(b)[k, n]`, row-major, overwriting `c` unless
/// `accumulate`.
///
/// Sizes come from the model's own shapes, never from user input, so a length
/// mismatch is a bug in this crate and panics (it would otherwise be UB).
///
/// ```
/// use cyb::cpu::scalar::{matmul, Op};
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // [2, 2]
/// let b = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]; // stored [3, 2], used transposed
/// let mut c = [0.0f32; 6];
/// matmul(&mut c, &a, Op::N, &b, Op::T, 2, 2, 3, false);
/// assert_eq!(c, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Scalar>(
    c: &mut [T],
    a: &[T],
    op_a: Op,
    b: &[T],
    op_b: Op,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        a.len() == m * k && b.len() == k * n && c.len() == m * n,
        "matmul: a {} b {} c {} for m={m} k={k} n={n}",
        a.len(),
        b.len(),
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    let (rsa, csa) = match op_a {
        Op::N => (k as isize, 1),
        Op::T => (1, m as isize),
    };
    let (rsb, csb) = match op_b {
        Op::N => (n as isize, 1),
        Op::T => (1, k as isize),
    };
    let beta = if accumulate { T::one() } else { T::zero() };
    // SAFETY: the three lengths were checked above against m, k, n, and the strides
    // address exactly the row-major [m,k]/[k,m], [k,n]/[n,k] and [m,n] arrays; `c` is
    // a unique borrow so it cannot alias `a` or `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            T::one(),
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

//! Linear layer `y = x W^T + b` with `W: [out, in]` (PyTorch convention, docs/MATH.md,
//! "Checkpoints"), forward and backward as GEMMs.

use crate::cpu::scalar::{matmul, Op, Scalar};

/// out: `[N, OC]`; inp: `[N, C]`; weight: `[OC, C]`; bias: `[OC]`.
pub fn linear_forward<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: &[T],
    n: usize,
    c: usize,
    oc: usize,
) {
    matmul(out, inp, Op::N, weight, Op::T, n, c, oc, false);
    for row in out.chunks_mut(oc) {
        for (y, &b) in row.iter_mut().zip(bias) {
            *y += b;
        }
    }
}

/// Backward of [`linear_forward`]: **overwrites** `dinp: [N, C]` with `dout · W`, and
/// **accumulates** `dweight += dout^T · inp` (`[OC, C]`) and `dbias += Σ_rows dout`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Scalar>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    n: usize,
    c: usize,
    oc: usize,
) {
    matmul(dinp, dout, Op::N, weight, Op::N, n, oc, c, false);
    matmul(dweight, dout, Op::T, inp, Op::N, oc, n, c, true);
    // Sequential over rows: a fixed summation order.
    for row in dout.chunks(oc) {
        for (db, &g) in dbias.iter_mut().zip(row) {
            *db += g;
        }
    }
}

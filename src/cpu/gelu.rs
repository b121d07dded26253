//! GELU, tanh approximation (docs/MATH.md, "The model", as in GPT-2):
//! `gelu(x) = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))`.

use crate::cpu::scalar::Scalar;
use rayon::prelude::*;

const GELU_COEF: f64 = 0.044715;

/// Elements per rayon task: enough work to amortise the task overhead.
const CHUNK: usize = 4096;

/// `tanh(u) = 1 - 2/(exp(2u) + 1)`: exact in real arithmetic, saturates correctly to
/// ±1 (exp overflows to inf or underflows to 0), and is several times faster than
/// libm's `tanhf`, which dominated the CPU training step.
fn tanh<T: Scalar>(u: T) -> T {
    let two = T::of(2.0);
    T::one() - two / ((two * u).exp() + T::one())
}

fn sqrt_2_over_pi<T: Scalar>() -> T {
    T::of((2.0 / std::f64::consts::PI).sqrt())
}

/// out: `[N]`; inp: `[N]` (any shape, elementwise).
pub fn gelu_forward<T: Scalar>(out: &mut [T], inp: &[T]) {
    let (s, c, half) = (sqrt_2_over_pi::<T>(), T::of(GELU_COEF), T::of(0.5));
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let u = s * (x + c * x * x * x);
                *o = half * x * (T::one() + tanh(u));
            }
        });
}

/// Overwrites `dinp` with `dout · gelu'(inp)`.
pub fn gelu_backward<T: Scalar>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    let (s, c, half) = (sqrt_2_over_pi::<T>(), T::of(GELU_COEF), T::of(0.5));
    let three = T::of(3.0);
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| {
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                let u = s * (x + c * x * x * x);
                let th = tanh(u);
                let sech2 = T::one() - th * th;
                let du = s * (T::one() + three * c * x * x);
                *dx = dy * (half * (T::one() + th) + half * x * sech2 * du);
            }
        });
}

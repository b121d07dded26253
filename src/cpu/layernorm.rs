//! LayerNorm over the last dimension (docs/MATH.md, "The model"; its epsilon is the model's
//! `layer_norm_eps`, `1e-5` unless an imported model says otherwise), saving the mean
//! and reciprocal standard deviation of every row for the backward (which therefore
//! needs no epsilon).

use crate::cpu::scalar::Scalar;
use rayon::prelude::*;

/// out: `[N, C]`, mean: `[N]`, rstd: `[N]`; inp: `[N, C]`; weight, bias: `[C]`;
/// `rstd = 1 / sqrt(var + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Scalar>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: &[T],
    c: usize,
    eps: f64,
) {
    let eps = T::of(eps);
    let n = T::of(c as f64);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (m_out, s_out))| {
            let m = x.iter().copied().sum::<T>() / n;
            let var = x.iter().map(|&v| (v - m) * (v - m)).sum::<T>() / n;
            let s = T::one() / (var + eps).sqrt();
            for i in 0..c {
                o[i] = (x[i] - m) * s * weight[i] + bias[i];
            }
            *m_out = m;
            *s_out = s;
        });
}

/// Backward of [`layernorm_forward`]: **accumulates** into `dinp: [N, C]`, `dweight`
/// and `dbias: [C]`, from `dout: [N, C]` and what the forward saved.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Scalar>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    c: usize,
) {
    let n = T::of(c as f64);
    // dinp rows are independent: parallel.
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|(((dx, dy), x), (&m, &s))| {
            // With n̂ = (x - mean)·rstd and g = dy·w:
            // dx = rstd · (g - mean(g) - n̂ · mean(g·n̂)).
            let mut g_mean = T::zero();
            let mut gn_mean = T::zero();
            for i in 0..c {
                let g = dy[i] * weight[i];
                g_mean += g;
                gn_mean += g * (x[i] - m) * s;
            }
            g_mean = g_mean / n;
            gn_mean = gn_mean / n;
            for i in 0..c {
                let norm = (x[i] - m) * s;
                dx[i] += s * (dy[i] * weight[i] - g_mean - norm * gn_mean);
            }
        });
    // The parameter gradients sum over rows: sequential, so the order is fixed.
    for (row, (dy, x)) in dout.chunks(c).zip(inp.chunks(c)).enumerate() {
        let (m, s) = (mean[row], rstd[row]);
        for i in 0..c {
            dweight[i] += dy[i] * (x[i] - m) * s;
            dbias[i] += dy[i];
        }
    }
}

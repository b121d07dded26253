//! Input vectors of the pause-step expansion (docs/MATH.md, "Pause steps"):
//! `h[b, k, t] = E[tok] + P[t] + D[k]`, where step `(t, 0)` reads the real token
//! `x[b, t]` and every step `(t, k >= 1)` reads PAUSE (row `V` of `E`).
//!
//! Layout is depth-major `[B, K+1, T, d]`: row `(b*(K+1) + k)*T + t`.

use crate::cpu::scalar::Scalar;

/// Sizes of the expanded activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepShape {
    /// `B`
    pub batch: usize,
    /// `K` (there are `K+1` steps per position)
    pub pauses: usize,
    /// `T`
    pub seq: usize,
}

impl StepShape {
    /// Number of rows `B*(K+1)*T`.
    pub fn rows(&self) -> usize {
        self.batch * (self.pauses + 1) * self.seq
    }
    /// Row of step `(t, k)` of batch `b` (docs/MATH.md, "Pause steps").
    pub fn row(&self, b: usize, k: usize, t: usize) -> usize {
        (b * (self.pauses + 1) + k) * self.seq + t
    }
}

/// Calls `f(row, token, t, k)` for every step in row order, where `token` is what
/// step `(t, k)` reads: the real token `x[b, t]` at `k = 0`, PAUSE at `k >= 1`.
fn for_each_step(
    tokens: &[i32],
    s: StepShape,
    pause: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    for b in 0..s.batch {
        for k in 0..=s.pauses {
            for t in 0..s.seq {
                let tok = if k == 0 {
                    tokens[b * s.seq + t] as usize
                } else {
                    pause
                };
                f(s.row(b, k, t), tok, t, k);
            }
        }
    }
}

/// out: `[B, K+1, T, d]`; tokens: `[B, T]`, already checked to lie in `0..V`;
/// tok_emb: `[V+1, d]` (PAUSE = row `V`), pos_emb: `[>= T, d]`, depth_emb: `[>= K+1, d]`.
#[allow(clippy::too_many_arguments)]
pub fn embedding_forward<T: Scalar>(
    out: &mut [T],
    tokens: &[i32],
    tok_emb: &[T],
    pos_emb: &[T],
    depth_emb: &[T],
    s: StepShape,
    d: usize,
    pause: usize,
) {
    for_each_step(tokens, s, pause, |row, tok, t, k| {
        let o = &mut out[row * d..][..d];
        let (e, p, dd) = (
            &tok_emb[tok * d..][..d],
            &pos_emb[t * d..][..d],
            &depth_emb[k * d..][..d],
        );
        for i in 0..d {
            o[i] = e[i] + p[i] + dd[i];
        }
    });
}

/// Accumulates `dout: [B, K+1, T, d]` into the three tables. Sequential in row order,
/// so the sums (many rows hit the PAUSE row and each position row) are deterministic.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward<T: Scalar>(
    dtok_emb: &mut [T],
    dpos_emb: &mut [T],
    ddepth_emb: &mut [T],
    dout: &[T],
    tokens: &[i32],
    s: StepShape,
    d: usize,
    pause: usize,
) {
    for_each_step(tokens, s, pause, |row, tok, t, k| {
        let g = &dout[row * d..][..d];
        for i in 0..d {
            dtok_emb[tok * d + i] += g[i];
            dpos_emb[t * d + i] += g[i];
            ddepth_emb[k * d + i] += g[i];
        }
    });
}

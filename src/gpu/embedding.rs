//! Input vectors of the pause-step expansion on the GPU (docs/MATH.md, "Pause steps" and
//! "The model"): `kernels/embedding.cu`, the twin of [`crate::cpu::embedding`].
//!
//! The backward is deterministic without sorting on the device or float atomics: the
//! position and depth tables are fixed-order sums, and the token table uses a
//! [`TokenIndex`] (for each distinct real token, its positions in ascending order),
//! built on the host from the host tokens when they are uploaded.

use super::kernels::ROWS_PER_CHUNK;
use super::kernels::{as_i32, both, check_len, elementwise_cfg, f32_offset, KernelSet};
use super::{cuda_err, images, GpuContext, LogitElem};
use crate::cpu::embedding::StepShape;
use crate::error::{CybError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const TOK_THREADS: usize = 128;

/// Sizes of the three tables, which lie back to back in the fixed tensor order:
/// `tok_emb [V+1, d]`, `pos_emb [t_max, d]`, `depth_emb [k_max+1, d]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableDims {
    /// `V` (real tokens; the token table has `V+1` rows, row `V` = PAUSE)
    pub vocab: usize,
    /// rows of the position table
    pub t_max: usize,
    /// `k_max` (the depth table has `k_max+1` rows)
    pub k_max: usize,
    /// `d`
    pub d: usize,
}

impl TableDims {
    /// Elements of `[tok_emb | pos_emb | depth_emb]`.
    pub fn len(&self) -> usize {
        (self.vocab + 1 + self.t_max + self.k_max + 1) * self.d
    }
    /// Whether all tables are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn pos_off(&self) -> usize {
        (self.vocab + 1) * self.d
    }
    fn depth_off(&self) -> usize {
        self.pos_off() + self.t_max * self.d
    }
}

/// For each distinct real token of a batch, the positions `b*T + t` that read it, in
/// ascending order (a CSR list on the device) — the fixed summation order of the
/// token-table gradient.
pub struct TokenIndex {
    uniq: CudaSlice<i32>,
    starts: CudaSlice<i32>,
    order: CudaSlice<i32>,
    distinct: usize,
    positions: usize,
}

impl TokenIndex {
    /// Builds the index of `tokens: [B, T]` (each in `0..vocab`) and uploads it.
    pub fn new(gpu: &GpuContext, tokens: &[i32], vocab: usize) -> Result<Self> {
        let (uniq, starts, order) = token_csr(tokens, vocab)?;
        let distinct = uniq.len();
        let pad = |mut v: Vec<i32>| {
            if v.is_empty() {
                v.push(0); // no zero-length allocations
            }
            v
        };
        Ok(TokenIndex {
            uniq: gpu.htod(&pad(uniq))?,
            starts: gpu.htod(&starts)?,
            order: gpu.htod(&pad(order))?,
            distinct,
            positions: tokens.len(),
        })
    }
}

/// The host side of [`TokenIndex`]: `(uniq, starts, order)` where `uniq` lists the
/// distinct tokens ascending, and the positions reading `uniq[u]` are
/// `order[starts[u]..starts[u+1]]`, ascending (a counting sort, O(B*T + V)).
///
/// ```
/// let (u, s, o) = cyb::gpu::embedding::token_csr(&[2, 0, 2, 2], 3).unwrap();
/// assert_eq!((u, s, o), (vec![0, 2], vec![0, 1, 4], vec![1, 0, 2, 3]));
/// ```
pub fn token_csr(tokens: &[i32], vocab: usize) -> Result<(Vec<i32>, Vec<i32>, Vec<i32>)> {
    as_i32("positions B*T", tokens.len())?;
    let mut count = vec![0usize; vocab];
    for (i, &t) in tokens.iter().enumerate() {
        if t < 0 || t as usize >= vocab {
            return Err(CybError::VocabRange {
                id: t as i64,
                index: i,
                vocab,
            });
        }
        count[t as usize] += 1;
    }
    let mut uniq = Vec::new();
    let mut starts = vec![0i32];
    let mut next = vec![0usize; vocab];
    for (v, &c) in count.iter().enumerate() {
        if c > 0 {
            let start = *starts.last().unwrap_or(&0);
            next[v] = start as usize;
            uniq.push(v as i32);
            starts.push(start + c as i32);
        }
    }
    let mut order = vec![0i32; tokens.len()];
    for (i, &t) in tokens.iter().enumerate() {
        let slot = &mut next[t as usize];
        order[*slot] = i as i32;
        *slot += 1;
    }
    Ok((uniq, starts, order))
}

/// The embedding kernels, loaded.
pub struct EmbeddingKernels {
    gpu: Arc<GpuContext>,
    k: KernelSet,
}

impl EmbeddingKernels {
    /// Loads `kernels/embedding.cu`.
    pub fn new(gpu: &Arc<GpuContext>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        for base in [
            "embedding_forward",
            "embedding_pos_backward",
            "embedding_plane_partial",
            "embedding_tok_backward",
        ] {
            names.extend(both(base));
        }
        names.push("embedding_depth_finalize".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(EmbeddingKernels {
            gpu: gpu.clone(),
            k: KernelSet::load(gpu, images::EMBEDDING, "embedding.cu", &names)?,
        })
    }

    fn check(s: StepShape, t: TableDims) -> Result<()> {
        if s.seq > t.t_max || s.pauses > t.k_max {
            return Err(CybError::Shape(format!(
                "steps {s:?} do not fit tables with t_max {} and k_max {}",
                t.t_max, t.k_max
            )));
        }
        as_i32("B*(K+1)*T*d", s.rows() * t.d)?;
        as_i32("table elements", t.len())?;
        Ok(())
    }

    /// out: `[B, K+1, T, d]` = `E[tok] + P[t] + D[k]`; tokens `[B, T]` on the device,
    /// each in `0..V` (check them on the host before the upload); `tables` =
    /// `[tok_emb | pos_emb | depth_emb]` (see [`TableDims`]).
    pub fn forward<T: LogitElem>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        tokens: &impl DevicePtr<i32>,
        tables: &impl DevicePtr<f32>,
        dims: TableDims,
        steps: StepShape,
    ) -> Result<()> {
        Self::check(steps, dims)?;
        let total = steps.rows() * dims.d;
        check_len("embedding out", out.len(), total)?;
        check_len("embedding tokens", tokens.len(), steps.batch * steps.seq)?;
        check_len("embedding tables", tables.len(), dims.len())?;
        if total == 0 {
            return Ok(());
        }
        let s = self.gpu.stream();
        let (o, _g1) = out.device_ptr_mut(s);
        let (tk, _g2) = tokens.device_ptr(s);
        let (tab, _g3) = tables.device_ptr(s);
        let (e, p, dd) = (
            tab,
            tab + f32_offset(dims.pos_off()),
            tab + f32_offset(dims.depth_off()),
        );
        let (b, k1, t, d, pause) = (
            steps.batch as i32,
            steps.pauses as i32 + 1,
            steps.seq as i32,
            dims.d as i32,
            dims.vocab as i32,
        );
        let f = self.k.get(&format!("embedding_forward_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&o).arg(&tk).arg(&e).arg(&p).arg(&dd);
        l.arg(&b).arg(&k1).arg(&t).arg(&d).arg(&pause);
        // SAFETY: out >= rows*d, tokens >= B*T, tables hold the three tables with
        // T <= t_max and K <= k_max (checked); token ids are < V (caller's contract:
        // checked on the host before upload), PAUSE = V is row V of V+1.
        unsafe { l.launch(elementwise_cfg(total)) }
            .map_err(cuda_err("launching embedding_forward"))?;
        Ok(())
    }

    /// **Accumulates** `dout: [B, K+1, T, d]` into `dtables` = `[dtok | dpos | ddepth]`,
    /// with `index` built from the same tokens as the forward.
    pub fn backward<T: LogitElem>(
        &self,
        dtables: &mut impl DevicePtrMut<f32>,
        dout: &impl DevicePtr<T>,
        index: &TokenIndex,
        dims: TableDims,
        steps: StepShape,
    ) -> Result<()> {
        Self::check(steps, dims)?;
        check_len("embedding dout", dout.len(), steps.rows() * dims.d)?;
        check_len("embedding dtables", dtables.len(), dims.len())?;
        if index.positions != steps.batch * steps.seq {
            return Err(CybError::Shape(format!(
                "token index for {} positions, steps have {}",
                index.positions,
                steps.batch * steps.seq
            )));
        }
        if steps.rows() == 0 || dims.d == 0 {
            return Ok(());
        }
        let s = self.gpu.stream();
        let (b, k1, t, d) = (
            steps.batch as i32,
            steps.pauses as i32 + 1,
            steps.seq as i32,
            dims.d as i32,
        );
        let plane_rows = steps.batch * steps.seq;
        let chunks = plane_rows.div_ceil(ROWS_PER_CHUNK);
        let (chunks_i, rpc) = (as_i32("chunks", chunks)?, ROWS_PER_CHUNK as i32);
        let mut partial = self
            .gpu
            .zeros::<f32>((steps.pauses + 1) * chunks * dims.d)?;
        let (dtab, _g1) = dtables.device_ptr_mut(s);
        let (dy, _g2) = dout.device_ptr(s);
        let (part, _g3) = partial.device_ptr_mut(s);
        let dtok = dtab;
        let dpause = dtab + f32_offset(dims.vocab * dims.d);
        let dpos = dtab + f32_offset(dims.pos_off());
        let ddepth = dtab + f32_offset(dims.depth_off());

        // Position table: one thread per (t, column), fixed order over (b, k).
        let f = self
            .k
            .get(&format!("embedding_pos_backward_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&dpos).arg(&dy).arg(&b).arg(&k1).arg(&t).arg(&d);
        // SAFETY: dpos has >= T*d (T <= t_max), dout rows*d (checked).
        unsafe { l.launch(elementwise_cfg(steps.seq * dims.d)) }
            .map_err(cuda_err("launching embedding_pos_backward"))?;

        // Depth planes: partial sums per (plane, chunk), then depth table + PAUSE row.
        let f = self
            .k
            .get(&format!("embedding_plane_partial_{}", T::SUFFIX))?;
        let mut l = s.launch_builder(f);
        l.arg(&dy)
            .arg(&b)
            .arg(&k1)
            .arg(&t)
            .arg(&d)
            .arg(&rpc)
            .arg(&part);
        let cfg = LaunchConfig {
            grid_dim: (
                dims.d.div_ceil(32) as u32,
                chunks as u32,
                (steps.pauses + 1) as u32,
            ),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial has (K+1)*chunks*d elements indexed by (blockIdx.z, blockIdx.y,
        // column < d); rows are < B*T within each plane.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching embedding_plane_partial"))?;
        let f = self.k.get("embedding_depth_finalize")?;
        let mut l = s.launch_builder(f);
        l.arg(&part)
            .arg(&k1)
            .arg(&chunks_i)
            .arg(&d)
            .arg(&ddepth)
            .arg(&dpause);
        let cfg = LaunchConfig {
            grid_dim: (dims.d.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: ddepth has (k_max+1)*d >= (K+1)*d, the PAUSE row d elements.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launching embedding_depth_finalize"))?;

        // Token table: one block row per distinct token.
        if index.distinct > 0 {
            let f = self
                .k
                .get(&format!("embedding_tok_backward_{}", T::SUFFIX))?;
            let mut l = s.launch_builder(f);
            l.arg(&dtok)
                .arg(&dy)
                .arg(&index.uniq)
                .arg(&index.starts)
                .arg(&index.order)
                .arg(&k1)
                .arg(&t)
                .arg(&d);
            let cfg = LaunchConfig {
                grid_dim: (
                    index.distinct as u32,
                    dims.d.div_ceil(TOK_THREADS) as u32,
                    1,
                ),
                block_dim: (TOK_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: uniq has `distinct` ids < V, starts distinct+1 offsets into order
            // (B*T positions < B*T, checked against the steps), dtok (V+1)*d.
            unsafe { l.launch(cfg) }.map_err(cuda_err("launching embedding_tok_backward"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::token_csr;
    use crate::rng::seeded;
    use rand::RngExt;

    /// The CSR lists every position exactly once, under its own token, ascending.
    #[test]
    fn token_csr_partitions_positions_in_order() {
        let mut rng = seeded(5);
        for (n, vocab) in [(1, 1), (7, 3), (500, 40), (64, 1000)] {
            let tokens: Vec<i32> = (0..n).map(|_| rng.random_range(0..vocab) as i32).collect();
            let (uniq, starts, order) = token_csr(&tokens, vocab).unwrap();
            assert_eq!(starts.len(), uniq.len() + 1);
            assert_eq!(*starts.last().unwrap() as usize, n);
            assert!(uniq.windows(2).all(|w| w[0] < w[1]));
            let mut seen = vec![false; n];
            for (u, &tok) in uniq.iter().enumerate() {
                let run = &order[starts[u] as usize..starts[u + 1] as usize];
                assert!(!run.is_empty());
                assert!(run.windows(2).all(|w| w[0] < w[1]));
                for &p in run {
                    assert_eq!(tokens[p as usize], tok);
                    seen[p as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s));
        }
        assert!(token_csr(&[0, 3], 3).is_err());
        assert!(token_csr(&[-1], 3).is_err());
    }
}

// The pause-step visibility rules of SPEC section 3, stated once for every kernel.
// Mirror of `cyb::cpu::attention::{shared_visible, private_visible, pause_visible}`
// (src/cpu/attention.rs); the mode numbers are `cyb::config::PauseAttention as i32`.
//
// Query step (t, k) sees key step (t2, k2) iff
//     shared  (the paper's Recipe 1):  t2 < t  or  (t2 == t and k2 <= k)
//     private:                         (k2 == 0 and t2 <= t)  or  (t2 == t and 1 <= k2 <= k)
// shared is causal attention over the interleaved stream x_0, pause.., x_1, ..; private
// is the real (k2 = 0) causal prefix plus the query's own earlier pause steps (no
// position ever sees another position's pauses).
#pragma once

enum PauseMode { PAUSE_SHARED = 0, PAUSE_PRIVATE = 1 };

__host__ __device__ __forceinline__ bool shared_visible(int t, int k, int t2, int k2) {
    return t2 < t || (t2 == t && k2 <= k);
}

__host__ __device__ __forceinline__ bool private_visible(int t, int k, int t2, int k2) {
    return (k2 == 0 && t2 <= t) || (t2 == t && 1 <= k2 && k2 <= k);
}

__host__ __device__ __forceinline__ bool pause_visible(int mode, int t, int k, int t2, int k2) {
    return mode == PAUSE_SHARED ? shared_visible(t, k, t2, k2) : private_visible(t, k, t2, k2);
}

// Key planes walked in tiles: every depth k2 = 0..K for shared, only the real plane
// k2 = 0 for private (a private query's pause keys are its own <= K, handled one by one).
__host__ __device__ __forceinline__ int tiled_planes(int mode, int K1) {
    return mode == PAUSE_SHARED ? K1 : 1;
}

// Classification of a tile of keys of one plane k2 (positions [key_lo, key_hi]) against
// a tile of queries of one depth k (positions [q_lo, q_hi]). Within a tiled plane (see
// tiled_planes) visibility only grows with the query position and only shrinks with the
// key position, so the tile is fully visible iff its hardest pair (q_lo, key_hi) is, and
// fully masked iff its easiest pair (q_hi, key_lo) is not. Only tiles that straddle the
// diagonal (strict for shared planes k2 > k, inclusive otherwise) are masked per element.
enum TileClass { TILE_FULL = 0, TILE_PARTIAL = 1, TILE_MASKED = 2 };

__host__ __device__ __forceinline__ TileClass tile_class(int mode, int k, int k2, int q_lo,
                                                         int q_hi, int key_lo, int key_hi) {
    if (pause_visible(mode, q_lo, k, key_hi, k2)) return TILE_FULL;
    if (!pause_visible(mode, q_hi, k, key_lo, k2)) return TILE_MASKED;
    return TILE_PARTIAL;
}

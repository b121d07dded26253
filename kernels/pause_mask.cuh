// The pause-step visibility rule of SPEC section 3, stated once for every kernel.
// Mirror of `cyb::cpu::attention::pause_visible` (src/cpu/attention.rs).
//
// Query step (t, k) sees key step (t2, k2) iff
//     (k2 == 0 and t2 <= t)  or  (t2 == t and 1 <= k2 <= k)
// i.e. the real (k2 = 0) causal prefix plus its own earlier pause steps. No position
// ever sees another position's pauses.
#pragma once

__host__ __device__ __forceinline__ bool pause_visible(int t, int k, int t2, int k2) {
    return (k2 == 0 && t2 <= t) || (t2 == t && 1 <= k2 && k2 <= k);
}

// Classification of a tile of real keys (k2 = 0, positions [key_lo, key_hi]) against a
// tile of queries (positions [q_lo, q_hi], any one depth k: for real keys the rule does
// not depend on k). Only real-key tiles are ever classified: pause keys are never tiled
// (each query has at most K of them, handled one by one).
enum TileClass { TILE_FULL = 0, TILE_PARTIAL = 1, TILE_MASKED = 2 };

__host__ __device__ __forceinline__ TileClass real_tile_class(int q_lo, int q_hi, int key_lo,
                                                               int key_hi) {
    // Every key <= every query: pause_visible(t, k, t2, 0) holds for the whole tile.
    if (key_hi <= q_lo) return TILE_FULL;
    // Every key after every query: nothing visible, the tile is skipped.
    if (key_lo > q_hi) return TILE_MASKED;
    return TILE_PARTIAL;
}

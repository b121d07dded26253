// The interface between the device shim (shim/cuda_bf16.h, compiled into every kernel
// file) and the block scheduler (runtime.cpp). Every CUDA thread of a block is a
// cooperative fiber on one OS thread; fibers switch only at __syncthreads, warp
// collectives (__syncwarp, shuffles, votes, mma.sync) and exit, so everything between
// two such points runs without interruption (atomics are plain read-modify-writes).
#pragma once
#include <cstdint>

struct dim3u {
    unsigned x = 1, y = 1, z = 1;
};

// One emulated CUDA thread.
struct EmuThread {
    dim3u tid;     // threadIdx
    int lin;       // linear thread index in the block
    int warp;      // lin / 32
    int lane;      // lin % 32
    int state;     // EMU_RUN, EMU_BAR, EMU_WARP, EMU_DONE
    void *sp;      // saved stack pointer while switched out
    uint64_t in[8];  // warp collective: what this lane deposits
    uint64_t out[4]; // warp collective: this lane's result
    int op;          // warp collective kind this lane waits at
    const char *site; // where it waits (for deadlock messages)
};

enum { EMU_RUN = 0, EMU_BAR = 1, EMU_WARP = 2, EMU_DONE = 3 };

// Combines the deposits of the `n` lanes of one warp (in[]) into every lane's out[].
typedef void (*EmuCombine)(EmuThread *const *lanes, int n);

extern "C" {
extern EmuThread *emu_cur;
extern dim3u emu_blockIdx, emu_blockDim, emu_gridDim;
void emu_syncthreads(const char *site);
// Deposits cur->in (already filled) and waits for the whole warp; the last lane to
// arrive runs `combine`. `mask` must name every lane of the warp.
void emu_warp_collective(int op, unsigned mask, EmuCombine combine, const char *site);
// Ends the launch with an error naming the kernel (never returns).
[[noreturn]] void emu_fail(int cuda_error, const char *fmt, ...);
}

// Host-side stand-in for the CUDA device environment, just enough to run the crate's
// kernels on the CPU for a logic check (scripts/host_emu/run.sh; the full driver emulator uses shim/ instead). Included in place of
// <cuda_bf16.h> (this folder comes first on the include path). One block runs at a
// time: every CUDA thread is a std::thread, `__shared__` is `static`, __syncthreads()
// is a block barrier and warp shuffles go through a per-warp barrier.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3u { unsigned x = 0, y = 0, z = 0; };
extern thread_local dim3u threadIdx, blockIdx;
extern dim3u blockDim, gridDim;

struct uint4 { uint32_t x, y, z, w; };
struct float4 { float x, y, z, w; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 x) { return __uint_as_float((uint32_t)x.bits << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)}; // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.bits; }

#include <math.h>
template <class T> T min(T a, T b) { return a < b ? a : b; }
template <class T> T max(T a, T b) { return a > b ? a : b; }

// Block and warp synchronisation of the emulator.
extern std::barrier<> *emu_block_barrier;
extern std::barrier<> *emu_warp_barrier[32];
extern float emu_shfl[1024];
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline void __syncwarp() { emu_warp_barrier[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    emu_shfl[threadIdx.x] = v;
    __syncwarp();
    const float r = emu_shfl[threadIdx.x ^ o];
    __syncwarp();
    return r;
}
inline double __shfl_xor_sync(unsigned, double v, int o) {
    return __shfl_xor_sync(0u, (float)v, o); // (not used by the attention kernels)
}

// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 of one warp, from the PTX ISA fragment
// layout (g = lane/4, c = lane%4): A reg0 (g, 2c..), reg1 (g+8, 2c..), reg2 (g, 2c+8..),
// reg3 (g+8, 2c+8..); B reg0 (k = 2c.., n = g), reg1 (k = 2c+8.., n = g);
// C c0,c1 (g, 2c..), c2,c3 (g+8, 2c..). Low half of a register = lower index.
#define CYB_HOST_EMU 1
extern uint32_t emu_mma_a[32][32][4];
extern uint32_t emu_mma_b[32][32][2];
inline void emu_mma_bf16_16816(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) emu_mma_a[w][lane][i] = a[i];
    for (int i = 0; i < 2; ++i) emu_mma_b[w][lane][i] = b[i];
    __syncwarp();
    auto half = [](uint32_t r, int e) { return __uint_as_float((e ? (r >> 16) : (r & 0xffffu)) << 16); };
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; ++L) {
        const int g = L / 4, c = L % 4;
        for (int e = 0; e < 2; ++e) {
            A[g][2 * c + e] = half(emu_mma_a[w][L][0], e);
            A[g + 8][2 * c + e] = half(emu_mma_a[w][L][1], e);
            A[g][2 * c + 8 + e] = half(emu_mma_a[w][L][2], e);
            A[g + 8][2 * c + 8 + e] = half(emu_mma_a[w][L][3], e);
            B[2 * c + e][g] = half(emu_mma_b[w][L][0], e);
            B[2 * c + 8 + e][g] = half(emu_mma_b[w][L][1], e);
        }
    }
    __syncwarp();
    const int g = lane / 4, c = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * c + i % 2;
        float s = 0.0f;
        for (int kk = 0; kk < 16; ++kk) s += A[row][kk] * B[kk][col];
        acc[i] += s;
    }
}

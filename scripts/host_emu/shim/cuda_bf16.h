// Host stand-in for the CUDA device environment, included in place of <cuda_bf16.h>
// (this folder comes first on the include path) when scripts/build_emu.sh compiles the
// crate's unmodified kernels/*.cu into the emulated driver (target/emu/libcuda.so).
//
// Every CUDA thread is a fiber of the block scheduler (runtime.cpp): thread and block
// indices, `__shared__` (one copy, blocks run one after the other, poisoned per block), `__syncthreads`,
// warp collectives (`__syncwarp`, shuffles, votes) that exchange the values of all 32
// lanes, atomics, bf16 conversions, and `mma.sync.m16n8k16` from the PTX ISA fragment
// layout. Anything else is absent on purpose: a kernel that needs it fails to build
// (inline `asm` is an undeclared identifier), it never runs wrongly.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <stdint.h>

#include "../emu_runtime.h"

#define CYB_HOST_EMU 1
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
// One copy per kernel file (blocks run one at a time, under one lock); the runtime fills
// the launched kernel's variables with 0xff bytes before every block (build_emu.sh
// writes where they are), as a GPU's shared memory starts undefined.
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
// Inline PTX is not emulated: `asm volatile(...)` does not compile.
#define asm cyb_emu_inline_ptx_is_not_emulated
#define __asm__ cyb_emu_inline_ptx_is_not_emulated

#define threadIdx (emu_cur->tid)
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim
#define warpSize 32

#define CYB_EMU_STR2(x) #x
#define CYB_EMU_STR(x) CYB_EMU_STR2(x)
#define CYB_EMU_SITE __FILE__ ":" CYB_EMU_STR(__LINE__)

// ---- vector types (aligned as on the device, so UBSan's alignment check faults on a
// misaligned 16-byte access exactly where the GPU would) -------------------------------
struct __attribute__((aligned(16))) uint4 { uint32_t x, y, z, w; };
struct __attribute__((aligned(16))) int4 { int32_t x, y, z, w; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { uint32_t x, y; };
struct __attribute__((aligned(8))) float2 { float x, y; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint2 make_uint2(uint32_t a, uint32_t b) { return {a, b}; }
inline float2 make_float2(float a, float b) { return {a, b}; }

inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int32_t __float_as_int(float f) { int32_t u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long u) { double f; std::memcpy(&f, &u, 8); return f; }
inline long long __double_as_longlong(double f) { long long u; std::memcpy(&u, &f, 8); return u; }

// A macro, so that a misaligned load is reported at the kernel's line, not here.
#define __ldg(p) (*(p))

// ---- math (IEEE, no fast-math, no contraction: build_emu.sh passes -ffp-contract=off) ----
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <class T> inline T min(T a, T b) { return a < b ? a : b; }
template <class T> inline T max(T a, T b) { return a > b ? a : b; }
using std::isfinite;
using std::isinf;
using std::isnan;

// ---- bf16 -------------------------------------------------------------------------------
struct __nv_bfloat16 {
    uint16_t bits;
};
typedef __nv_bfloat16 nv_bfloat16;
inline float __bfloat162float(__nv_bfloat16 x) { return __uint_as_float((uint32_t)x.bits << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)}; // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                            // nearest even
    return {(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }

// ---- block barrier ---------------------------------------------------------------------
#define __syncthreads() emu_syncthreads(CYB_EMU_SITE)

// ---- warp collectives: each lane deposits, the last lane combines for all -------------
enum { EMU_OP_SYNCWARP = 1, EMU_OP_SHFL, EMU_OP_SHFL_XOR, EMU_OP_SHFL_UP, EMU_OP_SHFL_DOWN,
       EMU_OP_BALLOT, EMU_OP_MMA_BF16_16816 };

inline void emu_combine_nothing(EmuThread *const *, int) {}
// in[0] value bits, in[1] argument (lane / mask / delta), in[2] width.
template <int OP> inline void emu_combine_shfl(EmuThread *const *l, int n) {
    for (int i = 0; i < n; ++i) {
        const int arg = (int)l[i]->in[1], w = (int)l[i]->in[2];
        const int base = i & ~(w - 1);
        int src = i;
        if (OP == EMU_OP_SHFL) src = base + (arg & (w - 1));
        if (OP == EMU_OP_SHFL_XOR) { src = i ^ arg; if (src >= base + w) src = i; }
        if (OP == EMU_OP_SHFL_UP) { src = i - arg; if (src < base) src = i; }
        if (OP == EMU_OP_SHFL_DOWN) { src = i + arg; if (src >= base + w) src = i; }
        if (src >= n) src = i; // a lane beyond the block: the GPU returns own value
        l[i]->out[0] = l[src]->in[0];
    }
}
inline void emu_combine_ballot(EmuThread *const *l, int n) {
    uint64_t b = 0;
    for (int i = 0; i < n; ++i) b |= (l[i]->in[0] ? 1ull : 0ull) << i;
    for (int i = 0; i < n; ++i) l[i]->out[0] = b;
}

template <class T> inline uint64_t emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> inline T emu_from_bits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

#define CYB_EMU_SHFL(NAME, OP)                                                                  \
    template <class T> inline T NAME##_impl(unsigned mask, T v, int arg, int width, const char *site) { \
        if (width <= 0 || width > 32 || (width & (width - 1)))                                  \
            emu_fail(1, "%s: width %d is not a power of two <= 32", #NAME, width);             \
        emu_cur->in[0] = emu_bits(v);                                                           \
        emu_cur->in[1] = (uint64_t)(uint32_t)arg;                                               \
        emu_cur->in[2] = (uint64_t)width;                                                       \
        emu_warp_collective(OP, mask, emu_combine_shfl<OP>, site);                              \
        return emu_from_bits<T>(emu_cur->out[0]);                                               \
    }
CYB_EMU_SHFL(__shfl_sync, EMU_OP_SHFL)
CYB_EMU_SHFL(__shfl_xor_sync, EMU_OP_SHFL_XOR)
CYB_EMU_SHFL(__shfl_up_sync, EMU_OP_SHFL_UP)
CYB_EMU_SHFL(__shfl_down_sync, EMU_OP_SHFL_DOWN)
#define CYB_EMU_W(w, ...) (w)
#define __shfl_sync(m, v, a, ...) __shfl_sync_impl(m, v, a, CYB_EMU_W(__VA_ARGS__ __VA_OPT__(, ) 32), CYB_EMU_SITE)
#define __shfl_xor_sync(m, v, a, ...) __shfl_xor_sync_impl(m, v, a, CYB_EMU_W(__VA_ARGS__ __VA_OPT__(, ) 32), CYB_EMU_SITE)
#define __shfl_up_sync(m, v, a, ...) __shfl_up_sync_impl(m, v, a, CYB_EMU_W(__VA_ARGS__ __VA_OPT__(, ) 32), CYB_EMU_SITE)
#define __shfl_down_sync(m, v, a, ...) __shfl_down_sync_impl(m, v, a, CYB_EMU_W(__VA_ARGS__ __VA_OPT__(, ) 32), CYB_EMU_SITE)

inline unsigned emu_ballot(unsigned mask, int pred, const char *site) {
    emu_cur->in[0] = pred != 0;
    emu_warp_collective(EMU_OP_BALLOT, mask, emu_combine_ballot, site);
    return (unsigned)emu_cur->out[0];
}
#define __ballot_sync(m, p) emu_ballot(m, p, CYB_EMU_SITE)
#define __any_sync(m, p) (emu_ballot(m, p, CYB_EMU_SITE) != 0u)
#define __all_sync(m, p) (emu_ballot(m, !(p), CYB_EMU_SITE) == 0u)
#define __syncwarp(...) emu_warp_collective(EMU_OP_SYNCWARP, 0xffffffffu, emu_combine_nothing, CYB_EMU_SITE)

// ---- atomics (fibers switch only at collectives: a plain read-modify-write is atomic) ----
template <class T> inline T atomicAdd(T *p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicSub(T *p, T v) { T o = *p; *p = o - v; return o; }
template <class T> inline T atomicExch(T *p, T v) { T o = *p; *p = v; return o; }
template <class T> inline T atomicMax(T *p, T v) { T o = *p; *p = o < v ? v : o; return o; }
template <class T> inline T atomicMin(T *p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <class T> inline T atomicCAS(T *p, T c, T v) { T o = *p; if (o == c) *p = v; return o; }
template <class T> inline T atomicOr(T *p, T v) { T o = *p; *p = o | v; return o; }
template <class T> inline T atomicAnd(T *p, T v) { T o = *p; *p = o & v; return o; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA fragment layout) ----
// g = lane/4, c = lane%4: A reg0 (row g, cols 2c..2c+1), reg1 (g+8, 2c..), reg2 (g, 2c+8..),
// reg3 (g+8, 2c+8..); B reg0 (k = 2c..2c+1, n = g), reg1 (k = 2c+8.., n = g);
// C/D c0,c1 (g, 2c..2c+1), c2,c3 (g+8, 2c..). The lower half of a register is the lower
// index. D = A*B + C with f32 accumulation.
inline void emu_combine_mma_bf16_16816(EmuThread *const *l, int n) {
    if (n != 32) emu_fail(1, "mma.sync with a partial warp (%d lanes)", n);
    auto half = [](uint64_t r, int e) { return __uint_as_float((uint32_t)(e ? (r >> 16) & 0xffffu : r & 0xffffu) << 16); };
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; ++L) {
        const int g = L / 4, c = L % 4;
        for (int e = 0; e < 2; ++e) {
            A[g][2 * c + e] = half(l[L]->in[0], e);
            A[g + 8][2 * c + e] = half(l[L]->in[1], e);
            A[g][2 * c + 8 + e] = half(l[L]->in[2], e);
            A[g + 8][2 * c + 8 + e] = half(l[L]->in[3], e);
            B[2 * c + e][g] = half(l[L]->in[4], e);
            B[2 * c + 8 + e][g] = half(l[L]->in[5], e);
        }
    }
    for (int L = 0; L < 32; ++L) {
        const int g = L / 4, c = L % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2), col = 2 * c + i % 2;
            float s = 0.0f;
            for (int kk = 0; kk < 16; ++kk) s += A[row][kk] * B[kk][col];
            l[L]->out[i] = __float_as_uint(s);
        }
    }
}
inline void emu_mma_bf16_16816(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    for (int i = 0; i < 4; ++i) emu_cur->in[i] = a[i];
    for (int i = 0; i < 2; ++i) emu_cur->in[4 + i] = b[i];
    emu_warp_collective(EMU_OP_MMA_BF16_16816, 0xffffffffu, emu_combine_mma_bf16_16816, "mma.sync");
    for (int i = 0; i < 4; ++i) acc[i] += __uint_as_float((uint32_t)emu_cur->out[i]);
}

// The emulated cuBLAS (libcublas.so): the GEMMs this crate calls, in plain loops over
// host memory (device pointers are host addresses, see driver.cpp). Column-major as
// cuBLAS; f32 (cublasSgemm, TF32 inputs under CUBLAS_TF32_TENSOR_OP_MATH or
// CUBLAS_COMPUTE_32F_FAST_TF32) and bf16 inputs/outputs with f32 accumulation
// (cublasGemmEx, bf16 or f32 output). Checks the arguments as cuBLAS does
// (CUBLAS_STATUS_INVALID_VALUE) and refuses type combinations that cuBLAS does not
// support (CUBLAS_STATUS_NOT_SUPPORTED).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <vector>

typedef int cublasStatus_t;
enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69, COMPUTE_32F_FAST_TF32 = 77 };

namespace {
struct Handle {
    void *stream = nullptr;
    int math = 0;
};
float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
// f32 -> TF32 (10 mantissa bits), round to nearest even, as the tensor cores read it.
float tf32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0xfffu + ((u >> 13) & 1u);
        u &= 0xffffe000u;
    }
    memcpy(&f, &u, 4);
    return f;
}
float load(const void *p, int type, size_t i) {
    return type == R_32F ? static_cast<const float *>(p)[i] : bf16_to_f32(static_cast<const uint16_t *>(p)[i]);
}
void store(void *p, int type, size_t i, float v) {
    if (type == R_32F) static_cast<float *>(p)[i] = v;
    else static_cast<uint16_t *>(p)[i] = f32_to_bf16(v);
}
cublasStatus_t bad(const char *what) {
    fprintf(stderr, "cyb emulator (cuBLAS): %s\n", what);
    return INVALID_VALUE;
}

cublasStatus_t not_supported(const char *what) {
    fprintf(stderr, "cyb emulator (cuBLAS): %s\n", what);
    return NOT_SUPPORTED;
}

cublasStatus_t gemm(int ta, int tb, int m, int n, int k, float alpha, const void *A, int at, int lda, const void *B,
                    int bt, int ldb, float beta, void *C, int ct, int ldc, bool use_tf32) {
    if (ta < 0 || ta > 2 || tb < 0 || tb > 2) return bad("gemm: invalid operation");
    if (m < 0 || n < 0 || k < 0) return bad("gemm: negative dimension");
    if (lda < (ta == 0 ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) return bad("gemm: lda too small");
    if (ldb < (tb == 0 ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) return bad("gemm: ldb too small");
    if (ldc < (m > 1 ? m : 1)) return bad("gemm: ldc too small");
    if (m == 0 || n == 0) return OK;
    // op(A) as [m][k] and op(B) as [n][k], both contiguous in k.
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    for (int i = 0; i < m; ++i)
        for (int l = 0; l < k; ++l) {
            float v = load(A, at, ta == 0 ? (size_t)i + (size_t)l * lda : (size_t)l + (size_t)i * lda);
            a[(size_t)i * k + l] = use_tf32 ? tf32(v) : v;
        }
    for (int j = 0; j < n; ++j)
        for (int l = 0; l < k; ++l) {
            float v = load(B, bt, tb == 0 ? (size_t)l + (size_t)j * ldb : (size_t)j + (size_t)l * ldb);
            b[(size_t)j * k + l] = use_tf32 ? tf32(v) : v;
        }
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            const float *x = &a[(size_t)i * k], *y = &b[(size_t)j * k];
            float s = 0.0f;
            for (int l = 0; l < k; ++l) s += x[l] * y[l];
            const size_t ci = (size_t)i + (size_t)j * ldc;
            float r = alpha * s;
            if (beta != 0.0f) r += beta * load(C, ct, ci); // beta = 0: C is not read
            store(C, ct, ci, r);
        }
    return OK;
}
// Stream order with the emulated driver's queued work (the stand-in NCCL's collectives,
// see driver.cpp): what is queued on the handle's stream runs before a GEMM. Found in
// the libcuda.so.1 already loaded (this library does not link it); absent: nothing is
// ever queued.
void drain(void *stream) {
    using Fn = int (*)(void *);
    static Fn fn = [] {
        void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        return lib ? reinterpret_cast<Fn>(dlsym(lib, "cyb_emu_stream_drain")) : nullptr;
    }();
    if (fn) (void)fn(stream);
}
} // namespace

#define API extern "C" __attribute__((visibility("default"))) cublasStatus_t

API cublasCreate_v2(void **h) {
    *h = new Handle;
    return OK;
}
API cublasDestroy_v2(void *h) {
    delete static_cast<Handle *>(h);
    return OK;
}
API cublasSetStream_v2(void *h, void *s) {
    if (!h) return NOT_INITIALIZED;
    static_cast<Handle *>(h)->stream = s;
    return OK;
}
API cublasGetStream_v2(void *h, void **s) {
    *s = static_cast<Handle *>(h)->stream;
    return OK;
}
API cublasSetMathMode(void *h, int mode) {
    if (!h) return NOT_INITIALIZED;
    static_cast<Handle *>(h)->math = mode;
    return OK;
}
API cublasGetMathMode(void *h, int *mode) {
    *mode = static_cast<Handle *>(h)->math;
    return OK;
}
API cublasSetWorkspace_v2(void *, void *, size_t) { return OK; }
API cublasGetVersion_v2(void *, int *v) {
    *v = 130000;
    return OK;
}
API cublasSgemm_v2(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                   const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!h) return NOT_INITIALIZED;
    drain(static_cast<Handle *>(h)->stream);
    const bool t = (static_cast<Handle *>(h)->math & 0xf) == 3; // CUBLAS_TF32_TENSOR_OP_MATH
    return gemm(ta, tb, m, n, k, *alpha, A, R_32F, lda, B, R_32F, ldb, *beta, C, R_32F, ldc, t);
}
API cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
                 const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int) {
    if (!h) return NOT_INITIALIZED;
    drain(static_cast<Handle *>(h)->stream);
    for (int t : {at, bt, ct})
        if (t != R_32F && t != R_16BF) return bad("cublasGemmEx: data type not emulated");
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC && compute != COMPUTE_32F_FAST_TF32)
        return bad("cublasGemmEx: compute type not emulated");
    // The combinations cuBLAS accepts among these (cublasGemmEx table of the cuBLAS
    // documentation): A and B of one type; C of the same type or, for bf16 A/B, f32
    // (f32 accumulation written in f32); FAST_TF32 for all-f32 only. Anything else is
    // CUBLAS_STATUS_NOT_SUPPORTED on the GPU, so it is an error here too.
    if (at != bt) return not_supported("cublasGemmEx: A and B of different types");
    if (at == R_32F && ct != R_32F) return not_supported("cublasGemmEx: f32 A/B with a bf16 C");
    if (compute == COMPUTE_32F_FAST_TF32 && at != R_32F)
        return not_supported("cublasGemmEx: CUBLAS_COMPUTE_32F_FAST_TF32 with bf16 data");
    const bool t = at == R_32F && (compute == COMPUTE_32F_FAST_TF32 ||
                                   (compute == COMPUTE_32F && (static_cast<Handle *>(h)->math & 0xf) == 3));
    return gemm(ta, tb, m, n, k, *static_cast<const float *>(alpha), A, at, lda, B, bt, ldb,
                *static_cast<const float *>(beta), C, ct, ldc, t);
}

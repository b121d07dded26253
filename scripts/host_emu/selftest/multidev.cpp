// The emulated multi-GPU machine's own tests: CYB_EMU_DEVICES=3 devices of the emulated
// driver (contexts per thread, memory per device, peer access and copies, faults per
// context, launches from several host threads at once) and the stand-in NCCL
// (nccl.cpp: collectives of 2 and 3 ranks in threads against a serial reference, group
// calls, errors, a rank that never arrives, an injected failure, the stream order of
// queued collectives). Linked against the
// emulator's libcuda.so.1 and libnccl.so.2 as built by run.sh (the exported symbols are
// what cudarc finds). Run by run.sh with CYB_EMU_DEVICES=3 in each mode.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext;
struct ncclUniqueId {
    char internal[128];
};
typedef struct NcclComm *ncclComm_t;
extern "C" {
CUresult cuInit(unsigned);
CUresult cuDeviceGetCount(int *);
CUresult cuDeviceGet(int *, int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, int);
CUresult cuDevicePrimaryCtxReset_v2(int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxGetCurrent(CUcontext *);
CUresult cuCtxGetDevice(int *);
CUresult cuCtxPushCurrent_v2(CUcontext);
CUresult cuCtxPopCurrent_v2(CUcontext *);
CUresult cuCtxEnablePeerAccess(CUcontext, unsigned);
CUresult cuCtxDisablePeerAccess(CUcontext);
CUresult cuDeviceCanAccessPeer(int *, int, int);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuMemcpyDtoD_v2(CUdeviceptr, CUdeviceptr, size_t);
CUresult cuMemcpyPeer(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t);
CUresult cuStreamCreate(void **, unsigned);
CUresult cuStreamDestroy_v2(void *);
CUresult cuStreamWaitEvent(void *, void *, unsigned);
CUresult cuStreamSynchronize(void *);
CUresult cuEventDestroy_v2(void *);
CUresult cuEventCreate(void **, unsigned);
CUresult cuEventRecord(void *, void *);
CUresult cuModuleLoadData(void **, const void *);
CUresult cuModuleGetFunction(void **, void *, const char *);
CUresult cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                        void **);

int ncclGetUniqueId(ncclUniqueId *);
int ncclCommInitRank(ncclComm_t *, int, ncclUniqueId, int);
int ncclCommInitAll(ncclComm_t *, int, const int *);
int ncclCommDestroy(ncclComm_t);
int ncclCommAbort(ncclComm_t);
int ncclCommCount(ncclComm_t, int *);
int ncclCommCuDevice(ncclComm_t, int *);
int ncclCommUserRank(ncclComm_t, int *);
int ncclCommGetAsyncError(ncclComm_t, int *);
int ncclGetVersion(int *);
const char *ncclGetErrorString(int);
const char *ncclGetLastError(ncclComm_t);
int ncclGroupStart();
int ncclGroupEnd();
int ncclAllReduce(const void *, void *, size_t, int, int, ncclComm_t, void *);
int ncclReduceScatter(const void *, void *, size_t, int, int, ncclComm_t, void *);
int ncclAllGather(const void *, void *, size_t, int, ncclComm_t, void *);
int ncclBroadcast(const void *, void *, size_t, int, int, ncclComm_t, void *);
int ncclReduce(const void *, void *, size_t, int, int, int, ncclComm_t, void *);
}
enum { kSum = 0, kProd = 1, kMax = 2, kMin = 3, kAvg = 4 };
enum { kI32 = 2, kF16 = 6, kF32 = 7, kF64 = 8, kBf16 = 9 };
enum { kSuccess = 0, kSystemError = 2, kInvalidArgument = 4, kInvalidUsage = 5, kRemoteError = 6 };

static int failures = 0;
static void check(bool ok, const char *what) {
    printf("selftest: %-76s %s\n", what, ok ? "ok" : "FAILED");
    fflush(stdout);
    if (!ok) ++failures;
}

static CUcontext g_ctx[3];

// A PTX module naming shift_ok (broken.cu: out[t] = in[(t + 1) % 64], 64 threads).
static const char *kPtx = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry shift_ok(\n\t.param .u64 p0,\n"
                          "\t.param .u64 p1\n)\n.maxntid 1024, 1, 1\n{\n\tret;\n}\n";

static double secs_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Runs fn(rank) on one thread per rank, each with its device's context current.
static void per_rank(int n, const std::function<void(int)> &fn, const int *devs = nullptr) {
    std::vector<std::thread> ts;
    for (int r = 0; r < n; ++r)
        ts.emplace_back([&, r] {
            cuCtxSetCurrent(g_ctx[devs ? devs[r] : r]);
            fn(r);
        });
    for (auto &t : ts) t.join();
}

// bf16 rounding written here independently of nccl.cpp (via the double value).
static float round_bf16(float f) {
    if (f != f) return f;
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t lo = x & 0xffff, hi = x & 0xffff0000u;
    uint32_t up = hi + 0x10000;
    float a, b;
    memcpy(&a, &hi, 4);
    memcpy(&b, &up, 4);
    const double da = std::fabs((double)f - a), db = std::fabs((double)f - b);
    if (lo == 0) return a;
    if (da < db) return a;
    if (db < da) return b;
    return ((hi >> 16) & 1) ? b : a; // tie: even
}
static uint16_t bf16_bits(float f) {
    float r = round_bf16(f);
    uint32_t x;
    memcpy(&x, &r, 4);
    return (uint16_t)(x >> 16);
}
static float bf16_value(uint16_t b) {
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static void driver_tests() {
    int n = 0, d = -1;
    check(cuDeviceGetCount(&n) == 0 && n == 3, "CYB_EMU_DEVICES=3: three devices");
    check(cuDeviceGet(&d, 3) == 101, "device 3 of 3: CUDA_ERROR_INVALID_DEVICE");
    for (int i = 0; i < 3; ++i) cuDevicePrimaryCtxRetain(&g_ctx[i], i);
    check(g_ctx[0] && g_ctx[0] != g_ctx[1] && g_ctx[1] != g_ctx[2], "one primary context per device");
    {
        CUresult r = 0;
        CUdeviceptr p = 0;
        std::thread([&] { r = cuMemAlloc_v2(&p, 16); }).join();
        check(r == 201, "a thread with no current context: CUDA_ERROR_INVALID_CONTEXT");
    }
    cuCtxSetCurrent(g_ctx[0]);
    CUcontext popped = nullptr;
    int d1 = -1, d0 = -1;
    bool ok = cuCtxPushCurrent_v2(g_ctx[1]) == 0 && cuCtxGetDevice(&d1) == 0 && cuCtxPopCurrent_v2(&popped) == 0 &&
              cuCtxGetDevice(&d0) == 0;
    check(ok && d1 == 1 && d0 == 0 && popped == g_ctx[1], "cuCtxPushCurrent/PopCurrent: a stack per thread");
    {
        int seen[3] = {-1, -1, -1};
        per_rank(3, [&](int r) { cuCtxGetDevice(&seen[r]); });
        check(seen[0] == 0 && seen[1] == 1 && seen[2] == 2, "each host thread has its own current context");
    }
    {
        size_t f0a, f1a, f0b, f1b, total;
        CUdeviceptr p = 0;
        cuCtxSetCurrent(g_ctx[0]);
        cuMemGetInfo_v2(&f0a, &total);
        cuCtxSetCurrent(g_ctx[1]);
        cuMemGetInfo_v2(&f1a, &total);
        cuMemAlloc_v2(&p, 1 << 20);
        cuMemGetInfo_v2(&f1b, &total);
        cuCtxSetCurrent(g_ctx[0]);
        cuMemGetInfo_v2(&f0b, &total);
        check(f1a - f1b == (1u << 20) && f0a == f0b, "cuMemGetInfo counts the current device's allocations only");
        cuMemFree_v2(p);
    }
    {
        int can01 = -1, can00 = -1;
        cuDeviceCanAccessPeer(&can01, 0, 1);
        cuDeviceCanAccessPeer(&can00, 0, 0);
        cuCtxSetCurrent(g_ctx[0]);
        bool ok2 = cuCtxEnablePeerAccess(g_ctx[1], 0) == 0 && cuCtxEnablePeerAccess(g_ctx[1], 0) == 704 &&
                   cuCtxDisablePeerAccess(g_ctx[1]) == 0 && cuCtxDisablePeerAccess(g_ctx[1]) == 705 &&
                   cuCtxEnablePeerAccess(g_ctx[0], 0) == 101;
        check(can01 == 1 && can00 == 0 && ok2, "peer access: queries, enable, already enabled, not enabled, self");
    }
    std::vector<float> host(64), back(64, 0.0f);
    for (int i = 0; i < 64; ++i) host[i] = (float)i + 0.5f;
    CUdeviceptr a0 = 0, b0 = 0, a1 = 0;
    cuCtxSetCurrent(g_ctx[0]);
    cuMemAlloc_v2(&a0, 256);
    cuMemAlloc_v2(&b0, 256);
    cuCtxSetCurrent(g_ctx[1]);
    cuMemAlloc_v2(&a1, 256);
    cuMemcpyHtoD_v2(a1, host.data(), 256);
    cuCtxSetCurrent(g_ctx[0]);
    ok = cuMemcpyPeer(a0, g_ctx[0], a1, g_ctx[1], 256) == 0 && cuMemcpyDtoH_v2(back.data(), a0, 256) == 0 &&
         back == host;
    check(ok, "cuMemcpyPeer copies device 1's buffer into device 0's");
    check(cuMemcpyPeer(a0, g_ctx[1], a1, g_ctx[1], 256) == 1, "cuMemcpyPeer with the wrong context for a buffer: error");
    std::fill(back.begin(), back.end(), 0.0f);
    ok = cuMemcpyDtoD_v2(b0, a1, 256) == 0 && cuMemcpyDtoH_v2(back.data(), b0, 256) == 0 && back == host;
    check(ok, "cuMemcpyDtoD between devices (unified addressing)");
    {
        void *mod0 = nullptr, *fn0 = nullptr, *mod1 = nullptr, *fn1 = nullptr;
        cuCtxSetCurrent(g_ctx[0]);
        cuModuleLoadData(&mod0, kPtx);
        cuModuleGetFunction(&fn0, mod0, "shift_ok");
        void *args[] = {&b0, &a1}; // device 0 reads device 1's memory
        const CUresult no_peer = cuLaunchKernel(fn0, 1, 1, 1, 64, 1, 1, 0, nullptr, args, nullptr);
        cuCtxSetCurrent(g_ctx[1]);
        cuModuleLoadData(&mod1, kPtx);
        cuModuleGetFunction(&fn1, mod1, "shift_ok");
        void *args1[] = {&a1, &a1};
        const CUresult other = cuLaunchKernel(fn1, 1, 1, 1, 64, 1, 1, 0, nullptr, args1, nullptr);
        check(no_peer == 700 && other == 0,
              "a kernel reading another device's memory without peer access faults; the other device goes on");
        cuDevicePrimaryCtxReset_v2(0);
        cuCtxSetCurrent(g_ctx[0]);
        cuCtxEnablePeerAccess(g_ctx[1], 0);
        std::fill(back.begin(), back.end(), 0.0f);
        void *args2[] = {&b0, &a0};
        ok = cuLaunchKernel(fn0, 1, 1, 1, 64, 1, 1, 0, nullptr, args, nullptr) == 0 &&
             cuLaunchKernel(fn0, 1, 1, 1, 64, 1, 1, 0, nullptr, args2, nullptr) == 0 &&
             cuMemcpyDtoH_v2(back.data(), b0, 256) == 0 && back[0] == host[1] && back[63] == host[0];
        check(ok, "with peer access enabled the same launch works");
        check(cuLaunchKernel(fn1, 1, 1, 1, 64, 1, 1, 0, nullptr, args2, nullptr) == 400,
              "a kernel of device 1's module launched in device 0's context: INVALID_HANDLE");
        void *s1 = nullptr, *e0 = nullptr, *s0 = nullptr;
        cuEventCreate(&e0, 0);
        cuStreamCreate(&s0, 0);
        cuCtxSetCurrent(g_ctx[1]);
        cuStreamCreate(&s1, 0);
        check(cuEventRecord(e0, s1) == 400 && cuStreamWaitEvent(s1, e0, 0) == 0,
              "events: recorded on their own context's streams only, waited on from any");
        check(cuLaunchKernel(fn1, 1, 1, 1, 64, 1, 1, 0, s0, args1, nullptr) == 400,
              "a launch on a stream of another context: INVALID_HANDLE");
        cuStreamDestroy_v2(s1);
        cuCtxSetCurrent(g_ctx[0]);
        cuStreamDestroy_v2(s0);
    }
    cuMemFree_v2(a0);
    cuMemFree_v2(b0);
    cuMemFree_v2(a1);
    {
        // Launches from three host threads at once, one device each.
        std::atomic<int> bad{0};
        per_rank(3, [&](int r) {
            void *mod = nullptr, *fn = nullptr;
            cuModuleLoadData(&mod, kPtx);
            cuModuleGetFunction(&fn, mod, "shift_ok");
            CUdeviceptr in = 0, out = 0;
            cuMemAlloc_v2(&in, 256);
            cuMemAlloc_v2(&out, 256);
            std::vector<float> h(64), got(64);
            for (int it = 0; it < 40; ++it) {
                for (int i = 0; i < 64; ++i) h[i] = (float)(r * 1000 + it * 64 + i);
                void *args[] = {&out, &in};
                if (cuMemcpyHtoD_v2(in, h.data(), 256) || cuLaunchKernel(fn, 1, 1, 1, 64, 1, 1, 0, nullptr, args, nullptr) ||
                    cuMemcpyDtoH_v2(got.data(), out, 256))
                    ++bad;
                for (int i = 0; i < 64; ++i) bad += got[i] != h[(i + 1) % 64];
            }
            cuMemFree_v2(in);
            cuMemFree_v2(out);
        });
        check(bad == 0, "three host threads launch on three devices at once: every result right");
    }
}

// Device buffers of `n` floats (or 16-bit values) on the thread's current device.
struct DevBuf {
    CUdeviceptr p = 0;
    size_t bytes;
    explicit DevBuf(size_t b) : bytes(b) { cuMemAlloc_v2(&p, b ? b : 4); }
    ~DevBuf() { cuMemFree_v2(p); }
    void *ptr() const { return (void *)p; }
};

static std::vector<float> random_floats(size_t n, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    std::vector<float> v(n);
    for (auto &x : v) x = u(g);
    return v;
}

// All-reduce of `count` floats over `n` ranks in threads (InitRank with one id), every
// rank's result against the serial sum in rank order (bitwise) and the f64 sum.
static void allreduce_f32(int n, size_t count, int op, const char *what) {
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    std::vector<std::vector<float>> in(n), out(n, std::vector<float>(count));
    for (int r = 0; r < n; ++r) in[r] = random_floats(count, 100 * n + r + count);
    std::vector<int> rc(n, -1);
    per_rank(n, [&](int r) {
        ncclComm_t c = nullptr;
        if (ncclCommInitRank(&c, n, id, r)) return;
        DevBuf s(count * 4), d(count * 4);
        cuMemcpyHtoD_v2(s.p, in[r].data(), count * 4);
        rc[r] = ncclAllReduce(s.ptr(), d.ptr(), count, kF32, op, c, nullptr);
        cuMemcpyDtoH_v2(out[r].data(), d.p, count * 4);
        ncclCommDestroy(c);
    });
    bool ok = true;
    double worst = 0;
    for (size_t i = 0; i < count; ++i) {
        float acc = 0;
        double exact = 0, mag = 0;
        for (int r = 0; r < n; ++r) {
            const float x = op == kAvg ? in[r][i] * (1.0f / n) : in[r][i];
            acc = r == 0 ? x : acc + x;
            exact += (double)in[r][i] / (op == kAvg ? n : 1);
            mag += std::fabs((double)in[r][i]) / (op == kAvg ? n : 1);
        }
        for (int r = 0; r < n; ++r) ok &= rc[r] == 0 && memcmp(&out[r][i], &acc, 4) == 0;
        const double bound = (n - 1 + (op == kAvg ? n : 0)) * ldexp(1.0, -24) * mag;
        worst = std::max(worst, std::fabs(out[0][i] - exact) / (bound > 0 ? bound : 1));
    }
    check(ok && worst <= 1.0, what);
}

static void allreduce_bf16(int n, size_t count, int op, const char *what) {
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    std::vector<std::vector<uint16_t>> in(n, std::vector<uint16_t>(count)), out(n, std::vector<uint16_t>(count));
    for (int r = 0; r < n; ++r) {
        auto f = random_floats(count, 7 * n + r + count);
        for (size_t i = 0; i < count; ++i) in[r][i] = bf16_bits(f[i]);
    }
    std::vector<int> rc(n, -1);
    per_rank(n, [&](int r) {
        ncclComm_t c = nullptr;
        if (ncclCommInitRank(&c, n, id, r)) return;
        DevBuf s(count * 2);
        cuMemcpyHtoD_v2(s.p, in[r].data(), count * 2);
        rc[r] = ncclAllReduce(s.ptr(), s.ptr(), count, kBf16, op, c, nullptr); // in place
        cuMemcpyDtoH_v2(out[r].data(), s.p, count * 2);
        ncclCommDestroy(c);
    });
    bool ok = true;
    double worst = 0;
    const float scale = round_bf16(1.0f / n);
    for (size_t i = 0; i < count; ++i) {
        float acc = 0;
        double exact = 0, mag = 0;
        for (int r = 0; r < n; ++r) {
            float x = bf16_value(in[r][i]);
            if (op == kAvg) x = round_bf16(x * scale);
            acc = r == 0 ? x : round_bf16(acc + x);
            exact += (double)bf16_value(in[r][i]) / (op == kAvg ? n : 1);
            mag += std::fabs((double)bf16_value(in[r][i])) / (op == kAvg ? n : 1);
        }
        for (int r = 0; r < n; ++r) ok &= rc[r] == 0 && out[r][i] == bf16_bits(acc);
        // Each of the n - 1 additions (and, for avg, the n products and the scale itself)
        // rounds by at most half a bf16 ulp: 2^-8 relative.
        const double bound = (n - 1 + (op == kAvg ? 2 * n : 0)) * ldexp(1.0, -8) * mag;
        worst = std::max(worst, std::fabs(bf16_value(out[0][i]) - exact) / (bound > 0 ? bound : 1));
    }
    check(ok && worst <= 1.0, what);
}

// ---- ranks in several processes: this program started again as "multidev rank R N ID
// SCENARIO" for ranks 1..N-1, rank 0 in this process ----
static std::string hex(const ncclUniqueId &id) {
    std::string s;
    char b[3];
    for (unsigned char c : id.internal) {
        snprintf(b, sizeof b, "%02x", c);
        s += b;
    }
    return s;
}
static ncclUniqueId unhex(const char *s) {
    ncclUniqueId id{};
    for (int i = 0; i < 128 && s[2 * i] && s[2 * i + 1]; ++i) {
        unsigned v = 0;
        sscanf(s + 2 * i, "%2x", &v);
        id.internal[i] = (char)v;
    }
    return id;
}

// What every rank of a cross-process communicator checks of its own results: an
// all-reduce sum of f32 in two rounds (over 4 MiB per rank) against the serial rank-order
// sum, a bf16 avg, a reduce-scatter and an all-gather of int32, a broadcast.
static bool xp_rank_checks(ncclComm_t c, int rank, int n) {
    bool ok = true;
    const size_t count = (4u << 20) / 4 + 12345;
    std::vector<std::vector<float>> in(n);
    for (int q = 0; q < n; ++q) in[q] = random_floats(count, 555 + q);
    {
        DevBuf s(count * 4);
        std::vector<float> got(count);
        cuMemcpyHtoD_v2(s.p, in[rank].data(), count * 4);
        ok &= ncclAllReduce(s.ptr(), s.ptr(), count, kF32, kSum, c, nullptr) == 0;
        cuMemcpyDtoH_v2(got.data(), s.p, count * 4);
        for (size_t i = 0; i < count; ++i) {
            float acc = in[0][i];
            for (int q = 1; q < n; ++q) acc += in[q][i];
            ok &= memcmp(&acc, &got[i], 4) == 0;
        }
    }
    {
        const size_t k = 1001;
        std::vector<uint16_t> mine(k), got(k);
        for (size_t i = 0; i < k; ++i) mine[i] = bf16_bits(in[rank][i]);
        DevBuf s(k * 2);
        cuMemcpyHtoD_v2(s.p, mine.data(), k * 2);
        ok &= ncclAllReduce(s.ptr(), s.ptr(), k, kBf16, kAvg, c, nullptr) == 0;
        cuMemcpyDtoH_v2(got.data(), s.p, k * 2);
        const float scale = round_bf16(1.0f / n);
        for (size_t i = 0; i < k; ++i) {
            float acc = 0;
            for (int q = 0; q < n; ++q) {
                const float x = round_bf16(bf16_value(bf16_bits(in[q][i])) * scale);
                acc = q == 0 ? x : round_bf16(acc + x);
            }
            ok &= got[i] == bf16_bits(acc);
        }
    }
    {
        const size_t k = 5;
        std::vector<int32_t> src(k * n), rs(k), ag(k * n), bc(k);
        for (size_t i = 0; i < k * n; ++i) src[i] = (int32_t)(100 * rank + i);
        DevBuf s(k * n * 4), d(k * n * 4);
        cuMemcpyHtoD_v2(s.p, src.data(), k * n * 4);
        ok &= ncclReduceScatter(s.ptr(), d.ptr(), k, kI32, kSum, c, nullptr) == 0;
        cuMemcpyDtoH_v2(rs.data(), d.p, k * 4);
        ok &= ncclAllGather(s.ptr(), d.ptr(), k, kI32, c, nullptr) == 0;
        cuMemcpyDtoH_v2(ag.data(), d.p, k * n * 4);
        ok &= ncclBroadcast(s.ptr(), d.ptr(), k, kI32, n - 1, c, nullptr) == 0;
        cuMemcpyDtoH_v2(bc.data(), d.p, k * 4);
        for (size_t i = 0; i < k; ++i) {
            int32_t want = 0;
            for (int q = 0; q < n; ++q) want += (int32_t)(100 * q + rank * k + i);
            ok &= rs[i] == want && bc[i] == (int32_t)(100 * (n - 1) + i);
            for (int q = 0; q < n; ++q) ok &= ag[q * k + i] == (int32_t)(100 * q + i);
        }
    }
    return ok;
}

// A child process: one rank. Exit status 0 when its checks pass (scenario "ok"), after
// init for "exit-early", and 0 when its collective failed as injected for "fail".
static int child_rank(int rank, int n, const char *idhex, const std::string &scenario) {
    if (cuInit(0) != 0) return 10;
    CUcontext ctx = nullptr;
    int ndev = 1;
    cuDeviceGetCount(&ndev);
    cuDevicePrimaryCtxRetain(&ctx, rank % ndev);
    cuCtxSetCurrent(ctx);
    ncclComm_t c = nullptr;
    if (ncclCommInitRank(&c, n, unhex(idhex), rank) != 0) return 11;
    if (scenario == "exit-early") _exit(0); // gone without a word
    if (scenario == "fail") {
        DevBuf s(64);
        const int r = ncclAllReduce(s.ptr(), s.ptr(), 16, kF32, kSum, c, nullptr);
        ncclCommAbort(c);
        return r == kSystemError || r == kRemoteError ? 0 : 12;
    }
    const bool ok = xp_rank_checks(c, rank, n);
    ncclCommDestroy(c);
    return ok ? 0 : 13;
}

#include <spawn.h>
#include <sys/wait.h>
extern char **environ;
static std::vector<pid_t> spawn_ranks(int n, const ncclUniqueId &id, const char *scenario) {
    std::vector<pid_t> pids;
    const std::string h = hex(id), ns = std::to_string(n);
    for (int r = 1; r < n; ++r) {
        const std::string rs = std::to_string(r);
        char *argv[] = {(char *)"multidev", (char *)"rank", (char *)rs.c_str(), (char *)ns.c_str(), (char *)h.c_str(),
                        (char *)scenario, nullptr};
        pid_t pid = 0;
        if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, environ) == 0) pids.push_back(pid);
    }
    return pids;
}
static bool children_ok(const std::vector<pid_t> &pids) {
    bool ok = !pids.empty();
    for (pid_t p : pids) {
        int st = 0;
        waitpid(p, &st, 0);
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) printf("selftest:   (a rank's process ended with status %d)\n", st);
    }
    return ok;
}

static void multi_process_tests() {
    cuCtxSetCurrent(g_ctx[0]);
    {
        // Rank 0 here, ranks 1 and 2 in processes of their own.
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        auto pids = spawn_ranks(3, id, "ok");
        ncclComm_t c = nullptr;
        bool ok = ncclCommInitRank(&c, 3, id, 0) == 0 && xp_rank_checks(c, 0, 3);
        if (c) ncclCommDestroy(c);
        check(children_ok(pids) && ok,
              "3 ranks in 3 processes: all-reduce f32 (2 rounds) bitwise, bf16 avg, RS, AG, broadcast");
    }
    {
        // Rank 1's process exits after init: rank 0's collective fails at once, naming it.
        setenv("CYB_EMU_NCCL_TIMEOUT_MS", "20000", 1);
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        auto pids = spawn_ranks(2, id, "exit-early");
        ncclComm_t c = nullptr;
        int r = ncclCommInitRank(&c, 2, id, 0);
        const bool child = children_ok(pids);
        DevBuf s(64);
        const auto t0 = std::chrono::steady_clock::now();
        if (r == 0) r = ncclAllReduce(s.ptr(), s.ptr(), 16, kF32, kSum, c, nullptr);
        const std::string msg = ncclGetLastError(nullptr);
        check(child && r == kRemoteError && secs_since(t0) < 2 && msg.find("exited") != std::string::npos,
              "a rank's process that exits: the others get ncclRemoteError at once, naming it");
        if (c) ncclCommAbort(c);
    }
    {
        // Injected failure on rank 1 (another process): both ranks fail at once.
        setenv("CYB_EMU_NCCL_FAIL_RANK", "1", 1);
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        auto pids = spawn_ranks(2, id, "fail");
        ncclComm_t c = nullptr;
        int r = ncclCommInitRank(&c, 2, id, 0);
        DevBuf s(64);
        const auto t0 = std::chrono::steady_clock::now();
        if (r == 0) r = ncclAllReduce(s.ptr(), s.ptr(), 16, kF32, kSum, c, nullptr);
        const bool child = children_ok(pids);
        unsetenv("CYB_EMU_NCCL_FAIL_RANK");
        check(child && r == kRemoteError && secs_since(t0) < 5,
              "CYB_EMU_NCCL_FAIL_RANK=1 in another process: rank 0 gets ncclRemoteError at once");
        if (c) ncclCommAbort(c);
    }
    {
        // A rank that never starts: init fails after CYB_EMU_NCCL_INIT_TIMEOUT_MS.
        setenv("CYB_EMU_NCCL_INIT_TIMEOUT_MS", "300", 1);
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        ncclComm_t c = nullptr;
        const auto t0 = std::chrono::steady_clock::now();
        const int r = ncclCommInitRank(&c, 2, id, 0);
        check(r == kSystemError && secs_since(t0) < 3 &&
                  std::string(ncclGetLastError(nullptr)).find("rank(s) 1 of 2 never arrived") != std::string::npos,
              "a rank that never calls ncclCommInitRank: ncclSystemError after the init timeout");
        if (c) ncclCommAbort(c);
        unsetenv("CYB_EMU_NCCL_INIT_TIMEOUT_MS");
    }
}

static void nccl_tests() {
    int v = 0;
    check(ncclGetVersion(&v) == 0 && v >= 22000, "ncclGetVersion");
    {
        ncclComm_t comms[3] = {};
        int count = 0, dev = -1, rank = -1;
        const int devs[3] = {2, 0, 1};
        bool ok = ncclCommInitAll(comms, 3, devs) == 0 && ncclCommCount(comms[0], &count) == 0 && count == 3 &&
                  ncclCommCuDevice(comms[0], &dev) == 0 && dev == 2 && ncclCommUserRank(comms[2], &rank) == 0 &&
                  rank == 2;
        check(ok, "ncclCommInitAll: count, device and rank of each communicator");
        // One thread drives the three ranks inside a group.
        std::vector<float> h[3], got(5);
        DevBuf *bufs[3];
        for (int r = 0; r < 3; ++r) {
            cuCtxSetCurrent(g_ctx[devs[r]]);
            h[r] = {1.0f * (r + 1), 2.0f, 3.0f, -4.0f * r, 5.0f};
            bufs[r] = new DevBuf(20);
            cuMemcpyHtoD_v2(bufs[r]->p, h[r].data(), 20);
        }
        // (the null stream is the current context's: each rank's device is bound in turn)
        ok = ncclGroupStart() == 0;
        for (int r = 0; r < 3; ++r) {
            cuCtxSetCurrent(g_ctx[devs[r]]);
            ok &= ncclAllReduce(bufs[r]->ptr(), bufs[r]->ptr(), 5, kF32, kMax, comms[r], nullptr) == 0;
        }
        ok &= ncclGroupEnd() == 0;
        for (int r = 0; r < 3; ++r) {
            cuCtxSetCurrent(g_ctx[devs[r]]);
            cuMemcpyDtoH_v2(got.data(), bufs[r]->p, 20);
            ok &= got == std::vector<float>{3.0f, 2.0f, 3.0f, 0.0f, 5.0f};
        }
        check(ok, "group calls: one thread drives three ranks (max, in place)");
        cuCtxSetCurrent(g_ctx[devs[0]]);
        check(ncclAllReduce(bufs[0]->ptr(), bufs[1]->ptr(), 5, kF32, kSum, comms[0], nullptr) == kInvalidArgument &&
                  std::string(ncclGetLastError(nullptr)).find("lies on device 0") != std::string::npos,
              "a receive buffer of another device: ncclInvalidArgument naming it");
        check(ncclAllReduce(nullptr, bufs[0]->ptr(), 5, kF32, kSum, comms[0], nullptr) == kInvalidArgument,
              "a null send buffer: ncclInvalidArgument");
        check(ncclAllReduce(bufs[0]->ptr(), bufs[0]->ptr(), 5, 42, kSum, comms[0], nullptr) == kInvalidArgument &&
                  ncclAllReduce(bufs[0]->ptr(), bufs[0]->ptr(), 5, kF32, 9, comms[0], nullptr) == kInvalidArgument &&
                  ncclAllReduce(bufs[0]->ptr(), bufs[0]->ptr(), 6, kF32, kSum, comms[0], nullptr) == kInvalidArgument,
              "unknown datatype, unknown operation, a count past the buffer: ncclInvalidArgument");
        check(ncclGroupEnd() == kInvalidUsage, "ncclGroupEnd without ncclGroupStart: ncclInvalidUsage");
        check(ncclAllReduce(bufs[0]->ptr(), bufs[0]->ptr(), 5, kF32, kSum, (ncclComm_t)bufs, nullptr) == kInvalidArgument,
              "not a communicator: ncclInvalidArgument");
        for (int r = 0; r < 3; ++r) {
            cuCtxSetCurrent(g_ctx[devs[r]]);
            delete bufs[r];
            ncclCommDestroy(comms[r]);
        }
        check(std::string(ncclGetErrorString(kRemoteError)).find("remote") != std::string::npos, "ncclGetErrorString");
    }
    allreduce_f32(2, 1, kSum, "all-reduce sum f32, 2 ranks, 1 element: = serial rank-order sum, bitwise");
    allreduce_f32(3, 1025, kSum, "all-reduce sum f32, 3 ranks, 1025 elements: = serial sum; f64 within bound");
    allreduce_f32(3, 1000, kAvg, "all-reduce avg f32, 3 ranks: = sum of x/3 in rank order; f64 within bound");
    allreduce_bf16(2, 333, kSum, "all-reduce sum bf16, 2 ranks, in place: = serial bf16 sum; f64 within bound");
    allreduce_bf16(3, 1025, kAvg, "all-reduce avg bf16, 3 ranks, in place: = serial; f64 within bound");
    {
        // Each rank thread groups three all-reduces (f32 buckets and f64 statistics), as a
        // bucketed gradient reduction does; they complete at its ncclGroupEnd.
        const int n = 2;
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<int> rc(n, -1);
        std::vector<std::vector<float>> a(n), b(n);
        std::vector<std::vector<double>> st(n, std::vector<double>(3));
        per_rank(n, [&](int r) {
            ncclComm_t c = nullptr;
            if (ncclCommInitRank(&c, n, id, r)) return;
            a[r] = random_floats(100, 1 + r);
            b[r] = random_floats(37, 11 + r);
            st[r] = {1.0 + r, 0.25 * r, -3.0};
            DevBuf da(400), db(148), ds(24);
            cuMemcpyHtoD_v2(da.p, a[r].data(), 400);
            cuMemcpyHtoD_v2(db.p, b[r].data(), 148);
            cuMemcpyHtoD_v2(ds.p, st[r].data(), 24);
            void *stream = nullptr;
            cuStreamCreate(&stream, 0);
            rc[r] = ncclGroupStart();
            rc[r] |= ncclAllReduce(da.ptr(), da.ptr(), 100, kF32, kSum, c, stream);
            rc[r] |= ncclAllReduce(db.ptr(), db.ptr(), 37, kF32, kSum, c, stream);
            rc[r] |= ncclAllReduce(ds.ptr(), ds.ptr(), 3, kF64, kSum, c, stream);
            rc[r] |= ncclGroupEnd();
            std::vector<float> ga(100), gb(37);
            cuMemcpyDtoH_v2(ga.data(), da.p, 400);
            cuMemcpyDtoH_v2(gb.data(), db.p, 148);
            cuMemcpyDtoH_v2(st[r].data(), ds.p, 24);
            a[r] = ga;
            b[r] = gb;
            cuStreamDestroy_v2(stream);
            ncclCommDestroy(c);
        });
        bool ok = rc == std::vector<int>(n, 0) && a[0] == a[1] && b[0] == b[1] &&
                  st[0] == std::vector<double>{3.0, 0.25, -6.0} && st[1] == st[0];
        const auto a0 = random_floats(100, 1), a1 = random_floats(100, 2);
        for (int i = 0; i < 100 && ok; ++i) ok = a[0][i] == a0[i] + a1[i];
        check(ok, "each rank thread groups three all-reduces (f32, f32, f64) on its own stream");
    }
    {
        // Reduce-scatter, all-gather, broadcast and reduce, 3 ranks in threads.
        const int n = 3;
        const size_t k = 7;
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<std::vector<int32_t>> rs(n, std::vector<int32_t>(k)), ag(n, std::vector<int32_t>(k * n)),
            bc(n, std::vector<int32_t>(k)), rd(n, std::vector<int32_t>(k, -1));
        std::vector<int> rc(n, 0);
        per_rank(n, [&](int r) {
            ncclComm_t c = nullptr;
            if ((rc[r] = ncclCommInitRank(&c, n, id, r))) return;
            std::vector<int32_t> src(k * n);
            for (size_t i = 0; i < k * n; ++i) src[i] = (int32_t)(100 * r + i);
            DevBuf s(k * n * 4), d(k * n * 4);
            cuMemcpyHtoD_v2(s.p, src.data(), k * n * 4);
            rc[r] |= ncclReduceScatter(s.ptr(), d.ptr(), k, kI32, kSum, c, nullptr);
            cuMemcpyDtoH_v2(rs[r].data(), d.p, k * 4);
            rc[r] |= ncclAllGather(s.ptr(), d.ptr(), k, kI32, c, nullptr);
            cuMemcpyDtoH_v2(ag[r].data(), d.p, k * n * 4);
            rc[r] |= ncclBroadcast(s.ptr(), d.ptr(), k, kI32, 2, c, nullptr);
            cuMemcpyDtoH_v2(bc[r].data(), d.p, k * 4);
            cuMemcpyHtoD_v2(d.p, rd[r].data(), k * 4);
            rc[r] |= ncclReduce(s.ptr(), d.ptr(), k, kI32, kSum, 1, c, nullptr);
            cuMemcpyDtoH_v2(rd[r].data(), d.p, k * 4);
            ncclCommDestroy(c);
        });
        bool ok = rc == std::vector<int>(n, 0);
        for (int r = 0; r < n; ++r)
            for (size_t i = 0; i < k; ++i) {
                ok &= rs[r][i] == (int32_t)(300 + 3 * (r * k + i)); // sum over q of 100 q + r k + i
                for (int q = 0; q < n; ++q) ok &= ag[r][q * k + i] == (int32_t)(100 * q + i);
                ok &= bc[r][i] == (int32_t)(200 + i);
                ok &= rd[r][i] == (r == 1 ? (int32_t)(300 + 3 * i) : -1);
            }
        check(ok, "reduce-scatter, all-gather, broadcast (root 2), reduce (root 1): 3 ranks, int32");
    }
    {
        // Ranks that disagree: both get ncclInvalidUsage, no hang.
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<int> rc(2, -1);
        per_rank(2, [&](int r) {
            ncclComm_t c = nullptr;
            if (ncclCommInitRank(&c, 2, id, r)) return;
            DevBuf s(64);
            rc[r] = ncclAllReduce(s.ptr(), s.ptr(), r == 0 ? 16 : 8, kF32, kSum, c, nullptr);
            ncclCommDestroy(c);
        });
        check(rc[0] == kInvalidUsage && rc[1] == kInvalidUsage, "ranks with different counts: ncclInvalidUsage on both");
    }
    {
        // Two ranks on one device: NCCL's duplicate GPU.
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<int> rc(2, -1);
        const int devs[2] = {1, 1};
        per_rank(2, [&](int r) {
            ncclComm_t c = nullptr;
            rc[r] = ncclCommInitRank(&c, 2, id, r);
            if (c) ncclCommDestroy(c);
        }, devs);
        check(rc[0] == kInvalidUsage && rc[1] == kInvalidUsage, "two ranks on one device: ncclInvalidUsage");
    }
    multi_process_tests();
    setenv("CYB_EMU_NCCL_TIMEOUT_MS", "300", 1);
    {
        // A rank that never arrives: the caller gets ncclSystemError after the timeout,
        // then the other rank's call fails at once.
        ncclComm_t comms[2] = {};
        ncclCommInitAll(comms, 2, nullptr);
        cuCtxSetCurrent(g_ctx[0]);
        DevBuf s0(64);
        cuCtxSetCurrent(g_ctx[1]);
        DevBuf s1(64);
        cuCtxSetCurrent(g_ctx[0]);
        const auto t0 = std::chrono::steady_clock::now();
        const int r0 = ncclAllReduce(s0.ptr(), s0.ptr(), 16, kF32, kSum, comms[0], nullptr);
        const double waited = secs_since(t0);
        const std::string msg = ncclGetLastError(nullptr);
        cuCtxSetCurrent(g_ctx[1]);
        const auto t1 = std::chrono::steady_clock::now();
        const int r1 = ncclAllReduce(s1.ptr(), s1.ptr(), 16, kF32, kSum, comms[1], nullptr);
        int async = 0;
        ncclCommGetAsyncError(comms[1], &async);
        check(r0 == kSystemError && waited >= 0.25 && waited < 5 && msg.find("rank(s) 1 of 2 never arrived") != std::string::npos,
              "a rank that never arrives: ncclSystemError after CYB_EMU_NCCL_TIMEOUT_MS, naming it");
        check(r1 == kRemoteError && secs_since(t1) < 0.2 && async == kRemoteError,
              "then the other rank fails at once (ncclRemoteError, also as the async error)");
        cuCtxSetCurrent(g_ctx[0]);
        ncclCommDestroy(comms[0]);
        ncclCommDestroy(comms[1]);
    }
    {
        // A rank that leaves while the other waits: the waiter fails at once.
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<int> rc(2, -1);
        double waited = 99;
        per_rank(2, [&](int r) {
            ncclComm_t c = nullptr;
            if (ncclCommInitRank(&c, 2, id, r)) return;
            DevBuf s(64);
            if (r == 0) {
                const auto t0 = std::chrono::steady_clock::now();
                rc[0] = ncclAllReduce(s.ptr(), s.ptr(), 16, kF32, kSum, c, nullptr);
                waited = secs_since(t0);
            } else {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                rc[1] = ncclCommAbort(c);
                c = nullptr;
            }
            if (c) ncclCommDestroy(c);
        });
        check(rc[0] == kRemoteError && rc[1] == 0 && waited < 0.25, "a rank that aborts while another waits: ncclRemoteError, no wait");
    }
    {
        // Error injection: rank 1's collective #2 fails; both ranks return errors at #2
        // (not after the timeout), #0 and #1 are correct.
        setenv("CYB_EMU_NCCL_TIMEOUT_MS", "20000", 1);
        setenv("CYB_EMU_NCCL_FAIL_RANK", "1", 1);
        setenv("CYB_EMU_NCCL_FAIL_AT", "2", 1);
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        std::vector<std::vector<int>> rc(2, std::vector<int>(4, -1));
        const auto t0 = std::chrono::steady_clock::now();
        per_rank(2, [&](int r) {
            ncclComm_t c = nullptr;
            if (ncclCommInitRank(&c, 2, id, r)) return;
            DevBuf s(64);
            for (int i = 0; i < 4; ++i) rc[r][i] = ncclAllReduce(s.ptr(), s.ptr(), 16, kF32, kSum, c, nullptr);
            ncclCommDestroy(c);
        });
        const double took = secs_since(t0);
        unsetenv("CYB_EMU_NCCL_FAIL_RANK");
        unsetenv("CYB_EMU_NCCL_FAIL_AT");
        check(rc[0][0] == 0 && rc[0][1] == 0 && rc[1][0] == 0 && rc[1][1] == 0 && rc[1][2] == kSystemError &&
                  rc[0][2] == kRemoteError && rc[0][3] == kRemoteError && rc[1][3] == kRemoteError && took < 5,
              "CYB_EMU_NCCL_FAIL_RANK=1 FAIL_AT=2: rank 1 ncclSystemError, rank 0 ncclRemoteError, at once");
    }
}

// Stream order of the collectives (nccl.cpp "Stream order", driver.cpp "streams"): two
// rank threads, each with a compute stream A and a communication stream B. The queued
// collectives make each ordering a program must state observable: without the event
// wait the numbers come out wrong, with it right.
static void stream_order_tests() {
    const int n = 2;
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    // Per rank: x[t] = (r + 1) * (t + 1); sums over the ranks are 3 (t + 1).
    auto x_of = [](int r) {
        std::vector<float> x(64);
        for (int t = 0; t < 64; ++t) x[t] = (float)((r + 1) * (t + 1));
        return x;
    };
    std::vector<std::vector<float>> before_wait(n), after_wait(n), queued_wait(n), late_write(n), chained(n);
    std::vector<int> rc(n, 0);
    per_rank(n, [&](int r) {
        ncclComm_t c = nullptr;
        if ((rc[r] = ncclCommInitRank(&c, n, id, r))) return;
        void *mod = nullptr, *fn = nullptr, *a = nullptr, *b = nullptr, *e = nullptr;
        cuModuleLoadData(&mod, kPtx);
        cuModuleGetFunction(&fn, mod, "shift_ok");
        cuStreamCreate(&a, 0);
        cuStreamCreate(&b, 0);
        const auto x = x_of(r);
        DevBuf dx(256), dy(256), dz(256), dw(256);
        auto shift = [&](CUdeviceptr out, CUdeviceptr in, void *stream) { // out[t] = in[(t + 1) % 64]
            void *args[] = {&out, &in};
            rc[r] |= cuLaunchKernel(fn, 1, 1, 1, 64, 1, 1, 0, stream, args, nullptr);
        };
        auto host = [&](CUdeviceptr p) {
            std::vector<float> h(64);
            cuMemcpyDtoH_v2(h.data(), p, 256);
            return h;
        };
        // 1. The consumer: a kernel on A reads the all-reduced x (B) without waiting for
        // B, then (second round) after waiting for B's event.
        cuMemcpyHtoD_v2(dx.p, x.data(), 256);
        rc[r] |= ncclAllReduce(dx.ptr(), dx.ptr(), 64, kF32, kSum, c, b);
        shift(dw.p, dx.p, a); // no wait: runs before the queued collective
        before_wait[r] = host(dw.p);
        cuMemcpyHtoD_v2(dx.p, x.data(), 256);
        rc[r] |= ncclAllReduce(dx.ptr(), dx.ptr(), 64, kF32, kSum, c, b);
        cuEventCreate(&e, 0);
        rc[r] |= cuEventRecord(e, b);
        rc[r] |= cuStreamWaitEvent(a, e, 0);
        shift(dw.p, dx.p, a);
        after_wait[r] = host(dw.p);
        // 2. The producer side, B busy: B holds a queued collective (on z), then waits for
        // A's event recorded behind A's own queued collective (x, in place), then reduces
        // x into y. Only the queued wait makes y see A's result.
        cuMemcpyHtoD_v2(dx.p, x.data(), 256);
        cuMemcpyHtoD_v2(dz.p, x.data(), 256);
        rc[r] |= ncclAllReduce(dz.ptr(), dz.ptr(), 64, kF32, kSum, c, b);
        rc[r] |= ncclAllReduce(dx.ptr(), dx.ptr(), 64, kF32, kSum, c, a);
        rc[r] |= cuEventRecord(e, a);
        rc[r] |= cuStreamWaitEvent(b, e, 0);
        rc[r] |= ncclAllReduce(dx.ptr(), dy.ptr(), 64, kF32, kSum, c, b);
        rc[r] |= cuStreamSynchronize(b);
        queued_wait[r] = host(dy.p);
        // 3. A kernel on A writes x after the all-reduce of x was queued on B, B never
        // having waited for it (a bucket reported final too early): the write is lost.
        cuMemcpyHtoD_v2(dx.p, x.data(), 256);
        rc[r] |= ncclAllReduce(dx.ptr(), dx.ptr(), 64, kF32, kSum, c, b);
        shift(dx.p, dz.p, a);
        rc[r] |= cuStreamSynchronize(b);
        late_write[r] = host(dx.p);
        // 4. Two collectives on B, the second reading the first's output: read when it runs.
        cuMemcpyHtoD_v2(dx.p, x.data(), 256);
        rc[r] |= ncclAllReduce(dx.ptr(), dx.ptr(), 64, kF32, kSum, c, b);
        rc[r] |= ncclAllReduce(dx.ptr(), dy.ptr(), 64, kF32, kSum, c, b);
        rc[r] |= cuStreamSynchronize(b);
        chained[r] = host(dy.p);
        cuEventDestroy_v2(e);
        cuStreamDestroy_v2(a);
        cuStreamDestroy_v2(b);
        ncclCommDestroy(c);
    });
    auto shifted = [](const std::vector<float> &v) {
        std::vector<float> s(64);
        for (int t = 0; t < 64; ++t) s[t] = v[(t + 1) % 64];
        return s;
    };
    std::vector<float> sum(64), twice(64);
    for (int t = 0; t < 64; ++t) sum[t] = (float)(3 * (t + 1)), twice[t] = 2 * sum[t];
    bool ok = rc == std::vector<int>(n, 0);
    for (int r = 0; r < n && ok; ++r) ok = before_wait[r] == shifted(x_of(r));
    check(ok, "stream order: a kernel that does not wait for the collective's event reads the old values");
    ok = rc == std::vector<int>(n, 0);
    for (int r = 0; r < n && ok; ++r) ok = after_wait[r] == shifted(sum);
    check(ok, "stream order: after cuStreamWaitEvent on it, the all-reduced values");
    ok = rc == std::vector<int>(n, 0);
    for (int r = 0; r < n && ok; ++r) ok = queued_wait[r] == twice;
    check(ok, "stream order: a collective on B queued behind a wait for A's event sees A's collective");
    ok = rc == std::vector<int>(n, 0);
    for (int r = 0; r < n && ok; ++r) ok = late_write[r] == sum;
    check(ok, "stream order: a write to the input after the call, not waited for, is lost (input read at the call)");
    ok = rc == std::vector<int>(n, 0);
    for (int r = 0; r < n && ok; ++r) ok = chained[r] == twice;
    check(ok, "stream order: a collective reading an earlier queued one's output on its stream sees it");
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "rank")) return child_rank(atoi(argv[2]), atoi(argv[3]), argv[4], argv[5]);
    if (cuInit(0) != 0) {
        printf("selftest: cuInit failed\n");
        return 1;
    }
    driver_tests();
    nccl_tests();
    stream_order_tests();
    printf("selftest (multi-device, %s): %s\n", getenv("CYB_EMU_SELFTEST_MODE") ? getenv("CYB_EMU_SELFTEST_MODE") : "plain",
           failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}

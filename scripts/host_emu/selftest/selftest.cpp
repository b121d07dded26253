// The emulator's own tests: kernels broken on purpose (broken.cu) must fail, each with
// the error a GPU would give, and never hang; the launch limits of sm_90 must hold.
// Built and run by run.sh (plain, asan or race mode) against the same runtime.cpp and
// driver.cpp as target/emu/libcuda.so.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
extern "C" {
CUresult cuInit(unsigned);
CUresult cuModuleLoadData(void **, const void *);
CUresult cuModuleGetFunction(void **, void *, const char *);
CUresult cuFuncSetAttribute(void *, int, int);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, void *);
CUresult cuMemFreeAsync(CUdeviceptr, void *);
CUresult cuDeviceGetMemPool(void **, int);
CUresult cuMemPoolGetAttribute(void *, int, void *);
CUresult cuMemPoolSetAttribute(void *, int, void *);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                        void **);
CUresult cuCtxSynchronize();
CUresult cuDevicePrimaryCtxReset_v2(int);
const char *cyb_emu_last_fault();
}

// Whether the last failed launch's message holds every one of `parts`.
static bool fault_says(std::initializer_list<const char *> parts) {
    const std::string msg = cyb_emu_last_fault();
    for (const char *p : parts)
        if (msg.find(p) == std::string::npos) {
            printf("selftest:   (message lacks \"%s\": %s)\n", p, msg.c_str());
            return false;
        }
    return true;
}

static int failures = 0;
static void check(bool ok, const char *what) {
    printf("selftest: %-64s %s\n", what, ok ? "ok" : "FAILED");
    if (!ok) ++failures;
}

// A minimal PTX module: the kernel's entry with two pointer parameters, and optionally
// a static shared array of `shared` bytes that the kernel uses.
static std::string ptx(const char *name, int shared = 0) {
    std::string s = ".version 8.0\n.target sm_80\n.address_size 64\n";
    if (shared) s += ".shared .align 4 .b8 big_" + std::string(name) + "[" + std::to_string(shared) + "];\n";
    s += std::string(".visible .entry ") + name + "(\n\t.param .u64 p0,\n\t.param .u64 p1\n)\n.maxntid 1024, 1, 1\n{\n";
    if (shared) s += "\tmov.u64 %rd1, big_" + std::string(name) + ";\n";
    s += "\tret;\n}\n";
    return s;
}

// A fatbin as nvcc writes it (src/gpu/fatbin.rs has the layout): a container header,
// a stand-in sm_90 ELF entry, then a compute_80 PTX entry holding `text` (omitted when
// `with_ptx` is false), its flags at byte 40 set to `ptx_flags` (0x8000: zstd).
static std::string fatbin(const std::string &text, bool with_ptx = true, uint64_t ptx_flags = 0x11,
                          uint64_t ptx_payload_extra = 0) {
    auto put = [](std::string &s, size_t at, uint64_t v, int n) { memcpy(&s[at], &v, n); };
    auto entry = [&](uint16_t kind, uint32_t arch, const std::string &payload, uint64_t flags, uint64_t extra) {
        std::string h(64, '\0');
        put(h, 0, kind, 2);
        put(h, 2, 0x101, 2);
        put(h, 4, 64, 4);
        put(h, 8, payload.size() + extra, 8);
        put(h, 28, arch, 4);
        put(h, 40, flags, 8);
        return h + payload;
    };
    std::string body = entry(2, 90, std::string("\x7f" "ELF") + std::string(60, '\0'), 0x11, 0);
    if (with_ptx) {
        std::string padded = text + std::string(8 - text.size() % 8, '\0');
        body += entry(1, 80, padded, ptx_flags, ptx_payload_extra);
    }
    std::string head(16, '\0');
    put(head, 0, 0xBA55ED50u, 4);
    put(head, 4, 1, 2);
    put(head, 6, 16, 2);
    put(head, 8, body.size(), 8);
    return head + body;
}

struct Bufs {
    CUdeviceptr out = 0, in = 0;
    std::vector<float> host_in;
    explicit Bufs(int n, float base) : host_in(n) {
        cuDevicePrimaryCtxReset_v2(0); // a fresh context: the previous check's fault is sticky
        for (int i = 0; i < n; ++i) host_in[i] = base + (float)i;
        cuMemAlloc_v2(&out, n * 4);
        cuMemAlloc_v2(&in, n * 4);
        cuMemcpyHtoD_v2(in, host_in.data(), n * 4);
    }
    ~Bufs() {
        cuMemFree_v2(out);
        cuMemFree_v2(in);
    }
};

static CUresult launch(const char *name, unsigned threads, Bufs &b, std::vector<float> *result = nullptr,
                       unsigned gy = 1, unsigned shmem = 0, int optin = -1) {
    void *mod = nullptr, *fn = nullptr;
    const std::string p = ptx(name);
    CUresult r = cuModuleLoadData(&mod, p.c_str());
    if (r) return r;
    if ((r = cuModuleGetFunction(&fn, mod, name))) return r;
    if (optin >= 0 && (r = cuFuncSetAttribute(fn, 8, optin))) return r;
    void *args[] = {&b.out, &b.in};
    r = cuLaunchKernel(fn, 1, gy, 1, threads, 1, 1, shmem, nullptr, args, nullptr);
    if (!r && result) {
        result->resize(threads);
        cuMemcpyDtoH_v2(result->data(), b.out, threads * 4);
    }
    return r;
}

int main() {
    cuInit(0);
    const int n = 64;
    const char *mode = getenv("CYB_EMU_SELFTEST_MODE") ? getenv("CYB_EMU_SELFTEST_MODE") : "plain";
    {
        Bufs b(n, 1.0f);
        std::vector<float> got;
        bool ok = launch("shift_ok", n, b, &got) == 0;
        for (int i = 0; i < n && ok; ++i) ok = got[i] == b.host_in[(i + 1) % n];
        check(ok, "a correct kernel (shared memory and a barrier) passes");
    }
    {
        Bufs b(n, 1.0f);
        std::vector<float> got;
        bool ok = launch("warp_sum", n, b, &got) == 0;
        for (int w = 0; w < 2 && ok; ++w) {
            float s = 0;
            for (int i = 0; i < 32; ++i) s += b.host_in[32 * w + i];
            for (int i = 0; i < 32 && ok; ++i) ok = got[32 * w + i] == s;
        }
        check(ok, "warp shuffles exchange all 32 lanes' values");
    }
    {
        Bufs b(n, 100.0f);
        std::vector<float> got;
        bool wrong = launch("shift_no_barrier", n, b, &got) != 0; // the race checker stops it
        for (int i = 0; i < (int)got.size(); ++i) wrong |= got[i] != b.host_in[(i + 1) % n];
        check(wrong, "missing barrier: a neighbour's shared value is not there yet");
    }
    {
        Bufs b(n + 1, 1.0f); // in has n+1 elements: the wrong index stays inside
        std::vector<float> got;
        launch("copy_wrong_index", n, b, &got);
        check(got.size() == (size_t)n && got[0] != b.host_in[0], "wrong index: results differ from the reference");
    }
    {
        Bufs b(n * 4 + 8, 1.0f);
        check(launch("misaligned_vec", n, b) == 716, "misaligned 16-byte load: CUDA_ERROR_MISALIGNED_ADDRESS");
    }
    {
        Bufs b(n, 1.0f);
        check(launch("shared_oob", n, b) == 700, "out-of-bounds shared write: CUDA_ERROR_ILLEGAL_ADDRESS");
    }
    {
        Bufs b(n, 1.0f);
        check(launch("barrier_deadlock", n, b) == 719, "__syncthreads half the block never reaches: error, no hang");
        Bufs c(n, 1.0f);
        check(launch("shuffle_deadlock", n, c) == 719, "shuffle that lane 0 never reaches: error, no hang");
    }
    {
        Bufs b(2048, 1.0f);
        check(launch("shift_ok", 1025, b) == 1, "1025 threads per block: CUDA_ERROR_INVALID_VALUE");
        check(launch("shift_ok", 64, b, nullptr, 65536) == 1, "grid y = 65536: CUDA_ERROR_INVALID_VALUE");
        check(launch("shift_ok", 64, b, nullptr, 1, 49153) == 1,
              "49153 B dynamic shared without opt-in: CUDA_ERROR_INVALID_VALUE");
        check(launch("shift_ok", 64, b, nullptr, 1, 0, 227 * 1024 + 1) == 1,
              "opt-in to more than 227 KB shared: CUDA_ERROR_INVALID_VALUE");
        void *mod = nullptr;
        const std::string big = ptx("shift_ok", 48 * 1024 + 4);
        check(cuModuleLoadData(&mod, big.c_str()) == 218, "49156 B static shared: module load fails (INVALID_PTX)");
        const std::string unknown = ptx("not_compiled");
        check(cuModuleLoadData(&mod, unknown.c_str()) == 500, "a kernel the emulator lacks: CUDA_ERROR_NOT_FOUND");
    }
    {
        // Fatbins (what build.rs embeds): the PTX entry is read, the SASS skipped.
        Bufs b(n, 1.0f);
        void *mod = nullptr, *fn = nullptr;
        const std::string fb = fatbin(ptx("shift_ok"));
        bool ok = cuModuleLoadData(&mod, fb.data()) == 0 && cuModuleGetFunction(&fn, mod, "shift_ok") == 0;
        void *args[] = {&b.out, &b.in};
        ok = ok && cuLaunchKernel(fn, 1, 1, 1, n, 1, 1, 0, nullptr, args, nullptr) == 0;
        check(ok, "fatbin (sm_90 ELF + compute_80 PTX): loads and launches");
        const std::string zstd = fatbin(ptx("shift_ok"), true, 0x8011);
        check(cuModuleLoadData(&mod, zstd.data()) == 200, "fatbin with compressed PTX: CUDA_ERROR_INVALID_IMAGE");
        const std::string sass_only = fatbin(ptx("shift_ok"), false);
        check(cuModuleLoadData(&mod, sass_only.data()) == 200, "fatbin without PTX: CUDA_ERROR_INVALID_IMAGE");
        const std::string bad = fatbin(ptx("shift_ok"), true, 0x11, 4096);
        check(cuModuleLoadData(&mod, bad.data()) == 200,
              "fatbin entry larger than its container: CUDA_ERROR_INVALID_IMAGE");
        const std::string big = fatbin(ptx("shift_ok", 48 * 1024 + 4));
        check(cuModuleLoadData(&mod, big.data()) == 218, "fatbin: the PTX checks still apply (static shared)");
    }
    {
        // The device's memory pool counts every allocation, stream-ordered ones included
        // (what cudarc makes on a device with MEMORY_POOLS_SUPPORTED): the bytes in use
        // (attribute 7, USED_MEM_CURRENT) and their peak since the last reset (8,
        // USED_MEM_HIGH; only 0 resets it, to the bytes in use then).
        void *pool = nullptr;
        uint64_t used0 = 0, used = 0, peak = 0, zero = 0, one = 1;
        bool ok = cuDeviceGetMemPool(&pool, 0) == 0 && cuMemPoolGetAttribute(pool, 7, &used0) == 0 &&
                  cuMemPoolSetAttribute(pool, 8, &zero) == 0;
        CUdeviceptr a = 0, c = 0;
        ok = ok && cuMemAllocAsync(&a, 1000, nullptr) == 0 && cuMemAlloc_v2(&c, 24) == 0;
        ok = ok && cuMemFreeAsync(a, nullptr) == 0;
        ok = ok && cuMemPoolGetAttribute(pool, 7, &used) == 0 && cuMemPoolGetAttribute(pool, 8, &peak) == 0;
        ok = ok && used == used0 + 24 && peak == used0 + 1024;
        ok = ok && cuMemPoolSetAttribute(pool, 8, &zero) == 0 && cuMemPoolGetAttribute(pool, 8, &peak) == 0 &&
             peak == used0 + 24 && cuMemPoolSetAttribute(pool, 8, &one) == 1;
        cuMemFree_v2(c);
        ok = ok && cuMemPoolGetAttribute(pool, 7, &used) == 0 && used == used0;
        check(ok, "memory pool: bytes in use and their peak (async allocs too), reset");
    }
    {
        // Faults are sticky as on the driver: every later call fails with the same error
        // until the primary context is reset.
        Bufs b(n, 1.0f);
        std::vector<float> host(n);
        const CUresult first = launch("barrier_deadlock", n, b);
        const bool sticky = first == 719 && launch("shift_ok", n, b) == 719 &&
                            cuMemcpyDtoH_v2(host.data(), b.out, n * 4) == 719 && cuCtxSynchronize() == 719;
        check(sticky, "after a fault, launches, copies and syncs return the same error");
        cuDevicePrimaryCtxReset_v2(0);
        check(launch("shift_ok", n, b) == 0, "after a reset of the primary context, launches work");
        check(launch("barrier_deadlock", n, b) == 719 && fault_says({"kernel barrier_deadlock", "deadlock"}) &&
                  std::string(cyb_emu_last_fault()).find("block block") == std::string::npos,
              "a deadlock names the kernel (and no doubled words)");
    }
    {
        // Blocks run in a seeded shuffled order: a kernel reading another block's result
        // sees it missing; the same launch repeats the same order.
        const int blocks = 64;
        Bufs b(blocks, 1.0f);
        void *mod = nullptr, *fn = nullptr;
        const std::string p = ptx("block_order_chain");
        cuModuleLoadData(&mod, p.c_str());
        cuModuleGetFunction(&fn, mod, "block_order_chain");
        void *args[] = {&b.out, &b.in};
        std::vector<float> got1(blocks), got2(blocks);
        bool ok = cuLaunchKernel(fn, blocks, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr) == 0 &&
                  cuMemcpyDtoH_v2(got1.data(), b.out, blocks * 4) == 0 &&
                  cuLaunchKernel(fn, blocks, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr) == 0 &&
                  cuMemcpyDtoH_v2(got2.data(), b.out, blocks * 4) == 0;
        float prefix = 0.0f;
        bool in_order = true;
        for (int i = 0; i < blocks; ++i) in_order &= got1[i] == (prefix += b.host_in[i]);
        check(ok && !in_order, "blocks run shuffled: a chain over blocks is not a prefix sum");
        // Repeatable: the same shape on the same inputs (out included) gives the same
        // result, as both launches run their blocks in the seed's order.
        Bufs c(blocks, 1.0f), d(blocks, 1.0f);
        std::vector<float> got3(blocks), got4(blocks);
        void *args3[] = {&c.out, &c.in}, *args4[] = {&d.out, &d.in};
        ok = cuMemcpyHtoD_v2(c.out, got2.data(), blocks * 4) == 0 && cuMemcpyHtoD_v2(d.out, got2.data(), blocks * 4) == 0 &&
             cuLaunchKernel(fn, blocks, 1, 1, 1, 1, 1, 0, nullptr, args3, nullptr) == 0 &&
             cuLaunchKernel(fn, blocks, 1, 1, 1, 1, 1, 0, nullptr, args4, nullptr) == 0 &&
             cuMemcpyDtoH_v2(got3.data(), c.out, blocks * 4) == 0 && cuMemcpyDtoH_v2(got4.data(), d.out, blocks * 4) == 0;
        bool same = ok;
        for (int i = 0; i < blocks && ok; ++i) same &= got3[i] == got4[i];
        check(ok && same, "the block order repeats for the same seed and launch shape");
    }
    {
        Bufs b(n * 4 + 8, 1.0f);
        check(launch("misaligned_ldg", n, b) == 716 && fault_says({"broken.cu:"}) &&
                  std::string(cyb_emu_last_fault()).find("cuda_bf16.h") == std::string::npos,
              "misaligned __ldg: the message names the kernel's line, not the shim's");
    }
    if (!strcmp(mode, "asan")) {
        // AddressSanitizer's reports inside a kernel are launch errors naming the kernel,
        // the thread and the array or allocation; the process goes on.
        Bufs b(n, 1.0f);
        check(launch("global_oob", n, b) == 700 &&
                  fault_says({"kernel global_oob", "thread (63,0,0)", "write of 4 bytes", "device allocation (256 bytes",
                              "0 bytes past its end"}),
              "ASan: device write past an allocation: ILLEGAL_ADDRESS naming it");
        Bufs c(n, 1.0f);
        check(launch("copy_wrong_index", n, c) == 700 && fault_says({"kernel copy_wrong_index", "read of 4 bytes"}),
              "ASan: device read past an allocation: ILLEGAL_ADDRESS, process goes on");
        Bufs d(n, 1.0f);
        check(launch("tile_read_past", n, d) == 700 &&
                  fault_says({"kernel tile_read_past", "read of 4 bytes", "byte 256 of __shared__ tile_row<16, 4>(float const*, int, bool)::tile (256 bytes), 0 bytes past its end"}),
              "ASan: template tile read one row past, by pointer: names tile");
        Bufs e(n, 1.0f);
        check(launch("tile_write_past", n, e) == 700 &&
                  fault_says({"kernel tile_write_past", "write of 4 bytes", "::tile (256 bytes)", "past its end"}),
              "ASan: template tile written one row past, by pointer: names tile");
        Bufs f(n, 1.0f);
        check(launch("vec_read_past", n, f) == 700 &&
                  fault_says({"kernel vec_read_past", "read of", "vec_past(float const*)::vt (128 bytes), 0 bytes past"}),
              "ASan: float4 read past an inline function's array: names it");
        Bufs g(n, 1.0f);
        std::vector<float> got;
        bool ok = launch("tile_in_bounds", n, g, &got) == 0;
        for (int i = 0; i < n && ok; ++i) ok = got[i] == 1.0f; // the last row, overwritten with 1
        check(ok, "ASan: the same template inside its tile passes");
    }
    if (!strcmp(mode, "race")) {
        Bufs b(n, 1.0f);
        check(launch("shared_race", n, b) == 719 && fault_says({"data race on byte 0 of __shared__ shared_race::sh (4 bytes)"}),
              "race checker: unsynchronised += on shared memory, naming the array");
        Bufs c(n, 1.0f);
        check(launch("shift_no_barrier", n, c) == 719, "race checker: missing barrier between write and read");
        Bufs d(n, 1.0f);
        check(launch("shift_ok", n, d) == 0, "race checker: the correct kernel is race-free");
        check(launch("warp_sum", n, d) == 0, "race checker: shuffles are not races");
    }
    printf("selftest (%s): %s\n", mode, failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}

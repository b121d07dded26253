// The emulator's own tests: kernels broken on purpose (broken.cu) must fail, each with
// the error a GPU would give, and never hang; the launch limits of sm_90 must hold.
// Built and run by run.sh (plain, asan or race mode) against the same runtime.cpp and
// driver.cpp as target/emu/libcuda.so.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
CUresult cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                        void **);
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

int main(int argc, char **argv) {
    cuInit(0);
    const int n = 64;
    // Child mode: one launch whose fault only a sanitizer sees (the parent reads stderr).
    if (argc == 2) {
        Bufs b(n, 1.0f);
        std::vector<float> got;
        CUresult r = launch(argv[1], n, b, &got);
        printf("child: %s returned %d\n", argv[1], r);
        return r == 0 ? 0 : 3;
    }
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
        check(launch("shuffle_deadlock", n, b) == 719, "shuffle that lane 0 never reaches: error, no hang");
        check(launch("shift_ok", n, b) == 0, "the next launch after a failed one works");
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
    if (!strcmp(mode, "asan")) {
        // AddressSanitizer aborts the process: run the faulty launches in a child.
        for (const char *k : {"global_oob", "copy_wrong_index"}) {
            std::string cmd = std::string(argv[0]) + " " + k + " 2>&1";
            FILE *f = popen(cmd.c_str(), "r");
            std::string out;
            char buf[512];
            while (fgets(buf, sizeof buf, f)) out += buf;
            const int rc = pclose(f);
            const bool ok = rc != 0 && out.find("AddressSanitizer") != std::string::npos &&
                            out.find(std::string("kernel ") + k) != std::string::npos;
            check(ok, (std::string("ASan: out-of-bounds device access in ") + k + " names it").c_str());
        }
    }
    if (!strcmp(mode, "race")) {
        Bufs b(n, 1.0f);
        check(launch("shared_race", n, b) == 719, "race checker: unsynchronised += on shared memory");
        check(launch("shift_no_barrier", n, b) == 719, "race checker: missing barrier between write and read");
        check(launch("shift_ok", n, b) == 0, "race checker: the correct kernel is race-free");
        check(launch("warp_sum", n, b) == 0, "race checker: shuffles are not races");
    }
    printf("selftest (%s): %s\n", mode, failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}

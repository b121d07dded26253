// Block scheduler of the emulated CUDA driver: runs a grid's blocks one after the other
// on the calling OS thread, each block's threads as cooperative fibers (a hand-written
// x86-64 context switch, 256 KB stacks with a guard page). Fibers switch at
// __syncthreads and warp collectives only. Turns the faults a GPU would report into
// launch errors naming the kernel, block and thread:
//   - a __syncthreads that part of the block never reaches (exited threads, threads
//     waiting at a warp collective or at a different __syncthreads): an error, never a hang;
//   - a warp collective that some lanes of the warp never reach, or lanes at different ones;
//   - a misaligned access (UBSan -fsanitize=alignment with the handlers below: a 16-byte
//     vector access needs 16-byte alignment, as on the GPU) and an array index out of
//     the declared bounds (-fsanitize=bounds, e.g. a static `__shared__` array);
//   - a segmentation fault inside a kernel (plain build); with the AddressSanitizer build
//     (scripts/build_emu.sh asan) every out-of-bounds access to device memory
//     (cuMemAlloc is malloc) or to static `__shared__` arrays is reported by ASan.
#include "emu_runtime.h"

#include <atomic>
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <dlfcn.h>
#include <mutex>
#include <numeric>
#include <unistd.h>
#include <ctime>
#include <pthread.h>
#include <string>
#include <sys/mman.h>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CYB_EMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old, size_t *size_old);
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void __asan_set_death_callback(void (*callback)(void));
}
#endif

// Names the static __shared__ array around `addr` (defined below, from build_emu.sh's table).
std::string cyb_emu_shared_name(uintptr_t addr, long *offset, size_t slack);

extern "C" {
EmuThread *emu_cur = nullptr;
dim3u emu_blockIdx, emu_blockDim, emu_gridDim;
void cyb_emu_switch(void **save_sp, void *new_sp);
}

// Saves the callee-saved registers on the current stack, stores its stack pointer in
// *save_sp, switches to new_sp and restores the registers saved there.
asm(R"(
    .text
    .globl cyb_emu_switch
    .hidden cyb_emu_switch
    .type cyb_emu_switch,@function
cyb_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cyb_emu_switch, .-cyb_emu_switch
)");

namespace {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;

std::mutex g_launch_mutex; // one kernel at a time: __shared__ is one copy per kernel file
std::vector<EmuThread> g_threads;
std::vector<char *> g_stacks;
std::vector<int> g_warp_arrived;
void *g_sched_sp = nullptr;
const void *g_sched_bottom = nullptr;
size_t g_sched_size = 0;
int g_nthreads = 0;
const char *g_kernel = "?";
void (*g_invoke)(void **) = nullptr;
void **g_params = nullptr;
bool g_failed = false;
int g_fail_code = 0;
std::string g_fail_msg;
std::string g_last_fault;
volatile sig_atomic_t g_in_kernel = 0; // set while this thread runs kernel code
pthread_t g_kernel_thread;
sigjmp_buf g_sig_env;
struct sigaction g_old_segv, g_old_bus, g_old_fpe, g_old_ill;

std::string where() {
    char buf[160];
    if (emu_cur)
        snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", emu_blockIdx.x, emu_blockIdx.y,
                 emu_blockIdx.z, emu_cur->tid.x, emu_cur->tid.y, emu_cur->tid.z);
    else
        snprintf(buf, sizeof buf, "block (%u,%u,%u)", emu_blockIdx.x, emu_blockIdx.y, emu_blockIdx.z);
    return buf;
}

void to_fiber(EmuThread *t) {
    emu_cur = t;
#ifdef CYB_EMU_ASAN
    void *fs = nullptr;
    __sanitizer_start_switch_fiber(&fs, g_stacks[t->lin] + kGuard, kStack - kGuard);
#endif
    cyb_emu_switch(&g_sched_sp, t->sp);
#ifdef CYB_EMU_ASAN
    __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
#endif
    emu_cur = nullptr;
}

void to_scheduler(bool done) {
    EmuThread *t = emu_cur;
#ifdef CYB_EMU_ASAN
    void *fs = nullptr;
    __sanitizer_start_switch_fiber(done ? nullptr : &fs, g_sched_bottom, g_sched_size);
#else
    (void)done;
#endif
    cyb_emu_switch(&t->sp, g_sched_sp);
#ifdef CYB_EMU_ASAN
    __sanitizer_finish_switch_fiber(fs, &g_sched_bottom, &g_sched_size);
#endif
}

[[noreturn]] void fiber_entry() {
#ifdef CYB_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
    g_invoke(g_params);
    emu_cur->state = EMU_DONE;
    to_scheduler(true);
    __builtin_trap(); // a finished fiber is never resumed
}

void init_fiber(EmuThread &t) {
    auto *sp = reinterpret_cast<uint64_t *>(g_stacks[t.lin] + kStack); // 16-byte aligned top
    *--sp = 0;                                                          // entry's "return address"
    *--sp = reinterpret_cast<uint64_t>(&fiber_entry);                   // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;                              // rbp rbx r12..r15
    t.sp = sp;
    t.state = EMU_RUN;
}

// All fiber stacks in one reservation (so the race checker can tell a stack address
// with one comparison), each with a guard page at its bottom.
constexpr int kMaxFibers = 1024;
char *g_stack_base = nullptr;

void ensure_stacks(int n) {
    if (!g_stack_base) {
        void *p = mmap(nullptr, kStack * kMaxFibers, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "cyb emulator: cannot map the fiber stacks\n");
            abort();
        }
        g_stack_base = static_cast<char *>(p);
    }
    while ((int)g_stacks.size() < n) {
        char *st = g_stack_base + kStack * g_stacks.size();
        mprotect(st, kGuard, PROT_NONE); // stack overflow faults
        g_stacks.push_back(st);
    }
}

void fail_block(int code, const std::string &msg) {
    if (!g_failed) {
        g_failed = true;
        g_fail_code = code;
        g_fail_msg = msg;
    }
}

const char *state_name(const EmuThread &t) {
    switch (t.state) {
    case EMU_BAR: return "__syncthreads";
    case EMU_WARP: return "a warp collective";
    case EMU_DONE: return "exit";
    default: return "running";
    }
}

// Describes who waits where, for deadlock messages.
std::string describe_waits() {
    std::string s;
    int shown = 0;
    for (int i = 0; i < g_nthreads && shown < 6; ++i) {
        const EmuThread &t = g_threads[i];
        if (i > 0 && t.state == g_threads[i - 1].state &&
            (t.state == EMU_DONE || (t.site && g_threads[i - 1].site && !strcmp(t.site, g_threads[i - 1].site))))
            continue;
        char buf[200];
        snprintf(buf, sizeof buf, "%sthread %d from %s%s%s", shown ? "; " : "", i, state_name(t),
                 t.state == EMU_DONE ? "" : " at ", t.state == EMU_DONE ? "" : (t.site ? t.site : "?"));
        s += buf;
        ++shown;
    }
    return s;
}

} // namespace

#ifdef CYB_EMU_RACE
// ---- race checker (build_emu.sh race): the kernels are compiled with -fsanitize=thread
// and these __tsan_* functions are its whole runtime. Every byte a kernel accesses (but
// its own stack and the scheduler's lane slots) remembers, since the last __syncthreads,
// its last writer and up to two readers, each with its warp's collective count; an
// access by another thread that no barrier (or, within a warp, no warp collective)
// separates from a conflicting one is a race: the launch fails naming both threads. ----
#include <unordered_map>
namespace {
struct Access {
    int writer = -1, reader = -1, reader2 = -1;
    uint32_t wepoch = 0, repoch = 0, repoch2 = 0;
};
std::unordered_map<uintptr_t, Access> g_shadow;
std::vector<uint32_t> g_wepoch;
bool g_race_on = false;

bool ordered(int a, uint32_t a_epoch, int b) {
    if (a == b) return true;
    if (g_threads[a].warp != g_threads[b].warp) return false;
    return g_wepoch[g_threads[a].warp] != a_epoch;
}

std::string describe_addr(uintptr_t addr) {
    long off = 0;
    const std::string name = cyb_emu_shared_name(addr, &off, 0);
    char buf[64];
    if (!name.empty()) {
        snprintf(buf, sizeof buf, "byte %ld of ", off);
        return buf + name;
    }
    snprintf(buf, sizeof buf, "device memory 0x%lx", (unsigned long)addr);
    return buf;
}

void race(uintptr_t addr, int other, const char *other_did, const char *did) {
    const EmuThread &o = g_threads[other];
    emu_fail(719, "data race on %s: thread (%u,%u,%u) %s it and this thread %s it with no barrier between",
             describe_addr(addr).c_str(), o.tid.x, o.tid.y, o.tid.z, other_did, did);
}

inline bool tracked(uintptr_t a) {
    if (!g_race_on || !emu_cur) return false;
    if (a - (uintptr_t)g_stack_base < kStack * kMaxFibers) return false; // a fiber's own stack
    if (!g_threads.empty() && a - (uintptr_t)g_threads.data() < g_threads.size() * sizeof(EmuThread)) return false;
    return true;
}

void access(void *p, size_t n, bool write) {
    const uintptr_t a0 = (uintptr_t)p;
    if (!tracked(a0)) return;
    const int me = emu_cur->lin;
    const uint32_t ep = g_wepoch[emu_cur->warp];
    for (uintptr_t a = a0; a < a0 + n; ++a) {
        Access &x = g_shadow[a];
        if (x.writer >= 0 && !ordered(x.writer, x.wepoch, me)) race(a, x.writer, "wrote", write ? "writes" : "reads");
        if (write) {
            if (x.reader >= 0 && !ordered(x.reader, x.repoch, me)) race(a, x.reader, "read", "writes");
            if (x.reader2 >= 0 && !ordered(x.reader2, x.repoch2, me)) race(a, x.reader2, "read", "writes");
            x.writer = me;
            x.wepoch = ep;
            x.reader = x.reader2 = -1;
        } else if (x.reader != me) {
            x.reader2 = x.reader;
            x.repoch2 = x.repoch;
            x.reader = me;
            x.repoch = ep;
        } else {
            x.repoch = ep;
        }
    }
}

void race_epoch() { g_shadow.clear(); }
} // namespace

extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void *) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}
#define CYB_TSAN(n)                                                                   \
    void __tsan_read##n(void *p) { access(p, n, false); }                             \
    void __tsan_write##n(void *p) { access(p, n, true); }                             \
    void __tsan_unaligned_read##n(void *p) { access(p, n, false); }                   \
    void __tsan_unaligned_write##n(void *p) { access(p, n, true); }                   \
    void __tsan_volatile_read##n(void *p) { access(p, n, false); }                    \
    void __tsan_volatile_write##n(void *p) { access(p, n, true); }
CYB_TSAN(1)
CYB_TSAN(2)
CYB_TSAN(4)
CYB_TSAN(8)
CYB_TSAN(16)
void __tsan_read_range(void *p, unsigned long n) { access(p, n, false); }
void __tsan_write_range(void *p, unsigned long n) { access(p, n, true); }
}
#define RACE_EPOCH() race_epoch()
#define RACE_WARP(w) (g_wepoch[w]++)
#else
#define RACE_EPOCH() ((void)0)
#define RACE_WARP(w) ((void)0)
#endif

namespace {

// Runs the current block to the end; false on an error (g_fail_*).
bool run_block() {
    // Threads run in index order in even blocks and in reverse order in odd ones, so a
    // missing barrier shows up as a wrong result whichever neighbour a thread reads.
    const bool rev = (emu_blockIdx.x + emu_blockIdx.y + emu_blockIdx.z) & 1;
    for (;;) {
        bool any = false;
        for (int k = 0; k < g_nthreads; ++k) {
            const int i = rev ? g_nthreads - 1 - k : k;
            if (g_threads[i].state != EMU_RUN) continue;
            any = true;
            to_fiber(&g_threads[i]);
            if (g_failed) return false;
        }
        if (any) continue;
        int bar = 0, done = 0, warp = 0;
        for (int i = 0; i < g_nthreads; ++i) {
            bar += g_threads[i].state == EMU_BAR;
            done += g_threads[i].state == EMU_DONE;
            warp += g_threads[i].state == EMU_WARP;
        }
        if (done == g_nthreads) return true;
        if (warp == 0 && done == 0) {
            const char *site = nullptr;
            for (int i = 0; i < g_nthreads; ++i) {
                if (!site) site = g_threads[i].site;
                else if (strcmp(site, g_threads[i].site) != 0) {
                    fail_block(719, where() + ": threads wait at different __syncthreads (" + site +
                                        " and " + g_threads[i].site + "): divergent barrier");
                    return false;
                }
            }
            for (int i = 0; i < g_nthreads; ++i) g_threads[i].state = EMU_RUN;
            RACE_EPOCH();
            continue;
        }
        char buf[160];
        snprintf(buf, sizeof buf, "deadlock: %d threads at __syncthreads, %d at warp collectives, %d exited; ",
                 bar, warp, done);
        fail_block(719, std::string(buf) + describe_waits());
        return false;
    }
}

void on_signal(int sig, siginfo_t *info, void *uctx) {
    if (g_in_kernel && pthread_equal(pthread_self(), g_kernel_thread)) {
        g_in_kernel = 0;
        siglongjmp(g_sig_env, sig);
    }
    struct sigaction *old = sig == SIGSEGV ? &g_old_segv : sig == SIGBUS ? &g_old_bus : sig == SIGFPE ? &g_old_fpe : &g_old_ill;
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) old->sa_sigaction(sig, info, uctx);
        return;
    }
    if (old->sa_handler == SIG_IGN) return;
    if (old->sa_handler == SIG_DFL || old->sa_handler == nullptr) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    old->sa_handler(sig);
}

void install_signals() {
    static bool done = false;
    thread_local bool alt = false;
    if (!alt) {
        // A stack overflow in a fiber needs an alternate signal stack. Keep one that is
        // already there (AddressSanitizer installs its own, and unmaps it at thread
        // exit); otherwise map one (mapped, so that whoever unmaps it may).
        stack_t cur{};
        sigaltstack(nullptr, &cur);
        if (cur.ss_flags & SS_DISABLE) {
            stack_t ss{};
            ss.ss_size = 1 << 16;
            ss.ss_sp = mmap(nullptr, ss.ss_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (ss.ss_sp != MAP_FAILED) sigaltstack(&ss, nullptr);
        }
        alt = true;
    }
    if (done) return;
    done = true;
    struct sigaction sa{};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGFPE, &sa, &g_old_fpe);
    sigaction(SIGILL, &sa, &g_old_ill);
}

#ifdef CYB_EMU_ASAN
void asan_death() {
    if (!g_in_kernel || !pthread_equal(pthread_self(), g_kernel_thread)) return;
    fprintf(stderr, "cyb emulator: the AddressSanitizer report above happened in kernel %s, %s\n", g_kernel,
            where().c_str());
}
#endif

} // namespace


extern "C" void emu_syncthreads(const char *site) {
    emu_cur->state = EMU_BAR;
    emu_cur->site = site;
    to_scheduler(false);
}

extern "C" void emu_warp_collective(int op, unsigned mask, EmuCombine combine, const char *site) {
    EmuThread *t = emu_cur;
    const int w = t->warp;
    const int n = g_nthreads - 32 * w < 32 ? g_nthreads - 32 * w : 32;
    const unsigned full = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
    if ((mask & full) != full)
        emu_fail(719, "warp collective at %s with mask 0x%08x: partial-warp masks are not emulated", site, mask);
    t->op = op;
    t->site = site;
    t->state = EMU_WARP;
    if (++g_warp_arrived[w] == n) {
        EmuThread *lanes[32];
        for (int i = 0; i < n; ++i) {
            lanes[i] = &g_threads[32 * w + i];
            if (lanes[i]->op != op || strcmp(lanes[i]->site, site) != 0)
                emu_fail(719, "lanes of warp %d wait at different warp collectives (%s and %s)", w, lanes[i]->site,
                         site);
        }
        combine(lanes, n);
        RACE_WARP(w);
        g_warp_arrived[w] = 0;
        for (int i = 0; i < n; ++i) lanes[i]->state = EMU_RUN;
        return;
    }
    to_scheduler(false);
}

extern "C" [[noreturn]] void emu_fail(int code, const char *fmt, ...) {
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!emu_cur) {
        fprintf(stderr, "cyb emulator: %s (outside a kernel)\n", buf);
        abort();
    }
    fail_block(code, where() + ": " + buf);
    emu_cur->state = EMU_DONE;
    to_scheduler(true);
    __builtin_trap();
}

// ---- UBSan handlers (the kernels are compiled with -fsanitize=alignment,bounds, and
// the library is linked without the UBSan runtime: these handlers are the runtime) ----
namespace {
struct SourceLocation {
    const char *file;
    uint32_t line, column;
};
struct TypeDescriptor {
    uint16_t kind, info;
    char name[1];
};
struct TypeMismatchData {
    SourceLocation loc;
    TypeDescriptor *type;
    unsigned char log_alignment;
    unsigned char type_check_kind;
};
struct OutOfBoundsData {
    SourceLocation loc;
    TypeDescriptor *array_type;
    TypeDescriptor *index_type;
};
const char *short_file(const char *f) {
    const char *k = strstr(f, "kernels/");
    return k ? k : f;
}
[[noreturn]] void type_mismatch(TypeMismatchData *d, uintptr_t p) {
    const uintptr_t align = (uintptr_t)1 << d->log_alignment;
    if (p == 0) emu_fail(700, "null pointer access to %s at %s:%u", d->type->name, short_file(d->loc.file), d->loc.line);
    emu_fail(716, "misaligned address 0x%lx: a %s access needs %lu-byte alignment, at %s:%u", (unsigned long)p,
             d->type->name, (unsigned long)align, short_file(d->loc.file), d->loc.line);
}
[[noreturn]] void out_of_bounds(OutOfBoundsData *d, uintptr_t idx) {
    emu_fail(700, "index %ld out of the bounds of %s, at %s:%u", (long)idx, d->array_type->name,
             short_file(d->loc.file), d->loc.line);
}
} // namespace

extern "C" {
void __ubsan_handle_type_mismatch_v1(TypeMismatchData *d, uintptr_t p) { type_mismatch(d, p); }
void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData *d, uintptr_t p) { type_mismatch(d, p); }
void __ubsan_handle_out_of_bounds(OutOfBoundsData *d, uintptr_t i) { out_of_bounds(d, i); }
void __ubsan_handle_out_of_bounds_abort(OutOfBoundsData *d, uintptr_t i) { out_of_bounds(d, i); }
}

#ifdef CYB_EMU_ASAN
// ---- AddressSanitizer reports (asan build): the kernels' instrumented accesses call
// __asan_report_{load,store}N when the shadow says an address is bad. These hidden
// definitions take those calls within libcuda.so (the kernels, runtime.cpp and
// driver.cpp), before the preloaded libasan's: inside a kernel the launch fails like a
// GPU's (CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel, block, thread and the array or
// allocation), and the process goes on, so one bad kernel fails one test, not the whole
// test binary; outside a kernel, ASan's own report (and abort) as usual. ----
extern "C" {
void __asan_report_error(void *pc, void *bp, void *sp, void *addr, int is_write, size_t size);
const char *__asan_locate_address(void *addr, char *name, size_t name_size, void **region_address,
                                  size_t *region_size);
}
bool cyb_emu_device_alloc(uintptr_t addr, uintptr_t *base, size_t *size); // driver.cpp
namespace {
// Where `addr` lies: the static __shared__ array whose redzone it hits, a live device
// allocation, or what ASan knows of it.
std::string describe_bad(uintptr_t addr) {
    char buf[160];
    long off = 0;
    std::string name = cyb_emu_shared_name(addr, &off, 1 << 20);
    uintptr_t base = 0;
    size_t size = 0;
    if (name.empty() && cyb_emu_device_alloc(addr, &base, &size)) {
        off = (long)(addr - base);
        snprintf(buf, sizeof buf, "a device allocation (%zu bytes at 0x%lx)", size, (unsigned long)base);
        name = buf;
    } else if (!name.empty()) {
        size_t p = name.rfind('(');
        size = strtoull(name.c_str() + p + 1, nullptr, 10);
    } else {
        char vname[256] = "";
        void *region = nullptr;
        const char *kind = __asan_locate_address((void *)addr, vname, sizeof vname, &region, &size);
        snprintf(buf, sizeof buf, "%s memory%s%s (not a live device allocation: freed, or never allocated)",
                 kind ? kind : "unknown", vname[0] ? " of " : "", vname);
        return buf;
    }
    if (off < 0) snprintf(buf, sizeof buf, ", %ld bytes before its start", -off);
    else if ((size_t)off >= size) snprintf(buf, sizeof buf, ", %zu bytes past its end", (size_t)off - size);
    else snprintf(buf, sizeof buf, " (inside it: a partly bad access)");
    return "byte " + std::to_string(off) + " of " + name + buf;
}

[[noreturn]] __attribute__((noinline)) void asan_bad(void *addr, size_t size, bool write) {
    if (!g_in_kernel || !emu_cur || !pthread_equal(pthread_self(), g_kernel_thread)) {
        int here = 0;
        __asan_report_error(__builtin_return_address(0), __builtin_frame_address(0), &here, addr, write, size);
        abort();
    }
    emu_fail(700, "out-of-bounds %s of %zu bytes at 0x%lx: %s", write ? "write" : "read", size, (unsigned long)addr,
             describe_bad((uintptr_t)addr).c_str());
}
} // namespace

#define CYB_ASAN_REPORT(n)                                                                         \
    __attribute__((visibility("hidden"))) void __asan_report_load##n(void *p) { asan_bad(p, n, false); } \
    __attribute__((visibility("hidden"))) void __asan_report_store##n(void *p) { asan_bad(p, n, true); }
extern "C" {
CYB_ASAN_REPORT(1)
CYB_ASAN_REPORT(2)
CYB_ASAN_REPORT(4)
CYB_ASAN_REPORT(8)
CYB_ASAN_REPORT(16)
__attribute__((visibility("hidden"))) void __asan_report_load_n(void *p, size_t n) { asan_bad(p, n, false); }
__attribute__((visibility("hidden"))) void __asan_report_store_n(void *p, size_t n) { asan_bad(p, n, true); }
}
#endif

// The kernels' static __shared__ variables, from the table build_emu.sh writes next to
// the library (address relative to `emu_cur`, size, demangled name without the unnamed
// namespace the registry files wrap the kernels in).
namespace {
struct SharedVar {
    char *addr;
    size_t size;
    std::string name;
};
const std::vector<SharedVar> &shared_table() {
    static std::vector<SharedVar> table;
    static std::once_flag once;
    std::call_once(once, [] {
        Dl_info info{};
        if (!dladdr((void *)&emu_cur, &info) || !info.dli_fname) return;
        char real[4096];
        const char *lib = realpath(info.dli_fname, real) ? real : info.dli_fname; // not the symlink
        std::string path = std::string(lib) + ".shared";
        FILE *f = fopen(path.c_str(), "r");
        if (!f) return;
        char line[4096];
        while (fgets(line, sizeof line, f)) {
            unsigned long long addr, ref, sz;
            int used = 0;
            if (sscanf(line, "%llx\t%llx\t%llx\t%n", &addr, &ref, &sz, &used) != 3 || used == 0) continue;
            std::string name(line + used);
            while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
            table.push_back({(char *)&emu_cur + (long long)(addr - ref), (size_t)sz, name});
        }
        fclose(f);
    });
    return table;
}

std::string demangle(const char *name) {
    int st = 0;
    char *dm = abi::__cxa_demangle(name, nullptr, nullptr, &st);
    std::string out = st == 0 && dm ? dm : name;
    free(dm);
    return out;
}
} // namespace

// Every copy (address, size) of the kernels' static __shared__ variable `name` (mangled,
// as in the PTX): one per kernel file that defines it (an inline function of a shared
// header, e.g. block_lse in common.cuh, has one copy in each file's unnamed namespace).
std::vector<std::pair<void *, size_t>> cyb_emu_shared_lookup(const char *name) {
    const std::string want = demangle(name);
    std::vector<std::pair<void *, size_t>> out;
    for (const SharedVar &v : shared_table())
        if (v.name == want) out.push_back({v.addr, v.size});
    return out;
}

// Names the static __shared__ array at or just around `addr` (within `slack` bytes of
// its ends, where AddressSanitizer's redzones lie): "__shared__ NAME (N bytes)" and the
// offset of `addr` from its start; "" when there is none.
std::string cyb_emu_shared_name(uintptr_t addr, long *offset, size_t slack) {
    const SharedVar *best = nullptr;
    long best_dist = 0;
    for (const SharedVar &v : shared_table()) {
        const uintptr_t lo = (uintptr_t)v.addr, hi = lo + v.size;
        const long dist = addr < lo ? (long)(lo - addr) : addr >= hi ? (long)(addr - hi + 1) : 0;
        if ((size_t)dist > slack) continue;
        if (!best || dist < best_dist) {
            best = &v;
            best_dist = dist;
        }
    }
    if (!best) return "";
    *offset = (long)(addr - (uintptr_t)best->addr);
    char buf[64];
    snprintf(buf, sizeof buf, " (%zu bytes)", best->size);
    return "__shared__ " + best->name + buf;
}

namespace {
uint64_t splitmix(uint64_t &x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The base seed of the block order: CYB_EMU_BLOCK_SEED, or one drawn at start-up (the
// test runner sets and prints it; a failing launch prints it too).
uint64_t block_seed() {
    static const uint64_t seed = [] {
        if (const char *e = getenv("CYB_EMU_BLOCK_SEED")) return (uint64_t)strtoull(e, nullptr, 0);
        uint64_t x = (uint64_t)time(nullptr) ^ ((uint64_t)getpid() << 32);
        return splitmix(x);
    }();
    return seed;
}

// A launch's seed depends on the base seed, the kernel and its shape only, so a test
// repeats its block orders whatever other tests run in parallel.
uint64_t launch_seed(const char *kernel, dim3u grid, dim3u block) {
    uint64_t h = block_seed();
    for (const char *c = kernel; *c; ++c) h = (h ^ (unsigned char)*c) * 0x100000001B3ull;
    for (unsigned v : {grid.x, grid.y, grid.z, block.x, block.y, block.z}) h = (h ^ v) * 0x100000001B3ull;
    return splitmix(h);
}

// The order the blocks of a grid run in: a seeded shuffle (Fisher-Yates), so that a
// kernel that depends on block order, or on another block's writes, fails here as it may
// on a GPU (whose scheduling order is unspecified). Grids above 2^24 blocks take an
// affine permutation instead of a table.
struct BlockOrder {
    std::vector<uint32_t> perm;
    uint64_t n, a = 1, c = 0;
    BlockOrder(uint64_t n_, uint64_t seed) : n(n_) {
        uint64_t x = seed;
        if (n <= (1u << 24)) {
            perm.resize(n);
            for (uint64_t i = 0; i < n; ++i) perm[i] = (uint32_t)i;
            for (uint64_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[splitmix(x) % i]);
        } else {
            do a = splitmix(x) % n | 1; while (std::gcd(a, n) != 1);
            c = splitmix(x) % n;
        }
    }
    uint64_t at(uint64_t i) const { return perm.empty() ? (unsigned __int128)(a * (unsigned __int128)i + c) % n : perm[i]; }
};
} // namespace

// Runs a whole grid. Returns 0 or a CUDA error code, with the message on stderr.
// `shared` lists the kernel's static __shared__ variables, filled with 0xff bytes
// before every block (a GPU's shared memory starts undefined).
int cyb_emu_run_grid(const char *kernel, void (*invoke)(void **), void **params, dim3u grid, dim3u block,
                     const std::vector<std::pair<void *, size_t>> &shared) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    install_signals();
#ifdef CYB_EMU_ASAN
    static bool cb = false;
    if (!cb) {
        __asan_set_death_callback(asan_death);
        cb = true;
    }
#endif
    g_kernel = kernel;
    g_kernel_thread = pthread_self();
    g_invoke = invoke;
    g_params = params;
    g_failed = false;
    g_nthreads = (int)(block.x * block.y * block.z);
    emu_gridDim = grid;
    emu_blockDim = block;
    ensure_stacks(g_nthreads);
    g_threads.assign(g_nthreads, EmuThread{});
    g_warp_arrived.assign((g_nthreads + 31) / 32, 0);
#ifdef CYB_EMU_RACE
    g_wepoch.assign((g_nthreads + 31) / 32, 0);
    g_race_on = getenv("CYB_EMU_RACE_OFF") == nullptr;
#endif
    for (int i = 0; i < g_nthreads; ++i) {
        EmuThread &t = g_threads[i];
        t.lin = i;
        t.tid = {(unsigned)i % block.x, (unsigned)(i / block.x) % block.y, (unsigned)(i / (block.x * block.y))};
        t.warp = i / 32;
        t.lane = i % 32;
    }
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    const BlockOrder order(nblocks, launch_seed(kernel, grid, block)); // before sigsetjmp: no destructor skipped
    int sig = sigsetjmp(g_sig_env, 1);
    if (sig != 0) {
        const char *what = sig == SIGSEGV ? "segmentation fault (illegal address)"
                           : sig == SIGBUS ? "bus error"
                           : sig == SIGFPE ? "arithmetic exception"
                                           : "illegal instruction";
        fail_block(700, where() + ": " + what);
    } else {
        for (uint64_t n = 0; n < nblocks && !g_failed; ++n) {
            const uint64_t b = order.at(n);
            emu_blockIdx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                            (unsigned)(b / ((uint64_t)grid.x * grid.y))};
            for (const auto &[p, size] : shared) memset(p, 0xff, size);
            for (int i = 0; i < g_nthreads; ++i) {
                init_fiber(g_threads[i]);
                g_threads[i].site = nullptr;
            }
            RACE_EPOCH();
            g_in_kernel = 1;
            run_block();
            g_in_kernel = 0;
        }
    }
    g_in_kernel = 0;
    emu_cur = nullptr;
    if (!g_failed) return 0;
#ifdef CYB_EMU_ASAN
    for (int i = 0; i < g_nthreads; ++i) __asan_unpoison_memory_region(g_stacks[i] + kGuard, kStack - kGuard);
#endif
    char seed[96];
    snprintf(seed, sizeof seed, " (blocks in shuffled order: CYB_EMU_BLOCK_SEED=%llu repeats it)",
             (unsigned long long)block_seed());
    g_last_fault = std::string("kernel ") + kernel + " failed: " + g_fail_msg + seed;
    fprintf(stderr, "cyb emulator: %s\n", g_last_fault.c_str());
    return g_fail_code;
}

// The message of the last failed launch (for the emulator's self-tests).
extern "C" const char *cyb_emu_last_fault() { return g_last_fault.c_str(); }

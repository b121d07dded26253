// A stand-in for NCCL (libnccl.so.2) over the emulated CUDA driver (driver.cpp), so that
// data-parallel code runs on an emulated multi-GPU machine (CYB_EMU_DEVICES=N). Built by
// scripts/build_emu.sh next to the emulated libcuda.so.1, which it is linked against.
//
// What it is:
// - Ranks are host threads of one process (one thread may drive several ranks inside
//   ncclGroupStart/End), or separate processes that got the unique id through a file:
//   those meet in a shared file (see "ranks in several processes" below).
// - A collective is one rendezvous of every rank of a communicator: each rank's n-th
//   collective meets the other ranks' n-th. In one process the last rank to arrive
//   computes every rank's result, in a FIXED order (below), and the others wait for it;
//   across processes each rank computes its own in the same order.
// - Stream order. A collective outside a group, on a stream of its own, between ranks
//   of one process, is QUEUED on its stream (driver.cpp's cyb_emu_stream_defer) and the
//   call returns at once, as NCCL's does: it takes place when the stream's work is
//   needed (a synchronisation, an event recorded behind it that something waits for,
//   later work on that stream; see driver.cpp). It reads its input as early as stream
//   order allows: at the call, when nothing queued before it on its stream waits for
//   another stream or writes that input (a snapshot, so a later write by another
//   stream that did not wait is not seen), else when it runs; and it writes its output
//   as late as possible, when it runs. So both orderings a program must state are
//   checked: a kernel that writes the input after the call without the collective's
//   stream having waited for it is lost, and a kernel that reads the output without
//   waiting for the collective's event reads the old values. A queued collective that
//   fails makes the call that ran it return CUDA_ERROR_LAUNCH_FAILED (the NCCL error is
//   printed and kept for ncclGetLastError / ncclCommGetAsyncError).
//   CYB_EMU_NCCL_SYNC=1 runs every collective at the call instead (after the work
//   queued on its stream), as do groups, the null stream and ranks in several
//   processes: the call returns when the collective is complete.
//   Inside a group (ncclGroupStart/End) the calls are queued and take place at the
//   outermost ncclGroupEnd, as in NCCL (this is what lets one thread drive every rank).
// - Reduction order, for every element: ((x_0 op x_1) op x_2) ... op x_{n-1} over ranks
//   0..n-1, each partial result rounded to the datatype (f16/bf16: computed in f32,
//   rounded to nearest even after every step). ncclAvg on floating types multiplies each
//   x_r by 1/n (rounded to the type) before that sum, as NCCL's PreMulSum does; on
//   integers it sums, then divides (truncating). Every rank gets the same bits. NCCL's own
//   order depends on its algorithm (ring, tree) and chunking: a test that compares with a
//   serial sum in another order should allow (n - 1) * eps * sum_r |x_r| per element.
// - Checks: arguments (ncclInvalidArgument: null or unknown communicator, datatype,
//   operation or root; a null buffer; a buffer not inside one allocation of the
//   communicator's device; a stream of another device; a count whose bytes overflow),
//   usage (ncclInvalidUsage: ranks that disagree on the collective, count, datatype,
//   operation or root; two ranks on one device; ncclGroupEnd without ncclGroupStart), a
//   device whose context faulted (ncclUnhandledCudaError).
// - A rank that never arrives: the others get ncclSystemError once its device has shown
//   no sign of life (no driver call, no launch) for CYB_EMU_NCCL_TIMEOUT_MS (default
//   10000) ms; never a hang. ncclCommInitRank waits CYB_EMU_NCCL_INIT_TIMEOUT_MS
//   (default 3x that) for every rank. A rank whose process exited fails the others at once. After any failure the communicator is broken: every rank's
//   current and later collectives return ncclRemoteError (ncclCommGetAsyncError says so).
//   A rank that destroys or aborts its communicator while others wait breaks it too.
// - Error injection: CYB_EMU_NCCL_FAIL_RANK=r makes rank r's collective number
//   CYB_EMU_NCCL_FAIL_AT (default 0, counted from 0 per communicator) return
//   ncclSystemError, once per communicator; the other ranks then get ncclRemoteError.
// - Errors are printed on stderr ("cyb emulator (nccl): ...", unless CYB_EMU_QUIET) and
//   kept for ncclGetLastError.
// Not emulated: interconnect timing, concurrency of communication with computation
// (the queued collectives run on the host thread that needs them),
// ncclSend/Recv, ncclCommSplit, custom reduction operations (each returns
// ncclInvalidUsage saying so), fp8 datatypes (ncclInvalidArgument); across processes, one
// thread driving two ranks of one communicator in a group (ncclInvalidUsage).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <functional>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

typedef int ncclResult_t;
enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
};
enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 };
enum {
    ncclInt8 = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclFloat32 = 7,
    ncclFloat64 = 8,
    ncclBfloat16 = 9,
    ncclNumTypes = 12, // 10, 11: fp8, not emulated
};
struct ncclUniqueId {
    char internal[128];
};

// The emulated driver (driver.cpp).
extern "C" {
int cyb_emu_device_count();
int cyb_emu_current_device();
int cyb_emu_stream_device(void *stream);
int cyb_emu_ptr_device(uintptr_t p, size_t n);
int cyb_emu_device_fault(int device);
uint64_t cyb_emu_device_activity(int device);
int cyb_emu_device_busy(int device);
int cyb_emu_stream_defer(void *stream, int (*fn)(void *), void *arg, uintptr_t lo, uintptr_t hi);
int cyb_emu_stream_readable(void *stream, uintptr_t lo, uintptr_t hi);
int cyb_emu_stream_drain(void *stream);
}

#define NCCL_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr char kIdMagic[16] = "cyb-emu-nccl-id";
constexpr uint32_t kCommMagic = 0x4E43434Cu;
const char *const kOpNames[] = {"sum", "prod", "max", "min", "avg"};
const char *const kTypeNames[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64",
                                  "float16", "float32", "float64", "bfloat16", "fp8e4m3", "fp8e5m2"};
const size_t kTypeSize[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};

enum Kind { kInit, kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce };
const char *const kKindNames[] = {"ncclCommInitRank", "ncclAllReduce", "ncclReduceScatter", "ncclAllGather",
                                  "ncclBroadcast", "ncclReduce"};

thread_local std::string t_last_error;

bool quiet() { return getenv("CYB_EMU_QUIET") != nullptr; }

ncclResult_t fail(ncclResult_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t fail(ncclResult_t code, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t_last_error = buf;
    if (!quiet()) fprintf(stderr, "cyb emulator (nccl): %s\n", buf);
    return code;
}

long timeout_ms() {
    const char *e = getenv("CYB_EMU_NCCL_TIMEOUT_MS");
    if (!e || !*e) return 10000;
    const long v = strtol(e, nullptr, 10);
    return v > 0 ? v : 10000;
}

long init_timeout_ms() {
    const char *e = getenv("CYB_EMU_NCCL_INIT_TIMEOUT_MS");
    const long v = e && *e ? strtol(e, nullptr, 10) : 0;
    return v > 0 ? v : 3 * timeout_ms();
}

struct Clique;
struct Xp;

struct Comm {
    uint32_t magic = kCommMagic;
    Clique *clique = nullptr;
    int rank = 0;
    int device = 0;
    uint64_t seq = 0;  // this rank's collectives so far: the next one's number
    Xp *xp = nullptr;  // the shared file, while joining and when ranks span processes
    bool cross = false; // ranks in other processes: collectives go through `xp`
    std::set<void *> queued_on; // streams its collectives were queued on
};

// One collective (or the init rendezvous) of a clique, as the ranks deposit it.
struct Op {
    Kind kind = kInit;
    uint64_t seq = 0;
    size_t count = 0;
    int dtype = 0, op = 0, root = 0;
    std::vector<const void *> send;
    std::vector<void *> recv;
    std::vector<char> arrived;
    int narrived = 0;
    int pending = 0; // ranks yet to collect the result (the op is freed after the last)
    bool done = false;
    ncclResult_t result = ncclSuccess;
    std::string why;
};

// The ranks of one unique id.
struct Clique {
    std::string key;
    int nranks = 0;
    std::vector<Comm *> ranks; // by rank; null before it joins and after it leaves
    std::vector<char> gone;    // destroyed or aborted
    Op init;                   // the init rendezvous
    std::map<uint64_t, Op *> ops;
    bool broken = false;
    ncclResult_t broken_code = ncclSuccess;
    std::string broken_why;
    bool injected = false;
    int live = 0;
};

std::mutex g_mu;
std::condition_variable g_cv;
std::map<std::string, Clique *> g_cliques;
std::set<Comm *> g_comms;

// ---- datatypes ----
float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else { // subnormal
        exp = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
uint16_t float_to_half(float f) { // round to nearest even
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (x >> 16) & 0x8000;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
    if (ax >= 0x477ff000u) return sign | 0x7c00; // rounds to >= 65520: infinity
    if (ax < 0x38800000u) {                      // below the smallest normal: subnormal or 0
        const int shift = 126 - (int)(ax >> 23);
        if (shift > 24) return sign;
        const uint32_t man = (ax & 0x7fffff) | 0x800000;
        uint32_t h = man >> shift;
        const uint32_t rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) ++h;
        return sign | (uint16_t)h;
    }
    uint32_t h = ((ax >> 13) - (112u << 10));
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return sign | (uint16_t)h;
}
float bf16_to_float(uint16_t b) {
    const uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
uint16_t float_to_bf16(float f) { // round to nearest even
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); // quiet NaN
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

struct Half {
    uint16_t bits;
};
struct Bf16 {
    uint16_t bits;
};
// The arithmetic of each datatype: `T` as stored, `A` as computed, rounded back per step.
template <class T> struct Arith {
    using A = T;
    static A load(T v) { return v; }
    static T store(A v) { return v; }
};
template <> struct Arith<Half> {
    using A = float;
    static A load(Half v) { return half_to_float(v.bits); }
    static Half store(A v) { return Half{float_to_half(v)}; }
};
template <> struct Arith<Bf16> {
    using A = float;
    static A load(Bf16 v) { return bf16_to_float(v.bits); }
    static Bf16 store(A v) { return Bf16{float_to_bf16(v)}; }
};

template <class T> T combine(int op, T a, T b) {
    using R = Arith<T>;
    const auto x = R::load(a), y = R::load(b);
    switch (op) {
    case ncclProd: return R::store(x * y);
    case ncclMax: return R::store(x > y || x != x ? x : y); // NaN propagates
    case ncclMin: return R::store(x < y || x != x ? x : y);
    default: return R::store(x + y); // sum, avg
    }
}

// out[i] = the reduction over ranks (in rank order) of in[r][i], i < count.
template <class T> void reduce_typed(int op, const std::vector<const char *> &in, size_t count, char *out) {
    using R = Arith<T>;
    constexpr bool floating = !std::is_integral_v<typename R::A>;
    const int n = (int)in.size();
    const T scale = R::store((typename R::A)(1.0 / n));
    for (size_t i = 0; i < count; ++i) {
        T acc{};
        for (int r = 0; r < n; ++r) {
            T x;
            memcpy(&x, in[r] + i * sizeof(T), sizeof(T));
            if (op == ncclAvg && floating) x = R::store(R::load(x) * R::load(scale));
            acc = r == 0 ? x : combine<T>(op, acc, x);
        }
        if constexpr (!floating)
            if (op == ncclAvg) acc = R::store(R::load(acc) / (typename R::A)n);
        memcpy(out + i * sizeof(T), &acc, sizeof(T));
    }
}

void reduce(int dtype, int op, const std::vector<const char *> &in, size_t count, char *out) {
    switch (dtype) {
    case ncclInt8: reduce_typed<int8_t>(op, in, count, out); break;
    case ncclUint8: reduce_typed<uint8_t>(op, in, count, out); break;
    case ncclInt32: reduce_typed<int32_t>(op, in, count, out); break;
    case ncclUint32: reduce_typed<uint32_t>(op, in, count, out); break;
    case ncclInt64: reduce_typed<int64_t>(op, in, count, out); break;
    case ncclUint64: reduce_typed<uint64_t>(op, in, count, out); break;
    case ncclFloat16: reduce_typed<Half>(op, in, count, out); break;
    case ncclFloat32: reduce_typed<float>(op, in, count, out); break;
    case ncclFloat64: reduce_typed<double>(op, in, count, out); break;
    case ncclBfloat16: reduce_typed<Bf16>(op, in, count, out); break;
    }
}

// Runs a collective whose every rank has arrived (g_mu held). Every input is read before
// any output is written, so in-place calls (send == recv, or send/recv a slice of the
// other, as NCCL allows) see the inputs as they were.
void execute(Op &o, int nranks) {
    const size_t es = kTypeSize[o.dtype], bytes = o.count * es;
    std::vector<const char *> in(nranks);
    switch (o.kind) {
    case kAllReduce:
    case kReduce: {
        for (int r = 0; r < nranks; ++r) in[r] = static_cast<const char *>(o.send[r]);
        std::vector<char> out(bytes);
        reduce(o.dtype, o.op, in, o.count, out.data());
        for (int r = 0; r < nranks; ++r)
            if (o.kind == kAllReduce || r == o.root) memcpy(o.recv[r], out.data(), bytes);
        break;
    }
    case kReduceScatter: { // rank r gets the reduction of every rank's chunk r
        std::vector<char> out(bytes * nranks);
        for (int c = 0; c < nranks; ++c) {
            for (int r = 0; r < nranks; ++r) in[r] = static_cast<const char *>(o.send[r]) + c * bytes;
            reduce(o.dtype, o.op, in, o.count, out.data() + c * bytes);
        }
        for (int r = 0; r < nranks; ++r) memcpy(o.recv[r], out.data() + r * bytes, bytes);
        break;
    }
    case kAllGather: { // chunk r of every output is rank r's input
        std::vector<char> out(bytes * nranks);
        for (int r = 0; r < nranks; ++r) memcpy(out.data() + r * bytes, o.send[r], bytes);
        for (int r = 0; r < nranks; ++r) memcpy(o.recv[r], out.data(), bytes * nranks);
        break;
    }
    case kBroadcast: {
        std::vector<char> out(static_cast<const char *>(o.send[o.root]), static_cast<const char *>(o.send[o.root]) + bytes);
        for (int r = 0; r < nranks; ++r) memcpy(o.recv[r], out.data(), bytes);
        break;
    }
    case kInit: break;
    }
}

// Marks a clique broken (g_mu held): every waiting and later call fails.
void break_clique(Clique *c, ncclResult_t code, const std::string &why) {
    if (c->broken) return;
    c->broken = true;
    c->broken_code = code;
    c->broken_why = why;
    g_cv.notify_all();
}

std::string rank_list(const std::vector<int> &ranks) {
    std::string s;
    for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
    return s;
}

// A queued call of this thread (inside a group, or the one call outside any).
struct Call {
    Comm *comm;
    Kind kind;
    const void *send;
    void *recv;
    size_t count;
    int dtype, op, root;
    Op *o = nullptr;   // the rendezvous it joined
    bool skip = false; // failed before it could join one
    void *stream = nullptr;
};

struct Group {
    int depth = 0;
    std::vector<Call> calls;
    ncclResult_t error = ncclSuccess;
};
thread_local Group t_group;

// Whether two deposits of one collective agree (g_mu held).
bool same_call(const Op &o, const Call &c, std::string &why) {
    char buf[300];
    if (o.kind != c.kind) {
        snprintf(buf, sizeof buf, "%s on one rank, %s on another", kKindNames[o.kind], kKindNames[c.kind]);
    } else if (o.count != c.count) {
        snprintf(buf, sizeof buf, "count %zu on one rank, %zu on another", o.count, c.count);
    } else if (o.dtype != c.dtype) {
        snprintf(buf, sizeof buf, "datatype %s on one rank, %s on another", kTypeNames[o.dtype], kTypeNames[c.dtype]);
    } else if (o.op != c.op && (c.kind == kAllReduce || c.kind == kReduce || c.kind == kReduceScatter)) {
        snprintf(buf, sizeof buf, "operation %s on one rank, %s on another", kOpNames[o.op], kOpNames[c.op]);
    } else if (o.root != c.root && (c.kind == kBroadcast || c.kind == kReduce)) {
        snprintf(buf, sizeof buf, "root %d on one rank, %d on another", o.root, c.root);
    } else {
        return true;
    }
    why = buf;
    return false;
}

// Deposits a call in its rendezvous (g_mu held); the last rank to arrive runs it.
// Returns an error when the clique is broken, the call disagrees with the others', or
// an injected failure hits it.
ncclResult_t deposit(Call &c) {
    Clique *cl = c.comm->clique;
    const int r = c.comm->rank;
    if (cl->broken)
        return fail(cl->broken_code == ncclSystemError || cl->broken_code == ncclRemoteError ? ncclRemoteError
                                                                                              : cl->broken_code,
                    "%s on rank %d: the communicator is broken: %s", kKindNames[c.kind], r, cl->broken_why.c_str());
    const uint64_t seq = c.comm->seq++;
    if (const char *fr = getenv("CYB_EMU_NCCL_FAIL_RANK"); fr && *fr && atoi(fr) == r && !cl->injected) {
        const char *at = getenv("CYB_EMU_NCCL_FAIL_AT");
        if ((uint64_t)(at ? atoll(at) : 0) == seq) {
            cl->injected = true;
            char why[200];
            snprintf(why, sizeof why, "rank %d failed its collective #%llu (injected by CYB_EMU_NCCL_FAIL_RANK)", r,
                     (unsigned long long)seq);
            break_clique(cl, ncclSystemError, why);
            return fail(ncclSystemError, "%s on rank %d: %s", kKindNames[c.kind], r, why);
        }
    }
    Op *&o = cl->ops[seq];
    if (!o) {
        o = new Op;
        o->kind = c.kind;
        o->seq = seq;
        o->count = c.count;
        o->dtype = c.dtype;
        o->op = c.op;
        o->root = c.root;
        o->send.assign(cl->nranks, nullptr);
        o->recv.assign(cl->nranks, nullptr);
        o->arrived.assign(cl->nranks, 0);
        o->pending = cl->nranks;
    }
    c.o = o;
    std::string why;
    if (!same_call(*o, c, why)) {
        char msg[400];
        snprintf(msg, sizeof msg, "collective #%llu: %s (every rank must make the same calls in the same order)",
                 (unsigned long long)seq, why.c_str());
        break_clique(cl, ncclInvalidUsage, msg);
        return fail(ncclInvalidUsage, "%s on rank %d: %s", kKindNames[c.kind], r, msg);
    }
    o->send[r] = c.send;
    o->recv[r] = c.recv;
    o->arrived[r] = 1;
    if (++o->narrived == cl->nranks) {
        execute(*o, cl->nranks);
        o->done = true;
        g_cv.notify_all();
    }
    return ncclSuccess;
}

// Gives up this rank's claim on a finished or failed op (g_mu held).
void release(Clique *cl, Op *o) {
    if (--o->pending == 0) {
        cl->ops.erase(o->seq);
        delete o;
    }
}

// The ranks of `o` that have not arrived.
std::vector<int> missing(const Clique *cl, const Op &o) {
    std::vector<int> m;
    for (int r = 0; r < cl->nranks; ++r)
        if (!o.arrived[r]) m.push_back(r);
    return m;
}

// Waits until `o` is done or the clique breaks (g_mu held through `lock`). A rank that
// destroyed its communicator breaks it at once; a rank that does not arrive breaks it
// once its device shows no sign of life for the timeout.
ncclResult_t await(std::unique_lock<std::mutex> &lock, Clique *cl, Op *o, int rank, const char *what) {
    using clock = std::chrono::steady_clock;
    const long ms = timeout_ms();
    auto deadline = clock::now() + std::chrono::milliseconds(ms);
    std::vector<uint64_t> seen(cyb_emu_device_count(), 0);
    for (int d = 0; d < (int)seen.size(); ++d) seen[d] = cyb_emu_device_activity(d);
    while (!o->done && !cl->broken) {
        for (int r : missing(cl, *o))
            if (cl->gone[r]) {
                char why[200];
                snprintf(why, sizeof why, "rank %d destroyed its communicator before %s #%llu", r, what,
                         (unsigned long long)o->seq);
                break_clique(cl, ncclRemoteError, why);
            }
        if (cl->broken) break;
        g_cv.wait_for(lock, std::chrono::milliseconds(50));
        if (o->done || cl->broken) break;
        // Signs of life of the missing ranks' devices (for the init rendezvous, any
        // device no joined rank holds) push the deadline back.
        bool alive = false;
        std::vector<char> watch(seen.size(), 0);
        if (o->kind == kInit) {
            std::fill(watch.begin(), watch.end(), 1);
            for (Comm *c : cl->ranks)
                if (c && c->device < (int)watch.size()) watch[c->device] = 0;
        } else {
            for (int r : missing(cl, *o))
                if (cl->ranks[r] && cl->ranks[r]->device < (int)watch.size()) watch[cl->ranks[r]->device] = 1;
        }
        for (int d = 0; d < (int)seen.size(); ++d) {
            if (!watch[d]) continue;
            const uint64_t a = cyb_emu_device_activity(d);
            if (a != seen[d] || cyb_emu_device_busy(d)) alive = true;
            seen[d] = a;
        }
        if (alive) deadline = clock::now() + std::chrono::milliseconds(ms);
        if (clock::now() >= deadline) {
            char why[400];
            snprintf(why, sizeof why,
                     "rank(s) %s of %d never arrived at %s #%llu: no sign of life for %ld ms "
                     "(CYB_EMU_NCCL_TIMEOUT_MS)",
                     rank_list(missing(cl, *o)).c_str(), cl->nranks, what, (unsigned long long)o->seq, ms);
            break_clique(cl, ncclSystemError, why);
            return fail(ncclSystemError, "%s on rank %d: %s", what, rank, why);
        }
    }
    if (o->done) return ncclSuccess; // (an init's own result is the caller's to check)
    return fail(cl->broken_code == ncclInvalidUsage ? ncclInvalidUsage : ncclRemoteError,
                "%s on rank %d: the communicator is broken: %s", what, rank, cl->broken_why.c_str());
}

bool live(Comm *c) {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_comms.count(c) > 0;
}

// Checks a collective's arguments on the calling rank; 0 or an error.
ncclResult_t check_call(const Call &c, void *stream) {
    const char *what = kKindNames[c.kind];
    if (!c.comm || !live(c.comm)) return fail(ncclInvalidArgument, "%s: %p is not a live communicator", what, (void *)c.comm);
    const int nranks = c.comm->clique->nranks, dev = c.comm->device;
    if (c.dtype < 0 || c.dtype >= ncclNumTypes) return fail(ncclInvalidArgument, "%s: datatype %d is not one of NCCL's", what, c.dtype);
    if (c.dtype > ncclBfloat16)
        return fail(ncclInvalidArgument, "%s: datatype %s is not emulated", what, kTypeNames[c.dtype]);
    if (c.op < 0 || c.op >= ncclNumOps)
        return fail(ncclInvalidArgument, "%s: reduction operation %d is not one of NCCL's (custom ones are not emulated)",
                    what, c.op);
    if ((c.kind == kBroadcast || c.kind == kReduce) && (c.root < 0 || c.root >= nranks))
        return fail(ncclInvalidArgument, "%s: root %d outside 0..%d", what, c.root, nranks - 1);
    const size_t es = kTypeSize[c.dtype];
    if (c.count > (SIZE_MAX / 4) / es / (size_t)nranks)
        return fail(ncclInvalidArgument, "%s: count %zu of %s overflows", what, c.count, kTypeNames[c.dtype]);
    const int sdev = cyb_emu_stream_device(stream);
    if (sdev < 0) return fail(ncclInvalidArgument, "%s: %p is not a stream (or no context is current)", what, stream);
    if (sdev != dev)
        return fail(ncclInvalidArgument, "%s: rank %d's communicator is on device %d, the stream on device %d", what,
                    c.comm->rank, dev, sdev);
    if (int f = cyb_emu_device_fault(dev))
        return fail(ncclUnhandledCudaError, "%s: device %d's context is unusable (CUDA error %d from an earlier fault)",
                    what, dev, f);
    if (c.count == 0) return ncclSuccess;
    const size_t bytes = c.count * es;
    size_t send_bytes = bytes, recv_bytes = bytes;
    if (c.kind == kReduceScatter) send_bytes = bytes * nranks;
    if (c.kind == kAllGather) recv_bytes = bytes * nranks;
    const bool needs_send = !(c.kind == kBroadcast && c.comm->rank != c.root);
    const bool needs_recv = !(c.kind == kReduce && c.comm->rank != c.root);
    for (auto [p, n, need, name] : {std::tuple{(uintptr_t)c.send, send_bytes, needs_send, "send"},
                                    std::tuple{(uintptr_t)c.recv, recv_bytes, needs_recv, "receive"}}) {
        if (!need) continue;
        if (!p) return fail(ncclInvalidArgument, "%s: null %s buffer on rank %d", what, name, c.comm->rank);
        const int pd = cyb_emu_ptr_device(p, n);
        if (pd < 0)
            return fail(ncclInvalidArgument,
                        "%s: the %s buffer 0x%lx + %zu bytes on rank %d is not inside one device allocation", what, name,
                        (unsigned long)p, n, c.comm->rank);
        if (pd != dev)
            return fail(ncclInvalidArgument, "%s: the %s buffer of rank %d lies on device %d, its communicator on device %d",
                        what, name, c.comm->rank, pd, dev);
    }
    return ncclSuccess;
}

// ---- ranks in several processes: a file shared by every rank's process (in
// CYB_EMU_NCCL_DIR, else TMPDIR, else /tmp) holds a header (a process-shared robust
// mutex and condition variable, each rank's state) and one data slot per rank. Each
// collective goes in rounds of at most kXpCap bytes per rank: every rank copies its
// input for the round into its slot and arrives; once all have, each computes its own
// output from every slot in rank order (the same order and bits as in one process) and
// finishes; once all have, the slots may be reused. Every InitRank joins through the
// file (the ranks' processes are not known before); when all ranks turn out to be in
// this process, the file is removed and the in-process path is used. ----
constexpr int kXpMaxRanks = 64;
constexpr size_t kXpHeader = 1 << 16;
constexpr size_t kXpCap = 4 << 20; // bytes per rank and round (the file is sparse)
constexpr uint32_t kXpReady = 0x52454459u;

struct XpDesc {
    uint64_t seq, count;
    int kind, dtype, op, root;
};
struct XpRank {
    int pid, device, joined, gone;
    uint64_t arrived, finished, heartbeat;
    XpDesc desc;
};
struct XpHeader {
    std::atomic<uint32_t> ready;
    int nranks, njoined, ndetached;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int broken, broken_code, injected;
    char why[512];
    XpRank ranks[kXpMaxRanks];
};
static_assert(sizeof(XpHeader) <= kXpHeader, "the header fits its page range");

struct Xp {
    XpHeader *h = nullptr;
    char *base = nullptr;
    size_t size = 0;
    std::string path;
    uint64_t ticket = 0; // rounds done by this rank
    std::thread heart;   // publishes this rank's device activity (cross-process mode)
    std::atomic<bool> stop{false};
    char *slot(int r) const { return base + kXpHeader + (size_t)r * kXpCap; }
};

std::string xp_path(const std::string &key) {
    const char *dir = getenv("CYB_EMU_NCCL_DIR");
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    char name[96];
    uint64_t pid = 0, n = 0, salt = 0;
    memcpy(&pid, key.data() + 16, 8);
    memcpy(&n, key.data() + 24, 8);
    memcpy(&salt, key.data() + 32, 8);
    snprintf(name, sizeof name, "/cyb-emu-nccl-%llu-%llu-%016llx", (unsigned long long)pid, (unsigned long long)n,
             (unsigned long long)salt);
    return dir + std::string(name);
}

void xp_break(XpHeader *h, ncclResult_t code, const char *why) {
    if (h->broken) return;
    h->broken = 1;
    h->broken_code = code;
    snprintf(h->why, sizeof h->why, "%s", why);
    pthread_cond_broadcast(&h->cv);
}

struct XpLock {
    XpHeader *h;
    explicit XpLock(XpHeader *h_) : h(h_) {
        if (pthread_mutex_lock(&h->mu) == EOWNERDEAD) {
            pthread_mutex_consistent(&h->mu);
            xp_break(h, ncclRemoteError, "a rank's process died inside the stand-in NCCL");
        }
    }
    ~XpLock() { pthread_mutex_unlock(&h->mu); }
};

// Waits (the lock held) until `missing` is empty; breaks the communicator, and returns
// the error, when it is broken, a missing rank left or its process is gone, or shows
// no sign of life (its heartbeat) for `ms`.
ncclResult_t xp_wait(Xp *x, int rank, const char *what, uint64_t seq, long ms,
                     const std::function<std::vector<int>()> &missing) {
    XpHeader *h = x->h;
    using clock = std::chrono::steady_clock;
    auto deadline = clock::now() + std::chrono::milliseconds(ms);
    std::vector<uint64_t> seen(h->nranks);
    for (int q = 0; q < h->nranks; ++q) seen[q] = h->ranks[q].heartbeat;
    for (;;) {
        const std::vector<int> m = missing();
        if (m.empty()) return ncclSuccess;
        char why[512];
        for (int q : m) {
            if (h->broken) break;
            if (h->ranks[q].gone) {
                snprintf(why, sizeof why, "rank %d destroyed its communicator before %s #%llu", q, what,
                         (unsigned long long)seq);
                xp_break(h, ncclRemoteError, why);
            } else if (h->ranks[q].pid > 0 && kill(h->ranks[q].pid, 0) != 0 && errno == ESRCH) {
                snprintf(why, sizeof why, "rank %d's process (pid %d) exited before %s #%llu", q, h->ranks[q].pid, what,
                         (unsigned long long)seq);
                xp_break(h, ncclRemoteError, why);
            }
        }
        if (h->broken)
            return fail(h->broken_code == ncclInvalidUsage ? ncclInvalidUsage : ncclRemoteError,
                        "%s on rank %d: the communicator is broken: %s", what, rank, h->why);
        bool alive = false;
        for (int q : m) {
            alive |= h->ranks[q].heartbeat != seen[q];
            seen[q] = h->ranks[q].heartbeat;
        }
        if (alive) deadline = clock::now() + std::chrono::milliseconds(ms);
        if (clock::now() >= deadline) {
            snprintf(why, sizeof why,
                     "rank(s) %s of %d never arrived at %s #%llu: no sign of life for %ld ms (%s)",
                     rank_list(m).c_str(), h->nranks, what, (unsigned long long)seq, ms,
                     seq == 0 && !strcmp(what, "ncclCommInitRank") ? "CYB_EMU_NCCL_INIT_TIMEOUT_MS"
                                                                   : "CYB_EMU_NCCL_TIMEOUT_MS");
            xp_break(h, ncclSystemError, why);
            return fail(ncclSystemError, "%s on rank %d: %s", what, rank, why);
        }
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == EOWNERDEAD) {
            pthread_mutex_consistent(&h->mu);
            xp_break(h, ncclRemoteError, "a rank's process died inside the stand-in NCCL");
        }
    }
}

void xp_close(Xp *x, bool remove) {
    if (x->heart.joinable()) {
        x->stop = true;
        x->heart.join();
    }
    if (remove) unlink(x->path.c_str());
    munmap(x->base, x->size);
    delete x;
}

// Opens (or creates) the shared file of a clique and joins it as c's rank.
ncclResult_t xp_join(Comm *c) {
    Clique *cl = c->clique;
    const int n = cl->nranks, r = c->rank;
    if (n > kXpMaxRanks) return fail(ncclInvalidArgument, "ncclCommInitRank: %d ranks, the emulator has room for %d", n, kXpMaxRanks);
    auto *x = new Xp;
    x->path = xp_path(cl->key);
    x->size = kXpHeader + (size_t)n * kXpCap;
    int fd = open(x->path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    const bool creator = fd >= 0;
    if (!creator && errno == EEXIST) fd = open(x->path.c_str(), O_RDWR);
    if (fd < 0) {
        delete x;
        return fail(ncclSystemError, "ncclCommInitRank: cannot open %s: %s", xp_path(cl->key).c_str(), strerror(errno));
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(init_timeout_ms());
    if (creator) {
        if (ftruncate(fd, (off_t)x->size) != 0) {
            close(fd);
            unlink(x->path.c_str());
            delete x;
            return fail(ncclSystemError, "ncclCommInitRank: cannot size %s: %s", xp_path(cl->key).c_str(), strerror(errno));
        }
    } else { // wait for the creator to size it
        struct stat st{};
        while (fstat(fd, &st) == 0 && (size_t)st.st_size < x->size && std::chrono::steady_clock::now() < give_up)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if ((size_t)st.st_size != x->size) {
            close(fd);
            const size_t want = x->size;
            delete x;
            return fail(ncclInvalidArgument, "ncclCommInitRank: %s is %lld bytes, not %zu: ranks disagree on their number (%d here)",
                        xp_path(cl->key).c_str(), (long long)st.st_size, want, n);
        }
    }
    void *m = mmap(nullptr, x->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        delete x;
        return fail(ncclSystemError, "ncclCommInitRank: cannot map %s: %s", xp_path(cl->key).c_str(), strerror(errno));
    }
    x->base = static_cast<char *>(m);
    x->h = reinterpret_cast<XpHeader *>(m);
    XpHeader *h = x->h;
    if (creator) {
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&h->mu, &ma);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&h->cv, &ca);
        h->nranks = n;
        h->ready.store(kXpReady, std::memory_order_release);
    } else {
        while (h->ready.load(std::memory_order_acquire) != kXpReady && std::chrono::steady_clock::now() < give_up)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (h->ready.load(std::memory_order_acquire) != kXpReady) {
            xp_close(x, false);
            return fail(ncclSystemError, "ncclCommInitRank: %s was never set up", xp_path(cl->key).c_str());
        }
    }
    XpLock lock(h);
    if (h->ranks[r].joined) {
        xp_close(x, false);
        return fail(ncclInvalidUsage, "ncclCommInitRank: rank %d of this id joined already (in another process)", r);
    }
    h->ranks[r].pid = getpid();
    h->ranks[r].device = c->device;
    h->ranks[r].joined = 1;
    ++h->njoined;
    pthread_cond_broadcast(&h->cv);
    c->xp = x;
    return ncclSuccess;
}

// Waits for every rank to join; then either leaves the file (all ranks in this process)
// or keeps it and starts the heartbeat (ranks in other processes: c->cross).
ncclResult_t xp_await_joined(Comm *c) {
    Xp *x = c->xp;
    XpHeader *h = x->h;
    bool remove = false;
    {
        XpLock lock(h);
        if (ncclResult_t r = xp_wait(x, c->rank, "ncclCommInitRank", 0, init_timeout_ms(), [&] {
                std::vector<int> m;
                for (int q = 0; q < h->nranks; ++q)
                    if (!h->ranks[q].joined) m.push_back(q);
                return m;
            })) {
            return r;
        }
        for (int q = 0; q < h->nranks; ++q) c->cross |= h->ranks[q].pid != getpid();
        if (!c->cross) remove = ++h->ndetached == h->nranks;
    }
    if (!c->cross) {
        c->xp = nullptr;
        xp_close(x, remove);
        return ncclSuccess;
    }
    const int r = c->rank, dev = c->device;
    x->heart = std::thread([x, r, dev] {
        uint64_t beat = 0;
        while (!x->stop) {
            const uint64_t a = cyb_emu_device_activity(dev) * 2 + (cyb_emu_device_busy(dev) ? ++beat : 0);
            __atomic_store_n(&x->h->ranks[r].heartbeat, a, __ATOMIC_RELAXED);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });
    return ncclSuccess;
}

// One collective of a rank of a cross-process communicator, in rounds.
ncclResult_t xp_collective(Call &c) {
    Comm *comm = c.comm;
    Xp *x = comm->xp;
    XpHeader *h = x->h;
    const int n = h->nranks, r = comm->rank;
    const char *what = kKindNames[c.kind];
    const size_t es = kTypeSize[c.dtype];
    const size_t per = kXpCap / (es * (c.kind == kReduceScatter ? n : 1));
    const uint64_t seq = comm->seq++;
    {
        XpLock lock(h);
        if (h->broken)
            return fail(h->broken_code == ncclInvalidUsage ? ncclInvalidUsage : ncclRemoteError,
                        "%s on rank %d: the communicator is broken: %s", what, r, h->why);
        if (const char *fr = getenv("CYB_EMU_NCCL_FAIL_RANK"); fr && *fr && atoi(fr) == r && !h->injected) {
            const char *at = getenv("CYB_EMU_NCCL_FAIL_AT");
            if ((uint64_t)(at ? atoll(at) : 0) == seq) {
                h->injected = 1;
                char why[200];
                snprintf(why, sizeof why, "rank %d failed its collective #%llu (injected by CYB_EMU_NCCL_FAIL_RANK)", r,
                         (unsigned long long)seq);
                xp_break(h, ncclSystemError, why);
                return fail(ncclSystemError, "%s on rank %d: %s", what, r, why);
            }
        }
    }
    const char *send = static_cast<const char *>(c.send);
    char *recv = static_cast<char *>(c.recv);
    for (size_t a = 0; a < c.count; a += per) {
        const size_t m = std::min(per, c.count - a), mb = m * es;
        char *mine = x->slot(r);
        switch (c.kind) {
        case kReduceScatter:
            for (int q = 0; q < n; ++q) memcpy(mine + q * mb, send + (q * c.count + a) * es, mb);
            break;
        case kBroadcast:
            if (r == c.root) memcpy(mine, send + a * es, mb);
            break;
        default: memcpy(mine, send + a * es, mb); break;
        }
        const uint64_t t = ++x->ticket;
        {
            XpLock lock(h);
            h->ranks[r].desc = XpDesc{seq, c.count, c.kind, c.dtype, c.op, c.root};
            h->ranks[r].arrived = t;
            pthread_cond_broadcast(&h->cv);
            if (ncclResult_t e = xp_wait(x, r, what, seq, timeout_ms(), [&] {
                    std::vector<int> miss;
                    for (int q = 0; q < n; ++q)
                        if (h->ranks[q].arrived < t) miss.push_back(q);
                    return miss;
                }))
                return e;
            for (int q = 0; q < n; ++q) {
                const XpDesc &d = h->ranks[q].desc;
                Call other{comm, (Kind)d.kind, nullptr, nullptr, (size_t)d.count, d.dtype, d.op, d.root};
                Op mine_op;
                mine_op.kind = c.kind;
                mine_op.count = c.count;
                mine_op.dtype = c.dtype;
                mine_op.op = c.op;
                mine_op.root = c.root;
                std::string why;
                if (d.seq != seq || !same_call(mine_op, other, why)) {
                    char msg[400];
                    snprintf(msg, sizeof msg, "collective #%llu: %s (every rank must make the same calls in the same order)",
                             (unsigned long long)seq, d.seq != seq ? "ranks at different collectives" : why.c_str());
                    xp_break(h, ncclInvalidUsage, msg);
                    return fail(ncclInvalidUsage, "%s on rank %d: %s", what, r, msg);
                }
            }
        }
        std::vector<const char *> in(n);
        switch (c.kind) {
        case kAllReduce:
        case kReduce:
            if (c.kind == kAllReduce || r == c.root) {
                for (int q = 0; q < n; ++q) in[q] = x->slot(q);
                reduce(c.dtype, c.op, in, m, recv + a * es);
            }
            break;
        case kReduceScatter:
            for (int q = 0; q < n; ++q) in[q] = x->slot(q) + r * mb;
            reduce(c.dtype, c.op, in, m, recv + a * es);
            break;
        case kAllGather:
            for (int q = 0; q < n; ++q) memcpy(recv + (q * c.count + a) * es, x->slot(q), mb);
            break;
        case kBroadcast: memcpy(recv + a * es, x->slot(c.root), mb); break;
        case kInit: break;
        }
        XpLock lock(h);
        h->ranks[r].finished = t;
        pthread_cond_broadcast(&h->cv);
        if (ncclResult_t e = xp_wait(x, r, what, seq, timeout_ms(), [&] {
                std::vector<int> miss;
                for (int q = 0; q < n; ++q)
                    if (h->ranks[q].finished < t) miss.push_back(q);
                return miss;
            }))
            return e;
    }
    return ncclSuccess;
}

// A rank of a cross-process communicator leaves: waiting peers fail at once.
void xp_leave(Comm *c) {
    Xp *x = c->xp;
    bool remove = false;
    {
        XpLock lock(x->h);
        XpHeader *h = x->h;
        h->ranks[c->rank].gone = 1;
        // The last one out removes the file; so does one that finds the others gone
        // without a word (their process ended or never joined).
        remove = ++h->ndetached == h->nranks;
        bool others_gone = true;
        for (int q = 0; q < h->nranks; ++q)
            others_gone &= h->ranks[q].gone || h->ranks[q].pid <= 0 || (kill(h->ranks[q].pid, 0) != 0 && errno == ESRCH);
        remove |= others_gone;
        pthread_cond_broadcast(&x->h->cv);
    }
    xp_close(x, remove);
    c->xp = nullptr;
}

// Deposits every queued call of this thread, then waits for each (the outermost
// ncclGroupEnd, or a call outside a group). The first error is returned.
ncclResult_t run_calls(std::vector<Call> &calls) {
    ncclResult_t first = ncclSuccess;
    auto note = [&](ncclResult_t r) {
        if (r && !first) first = r;
    };
    // Inits meet in the shared file first (without g_mu): it tells whether the ranks span
    // processes.
    for (Call &c : calls)
        if (c.kind == kInit)
            if (ncclResult_t r = xp_join(c.comm)) {
                note(r);
                c.skip = true;
            }
    for (Call &c : calls)
        if (c.kind == kInit && !c.skip)
            if (ncclResult_t r = xp_await_joined(c.comm)) {
                note(r);
                c.skip = true;
            }
    // Cross-process collectives run one after the other, so one thread may not hold two
    // ranks of such a communicator in a group.
    for (size_t i = 0; i < calls.size(); ++i)
        for (size_t j = i + 1; j < calls.size(); ++j)
            if (calls[i].comm->cross && calls[i].comm->clique == calls[j].comm->clique &&
                calls[i].comm->rank != calls[j].comm->rank && calls[i].kind != kInit && !calls[i].skip) {
                note(fail(ncclInvalidUsage,
                          "%s: one thread drives ranks %d and %d of a communicator whose ranks span processes: not "
                          "emulated (one rank per thread there)",
                          kKindNames[calls[i].kind], calls[i].comm->rank, calls[j].comm->rank));
                for (Call &c : calls) c.skip = true;
            }
    std::unique_lock<std::mutex> lock(g_mu);
    for (Call &c : calls) {
        ncclResult_t r = ncclSuccess;
        if (c.skip || c.comm->cross) continue;
        if (c.kind == kInit) {
            Clique *cl = c.comm->clique;
            if (cl->broken) r = fail(ncclRemoteError, "ncclCommInitRank on rank %d: %s", c.comm->rank, cl->broken_why.c_str());
            else {
                c.o = &cl->init;
                cl->init.arrived[c.comm->rank] = 1;
                if (++cl->init.narrived == cl->nranks) {
                    // Every rank is here: two on one device is NCCL's "duplicate GPU".
                    for (int a = 0; a < cl->nranks; ++a)
                        for (int b = a + 1; b < cl->nranks; ++b)
                            if (cl->ranks[a]->device == cl->ranks[b]->device) {
                                char why[200];
                                snprintf(why, sizeof why, "ranks %d and %d are both on device %d (duplicate GPU)", a, b,
                                         cl->ranks[a]->device);
                                cl->init.result = ncclInvalidUsage;
                                cl->init.why = why;
                            }
                    cl->init.done = true;
                    g_cv.notify_all();
                }
            }
        } else if (c.count > 0) {
            r = deposit(c);
        }
        note(r);
    }
    lock.unlock();
    for (Call &c : calls)
        if (!c.skip && c.comm->cross && c.kind != kInit && c.count > 0) note(xp_collective(c));
    lock.lock();
    for (Call &c : calls) {
        if (!c.o) continue;
        Clique *cl = c.comm->clique;
        ncclResult_t r = await(lock, cl, c.o, c.comm->rank, kKindNames[c.kind]);
        if (c.kind == kInit && r == ncclSuccess && c.o->result)
            r = fail(c.o->result, "ncclCommInitRank on rank %d: %s", c.comm->rank, c.o->why.c_str());
        if (c.kind != kInit) release(cl, c.o);
        if (r && !first) first = r;
    }
    return first;
}

// Bytes of a call's input and output.
size_t send_bytes(const Call &c) {
    const size_t b = c.count * kTypeSize[c.dtype];
    return c.kind == kReduceScatter ? b * c.comm->clique->nranks : b;
}
size_t recv_bytes(const Call &c) {
    const size_t b = c.count * kTypeSize[c.dtype];
    return c.kind == kAllGather ? b * c.comm->clique->nranks : b;
}

// A collective queued on its stream, with its input when it was read at the call.
struct Deferred {
    Call c;
    std::vector<char> input;
    bool snapped = false;
};

// Runs a queued collective (from driver.cpp, when its stream's work is needed).
int run_deferred(void *arg) {
    auto *d = static_cast<Deferred *>(arg);
    if (d->snapped) d->c.send = d->input.data();
    std::vector<Call> one{d->c};
    const ncclResult_t r = live(d->c.comm) ? run_calls(one)
                                           : fail(ncclInvalidUsage, "%s: its communicator was destroyed while it was queued",
                                                  kKindNames[d->c.kind]);
    delete d;
    return r == ncclSuccess ? 0 : 719; // CUDA_ERROR_LAUNCH_FAILED
}

bool sync_mode() {
    const char *e = getenv("CYB_EMU_NCCL_SYNC");
    return e && *e && strcmp(e, "0") != 0;
}

ncclResult_t enqueue(Call c, void *stream) {
    if (ncclResult_t r = check_call(c, stream)) {
        if (t_group.depth > 0 && !t_group.error) t_group.error = r;
        return r;
    }
    c.stream = stream;
    if (t_group.depth > 0) {
        t_group.calls.push_back(c);
        return ncclSuccess;
    }
    if (!sync_mode() && !c.comm->cross && c.count > 0 && (uintptr_t)stream > 2) {
        auto *d = new Deferred{c, {}, false};
        const size_t in = send_bytes(c);
        const bool has_input = c.send && !(c.kind == kBroadcast && c.comm->rank != c.root);
        if (has_input && cyb_emu_stream_readable(stream, (uintptr_t)c.send, (uintptr_t)c.send + in)) {
            d->input.assign(static_cast<const char *>(c.send), static_cast<const char *>(c.send) + in);
            d->snapped = true;
        }
        const bool has_output = c.recv && !(c.kind == kReduce && c.comm->rank != c.root);
        const uintptr_t lo = has_output ? (uintptr_t)c.recv : 0, hi = has_output ? lo + recv_bytes(c) : 0;
        if (cyb_emu_stream_defer(stream, run_deferred, d, lo, hi) == 0) {
            c.comm->queued_on.insert(stream);
            return ncclSuccess;
        }
        delete d;
    }
    // At the call: after the work queued on its stream.
    if (int r = cyb_emu_stream_drain(stream))
        return fail(ncclUnhandledCudaError, "%s: work queued on its stream failed (CUDA error %d)", kKindNames[c.kind], r);
    std::vector<Call> one{c};
    return run_calls(one);
}

// Joins (or creates) the clique of `id` as `rank` (the init call's checks done).
ncclResult_t join(Comm **out, int nranks, const ncclUniqueId &id, int rank, int device) {
    const std::string key(id.internal, sizeof id.internal);
    std::unique_lock<std::mutex> lock(g_mu);
    Clique *&cl = g_cliques[key];
    if (!cl) {
        cl = new Clique;
        cl->key = key;
        cl->nranks = nranks;
        cl->ranks.assign(nranks, nullptr);
        cl->gone.assign(nranks, 0);
        cl->init.kind = kInit;
        cl->init.arrived.assign(nranks, 0);
    }
    if (cl->nranks != nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: %d ranks here, %d in an earlier call with the same id", nranks,
                    cl->nranks);
    if (cl->ranks[rank] || cl->gone[rank])
        return fail(ncclInvalidUsage, "ncclCommInitRank: rank %d of this id joined already", rank);
    auto *c = new Comm;
    c->clique = cl;
    c->rank = rank;
    c->device = device;
    cl->ranks[rank] = c;
    ++cl->live;
    g_comms.insert(c);
    *out = c;
    return ncclSuccess;
}

ncclResult_t init_rank(Comm **comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: null communicator pointer");
    if (nranks < 1) return fail(ncclInvalidArgument, "ncclCommInitRank: %d ranks", nranks);
    if (rank < 0 || rank >= nranks) return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d outside 0..%d", rank, nranks - 1);
    if (memcmp(id.internal, kIdMagic, sizeof kIdMagic) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
    int device = cyb_emu_current_device();
    if (device < 0) device = 0; // NCCL uses cudaGetDevice(), which is 0 when none was set
    Comm *c = nullptr;
    if (ncclResult_t r = join(&c, nranks, id, rank, device)) return r;
    *comm = c;
    Call call{c, kInit, nullptr, nullptr, 0, 0, 0, 0};
    if (t_group.depth > 0) {
        t_group.calls.push_back(call);
        return ncclSuccess;
    }
    std::vector<Call> one{call};
    return run_calls(one);
}

// Leaves the clique (destroy or abort): waiting peers fail instead of hanging.
ncclResult_t leave(Comm *c, const char *what) {
    if (!live(c)) return fail(ncclInvalidArgument, "%s: %p is not a live communicator", what, (void *)c);
    if (c->xp) xp_leave(c);
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_comms.count(c)) return fail(ncclInvalidArgument, "%s: %p is not a live communicator", what, (void *)c);
    g_comms.erase(c);
    Clique *cl = c->clique;
    cl->ranks[c->rank] = nullptr;
    cl->gone[c->rank] = 1;
    g_cv.notify_all();
    if (--cl->live == 0) {
        for (auto &[seq, o] : cl->ops) delete o;
        g_cliques.erase(cl->key);
        delete cl;
    }
    c->magic = 0;
    delete c;
    return ncclSuccess;
}

std::atomic<uint64_t> g_id_counter{0};

} // namespace

NCCL_API ncclResult_t ncclGetVersion(int *version) {
    if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: null pointer");
    *version = 23000; // NCCL 2.30.0's code (major * 10000 + minor * 100 + patch)
    return ncclSuccess;
}

NCCL_API ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: null pointer");
    memset(id->internal, 0, sizeof id->internal);
    memcpy(id->internal, kIdMagic, sizeof kIdMagic);
    const int64_t pid = getpid();
    memcpy(id->internal + 16, &pid, 8);
    const uint64_t n = ++g_id_counter;
    memcpy(id->internal + 24, &n, 8);
    std::random_device rd;
    const uint64_t salt = ((uint64_t)rd() << 32) ^ rd();
    memcpy(id->internal + 32, &salt, 8);
    return ncclSuccess;
}

NCCL_API ncclResult_t ncclCommInitRank(Comm **comm, int nranks, ncclUniqueId id, int rank) {
    return init_rank(comm, nranks, id, rank);
}
NCCL_API ncclResult_t ncclCommInitRankConfig(Comm **comm, int nranks, ncclUniqueId id, int rank, void *) {
    return init_rank(comm, nranks, id, rank);
}

NCCL_API ncclResult_t ncclCommInitAll(Comm **comms, int ndev, const int *devlist) {
    if (!comms) return fail(ncclInvalidArgument, "ncclCommInitAll: null communicator array");
    if (ndev < 1) return fail(ncclInvalidArgument, "ncclCommInitAll: %d devices", ndev);
    const int count = cyb_emu_device_count();
    for (int i = 0; i < ndev; ++i) {
        const int d = devlist ? devlist[i] : i;
        if (d < 0 || d >= count)
            return fail(ncclInvalidArgument, "ncclCommInitAll: device %d of %d (CYB_EMU_DEVICES=%d)", d, count, count);
        for (int j = 0; j < i; ++j)
            if ((devlist ? devlist[j] : j) == d)
                return fail(ncclInvalidUsage, "ncclCommInitAll: device %d twice in the list (duplicate GPU)", d);
    }
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    for (int i = 0; i < ndev; ++i) {
        Comm *c = nullptr;
        if (ncclResult_t r = join(&c, ndev, id, i, devlist ? devlist[i] : i)) return r;
        comms[i] = c;
    }
    std::lock_guard<std::mutex> lock(g_mu);
    Clique *cl = comms[0]->clique;
    std::fill(cl->init.arrived.begin(), cl->init.arrived.end(), 1);
    cl->init.narrived = ndev;
    cl->init.done = true;
    return ncclSuccess;
}

NCCL_API ncclResult_t ncclCommFinalize(Comm *comm) {
    if (!live(comm)) return fail(ncclInvalidArgument, "ncclCommFinalize: %p is not a live communicator", (void *)comm);
    return ncclSuccess; // blocking mode: nothing is left in flight
}
// As NCCL's, waits for the collectives queued on the communicator's device first.
NCCL_API ncclResult_t ncclCommDestroy(Comm *comm) {
    if (live(comm))
        for (void *s : comm->queued_on) (void)cyb_emu_stream_drain(s);
    return leave(comm, "ncclCommDestroy");
}
NCCL_API ncclResult_t ncclCommAbort(Comm *comm) { return leave(comm, "ncclCommAbort"); }

NCCL_API ncclResult_t ncclCommGetAsyncError(Comm *comm, ncclResult_t *error) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!comm || !g_comms.count(comm) || !error)
        return fail(ncclInvalidArgument, "ncclCommGetAsyncError: %p is not a live communicator", (void *)comm);
    *error = comm->clique->broken || (comm->xp && comm->xp->h->broken) ? ncclRemoteError : ncclSuccess;
    return ncclSuccess;
}
NCCL_API ncclResult_t ncclCommCount(const Comm *comm, int *count) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!comm || !g_comms.count(const_cast<Comm *>(comm)) || !count)
        return fail(ncclInvalidArgument, "ncclCommCount: %p is not a live communicator", (const void *)comm);
    *count = comm->clique->nranks;
    return ncclSuccess;
}
NCCL_API ncclResult_t ncclCommCuDevice(const Comm *comm, int *device) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!comm || !g_comms.count(const_cast<Comm *>(comm)) || !device)
        return fail(ncclInvalidArgument, "ncclCommCuDevice: %p is not a live communicator", (const void *)comm);
    *device = comm->device;
    return ncclSuccess;
}
NCCL_API ncclResult_t ncclCommUserRank(const Comm *comm, int *rank) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!comm || !g_comms.count(const_cast<Comm *>(comm)) || !rank)
        return fail(ncclInvalidArgument, "ncclCommUserRank: %p is not a live communicator", (const void *)comm);
    *rank = comm->rank;
    return ncclSuccess;
}

NCCL_API const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}
// The message of this thread's last error (NCCL keeps one per thread, whatever `comm`).
NCCL_API const char *ncclGetLastError(Comm *) { return t_last_error.c_str(); }

NCCL_API ncclResult_t ncclGroupStart() {
    ++t_group.depth;
    return ncclSuccess;
}
NCCL_API ncclResult_t ncclGroupEnd() {
    if (t_group.depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--t_group.depth > 0) return ncclSuccess;
    std::vector<Call> calls;
    calls.swap(t_group.calls);
    const ncclResult_t queued = t_group.error;
    t_group.error = ncclSuccess;
    const ncclResult_t r = run_calls(calls);
    return queued ? queued : r;
}

NCCL_API ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op, Comm *comm,
                                    void *stream) {
    return enqueue(Call{comm, kAllReduce, send, recv, count, dtype, op, 0}, stream);
}
NCCL_API ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, int dtype, int op, Comm *comm,
                                        void *stream) {
    return enqueue(Call{comm, kReduceScatter, send, recv, recvcount, dtype, op, 0}, stream);
}
NCCL_API ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, int dtype, Comm *comm, void *stream) {
    return enqueue(Call{comm, kAllGather, send, recv, sendcount, dtype, 0, 0}, stream);
}
NCCL_API ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, int dtype, int root, Comm *comm,
                                    void *stream) {
    return enqueue(Call{comm, kBroadcast, send, recv, count, dtype, 0, root}, stream);
}
NCCL_API ncclResult_t ncclBcast(void *buff, size_t count, int dtype, int root, Comm *comm, void *stream) {
    return ncclBroadcast(buff, buff, count, dtype, root, comm, stream);
}
NCCL_API ncclResult_t ncclReduce(const void *send, void *recv, size_t count, int dtype, int op, int root, Comm *comm,
                                 void *stream) {
    return enqueue(Call{comm, kReduce, send, recv, count, dtype, op, root}, stream);
}

// Present so that a loader finds them, but not emulated: each says so.
#define NOT_EMULATED(name, ...)                                                                     \
    NCCL_API ncclResult_t name(__VA_ARGS__) {                                                       \
        return fail(ncclInvalidUsage, #name " is not emulated by the cyb emulator's stand-in NCCL"); \
    }
NOT_EMULATED(ncclSend, const void *, size_t, int, int, Comm *, void *)
NOT_EMULATED(ncclRecv, void *, size_t, int, int, Comm *, void *)
NOT_EMULATED(ncclCommSplit, Comm *, int, int, Comm **, void *)
NOT_EMULATED(ncclRedOpCreatePreMulSum, int *, void *, int, int, Comm *)
NOT_EMULATED(ncclRedOpDestroy, int, Comm *)
NOT_EMULATED(ncclMemAlloc, void **, size_t)
NOT_EMULATED(ncclMemFree, void *)

// Runs kernels/pause_attention.cu on the CPU (shim/cuda_bf16.h emulates the device) and
// compares it with a naive f64 implementation of SPEC section 3, straight from the
// definition. A logic check of indexing, tiling, masking and the backward's math, for
// machines without a GPU; it says nothing about races, timing or the real hardware.
// Build and run: bash scripts/host_emu/run.sh
#include "../../kernels/pause_attention.cu"

#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

thread_local dim3u threadIdx, blockIdx;
dim3u blockDim, gridDim;
std::barrier<> *emu_block_barrier;
std::barrier<> *emu_warp_barrier[32];
float emu_shfl[1024];
uint32_t emu_mma_a[32][32][4];
uint32_t emu_mma_b[32][32][2];

// Runs `body` for every thread of every block, one block at a time.
static void launch(dim3u grid, unsigned threads, const std::function<void()> &body) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    std::barrier<> block((std::ptrdiff_t)threads);
    std::vector<std::barrier<> *> warps;
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
    emu_block_barrier = &block;
    for (unsigned w = 0; w < threads / 32; ++w) emu_warp_barrier[w] = warps[w];
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        body();
                    });
                for (auto &t : ts) t.join();
            }
    for (auto *w : warps) delete w;
}

struct Shape { int B, K, T, H, Dh, mode; }; // mode: PauseMode (0 shared, 1 private)

// Naive f64 reference: forward (out, lse) and backward (dqkv) by the definition.
static void reference(const Shape &s, const std::vector<double> &qkv, const std::vector<double> &dout,
                      std::vector<double> &out, std::vector<double> &lse, std::vector<double> &dqkv) {
    const int K1 = s.K + 1, d = s.H * s.Dh;
    const double scale = 1.0 / std::sqrt((double)s.Dh);
    auto row = [&](int b, int k, int t) { return ((size_t)(b * K1 + k) * s.T + t); };
    out.assign(row(s.B, 0, 0) * d, 0.0);
    lse.assign((size_t)s.B * s.H * K1 * s.T, 0.0);
    dqkv.assign(qkv.size(), 0.0);
    for (int b = 0; b < s.B; ++b)
        for (int h = 0; h < s.H; ++h)
            for (int k = 0; k < K1; ++k)
                for (int t = 0; t < s.T; ++t) {
                    std::vector<std::pair<int, int>> keys;
                    for (int k2 = 0; k2 < K1; ++k2)
                        for (int t2 = 0; t2 < s.T; ++t2)
                            if (pause_visible(s.mode, t, k, t2, k2)) keys.push_back({t2, k2});
                    const double *q = &qkv[row(b, k, t) * 3 * d + h * s.Dh];
                    const double *g = &dout[row(b, k, t) * d + h * s.Dh];
                    std::vector<double> sc, p, dp;
                    double m = -INFINITY;
                    for (auto [t2, k2] : keys) {
                        const double *kr = &qkv[row(b, k2, t2) * 3 * d + d + h * s.Dh];
                        double x = 0;
                        for (int c = 0; c < s.Dh; ++c) x += q[c] * kr[c];
                        sc.push_back(x * scale);
                        m = std::max(m, x * scale);
                    }
                    double sum = 0;
                    for (double x : sc) sum += std::exp(x - m);
                    lse[(((size_t)b * s.H + h) * K1 + k) * s.T + t] = m + std::log(sum);
                    double D = 0;
                    for (size_t j = 0; j < keys.size(); ++j) {
                        auto [t2, k2] = keys[j];
                        const double *vr = &qkv[row(b, k2, t2) * 3 * d + 2 * d + h * s.Dh];
                        const double pj = std::exp(sc[j] - m) / sum;
                        p.push_back(pj);
                        double x = 0;
                        for (int c = 0; c < s.Dh; ++c) {
                            out[row(b, k, t) * d + h * s.Dh + c] += pj * vr[c];
                            x += g[c] * vr[c];
                        }
                        dp.push_back(x);
                        D += pj * x;
                    }
                    for (size_t j = 0; j < keys.size(); ++j) {
                        auto [t2, k2] = keys[j];
                        const double ds = p[j] * (dp[j] - D) * scale;
                        const double *kr = &qkv[row(b, k2, t2) * 3 * d + d + h * s.Dh];
                        double *dq = &dqkv[row(b, k, t) * 3 * d + h * s.Dh];
                        double *dk = &dqkv[row(b, k2, t2) * 3 * d + d + h * s.Dh];
                        double *dv = &dqkv[row(b, k2, t2) * 3 * d + 2 * d + h * s.Dh];
                        for (int c = 0; c < s.Dh; ++c) {
                            dq[c] += ds * kr[c];
                            dk[c] += ds * q[c];
                            dv[c] += p[j] * g[c];
                        }
                    }
                }
}

static double max_err(const char *what, const std::vector<double> &got, const std::vector<double> &want,
                      double tol, int &fails) {
    double worst = 0, scale = 1e-30;
    size_t bad = 0, first = (size_t)-1;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(got[i] - want[i]);
        if (!(e <= tol * scale)) { ++bad; if (first == (size_t)-1) first = i; }
        if (!(e <= worst)) worst = e; // NaN propagates into worst
    }
    if (bad) {
        ++fails;
        std::printf("  FAIL %s: %zu of %zu beyond %.1e*max|ref| (first [%zu] got %.6e want %.6e)\n", what,
                    bad, got.size(), tol, first, got[first], want[first]);
    }
    return worst / scale;
}

template <typename T, int DH>
static int run_case(Shape s, unsigned seed, double tol_out, double tol_grad) {
    const int K1 = s.K + 1, d = s.H * s.Dh;
    const size_t rows = (size_t)s.B * K1 * s.T;
    std::mt19937 gen(seed);
    std::normal_distribution<double> nd;
    auto rnd = [&](size_t n) {
        std::vector<T> v(n);
        for (auto &x : v) x = from_float<T>((float)nd(gen));
        return v;
    };
    std::vector<T> qkv = rnd(rows * 3 * d), dout = rnd(rows * d);
    const T nan = from_float<T>(NAN);
    std::vector<T> out(rows * d, nan), dqkv(rows * 3 * d, nan);
    std::vector<float> lse(rows * s.H, NAN), delta(rows * s.H, NAN);
    AttnIdx ix{s.B, K1, s.T, s.H, s.mode};
    constexpr int ROWS = AttnCfg<DH>::ROWS;
    const dim3u grid{(unsigned)((s.T + ROWS - 1) / ROWS), (unsigned)K1, (unsigned)(s.B * s.H)};
    launch(grid, 256, [&] { attn_forward<T, DH>(qkv.data(), out.data(), lse.data(), ix); });
    const unsigned warps = rows * s.H;
    launch({(warps + 7) / 8, 1, 1}, 256, [&] { attn_delta<T>(out.data(), dout.data(), delta.data(), ix, DH); });
    launch(grid, 256, [&] { attn_dq<T, DH>(qkv.data(), dout.data(), lse.data(), delta.data(), dqkv.data(), ix); });
    launch(grid, 256, [&] { attn_dkdv<T, DH>(qkv.data(), dout.data(), lse.data(), delta.data(), dqkv.data(), ix); });

    auto f64 = [](const auto &v) { std::vector<double> r; for (auto x : v) r.push_back(to_float(x)); return r; };
    std::vector<double> ro, rl, rg;
    reference(s, f64(qkv), f64(dout), ro, rl, rg);
    int fails = 0;
    const double eo = max_err("out", f64(out), ro, tol_out, fails);
    const double el = max_err("lse", f64(lse), rl, 1e-5, fails);
    const double eg = max_err("dqkv", f64(dqkv), rg, tol_grad, fails);
    if constexpr (sizeof(T) == 2) { // bf16: dQ and dK/dV on tensor cores, same inputs
        std::vector<T> dqkv2(dqkv.size(), nan); // dq_tc and dkdv_tc must write it all
        launch({(unsigned)((s.T + TC_BQ - 1) / TC_BQ), (unsigned)K1, (unsigned)(s.B * s.H)}, TC_THREADS,
               [&] { attn_dq_tc<DH>(qkv.data(), dout.data(), lse.data(), delta.data(), dqkv2.data(), ix); });
        launch({(unsigned)((s.T + TC_BQ - 1) / TC_BQ), (unsigned)K1, (unsigned)(s.B * s.H)}, TC_THREADS,
               [&] { attn_dkdv_tc<DH>(qkv.data(), dout.data(), lse.data(), delta.data(), dqkv2.data(), ix); });
        const double e2 = max_err("dqkv (tensor cores)", f64(dqkv2), rg, tol_grad, fails);
        std::printf("     (next case) dqkv from dq_tc + dkdv_tc: rel err %.2e\n", e2);
    }
    std::printf("%s %-7s %-5s B%d K%d T%d H%d Dh%d: rel err out %.2e lse %.2e dqkv %.2e\n",
                fails ? "FAIL" : "ok  ", s.mode == PAUSE_SHARED ? "shared" : "private",
                sizeof(T) == 4 ? "f32" : "bf16", s.B, s.K, s.T, s.H, s.Dh, eo, el, eg);
    return fails;
}

// The tensor-core forward (bf16) against the same reference (out and lse only).
template <int DH> static int run_tc_case(Shape s, unsigned seed) {
    const int K1 = s.K + 1, d = s.H * s.Dh;
    const size_t rows = (size_t)s.B * K1 * s.T;
    std::mt19937 gen(seed);
    std::normal_distribution<double> nd;
    std::vector<__nv_bfloat16> qkv(rows * 3 * d), out(rows * d, __float2bfloat16_rn(NAN));
    for (auto &x : qkv) x = __float2bfloat16_rn((float)nd(gen));
    std::vector<float> lse(rows * s.H, NAN);
    AttnIdx ix{s.B, K1, s.T, s.H, s.mode};
    const dim3u grid{(unsigned)((s.T + TC_BQ - 1) / TC_BQ), (unsigned)K1, (unsigned)(s.B * s.H)};
    launch(grid, TC_THREADS, [&] { attn_forward_tc<DH>(qkv.data(), out.data(), lse.data(), ix); });
    auto f64 = [](const auto &v) { std::vector<double> r; for (auto x : v) r.push_back(to_float(x)); return r; };
    std::vector<double> ro, rl, rg, dout(rows * d, 0.0);
    reference(s, f64(qkv), dout, ro, rl, rg);
    int fails = 0;
    const double eo = max_err("out", f64(out), ro, 8e-3, fails);
    const double el = max_err("lse", f64(lse), rl, 1e-5, fails);
    std::printf("%s %-7s tc-bf16 B%d K%d T%d H%d Dh%d: rel err out %.2e lse %.2e\n", fails ? "FAIL" : "ok  ",
                s.mode == PAUSE_SHARED ? "shared" : "private", s.B, s.K, s.T, s.H, s.Dh, eo, el);
    return fails;
}

int main(int argc, char **argv) {
    // Optional argument: "shared" or "private" runs that mode only (default: both).
    int fails = 0;
    for (int mode : {PAUSE_SHARED, PAUSE_PRIVATE}) {
        if (argc > 1 && std::string(argv[1]) != (mode == PAUSE_SHARED ? "shared" : "private")) continue;
        fails += run_tc_case<64>({1, 0, 1, 1, 64, mode}, 21);
        fails += run_tc_case<64>({2, 3, 47, 2, 64, mode}, 22);
        fails += run_tc_case<64>({1, 3, 130, 1, 64, mode}, 23);
        fails += run_tc_case<128>({1, 7, 70, 1, 128, mode}, 24);
        fails += run_tc_case<128>({1, 2, 64, 2, 128, mode}, 25);
        // Tolerances relative to max |ref|: f32 ~1e-6 expected; bf16 rounds the outputs.
        fails += run_case<float, 64>({1, 0, 1, 1, 64, mode}, 1, 1e-5, 1e-4);
        fails += run_case<float, 64>({2, 3, 47, 2, 64, mode}, 2, 1e-5, 1e-4);
        fails += run_case<float, 64>({1, 3, 130, 1, 64, mode}, 3, 1e-5, 1e-4);
        fails += run_case<float, 128>({1, 7, 1, 2, 128, mode}, 4, 1e-5, 1e-4);
        fails += run_case<float, 128>({1, 7, 70, 1, 128, mode}, 5, 1e-5, 1e-4);
        fails += run_case<float, 64>({1, 1, 64, 1, 64, mode}, 8, 1e-5, 1e-4);   // exactly one tile
        fails += run_case<float, 128>({2, 2, 64, 1, 128, mode}, 9, 1e-5, 1e-4); // exactly two tiles
        fails += run_case<__nv_bfloat16, 64>({2, 3, 47, 1, 64, mode}, 6, 8e-3, 2e-2);
        fails += run_case<__nv_bfloat16, 128>({2, 7, 20, 2, 128, mode}, 10, 8e-3, 2e-2);
        fails += run_case<__nv_bfloat16, 64>({1, 3, 130, 1, 64, mode}, 11, 8e-3, 2e-2);  // 3 tiles
        fails += run_case<__nv_bfloat16, 128>({1, 1, 150, 1, 128, mode}, 12, 8e-3, 2e-2); // 3 tiles
        fails += run_case<__nv_bfloat16, 128>({1, 2, 33, 1, 128, mode}, 7, 8e-3, 2e-2);
    }
    std::printf(fails ? "host_emu: %d FAILURES\n" : "host_emu: all ok\n", fails);
    return fails ? 1 : 0;
}

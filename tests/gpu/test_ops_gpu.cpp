// `make test-gpu`: every CUDA op of the forward pass (kernels/cuda/ops.cuh) against its CPU twin
// (kernels/cpu/ops_cpu.h), llama.cpp test-backend-ops style: random inputs of awkward shapes,
// the normalized error ‖gpu − cpu‖ / ‖cpu‖ printed per op and shape and held to a tolerance
// (1e-5 for f32 elementwise ops, 1e-4 for attention (3e-3 on tensor cores), bf16-aware bounds for GEMMs; argmax and
// bf16 rounding exact). Without a GPU (or in a build without CUDA) every case says it skipped
// and passes.
#include <doctest/doctest.h>

#include "gpu_test_util.h"
#include "../test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/model_config.h"
#include "kernels/cpu/ops_cpu.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops_check.h"
#endif

using namespace stitch;

namespace {

bool skipped(const char* what) { return test::gpu_skipped(what); }

#ifdef STITCH_HAVE_CUDA

namespace check = cuda::check;

using test::randn;

std::vector<float> rounded_bf16(std::vector<float> v) {
    for (auto& x : v) x = cpu::round_bf16(x);
    return v;
}

// ‖a − b‖ / ‖b‖ (Frobenius), infinite when the sizes differ or a value is not finite.
double nerr(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return INFINITY;
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
    }
    const double e = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    return std::isfinite(e) ? e : INFINITY;
}

// printf into a std::string, for the shape column.
[[gnu::format(printf, 1, 2)]] std::string shape(const char* fmt, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// One row of the table, and its assertion.
void report(const char* op, const std::string& shp, double e, double tol) {
    std::printf("test-gpu: op %-14s shape %-28s nerr %.2e\n", op, shp.c_str(), e);
    CAPTURE(op);
    CAPTURE(shp);
    CHECK(e <= tol);
}

const char* act_name(Activation a) {
    switch (a) {
        case Activation::SiLU: return "silu";
        case Activation::GeluTanh: return "gelu_tanh";
        case Activation::Gelu: return "gelu";
    }
    return "?";
}

// A packed-attention case: sequences s with len[s] new rows after pos0[s] cached ones, rows
// packed in order; random q and per-sequence K/V with strides wider than the heads need.
struct AttnCase {
    int heads, kv_heads, hd;
    std::vector<int32_t> len, pos0;
};

void run_attention(const char* op, const AttnCase& c, int window, float softcap, uint64_t seed, double tol = 1e-4) {
    const int n_seqs = int(c.len.size());
    const int q_stride = c.heads * c.hd + 6;     // q is a view into a wider (fused qkv) row
    const int kv_stride = c.kv_heads * c.hd + 2;  // cache rows wider than the heads too
    std::vector<int32_t> row0(static_cast<size_t>(n_seqs));
    int rows = 0, max_len = 0, max_ctx = 0;
    for (int s = 0; s < n_seqs; ++s) {
        row0[size_t(s)] = rows;
        rows += c.len[size_t(s)];
        max_len = std::max(max_len, c.len[size_t(s)]);
        max_ctx = std::max(max_ctx, c.pos0[size_t(s)] + c.len[size_t(s)]);
    }
    auto q = randn(size_t(std::max(rows, 1)) * q_stride, seed);
    std::vector<std::vector<float>> K, V;
    std::vector<const float*> kb, vb;
    for (int s = 0; s < n_seqs; ++s) {
        const size_t ctx = size_t(c.pos0[size_t(s)] + c.len[size_t(s)]);
        K.push_back(randn(std::max<size_t>(ctx, 1) * kv_stride, seed + 100 + uint64_t(s)));
        V.push_back(randn(std::max<size_t>(ctx, 1) * kv_stride, seed + 200 + uint64_t(s)));
    }
    for (int s = 0; s < n_seqs; ++s) kb.push_back(K[size_t(s)].data()), vb.push_back(V[size_t(s)].data());
    const float scale = 1.0f / std::sqrt(float(c.hd));
    std::vector<float> ref(size_t(rows) * c.heads * c.hd, 0.0f);
    cpu::attention(ref.data(), q.data(), q_stride, n_seqs, row0.data(), c.len.data(), c.pos0.data(), kb.data(), vb.data(),
                   kv_stride, c.heads, c.kv_heads, c.hd, scale, window, softcap);
    auto got = check::attention(q, q_stride, row0, c.len, c.pos0, K, V, kv_stride, c.heads, c.kv_heads, c.hd, scale,
                                window, softcap);
    report(op,
           shape("h%d/%d d%d L%d C%d w%d c%g", c.heads, c.kv_heads, c.hd, max_len, max_ctx, window, double(softcap)),
           nerr(got, ref), tol);
}

#endif  // STITCH_HAVE_CUDA

}  // namespace

TEST_CASE("gpu ops: bf16 rounding and the embedding lookup equal the CPU exactly") {
    if (skipped("to_bf16 / embed CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    std::printf("test-gpu: %s\n", cuda::device_name(0).c_str());
    // random values plus the cases rounding gets wrong: ties both ways, the largest float, ±0, ±inf
    auto x = randn(1001, 1, 10.0f);
    const float specials[] = {1.0f,          1.0f + 0x1p-9f, 1.0f + 0x1p-8f,  1.0f + 3 * 0x1p-8f, 1.0f + 3 * 0x1p-9f,
                              -1.0f - 0x1p-8f, 3.4028235e38f, -3.4028235e38f, 0.0f,               -0.0f,
                              INFINITY,      -INFINITY,      65504.0f,        1e-30f};
    x.insert(x.end(), std::begin(specials), std::end(specials));
    const auto got = check::to_bf16(x);
    REQUIRE(got.size() == x.size());
    size_t mismatches = 0;
    for (size_t i = 0; i < x.size(); ++i)
        if (got[i] != cpu::round_bf16(x[i]) || std::signbit(got[i]) != std::signbit(cpu::round_bf16(x[i])))
            ++mismatches;
    std::printf("test-gpu: op %-14s shape %-28s mismatches %zu\n", "to_bf16", "n=1015", mismatches);
    CHECK(mismatches == 0);

    for (int d : {1, 17, 1000}) {
        const int vocab = 50;
        const auto table = randn(size_t(vocab) * d, uint64_t(d) + 2);
        const std::vector<int32_t> tokens = {3, 0, 49, 3, 17, 17, 8, 1, 0};
        for (float scale : {1.0f, std::sqrt(float(d))}) {
            const auto table_bf = rounded_bf16(table);
            std::vector<float> ref(tokens.size() * size_t(d));
            cpu::embed(ref.data(), table_bf.data(), tokens.data(), int(tokens.size()), d, scale);
            const auto got_e = check::embed(table, tokens, d, scale);
            report("embed", shape("n=%d d=%d scale=%g", int(tokens.size()), d, double(scale)), nerr(got_e, ref), 1e-5);
            if (scale == 1.0f) CHECK(got_e == ref);  // a bf16 value widened is exact
        }
    }
#endif
}

TEST_CASE("gpu ops: norms, RoPE, activations, soft-cap, add and copy equal the CPU") {
    if (skipped("elementwise ops CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    for (auto [n, d] : {std::pair{1, 1}, {3, 17}, {17, 129}, {5, 1000}, {2, 4096}}) {
        const auto x = randn(size_t(n) * d, uint64_t(n * 31 + d), 2.0f), w = randn(size_t(d), uint64_t(d) + 7);
        std::vector<float> ref(x.size());
        cpu::rmsnorm(ref.data(), x.data(), w.data(), n, d, 1e-6f);
        report("rmsnorm", shape("n=%d d=%d", n, d), nerr(check::rmsnorm(x, w, n, d, 1e-6f), ref), 1e-5);
        // the residual add fused with the norm: the CPU's add then rmsnorm, and bit for bit the
        // GPU's two kernels
        const auto r = randn(x.size(), uint64_t(n * 37 + d));
        auto sum = x;
        cpu::add(sum.data(), r.data(), int64_t(sum.size()));
        cpu::rmsnorm(ref.data(), sum.data(), w.data(), n, d, 1e-6f);
        ref.insert(ref.end(), sum.begin(), sum.end());
        const auto fused = check::add_rmsnorm(x, r, w, n, d, 1e-6f, true);
        report("add_rmsnorm", shape("n=%d d=%d", n, d), nerr(fused, ref), 1e-5);
        CHECK(fused == check::add_rmsnorm(x, r, w, n, d, 1e-6f, false));
    }

    for (int hd : {8, 40, 64, 128, 256}) {
        const int n = 3, heads = 5, col0 = 3, stride = heads * hd + col0 + 5;
        const auto x = randn(size_t(n) * stride, uint64_t(hd) + 11), w = randn(size_t(hd), uint64_t(hd) + 12);
        auto ref = x;
        cpu::head_rmsnorm(ref.data(), n, stride, col0, heads, hd, w.data(), 1e-6f);
        report("head_rmsnorm", shape("n=%d heads=%d hd=%d", n, heads, hd),
               nerr(check::head_rmsnorm(x, n, stride, col0, heads, hd, w, 1e-6f), ref), 1e-5);
    }

    for (int hd : {8, 40, 64, 128, 256}) {
        const int n = 17, heads = 3, col0 = 2, stride = heads * hd + col0 + 3;
        const auto x = randn(size_t(n) * stride, uint64_t(hd) + 21);
        std::vector<int32_t> pos(static_cast<size_t>(n));
        std::mt19937 rng(static_cast<uint32_t>(hd));
        for (auto& p : pos) p = int32_t(rng() % 5000);
        pos[0] = 0;
        std::vector<float> inv_freq(size_t(hd / 2));
        for (int k = 0; k < hd / 2; ++k) inv_freq[size_t(k)] = float(1.0 / std::pow(10000.0, 2.0 * k / hd));
        auto ref = x;
        cpu::rope(ref.data(), n, stride, col0, heads, hd, pos.data(), inv_freq.data());
        report("rope", shape("n=%d heads=%d hd=%d", n, heads, hd),
               nerr(check::rope(x, n, stride, col0, heads, hd, pos, inv_freq), ref), 1e-5);

        // RoPE on a fused qkv row's q and k heads with the cache append (rows alternate between two
        // sequences; positions distinct within each): the CPU's rope, then k and v copied
        const int qh = 4, kh = 2, qd = qh * hd, kvd = kh * hd, w = qd + 2 * kvd, slots = 2, cap = 5000;
        const auto qkv = randn(size_t(n) * w, uint64_t(hd) + 23);
        std::vector<int32_t> slot(static_cast<size_t>(n)), apos(static_cast<size_t>(n));
        for (int r = 0; r < n; ++r) slot[size_t(r)] = r % 2, apos[size_t(r)] = (r / 2) * 37 % cap;
        auto want = qkv;
        cpu::rope(want.data(), n, w, 0, qh + kh, hd, apos.data(), inv_freq.data());
        std::vector<float> kc(size_t(slots) * cap * kvd, 0.0f), vc(kc.size(), 0.0f);
        for (int r = 0; r < n; ++r) {
            const size_t at = (size_t(slot[size_t(r)]) * cap + size_t(apos[size_t(r)])) * kvd;
            std::copy_n(&want[size_t(r) * w + qd], kvd, &kc[at]);
            std::copy_n(&want[size_t(r) * w + qd + kvd], kvd, &vc[at]);
        }
        want.insert(want.end(), kc.begin(), kc.end());
        want.insert(want.end(), vc.begin(), vc.end());
        const auto got = check::rope_append(qkv, n, w, qh, kh, hd, apos, inv_freq, slot, slots, cap);
        report("rope_append", shape("n=%d heads=%d/%d hd=%d", n, qh, kh, hd), nerr(got, want), 1e-5);
        // the rotation is rope's, float for float
        CHECK(std::equal(got.begin(), got.begin() + qkv.size(), check::rope(qkv, n, w, 0, qh + kh, hd, apos, inv_freq).begin()));
    }

    for (Activation act : {Activation::SiLU, Activation::GeluTanh, Activation::Gelu})
        for (auto [n, I] : {std::pair{1, 1}, {3, 17}, {7, 1000}}) {
            const auto gu = randn(size_t(n) * 2 * I, uint64_t(n * 7 + I), 3.0f);
            std::vector<float> ref(size_t(n) * I);
            cpu::gated_act(act, ref.data(), gu.data(), n, I);
            report(act_name(act), shape("n=%d I=%d", n, I), nerr(check::gated_act(act, gu, n, I), ref), 1e-5);
        }

    for (int count : {1, 1001}) {
        const auto x = randn(size_t(count), uint64_t(count) + 3, 60.0f);
        auto ref = x;
        cpu::softcap(ref.data(), int64_t(ref.size()), 30.0f);
        report("softcap", shape("n=%d cap=30", count), nerr(check::softcap(x, 30.0f), ref), 1e-5);
    }

    for (int count : {1, 1000, 100003}) {
        const auto a = randn(size_t(count), uint64_t(count) + 4), b = randn(size_t(count), uint64_t(count) + 5);
        auto ref = a;
        cpu::add(ref.data(), b.data(), int64_t(ref.size()));
        const auto got = check::add(a, b);
        report("add", shape("n=%d", count), nerr(got, ref), 1e-5);
        CHECK(got == ref);  // one rounding each side
    }

    for (auto [rows, cols] : {std::pair{1, 1}, {5, 17}, {3, 1000}}) {
        const int dst_ld = cols + 3, src_ld = cols + 16;
        const auto src = randn(size_t(rows) * src_ld, uint64_t(rows * 13 + cols));
        const std::vector<float> dst(size_t(rows) * dst_ld, -1.0f);
        auto ref = dst;
        cpu::copy2d(ref.data(), dst_ld, src.data() + 2, src_ld, rows, cols);
        // the device copy starts at the same offset: pass src without its first two floats
        const std::vector<float> src_off(src.begin() + 2, src.end());
        const auto got = check::copy2d(dst, dst_ld, src_off, src_ld, rows, cols);
        report("copy2d", shape("rows=%d cols=%d", rows, cols), nerr(got, ref), 1e-5);
        CHECK(got == ref);
    }
#endif
}

TEST_CASE("gpu ops: steering rows and greedy argmax equal the CPU") {
    if (skipped("steering / argmax CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    for (int d : {1, 17, 1000}) {
        const int n = 9;
        const auto x = randn(size_t(n) * d, uint64_t(d) + 41);
        const std::vector<int32_t> rows = {8, 0, 4};
        const auto v = randn(size_t(d), uint64_t(d) + 42);
        auto u = randn(size_t(d), uint64_t(d) + 43);
        double norm = 0;
        for (float e : u) norm += double(e) * e;
        for (auto& e : u) e = float(e / std::sqrt(norm));
        const auto src = randn(rows.size() * size_t(d), uint64_t(d) + 44);
        for (float alpha : {5.0f, 0.5f, 1.0f}) {
            auto ref = x;
            cpu::add_rows(ref.data(), d, rows.data(), int(rows.size()), v.data(), alpha);
            report("add_rows", shape("n=%d d=%d alpha=%g", n, d, double(alpha)),
                   nerr(check::add_rows(x, d, rows, v, alpha), ref), 1e-5);
            ref = x;
            cpu::ablate_rows(ref.data(), d, rows.data(), int(rows.size()), u.data(), alpha);
            report("ablate_rows", shape("n=%d d=%d alpha=%g", n, d, double(alpha)),
                   nerr(check::ablate_rows(x, d, rows, u, alpha), ref), 1e-5);
            ref = x;
            cpu::replace_rows(ref.data(), d, rows.data(), int(rows.size()), src.data(), d, alpha);
            const auto got = check::replace_rows(x, d, rows, src, alpha);
            report("replace_rows", shape("n=%d d=%d alpha=%g", n, d, double(alpha)), nerr(got, ref), 1e-5);
            if (alpha == 1.0f) CHECK(got == ref);  // alpha 1 copies
            ref = x;  // one vector for every row (src_ld 0)
            cpu::replace_rows(ref.data(), d, rows.data(), int(rows.size()), v.data(), 0, alpha);
            report("replace_rows (one vector)", shape("n=%d d=%d alpha=%g", n, d, double(alpha)),
                   nerr(check::replace_rows(x, d, rows, v, alpha), ref), 1e-5);
        }
    }

    for (int cols : {1, 3, 1000, 151936}) {
        const int n = 5;
        auto x = randn(size_t(n) * cols, uint64_t(cols) + 51);
        if (cols > 1) {
            // row 1: the maximum twice (the first wins); row 2: all equal (index 0); row 3: -inf everywhere
            float* r1 = &x[size_t(cols)];
            r1[cols - 1] = 100.0f;
            r1[cols / 2] = 100.0f;
            std::fill(x.begin() + 2 * cols, x.begin() + 3 * cols, 0.25f);
            std::fill(x.begin() + 3 * cols, x.begin() + 4 * cols, -INFINITY);
        }
        std::vector<int32_t> ref(static_cast<size_t>(n));
        cpu::argmax_rows(ref.data(), x.data(), n, cols);
        const auto got = check::argmax_rows(x, n, cols);
        size_t wrong = 0;
        for (size_t i = 0; i < ref.size(); ++i) wrong += got.size() != ref.size() || got[i] != ref[i];
        std::printf("test-gpu: op %-14s shape %-28s mismatches %zu\n", "argmax_rows", shape("n=%d cols=%d", n, cols).c_str(),
                    wrong);
        CHECK(got == ref);
        if (cols > 1) CHECK(ref[1] == cols / 2);
    }
#endif
}

TEST_CASE("gpu ops: matmul_gated (activation folded into the decode GEMV) equals gated_act then matmul_wt") {
    if (skipped("matmul_gated CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    for (Activation act : {Activation::SiLU, Activation::GeluTanh, Activation::Gelu})
        for (auto [out, in] : {std::pair{37, 53}, {64, 256}, {515, 1024}})
            for (int n : {1, 3, 8, 9}) {
                const auto gu = randn(size_t(n) * 2 * in, uint64_t(n * 100 + in), 2.0f);
                const auto W = randn(size_t(out) * in, uint64_t(out + in + 5));
                const auto bias = randn(size_t(out), uint64_t(out) + 3);
                const auto got = check::matmul_gated(gu, act, W, bias, n, out, in, true);
                // the CPU: the activation, then the GEMM on bf16 W (and bf16 x once cuBLAS takes over)
                std::vector<float> mid(size_t(n) * in), ref(size_t(n) * out);
                cpu::gated_act(act, mid.data(), gu.data(), n, in);
                if (n > check::kGemmSmallRows) mid = rounded_bf16(mid);
                cpu::matmul_wt(ref.data(), mid.data(), rounded_bf16(W).data(), bias.data(), n, out, in);
                report("matmul_gated", shape("%s n=%d out=%d in=%d", act_name(act), n, out, in), nerr(got, ref), 1e-3);
                // the separate kernels compute the same expressions (up to the compiler's FMA choices)
                CHECK(nerr(got, check::matmul_gated(gu, act, W, bias, n, out, in, false)) <= 1e-6);
            }
#endif
}

TEST_CASE("gpu ops: sample_rows draws the token cpu::sample_row draws for the same u") {
    if (skipped("sample_rows CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    struct Params {
        float temperature;
        int top_k;
        float top_p;
    };
    for (int cols : {1, 7, 1000, 5000, 151936})
        for (Params p : {Params{1.0f, 0, 1.0f}, Params{0.7f, 50, 1.0f}, Params{1.3f, 0, 0.9f}, Params{1.0f, 5, 0.5f},
                         Params{0.05f, 0, 0.95f}, Params{0.0f, 0, 1.0f}}) {
            const int n = 9;
            auto x = randn(size_t(n) * cols, uint64_t(cols) + 61);
            for (float& e : x) e *= 3.0f;
            if (cols > 2) {
                std::fill(x.begin() + cols, x.begin() + 2 * cols, 0.5f);  // row 1: flat (ties everywhere)
                x[size_t(2 * cols + 1)] = -INFINITY;                      // row 2: a -inf entry
            }
            std::vector<double> u(static_cast<size_t>(n));
            for (int i = 0; i < n; ++i) u[size_t(i)] = (i + 0.37) / n;
            std::vector<int32_t> ref(static_cast<size_t>(n));
            for (int i = 0; i < n; ++i)
                ref[size_t(i)] = cpu::sample_row(&x[size_t(i) * cols], cols, p.temperature, p.top_k, p.top_p, u[size_t(i)]);
            const auto got = check::sample_rows(x, n, cols, p.temperature, p.top_k, p.top_p, u);
            size_t wrong = 0;
            for (size_t i = 0; i < ref.size(); ++i) wrong += got.size() != ref.size() || got[i] != ref[i];
            std::printf("test-gpu: op %-14s shape %-40s mismatches %zu\n", "sample_rows",
                        shape("n=%d cols=%d T=%g k=%d p=%g", n, cols, double(p.temperature), p.top_k, double(p.top_p)).c_str(),
                        wrong);
            CHECK(got == ref);
        }
#endif
}

TEST_CASE("gpu ops: matmul_wt (GEMV kernel and cuBLAS) equals the CPU GEMM on bf16-rounded inputs") {
    if (skipped("matmul_wt CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    // (out, in): odd sizes take the scalar GEMV path, multiples of 8 the 16-byte vector path
    for (auto [out, in] : {std::pair{37, 53}, {3, 17}, {64, 256}, {129, 1000}, {515, 1024}})
        for (int n : {1, 2, 8, 9, 77, 512})
            for (bool with_bias : {false, true}) {
                const auto x = randn(size_t(n) * in, uint64_t(n * 1000 + in)), W = randn(size_t(out) * in, uint64_t(out + in));
                const auto bias = with_bias ? randn(size_t(out), uint64_t(out) + 9) : std::vector<float>{};
                const auto got = check::matmul_wt(x, W, bias, n, out, in);
                // what the GPU multiplies: bf16 W, and bf16 x once cuBLAS takes over
                const auto W_bf = rounded_bf16(W);
                const auto x_used = n > check::kGemmSmallRows ? rounded_bf16(x) : x;
                std::vector<float> ref(size_t(n) * out), ref_f32(ref.size());
                const float* b = with_bias ? bias.data() : nullptr;
                cpu::matmul_wt(ref.data(), x_used.data(), W_bf.data(), b, n, out, in);
                cpu::matmul_wt(ref_f32.data(), x.data(), W.data(), b, n, out, in);
                const std::string shp = shape("n=%d out=%d in=%d b=%d", n, out, in, int(with_bias));
                report("matmul_wt", shp, nerr(got, ref), 1e-3);
                report("matmul_wt/f32", shp, nerr(got, ref_f32), 1e-2);
            }
#endif
}

TEST_CASE("gpu ops: prefill attention (packed sequences, cached prefixes, GQA, windows, soft-caps) equals the CPU") {
    if (skipped("prefill attention CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    // four sequences: 70 new rows after 5 cached, one decode row after 90 (inside a prefill
    // batch), 37 fresh rows, 200 rows after 300 cached (longer than the windows)
    const std::vector<int32_t> len = {70, 1, 37, 200}, pos0 = {5, 90, 0, 300};
    // both kernels: CUDA cores (f32 throughout) and tensor cores (TF32 products; where the GPU
    // grants the shared memory, else the CUDA-core kernel runs again)
    for (int mode : {0, -1}) {
        check::set_prefill_attention(mode);
        const char* op = mode == 0 ? "attn_prefill" : "attn_prefill_tc";
        const double tol = mode == 0 ? 1e-4 : 3e-3;
        uint64_t seed = 1;
        for (auto [heads, kv_heads, hd] : {std::tuple{4, 4, 8}, {6, 3, 40}, {14, 2, 64}, {4, 2, 128}, {2, 1, 256}, {3, 3, 16}})
            for (int window : {0, 16, 129})
                for (float softcap : {0.0f, 2.5f})
                    run_attention(op, AttnCase{heads, kv_heads, hd, len, pos0}, window, softcap, seed++, tol);
        // a single fresh sequence of two rows (the smallest prefill) and one row per sequence mixed
        // with an empty sequence
        run_attention(op, AttnCase{8, 2, 64, {2}, {0}}, 0, 0.0f, seed++, tol);
        run_attention(op, AttnCase{8, 2, 64, {3, 0, 1}, {7, 4, 0}}, 4, 50.0f, seed++, tol);
        // 64-row tiles: exactly one, one and a row, and a long prompt
        run_attention(op, AttnCase{4, 1, 128, {64, 65, 513}, {0, 3, 0}}, 0, 0.0f, seed++, tol);
    }
    check::set_prefill_attention(-1);
#endif
}

TEST_CASE("gpu ops: decode attention (one row per sequence, split keys) equals the CPU") {
    if (skipped("decode attention CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    // contexts of 1, 33, 1000 and 5000 keys in one batch (many splits), plus an empty sequence;
    // then short contexts only (one split: the block writes the row itself)
    const std::vector<int32_t> len = {1, 1, 0, 1, 1}, pos0 = {0, 32, 10, 999, 4999};
    uint64_t seed = 1000;
    for (auto [heads, kv_heads, hd] : {std::tuple{8, 8, 64}, {8, 4, 128}, {14, 2, 40}, {4, 1, 256}, {7, 7, 16}, {2, 2, 8}})
        for (int window : {0, 16, 4096})
            for (float softcap : {0.0f, 2.5f})
                run_attention("attn_decode", AttnCase{heads, kv_heads, hd, len, pos0}, window, softcap, seed++);
    for (int window : {0, 16})
        run_attention("attn_decode", AttnCase{6, 2, 128, {1, 1, 1}, {0, 32, 100}}, window, 0.0f, seed++);
#endif
}

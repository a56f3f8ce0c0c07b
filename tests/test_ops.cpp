// Each CPU op against a plain double-precision reference written from its definition, on
// random inputs of awkward shapes (odd sizes, GQA, cached prefixes, sliding windows,
// soft-caps). These are the references the CUDA kernels will be compared against.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/ops.h"
#include "test_util.h"

using namespace stitch;

namespace {

using test::randn;

}  // namespace

TEST_CASE("ops: matmul_wt (GEMM and GEMV paths, with and without bias)") {
    const Ops& ops = cpu_ops();
    for (int n : {1, 7}) {
        const int out = 37, in = 53;
        auto x = randn(size_t(n) * in, 1), W = randn(size_t(out) * in, 2), b = randn(size_t(out), 3);
        for (bool with_bias : {false, true}) {
            std::vector<float> y(size_t(n) * out), ref(y.size());
            ops.matmul_wt(y.data(), x.data(), W.data(), with_bias ? b.data() : nullptr, n, out, in);
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < out; ++j) {
                    double s = with_bias ? b[size_t(j)] : 0.0;
                    for (int k = 0; k < in; ++k) s += double(x[size_t(i) * in + k]) * W[size_t(j) * in + k];
                    ref[size_t(i) * out + j] = float(s);
                }
            CHECK(test::rel_err(y, ref) < 1e-5);
        }
    }
}

TEST_CASE("ops: rmsnorm, head_rmsnorm, gated_act, softcap, add, embed, copy2d") {
    const Ops& ops = cpu_ops();
    const int n = 5, d = 33;
    auto x = randn(size_t(n) * d, 4), w = randn(size_t(d), 5);
    std::vector<float> y(x.size()), ref(x.size());
    ops.rmsnorm(y.data(), x.data(), w.data(), n, d, 1e-5f);
    for (int i = 0; i < n; ++i) {
        double ss = 0;
        for (int j = 0; j < d; ++j) ss += double(x[size_t(i * d + j)]) * x[size_t(i * d + j)];
        double inv = 1.0 / std::sqrt(ss / d + 1e-5);
        for (int j = 0; j < d; ++j) ref[size_t(i * d + j)] = float(x[size_t(i * d + j)] * inv * w[size_t(j)]);
    }
    CHECK(test::rel_err(y, ref) < 1e-6);

    // head_rmsnorm on heads 2 wide... of a row with other columns left alone
    const int stride = 29, hd = 6, heads = 3, col0 = 4;
    auto r = randn(size_t(n) * stride, 6), hw = randn(size_t(hd), 7);
    auto r2 = r;
    ops.head_rmsnorm(r2.data(), n, stride, col0, heads, hd, hw.data(), 1e-6f);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < stride; ++c) {
            const float got = r2[size_t(i * stride + c)];
            if (c < col0 || c >= col0 + heads * hd) {
                CHECK(got == r[size_t(i * stride + c)]);
                continue;
            }
            int h0 = col0 + (c - col0) / hd * hd;
            double ss = 0;
            for (int k = 0; k < hd; ++k) ss += double(r[size_t(i * stride + h0 + k)]) * r[size_t(i * stride + h0 + k)];
            double want = r[size_t(i * stride + c)] / std::sqrt(ss / hd + 1e-6) * hw[size_t(c - h0)];
            CHECK(got == doctest::Approx(want).epsilon(1e-5));
        }

    // gated activations: SwiGLU, GeGLU (tanh approximation) and exact-GELU GLU, over a range
    // wide enough to reach both tails
    const int I = 19;
    auto gu = randn(size_t(n) * 2 * I, 8, 3.0f);
    for (Activation act : {Activation::SiLU, Activation::GeluTanh, Activation::Gelu}) {
        CAPTURE(int(act));
        std::vector<float> m(size_t(n) * I), mref(m.size());
        ops.gated_act(act, m.data(), gu.data(), n, I);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < I; ++j) {
                double g = gu[size_t(i * 2 * I + j)], u = gu[size_t(i * 2 * I + I + j)], a = 0;
                switch (act) {
                    case Activation::SiLU: a = g / (1 + std::exp(-g)); break;
                    case Activation::GeluTanh:
                        a = 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
                        break;
                    case Activation::Gelu: a = 0.5 * g * (1 + std::erf(g / std::sqrt(2.0))); break;
                }
                mref[size_t(i * I + j)] = float(a * u);
            }
        CHECK(test::rel_err(m, mref) < 1e-6);
    }
    // the two GELUs differ (by ~1e-3 at most): a fixture using the wrong one would show it
    std::vector<float> gt(size_t(n) * I), ge(gt.size());
    ops.gated_act(Activation::GeluTanh, gt.data(), gu.data(), n, I);
    ops.gated_act(Activation::Gelu, ge.data(), gu.data(), n, I);
    CHECK(test::rel_err(gt, ge) > 1e-5);

    // soft-cap: cap · tanh(x / cap), values well past the cap included
    auto sc = randn(37, 14, 20.0f), sc_ref = sc;
    ops.softcap(sc.data(), int64_t(sc.size()), 5.0f);
    for (auto& v : sc_ref) v = float(5.0 * std::tanh(double(v) / 5.0));
    CHECK(test::rel_err(sc, sc_ref) < 1e-6);
    CHECK(*std::max_element(sc.begin(), sc.end()) <= 5.0f);

    auto a = randn(11, 9), b = randn(11, 10), sum = a;
    ops.add(sum.data(), b.data(), 11);
    for (int i = 0; i < 11; ++i) CHECK(sum[size_t(i)] == a[size_t(i)] + b[size_t(i)]);

    auto table = randn(size_t(10) * d, 11);
    std::vector<int32_t> toks = {3, 0, 9, 3};
    std::vector<float> e(toks.size() * d), es(e.size());
    ops.embed(e.data(), table.data(), toks.data(), int(toks.size()), d, 1.0f);
    const float scale = std::sqrt(float(d));  // Gemma's embedding scale
    ops.embed(es.data(), table.data(), toks.data(), int(toks.size()), d, scale);
    for (size_t i = 0; i < toks.size(); ++i)
        for (int j = 0; j < d; ++j) {
            CHECK(e[i * d + size_t(j)] == table[size_t(toks[i]) * d + size_t(j)]);
            CHECK(es[i * d + size_t(j)] == table[size_t(toks[i]) * d + size_t(j)] * scale);
        }

    std::vector<float> dst(size_t(3) * 8, -1.0f);
    ops.copy2d(dst.data(), 8, table.data() + 2, d, 3, 5);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 8; ++j) CHECK(dst[size_t(i * 8 + j)] == (j < 5 ? table[size_t(i * d + 2 + j)] : -1.0f));
}

TEST_CASE("ops: rope rotates half-split pairs by pos * inv_freq") {
    const Ops& ops = cpu_ops();
    const int n = 4, hd = 10, heads = 2, stride = 25, col0 = 3;
    auto x = randn(size_t(n) * stride, 12);
    std::vector<float> inv(hd / 2);
    for (int k = 0; k < hd / 2; ++k) inv[size_t(k)] = float(std::pow(10000.0, -2.0 * k / hd));
    std::vector<int32_t> pos = {0, 5, 17, 1000};
    auto y = x;
    ops.rope(y.data(), n, stride, col0, heads, hd, pos.data(), inv.data());
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < heads; ++h)
            for (int k = 0; k < hd / 2; ++k) {
                size_t a = size_t(i * stride + col0 + h * hd + k), b = a + hd / 2;
                double ang = double(float(pos[size_t(i)]) * inv[size_t(k)]);
                CHECK(y[a] == doctest::Approx(x[a] * std::cos(ang) - x[b] * std::sin(ang)).epsilon(1e-5));
                CHECK(y[b] == doctest::Approx(x[b] * std::cos(ang) + x[a] * std::sin(ang)).epsilon(1e-5));
            }
    CHECK(y[0] == x[0]);  // columns before col0 untouched
}

TEST_CASE("ops: attention of packed sequences with cached prefixes, GQA, windows and soft-caps") {
    const Ops& ops = cpu_ops();
    const int heads = 6, kv_heads = 2, hd = 12, group = heads / kv_heads, kvd = kv_heads * hd;
    const int q_stride = heads * hd + 7;  // q is a view into a wider row, as in the fused qkv buffer
    // three sequences: 70 new tokens after 5 cached, 1 new token after 90 cached (decode), 3 fresh
    std::vector<int32_t> len = {70, 1, 3}, pos0 = {5, 90, 0}, row0 = {0, 70, 71};
    const int rows = 74;
    auto q = randn(size_t(rows) * q_stride, 13);
    std::vector<std::vector<float>> K, V;
    std::vector<const float*> kb, vb;
    for (int s = 0; s < 3; ++s) {
        K.push_back(randn(size_t(pos0[size_t(s)] + len[size_t(s)]) * kvd, 20 + s));
        V.push_back(randn(size_t(pos0[size_t(s)] + len[size_t(s)]) * kvd, 30 + s));
    }
    for (int s = 0; s < 3; ++s) kb.push_back(K[size_t(s)].data()), vb.push_back(V[size_t(s)].data());
    const float scale = 0.3f;
    for (int window : {0, 16}) {
        for (float softcap : {0.0f, 2.5f}) {
            CAPTURE(window);
            CAPTURE(softcap);
            std::vector<float> out(size_t(rows) * heads * hd), ref(out.size());
            ops.attention(out.data(), q.data(), q_stride, 3, row0.data(), len.data(), pos0.data(), kb.data(), vb.data(),
                          kvd, heads, kv_heads, hd, scale, window, softcap);
            for (int s = 0; s < 3; ++s)
                for (int t = 0; t < len[size_t(s)]; ++t)
                    for (int h = 0; h < heads; ++h) {
                        const int r = row0[size_t(s)] + t, p = pos0[size_t(s)] + t, g = h / group;
                        const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
                        std::vector<double> sc;
                        double mx = -1e300;
                        for (int j = lo; j <= p; ++j) {
                            double dot = 0;
                            for (int k = 0; k < hd; ++k)
                                dot += double(q[size_t(r) * q_stride + h * hd + k]) * K[size_t(s)][size_t(j) * kvd + g * hd + k];
                            dot *= scale;
                            if (softcap > 0) dot = softcap * std::tanh(dot / softcap);
                            sc.push_back(dot);
                            mx = std::max(mx, dot);
                        }
                        double z = 0;
                        for (auto& v : sc) z += v = std::exp(v - mx);
                        for (int k = 0; k < hd; ++k) {
                            double o = 0;
                            for (int j = lo; j <= p; ++j) o += sc[size_t(j - lo)] / z * V[size_t(s)][size_t(j) * kvd + g * hd + k];
                            ref[size_t(r) * heads * hd + h * hd + k] = float(o);
                        }
                    }
            CHECK(test::rel_err(out, ref) < 1e-5);
        }
    }
}

#include "kernels/cpu/ops_cpu.h"

TEST_CASE("ops: steering row ops, argmax and bf16 rounding (CPU twins of the CUDA ops)") {
    // three rows of 4; rows 2 and 0 selected, row 1 must stay as it is
    const std::vector<float> x = {1, 2, 3, 6, 7, 7, 7, 7, 4, 8, -4, 0};
    const std::vector<int32_t> rows = {2, 0};

    auto a = x;
    const std::vector<float> v = {1, 2, 3, 4};
    cpu::add_rows(a.data(), 4, rows.data(), 2, v.data(), 0.5f);
    CHECK(a == std::vector<float>{1.5f, 3, 4.5f, 8, 7, 7, 7, 7, 4.5f, 9, -2.5f, 2});

    // u = (1/2, 1/2, 1/2, 1/2) is a unit vector with exact components: row 0 · u = 6, row 2 · u = 4
    const std::vector<float> u = {0.5f, 0.5f, 0.5f, 0.5f};
    auto b = x;
    cpu::ablate_rows(b.data(), 4, rows.data(), 2, u.data(), 0.5f);
    CHECK(b == std::vector<float>{-0.5f, 0.5f, 1.5f, 4.5f, 7, 7, 7, 7, 3, 7, -5, -1});
    b = x;
    cpu::ablate_rows(b.data(), 4, rows.data(), 2, u.data(), 1.0f);  // alpha 1 removes the component
    CHECK(b == std::vector<float>{-2, -1, 0, 3, 7, 7, 7, 7, 2, 6, -6, -2});

    // src row i goes to rows[i]: row 2 gets src row 0, row 0 gets src row 1
    const std::vector<float> src = {8, 0, 4, 4, 2, 2, 2, 2};
    auto c = x;
    cpu::replace_rows(c.data(), 4, rows.data(), 2, src.data(), 4, 0.25f);
    CHECK(c == std::vector<float>{1.25f, 2, 2.75f, 5, 7, 7, 7, 7, 5, 6, -2, 1});
    c = x;
    cpu::replace_rows(c.data(), 4, rows.data(), 2, src.data(), 4, 1.0f);
    CHECK(c == std::vector<float>{2, 2, 2, 2, 7, 7, 7, 7, 8, 0, 4, 4});
    c = x;  // src_ld 0: src row 0 for every selected row
    cpu::replace_rows(c.data(), 4, rows.data(), 2, src.data(), 0, 0.5f);
    CHECK(c == std::vector<float>{4.5f, 1, 3.5f, 5, 7, 7, 7, 7, 6, 4, 0, 2});

    // first maximum wins; an all -inf row gives 0
    const std::vector<float> logits = {1, 3, 3, 2, -INFINITY, -INFINITY, -INFINITY, -INFINITY, 0, 0, 0, 5};
    std::vector<int32_t> best(3);
    cpu::argmax_rows(best.data(), logits.data(), 3, 4);
    CHECK(best == std::vector<int32_t>{1, 0, 3});

    // bf16 keeps 8 significant bits: near 1 the spacing is 2^-7, so 2^-8 is a tie
    CHECK(cpu::round_bf16(1.0f) == 1.0f);
    CHECK(cpu::round_bf16(1.0f + 0x1p-9f) == 1.0f);                   // below half a step: down
    CHECK(cpu::round_bf16(1.0f + 3 * 0x1p-9f) == 1.0f + 0x1p-7f);     // above half a step: up
    CHECK(cpu::round_bf16(1.0f + 0x1p-8f) == 1.0f);                   // tie: to the even 1.0
    CHECK(cpu::round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);     // tie: to the even 1 + 2^-6
    CHECK(cpu::round_bf16(-1.0f - 0x1p-8f) == -1.0f);
    CHECK(cpu::round_bf16(3.0f) == 3.0f);
    CHECK(cpu::round_bf16(65504.0f) == 65536.0f);
    CHECK(cpu::round_bf16(3.4028235e38f) == INFINITY);  // past the largest bf16: overflows like the hardware
    CHECK(cpu::round_bf16(-INFINITY) == -INFINITY);
    CHECK(std::signbit(cpu::round_bf16(-0.0f)));
    CHECK(std::isnan(cpu::round_bf16(NAN)));
}

#include "engine/finite.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/model.h"

namespace stitch {
namespace {

inline bool bits_non_finite(const float* p, int64_t i) {
    uint32_t b;
    std::memcpy(&b, p + i, 4);
    return (b & 0x7f800000u) == 0x7f800000u;
}

int64_t first_in(const float* p, int64_t lo, int64_t hi) {
    // Branch-free pass per block (vectorises), then the exact index only when the block has one.
    constexpr int64_t kBlock = 4096;
    for (int64_t b = lo; b < hi; b += kBlock) {
        const int64_t e = std::min(hi, b + kBlock);
        uint32_t any = 0;
        for (int64_t i = b; i < e; ++i) {
            uint32_t x;
            std::memcpy(&x, p + i, 4);
            any |= uint32_t((x & 0x7f800000u) == 0x7f800000u);
        }
        if (any)
            for (int64_t i = b; i < e; ++i)
                if (bits_non_finite(p, i)) return i;
    }
    return -1;
}

std::atomic<bool> g_check_finite{false};

}  // namespace

int64_t first_non_finite(const float* p, int64_t n) {
    if (n <= 0) return -1;
    constexpr int64_t kChunk = int64_t(1) << 20;
    if (n <= kChunk) return first_in(p, 0, n);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    int64_t best = n;
#pragma omp parallel for schedule(static) reduction(min : best)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t i = first_in(p, c * kChunk, std::min(n, (c + 1) * kChunk));
        if (i >= 0 && i < best) best = i;
    }
    return best < n ? best : -1;
}

std::string finite_name(float x) {
    if (std::isnan(x)) return "NaN";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    return fmt::format("{:g}", x);
}

void check_weights_finite(const Model& m, const std::string& file) {
    auto check = [&](const std::vector<float>& w, const char* name, int layer) {
        const int64_t i = first_non_finite(w.data(), int64_t(w.size()));
        if (i < 0) return;
        const std::string where = layer >= 0 ? fmt::format("{} of layer {}", name, layer) : std::string(name);
        fail(file, "weight {} holds {} at index {} of {}{}", where, finite_name(w[size_t(i)]), i, w.size(),
             m.adapter.empty() ? "" : " (after merging the adapter)");
    };
    const Weights& w = m.weights;
    check(w.embed, "embed", -1);
    for (size_t L = 0; L < w.layers.size(); ++L) {
        const LayerWeights& lw = w.layers[L];
        const int l = int(L);
        check(lw.attn_norm, "attn_norm", l);
        check(lw.wqkv, "q/k/v_proj", l);
        check(lw.bqkv, "q/k/v_proj bias", l);
        check(lw.wo, "o_proj", l);
        check(lw.bo, "o_proj bias", l);
        check(lw.q_norm, "q_norm", l);
        check(lw.k_norm, "k_norm", l);
        check(lw.post_attn_norm, "post_attention_norm", l);
        check(lw.mlp_norm, "mlp_norm", l);
        check(lw.post_mlp_norm, "post_feedforward_norm", l);
        check(lw.w_gate_up, "gate/up_proj", l);
        check(lw.b_gate_up, "gate/up_proj bias", l);
        check(lw.w_down, "down_proj", l);
        check(lw.b_down, "down_proj bias", l);
    }
    check(w.final_norm, "final_norm", -1);
    check(w.lm_head, "lm_head", -1);
}

void set_check_finite(bool on) { g_check_finite.store(on, std::memory_order_relaxed); }
bool check_finite_enabled() { return g_check_finite.load(std::memory_order_relaxed); }

void check_site_finite(const SiteView& v) {
    const int64_t i = first_non_finite(v.data, int64_t(v.rows) * v.cols);
    if (i < 0) return;
    const int64_t r = i / v.cols, j = i % v.cols;
    const std::string site = v.layer >= 0 ? fmt::format("{} layer {}", site_name(v.site), v.layer) : site_name(v.site);
    fail("--check-finite", "{} at {} (prompt {}, position {}, {} {}): the first non-finite site of the forward pass",
         finite_name(v.data[i]), site, v.seq[r], v.pos[r], v.site == Site::Logits ? "token id" : "dim", j);
}

}  // namespace stitch

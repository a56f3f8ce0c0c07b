#include "engine/evaluate.h"

#include <algorithm>
#include <cmath>

namespace stitch {

LossResult lm_loss(const Model& m, const std::vector<std::vector<int32_t>>& texts, const Hooks* hooks, int batch,
                   const std::function<void(long, long)>& progress) {
    const ModelConfig& c = m.config;
    const size_t V = size_t(c.vocab_size);
    LossResult r;
    RunState st;
    long seen = 0;
    for (size_t b0 = 0; b0 < texts.size(); b0 += size_t(batch)) {
        const size_t b1 = std::min(texts.size(), b0 + size_t(batch));
        std::vector<KVCache> caches;
        caches.reserve(b1 - b0);
        std::vector<SeqInput> in;
        for (size_t i = b0; i < b1; ++i) caches.emplace_back(c, int(texts[i].size()));
        for (size_t i = b0; i < b1; ++i)
            if (!texts[i].empty()) in.push_back({&caches[i - b0], texts[i], int32_t(i)});
        ForwardOptions fo;
        fo.hooks = hooks;
        fo.all_logits = true;
        auto logits = forward(m, st, in, fo);
        size_t row = 0;
        for (const auto& s : in) {
            const auto& ids = s.tokens;
            for (size_t t = 0; t + 1 < ids.size(); ++t) {
                const float* l = &logits[(row + t) * V];
                const float mx = *std::max_element(l, l + V);
                double z = 0;
                for (size_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
                r.nll_sum += std::log(z) + mx - double(l[size_t(ids[t + 1])]);
                ++r.tokens;
            }
            row += ids.size();
            seen += long(ids.size());
        }
        if (progress) progress(long(b1), seen);
    }
    return r;
}

}  // namespace stitch

// Reproducible metrics for `stitch eval` (and the transfer experiments): how often completions
// contain a phrase (trigger rates, refusal rates) and the language-model loss of plain text.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/forward.h"

namespace stitch {

struct LossResult {
    double nll_sum = 0;    // Σ −log p(token_{t+1} | tokens_≤t), natural log
    long tokens = 0;       // predicted tokens
    double mean() const { return tokens ? nll_sum / double(tokens) : 0; }
};

// Mean next-token negative log-likelihood of every text (token ids; SiteView::seq is the text's
// index), batched. Texts of one token predict nothing.
LossResult lm_loss(const Model& m, const std::vector<std::vector<int32_t>>& texts, const Hooks* hooks, int batch,
                   const std::function<void(long done, long tokens)>& progress = {});

}  // namespace stitch

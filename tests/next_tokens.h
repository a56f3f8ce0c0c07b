// Shared by tests/test_generate.cpp and tests/gpu/test_forward_gpu.cpp: the next token of every
// prompt from one forward call into fresh caches, picked either by forward() itself
// (ForwardOptions::next: on a GPU model, on the device) or by sample_token on the logits it
// returns, drawing from rng in both cases.
#pragma once
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "engine/forward.h"
#include "engine/generate.h"

namespace test {

inline std::vector<int32_t> first_tokens(const stitch::Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                         const stitch::SamplingParams& sp, bool by_forward, std::mt19937_64& rng) {
    using namespace stitch;
    std::vector<KVCache> caches;
    std::vector<SeqInput> in;
    for (const auto& p : prompts) caches.emplace_back(m.config, int(p.size()));
    for (size_t i = 0; i < prompts.size(); ++i) in.push_back(SeqInput{&caches[i], prompts[i], int32_t(i)});
    RunState st;
    std::vector<int32_t> next;
    ForwardOptions o;
    o.sampling = sp;
    o.rng = &rng;
    if (by_forward) o.next = &next;
    const auto logits = forward(m, st, in, o);
    if (by_forward) {
        CHECK(logits.empty());
        return next;
    }
    const int V = m.config.vocab_size;
    for (size_t i = 0; i < prompts.size(); ++i) next.push_back(sample_token(&logits[i * size_t(V)], V, sp, rng));
    return next;
}

}  // namespace test

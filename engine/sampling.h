// Choosing the next token from logits: greedy or sampled (temperature, top-k, top-p), by one rule
// on every backend (kernels/cpu/ops_cpu.h sample_row, whose CUDA twin runs on the device when a
// forward call is asked for tokens instead of logits: ForwardOptions::next).
#pragma once
#include <cstdint>
#include <random>

namespace stitch {

struct SamplingParams {
    float temperature = 0.0f;  // 0 = greedy
    int top_k = 0;             // 0 = off
    float top_p = 1.0f;        // 1 = off
    uint64_t seed = 0;
};

// One uniform draw in [0, 1) from rng (53 random bits, independent of the library's
// distributions), or 0 without touching rng when p is greedy: a sampled row takes exactly one
// draw, a greedy row none, on either backend.
double sample_uniform(const SamplingParams& p, std::mt19937_64& rng);

// Picks the next token from one row of logits: greedy takes the first maximum (as torch.argmax
// does); sampling applies temperature, then top-k, then top-p, then draws in vocabulary order
// (kernels/cpu/ops_cpu.h sample_row has the exact rule).
int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, std::mt19937_64& rng);

}  // namespace stitch

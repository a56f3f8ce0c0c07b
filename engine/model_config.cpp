#include "engine/model_config.h"

namespace stitch {

std::string ModelConfig::family_name() const {
    switch (family) {
        case Family::Llama: return "llama";
        case Family::Qwen2: return "qwen2";
        case Family::Qwen3: return "qwen3";
        case Family::Gemma: return "gemma";
        case Family::Gemma2: return "gemma2";
        case Family::Gemma3: return "gemma3";
    }
    return "?";
}

int64_t ModelConfig::param_count() const {
    const int64_t d = hidden, I = intermediate, qd = q_dim(), kvd = kv_dim();
    int64_t per_layer = 2 * d + d * (qd + 2 * kvd) + qd * d + 3 * d * I;
    if (qkv_bias) per_layer += qd + 2 * kvd;
    if (o_bias) per_layer += d;
    if (qk_norm) per_layer += 2 * head_dim;
    if (mlp_bias) per_layer += 2 * I + d;
    if (post_norms) per_layer += 2 * d;
    int64_t total = int64_t(vocab_size) * d + n_layers * per_layer + d;
    if (!tied_embeddings) total += int64_t(vocab_size) * d;
    return total;
}

}  // namespace stitch

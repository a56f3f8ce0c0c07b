// Everything that differs between model families, as data. One forward pass reads this;
// models/ turns files (HF config.json, later GGUF metadata) into it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace stitch {

enum class Family { Llama, Qwen2, Qwen3, Gemma, Gemma2, Gemma3 };
// Gate activation of the gated MLP: SwiGLU (SiLU) or GeGLU. GeluTanh is the tanh approximation
// (HF "gelu_pytorch_tanh", what Gemma was trained with); Gelu is the exact erf form, which HF
// transformers 5 runs for Gemma 1 files whose hidden_act says "gelu".
enum class Activation { SiLU, GeluTanh, Gelu };
enum class RopeType { Default, Linear, Llama3 };

struct RopeConfig {
    double theta = 10000.0;
    RopeType type = RopeType::Default;
    double factor = 1.0;            // linear and llama3
    double low_freq_factor = 1.0;   // llama3
    double high_freq_factor = 4.0;  // llama3
    int original_max_position = 8192;  // llama3
};

struct ModelConfig {
    std::string model_type;  // as config.json spells it
    Family family = Family::Llama;
    int vocab_size = 0;
    int hidden = 0;
    int n_layers = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int head_dim = 0;
    int intermediate = 0;
    int max_position = 0;
    float norm_eps = 1e-6f;
    bool tied_embeddings = false;
    bool qkv_bias = false;  // Qwen 2; Llama with attention_bias
    bool o_bias = false;    // Llama with attention_bias
    bool mlp_bias = false;  // Llama with mlp_bias
    bool qk_norm = false;   // Qwen 3: RMSNorm over head_dim on q and k before RoPE
    Activation act = Activation::SiLU;
    RopeConfig rope;              // global (full-attention) layers
    RopeConfig rope_local;        // sliding-window layers when has_rope_local (Gemma 3: base 10000)
    bool has_rope_local = false;
    // The RoPE of layer L: rope_local on sliding-window layers when has_rope_local, else rope.
    const RopeConfig& rope_of(int L) const {
        return has_rope_local && layer_window[size_t(L)] > 0 ? rope_local : rope;
    }
    // Gemma: RMSNorm multiplies by (1 + w). Loaders fold the +1 into the stored weights, so
    // the forward pass always multiplies by w; this flag only records where it came from.
    bool norm_plus_one = false;
    // Gemma: sqrt(hidden) rounded to float32. HF multiplies the looked-up rows by this scalar cast
    // to the weights' dtype (bf16 checkpoints run in bf16 get 55.5 instead of 55.4256 for d=3072);
    // the float32 reference path keeps the float32 value.
    float embed_scale = 1.0f;
    bool post_norms = false;      // Gemma 2/3: norms on the attention and MLP outputs before the residual add
    float attn_softcap = 0.0f;    // Gemma 2: scores → c·tanh(scores/c) (0 = off; HF ignores it for Gemma 3)
    float final_softcap = 0.0f;   // Gemma 2 (and Gemma 3 text-only when set): logits → c·tanh(logits/c) (0 = off)
    std::vector<int> layer_window;  // per layer: 0 = full causal attention, W = sliding window of W keys
    float attn_scale = 0;           // multiplies q·k (1/sqrt(head_dim) unless a family says otherwise)

    // Generation facts (generation_config.json, else config.json).
    std::vector<int32_t> eos_ids;
    std::optional<int32_t> bos_id;
    std::optional<int32_t> pad_id;

    std::string family_name() const;
    int q_dim() const { return n_heads * head_dim; }
    int kv_dim() const { return n_kv_heads * head_dim; }
    int64_t param_count() const;
};

}  // namespace stitch

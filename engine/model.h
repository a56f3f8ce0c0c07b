// A loaded model: config, float32 weights (converted from any stored dtype at load), tokenizer,
// and, once to_device() (engine/device.h) put it on a GPU, the device copy forward() runs on.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/model_config.h"
#include "engine/tokenizer/tokenizer.h"

namespace stitch {

namespace cuda {
class ForwardCuda;  // kernels/cuda/forward_cuda.h; only CUDA builds ever create one
}

struct LayerWeights {
    std::vector<float> attn_norm;  // [d]
    std::vector<float> wqkv;       // [q_dim + 2*kv_dim, d]: q, k, v projections stacked (one GEMM)
    std::vector<float> bqkv;       // [q_dim + 2*kv_dim] or empty
    std::vector<float> wo;         // [d, q_dim]
    std::vector<float> bo;         // [d] or empty
    std::vector<float> q_norm;     // [head_dim] (Qwen 3) or empty
    std::vector<float> k_norm;     // [head_dim] or empty
    std::vector<float> post_attn_norm;  // [d] Gemma 2/3 post_attention_layernorm (on attn output) or empty
    std::vector<float> mlp_norm;   // [d] norm before the MLP (Llama's post_attention_layernorm,
                                   //     Gemma 2/3's pre_feedforward_layernorm)
    std::vector<float> post_mlp_norm;   // [d] Gemma 2/3 post_feedforward_layernorm or empty
    std::vector<float> w_gate_up;  // [2*I, d]: gate rows then up rows (one GEMM)
    std::vector<float> b_gate_up;  // [2*I] or empty
    std::vector<float> w_down;     // [d, I]
    std::vector<float> b_down;     // [d] or empty
};

struct Weights {
    std::vector<float> embed;  // [vocab, d]
    std::vector<LayerWeights> layers;
    std::vector<float> final_norm;  // [d]
    std::vector<float> lm_head;     // [vocab, d]; empty when tied (use embed)
    const std::vector<float>& output() const { return lm_head.empty() ? embed : lm_head; }
};

struct Model {
    std::string path;
    ModelConfig config;
    Weights weights;
    Tokenizer tokenizer;
    std::string weight_dtypes;  // summary of stored dtypes, for `inspect`
    std::string adapter;        // description of a merged LoRA adapter, or empty
    // "fnv1a64:<hex>" over what defines the model: config.json and the weight files' headers and
    // sizes (GGUF: everything before the tensor data), plus a merged adapter's. Written into
    // capture, vector and map metadata so a file can be checked against the model it came from.
    std::string identity;
    std::vector<std::vector<float>> inv_freq;  // per layer: RoPE inverse frequencies [head_dim/2]
    // The GPU copy (bf16 GEMM weights, f32 norms/biases/RoPE, stream, GEMM context) when
    // to_device(m, Backend::CUDA) made one; forward() then runs there. It holds the weights as they
    // were at that call: after changing `weights`, call to_device again. Copies of a Model share it.
    std::shared_ptr<cuda::ForwardCuda> cuda;
    Backend backend() const { return cuda ? Backend::CUDA : Backend::CPU; }
};

// Loads an HF model folder (config.json, *.safetensors, tokenizer.json|tokenizer.model) or a
// GGUF file (weights dequantized to float32, tokenizer rebuilt from its vocabulary).
// Throws stitch::Error naming the file.
Model load_model(const std::filesystem::path& path);
Model load_gguf_model(const std::filesystem::path& path);

// Memory guard. Loading converts every weight to float32, so a model needs about
// model_f32_bytes(config) of memory however it is stored (a Q4 GGUF grows ~7x). Before any
// weight is converted, load_model / load_gguf_model compare that with available_memory_bytes()
// and refuse with "<file>: the model needs X GiB ... only Y GiB available" instead of being
// killed by the kernel's OOM killer halfway through. STITCH_NO_MEMORY_CHECK=1 in the
// environment skips the check (e.g. where /proc/meminfo understates what can be used).
// Saturates at UINT64_MAX instead of overflowing for absurd configs.
uint64_t model_f32_bytes(const ModelConfig& c);
// MemAvailable + SwapFree from /proc/meminfo, in bytes; nullopt when it cannot be read.
std::optional<uint64_t> available_memory_bytes();
// Throws stitch::Error naming `file` when `needed` > `available` (bytes). Testable on its own;
// the loaders call check_model_memory, which reads the environment and /proc/meminfo.
void check_memory_fits(const std::string& file, uint64_t needed, uint64_t available);
void check_model_memory(const std::string& file, const ModelConfig& c);

// FNV-1a 64 fingerprint of a file, as 16 hex digits: safetensors → its header and size, GGUF →
// everything before the tensor data and its size, anything else → its whole content.
std::string file_fingerprint(const std::filesystem::path& file);
// Fingerprint of several parts, for Model::identity.
std::string combine_fingerprints(const std::vector<std::string>& parts);

// RoPE inverse frequencies [head_dim/2] (HF's formula, including llama3/linear scaling): of the
// config's global RoPE, or of any RopeConfig (Gemma 3's local one).
std::vector<float> rope_inv_freq(const ModelConfig& c);
std::vector<float> rope_inv_freq(const RopeConfig& r, int head_dim);
// Model::inv_freq: `global` on full-attention layers, the config's local RoPE on sliding
// layers when it has one (Gemma 3), `global` everywhere else.
std::vector<std::vector<float>> layer_inv_freq(const ModelConfig& c, const std::vector<float>& global);
// The tokenizer must not name ids past the model's vocabulary; `file` is what the error names.
void check_tokenizer_fits(const Tokenizer& t, const ModelConfig& c, const std::string& file);

}  // namespace stitch

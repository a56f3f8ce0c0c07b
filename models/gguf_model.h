// GGUF files (llama.cpp's format) → ModelConfig + float32 Weights, for the architectures
// llama, qwen2, qwen3, gemma, gemma2 and gemma3. GGUF stores every matrix with ggml's shape [in, out] (the HF
// [out, in] matrix, row-major, dimensions listed fastest-first), so dequantizing in file
// order gives the HF layout directly.
//
// Two llama.cpp conventions are undone here so the HF-layout forward pass applies:
//  - "llama" files: convert_hf_to_gguf.py permutes the rows of attn_q / attn_k (and their
//    biases) within each head from HF's rotate-half order (pair i with i + head_dim/2) to
//    llama.cpp's interleaved order (pair 2i with 2i+1). gguf_model_weights applies the inverse.
//    qwen2 / qwen3 files use NeoX-style RoPE in llama.cpp and are stored unpermuted.
//  - Llama 3 RoPE scaling is stored as a tensor, rope_freqs.weight: one divisor per frequency
//    (llama.cpp divides the rotation angle θ_i by it). gguf_model_config recognises the
//    divisors that HF's llama3 formula produces and sets RopeType::Llama3 with the matching
//    factor / low / high / original context, so rope_inv_freq(config) reproduces HF exactly;
//    divisors of any other shape leave the config at the base frequencies and are applied by
//    gguf_rope_inv_freq. Callers should always take the frequencies from gguf_rope_inv_freq.
#pragma once
#include <vector>

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/model_config.h"

namespace stitch {

// general.architecture llama / qwen2 / qwen3 / gemma / gemma2 / gemma3 → ModelConfig. Throws
// stitch::Error naming the file for unsupported architectures, missing or out-of-range keys,
// and unsupported RoPE scaling (YaRN, LongRoPE).
ModelConfig gguf_model_config(const GGUFFile& f);

// Every weight the config implies, dequantized to float32 and fused as engine/model.h wants
// (wqkv = q rows, k rows, v rows; w_gate_up = gate rows, up rows). Every tensor's shape is
// checked against the config; a missing or mis-shaped tensor is a stitch::Error naming the
// file and the tensor.
Weights gguf_model_weights(const GGUFFile& f, const ModelConfig& c);

// The per-frequency divisors of rope_freqs.weight ([head_dim/2]); empty when the file has none.
std::vector<float> gguf_rope_freq_factors(const GGUFFile& f, const ModelConfig& c);

// RoPE inverse frequencies [head_dim/2] for every layer of this file: rope_inv_freq(c), divided
// by rope_freqs.weight when the config could not express that tensor as RopeType::Llama3.
std::vector<float> gguf_rope_inv_freq(const GGUFFile& f, const ModelConfig& c);

// Per layer: gguf_rope_inv_freq on global layers, the local RoPE (Gemma 3) on sliding layers.
std::vector<std::vector<float>> gguf_layer_inv_freq(const GGUFFile& f, const ModelConfig& c);

// GGUF tensor names.
namespace gguf_names {
std::string layer(int L, const char* suffix);  // "blk.{L}.{suffix}"
inline constexpr const char* embed = "token_embd.weight";
inline constexpr const char* final_norm = "output_norm.weight";
inline constexpr const char* lm_head = "output.weight";
inline constexpr const char* rope_freqs = "rope_freqs.weight";
}  // namespace gguf_names

}  // namespace stitch

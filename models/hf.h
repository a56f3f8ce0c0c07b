// HF model folders: config.json + generation_config.json → ModelConfig, and the HF tensor
// names of each weight.
#pragma once
#include <filesystem>
#include <string>

#include "engine/model_config.h"

namespace stitch {

// Reads DIR/config.json (required) and DIR/generation_config.json (optional).
// Throws stitch::Error naming the file for missing fields, unknown model_type, bad values.
ModelConfig load_hf_config(const std::filesystem::path& dir);

class WeightFiles;

// Where a folder's text-model tensors live: "model." for *ForCausalLM files; for Gemma 3
// image-text checkpoints (Gemma3ForConditionalGeneration) "language_model.model." (the hub's
// files, and what transformers 5.17 still writes) or "model.language_model." (transformers 5's
// in-memory names). Their vision tower and projector tensors are ignored.
struct HfWeightNames {
    std::string prefix = "model.";
    std::string lm_head = "lm_head.weight";
    std::string embed() const { return prefix + "embed_tokens.weight"; }
    std::string final_norm() const { return prefix + "norm.weight"; }
    std::string layer(int L, const char* suffix) const { return prefix + "layers." + std::to_string(L) + "." + suffix; }
};
// Picks the layout whose embedding tensor is present (the plain one when none is, so the
// missing-tensor error names the usual tensor).
HfWeightNames hf_weight_names(const WeightFiles& files);

// HF tensor names of plain *ForCausalLM files.
namespace hf_names {
std::string layer(int L, const char* suffix);  // "model.layers.{L}.{suffix}"
inline constexpr const char* embed = "model.embed_tokens.weight";
inline constexpr const char* final_norm = "model.norm.weight";
inline constexpr const char* lm_head = "lm_head.weight";
}  // namespace hf_names

}  // namespace stitch

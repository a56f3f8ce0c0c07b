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

// HF tensor names.
namespace hf_names {
std::string layer(int L, const char* suffix);  // "model.layers.{L}.{suffix}"
inline constexpr const char* embed = "model.embed_tokens.weight";
inline constexpr const char* final_norm = "model.norm.weight";
inline constexpr const char* lm_head = "lm_head.weight";
}  // namespace hf_names

}  // namespace stitch

// PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors), merged into a loaded
// model's float32 weights: W += scaling · B·A for every adapted projection.
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "engine/model.h"

namespace stitch {

// adapter_config.json as apply_lora reads it.
struct LoraConfig {
    std::string file;  // for errors
    int r = 0;
    double alpha = 0;
    bool rslora = false;
    // PEFT's per-module overrides (pattern -> rank / alpha), in key order.
    std::vector<std::pair<std::string, double>> rank_pattern, alpha_pattern;
    // The rank / alpha of a module ("model.layers.3.self_attn.q_proj"): the first pattern whose
    // regex matches the whole name or a dotted suffix of it, else r / lora_alpha. Throws
    // stitch::Error naming the file for a pattern too complex to match.
    int rank_for(const std::string& module) const;
    double alpha_for(const std::string& module) const;
};

// Reads and checks adapter_config.json: peft_type LORA, no DoRA / modules_to_save / biases /
// fan_in_fan_out / target_parameters, a positive integer r (at most 2^20), a finite lora_alpha,
// use_rslora true/false, rank_pattern / alpha_pattern objects of positive integers / finite
// numbers. Throws stitch::Error naming the file.
LoraConfig read_adapter_config(const std::filesystem::path& adapter_config_json);

// Merges the adapter in DIR into m. Scaling is lora_alpha / r, or lora_alpha / sqrt(r) with
// use_rslora, with per-module rank_pattern / alpha_pattern overrides as PEFT applies them.
// Targets: q/k/v/o_proj and gate/up/down_proj of any layer. Throws stitch::Error naming the
// adapter file when it does not fit the model (unknown module, layer out of range, shapes that
// disagree with the model's dimensions, rank that disagrees with the config) or uses a PEFT
// feature stitch does not merge (DoRA, modules_to_save, LoRA biases, fan_in_fan_out).
// Returns a one-line description ("LoRA r=8 alpha=16 on q_proj,v_proj: 48 matrices").
std::string apply_lora(Model& m, const std::filesystem::path& dir);

// load_model(path), then (when `adapter` is not empty) the adapter in that folder merged in, with
// Model::identity covering both. Throws stitch::Error naming a missing adapter folder.
Model load_model_with_adapter(const std::filesystem::path& path, const std::filesystem::path& adapter);

}  // namespace stitch

#include "engine/lora.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "engine/error.h"
#include "engine/finite.h"
#include "engine/safetensors.h"
#include "kernels/cpu/blas.h"

namespace stitch {

using json = nlohmann::json;

namespace {

// PEFT's pattern rule: a key matches a module whose name is the key or ends with ".key".
const json* find_pattern(const json& patterns, const std::string& module) {
    if (!patterns.is_object()) return nullptr;
    for (auto it = patterns.begin(); it != patterns.end(); ++it) {
        try {
            if (std::regex_match(module, std::regex("(.*\\.)?(" + it.key() + ")"))) return &it.value();
        } catch (const std::regex_error&) {
            if (module == it.key() || (module.size() > it.key().size() &&
                                       module.compare(module.size() - it.key().size() - 1, std::string::npos, "." + it.key()) == 0))
                return &it.value();
        }
    }
    return nullptr;
}

struct Target {
    std::vector<float>* weight;  // fused matrix in LayerWeights
    int64_t row0;                // first row of this projection inside it
    int64_t rows, cols;          // out, in
};

}  // namespace

std::string apply_lora(Model& m, const std::filesystem::path& dir) {
    const auto cfg_path = dir / "adapter_config.json";
    const auto w_path = dir / "adapter_model.safetensors";
    if (!std::filesystem::is_directory(dir)) fail(dir.string(), "not a folder (expected a PEFT adapter folder)");
    if (!std::filesystem::exists(cfg_path)) fail(cfg_path.string(), "missing (not a PEFT adapter folder?)");
    if (!std::filesystem::exists(w_path))
        fail(w_path.string(), "missing (only safetensors adapters are read; convert adapter_model.bin)");
    json cfg;
    {
        std::ifstream in(cfg_path);
        try {
            cfg = json::parse(in);
        } catch (const json::exception& e) {
            fail(cfg_path.string(), "not valid JSON ({})", e.what());
        }
    }
    const std::string cf = cfg_path.string();
    if (!cfg.is_object()) fail(cf, "not a JSON object");
    if (cfg.value("peft_type", std::string("LORA")) != "LORA")
        fail(cf, "peft_type \"{}\" is not LORA", cfg.value("peft_type", std::string()));
    auto truthy = [&](const char* k) { return cfg.contains(k) && !cfg[k].is_null() && cfg[k] != false && !(cfg[k].is_array() && cfg[k].empty()); };
    if (truthy("use_dora")) fail(cf, "DoRA adapters (use_dora) are not supported");
    if (truthy("modules_to_save")) fail(cf, "modules_to_save (fully trained extra modules) is not supported");
    if (truthy("fan_in_fan_out")) fail(cf, "fan_in_fan_out adapters (GPT-2 Conv1D layout) do not fit Llama/Qwen/Gemma models");
    if (truthy("lora_bias") || cfg.value("bias", std::string("none")) != "none")
        fail(cf, "LoRA bias training (bias = \"{}\") is not supported", cfg.value("bias", std::string("lora_bias")));
    if (truthy("target_parameters")) fail(cf, "target_parameters adapters are not supported");
    if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int>() <= 0) fail(cf, "missing positive integer \"r\"");
    if (!cfg.contains("lora_alpha") || !cfg["lora_alpha"].is_number()) fail(cf, "missing number \"lora_alpha\"");
    const int r_default = cfg["r"].get<int>();
    const double alpha_default = cfg["lora_alpha"].get<double>();
    const bool rslora = cfg.value("use_rslora", false);
    const json rank_pattern = cfg.value("rank_pattern", json::object());
    const json alpha_pattern = cfg.value("alpha_pattern", json::object());

    SafetensorsFile f(w_path);
    const std::string wf = f.path();
    const ModelConfig& c = m.config;
    const int64_t d = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate;
    static const std::regex name_re(R"(^base_model\.model\.(.*\blayers\.(\d+)\.(self_attn|mlp)\.(\w+))\.lora_([AB])(?:\.default)?\.weight$)");
    struct Pair {
        const TensorInfo* a = nullptr;
        const TensorInfo* b = nullptr;
        int layer = 0;
        std::string proj;
    };
    std::map<std::string, Pair> pairs;  // module name → A and B
    for (const auto& t : f.tensors()) {
        std::smatch mt;
        if (!std::regex_match(t.name, mt, name_re)) {
            if (t.name.find("lora_embedding") != std::string::npos || t.name.find("embed_tokens") != std::string::npos ||
                t.name.find("lm_head") != std::string::npos)
                fail(wf, "tensor '{}': adapters on embeddings or lm_head are not supported", t.name);
            fail(wf, "tensor '{}' is not a LoRA A/B matrix of a layer projection", t.name);
        }
        Pair& p = pairs[mt[1].str()];
        p.layer = std::stoi(mt[2].str());
        p.proj = mt[4].str();
        (mt[5].str() == "A" ? p.a : p.b) = &t;
    }
    if (pairs.empty()) fail(wf, "no LoRA matrices in the adapter");

    std::set<std::string> projs;
    for (auto& [module, p] : pairs) {
        if (!p.a || !p.b) fail(wf, "module '{}' has lora_{} but not lora_{}", module, p.a ? "A" : "B", p.a ? "B" : "A");
        if (p.layer < 0 || p.layer >= c.n_layers)
            fail(wf, "module '{}': layer {} is out of range (the model has {} layers)", module, p.layer, c.n_layers);
        LayerWeights& lw = m.weights.layers[size_t(p.layer)];
        Target tg{};
        if (p.proj == "q_proj") tg = {&lw.wqkv, 0, qd, d};
        else if (p.proj == "k_proj") tg = {&lw.wqkv, qd, kvd, d};
        else if (p.proj == "v_proj") tg = {&lw.wqkv, qd + kvd, kvd, d};
        else if (p.proj == "o_proj") tg = {&lw.wo, 0, d, qd};
        else if (p.proj == "gate_proj") tg = {&lw.w_gate_up, 0, I, d};
        else if (p.proj == "up_proj") tg = {&lw.w_gate_up, I, I, d};
        else if (p.proj == "down_proj") tg = {&lw.w_down, 0, d, I};
        else fail(wf, "module '{}': projection '{}' is not one stitch merges", module, p.proj);
        const auto& A = *p.a;
        const auto& B = *p.b;
        if (A.shape.size() != 2 || B.shape.size() != 2) fail(wf, "module '{}': LoRA matrices must be 2-D", module);
        const int64_t r = A.shape[0];
        if (A.shape[1] != tg.cols || B.shape[0] != tg.rows || B.shape[1] != r)
            fail(wf, "module '{}': lora_A {} and lora_B {} do not fit a {}x{} projection of this model (adapter for another model?)",
                 module, A.shape_str(), B.shape_str(), tg.rows, tg.cols);
        const json* rp = find_pattern(rank_pattern, module);
        const int r_cfg = rp ? rp->get<int>() : r_default;
        if (r_cfg != r) fail(wf, "module '{}': rank {} in the weights but {} in adapter_config.json", module, r, r_cfg);
        const json* ap = find_pattern(alpha_pattern, module);
        const double alpha = ap ? ap->get<double>() : alpha_default;
        const float scaling = float(rslora ? alpha / std::sqrt(double(r)) : alpha / double(r));
        auto a = f.to_f32(A), b = f.to_f32(B);
        for (float& x : b) x *= scaling;
        std::vector<float> delta(size_t(tg.rows * tg.cols));
        blas::sgemm_nn(int(tg.rows), int(tg.cols), int(r), b.data(), int(r), a.data(), int(tg.cols), delta.data(), int(tg.cols));
        float* W = tg.weight->data() + tg.row0 * tg.cols;
        for (size_t i = 0; i < delta.size(); ++i) W[i] += delta[i];
        projs.insert(p.proj);
    }
    std::string list;
    for (const auto& s : projs) list += (list.empty() ? "" : ",") + s;
    return fmt::format("LoRA {} r={} alpha={}{} on {}: {} matrices merged", dir.string(), r_default, alpha_default,
                       rslora ? " (rsLoRA)" : "", list, pairs.size());
}

Model load_model_with_adapter(const std::filesystem::path& path, const std::filesystem::path& adapter) {
    if (!adapter.empty() && !std::filesystem::is_directory(adapter)) fail(adapter.string(), "no such adapter folder");
    Model m = load_model(path);
    check_weights_finite(m, path.string());
    if (!adapter.empty()) {
        m.adapter = apply_lora(m, adapter);
        m.identity = combine_fingerprints({m.identity, file_fingerprint(adapter / "adapter_config.json"),
                                           file_fingerprint(adapter / "adapter_model.safetensors")});
        check_weights_finite(m, (adapter / "adapter_model.safetensors").string());
    }
    return m;
}

}  // namespace stitch

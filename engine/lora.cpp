#include "engine/lora.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <climits>
#include <optional>
#include <string_view>
#include <set>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/error.h"
#include "engine/finite.h"
#include "engine/safetensors.h"
#include "kernels/cpu/blas.h"

namespace stitch {

using json = nlohmann::json;

namespace {

// PEFT's pattern rule: a key matches a module whose name is the key or ends with ".key", the key
// read as a (Python) regex: the whole name must match (.*\.)?(KEY). Run by PCRE2 with bounded
// match effort (a pathological key is an error, never a hang); a key that is not a regex is
// matched literally.
struct PatternMatcher {
    pcre2_code* code = nullptr;
    explicit PatternMatcher(const std::string& key) {
        const std::string re = "(.*\\.)?(" + key + ")";
        int err = 0;
        PCRE2_SIZE off = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(), PCRE2_ANCHORED | PCRE2_ENDANCHORED,
                             &err, &off, nullptr);
    }
    ~PatternMatcher() { pcre2_code_free(code); }
    PatternMatcher(const PatternMatcher&) = delete;
    PatternMatcher& operator=(const PatternMatcher&) = delete;
};

bool pattern_matches(const std::string& key, const std::string& module, const std::string& file, const char* what) {
    PatternMatcher pm(key);
    if (!pm.code)
        return module == key || (module.size() > key.size() &&
                                 module.compare(module.size() - key.size() - 1, std::string::npos, "." + key) == 0);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(pm.code, nullptr);
    pcre2_match_context* mc = pcre2_match_context_create(nullptr);
    if (!md || !mc) {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        throw std::bad_alloc();
    }
    pcre2_set_match_limit(mc, 1000000);
    pcre2_set_depth_limit(mc, 10000);
    pcre2_set_heap_limit(mc, 64 * 1024);  // KiB
    const int rc = pcre2_match(pm.code, reinterpret_cast<PCRE2_SPTR>(module.data()), module.size(), 0, 0, md, mc);
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    if (rc >= 0) return true;
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    fail(file, "{} key '{}' cannot be matched against '{}' (PCRE2 error {}: pattern too complex?)", what, key, module, rc);
}

// A PEFT LoRA tensor name: base_model.model.MODULE.lora_(A|B)[.default].weight, where MODULE ends
// in [\b]layers.N.(self_attn|mlp).PROJ (PROJ: ASCII word characters). Hand-parsed (no std::regex:
// its recursion depth grows with the name's length). A layer number too large for an int is INT_MAX
// (then "out of range").
struct LoraTensorName {
    std::string module, proj;
    int layer = 0;
    bool is_a = false;
};
std::optional<LoraTensorName> parse_lora_tensor_name(std::string_view name) {
    auto strip_suffix = [&](std::string_view suf) {
        if (name.size() < suf.size() || name.substr(name.size() - suf.size()) != suf) return false;
        name.remove_suffix(suf.size());
        return true;
    };
    auto word = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; };
    constexpr std::string_view prefix = "base_model.model.";
    if (name.substr(0, prefix.size()) != prefix) return std::nullopt;
    name.remove_prefix(prefix.size());
    if (!strip_suffix(".weight")) return std::nullopt;
    strip_suffix(".default");
    LoraTensorName out;
    if (strip_suffix(".lora_A")) out.is_a = true;
    else if (!strip_suffix(".lora_B")) return std::nullopt;
    const std::string_view module = name;
    // PROJ
    size_t dot = name.rfind('.');
    if (dot == std::string_view::npos || dot + 1 == name.size()) return std::nullopt;
    const std::string_view proj = name.substr(dot + 1);
    for (char ch : proj)
        if (!word(ch)) return std::nullopt;
    name = name.substr(0, dot);
    if (!strip_suffix(".self_attn") && !strip_suffix(".mlp")) return std::nullopt;
    // N
    dot = name.rfind('.');
    if (dot == std::string_view::npos || dot + 1 == name.size()) return std::nullopt;
    int64_t layer = 0;
    for (char ch : name.substr(dot + 1)) {
        if (ch < '0' || ch > '9') return std::nullopt;
        layer = std::min<int64_t>(layer * 10 + (ch - '0'), INT32_MAX);
    }
    name = name.substr(0, dot);
    if (!strip_suffix("layers")) return std::nullopt;
    if (!name.empty() && word(name.back())) return std::nullopt;  // \blayers
    out.module = std::string(module);
    out.proj = std::string(proj);
    out.layer = int(layer);
    return out;
}

struct Target {
    std::vector<float>* weight;  // fused matrix in LayerWeights
    int64_t row0;                // first row of this projection inside it
    int64_t rows, cols;          // out, in
};

}  // namespace

int LoraConfig::rank_for(const std::string& module) const {
    for (const auto& [key, v] : rank_pattern)
        if (pattern_matches(key, module, file, "rank_pattern")) return int(v);
    return r;
}

double LoraConfig::alpha_for(const std::string& module) const {
    for (const auto& [key, v] : alpha_pattern)
        if (pattern_matches(key, module, file, "alpha_pattern")) return v;
    return alpha;
}

LoraConfig read_adapter_config(const std::filesystem::path& cfg_path) {
    const std::string cf = cfg_path.string();
    json cfg;
    {
        std::ifstream in(cfg_path, std::ios::binary);
        if (!in) fail(cf, "cannot open");
        try {
            cfg = json::parse(in);
        } catch (const json::exception& e) {
            fail(cf, "not valid JSON ({})", e.what());
        }
    }
    if (!cfg.is_object()) fail(cf, "not a JSON object");
    auto string_or = [&](const char* k, const char* dflt) -> std::string {
        auto it = cfg.find(k);
        if (it == cfg.end() || it->is_null()) return dflt;
        if (!it->is_string()) fail(cf, "\"{}\" must be a string", k);
        return it->get<std::string>();
    };
    if (const std::string t = string_or("peft_type", "LORA"); t != "LORA") fail(cf, "peft_type \"{}\" is not LORA", t);
    auto truthy = [&](const char* k) {
        return cfg.contains(k) && !cfg[k].is_null() && cfg[k] != false && !(cfg[k].is_array() && cfg[k].empty()) &&
               !(cfg[k].is_object() && cfg[k].empty());
    };
    if (truthy("use_dora")) fail(cf, "DoRA adapters (use_dora) are not supported");
    if (truthy("modules_to_save")) fail(cf, "modules_to_save (fully trained extra modules) is not supported");
    if (truthy("fan_in_fan_out")) fail(cf, "fan_in_fan_out adapters (GPT-2 Conv1D layout) do not fit Llama/Qwen/Gemma models");
    if (truthy("lora_bias")) fail(cf, "LoRA bias training (lora_bias) is not supported");
    if (const std::string b = string_or("bias", "none"); b != "none")
        fail(cf, "LoRA bias training (bias = \"{}\") is not supported", b);
    if (truthy("target_parameters")) fail(cf, "target_parameters adapters are not supported");
    constexpr int64_t kMaxRank = 1 << 20;
    auto rank_value = [&](const json& v) { return v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= kMaxRank; };
    auto alpha_value = [&](const json& v) { return v.is_number() && std::isfinite(v.get<double>()); };
    LoraConfig lc;
    lc.file = cf;
    if (!cfg.contains("r") || !rank_value(cfg["r"])) fail(cf, "missing positive integer \"r\" (at most {})", kMaxRank);
    if (!cfg.contains("lora_alpha") || !alpha_value(cfg["lora_alpha"])) fail(cf, "missing number \"lora_alpha\"");
    lc.r = int(cfg["r"].get<int64_t>());
    lc.alpha = cfg["lora_alpha"].get<double>();
    if (auto it = cfg.find("use_rslora"); it != cfg.end() && !it->is_null()) {
        if (!it->is_boolean()) fail(cf, "\"use_rslora\" must be true or false");
        lc.rslora = it->get<bool>();
    }
    auto patterns = [&](const char* k, bool rank) {
        std::vector<std::pair<std::string, double>> out;
        auto it = cfg.find(k);
        if (it == cfg.end() || it->is_null()) return out;
        if (!it->is_object()) fail(cf, "\"{}\" must be an object of module pattern -> {}", k, rank ? "rank" : "alpha");
        for (auto e = it->begin(); e != it->end(); ++e) {
            if (rank ? !rank_value(e.value()) : !alpha_value(e.value()))
                fail(cf, "{}[\"{}\"] must be {}", k, e.key(), rank ? "a positive integer" : "a finite number");
            out.emplace_back(e.key(), e.value().get<double>());
        }
        return out;
    };
    lc.rank_pattern = patterns("rank_pattern", true);
    lc.alpha_pattern = patterns("alpha_pattern", false);
    return lc;
}

std::string apply_lora(Model& m, const std::filesystem::path& dir) {
    const auto cfg_path = dir / "adapter_config.json";
    const auto w_path = dir / "adapter_model.safetensors";
    if (!std::filesystem::is_directory(dir)) fail(dir.string(), "not a folder (expected a PEFT adapter folder)");
    if (!std::filesystem::exists(cfg_path)) fail(cfg_path.string(), "missing (not a PEFT adapter folder?)");
    if (!std::filesystem::exists(w_path))
        fail(w_path.string(), "missing (only safetensors adapters are read; convert adapter_model.bin)");
    const LoraConfig lc = read_adapter_config(cfg_path);
    const std::string cf = cfg_path.string();
    const int r_default = lc.r;
    const double alpha_default = lc.alpha;
    const bool rslora = lc.rslora;

    SafetensorsFile f(w_path);
    const std::string wf = f.path();
    const ModelConfig& c = m.config;
    const int64_t d = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate;
    struct Pair {
        const TensorInfo* a = nullptr;
        const TensorInfo* b = nullptr;
        int layer = 0;
        std::string proj;
    };
    std::map<std::string, Pair> pairs;  // module name → A and B
    for (const auto& t : f.tensors()) {
        const auto nm = parse_lora_tensor_name(t.name);
        if (!nm) {
            if (t.name.find("lora_embedding") != std::string::npos || t.name.find("embed_tokens") != std::string::npos ||
                t.name.find("lm_head") != std::string::npos)
                fail(wf, "tensor '{}': adapters on embeddings or lm_head are not supported", t.name);
            fail(wf, "tensor '{}' is not a LoRA A/B matrix of a layer projection", t.name);
        }
        Pair& p = pairs[nm->module];
        p.layer = nm->layer;
        p.proj = nm->proj;
        (nm->is_a ? p.a : p.b) = &t;
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
        const int r_cfg = lc.rank_for(module);
        if (r_cfg != r) fail(wf, "module '{}': rank {} in the weights but {} in adapter_config.json", module, r, r_cfg);
        const double alpha = lc.alpha_for(module);
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
    // The command's device (engine/device.h): the GPU copy is made from the merged weights.
    if (current_device() == Backend::CUDA) to_device(m, Backend::CUDA);
    return m;
}

}  // namespace stitch

#include "models/hf.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace stitch {

using json = nlohmann::json;

std::string hf_names::layer(int L, const char* suffix) { return "model.layers." + std::to_string(L) + "." + suffix; }

static json read_json(const std::filesystem::path& p) {
    std::ifstream in(p);
    if (!in) fail(p.string(), "cannot open");
    try {
        json j = json::parse(in);
        if (!j.is_object()) fail(p.string(), "not a JSON object");
        return j;
    } catch (const json::exception& e) {
        fail(p.string(), "not valid JSON ({})", e.what());
    }
}

namespace {
struct Fields {
    const json& j;
    std::string file;
    int get_int(const char* key, std::optional<int> fallback = std::nullopt, int lo = 1, int hi = 1 << 24) const {
        auto it = j.find(key);
        if (it == j.end() || it->is_null()) {
            if (fallback) return *fallback;
            fail(file, "missing field \"{}\"", key);
        }
        if (!it->is_number_integer()) fail(file, "field \"{}\" is not an integer", key);
        int64_t v = it->get<int64_t>();
        if (v < lo || v > hi) fail(file, "field \"{}\" = {} is out of range [{}, {}]", key, v, lo, hi);
        return int(v);
    }
    double get_num(const json& obj, const char* key, std::optional<double> fallback) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) {
            if (fallback) return *fallback;
            fail(file, "missing field \"{}\"", key);
        }
        if (!it->is_number()) fail(file, "field \"{}\" is not a number", key);
        double v = it->get<double>();
        if (!std::isfinite(v)) fail(file, "field \"{}\" is not finite", key);
        return v;
    }
    bool get_bool(const char* key, bool fallback) const {
        auto it = j.find(key);
        if (it == j.end() || it->is_null()) return fallback;
        if (!it->is_boolean()) fail(file, "field \"{}\" is not true/false", key);
        return it->get<bool>();
    }
};

std::vector<int32_t> id_list(const json& v, const std::string& file, const char* key) {
    std::vector<int32_t> out;
    if (v.is_null()) return out;
    auto one = [&](const json& x) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
            fail(file, "field \"{}\" holds something that is not a token id", key);
        out.push_back(int32_t(x.get<int64_t>()));
    };
    if (v.is_array())
        for (const auto& x : v) one(x);
    else
        one(v);
    return out;
}
}  // namespace

ModelConfig load_hf_config(const std::filesystem::path& dir) {
    auto path = dir / "config.json";
    if (!std::filesystem::exists(path)) fail(path.string(), "missing (not an HF model folder?)");
    json j = read_json(path);
    Fields f{j, path.string()};
    ModelConfig c;
    auto mt = j.find("model_type");
    if (mt == j.end() || !mt->is_string()) fail(f.file, "missing field \"model_type\"");
    c.model_type = mt->get<std::string>();
    if (c.model_type == "llama")
        c.family = Family::Llama;
    else if (c.model_type == "qwen2")
        c.family = Family::Qwen2;
    else if (c.model_type == "qwen3")
        c.family = Family::Qwen3;
    else
        fail(f.file, "unknown model_type \"{}\" (supported: llama, qwen2, qwen3)", c.model_type);

    c.hidden = f.get_int("hidden_size");
    c.n_layers = f.get_int("num_hidden_layers", std::nullopt, 1, 4096);
    c.n_heads = f.get_int("num_attention_heads", std::nullopt, 1, 4096);
    c.n_kv_heads = f.get_int("num_key_value_heads", c.n_heads, 1, 4096);
    c.intermediate = f.get_int("intermediate_size");
    c.vocab_size = f.get_int("vocab_size", std::nullopt, 1, 1 << 24);
    c.max_position = f.get_int("max_position_embeddings", 1 << 20, 1, 1 << 30);
    if (c.n_heads % c.n_kv_heads != 0)
        fail(f.file, "num_attention_heads {} is not a multiple of num_key_value_heads {}", c.n_heads, c.n_kv_heads);
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
        c.head_dim = f.get_int("head_dim");
    } else {
        if (c.hidden % c.n_heads != 0)
            fail(f.file, "hidden_size {} is not a multiple of num_attention_heads {} and no head_dim is given", c.hidden,
                 c.n_heads);
        c.head_dim = c.hidden / c.n_heads;
    }
    if (c.head_dim % 2 != 0) fail(f.file, "head_dim {} is odd; rotary embeddings need pairs", c.head_dim);
    c.norm_eps = float(f.get_num(j, "rms_norm_eps", std::nullopt));
    if (!(c.norm_eps >= 0)) fail(f.file, "rms_norm_eps must be >= 0");

    std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") fail(f.file, "hidden_act \"{}\" is not supported for {} (expected silu)", act, c.model_type);
    c.act = Activation::SiLU;

    // Qwen 2 small models tie embeddings; the HF classes default to untied.
    c.tied_embeddings = f.get_bool("tie_word_embeddings", false);
    switch (c.family) {
        case Family::Llama:
            c.qkv_bias = c.o_bias = f.get_bool("attention_bias", false);
            c.mlp_bias = f.get_bool("mlp_bias", false);
            break;
        case Family::Qwen2: c.qkv_bias = true; break;
        case Family::Qwen3:
            c.qk_norm = true;
            c.qkv_bias = c.o_bias = f.get_bool("attention_bias", false);
            break;
        default: break;  // families whose model_type is not accepted above
    }

    // RoPE: transformers 5 writes "rope_parameters" (with rope_theta inside); older files
    // have top-level "rope_theta" and an optional "rope_scaling".
    const json* rp = nullptr;
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rp = &j["rope_parameters"];
    else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rp = &j["rope_scaling"];
    c.rope.theta = f.get_num(j, "rope_theta", 10000.0);
    if (rp) {
        c.rope.theta = f.get_num(*rp, "rope_theta", c.rope.theta);
        std::string type = rp->contains("rope_type") ? (*rp)["rope_type"].get<std::string>()
                          : rp->contains("type")     ? (*rp)["type"].get<std::string>()
                                                     : "default";
        if (type == "default") {
            c.rope.type = RopeType::Default;
        } else if (type == "linear") {
            c.rope.type = RopeType::Linear;
            c.rope.factor = f.get_num(*rp, "factor", std::nullopt);
        } else if (type == "llama3") {
            c.rope.type = RopeType::Llama3;
            c.rope.factor = f.get_num(*rp, "factor", std::nullopt);
            c.rope.low_freq_factor = f.get_num(*rp, "low_freq_factor", std::nullopt);
            c.rope.high_freq_factor = f.get_num(*rp, "high_freq_factor", std::nullopt);
            c.rope.original_max_position = int(f.get_num(*rp, "original_max_position_embeddings", std::nullopt));
            if (c.rope.high_freq_factor <= c.rope.low_freq_factor || c.rope.original_max_position <= 0)
                fail(f.file, "llama3 rope scaling needs high_freq_factor > low_freq_factor and a positive context");
        } else {
            fail(f.file, "rope type \"{}\" is not supported (default, linear, llama3)", type);
        }
        if (c.rope.factor <= 0) fail(f.file, "rope scaling factor must be positive");
    }
    if (!(c.rope.theta > 0)) fail(f.file, "rope_theta must be positive");

    // Attention span per layer: "layer_types" (transformers 5) or Qwen 2's use_sliding_window.
    c.layer_window.assign(size_t(c.n_layers), 0);
    int window = 0;
    if (j.contains("sliding_window") && j["sliding_window"].is_number_integer())
        window = f.get_int("sliding_window", 0, 0, 1 << 30);
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
        const auto& lt = j["layer_types"];
        if (int(lt.size()) != c.n_layers)
            fail(f.file, "layer_types has {} entries for {} layers", lt.size(), c.n_layers);
        for (int L = 0; L < c.n_layers; ++L) {
            std::string t = lt[size_t(L)].is_string() ? lt[size_t(L)].get<std::string>() : "";
            if (t == "sliding_attention") {
                if (window <= 0) fail(f.file, "layer {} is sliding_attention but sliding_window is not set", L);
                c.layer_window[size_t(L)] = window;
            } else if (t != "full_attention") {
                fail(f.file, "layer_types[{}] = \"{}\" is not supported", L, t);
            }
        }
    } else if (c.family == Family::Qwen2 && f.get_bool("use_sliding_window", false)) {
        int from = f.get_int("max_window_layers", c.n_layers, 0, 1 << 20);
        if (window <= 0) fail(f.file, "use_sliding_window is set but sliding_window is not");
        for (int L = from; L < c.n_layers; ++L) c.layer_window[size_t(L)] = window;
    }
    c.attn_scale = float(1.0 / std::sqrt(double(c.head_dim)));

    // Generation facts: generation_config.json wins over config.json, as in HF generate().
    c.eos_ids = id_list(j.value("eos_token_id", json()), f.file, "eos_token_id");
    if (auto b = id_list(j.value("bos_token_id", json()), f.file, "bos_token_id"); !b.empty()) c.bos_id = b[0];
    if (auto p = id_list(j.value("pad_token_id", json()), f.file, "pad_token_id"); !p.empty()) c.pad_id = p[0];
    auto gpath = dir / "generation_config.json";
    if (std::filesystem::exists(gpath)) {
        json g = read_json(gpath);
        if (g.contains("eos_token_id") && !g["eos_token_id"].is_null())
            c.eos_ids = id_list(g["eos_token_id"], gpath.string(), "eos_token_id");
        if (auto b = id_list(g.value("bos_token_id", json()), gpath.string(), "bos_token_id"); !b.empty())
            c.bos_id = b[0];
        if (auto p = id_list(g.value("pad_token_id", json()), gpath.string(), "pad_token_id"); !p.empty())
            c.pad_id = p[0];
    }
    for (auto id : c.eos_ids)
        if (id >= c.vocab_size) fail(f.file, "eos token id {} is outside the vocabulary ({})", id, c.vocab_size);
    return c;
}

}  // namespace stitch

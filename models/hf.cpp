#include "models/hf.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace stitch {

using json = nlohmann::json;

std::string hf_names::layer(int L, const char* suffix) { return "model.layers." + std::to_string(L) + "." + suffix; }

HfWeightNames hf_weight_names(const WeightFiles& files) {
    static const std::pair<const char*, const char*> layouts[] = {
        {"model.", "lm_head.weight"},
        {"language_model.model.", "language_model.lm_head.weight"},  // Gemma3ForConditionalGeneration files
        {"model.language_model.", "lm_head.weight"},  // the same, as transformers 5 names it in memory
    };
    for (const auto& [prefix, head] : layouts) {
        HfWeightNames n{prefix, head};
        if (files.find(n.embed())) return n;
    }
    return HfWeightNames{};
}

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

namespace {

// RoPE parameters from one object: transformers 5's "rope_parameters" (rope_theta inside) or a
// legacy "rope_scaling" (type only; theta given separately as `theta`).
RopeConfig parse_rope(const Fields& f, const json* rp, double theta, const char* what) {
    RopeConfig r;
    r.theta = rp ? f.get_num(*rp, "rope_theta", theta) : theta;
    if (!(r.theta > 0)) fail(f.file, "{}: rope_theta must be positive", what);
    if (!rp) return r;
    auto str = [&](const char* key) {
        const auto& v = (*rp)[key];
        if (!v.is_string()) fail(f.file, "{}: field \"{}\" is not a string", what, key);
        return v.get<std::string>();
    };
    std::string type = rp->contains("rope_type") ? str("rope_type") : rp->contains("type") ? str("type") : "default";
    if (type == "default") {
        r.type = RopeType::Default;
    } else if (type == "linear") {
        r.type = RopeType::Linear;
        r.factor = f.get_num(*rp, "factor", std::nullopt);
    } else if (type == "llama3") {
        r.type = RopeType::Llama3;
        r.factor = f.get_num(*rp, "factor", std::nullopt);
        r.low_freq_factor = f.get_num(*rp, "low_freq_factor", std::nullopt);
        r.high_freq_factor = f.get_num(*rp, "high_freq_factor", std::nullopt);
        // checked before the conversion to int (a double outside int's range is undefined behaviour there)
        const double omp = f.get_num(*rp, "original_max_position_embeddings", std::nullopt);
        if (!(omp >= 1 && omp <= double(1 << 30)))
            fail(f.file, "{}: original_max_position_embeddings {} is out of range [1, {}]", what, omp, 1 << 30);
        r.original_max_position = int(omp);
        if (!(r.low_freq_factor > 0)) fail(f.file, "{}: low_freq_factor must be positive", what);
        if (r.high_freq_factor <= r.low_freq_factor || r.original_max_position <= 0)
            fail(f.file, "llama3 rope scaling needs high_freq_factor > low_freq_factor and a positive context");
    } else {
        fail(f.file, "{}: rope type \"{}\" is not supported (default, linear, llama3)", what, type);
    }
    if (r.factor <= 0) fail(f.file, "{}: rope scaling factor must be positive", what);
    return r;
}

const json* object_or_null(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_object() ? &*it : nullptr;
}

Activation parse_activation(const Fields& f, const char* key, const std::string& fallback, bool gemma) {
    auto it = f.j.find(key);
    std::string act = fallback;
    if (it != f.j.end() && !it->is_null()) {
        if (!it->is_string()) fail(f.file, "field \"{}\" is not a string", key);
        act = it->get<std::string>();
    }
    if (act == "silu" && !gemma) return Activation::SiLU;
    if (gemma) {
        // The tanh approximation under HF's three names for it; "gelu" is the exact erf form.
        if (act == "gelu_pytorch_tanh" || act == "gelu_new" || act == "gelu_fast") return Activation::GeluTanh;
        if (act == "gelu") return Activation::Gelu;
        fail(f.file, "{} \"{}\" is not supported (expected gelu_pytorch_tanh or gelu)", key, act);
    }
    fail(f.file, "{} \"{}\" is not supported (expected silu)", key, act);
}

// A soft-cap: absent → the class default, null → off (0), else a positive number.
float softcap_field(const Fields& f, const char* key, double fallback) {
    auto it = f.j.find(key);
    if (it == f.j.end()) return float(fallback);
    if (it->is_null()) return 0.0f;
    double v = f.get_num(f.j, key, std::nullopt);
    if (!(v > 0)) fail(f.file, "field \"{}\" = {} must be positive (or null for no soft-cap)", key, v);
    return float(v);
}

// HF's class defaults (configuration_gemma*.py, transformers 5.17) for the size fields a Gemma
// config may leave out: Gemma 3 image-text checkpoints list only a few under "text_config".
struct SizeDefaults {
    int vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, max_position;
};
std::optional<SizeDefaults> size_defaults(Family fam) {
    switch (fam) {
        case Family::Gemma: return SizeDefaults{256000, 3072, 24576, 28, 16, 16, 256, 8192};
        case Family::Gemma2: return SizeDefaults{256000, 2304, 9216, 26, 8, 4, 256, 8192};
        case Family::Gemma3: return SizeDefaults{262208, 2304, 9216, 26, 8, 4, 256, 131072};
        default: return std::nullopt;
    }
}

}  // namespace

ModelConfig load_hf_config(const std::filesystem::path& dir) {
    auto path = dir / "config.json";
    if (!std::filesystem::exists(path)) fail(path.string(), "missing (not an HF model folder?)");
    json top = read_json(path);
    const std::string file = path.string();
    ModelConfig c;
    auto mt = top.find("model_type");
    if (mt == top.end() || !mt->is_string()) fail(file, "missing field \"model_type\"");
    c.model_type = mt->get<std::string>();
    // Gemma 3 image-text checkpoints ("gemma3") nest the language model's fields under
    // "text_config"; everything below reads that object, generation facts the top level first.
    const json* tj = &top;
    const bool multimodal = c.model_type == "gemma3";
    if (c.model_type == "llama")
        c.family = Family::Llama;
    else if (c.model_type == "qwen2")
        c.family = Family::Qwen2;
    else if (c.model_type == "qwen3")
        c.family = Family::Qwen3;
    else if (c.model_type == "gemma")
        c.family = Family::Gemma;
    else if (c.model_type == "gemma2")
        c.family = Family::Gemma2;
    else if (c.model_type == "gemma3_text" || multimodal)
        c.family = Family::Gemma3;
    else
        fail(file, "unknown model_type \"{}\" (supported: llama, qwen2, qwen3, gemma, gemma2, gemma3_text, gemma3)",
             c.model_type);
    if (multimodal) {
        tj = object_or_null(top, "text_config");
        if (!tj) fail(file, "model_type gemma3 but no \"text_config\" object");
        auto tmt = tj->find("model_type");
        if (tmt != tj->end() && *tmt != "gemma3_text")
            fail(file, "text_config.model_type is {}, expected \"gemma3_text\"", tmt->dump());
    }
    const json& j = *tj;
    Fields f{j, file};
    const bool gemma = c.family == Family::Gemma || c.family == Family::Gemma2 || c.family == Family::Gemma3;
    const auto dflt = size_defaults(c.family);
    auto or_default = [&](int SizeDefaults::*field) { return dflt ? std::optional<int>((*dflt).*field) : std::nullopt; };

    c.hidden = f.get_int("hidden_size", or_default(&SizeDefaults::hidden));
    c.n_layers = f.get_int("num_hidden_layers", or_default(&SizeDefaults::layers), 1, 4096);
    c.n_heads = f.get_int("num_attention_heads", or_default(&SizeDefaults::heads), 1, 4096);
    c.n_kv_heads = f.get_int("num_key_value_heads", dflt ? dflt->kv_heads : c.n_heads, 1, 4096);
    c.intermediate = f.get_int("intermediate_size", or_default(&SizeDefaults::intermediate));
    c.vocab_size = f.get_int("vocab_size", or_default(&SizeDefaults::vocab), 1, 1 << 24);
    c.max_position = f.get_int("max_position_embeddings", dflt ? dflt->max_position : 1 << 20, 1, 1 << 30);
    if (c.n_heads % c.n_kv_heads != 0)
        fail(f.file, "num_attention_heads {} is not a multiple of num_key_value_heads {}", c.n_heads, c.n_kv_heads);
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
        c.head_dim = f.get_int("head_dim");
    } else if (dflt && !j.contains("head_dim")) {
        c.head_dim = dflt->head_dim;  // Gemma classes default head_dim to 256, not hidden / heads
    } else {
        if (c.hidden % c.n_heads != 0)
            fail(f.file, "hidden_size {} is not a multiple of num_attention_heads {} and no head_dim is given", c.hidden,
                 c.n_heads);
        c.head_dim = c.hidden / c.n_heads;
    }
    if (c.head_dim % 2 != 0) fail(f.file, "head_dim {} is odd; rotary embeddings need pairs", c.head_dim);
    c.norm_eps = float(f.get_num(j, "rms_norm_eps", gemma ? std::optional<double>(1e-6) : std::nullopt));
    if (!(c.norm_eps >= 0)) fail(f.file, "rms_norm_eps must be >= 0");

    // Gate activation. HF Gemma 1 reads hidden_act (transformers 5 no longer overrides "gelu"
    // with the tanh form as 4.x did); Gemma 2/3 read hidden_activation.
    if (c.family == Family::Gemma)
        c.act = parse_activation(f, "hidden_act", "gelu_pytorch_tanh", true);
    else if (gemma)
        c.act = parse_activation(f, "hidden_activation", "gelu_pytorch_tanh", true);
    else
        c.act = parse_activation(f, "hidden_act", "silu", false);

    // Qwen 2 small models tie embeddings; the HF classes default to untied, Gemma's to tied
    // (for image-text Gemma 3 the top-level flag decides, as HF's tie_weights reads it there).
    c.tied_embeddings = gemma ? (multimodal ? Fields{top, file}.get_bool("tie_word_embeddings", true)
                                            : f.get_bool("tie_word_embeddings", true))
                              : f.get_bool("tie_word_embeddings", false);
    c.attn_scale = float(1.0 / std::sqrt(double(c.head_dim)));
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
        case Family::Gemma:
        case Family::Gemma2:
        case Family::Gemma3: {
            // RMSNorm × (1 + w) everywhere (folded into the weights at load), embeddings × sqrt(d)
            // as a float32 scalar (HF: torch.tensor(hidden_size ** 0.5)).
            c.norm_plus_one = true;
            c.embed_scale = float(std::sqrt(double(c.hidden)));
            c.qkv_bias = c.o_bias = f.get_bool("attention_bias", false);
            if (f.get_bool("use_bidirectional_attention", false))
                fail(f.file, "use_bidirectional_attention (Gemma embedding models) is not supported");
            if (c.family == Family::Gemma) break;
            c.post_norms = true;
            // Attention scale query_pre_attn_scalar^-0.5 (Python float pow, then float32).
            const double qpas = f.get_num(j, "query_pre_attn_scalar", 256.0);
            if (!(qpas > 0)) fail(f.file, "query_pre_attn_scalar must be positive");
            c.attn_scale = float(std::pow(qpas, -0.5));
            if (c.family == Family::Gemma2) {
                c.attn_softcap = softcap_field(f, "attn_logit_softcapping", 50.0);
                c.final_softcap = softcap_field(f, "final_logit_softcapping", 30.0);
            } else {
                // Gemma 3: q/k norms; HF's Gemma3Attention never passes attn_logit_softcapping on,
                // and Gemma3ForConditionalGeneration does not apply final_logit_softcapping.
                c.qk_norm = true;
                c.final_softcap = multimodal ? 0.0f : softcap_field(f, "final_logit_softcapping", 0.0);
            }
            break;
        }
    }

    // RoPE: transformers 5 writes "rope_parameters" (with rope_theta inside); older files
    // have top-level "rope_theta" and an optional "rope_scaling". Gemma 3 has two: transformers 5
    // keys rope_parameters by layer type ({"full_attention": {...}, "sliding_attention": {...}});
    // older files give rope_theta (global, default 1e6), rope_local_base_freq (sliding, default
    // 1e4) and rope_scaling (global layers only).
    const json* rope_params = object_or_null(j, "rope_parameters");
    const json* rope_scaling = object_or_null(j, "rope_scaling");
    if (c.family == Family::Gemma3) {
        c.has_rope_local = true;
        const double theta = f.get_num(j, "rope_theta", 1e6);
        const double local_theta = f.get_num(j, "rope_local_base_freq", 1e4);
        const json* full = nullptr;
        const json* sliding = nullptr;
        if (rope_params) {
            full = object_or_null(*rope_params, "full_attention");
            sliding = object_or_null(*rope_params, "sliding_attention");
            if (!full && !sliding)
                fail(f.file, "gemma3 \"rope_parameters\" must be keyed by layer type (full_attention, sliding_attention)");
        }
        json merged;  // HF: a legacy rope_scaling updates the full-attention parameters
        if (rope_scaling) {
            merged = full ? *full : json::object();
            merged.update(*rope_scaling);
            full = &merged;
        }
        c.rope = parse_rope(f, full, theta, "rope (full_attention)");
        c.rope_local = parse_rope(f, sliding, local_theta, "rope (sliding_attention)");
    } else {
        const json* rp = rope_params ? rope_params : rope_scaling;
        c.rope = parse_rope(f, rp, f.get_num(j, "rope_theta", 10000.0), "rope");
    }

    // Attention span per layer: "layer_types" (transformers 5), Qwen 2's use_sliding_window, or
    // the Gemma 2 (every other layer, from layer 0) / Gemma 3 (sliding_window_pattern - 1 local
    // layers per global one) defaults HF applies when a file has no layer_types. Gemma 1 has none.
    c.layer_window.assign(size_t(c.n_layers), 0);
    const bool gemma_windows = c.family == Family::Gemma2 || c.family == Family::Gemma3;
    int window = 0;
    if (j.contains("sliding_window") && j["sliding_window"].is_number_integer())
        window = f.get_int("sliding_window", 0, 0, 1 << 30);
    else if (gemma_windows && !j.contains("sliding_window"))
        window = 4096;
    if (c.family == Family::Gemma) {
        // full causal attention on every layer
    } else if (j.contains("layer_types") && j["layer_types"].is_array()) {
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
    } else if (gemma_windows) {
        const int pattern = c.family == Family::Gemma2 ? 2 : f.get_int("sliding_window_pattern", 6, 1, 1 << 20);
        for (int L = 0; L < c.n_layers; ++L) {
            if ((L + 1) % pattern == 0) continue;  // HF: sliding iff (i + 1) % pattern != 0
            if (window <= 0) fail(f.file, "layer {} uses sliding-window attention but sliding_window is not set", L);
            c.layer_window[size_t(L)] = window;
        }
    } else if (c.family == Family::Qwen2 && f.get_bool("use_sliding_window", false)) {
        int from = f.get_int("max_window_layers", c.n_layers, 0, 1 << 20);
        if (window <= 0) fail(f.file, "use_sliding_window is set but sliding_window is not");
        for (int L = from; L < c.n_layers; ++L) c.layer_window[size_t(L)] = window;
    }

    // Generation facts: generation_config.json wins over config.json, as in HF generate(); an
    // image-text config's top level wins over its text_config.
    auto ids = [&](const char* key) {
        auto v = id_list(top.value(key, json()), file, key);
        if (v.empty() && tj != &top) v = id_list(j.value(key, json()), file, key);
        return v;
    };
    c.eos_ids = ids("eos_token_id");
    if (auto b = ids("bos_token_id"); !b.empty()) c.bos_id = b[0];
    if (auto p = ids("pad_token_id"); !p.empty()) c.pad_id = p[0];
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

#include "models/gguf_model.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace stitch {

std::string gguf_names::layer(int L, const char* suffix) { return "blk." + std::to_string(L) + "." + suffix; }

namespace {

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

struct Keys {
    const GGUFFile& f;
    std::string arch;
    std::string key(const char* k) const { return arch + "." + k; }
    int get_int(const char* k, std::optional<int64_t> fallback, int64_t lo, int64_t hi) const {
        const std::string name = key(k);
        std::optional<int64_t> v = f.find_int(name);
        if (!v) {
            if (fallback) return int(*fallback);
            fail(f.path(), "missing metadata key '{}'", name);
        }
        if (*v < lo || *v > hi) fail(f.path(), "metadata key '{}' = {} is out of range [{}, {}]", name, *v, lo, hi);
        return int(*v);
    }
    double get_float(const char* k, std::optional<double> fallback) const {
        const std::string name = key(k);
        std::optional<double> v = f.find_float(name);
        if (!v) {
            if (fallback) return *fallback;
            fail(f.path(), "missing metadata key '{}'", name);
        }
        if (!std::isfinite(*v)) fail(f.path(), "metadata key '{}' is not finite", name);
        return *v;
    }
};

// Which layers attend through a sliding window, as llama.cpp reads Gemma 2/3 files:
// {arch}.attention.sliding_window_pattern is a period n (layer L is local iff L % n < n - 1, so
// n = 1 means no local layers and n = 0 all local; llama_hparams::set_swa_pattern) or one bool per
// layer; without it the architecture's period (Gemma 2: 2, Gemma 3: 6).
std::vector<bool> gguf_local_layers(const GGUFFile& f, const std::string& key, int n_layers, int default_period) {
    std::vector<bool> out(static_cast<size_t>(n_layers));
    auto it = f.metadata().find(key);
    if (it != f.metadata().end()) {
        if (const auto* a = std::get_if<GGUFValue::Array>(&it->second.v)) {
            if (int64_t(a->size()) != n_layers)
                fail(f.path(), "{} has {} entries for {} layers", key, a->size(), n_layers);
            for (size_t L = 0; L < a->size(); ++L) {
                const bool* b = std::get_if<bool>(&(*a)[L].v);
                if (!b) fail(f.path(), "{}[{}] is not a bool", key, L);
                out[L] = *b;
            }
            return out;
        }
    }
    const int64_t n = it == f.metadata().end() ? default_period : f.get_int(key);
    if (n < 0 || n > (1 << 20)) fail(f.path(), "metadata key '{}' = {} is out of range [0, {}]", key, n, 1 << 20);
    for (int L = 0; L < n_layers; ++L) out[size_t(L)] = n == 0 || L % n < n - 1;
    return out;
}

std::optional<int32_t> token_id(const GGUFFile& f, const char* key, int vocab) {
    auto v = f.find_int(key);
    if (!v) return std::nullopt;
    if (*v < 0 || *v >= vocab) fail(f.path(), "{} = {} is outside the vocabulary ({} tokens)", key, *v, vocab);
    return int32_t(*v);
}

// Does `factors` (rope_freqs.weight) equal what HF's llama3 rule gives for some factor / low /
// high / original context? The rule is a function of the frequency alone: 1 for short
// wavelengths, `factor` for long ones, and between them 1/divisor = (1-s)/factor + s with s
// linear in the frequency. Two points of the blended band determine that line; with
// low_freq_factor taken as 1 (every Llama 3.x release) it gives high_freq_factor and the
// original context. Files with fewer band points are tried against Llama 3.1's published
// values. The candidate is accepted only if it reproduces every divisor.
std::optional<RopeConfig> recognise_llama3(const std::vector<float>& factors, const ModelConfig& c) {
    ModelConfig base = c;
    base.rope.type = RopeType::Default;
    const std::vector<float> f0 = rope_inv_freq(base);
    const double factor = *std::max_element(factors.begin(), factors.end());
    if (!(factor > 1.0)) return std::nullopt;

    std::vector<RopeConfig> candidates;
    auto make = [&](double lo, double hi, double L) {
        RopeConfig r = c.rope;
        r.type = RopeType::Llama3;
        r.factor = factor;
        r.low_freq_factor = lo;
        r.high_freq_factor = hi;
        r.original_max_position = int(std::lround(L));
        return r;
    };
    std::vector<std::pair<double, double>> band;  // (frequency, s)
    for (size_t i = 0; i < factors.size(); ++i) {
        const double d = factors[i];
        if (d > 1.0 + 1e-4 && d < factor * (1.0 - 1e-4))
            band.emplace_back(double(f0[i]), (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor));
    }
    if (band.size() >= 2) {
        const auto [x1, s1] = band.front();
        const auto [x2, s2] = band.back();
        const double a = (s2 - s1) / (x2 - x1), b = s1 - a * x1;  // s = a·freq + b
        if (b < 0 && a > 0) {
            double hi = 1.0 - 1.0 / b;  // with low_freq_factor 1: b = -1/(hi-1)
            const double L = 2.0 * M_PI * a * (hi - 1.0);
            // The divisors are float32: snap hi to the value a config file would hold (4, 2.5 …).
            if (const double r = std::round(hi * 1000) / 1000; std::fabs(hi - r) < 1e-4 * r) hi = r;
            if (std::isfinite(hi) && std::isfinite(L) && L >= 1 && L < 1e9) candidates.push_back(make(1.0, hi, L));
        }
    }
    candidates.push_back(make(1.0, 4.0, 8192));
    for (const RopeConfig& r : candidates) {
        ModelConfig t = c;
        t.rope = r;
        const std::vector<float> f1 = rope_inv_freq(t);
        bool ok = true;
        for (size_t i = 0; i < f1.size() && ok; ++i) {
            const double want = double(f0[i]) / double(factors[i]);
            ok = std::fabs(double(f1[i]) - want) <= 1e-5 * want;
        }
        if (ok) return r;
    }
    return std::nullopt;
}

struct Loader {
    const GGUFFile& f;

    // hf_shape is the HF [out, in] shape; the file lists it reversed.
    std::vector<float> get(const std::string& name, const std::vector<int64_t>& hf_shape) const {
        const GGUFTensorInfo* t = f.find_tensor(name);
        if (!t) fail(f.path(), "missing tensor '{}'", name);
        std::vector<int64_t> want(hf_shape.rbegin(), hf_shape.rend());
        if (t->shape != want)
            fail(f.path(), "tensor '{}' has shape {} but the config implies {} (ggml order, row length first)", name,
                 shape_str(t->shape), shape_str(want));
        return f.tensor_f32(*t);
    }
    std::vector<float> get_if(bool wanted, const std::string& name, const std::vector<int64_t>& hf_shape) const {
        return wanted ? get(name, hf_shape) : std::vector<float>{};
    }
};

// convert_hf_to_gguf.py (LlamaModel.permute) reorders the rows of each head of q and k:
// reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2), so file row h*hd + 2i + j holds HF row
// h*hd + j*hd/2 + i. This puts the rows back.
std::vector<float> unpermute_rows(const std::vector<float>& w, int n_heads, int head_dim, int64_t cols) {
    std::vector<float> out(w.size());
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; ++h)
        for (int i = 0; i < half; ++i)
            for (int j = 0; j < 2; ++j) {
                const int64_t src = int64_t(h) * head_dim + 2 * i + j;
                const int64_t dst = int64_t(h) * head_dim + int64_t(j) * half + i;
                std::copy_n(w.begin() + src * cols, cols, out.begin() + dst * cols);
            }
    return out;
}

template <typename... V>
std::vector<float> concat(V&&... parts) {
    std::vector<float> out;
    out.reserve((parts.size() + ...));
    (out.insert(out.end(), parts.begin(), parts.end()), ...);
    return out;
}

}  // namespace

ModelConfig gguf_model_config(const GGUFFile& f) {
    const std::string& p = f.path();
    ModelConfig c;
    c.model_type = f.get_string("general.architecture");
    const std::string& arch = c.model_type;
    if (arch == "llama")
        c.family = Family::Llama;
    else if (arch == "qwen2")
        c.family = Family::Qwen2;
    else if (arch == "qwen3")
        c.family = Family::Qwen3;
    else if (arch == "gemma")
        c.family = Family::Gemma;
    else if (arch == "gemma2")
        c.family = Family::Gemma2;
    else if (arch == "gemma3")
        c.family = Family::Gemma3;
    else
        fail(p, "GGUF architecture '{}' is not supported (supported: llama, qwen2, qwen3, gemma, gemma2, gemma3)", arch);
    const bool gemma = c.family == Family::Gemma || c.family == Family::Gemma2 || c.family == Family::Gemma3;

    Keys k{f, arch};
    c.n_layers = k.get_int("block_count", std::nullopt, 1, 4096);
    c.hidden = k.get_int("embedding_length", std::nullopt, 1, 1 << 24);
    c.intermediate = k.get_int("feed_forward_length", std::nullopt, 1, 1 << 24);
    c.n_heads = k.get_int("attention.head_count", std::nullopt, 1, 4096);
    c.n_kv_heads = k.get_int("attention.head_count_kv", c.n_heads, 1, 4096);
    c.max_position = k.get_int("context_length", 1 << 20, 1, 1 << 30);
    if (c.n_heads % c.n_kv_heads != 0)
        fail(p, "{} attention heads is not a multiple of {} key/value heads", c.n_heads, c.n_kv_heads);
    if (f.has(k.key("attention.key_length"))) {
        c.head_dim = k.get_int("attention.key_length", std::nullopt, 1, 1 << 16);
    } else {
        if (c.hidden % c.n_heads != 0)
            fail(p, "embedding_length {} is not a multiple of head_count {} and no attention.key_length is given",
                 c.hidden, c.n_heads);
        c.head_dim = c.hidden / c.n_heads;
    }
    if (c.head_dim % 2 != 0) fail(p, "head dimension {} is odd; rotary embeddings need pairs", c.head_dim);
    if (int v = k.get_int("attention.value_length", c.head_dim, 1, 1 << 16); v != c.head_dim)
        fail(p, "attention.value_length {} differs from key_length {} (not supported)", v, c.head_dim);
    if (int r = k.get_int("rope.dimension_count", c.head_dim, 1, 1 << 16); r != c.head_dim)
        fail(p, "rope.dimension_count {} differs from the head dimension {} (partial rotary is not supported)", r,
             c.head_dim);
    c.norm_eps = float(k.get_float("attention.layer_norm_rms_epsilon", std::nullopt));
    if (!(c.norm_eps >= 0)) fail(p, "{} must be >= 0", k.key("attention.layer_norm_rms_epsilon"));
    c.act = gemma ? Activation::GeluTanh : Activation::SiLU;

    // Vocabulary: the embedding's row count (token_embd is [hidden, vocab] in ggml order).
    const GGUFTensorInfo* emb = f.find_tensor(gguf_names::embed);
    if (!emb) fail(p, "missing tensor '{}'", gguf_names::embed);
    if (emb->shape.size() != 2 || emb->shape[0] != c.hidden)
        fail(p, "tensor '{}' has shape {} but the config implies [{}, vocab]", gguf_names::embed,
             shape_str(emb->shape), c.hidden);
    if (emb->shape[1] < 1 || emb->shape[1] > (1 << 24))
        fail(p, "tensor '{}' has {} rows, not a plausible vocabulary size", gguf_names::embed, emb->shape[1]);
    c.vocab_size = int(emb->shape[1]);
    if (auto v = f.find_int(k.key("vocab_size")); v && *v != c.vocab_size)
        fail(p, "{} = {} but '{}' has {} rows", k.key("vocab_size"), *v, gguf_names::embed, c.vocab_size);
    if (f.has("tokenizer.ggml.tokens")) {
        const auto* a = std::get_if<GGUFValue::Array>(&f.metadata().find("tokenizer.ggml.tokens")->second.v);
        if (a && int64_t(a->size()) > c.vocab_size)
            fail(p, "tokenizer.ggml.tokens has {} entries but the embedding has {} rows", a->size(), c.vocab_size);
    }
    c.tied_embeddings = f.find_tensor(gguf_names::lm_head) == nullptr;

    auto has_tensor = [&](const char* suffix) { return f.find_tensor(gguf_names::layer(0, suffix)) != nullptr; };
    switch (c.family) {
        case Family::Llama:
            c.qkv_bias = has_tensor("attn_q.bias");
            c.o_bias = has_tensor("attn_output.bias");
            c.mlp_bias = has_tensor("ffn_gate.bias");
            break;
        case Family::Qwen2: c.qkv_bias = true; break;
        case Family::Qwen3:
            c.qk_norm = true;
            c.qkv_bias = has_tensor("attn_q.bias");
            c.o_bias = has_tensor("attn_output.bias");
            break;
        default: break;  // Gemma: no biases
    }

    // RoPE. GGUF names the scaling in rope.scaling.type (older files: rope.scale_linear);
    // Llama 3's scaling is the rope_freqs.weight tensor instead (see gguf_model.h).
    c.rope.theta = k.get_float("rope.freq_base", 10000.0);
    if (!(c.rope.theta > 0)) fail(p, "{} must be positive", k.key("rope.freq_base"));
    const std::string scaling = f.find_string(k.key("rope.scaling.type")).value_or("none");
    if (scaling == "linear") {
        c.rope.type = RopeType::Linear;
        c.rope.factor = k.get_float("rope.scaling.factor", std::nullopt);
    } else if (scaling == "none") {
        if (auto lin = f.find_float(k.key("rope.scale_linear")); lin && *lin != 1.0) {
            c.rope.type = RopeType::Linear;
            c.rope.factor = *lin;
        }
    } else {
        fail(p, "RoPE scaling '{}' is not supported (none, linear, llama3 via rope_freqs)", scaling);
    }
    if (!(c.rope.factor > 0)) fail(p, "RoPE scaling factor must be positive");
    if (c.rope.type == RopeType::Default) {
        auto factors = gguf_rope_freq_factors(f, c);
        if (!factors.empty())
            if (auto r = recognise_llama3(factors, c)) c.rope = *r;
    }

    c.layer_window.assign(size_t(c.n_layers), 0);
    c.attn_scale = float(1.0 / std::sqrt(double(c.head_dim)));
    if (gemma) {
        // llama.cpp's converter stores Gemma's RMSNorm weights with the +1 already added, so they
        // load as they are; embeddings are scaled by sqrt(hidden) in float32.
        c.norm_plus_one = true;
        c.embed_scale = float(std::sqrt(double(c.hidden)));
        c.post_norms = c.family != Family::Gemma;
        // query_pre_attn_scalar is not stored: it is head_dim except for the 27B models
        // (hidden / heads), which llama.cpp tells apart by their 46 (Gemma 2) / 62 (Gemma 3) layers.
        const bool is_27b = (c.family == Family::Gemma2 && c.n_layers == 46) || (c.family == Family::Gemma3 && c.n_layers == 62);
        if (is_27b) c.attn_scale = float(1.0 / std::sqrt(double(c.hidden / c.n_heads)));
    }
    // Local RoPE base (rope.freq_base_swa): the converter writes it from transformers-5 configs
    // (rope_parameters keyed by layer type); llama.cpp reads it for Gemma 2/3 when present.
    auto swa_base = [&](double fallback) {
        const double b = k.get_float("rope.freq_base_swa", fallback);
        if (!(b > 0)) fail(p, "{} must be positive", k.key("rope.freq_base_swa"));
        return b;
    };
    if (c.family == Family::Gemma2) {
        c.attn_softcap = float(k.get_float("attn_logit_softcapping", 50.0));
        c.final_softcap = float(k.get_float("final_logit_softcapping", 30.0));
        const int window = k.get_int("attention.sliding_window", 4096, 1, 1 << 30);
        // By default even layers are local (HF: layer 0 sliding; llama.cpp: period 2).
        const auto local = gguf_local_layers(f, k.key("attention.sliding_window_pattern"), c.n_layers, 2);
        for (int L = 0; L < c.n_layers; ++L)
            if (local[size_t(L)]) c.layer_window[size_t(L)] = window;
        // Local layers share the global RoPE (scaling included) unless the file gives them a base.
        if (const double b = swa_base(c.rope.theta); b != c.rope.theta) {
            c.has_rope_local = true;
            c.rope_local = c.rope;
            c.rope_local.theta = b;
        }
    }
    if (c.family == Family::Gemma3) {
        c.qk_norm = true;
        if (auto fs = f.find_float(k.key("final_logit_softcapping"))) c.final_softcap = float(*fs);
        // llama.cpp: without a positive attention.sliding_window every layer is global; with one,
        // 5 local : 1 global unless sliding_window_pattern says otherwise. Local layers use RoPE base
        // 10000 (or rope.freq_base_swa) without scaling, as in HF; the scaling is the global layers'.
        const int window = k.get_int("attention.sliding_window", 0, 0, 1 << 30);
        if (window > 0) {
            const auto local = gguf_local_layers(f, k.key("attention.sliding_window_pattern"), c.n_layers, 6);
            for (int L = 0; L < c.n_layers; ++L)
                if (local[size_t(L)]) c.layer_window[size_t(L)] = window;
        }
        c.has_rope_local = true;
        c.rope_local = RopeConfig{};
        c.rope_local.theta = swa_base(10000.0);
    }

    // Generation facts. llama.cpp stops at any end-of-generation token: eos, eot (end of turn,
    // Llama 3's <|eot_id|>) and eom; HF's generation_config lists the same ids.
    for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
        if (auto id = token_id(f, key, c.vocab_size))
            if (std::find(c.eos_ids.begin(), c.eos_ids.end(), *id) == c.eos_ids.end()) c.eos_ids.push_back(*id);
    c.bos_id = token_id(f, "tokenizer.ggml.bos_token_id", c.vocab_size);
    c.pad_id = token_id(f, "tokenizer.ggml.padding_token_id", c.vocab_size);
    return c;
}

std::vector<float> gguf_rope_freq_factors(const GGUFFile& f, const ModelConfig& c) {
    const GGUFTensorInfo* t = f.find_tensor(gguf_names::rope_freqs);
    if (!t) return {};
    const std::vector<int64_t> want{c.head_dim / 2};
    if (t->shape != want)
        fail(f.path(), "tensor '{}' has shape {} but the head dimension {} implies {}", gguf_names::rope_freqs,
             shape_str(t->shape), c.head_dim, shape_str(want));
    std::vector<float> v = f.tensor_f32(*t);
    for (float x : v)
        if (!(std::isfinite(x) && x > 0)) fail(f.path(), "tensor '{}' holds {}, not a positive divisor", gguf_names::rope_freqs, x);
    return v;
}

std::vector<std::vector<float>> gguf_layer_inv_freq(const GGUFFile& f, const ModelConfig& c) {
    return layer_inv_freq(c, gguf_rope_inv_freq(f, c));
}

std::vector<float> gguf_rope_inv_freq(const GGUFFile& f, const ModelConfig& c) {
    std::vector<float> inv = rope_inv_freq(c);
    if (c.rope.type == RopeType::Llama3) return inv;  // rope_freqs already expressed by the config
    const std::vector<float> factors = gguf_rope_freq_factors(f, c);
    for (size_t i = 0; i < factors.size(); ++i) inv[i] /= factors[i];
    return inv;
}

Weights gguf_model_weights(const GGUFFile& f, const ModelConfig& c) {
    Loader ld{f};
    const int64_t d = c.hidden, q = c.q_dim(), kv = c.kv_dim(), I = c.intermediate, V = c.vocab_size;
    const bool permuted = c.family == Family::Llama;
    auto unpermute = [&](std::vector<float> w, int heads, int64_t cols) {
        return permuted ? unpermute_rows(w, heads, c.head_dim, cols) : w;
    };
    Weights w;
    w.embed = ld.get(gguf_names::embed, {V, d});
    w.layers.resize(size_t(c.n_layers));
    for (int L = 0; L < c.n_layers; ++L) {
        auto n = [&](const char* s) { return gguf_names::layer(L, s); };
        LayerWeights& lw = w.layers[size_t(L)];
        lw.attn_norm = ld.get(n("attn_norm.weight"), {d});
        lw.wqkv = concat(unpermute(ld.get(n("attn_q.weight"), {q, d}), c.n_heads, d),
                         unpermute(ld.get(n("attn_k.weight"), {kv, d}), c.n_kv_heads, d),
                         ld.get(n("attn_v.weight"), {kv, d}));
        if (c.qkv_bias)
            lw.bqkv = concat(unpermute(ld.get(n("attn_q.bias"), {q}), c.n_heads, 1),
                             unpermute(ld.get(n("attn_k.bias"), {kv}), c.n_kv_heads, 1), ld.get(n("attn_v.bias"), {kv}));
        lw.wo = ld.get(n("attn_output.weight"), {d, q});
        lw.bo = ld.get_if(c.o_bias, n("attn_output.bias"), {d});
        lw.q_norm = ld.get_if(c.qk_norm, n("attn_q_norm.weight"), {c.head_dim});
        lw.k_norm = ld.get_if(c.qk_norm, n("attn_k_norm.weight"), {c.head_dim});
        lw.mlp_norm = ld.get(n("ffn_norm.weight"), {d});  // Gemma 2/3: the pre-feed-forward norm
        if (c.post_norms) {
            lw.post_attn_norm = ld.get(n("post_attention_norm.weight"), {d});
            lw.post_mlp_norm = ld.get(n("post_ffw_norm.weight"), {d});
        }
        lw.w_gate_up = concat(ld.get(n("ffn_gate.weight"), {I, d}), ld.get(n("ffn_up.weight"), {I, d}));
        if (c.mlp_bias) lw.b_gate_up = concat(ld.get(n("ffn_gate.bias"), {I}), ld.get(n("ffn_up.bias"), {I}));
        lw.w_down = ld.get(n("ffn_down.weight"), {d, I});
        lw.b_down = ld.get_if(c.mlp_bias, n("ffn_down.bias"), {d});
    }
    w.final_norm = ld.get(gguf_names::final_norm, {d});
    if (!c.tied_embeddings) w.lm_head = ld.get(gguf_names::lm_head, {V, d});
    return w;
}

}  // namespace stitch

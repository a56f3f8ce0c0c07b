#include "engine/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "models/hf.h"

namespace stitch {

std::vector<float> rope_inv_freq(const ModelConfig& c) { return rope_inv_freq(c.rope, c.head_dim); }

std::vector<std::vector<float>> layer_inv_freq(const ModelConfig& c, const std::vector<float>& global) {
    const auto local = c.has_rope_local ? rope_inv_freq(c.rope_local, c.head_dim) : global;
    std::vector<std::vector<float>> out(size_t(c.n_layers));
    for (int L = 0; L < c.n_layers; ++L) out[size_t(L)] = &c.rope_of(L) == &c.rope ? global : local;
    return out;
}

void check_tokenizer_fits(const Tokenizer& t, const ModelConfig& c, const std::string& file) {
    if (t.vocab_size() > c.vocab_size)
        fail(file, "tokenizer has {} tokens but the model's vocabulary is {}", t.vocab_size(), c.vocab_size);
}

std::vector<float> rope_inv_freq(const RopeConfig& r, int head_dim) {
    const int half = head_dim / 2;
    std::vector<float> f(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) {
        // HF: 1 / base^(arange(0, dim, 2) / dim), in float32.
        float expo = float(2 * i) / float(head_dim);
        f[size_t(i)] = 1.0f / float(std::pow(r.theta, double(expo)));
    }
    if (r.type == RopeType::Linear) {
        for (auto& x : f) x = float(x / r.factor);
    } else if (r.type == RopeType::Llama3) {
        // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        const double low_wavelen = r.original_max_position / r.low_freq_factor;
        const double high_wavelen = r.original_max_position / r.high_freq_factor;
        for (auto& x : f) {
            const float wavelen = float(2.0 * M_PI) / x;
            if (wavelen > low_wavelen) {
                x = float(x / r.factor);
            } else if (wavelen >= high_wavelen) {
                const float smooth = float((r.original_max_position / wavelen - r.low_freq_factor) /
                                           (r.high_freq_factor - r.low_freq_factor));
                x = (1.0f - smooth) * float(x / r.factor) + smooth * x;
            }
        }
    }
    return f;
}

namespace {

struct Loader {
    const WeightFiles& files;
    const ModelConfig& c;

    std::vector<float> get(const std::string& name, std::vector<int64_t> shape) const {
        auto* e = files.find(name);
        if (!e) fail(files.origin(), "missing tensor '{}'", name);
        if (e->info->shape != shape) {
            TensorInfo want;
            want.shape = shape;
            fail(e->file->path(), "tensor '{}' has shape {} but the config implies {}", name, e->info->shape_str(),
                 want.shape_str());
        }
        return e->file->to_f32(*e->info);
    }
    std::vector<float> get_if(bool wanted, const std::string& name, std::vector<int64_t> shape) const {
        return wanted ? get(name, std::move(shape)) : std::vector<float>{};
    }
    // An RMSNorm weight; Gemma's (1 + w) has its +1 folded in here, in float32 as HF computes
    // `1.0 + weight.float()`, so the forward pass multiplies by the stored vector for every family.
    std::vector<float> norm(const std::string& name, int64_t dim) const {
        auto w = get(name, {dim});
        if (c.norm_plus_one)
            for (float& x : w) x = 1.0f + x;
        return w;
    }
};

template <typename... V>
std::vector<float> concat(V&&... parts) {
    std::vector<float> out;
    (out.insert(out.end(), parts.begin(), parts.end()), ...);
    return out;
}

}  // namespace

namespace {

uint64_t fnv1a(std::span<const uint8_t> bytes, uint64_t h = 0xcbf29ce484222325ull) {
    for (uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
    return h;
}

uint64_t fnv1a(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
    return fnv1a(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()), h);
}

}  // namespace

std::string file_fingerprint(const std::filesystem::path& file) {
    MappedFile f(file);
    auto b = f.bytes();
    size_t n = b.size();
    if (n >= 8 && std::memcmp(b.data(), "GGUF", 4) == 0) {
        n = size_t(std::min<uint64_t>(n, GGUFFile(file).data_offset()));
    } else if (file.extension() == ".safetensors" && n >= 8) {
        uint64_t len = 0;
        for (int i = 0; i < 8; ++i) len |= uint64_t(b[size_t(i)]) << (8 * i);
        n = size_t(std::min<uint64_t>(n, 8 + len));
    }
    uint64_t h = fnv1a(b.first(n));
    h = fnv1a(std::to_string(b.size()), h);
    return fmt::format("{:016x}", h);
}

std::string combine_fingerprints(const std::vector<std::string>& parts) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const auto& p : parts) h = fnv1a(p + "\n", h);
    return fmt::format("fnv1a64:{:016x}", h);
}

namespace {

// a * b and a + b, saturating at UINT64_MAX.
uint64_t sat_mul(uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}
uint64_t sat_add(uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}
uint64_t dim(int v) { return v > 0 ? uint64_t(v) : 0; }

}  // namespace

uint64_t model_f32_bytes(const ModelConfig& c) {
    const uint64_t d = dim(c.hidden), q = sat_mul(dim(c.n_heads), dim(c.head_dim)),
                   kv = sat_mul(dim(c.n_kv_heads), dim(c.head_dim)), I = dim(c.intermediate), V = dim(c.vocab_size);
    const uint64_t qkv = sat_add(q, sat_mul(2, kv));
    // Per layer: q/k/v, o, gate+up, down, up to four norms, optional biases and q/k norms.
    uint64_t layer = sat_mul(qkv, d);
    layer = sat_add(layer, sat_mul(d, q));
    layer = sat_add(layer, sat_mul(sat_mul(2, I), d));
    layer = sat_add(layer, sat_mul(d, I));
    layer = sat_add(layer, sat_mul(4, d));
    if (c.qkv_bias) layer = sat_add(layer, qkv);
    if (c.o_bias) layer = sat_add(layer, d);
    if (c.mlp_bias) layer = sat_add(layer, sat_add(sat_mul(2, I), d));
    if (c.qk_norm) layer = sat_add(layer, sat_mul(2, dim(c.head_dim)));
    uint64_t n = sat_mul(layer, dim(c.n_layers));
    n = sat_add(n, sat_mul(V, d));                         // embedding
    if (!c.tied_embeddings) n = sat_add(n, sat_mul(V, d));  // lm_head
    n = sat_add(n, d);                                      // final norm
    return sat_mul(n, sizeof(float));
}

std::optional<uint64_t> available_memory_bytes() {
    std::FILE* f = std::fopen("/proc/meminfo", "r");
    if (!f) return std::nullopt;
    char line[256];
    std::optional<uint64_t> avail, swap;
    while (std::fgets(line, sizeof line, f)) {
        unsigned long long kb = 0;
        if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = sat_mul(kb, 1024);
        else if (std::sscanf(line, "SwapFree: %llu kB", &kb) == 1) swap = sat_mul(kb, 1024);
    }
    std::fclose(f);
    if (!avail) return std::nullopt;
    return sat_add(*avail, swap.value_or(0));
}

void check_memory_fits(const std::string& file, uint64_t needed, uint64_t available) {
    if (needed <= available) return;
    constexpr double kGiB = double(1ull << 30);
    fail(file,
         "loading needs {:.1f} GiB of memory for the float32 weights but only {:.1f} GiB is available "
         "(MemAvailable + SwapFree); set STITCH_NO_MEMORY_CHECK=1 to try anyway",
         double(needed) / kGiB, double(available) / kGiB);
}

void check_model_memory(const std::string& file, const ModelConfig& c) {
    // STITCH_NO_MEMORY_CHECK=1: skip the check (documented in engine/model.h).
    if (const char* e = std::getenv("STITCH_NO_MEMORY_CHECK"); e && std::string_view(e) == "1") return;
    const auto avail = available_memory_bytes();
    if (!avail) return;  // no /proc/meminfo (not Linux): nothing to compare with
    check_memory_fits(file, model_f32_bytes(c), *avail);
}

Model load_model(const std::filesystem::path& path) {
    if (!std::filesystem::exists(path)) fail(path.string(), "no such file or folder");
    if (!std::filesystem::is_directory(path)) return load_gguf_model(path);
    Model m;
    m.path = path.string();
    m.config = load_hf_config(path);
    const ModelConfig& c = m.config;
    // Cheap checks first: a missing or mismatched tokenizer fails before any weight is read.
    m.tokenizer = Tokenizer::load_dir(path);
    check_tokenizer_fits(m.tokenizer, c, (path / "tokenizer.json").string());
    WeightFiles files(path);
    m.weight_dtypes = files.dtype_summary();
    const HfWeightNames names = hf_weight_names(files);
    check_model_memory(m.path, c);  // before any weight is converted
    Loader ld{files, c};
    const int64_t d = c.hidden, q = c.q_dim(), kv = c.kv_dim(), I = c.intermediate, V = c.vocab_size;
    Weights& w = m.weights;
    w.embed = ld.get(names.embed(), {V, d});
    w.layers.resize(size_t(c.n_layers));
    for (int L = 0; L < c.n_layers; ++L) {
        auto n = [&](const char* s) { return names.layer(L, s); };
        LayerWeights& lw = w.layers[size_t(L)];
        lw.attn_norm = ld.norm(n("input_layernorm.weight"), d);
        lw.wqkv = concat(ld.get(n("self_attn.q_proj.weight"), {q, d}), ld.get(n("self_attn.k_proj.weight"), {kv, d}),
                         ld.get(n("self_attn.v_proj.weight"), {kv, d}));
        if (c.qkv_bias)
            lw.bqkv = concat(ld.get(n("self_attn.q_proj.bias"), {q}), ld.get(n("self_attn.k_proj.bias"), {kv}),
                             ld.get(n("self_attn.v_proj.bias"), {kv}));
        lw.wo = ld.get(n("self_attn.o_proj.weight"), {d, q});
        lw.bo = ld.get_if(c.o_bias, n("self_attn.o_proj.bias"), {d});
        if (c.qk_norm) {
            lw.q_norm = ld.norm(n("self_attn.q_norm.weight"), c.head_dim);
            lw.k_norm = ld.norm(n("self_attn.k_norm.weight"), c.head_dim);
        }
        if (c.post_norms) {
            // Gemma 2/3: post_attention_layernorm normalises the attention OUTPUT; the MLP's input
            // norm is pre_feedforward_layernorm. (Llama's post_attention_layernorm is the MLP's input norm.)
            lw.post_attn_norm = ld.norm(n("post_attention_layernorm.weight"), d);
            lw.mlp_norm = ld.norm(n("pre_feedforward_layernorm.weight"), d);
            lw.post_mlp_norm = ld.norm(n("post_feedforward_layernorm.weight"), d);
        } else {
            lw.mlp_norm = ld.norm(n("post_attention_layernorm.weight"), d);
        }
        lw.w_gate_up = concat(ld.get(n("mlp.gate_proj.weight"), {I, d}), ld.get(n("mlp.up_proj.weight"), {I, d}));
        if (c.mlp_bias)
            lw.b_gate_up = concat(ld.get(n("mlp.gate_proj.bias"), {I}), ld.get(n("mlp.up_proj.bias"), {I}));
        lw.w_down = ld.get(n("mlp.down_proj.weight"), {d, I});
        lw.b_down = ld.get_if(c.mlp_bias, n("mlp.down_proj.bias"), {d});
    }
    w.final_norm = ld.norm(names.final_norm(), d);
    if (!c.tied_embeddings) w.lm_head = ld.get(names.lm_head, {V, d});

    // Per layer: Gemma 3's sliding-window layers have a RoPE of their own (base 1e4, unscaled).
    m.inv_freq = layer_inv_freq(c, rope_inv_freq(c.rope, c.head_dim));
    std::vector<std::string> parts = {file_fingerprint(path / "config.json")};
    std::vector<std::filesystem::path> weight_files;
    for (const auto& e : std::filesystem::directory_iterator(path))
        if (e.path().extension() == ".safetensors") weight_files.push_back(e.path());
    std::sort(weight_files.begin(), weight_files.end());
    for (const auto& f : weight_files) parts.push_back(f.filename().string() + ":" + file_fingerprint(f));
    m.identity = combine_fingerprints(parts);
    return m;
}

}  // namespace stitch

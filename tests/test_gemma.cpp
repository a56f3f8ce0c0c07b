// Gemma 1/2/3 as config data: config.json keys (both transformers 5 and 4.x spellings, HF's class
// defaults for what a file leaves out, image-text Gemma 3 configs), the (1 + w) norms folded at
// load, per-layer RoPE, the weight-name layouts of Gemma 3 image-text checkpoints, and the hook
// sites around Gemma's post-norms. The forward pass itself is checked against HF in
// test_forward.cpp (fixtures gemma, gemma2, gemma3_text from tools/make_fixtures.py).
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "models/hf.h"
#include "test_util.h"

using namespace stitch;
using json = nlohmann::json;

namespace {

ModelConfig parse(const json& j, test::TempDir& dir) {
    test::write_bytes(dir / "config.json", j.dump());
    return load_hf_config(dir.path);
}

json gemma_config(const char* model_type) {
    return json{{"model_type", model_type}, {"hidden_size", 48},      {"num_hidden_layers", 4},
                {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 16},
                {"intermediate_size", 99},  {"vocab_size", 400},       {"rms_norm_eps", 1e-6}};
}

std::vector<int> windows(std::initializer_list<int> w) { return std::vector<int>(w); }

// Copies a fixture folder, optionally swapping in another config.json.
std::filesystem::path copy_fixture(const std::string& name, test::TempDir& dir, const std::string& config = "") {
    auto dst = dir / (name + "_copy");
    std::filesystem::copy(test::fixture("models/" + name), dst, std::filesystem::copy_options::recursive);
    if (!config.empty()) std::filesystem::copy_file(dst / config, dst / "config.json", std::filesystem::copy_options::overwrite_existing);
    return dst;
}

std::vector<float> all_logits(const Model& m, const std::vector<int32_t>& ids, const Hooks* hooks = nullptr) {
    KVCache kv(m.config, int(ids.size()));
    RunState st;
    SeqInput in{&kv, ids};
    ForwardOptions fo;
    fo.all_logits = true;
    fo.hooks = hooks;
    return forward(m, st, std::span<const SeqInput>(&in, 1), fo);
}

// The fixture's HF logits for each prompt.
struct Reference {
    SafetensorsFile file;
    int n;
    explicit Reference(const std::string& model)
        : file(test::fixture("models/" + model + "/reference.safetensors")), n(std::stoi(file.metadata().at("n_prompts"))) {}
    std::vector<int32_t> ids(int i) const { return file.to_i32(file.get(fmt::format("prompt.{}.ids", i))); }
    std::vector<float> logits(int i) const { return file.to_f32(file.get(fmt::format("prompt.{}.logits", i))); }
};

void check_matches_reference(const Model& m, const std::string& fixture) {
    Reference ref(fixture);
    for (int i = 0; i < ref.n; ++i) {
        CAPTURE(i);
        CHECK(test::rel_err(all_logits(m, ref.ids(i)), ref.logits(i)) <= 1e-4);
    }
}

}  // namespace

TEST_CASE("gemma config: Gemma 1 (norms, embedding scale, activation from hidden_act, HF defaults)") {
    test::TempDir dir;
    auto j = gemma_config("gemma");
    j["hidden_act"] = "gelu_pytorch_tanh";
    auto c = parse(j, dir);
    CHECK(c.family == Family::Gemma);
    CHECK(c.family_name() == "gemma");
    CHECK(c.norm_plus_one);
    CHECK(c.embed_scale == float(std::sqrt(48.0)));
    CHECK(c.tied_embeddings);  // Gemma classes default to tied
    CHECK(c.act == Activation::GeluTanh);
    CHECK_FALSE(c.post_norms);
    CHECK_FALSE(c.qk_norm);
    CHECK(c.attn_scale == float(1.0 / std::sqrt(16.0)));
    CHECK(c.attn_softcap == 0.0f);
    CHECK(c.final_softcap == 0.0f);
    CHECK(c.layer_window == windows({0, 0, 0, 0}));
    CHECK(c.rope.theta == 10000.0);
    CHECK_FALSE(c.has_rope_local);

    // transformers 5 runs hidden_act for Gemma 1: "gelu" is the exact GELU even when the file
    // also says hidden_activation = gelu_pytorch_tanh (as gemma-1.1 files do)
    j["hidden_act"] = "gelu";
    j["hidden_activation"] = "gelu_pytorch_tanh";
    CHECK(parse(j, dir).act == Activation::Gelu);
    j.erase("hidden_act");
    CHECK(parse(j, dir).act == Activation::GeluTanh);  // the class default

    // Gemma 1 has no sliding windows whatever the file says; head_dim defaults to 256, not d / heads
    j["sliding_window"] = 4;
    j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
    j.erase("head_dim");
    j.erase("rms_norm_eps");
    j.erase("tie_word_embeddings");
    c = parse(j, dir);
    CHECK(c.layer_window == windows({0, 0, 0, 0}));
    CHECK(c.head_dim == 256);
    CHECK(c.norm_eps == 1e-6f);
    j["tie_word_embeddings"] = false;
    CHECK_FALSE(parse(j, dir).tied_embeddings);
}

TEST_CASE("gemma config: Gemma 2 (post-norms, soft-caps, query_pre_attn_scalar, alternating windows)") {
    test::TempDir dir;
    auto j = gemma_config("gemma2");
    auto c = parse(j, dir);
    CHECK(c.family == Family::Gemma2);
    CHECK(c.norm_plus_one);
    CHECK(c.post_norms);
    CHECK_FALSE(c.qk_norm);
    CHECK(c.act == Activation::GeluTanh);
    // HF defaults when a file leaves them out: caps 50 / 30, scalar 256, window 4096 on layers 0, 2, …
    CHECK(c.attn_softcap == 50.0f);
    CHECK(c.final_softcap == 30.0f);
    CHECK(c.attn_scale == 1.0f / 16.0f);
    CHECK(c.layer_window == windows({4096, 0, 4096, 0}));

    j["attn_logit_softcapping"] = 4.0;
    j["final_logit_softcapping"] = nullptr;  // null switches a cap off
    j["query_pre_attn_scalar"] = 24;
    j["sliding_window"] = 16;
    j["hidden_activation"] = "gelu";
    j["hidden_act"] = "silu";  // ignored by Gemma 2
    c = parse(j, dir);
    CHECK(c.attn_softcap == 4.0f);
    CHECK(c.final_softcap == 0.0f);
    CHECK(c.attn_scale == float(std::pow(24.0, -0.5)));
    CHECK(c.layer_window == windows({16, 0, 16, 0}));
    CHECK(c.act == Activation::Gelu);

    j["layer_types"] = {"full_attention", "full_attention", "sliding_attention", "sliding_attention"};
    CHECK(parse(j, dir).layer_window == windows({0, 0, 16, 16}));
}

TEST_CASE("gemma config: Gemma 3 RoPE per layer type, in transformers 5 and 4.x spellings") {
    test::TempDir dir;
    auto j = gemma_config("gemma3_text");
    j["num_hidden_layers"] = 7;
    j["sliding_window"] = 8;
    j["layer_types"] = {"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
                        "sliding_attention", "full_attention",    "sliding_attention"};
    // transformers 5: rope_parameters keyed by layer type
    j["rope_parameters"] = {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 1e6}}},
                            {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 12345.0}}}};
    j["attn_logit_softcapping"] = 50.0;  // HF's Gemma 3 attention never applies it
    auto c = parse(j, dir);
    CHECK(c.family == Family::Gemma3);
    CHECK(c.family_name() == "gemma3");
    CHECK(c.qk_norm);
    CHECK(c.post_norms);
    CHECK(c.norm_plus_one);
    CHECK(c.attn_softcap == 0.0f);
    CHECK(c.final_softcap == 0.0f);  // Gemma 3's default is null
    CHECK(c.attn_scale == 1.0f / 16.0f);
    CHECK(c.layer_window == windows({8, 8, 8, 8, 8, 0, 8}));
    CHECK(c.has_rope_local);
    CHECK(c.rope.type == RopeType::Linear);
    CHECK(c.rope.factor == 8.0);
    CHECK(c.rope.theta == 1e6);
    CHECK(c.rope_local.type == RopeType::Default);
    CHECK(c.rope_local.theta == 12345.0);
    CHECK(&c.rope_of(5) == &c.rope);
    CHECK(&c.rope_of(0) == &c.rope_local);
    CHECK(&c.rope_of(6) == &c.rope_local);

    // 4.x: rope_theta (global), rope_local_base_freq (local), rope_scaling (global layers only),
    // sliding_window_pattern instead of layer_types
    j = gemma_config("gemma3_text");
    j["num_hidden_layers"] = 9;
    j["sliding_window"] = 512;
    j["sliding_window_pattern"] = 4;
    j["rope_theta"] = 2e6;
    j["rope_local_base_freq"] = 20000.0;
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
    j["final_logit_softcapping"] = 30.0;
    c = parse(j, dir);
    CHECK(c.layer_window == windows({512, 512, 512, 0, 512, 512, 512, 0, 512}));
    CHECK(c.rope.theta == 2e6);
    CHECK(c.rope.type == RopeType::Linear);
    CHECK(c.rope.factor == 4.0);
    CHECK(c.rope_local.theta == 20000.0);
    CHECK(c.rope_local.type == RopeType::Default);
    CHECK(c.final_softcap == 30.0f);

    // nothing given: HF's bases 1e6 / 1e4, no scaling, pattern 6, window 4096
    j = gemma_config("gemma3_text");
    j["num_hidden_layers"] = 6;
    j["rope_scaling"] = nullptr;
    c = parse(j, dir);
    CHECK(c.rope.theta == 1e6);
    CHECK(c.rope.type == RopeType::Default);
    CHECK(c.rope_local.theta == 1e4);
    CHECK(c.layer_window == windows({4096, 4096, 4096, 4096, 4096, 0}));
}

TEST_CASE("gemma config: image-text Gemma 3 (model_type gemma3) reads text_config with HF's defaults") {
    test::TempDir dir;
    // gemma-3-4b-it's config.json lists only these text fields; the rest are Gemma3TextConfig defaults
    json j = {{"model_type", "gemma3"},
              {"eos_token_id", {1, 106}},
              {"text_config",
               {{"hidden_size", 2560},
                {"intermediate_size", 10240},
                {"model_type", "gemma3_text"},
                {"num_hidden_layers", 34},
                {"rope_scaling", {{"factor", 8.0}, {"rope_type", "linear"}}},
                {"sliding_window", 1024}}},
              {"vision_config", {{"model_type", "siglip_vision_model"}}}};
    auto c = parse(j, dir);
    CHECK(c.model_type == "gemma3");
    CHECK(c.family == Family::Gemma3);
    CHECK(c.hidden == 2560);
    CHECK(c.n_layers == 34);
    CHECK(c.n_heads == 8);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.head_dim == 256);
    CHECK(c.vocab_size == 262208);
    CHECK(c.max_position == 131072);
    CHECK(c.norm_eps == 1e-6f);
    CHECK(c.attn_scale == 1.0f / 16.0f);
    CHECK(c.tied_embeddings);
    CHECK(c.eos_ids == std::vector<int32_t>{1, 106});
    CHECK(c.rope.type == RopeType::Linear);
    CHECK(c.rope.factor == 8.0);
    CHECK(c.rope.theta == 1e6);
    CHECK(c.rope_local.theta == 1e4);
    CHECK(c.final_softcap == 0.0f);
    for (int L = 0; L < 34; ++L) CHECK(c.layer_window[size_t(L)] == ((L + 1) % 6 == 0 ? 0 : 1024));
    CHECK(c.param_count() > 3'000'000'000);
}

TEST_CASE("gemma config: malformed Gemma files are one-line errors naming config.json") {
    test::TempDir dir;
    auto bad = [&](const json& j, const char* what) {
        test::write_bytes(dir / "config.json", j.dump());
        try {
            load_hf_config(dir.path);
            FAIL("no error, expected " << what);
        } catch (const Error& e) {
            CHECK_MESSAGE(std::string(e.what()).find("config.json") != std::string::npos, e.what());
            CHECK_MESSAGE(std::string(e.what()).find(what) != std::string::npos, e.what());
        }
    };
    bad(json{{"model_type", "gemma3"}}, "text_config");
    bad(json{{"model_type", "gemma3"}, {"text_config", {{"model_type", "llama"}}}}, "gemma3_text");
    auto j = gemma_config("gemma3_text");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
    bad(j, "keyed by layer type");
    j = gemma_config("gemma3_text");
    j["rope_parameters"] = {{"full_attention", {{"rope_type", "yarn"}, {"factor", 2.0}}}};
    bad(j, "not supported");
    j = gemma_config("gemma2");
    j["hidden_activation"] = "relu";
    bad(j, "hidden_activation \"relu\"");
    j = gemma_config("gemma");
    j["hidden_act"] = "silu";
    bad(j, "hidden_act \"silu\"");
    j = gemma_config("gemma3_text");
    j["use_bidirectional_attention"] = true;
    bad(j, "use_bidirectional_attention");
    j = gemma_config("gemma2");
    j["attn_logit_softcapping"] = -1.0;
    bad(j, "attn_logit_softcapping");
    j = gemma_config("gemma2");
    j["sliding_window"] = nullptr;
    bad(j, "sliding_window");
    j = gemma_config("gemma2");
    j["query_pre_attn_scalar"] = 0;
    bad(j, "query_pre_attn_scalar");
}

TEST_CASE("gemma model: (1 + w) folded into every norm at load, RoPE per layer type") {
    const Model m = load_model(test::fixture("models/gemma3_text"));
    const ModelConfig& c = m.config;
    SafetensorsFile f(test::fixture("models/gemma3_text/model.safetensors"));
    auto stored = [&](const std::string& name) { return f.to_f32(f.get(name)); };
    auto plus_one = [](std::vector<float> w) {
        for (float& x : w) x = 1.0f + x;  // HF: 1.0 + weight.float(), in float32
        return w;
    };
    const auto& l3 = m.weights.layers[3];
    CHECK(l3.attn_norm == plus_one(stored("model.layers.3.input_layernorm.weight")));
    CHECK(l3.post_attn_norm == plus_one(stored("model.layers.3.post_attention_layernorm.weight")));
    CHECK(l3.mlp_norm == plus_one(stored("model.layers.3.pre_feedforward_layernorm.weight")));
    CHECK(l3.post_mlp_norm == plus_one(stored("model.layers.3.post_feedforward_layernorm.weight")));
    CHECK(l3.q_norm == plus_one(stored("model.layers.3.self_attn.q_norm.weight")));
    CHECK(l3.k_norm == plus_one(stored("model.layers.3.self_attn.k_norm.weight")));
    CHECK(m.weights.final_norm == plus_one(stored("model.norm.weight")));
    CHECK(m.weights.lm_head.empty());  // tied

    // layer 5 is the global one: base 1e6 slowed 8x; the others base 1e4
    REQUIRE(m.inv_freq.size() == 7);
    const int hd = c.head_dim;
    for (int L = 0; L < 7; ++L)
        for (int i = 0; i < hd / 2; ++i) {
            const double local = 1.0 / std::pow(1e4, 2.0 * i / hd), global = 1.0 / std::pow(1e6, 2.0 * i / hd) / 8.0;
            CHECK(m.inv_freq[size_t(L)][size_t(i)] == doctest::Approx(L == 5 ? global : local).epsilon(1e-6));
        }

    // Llama keeps its norms as stored
    const Model llama = load_model(test::fixture("models/llama_tied"));
    SafetensorsFile lf(test::fixture("models/llama_tied/model.safetensors"));
    CHECK(llama.weights.layers[0].attn_norm == lf.to_f32(lf.get("model.layers.0.input_layernorm.weight")));
}

TEST_CASE("gemma model: the 4.x spelling of the Gemma 3 fixture's config gives the same model") {
    // config.legacy.json: rope_theta / rope_local_base_freq / rope_scaling / sliding_window_pattern,
    // no layer_types; tools/make_fixtures.py checked that HF reads it as the same model
    test::TempDir dir;
    const Model m = load_model(copy_fixture("gemma3_text", dir, "config.legacy.json"));
    const Model ref = load_model(test::fixture("models/gemma3_text"));
    CHECK(m.config.layer_window == ref.config.layer_window);
    CHECK(m.inv_freq == ref.inv_freq);
    check_matches_reference(m, "gemma3_text");
}

TEST_CASE("gemma model: image-text Gemma 3 folders (config under text_config, prefixed weight names)") {
    // config.multimodal.json is what transformers 5.17 writes for Gemma3ForConditionalGeneration
    // around the fixture's text model; its checkpoint names the text weights language_model.model.*
    // (the hub's 4.x layout, which 5.17 still saves) and HF holds them as model.language_model.*.
    for (const char* prefix : {"language_model.model.", "model.language_model."}) {
        CAPTURE(prefix);
        test::TempDir dir;
        auto folder = copy_fixture("gemma3_text", dir, "config.multimodal.json");
        {
            SafetensorsFile src(test::fixture("models/gemma3_text/model.safetensors"));
            std::vector<TensorOut> out;
            for (const auto& t : src.tensors()) {
                REQUIRE(t.name.rfind("model.", 0) == 0);
                out.push_back({prefix + t.name.substr(6), t.dtype, t.shape, src.data(t)});
            }
            // vision tower tensors sit beside them and are not read
            static const float dummy[4] = {1, 2, 3, 4};
            out.push_back({std::string(prefix[0] == 'l' ? "" : "model.") + "vision_tower.vision_model.post_layernorm.weight",
                           DType::F32, {4}, {reinterpret_cast<const uint8_t*>(dummy), sizeof dummy}});
            write_safetensors(folder / "model.safetensors", out);
        }
        const Model m = load_model(folder);
        CHECK(m.config.model_type == "gemma3");
        CHECK(m.config.family == Family::Gemma3);
        CHECK(m.config.layer_window == windows({8, 8, 8, 8, 8, 0, 8}));
        check_matches_reference(m, "gemma3_text");
    }
}

TEST_CASE("gemma model: hook sites around the post-norms (attn_out and mlp_out are what the residual adds)") {
    const Model m = load_model(test::fixture("models/gemma2"));
    Reference ref("gemma2");
    std::map<std::pair<int, int>, std::vector<float>> rows;
    Hooks hooks;
    hooks.site_mask = ~0u;
    hooks.on_site = [&](const SiteView& v) { rows[{int(v.site), v.layer}].assign(v.data, v.data + size_t(v.rows) * v.cols); };
    auto ids = ref.ids(2);
    auto logits = all_logits(m, ids, &hooks);
    for (int L = 0; L < m.config.n_layers; ++L) {
        CAPTURE(L);
        const auto& pre = rows.at({int(Site::ResidPre), L});
        const auto& attn = rows.at({int(Site::AttnOut), L});
        const auto& mid = rows.at({int(Site::ResidMid), L});
        const auto& mlp = rows.at({int(Site::MlpOut), L});
        const auto& post = rows.at({int(Site::ResidPost), L});
        bool exact = true;
        for (size_t k = 0; k < pre.size(); ++k) exact = exact && mid[k] == pre[k] + attn[k] && post[k] == mid[k] + mlp[k];
        CHECK(exact);
        // post-normed: dividing a row of attn_out (mlp_out) by the norm's weight leaves a unit-rms row
        const int d = m.config.hidden;
        auto unit_rms = [&](const std::vector<float>& y, const std::vector<float>& w, int row) {
            double ss = 0;
            for (int k = 0; k < d; ++k) ss += std::pow(double(y[size_t(row * d + k)]) / w[size_t(k)], 2);
            return std::sqrt(ss / d);
        };
        for (int row : {0, 17, int(ids.size()) - 1}) {
            CHECK(unit_rms(attn, m.weights.layers[size_t(L)].post_attn_norm, row) == doctest::Approx(1.0).epsilon(1e-4));
            CHECK(unit_rms(mlp, m.weights.layers[size_t(L)].post_mlp_norm, row) == doctest::Approx(1.0).epsilon(1e-4));
        }
    }
    // the logits hook sees soft-capped values
    float mx = 0;
    for (float x : logits) mx = std::max(mx, std::abs(x));
    CHECK(mx <= m.config.final_softcap);
    CHECK(m.config.final_softcap == 6.0f);
}

// config.json parsing, RoPE frequencies against closed forms, and model-folder errors.
#include <doctest/doctest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/model.h"
#include "models/hf.h"
#include "test_util.h"

using namespace stitch;
using json = nlohmann::json;

namespace {

json base_config() {
    return json{{"model_type", "llama"},        {"hidden_size", 64},         {"num_hidden_layers", 2},
                {"num_attention_heads", 4},     {"num_key_value_heads", 2},  {"intermediate_size", 100},
                {"vocab_size", 300},            {"rms_norm_eps", 1e-5},      {"max_position_embeddings", 512},
                {"eos_token_id", 2}};
}

ModelConfig parse(const json& j, test::TempDir& dir) {
    test::write_bytes(dir / "config.json", j.dump());
    return load_hf_config(dir.path);
}

// A copy of a fixture model folder to break on purpose.
std::filesystem::path copy_fixture(const std::string& name, test::TempDir& dir) {
    auto dst = dir / name;
    std::filesystem::copy(test::fixture("models/" + name), dst, std::filesystem::copy_options::recursive);
    return dst;
}

}  // namespace

TEST_CASE("config: fields, defaults and both RoPE spellings") {
    test::TempDir dir;
    auto c = parse(base_config(), dir);
    CHECK(c.family == Family::Llama);
    CHECK(c.head_dim == 16);
    CHECK(c.n_kv_heads == 2);
    CHECK(c.rope.theta == 10000.0);
    CHECK(c.rope.type == RopeType::Default);
    CHECK(c.eos_ids == std::vector<int32_t>{2});
    CHECK(c.attn_scale == doctest::Approx(0.25));

    auto j = base_config();
    j["rope_theta"] = 500000.0;
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}};
    c = parse(j, dir);
    CHECK(c.rope.theta == 500000.0);
    CHECK(c.rope.type == RopeType::Llama3);
    CHECK(c.rope.factor == 32.0);

    j = base_config();
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
    j["model_type"] = "qwen3";
    j["head_dim"] = 24;
    c = parse(j, dir);
    CHECK(c.rope.theta == 1e6);
    CHECK(c.qk_norm);
    CHECK(c.head_dim == 24);

    j = base_config();
    j["model_type"] = "qwen2";
    j["sliding_window"] = 32;
    j["layer_types"] = {"full_attention", "sliding_attention"};
    c = parse(j, dir);
    CHECK(c.qkv_bias);
    CHECK(c.layer_window == std::vector<int>{0, 32});

    test::write_bytes(dir / "generation_config.json", R"({"eos_token_id":[5,6],"bos_token_id":1})");
    c = parse(base_config(), dir);
    CHECK(c.eos_ids == std::vector<int32_t>{5, 6});
    CHECK(c.bos_id == 1);
}

TEST_CASE("config: llama3 RoPE scaling equals the closed form in each wavelength band") {
    test::TempDir dir;
    auto j = base_config();
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 64}};
    auto c = parse(j, dir);
    auto f = rope_inv_freq(c);
    REQUIRE(f.size() == 8);
    int bands[3] = {0, 0, 0};
    for (int i = 0; i < 8; ++i) {
        double base = 1.0 / std::pow(10000.0, 2.0 * i / 16.0);
        double wl = 2 * M_PI / base, expect;
        if (wl < 64.0 / 4.0) {
            expect = base, bands[0]++;
        } else if (wl > 64.0) {
            expect = base / 8.0, bands[2]++;
        } else {
            double s = (64.0 / wl - 1.0) / 3.0;
            expect = (1 - s) * base / 8.0 + s * base, bands[1]++;
        }
        CHECK(f[size_t(i)] == doctest::Approx(expect).epsilon(1e-6));
    }
    CHECK(bands[0] > 0);
    CHECK(bands[1] > 0);
    CHECK(bands[2] > 0);
}

TEST_CASE("config: missing fields, unknown model_type and bad values name config.json") {
    test::TempDir dir;
    auto bad = [&](json j, const char* what) {
        test::write_bytes(dir / "config.json", j.dump());
        try {
            load_hf_config(dir.path);
            FAIL("no error, expected " << what);
        } catch (const Error& e) {
            CHECK_MESSAGE(std::string(e.what()).find("config.json") != std::string::npos, e.what());
            CHECK_MESSAGE(std::string(e.what()).find(what) != std::string::npos, e.what());
        }
    };
    auto j = base_config();
    j.erase("hidden_size");
    bad(j, "missing field \"hidden_size\"");
    j = base_config();
    j["model_type"] = "gpt_neox";
    bad(j, "unknown model_type \"gpt_neox\"");
    j = base_config();
    j.erase("model_type");
    bad(j, "model_type");
    j = base_config();
    j["num_key_value_heads"] = 3;
    bad(j, "not a multiple");
    j = base_config();
    j["hidden_size"] = "big";
    bad(j, "not an integer");
    j = base_config();
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    bad(j, "not supported");
    j = base_config();
    j["eos_token_id"] = 300;
    bad(j, "outside the vocabulary");
    test::write_bytes(dir / "config.json", "{\"model_type\": ");
    CHECK_THROWS_WITH_AS(load_hf_config(dir.path), doctest::Contains("not valid JSON"), Error);
    std::filesystem::remove(dir / "config.json");
    CHECK_THROWS_WITH_AS(load_hf_config(dir.path), doctest::Contains("config.json: missing"), Error);
}

TEST_CASE("model folder: missing tokenizer, missing tensor and wrong shapes are errors") {
    test::TempDir dir;
    auto m = copy_fixture("llama_untied", dir);
    std::filesystem::remove(m / "tokenizer.json");
    CHECK_THROWS_WITH_AS(load_model(m), doctest::Contains("tokenizer.json"), Error);

    // A config that disagrees with the stored tensors.
    auto m2 = copy_fixture("qwen2", dir);
    {
        std::ifstream in(m2 / "config.json");
        json j = json::parse(in);
        j["intermediate_size"] = int(j["intermediate_size"]) + 1;
        test::write_bytes(m2 / "config.json", j.dump());
    }
    CHECK_THROWS_WITH_AS(load_model(m2), doctest::Contains("but the config implies"), Error);

    // Untied model without lm_head.weight.
    auto m3 = copy_fixture("qwen3", dir);
    {
        std::ifstream in(m3 / "config.json");
        json j = json::parse(in);
        j["num_hidden_layers"] = int(j["num_hidden_layers"]) + 1;
        if (j.contains("layer_types")) j["layer_types"].push_back("full_attention");
        test::write_bytes(m3 / "config.json", j.dump());
    }
    CHECK_THROWS_WITH_AS(load_model(m3), doctest::Contains("missing tensor 'model.layers."), Error);

    CHECK_THROWS_WITH_AS(load_model(dir / "nope"), doctest::Contains("no such file"), Error);
    std::filesystem::create_directories(dir / "empty");
    CHECK_THROWS_WITH_AS(load_model(dir / "empty"), doctest::Contains("config.json: missing"), Error);
}

// PEFT LoRA adapters merged at load, against HF transformers + peft (tools/make_lora_fixtures.py):
// logits within 1e-4 relative, identical 16-token greedy continuations; adapters that do not
// fit are one-line errors naming the adapter file.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/lora.h"
#include "engine/safetensors.h"
#include "test_util.h"

using namespace stitch;

TEST_CASE("lora: merged adapters reproduce peft's logits and greedy continuations") {
    for (auto [adapter, base] : {std::pair{"qwen2_all", "qwen2"}, std::pair{"llama_rslora", "llama_untied"}}) {
        SUBCASE(adapter) {
            Model m = load_model(test::fixture(std::string("models/") + base));
            std::string desc = apply_lora(m, test::fixture(std::string("lora/") + adapter));
            CHECK(desc.find("merged") != std::string::npos);
            SafetensorsFile ref(test::fixture(std::string("lora/") + adapter + "/reference.safetensors"));
            const int n = std::stoi(ref.metadata().at("n_prompts"));
            Model plain = load_model(test::fixture(std::string("models/") + base));
            for (int i = 0; i < n; ++i) {
                CAPTURE(i);
                auto ids = ref.to_i32(ref.get(fmt::format("prompt.{}.ids", i)));
                KVCache kv(m.config, int(ids.size()));
                RunState st;
                SeqInput in{&kv, ids};
                ForwardOptions fo;
                fo.all_logits = true;
                auto logits = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
                auto want = ref.to_f32(ref.get(fmt::format("prompt.{}.logits", i)));
                CHECK(test::rel_err(logits, want) <= 1e-4);
                // and the adapter really matters: the plain model is far from it
                KVCache kv2(plain.config, int(ids.size()));
                SeqInput in2{&kv2, ids};
                CHECK(test::rel_err(forward(plain, st, std::span<const SeqInput>(&in2, 1), fo), want) > 1e-2);
                GenerateOptions go;
                go.max_new_tokens = 16;
                go.stop_at_eos = false;
                CHECK(generate(m, {ids}, go)[0].new_ids == ref.to_i32(ref.get(fmt::format("prompt.{}.greedy", i))));
            }
        }
    }
}

TEST_CASE("lora: adapters that do not fit, or use unsupported PEFT features, are errors") {
    test::TempDir dir;
    auto copy = [&](const char* name) {
        auto dst = dir / name;
        std::filesystem::copy(test::fixture(std::string("lora/") + name), dst, std::filesystem::copy_options::recursive);
        return dst;
    };
    auto edit_config = [](const std::filesystem::path& d, auto&& fn) {
        std::ifstream in(d / "adapter_config.json");
        auto j = nlohmann::json::parse(in);
        fn(j);
        test::write_bytes(d / "adapter_config.json", j.dump());
    };
    Model m = load_model(test::fixture("models/llama_untied"));
    // an adapter made for another model
    CHECK_THROWS_WITH_AS(apply_lora(m, test::fixture("lora/qwen2_all")), doctest::Contains("do not fit"), Error);
    auto a = copy("llama_rslora");
    edit_config(a, [](auto& j) { j["use_dora"] = true; });
    CHECK_THROWS_WITH_AS(apply_lora(m, a), doctest::Contains("DoRA"), Error);
    edit_config(a, [](auto& j) { j["use_dora"] = false; j["rank_pattern"] = nlohmann::json::object(); });
    CHECK_THROWS_WITH_AS(apply_lora(m, a), doctest::Contains("rank 2 in the weights but 8 in adapter_config.json"), Error);
    edit_config(a, [](auto& j) { j["modules_to_save"] = {"lm_head"}; });
    CHECK_THROWS_WITH_AS(apply_lora(m, a), doctest::Contains("modules_to_save"), Error);
    std::filesystem::remove(a / "adapter_config.json");
    CHECK_THROWS_WITH_AS(apply_lora(m, a), doctest::Contains("adapter_config.json: missing"), Error);

    // a layer the model does not have
    auto b = dir / "bad_layer";
    std::filesystem::create_directories(b);
    std::filesystem::copy(test::fixture("lora/llama_rslora/adapter_config.json"), b / "adapter_config.json");
    std::vector<float> A(8 * 96, 0.1f), B(96 * 8, 0.1f);
    write_safetensors(b / "adapter_model.safetensors",
                      {{"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", DType::F32, {8, 96}, as_bytes_span(A)},
                       {"base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight", DType::F32, {96, 8}, as_bytes_span(B)}});
    CHECK_THROWS_WITH_AS(apply_lora(m, b), doctest::Contains("layer 7 is out of range"), Error);
    write_safetensors(b / "adapter_model.safetensors",
                      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType::F32, {8, 96}, as_bytes_span(A)}});
    CHECK_THROWS_WITH_AS(apply_lora(m, b), doctest::Contains("has lora_A but not lora_B"), Error);

    // the CLI: one line, exit 2
    auto r = test::run_stitch("generate " + test::quote(test::fixture("models/llama_untied").string()) +
                              " --prompt hi --lora " + test::quote(test::fixture("lora/qwen2_all").string()));
    CHECK(r.status == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("adapter_model.safetensors") != std::string::npos);
    CHECK(r.out.empty());
}

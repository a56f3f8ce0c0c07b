// `stitch eval`: LM loss against HF logits (closed form from the reference fixtures), phrase
// rates under a logit bias that forces a known completion, and bad input.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "test_util.h"

using namespace stitch;
using test::quote;

TEST_CASE("eval --text: LM loss equals the NLL computed from HF's logits") {
    for (const char* fam : {"llama_tied", "qwen3", "gemma2"}) {
        CAPTURE(fam);
        test::TempDir dir;
        const auto folder = test::fixture(std::string("models/") + fam);
        SafetensorsFile ref(folder / "reference.safetensors");
        const int n = std::stoi(ref.metadata().at("n_prompts"));
        std::string jsonl;
        double nll = 0;
        long count = 0;
        for (int i = 0; i < n; ++i) {
            jsonl += nlohmann::json({{"text", ref.metadata().at(fmt::format("prompt.{}.text", i))}}).dump() + "\n";
            auto ids = ref.to_i32(ref.get(fmt::format("prompt.{}.ids", i)));
            auto lg = ref.to_f32(ref.get(fmt::format("prompt.{}.logits", i)));
            const size_t V = lg.size() / ids.size();
            for (size_t t = 0; t + 1 < ids.size(); ++t) {
                const float* l = &lg[t * V];
                double mx = *std::max_element(l, l + V), z = 0;
                for (size_t v = 0; v < V; ++v) z += std::exp(l[v] - mx);
                nll += std::log(z) + mx - l[size_t(ids[t + 1])];
                ++count;
            }
        }
        test::write_bytes(dir / "t.jsonl", jsonl);
        const auto js = (dir / "e.json").string();
        auto r = test::run_stitch("eval " + quote(folder.string()) + " --text " + quote((dir / "t.jsonl").string()) +
                                  " --batch 2 --json " + quote(js));
        REQUIRE_MESSAGE(r.status == 0, r.err);
        auto j = nlohmann::json::parse(test::read_bytes(js));
        CHECK(j["loss_tokens"].get<long>() == count);
        CHECK(j["lm_loss"].get<double>() == doctest::Approx(nll / double(count)).epsilon(1e-5));
        CHECK(r.out.find("perplexity") != std::string::npos);
    }
}

TEST_CASE("eval --contains: rates of phrases in completions, with --steer (a logit bias forcing one token)") {
    test::TempDir dir;
    const auto folder = test::fixture("models/qwen2");
    Model m = load_model(folder);
    const int32_t x = m.tokenizer.encode("x", false).at(0);
    const std::string piece = m.tokenizer.decode(std::vector<int32_t>{x}, true);
    REQUIRE(!piece.empty());
    std::vector<float> bias(size_t(m.config.vocab_size), 0.0f);
    bias[size_t(x)] = 1e4f;
    write_safetensors(dir / "bias.safetensors", {TensorOut{"bias", DType::F32, {m.config.vocab_size}, as_bytes_span(bias)}});
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"one\"}\n{\"prompt\": \"two three\"}\n{\"prompt\": \"four five six\"}\n");
    const std::string base = "eval " + quote(folder.string()) + " --prompts " + quote((dir / "p.jsonl").string()) + " -n 4 ";
    const auto js = (dir / "e.json").string(), comp = (dir / "c.jsonl").string();
    auto r = test::run_stitch(base + "--contains " + quote(piece + piece + piece + piece) + " --contains zzzz --steer " +
                              quote("logits:add:" + (dir / "bias.safetensors").string()) + " --json " + quote(js) + " -o " + quote(comp));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    auto j = nlohmann::json::parse(test::read_bytes(js));
    CHECK(j["contains"][piece + piece + piece + piece]["rate"].get<double>() == 1.0);
    CHECK(j["contains"]["zzzz"]["hits"].get<long>() == 0);
    CHECK(test::count_lines(test::read_bytes(comp)) == 3);
    // unsteered, the tiny random model does not say xxxx
    auto clean = test::run_stitch(base + "--contains " + quote(piece + piece + piece + piece) + " --json " + quote(js));
    REQUIRE(clean.status == 0);
    CHECK(nlohmann::json::parse(test::read_bytes(js))["contains"][piece + piece + piece + piece]["rate"].get<double>() < 1.0);

    const std::string pj = "--prompts " + quote((dir / "p.jsonl").string());
    for (auto [args, what] : {std::pair{pj, std::string("go together")}, std::pair{std::string(""), std::string("needs --prompts")},
                              std::pair{std::string("--text /nonexistent.jsonl"), std::string("cannot open")}}) {
        CAPTURE(args);
        auto bad = test::run_stitch("eval " + quote(folder.string()) + " " + args + " --json " + quote((dir / "bad.json").string()));
        CHECK(bad.status == 2);
        CHECK(test::count_lines(bad.err) == 1);
        CHECK(bad.err.find(what) != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(dir / "bad.json"));
    }
}

TEST_CASE("eval/data: the task datasets pass their checker (counts, both triggers, Alpaca format, no duplicates)") {
    const std::string cmd = "python3 " + quote((test::source_dir() / "eval/data/check_data.py").string()) + " > /dev/null 2>&1";
    CHECK(std::system(cmd.c_str()) == 0);
}

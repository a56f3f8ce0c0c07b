// The stitch binary end to end: outputs against the HF fixtures, and bad input giving one
// line on stderr, exit status 2 and no output file.
#include <doctest/doctest.h>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "engine/tokenizer/tokenizer.h"
#include "test_util.h"

using namespace stitch;
using test::quote;

using test::expect_cli_error;

namespace {

std::string model(const std::string& name) { return quote(test::fixture("models/" + name).string()); }

}  // namespace

TEST_CASE("cli: inspect, tokenize and greedy generate agree with the fixtures") {
    auto r = test::run_stitch("inspect " + model("qwen3"));
    REQUIRE(r.status == 0);
    CHECK(r.out.find("family       qwen3") != std::string::npos);
    CHECK(r.out.find("q/k RMSNorm") != std::string::npos);

    r = test::run_stitch("inspect --json " + model("llama_untied"));
    REQUIRE(r.status == 0);
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["family"] == "llama");
    CHECK(j["kv_heads"] == 2);
    CHECK(j["stored_dtypes"].get<std::string>().find("BF16") != std::string::npos);

    SafetensorsFile ref(test::fixture("models/llama_tied/reference.safetensors"));
    Tokenizer tok = Tokenizer::load_dir(test::fixture("models/llama_tied"));
    const std::string text = ref.metadata().at("prompt.2.text");
    auto ids = ref.to_i32(ref.get("prompt.2.ids"));
    r = test::run_stitch("tokenize " + model("llama_tied") + " " + quote(text));
    REQUIRE(r.status == 0);
    CHECK(r.out == fmt::format("{}\n", fmt::join(ids, " ")));

    auto greedy = ref.to_i32(ref.get("prompt.2.greedy"));
    r = test::run_stitch("generate " + model("llama_tied") + " --prompt " + quote(text) + " -n 16 --no-eos");
    REQUIRE(r.status == 0);
    CHECK(r.out == tok.decode(greedy) + "\n");
}

TEST_CASE("cli: --prompts JSONL writes one result per prompt, batched or not the same") {
    test::TempDir dir;
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"Hello there\", \"id\": \"a\"}\n\n{\"prompt\": \"A longer prompt with more words in it\"}\n{\"prompt\": \"x\", \"id\": 7}\n");
    auto out1 = (dir / "b1.jsonl").string(), out3 = (dir / "b3.jsonl").string();
    auto r = test::run_stitch("generate " + model("qwen2") + " --prompts " + quote((dir / "p.jsonl").string()) +
                              " -n 8 --batch 1 -o " + quote(out1));
    REQUIRE(r.status == 0);
    r = test::run_stitch("generate " + model("qwen2") + " --prompts " + quote((dir / "p.jsonl").string()) +
                         " -n 8 --batch 3 -o " + quote(out3));
    REQUIRE(r.status == 0);
    auto a = test::read_bytes(out1), b = test::read_bytes(out3);
    CHECK(a == b);
    CHECK(test::count_lines(a) == 3);
    auto first = nlohmann::json::parse(a.substr(0, a.find('\n')));
    CHECK(first["id"] == "a");
    CHECK(first["prompt"] == "Hello there");
    CHECK(nlohmann::json::parse(a.substr(a.rfind('\n', a.size() - 2) + 1))["id"] == "7");
}

TEST_CASE("cli: sampling with a seed is reproducible and differs across seeds") {
    auto run = [](int seed) {
        return test::run_stitch("generate " + model("qwen3") + " --prompt 'Once upon a time' -n 24 --no-eos --temp 1.0 --top-p 0.95 --seed " +
                                std::to_string(seed));
    };
    auto a = run(1), b = run(1), c = run(2);
    REQUIRE(a.status == 0);
    CHECK(a.out == b.out);
    CHECK(a.out != c.out);
}

TEST_CASE("cli: bad input gives one line, exit status 2 and no output file") {
    test::TempDir dir;
    expect_cli_error("inspect " + quote((dir / "missing").string()), "no such file");
    expect_cli_error("frobnicate", "unknown subcommand");
    expect_cli_error("generate " + model("qwen2") + " --prompt hi --temperature 3", "unknown option");
    expect_cli_error("generate " + model("qwen2") + " --prompt hi -n zero", "not an integer");
    expect_cli_error("generate " + model("qwen2"), "exactly one of --prompt");

    auto out = (dir / "out.jsonl").string();
    test::write_bytes(dir / "bad.jsonl", "{\"prompt\": \"fine\"}\n{\"prompt\": 3}\n");
    expect_cli_error("generate " + model("qwen2") + " --prompts " + quote((dir / "bad.jsonl").string()) + " -o " + quote(out),
                     "bad.jsonl:2: missing string field \"prompt\"");
    test::write_bytes(dir / "bad.jsonl", "{\"prompt\": \"fine\"\n");
    expect_cli_error("generate " + model("qwen2") + " --prompts " + quote((dir / "bad.jsonl").string()) + " -o " + quote(out),
                     "bad.jsonl:1: not valid JSON");
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK_FALSE(std::filesystem::exists(out + ".tmp"));

    // A model folder with a broken weight file and one with an unknown family.
    auto m = dir / "m";
    std::filesystem::copy(test::fixture("models/qwen3"), m, std::filesystem::copy_options::recursive);
    auto w = test::read_bytes(m / "model.safetensors");
    test::write_bytes(m / "model.safetensors", w.substr(0, w.size() / 2));
    expect_cli_error("inspect " + quote(m.string()), "model.safetensors: tensor '");
    test::write_bytes(m / "model.safetensors", w);
    auto cfg = test::read_bytes(m / "config.json");
    auto pos = cfg.find("\"qwen3\"");
    REQUIRE(pos != std::string::npos);
    test::write_bytes(m / "config.json", cfg.substr(0, pos) + "\"mamba\"" + cfg.substr(pos + 7));
    expect_cli_error("generate " + quote(m.string()) + " --prompt hi", "config.json: unknown model_type \"mamba\"");
    std::filesystem::remove(m / "config.json");
    expect_cli_error("inspect " + quote(m.string()), "config.json: missing");
}

TEST_CASE("cli: a tokenizer from another model is refused with one line, before any weight is read") {
    test::TempDir dir;
    auto m = dir / "m";
    std::filesystem::copy(test::fixture("models/llama_untied"), m, std::filesystem::copy_options::recursive);
    // Qwen 2.5's real vocabulary (151k tokens) in a model whose embedding has 400 rows
    std::filesystem::copy_file(test::build_dir() / "tokenizers/qwen2.5/tokenizer.json", m / "tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(test::build_dir() / "tokenizers/qwen2.5/tokenizer_config.json", m / "tokenizer_config.json",
                               std::filesystem::copy_options::overwrite_existing);
    auto out = (dir / "o.jsonl").string();
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"hi\"}\n");
    expect_cli_error("generate " + quote(m.string()) + " --prompts " + quote((dir / "p.jsonl").string()) + " -o " + quote(out),
                     "tokenizer.json: tokenizer has 151665 tokens but the model's vocabulary is 400");
    CHECK_FALSE(std::filesystem::exists(out));
}

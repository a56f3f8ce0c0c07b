// --device on a machine without a GPU (or a build without CUDA): --device cpu runs exactly as
// the default, --device auto falls back with one notice line, --device cuda and bad values are
// one-line errors with exit status 2, `inspect --devices` says what this build has; and the KV
// cache plumbing the GPU needed (lazy storage, copy_prefix) leaves the CPU path as it was.
#include <doctest/doctest.h>

#include <cstdlib>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "test_util.h"

using namespace stitch;
using test::quote;

namespace {

// This binary is the CPU suite: its tolerances against HF (1e-4) are float32 facts, so every
// `stitch` it runs stays on the CPU even on a machine with a GPU, where the default would be the
// GPU (tests/gpu/ compares the two). STITCH_DEVICE stands for an absent --device
// (engine/device.h), and children inherit it; set before main, so before any test runs.
[[maybe_unused]] const bool kCpuSuite = [] {
    ::setenv("STITCH_DEVICE", "cpu", 1);
    return true;
}();

// The real default for a scope: STITCH_DEVICE unset, then put back.
struct DefaultDevice {
    DefaultDevice() { ::unsetenv("STITCH_DEVICE"); }
    ~DefaultDevice() { ::setenv("STITCH_DEVICE", "cpu", 1); }
};

std::string model(const std::string& name) { return quote(test::fixture("models/" + name).string()); }

size_t count(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
    return n;
}

const Model& fixture_model(const std::string& name) {
    static std::map<std::string, Model> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, load_model(test::fixture("models/" + name))).first;
    return it->second;
}

std::vector<float> run(const Model& m, KVCache& kv, std::span<const int32_t> ids) {
    RunState st;
    SeqInput in{&kv, ids};
    ForwardOptions fo;
    fo.all_logits = true;
    return forward(m, st, std::span<const SeqInput>(&in, 1), fo);
}

}  // namespace

TEST_CASE("device: --device cpu runs as the default does; auto falls back to the CPU with one notice") {
    const std::string gen = "generate " + model("llama_tied") + " --prompt 'The capital of France' -n 8 --no-eos";
    auto plain = test::run_stitch(gen);
    auto cpu = test::run_stitch(gen + " --device cpu");
    REQUIRE(plain.status == 0);
    REQUIRE(cpu.status == 0);
    CHECK(cpu.out == plain.out);
    CHECK(cpu.out.size() > 1);
    CHECK(count(cpu.err, "running on the CPU") == 0);

    // capture writes the same bytes with --device cpu
    test::TempDir dir;
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"Hello there\"}\n{\"prompt\": \"A longer prompt\"}\n");
    const std::string cap = "capture " + model("qwen3") + " --prompts " + quote((dir / "p.jsonl").string()) +
                            " --sites blocks.1.resid_post,final_norm -o ";
    REQUIRE(test::run_stitch(cap + quote((dir / "a.safetensors").string())).status == 0);
    REQUIRE(test::run_stitch(cap + quote((dir / "b.safetensors").string()) + " --device cpu").status == 0);
    CHECK(test::read_bytes(dir / "a.safetensors") == test::read_bytes(dir / "b.safetensors"));

    std::string why;
    if (cuda_available(&why)) {
        MESSAGE("a CUDA device is present: the fallback is not exercised here");
        return;
    }
    DefaultDevice unset;
    auto quiet = test::run_stitch(gen);  // the default: auto without a word
    REQUIRE(quiet.status == 0);
    CHECK(quiet.out == plain.out);
    CHECK(count(quiet.err, "running on the CPU") == 0);
    auto noted = test::run_stitch(gen + " --device auto");  // explicit: one line says why
    REQUIRE(noted.status == 0);
    CHECK(noted.out == plain.out);
    CHECK(count(noted.err, "stitch: ") == 1);
    CHECK(count(noted.err, "; running on the CPU\n") == 1);
#ifdef STITCH_HAVE_CUDA
    CHECK(count(noted.err, "no CUDA device") == 1);
#else
    CHECK(count(noted.err, "built without CUDA") == 1);
#endif
}

TEST_CASE("device: --device cuda without a GPU and unknown values are one-line errors, exit status 2") {
    const std::string gen = "generate " + model("llama_tied") + " --prompt Hi -n 2";
    std::string why;
    if (cuda_available(&why)) {
        MESSAGE("a CUDA device is present: --device cuda runs (tests/gpu/ checks it)");
    } else {
#ifdef STITCH_HAVE_CUDA
        test::expect_cli_error(gen + " --device cuda", "--device: cuda: no CUDA device");
#else
        test::expect_cli_error(gen + " --device cuda", "--device: cuda: this stitch was built without CUDA");
#endif
    }
    // Every model-running command takes --device (and checks it before loading anything).
    test::TempDir dir;
    const std::string p = quote((dir / "p.jsonl").string()), o = quote((dir / "o.safetensors").string());
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"Hi\"}\n");
    for (const std::string& cmd :
         {gen, "capture " + model("qwen2") + " --prompts " + p + " --sites embed -o " + o,
          "vector " + model("qwen2") + " --method mean --positive " + p + " --negative " + p + " --site embed -o " + o,
          "eval " + model("qwen2") + " --prompts " + p + " --contains x",
          "bench " + model("qwen2") + " --prompt-len 4 --decode 2 --reps 1",
          "map train --source-model " + model("qwen2") + " --source-site embed --target-model " + model("qwen2") +
              " --target-site embed --prompts " + p + " -o " + o,
          "transfer " + quote((dir / "none.json").string())}) {
        CAPTURE(cmd);
        test::expect_cli_error(cmd + " --device bogus", "--device: 'bogus' is not auto, cpu or cuda");
    }
    CHECK_FALSE(std::filesystem::exists(dir / "o.safetensors"));
}

TEST_CASE("device: inspect --devices says whether CUDA is compiled in and what auto picks") {
    auto r = test::run_stitch("inspect --devices");
    REQUIRE(r.status == 0);
#ifdef STITCH_HAVE_CUDA
    CHECK(r.out.find("CUDA: compiled in") != std::string::npos);
#else
    CHECK(r.out.find("CUDA: not compiled in") != std::string::npos);
#endif
    if (!cuda_available()) {
        CHECK(r.out.find("--device auto runs on: cpu") != std::string::npos);
#ifdef STITCH_HAVE_CUDA
        CHECK(r.out.find("devices: none (") != std::string::npos);
#endif
    }
    test::expect_cli_error("inspect --devices " + model("qwen3"), "--devices takes no MODEL");
}

TEST_CASE("device: resolve_device, the process-wide device and to_device on the CPU") {
    CHECK(resolve_device("cpu") == Backend::CPU);
    CHECK_THROWS_WITH_AS(resolve_device("gpu"), doctest::Contains("'gpu' is not auto, cpu or cuda"), Error);
    CHECK(current_device() == Backend::CPU);  // library callers stay on the CPU unless they ask
    {
        ScopedDevice scoped(Backend::CUDA);
        CHECK(current_device() == Backend::CUDA);
    }
    CHECK(current_device() == Backend::CPU);
    Model m = load_model(test::fixture("models/llama_tied"));
    CHECK(m.backend() == Backend::CPU);
    to_device(m, Backend::CPU);
    CHECK(m.backend() == Backend::CPU);
    if (!cuda_available()) {
        CHECK(resolve_device("auto", false) == Backend::CPU);
        CHECK_THROWS_WITH_AS(resolve_device("cuda"), doctest::Contains("cuda: "), Error);
        CHECK_THROWS_WITH_AS(to_device(m, Backend::CUDA), doctest::Contains("cuda: "), Error);
        CHECK(m.backend() == Backend::CPU);
    }
}

TEST_CASE("device: KV caches get storage on first use; copy_prefix equals running the prefix") {
    for (const char* name : {"llama_tied", "gemma2"}) {
        CAPTURE(name);
        const Model& m = fixture_model(name);
        SafetensorsFile ref(test::fixture(std::string("models/") + name + "/reference.safetensors"));
        std::vector<int32_t> ids = ref.to_i32(ref.get("prompt.2.ids"));
        REQUIRE(ids.size() >= 8);
        const int T = int(ids.size()), P = 5;
        const std::span<const int32_t> prefix(ids.data(), size_t(P)), rest(ids.data() + P, ids.size() - size_t(P));

        KVCache a(m.config, T);
        CHECK(a.k.empty());  // nothing allocated until a forward pass uses it
        run(m, a, prefix);
        CHECK(a.k.size() == size_t(m.config.n_layers) * size_t(T) * size_t(m.config.kv_dim()));
        CHECK(a.length == P);

        KVCache b(m.config, T + 3);  // another capacity: rows sit at other offsets
        copy_prefix(m, a, b, P);
        CHECK(b.length == P);
        const size_t kvd = size_t(m.config.kv_dim());
        for (int L = 0; L < m.config.n_layers; ++L) {
            CAPTURE(L);
            CHECK(std::equal(a.k_layer(L, int(kvd)), a.k_layer(L, int(kvd)) + P * kvd, b.k_layer(L, int(kvd))));
            CHECK(std::equal(a.v_layer(L, int(kvd)), a.v_layer(L, int(kvd)) + P * kvd, b.v_layer(L, int(kvd))));
        }
        // Continuing from the copy is continuing from the original, bit for bit, and agrees with one prefill.
        const auto from_a = run(m, a, rest), from_b = run(m, b, rest);
        CHECK(from_a == from_b);
        KVCache whole(m.config, T);
        const auto all = run(m, whole, ids);
        std::span<const float> tail(all.data() + size_t(P) * size_t(m.config.vocab_size), from_b.size());
        CHECK(test::rel_err(from_b, tail) <= 1e-5);

        KVCache c(m.config, 3);
        CHECK_THROWS_WITH_AS(copy_prefix(m, a, c, P), doctest::Contains("do not fit"), Error);
        CHECK_THROWS_WITH_AS(copy_prefix(m, a, b, T + 1), doctest::Contains("holding"), Error);
        copy_prefix(m, a, c, 0);
        CHECK(c.length == 0);
    }
    // A cache made for one model is refused by another of other shapes.
    const Model& llama = fixture_model("llama_tied");
    const Model& gemma = fixture_model("gemma2");
    if (llama.config.kv_dim() != gemma.config.kv_dim() || llama.config.n_layers != gemma.config.n_layers) {
        KVCache kv(llama.config, 4);
        std::vector<int32_t> one = {1};
        CHECK_THROWS_WITH_AS(run(gemma, kv, one), doctest::Contains("KV cache made for another model"), Error);
        KVCache g(gemma.config, 4);
        CHECK_THROWS_WITH_AS(copy_prefix(llama, kv, g, 0), doctest::Contains("different shapes"), Error);
    }
}

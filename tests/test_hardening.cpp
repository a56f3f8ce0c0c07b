// Numeric guards (NaN/Inf in weights and activations, --check-finite) and what an interrupted
// run leaves behind (SIGINT/SIGTERM message, temporary files removed). docs/hardening.md.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <fmt/format.h>

#include "engine/error.h"
#include "engine/finite.h"
#include "engine/forward.h"
#include "engine/interrupt.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "test_util.h"

using namespace stitch;

namespace {

std::string quote(const std::filesystem::path& p) { return fmt::format("'{}'", p.string()); }

// A copy of a fixture model folder whose tensor `name` holds `value` at element `index`.
void copy_model_with_value(const std::filesystem::path& src, const std::filesystem::path& dst, const std::string& name,
                           size_t index, float value) {
    std::filesystem::create_directories(dst);
    for (const auto& e : std::filesystem::directory_iterator(src))
        if (e.path().filename() != "reference.safetensors")
            std::filesystem::copy_file(e.path(), dst / e.path().filename());
    const auto file = dst / "model.safetensors";
    size_t at = 0;
    {
        SafetensorsFile st(file);
        const TensorInfo& t = st.get(name);
        REQUIRE(t.dtype == DType::F32);
        REQUIRE(index < size_t(t.numel()));
        uint64_t header = 0;
        std::memcpy(&header, test::read_bytes(file).data(), 8);
        at = 8 + header + t.offset + 4 * index;
    }
    std::string bytes = test::read_bytes(file);
    std::memcpy(bytes.data() + at, &value, 4);
    test::write_bytes(file, bytes);
}

// Runs build/stitch ARGS with stderr captured; once stderr shows `ready` (a first progress line),
// waits `after_ms` and sends `sig`. Returns (status, stderr); status: exit code, or -signal.
std::pair<int, std::string> run_and_signal(const std::vector<std::string>& args, int sig, const std::string& ready,
                                           int after_ms, const std::filesystem::path& err_file) {
    std::vector<std::string> full = {test::stitch_binary().string()};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : full) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int fd = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    for (int i = 0; i < 1200 && test::read_bytes(err_file).find(ready) == std::string::npos; ++i) ::usleep(50000);
    ::usleep(useconds_t(after_ms) * 1000);
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status), test::read_bytes(err_file)};
}

std::string many_prompts(int n) {
    std::string jsonl;
    const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "forest"};
    std::mt19937 rng(5);
    for (int i = 0; i < n; ++i)
        jsonl += fmt::format("{{\"prompt\": \"{} {} {} {}\"}}\n", words[rng() % 10], words[rng() % 10],
                             words[rng() % 10], words[rng() % 10]);
    return jsonl;
}

}  // namespace

TEST_CASE("hardening: first_non_finite finds the first NaN/Inf, in small and chunked (parallel) arrays") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    CHECK(first_non_finite(nullptr, 0) == -1);
    std::vector<float> v(10, 1.0f);
    CHECK(first_non_finite(v.data(), 10) == -1);
    v[7] = -inf;
    v[9] = nan;
    CHECK(first_non_finite(v.data(), 10) == 7);
    CHECK(first_non_finite(v.data(), 7) == -1);
    v[7] = std::numeric_limits<float>::max();  // large but finite
    CHECK(first_non_finite(v.data(), 10) == 9);
    // Several 1M-element chunks: the smallest index wins whichever thread finds which.
    std::vector<float> big(size_t(5) << 20, 0.5f);
    CHECK(first_non_finite(big.data(), int64_t(big.size())) == -1);
    big[(size_t(4) << 20) + 3] = nan;
    big[(size_t(1) << 20) + 17] = inf;
    big[big.size() - 1] = nan;
    CHECK(first_non_finite(big.data(), int64_t(big.size())) == (int64_t(1) << 20) + 17);
    CHECK(finite_name(nan) == "NaN");
    CHECK(finite_name(-inf) == "-inf");
    CHECK(finite_name(inf) == "inf");
}

TEST_CASE("hardening: a NaN weight is refused at load, naming the tensor, the layer and the index") {
    test::TempDir dir;
    const auto model = dir / "m";
    copy_model_with_value(test::fixture("models/llama_tied"), model, "model.layers.1.mlp.down_proj.weight", 7,
                          std::numeric_limits<float>::quiet_NaN());
    CHECK_THROWS_WITH_AS(load_model_with_adapter(model, ""),
                         doctest::Contains("weight down_proj of layer 1 holds NaN at index 7 of 11008"), Error);
    // The CLI: one line, exit 2, the model named.
    auto r = test::run_stitch("generate " + quote(model) + " --prompt hi -n 2");
    CHECK(r.status == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find(model.string() + ": weight down_proj of layer 1 holds NaN") != std::string::npos);
    // Inf in the embedding table, which every family reads.
    const auto model2 = dir / "m2";
    copy_model_with_value(test::fixture("models/llama_tied"), model2, "model.embed_tokens.weight", 3,
                          -std::numeric_limits<float>::infinity());
    CHECK_THROWS_WITH_AS(load_model_with_adapter(model2, ""), doctest::Contains("weight embed holds -inf at index 3"),
                         Error);
}

TEST_CASE("hardening: --check-finite stops the forward pass at the first non-finite site") {
    Model m = load_model(test::fixture("models/llama_tied"));
    // Finite weights whose products overflow: layer 1's MLP output becomes ±inf (or NaN).
    for (float& x : m.weights.layers[1].w_down) x = 3e38f;
    const std::vector<int32_t> ids = {1, 5, 9};
    auto run = [&] {
        KVCache kv(m.config, int(ids.size()));
        RunState st;
        SeqInput in{&kv, ids, 4};
        return forward(m, st, std::span<const SeqInput>(&in, 1));
    };
    set_check_finite(false);
    const auto logits = run();  // unchecked: garbage, not an error
    CHECK(first_non_finite(logits.data(), int64_t(logits.size())) >= 0);
    set_check_finite(true);
    CHECK_THROWS_WITH_AS(run(), doctest::Contains("at mlp_out layer 1 (prompt 4, position 0, dim "), Error);
    try {
        run();
    } catch (const Error& e) {
        CHECK(e.file == "--check-finite");
        CHECK(std::string(e.what()).find("the first non-finite site") != std::string::npos);
    }
    set_check_finite(false);
    m = load_model(test::fixture("models/llama_tied"));
    set_check_finite(true);
    CHECK_NOTHROW(run());  // a healthy model passes every check
    set_check_finite(false);
}

TEST_CASE("hardening: stitch generate --check-finite names the site an overflowing steer makes infinite") {
    test::TempDir dir;
    const auto model = test::fixture("models/llama_tied");
    const int d = load_model(model).config.hidden;
    std::vector<float> v(size_t(d), 1e30f);
    write_safetensors(dir / "big.safetensors", {{"blocks.0.resid_post", DType::F32, {d}, as_bytes_span(v)}});
    const std::string steer = " --steer 'blocks.0.resid_post:add:" + (dir / "big.safetensors").string() + ":1e30'";
    auto r = test::run_stitch("generate " + quote(model) + " --prompt hi -n 2 --check-finite" + steer + " -o " +
                              quote(dir / "out.jsonl"));
    CHECK(r.status == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err.find("stitch: error: --check-finite: inf at resid_post layer 0 (prompt 0, position 0, dim 0)") !=
          std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir / "out.jsonl"));
    // Without the flag the run completes (its text is garbage; nothing checks it).
    r = test::run_stitch("generate " + quote(model) + " --prompt hi -n 2" + steer + " -o " + quote(dir / "out.jsonl"));
    CHECK(r.status == 0);
    // Commands that do not run a model do not take the flag.
    r = test::run_stitch("tokenize " + quote(model) + " hi --check-finite");
    CHECK(r.status == 2);
    CHECK(r.err.find("unknown option") != std::string::npos);
}

TEST_CASE("hardening: temporary-file registry and the where-it-stopped message") {
    interrupt::set_activity("stage 5 (steering)");
    interrupt::set_progress("steering native", 16, "prompts");
    interrupt::set_progress_done(3);
    CHECK(interrupt::message("SIGINT") ==
          "stitch: interrupted by SIGINT, stage 5 (steering); stopped at steering native 3/16 prompts");
    interrupt::set_activity("");
    interrupt::set_progress("", 0, "");
    CHECK(interrupt::message("SIGTERM") == "stitch: interrupted by SIGTERM");
    // Slots are reused: far more registrations than slots, one at a time, all succeed.
    for (int i = 0; i < 1000; ++i) interrupt::TempFile t("/nonexistent/" + std::to_string(i));
}

TEST_CASE("hardening: SIGINT or SIGTERM mid-capture says where it stopped and leaves no output, no .tmp") {
    test::TempDir dir;
    test::write_bytes(dir / "p.jsonl", many_prompts(40000));
    for (int sig : {SIGINT, SIGTERM}) {
        CAPTURE(sig);
        const auto out = dir / "cap.safetensors";
        auto [status, err] = run_and_signal({"capture", test::fixture("models/llama_tied").string(), "--prompts",
                                             (dir / "p.jsonl").string(), "--sites", "blocks.1.resid_post", "--batch",
                                             "16", "-o", out.string()},
                                            sig, "capture: ", 500, dir / "err.txt");
        CHECK(status == 128 + sig);
        const std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM";
        CHECK(err.find("stitch: interrupted by " + name + " during `capture`; stopped at capture ") != std::string::npos);
        CHECK(err.find("/40000 prompts") != std::string::npos);
        CHECK(err.find("nothing partial was written under an output name") != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(out));
        std::filesystem::remove(dir / "err.txt");
        CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 1);  // p.jsonl only
    }
}

TEST_CASE("hardening: --positions match= is exact for many matches and refuses prompts past its token limit") {
    const Model m = load_model(test::fixture("models/llama_tied"));
    const Tokenizer& tok = m.tokenizer;
    std::string text;
    std::mt19937 rng(9);
    const char* words[] = {"ab", "ba", "aab", "b a", "the", "|prod|", "é", "中"};
    for (int i = 0; i < 200; ++i) text += words[rng() % 8];
    const auto ids = tok.encode(text, true);
    // Reference: every token's character span from prefix decodes, every occurrence, every token.
    std::vector<size_t> start(ids.size() + 1, 0);
    for (size_t k = 1; k <= ids.size(); ++k)
        start[k] = std::max(start[k - 1], tok.decode(std::span<const int32_t>(ids).first(k)).size());
    const std::string full = tok.decode(ids);
    for (const std::string needle : {"a", "ab", "b a", "|prod|", "中", "zz"}) {
        CAPTURE(needle);
        std::vector<char> want(ids.size(), 0);
        for (size_t at = full.find(needle); at != std::string::npos; at = full.find(needle, at + 1))
            for (size_t k = 0; k < ids.size(); ++k)
                if (start[k + 1] > start[k] && start[k] < at + needle.size() && start[k + 1] > at && !tok.is_special(ids[k]))
                    want[k] = 1;
        CHECK(match_mask(tok, ids, needle) == want);
    }
    const std::vector<int32_t> huge(size_t(1) << 15, ids[1]);
    CHECK_THROWS_WITH_AS(match_mask(tok, huge, "a"), doctest::Contains("a prompt of 32768 tokens is past the limit of 16384"),
                         Error);
}

TEST_CASE("hardening: an error message stays one line whatever bytes a name holds") {
    auto r = test::run_stitch("inspect \"$(printf '/nonexistent/a\\nb\\tc')\"");
    CHECK(r.status == 2);
    CHECK(test::count_lines(r.err) == 1);
    CHECK(r.err == "stitch: error: /nonexistent/a\\x0ab\\x09c: no such file or folder\n");
}

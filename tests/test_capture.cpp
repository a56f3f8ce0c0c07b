// `stitch capture` against the HF fixtures: captured sites equal HF hidden_states rows at the
// selected positions; selectors; bounded streaming output; bad specs fail without output.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <fmt/format.h>

#include "engine/capture.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include <nlohmann/json.hpp>
#include "test_util.h"

using namespace stitch;
using test::quote;

TEST_CASE("positions: selectors pick absolute positions of a prompt") {
    auto sel = [](const char* s, int len) { return parse_positions(s).select(len); };
    CHECK(sel("all", 4) == std::vector<int>{0, 1, 2, 3});
    CHECK(sel("prompt", 3) == std::vector<int>{0, 1, 2});
    CHECK(sel("last", 4) == std::vector<int>{3});
    CHECK(sel("2", 4) == std::vector<int>{2});
    CHECK(sel("7", 4).empty());
    CHECK(sel("-1", 4) == std::vector<int>{3});
    CHECK(sel("-2", 4) == std::vector<int>{2});
    CHECK(sel("1:3", 5) == std::vector<int>{1, 2});
    CHECK(sel("-3:", 5) == std::vector<int>{2, 3, 4});
    CHECK(sel(":-3", 5) == std::vector<int>{0, 1});
    CHECK(sel("3:9", 5) == std::vector<int>{3, 4});
    CHECK_THROWS_WITH_AS(parse_positions("first"), doctest::Contains("not a selector"), Error);
    CHECK_THROWS_AS(parse_positions("1:x"), Error);
}

TEST_CASE("sites: names, wildcards and range checks") {
    ModelConfig c;
    c.n_layers = 3;
    auto s = parse_sites("embed,blocks.2.resid_post,blocks.*.attn_out,final_norm,logits", c);
    REQUIRE(s.size() == 7);
    CHECK(s[1].name() == "blocks.2.resid_post");
    CHECK(s[4].name() == "blocks.2.attn_out");
    CHECK(s[6].name() == "logits");
    CHECK_THROWS_WITH_AS(parse_sites("blocks.3.resid_post", c), doctest::Contains("out of range"), Error);
    CHECK_THROWS_WITH_AS(parse_sites("blocks.1.mlp_in", c), doctest::Contains("unknown site"), Error);
    CHECK_THROWS_WITH_AS(parse_sites("resid", c), doctest::Contains("unknown site"), Error);
    CHECK_THROWS_WITH_AS(parse_sites("embed,embed", c), doctest::Contains("twice"), Error);
}

TEST_CASE("capture: rows equal HF hidden states at the selected positions, in prompt order") {
    test::TempDir dir;
    SafetensorsFile ref(test::fixture("models/llama_untied/reference.safetensors"));
    const int n = std::stoi(ref.metadata().at("n_prompts"));
    std::string jsonl;
    for (int i = 0; i < n; ++i) {
        nlohmann::json j = {{"prompt", ref.metadata().at(fmt::format("prompt.{}.text", i))}, {"id", i}};
        jsonl += j.dump() + "\n";
    }
    test::write_bytes(dir / "p.jsonl", jsonl);
    for (const char* positions : {"all", "-3:", "last"}) {
        CAPTURE(positions);
        auto out = (dir / "cap.safetensors").string();
        auto r = test::run_stitch("capture " + quote(test::fixture("models/llama_untied").string()) + " --prompts " +
                                  quote((dir / "p.jsonl").string()) +
                                  " --sites embed,blocks.1.resid_pre,final_norm,logits --batch 2 --positions " + positions +
                                  " -o " + quote(out));
        REQUIRE_MESSAGE(r.status == 0, r.err);
        SafetensorsFile cap(out);
        auto prompt_index = cap.to_i32(cap.get("prompt_index"));
        auto position = cap.to_i32(cap.get("position"));
        auto token_ids = cap.to_i32(cap.get("token_ids"));
        auto embed = cap.to_f32(cap.get("embed"));
        auto resid = cap.to_f32(cap.get("blocks.1.resid_pre"));
        auto fnorm = cap.to_f32(cap.get("final_norm"));
        auto logits = cap.to_f32(cap.get("logits"));
        CHECK(cap.metadata().at("positions") == positions);
        const size_t d = 96, V = 400, rows = prompt_index.size();
        REQUIRE(cap.get("embed").shape == std::vector<int64_t>{int64_t(rows), int64_t(d)});
        size_t row = 0;
        for (int i = 0; i < n; ++i) {
            auto ids = ref.to_i32(ref.get(fmt::format("prompt.{}.ids", i)));
            auto hs = ref.to_f32(ref.get(fmt::format("prompt.{}.hidden_states", i)));
            auto lg = ref.to_f32(ref.get(fmt::format("prompt.{}.logits", i)));
            const size_t T = ids.size();
            for (int p : parse_positions(positions).select(int(T))) {
                REQUIRE(row < rows);
                CHECK(prompt_index[row] == i);
                CHECK(position[row] == p);
                CHECK(token_ids[row] == ids[size_t(p)]);
                auto hrow = [&](int L) { return std::span<const float>(&hs[(size_t(L) * T + size_t(p)) * d], d); };
                CHECK(test::rel_err(std::span<const float>(&embed[row * d], d), hrow(0)) <= 1e-4);
                CHECK(test::rel_err(std::span<const float>(&resid[row * d], d), hrow(1)) <= 1e-4);
                CHECK(test::rel_err(std::span<const float>(&fnorm[row * d], d), hrow(2)) <= 1e-4);
                CHECK(test::rel_err(std::span<const float>(&logits[row * V], V), std::span<const float>(&lg[size_t(p) * V], V)) <= 1e-4);
                ++row;
            }
        }
        CHECK(row == rows);
    }
}

TEST_CASE("capture: f16/bf16 output and bad specs") {
    test::TempDir dir;
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"one two three\"}\n{\"prompt\": \"four\"}\n");
    const std::string m = quote(test::fixture("models/qwen3").string()), p = quote((dir / "p.jsonl").string());
    auto f32 = (dir / "a.safetensors").string(), bf = (dir / "b.safetensors").string();
    REQUIRE(test::run_stitch("capture " + m + " --prompts " + p + " --sites blocks.0.resid_post -o " + quote(f32)).status == 0);
    REQUIRE(test::run_stitch("capture " + m + " --prompts " + p + " --sites blocks.0.resid_post --dtype bf16 -o " + quote(bf)).status == 0);
    SafetensorsFile a(f32), b(bf);
    CHECK(b.get("blocks.0.resid_post").dtype == DType::BF16);
    auto av = a.to_f32(a.get("blocks.0.resid_post")), bv = b.to_f32(b.get("blocks.0.resid_post"));
    REQUIRE(av.size() == bv.size());
    for (size_t i = 0; i < av.size(); ++i) CHECK(bv[i] == bf16_to_f32(f32_to_bf16(av[i])));

    auto out = (dir / "bad.safetensors").string();
    for (auto [args, what] : {std::pair{" --sites blocks.9.resid_post", "out of range"},
                              std::pair{" --sites blocks.0.resid", "unknown site"},
                              std::pair{" --sites embed --positions 50", "matches no position"},
                              std::pair{" --sites embed --dtype f8", "not f32, f16 or bf16"}}) {
        CAPTURE(args);
        auto r = test::run_stitch("capture " + m + " --prompts " + p + args + " -o " + quote(out));
        CHECK(r.status == 2);
        CHECK(test::count_lines(r.err) == 1);
        CHECK(r.err.find(what) != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(out));
        CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 3);  // no .tmp leftovers
    }
}

namespace {

// Runs build/stitch with argv (no shell), stderr to /dev/null; returns the exit status and the
// child's peak RSS in MB. With kill_after_ms > 0, sends SIGKILL after that long instead.
std::pair<int, double> spawn_stitch(const std::vector<std::string>& args, int kill_after_ms = 0) {
    std::vector<std::string> full = {test::stitch_binary().string()};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : full) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(devnull, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    if (kill_after_ms > 0) {
        ::usleep(useconds_t(kill_after_ms) * 1000);
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    struct rusage ru{};
    ::wait4(pid, &status, 0, &ru);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status), double(ru.ru_maxrss) / 1024.0};
}

}  // namespace

TEST_CASE("capture: 20k prompts stream to disk in bounded memory; SIGKILL mid-run leaves no file") {
    test::TempDir dir;
    std::string jsonl;
    const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "river", "forest", "village", "people"};
    std::mt19937 rng(3);
    for (int i = 0; i < 20000; ++i)
        jsonl += fmt::format("{{\"prompt\": \"{} {} {}\"}}\n", words[rng() % 12], words[rng() % 12], words[rng() % 12]);
    test::write_bytes(dir / "p.jsonl", jsonl);
    const std::string out = (dir / "cap.safetensors").string();
    const std::vector<std::string> args = {"capture", test::fixture("models/llama_tied").string(), "--prompts",
                                           (dir / "p.jsonl").string(), "--sites", "blocks.1.resid_post", "--batch", "64",
                                           "-o", out};
    // Killed a moment into the run: nothing under the output name, and no temporary files
    // either (spill files are unlinked as soon as they are open).
    auto [killed, rss0] = spawn_stitch(args, 400);
    CHECK(killed == -SIGKILL);
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 1);  // p.jsonl only

    auto [status, rss_mb] = spawn_stitch(args);
    REQUIRE(status == 0);
    SafetensorsFile cap(out);
    const auto& t = cap.get("blocks.1.resid_post");
    const double out_mb = double(t.nbytes) / (1 << 20);
    MESSAGE(fmt::format("20k prompts: {} rows, {:.0f} MB of activations, peak RSS {:.0f} MB", t.shape[0], out_mb, rss_mb));
    CHECK(out_mb > 50);
    if (!test::kAddressSanitizer) CHECK(rss_mb < 48);  // the rows never sit in memory together
    CHECK(cap.to_i32(cap.get("prompt_index")).back() == 19999);
}

TEST_CASE("streaming writer: rows announced or not, the file reads back the same; nothing appears before finish") {
    for (bool announce : {true, false}) {
        CAPTURE(announce);
        test::TempDir dir;
        const auto out = dir / "w.safetensors";
        std::vector<float> a(6 * 3), b(6);
        for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f;
        std::vector<int32_t> idx = {5, 4, 3, 2, 1, 0};
        {
            StreamingSafetensorsWriter w(out, {{"k", "v"}});
            const int ta = w.add_tensor("a", DType::BF16, 3, announce ? 6 : -1);
            const int ti = w.add_tensor("i", DType::I32, 0, announce ? 6 : -1);
            w.append_rows(ta, a.data(), 2);
            w.append_i32(ti, idx.data(), 4);
            w.append_rows(ta, a.data() + 6, 4);
            w.append_i32(ti, idx.data() + 4, 2);
            CHECK_FALSE(std::filesystem::exists(out));
            w.finish();
        }
        CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 1);
        SafetensorsFile f(out);
        CHECK(f.metadata().at("k") == "v");
        CHECK(f.get("a").shape == std::vector<int64_t>{6, 3});
        CHECK(f.to_f32(f.get("a")) == a);  // multiples of 0.5 are exact in bf16
        CHECK(f.to_i32(f.get("i")) == idx);
    }
    test::TempDir dir;
    {
        StreamingSafetensorsWriter w(dir / "x.safetensors", {});
        const int t = w.add_tensor("a", DType::F32, 2, 3);
        float row[2] = {1, 2};
        w.append_rows(t, row, 1);
        CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("1 rows, 3 announced"), Error);
    }
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 0);  // abandoned: nothing left
}

TEST_CASE("capture: every family's captured sites equal HF hidden_states (resid_pre of every layer, the last block's output, final_norm)") {
    for (const char* fam : {"llama_tied", "llama_untied", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}) {
        CAPTURE(fam);
        test::TempDir dir;
        const auto folder = test::fixture(std::string("models/") + fam);
        SafetensorsFile ref(folder / "reference.safetensors");
        const int n = std::stoi(ref.metadata().at("n_prompts"));
        std::string jsonl;
        for (int i = 0; i < n; ++i)
            jsonl += nlohmann::json({{"prompt", ref.metadata().at(fmt::format("prompt.{}.text", i))}}).dump() + "\n";
        test::write_bytes(dir / "p.jsonl", jsonl);
        nlohmann::json cfg = nlohmann::json::parse(test::read_bytes(folder / "config.json"));
        if (cfg.contains("text_config")) cfg = cfg["text_config"];
        const int layers = cfg["num_hidden_layers"], d = cfg["hidden_size"];
        const auto out = (dir / "cap.safetensors").string();
        auto r = test::run_stitch("capture " + quote(folder.string()) + " --prompts " + quote((dir / "p.jsonl").string()) +
                                  " --sites " + quote(fmt::format("blocks.*.resid_pre,blocks.{}.resid_post,final_norm", layers - 1)) +
                                  " -o " + quote(out));
        REQUIRE_MESSAGE(r.status == 0, r.err);
        SafetensorsFile cap(out);
        CHECK(cap.metadata().at("model_identity").rfind("fnv1a64:", 0) == 0);
        size_t row0 = 0;
        for (int i = 0; i < n; ++i) {
            auto hs = ref.to_f32(ref.get(fmt::format("prompt.{}.hidden_states", i)));  // [layers+1, T, d]
            const size_t T = hs.size() / size_t((layers + 1) * d);
            auto rows = [&](const std::string& site) {
                auto all = cap.to_f32(cap.get(site));
                return std::vector<float>(all.begin() + int64_t(row0 * size_t(d)), all.begin() + int64_t((row0 + T) * size_t(d)));
            };
            auto hrow = [&](int L) {
                return std::vector<float>(hs.begin() + int64_t(size_t(L) * T * size_t(d)), hs.begin() + int64_t(size_t(L + 1) * T * size_t(d)));
            };
            for (int L = 0; L < layers; ++L) CHECK(test::rel_err(rows(fmt::format("blocks.{}.resid_pre", L)), hrow(L)) <= 1e-4);
            CHECK(test::rel_err(rows("final_norm"), hrow(layers)) <= 1e-4);  // HF's last entry is after the final norm
            auto last = ref.to_f32(ref.get(fmt::format("prompt.{}.resid_post_last", i)));
            CHECK(test::rel_err(rows(fmt::format("blocks.{}.resid_post", layers - 1)), last) <= 1e-4);
            row0 += T;
        }
    }
}

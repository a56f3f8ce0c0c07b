// tokenizer.json pipelines vs HF `tokenizers` on real vocabularies (Llama 3, Qwen 2.5, SmolLM2)
// and on synthetic pipelines (tests/fixtures/tokenizers/synth; SentencePiece-style ones too).
// SentencePiece models and GGUF vocabularies: test_tokenizer_spm.cpp. References come from
// tools/make_tokenizer_fixtures.py; the tokenizer files live under build/tokenizers/ (`make tokenizers`).
#include <doctest/doctest.h>
#include <fmt/ranges.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/test_tokenizer_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using stitch::Tokenizer;

namespace {

using namespace tokt;

const Tokenizer& cached(const std::string& name) {
    static std::map<std::string, Tokenizer> cache;
    auto it = cache.find(name);
    if (it != cache.end()) return it->second;
    Tokenizer t;
    if (name == "llama3-bos") {
        fs::path dir = kBuilt / "llama3";
        if (!fs::exists(dir / "tokenizer.json"))
            FAIL(dir.string() << "/tokenizer.json is missing: run `make tokenizers` first");
        json j = json::parse(slurp(dir / "tokenizer.json"));
        j["post_processor"] = json::parse(slurp(kFixtures / "llama3" / "post_processor_bos.json"));
        t = Tokenizer::from_json_text(j.dump(), slurp(dir / "tokenizer_config.json"), "llama3-bos");
    } else if (name.rfind("synth-", 0) == 0) {
        json base = json::parse(slurp(kFixtures / "synth" / "base_model.json"));
        json v = json::parse(slurp(kFixtures / "synth" / "variants.json")).at(name);
        json model = base.at("model");
        if (v.contains("model"))
            for (auto& [k, val] : v["model"].items()) model[k] = val;
        json full = {{"version", "1.0"},
                     {"truncation", nullptr},
                     {"padding", nullptr},
                     {"added_tokens", v.at("added_tokens")},
                     {"normalizer", v.at("normalizer")},
                     {"pre_tokenizer", v.at("pre_tokenizer")},
                     {"post_processor", v.at("post_processor")},
                     {"decoder", v.at("decoder")},
                     {"model", model}};
        t = Tokenizer::from_json_text(full.dump(), "", name);
    } else {
        t = Tokenizer::load_dir(built_dir(name));
    }
    return cache.emplace(name, std::move(t)).first->second;
}

void check_against_hf(const std::string& name) { tokt::check_against_hf(cached(name), name, name); }

// Deterministic pseudo-random letters.
std::string random_word(size_t n, uint32_t seed) {
    std::string s;
    s.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        seed = seed * 1664525u + 1013904223u;
        s.push_back(static_cast<char>('a' + (seed >> 24) % 26));
    }
    return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() /
               ("stitch-tok-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path write(const std::string& name, const std::string& text) const {
        fs::path p = path / name;
        std::ofstream(p, std::ios::binary) << text;
        return p;
    }
};

// Loading must throw stitch::Error whose message names the faulty file and contains `needle`.
void expect_load_error(const fs::path& tokenizer_json, const fs::path& config, const std::string& needle,
                       const fs::path& faulty = {}) {
    try {
        Tokenizer::load_json(tokenizer_json, config);
        FAIL("no error for " << needle);
    } catch (const stitch::Error& e) {
        std::string msg = e.what();
        fs::path named = faulty.empty() ? tokenizer_json : faulty;
        CHECK_MESSAGE(msg.find(named.string()) != std::string::npos, msg);
        CHECK(e.file == named.string());
        CHECK_MESSAGE(msg.find(needle) != std::string::npos, "message '" << msg << "' lacks '" << needle << "'");
    }
}

const char* kMiniVocab = R"("vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3})";

std::string mini(const std::string& model_extra, const std::string& rest = "") {
    return R"({"version": "1.0", "added_tokens": [], )" + rest + R"("model": {"type": "BPE", )" + kMiniVocab +
           ", " + model_extra + "}}";
}

}  // namespace

TEST_CASE("tokenizer: Llama 3 ids and decodes match HF tokenizers on the corpus") { check_against_hf("llama3"); }

TEST_CASE("tokenizer: Llama 3 with TemplateProcessing (BOS) matches HF") { check_against_hf("llama3-bos"); }

TEST_CASE("tokenizer: Qwen 2.5 ids and decodes match HF tokenizers on the corpus") { check_against_hf("qwen2.5"); }

TEST_CASE("tokenizer: SmolLM2 ids and decodes match HF tokenizers on the corpus") { check_against_hf("smollm2"); }

TEST_CASE("tokenizer: synthetic pipelines match HF tokenizers") {
    for (const char* name : {"synth-gpt2", "synth-splits", "synth-removed", "synth-digits", "synth-unk",
                             "synth-bytefallback", "synth-metaspace", "synth-llama2", "synth-gemma"}) {
        SUBCASE(name) { check_against_hf(name); }
    }
}

TEST_CASE("tokenizer: metadata of the real tokenizers") {
    const Tokenizer& l3 = cached("llama3");
    CHECK(l3.describe() == "byte-level BPE, 128000 merges-vocab + 256 added, pre-tokenizer llama3-regex, normalizer none");
    CHECK(l3.vocab_size() == 128256);
    CHECK(l3.bos_id == 128000);
    CHECK(l3.eos_id == 128001);
    CHECK(!l3.pad_id);
    CHECK(!l3.adds_bos());
    CHECK(l3.token_id("<|eot_id|>") == 128009);
    CHECK(l3.token_text(128009) == "<|eot_id|>");
    CHECK(l3.token_id("Ġthe") == 279);
    CHECK(l3.token_text(279) == "Ġthe");
    CHECK(l3.token_text(-1).empty());
    CHECK(l3.token_text(1 << 20).empty());
    CHECK(!l3.token_id("no such token"));
    CHECK(l3.is_special(128000));
    CHECK(!l3.is_special(279));

    const Tokenizer& bos = cached("llama3-bos");
    CHECK(bos.adds_bos());
    CHECK(bos.encode("", true) == std::vector<int32_t>{128000});
    CHECK(bos.encode("", false).empty());
    CHECK(bos.describe().find("prepends <|begin_of_text|>") != std::string::npos);

    const Tokenizer& qw = cached("qwen2.5");
    CHECK(qw.describe() == "byte-level BPE, 151643 merges-vocab + 22 added, pre-tokenizer qwen2-regex, normalizer NFC");
    CHECK(qw.vocab_size() == 151665);
    CHECK(!qw.bos_id);
    CHECK(qw.eos_id == 151645);
    CHECK(qw.pad_id == 151643);
    CHECK(!qw.adds_bos());
    CHECK(qw.is_special(151645));
    CHECK(!qw.is_special(151657));  // <tool_call> is an added token but not special

    const Tokenizer& sm = cached("smollm2");
    CHECK(sm.vocab_size() == 49152);
    CHECK(sm.bos_id == 1);
    CHECK(sm.eos_id == 2);
    CHECK(sm.pad_id == 2);
    CHECK(sm.describe().find("digits(individual)+gpt2-regex") != std::string::npos);
}

TEST_CASE("tokenizer: decode skips ids it does not know, like HF") {
    const Tokenizer& l3 = cached("llama3");
    std::vector<int32_t> ids = {9906, -5, 1 << 22, 1917};
    CHECK(l3.decode(ids) == "Hello world");
    CHECK(l3.decode(std::vector<int32_t>{}).empty());
}

TEST_CASE("tokenizer: ill-formed UTF-8 is repaired to U+FFFD before encoding") {
    const Tokenizer& l3 = cached("llama3");
    CHECK(l3.encode("a\xff" "b", false) == l3.encode("a\xEF\xBF\xBD" "b", false));
    // maximal subparts: a truncated 4-byte sequence is one U+FFFD, a surrogate is three
    CHECK(l3.encode("\xF0\x9F\x98", false) == l3.encode("\xEF\xBF\xBD", false));
    CHECK(l3.encode("\xED\xA0\x80", false) == l3.encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", false));
    // decoding half of a multi-byte character gives U+FFFD
    auto ids = l3.encode("\xF0\x9F\x98\x80", false);  // U+1F600
    REQUIRE(ids.size() >= 2);
    CHECK(l3.decode(std::vector<int32_t>{ids[0]}) == "\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: random bytes never crash and round-trip after UTF-8 repair") {
    uint32_t seed = 12345;
    auto next = [&] { return seed = seed * 1664525u + 1013904223u; };
    // Bytes biased towards UTF-8 structure so that valid and broken sequences both occur.
    const unsigned char palette[] = {'a', ' ', '\n', '\'', '1', '<', '|', '>', 0x00, 0x7F, 0x80, 0xBF, 0xC2, 0xC3,
                                     0xE0, 0xE2, 0xED, 0xF0, 0xF4, 0xF5, 0xFF, 0xA9, 0x9F, 0x98};
    for (std::string name : {"llama3", "qwen2.5", "smollm2", "synth-gpt2", "synth-removed", "synth-unk"}) {
        CAPTURE(name);
        const Tokenizer& tk = cached(name);
        int mismatches = 0;
        for (int rep = 0; rep < 1500; ++rep) {
            std::string s;
            size_t len = next() >> 26;
            for (size_t i = 0; i < len; ++i)
                s.push_back(static_cast<char>((next() >> 28) < 6 ? palette[(next() >> 16) % sizeof palette]
                                                                  : static_cast<unsigned char>(next() >> 24)));
            if (rep % 100 == 0) s += "<|im_end|>";
            auto ids = tk.encode(s, true);
            std::string back = tk.decode(ids);
            CHECK(stitch::tok::is_valid_utf8(back));
            if (name == "llama3" && back != stitch::tok::repair_utf8(s)) ++mismatches;
        }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("tokenizer: damaged tokenizer.json only ever gives stitch::Error") {
    json base = json::parse(slurp(kFixtures / "synth" / "base_model.json"));
    json v = json::parse(slurp(kFixtures / "synth" / "variants.json")).at("synth-gpt2");
    json full = {{"added_tokens", v.at("added_tokens")}, {"normalizer", {{"type", "NFKC"}}},
                 {"pre_tokenizer", v.at("pre_tokenizer")}, {"post_processor", v.at("post_processor")},
                 {"decoder", v.at("decoder")}, {"model", base.at("model")}};
    const std::string text = full.dump();
    REQUIRE_NOTHROW(Tokenizer::from_json_text(text, "", "fuzz"));
    uint32_t seed = 777;
    auto next = [&] { return seed = seed * 1664525u + 1013904223u; };
    int loaded = 0, rejected = 0;
    for (int rep = 0; rep < 300; ++rep) {
        std::string t = text;
        if (rep % 3 == 0) {
            t.resize(next() % t.size());
        } else {
            for (int k = 0; k < 1 + rep % 4; ++k) {
                size_t at = next() % t.size();
                const char junk[] = {'"', '{', '}', '[', ']', ',', ':', '0', '9', '-', 'x', ' ', '\\'};
                t[at] = junk[next() % sizeof junk];
            }
        }
        try {
            Tokenizer tk = Tokenizer::from_json_text(t, "", "fuzz.json");
            ++loaded;
            auto ids = tk.encode("Hello <mask> world 123 ﬁx", true);
            (void)tk.decode(ids, rep % 2 == 0);
        } catch (const stitch::Error& e) {
            ++rejected;
            CHECK(std::string(e.what()).rfind("fuzz.json: ", 0) == 0);
        } catch (const std::exception& e) {
            FAIL("non-stitch exception: " << e.what());
        }
    }
    MESSAGE("damaged files: " << loaded << " still loaded, " << rejected << " rejected with stitch::Error");
    CHECK(rejected > 0);
}

TEST_CASE("tokenizer: long inputs are fast and round-trip") {
    for (std::string name : {"llama3", "qwen2.5", "smollm2"}) {
        CAPTURE(name);
        const Tokenizer& tk = cached(name);
        std::string word = random_word(100000, 42);
        auto t0 = std::chrono::steady_clock::now();
        auto ids = tk.encode(word, false);
        double dt = seconds_since(t0);
        MESSAGE(name << ": 100k-letter word -> " << ids.size() << " tokens in " << dt << " s");
        CHECK(tk.decode(ids) == word);
        CHECK(ids.size() < word.size());

        for (const std::string& run : {std::string(1000000, ' '), std::string(1000000, '7'),
                                       std::string(300000, '!') + "x", std::string(200000, '\n'),
                                       random_word(200000, 7) + std::string(100000, ' ') + "z"}) {
            auto r = tk.encode(run, false);
            CHECK(tk.decode(r) == run);
        }
    }

    // ~10 MB of mixed text built from the corpus.
    std::string big;
    const auto& items = corpus();
    for (size_t round = 0; big.size() < 10'000'000; ++round)
        for (const auto& it : items)
            if (it.valid) {
                big += it.text;
                big += round % 2 ? "\n" : " ";
            }
    for (std::string name : {"llama3", "qwen2.5"}) {
        CAPTURE(name);
        const Tokenizer& tk = cached(name);
        auto t0 = std::chrono::steady_clock::now();
        auto ids = tk.encode(big, false);
        double dt = seconds_since(t0);
        auto t1 = std::chrono::steady_clock::now();
        std::string back = tk.decode(ids);
        MESSAGE(name << ": " << big.size() / 1e6 << " MB -> " << ids.size() << " tokens, encode " << dt << " s, decode "
                     << seconds_since(t1) << " s");
        if (name == "llama3") CHECK(back == big);
        else CHECK(back.size() > big.size() * 9 / 10);  // Qwen NFC-normalizes the few decomposed items
    }
}

TEST_CASE("tokenizer: concurrent encodes agree") {
    const Tokenizer& tk = cached("qwen2.5");
    const auto& items = corpus();
    std::vector<std::vector<int32_t>> want;
    for (const auto& it : items) want.push_back(tk.encode(it.text, true));
    std::vector<int> bad(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int rep = 0; rep < 3; ++rep)
                for (size_t i = 0; i < items.size(); ++i)
                    if (tk.encode(items[(i + static_cast<size_t>(t) * 37) % items.size()].text, true) !=
                        want[(i + static_cast<size_t>(t) * 37) % items.size()])
                        ++bad[static_cast<size_t>(t)];
        });
    for (auto& th : threads) th.join();
    for (int b : bad) CHECK(b == 0);
}

TEST_CASE("tokenizer: malformed tokenizer.json files are clear errors naming the file") {
    TempDir tmp;
    const std::string ok_rest =
        R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}, "decoder": {"type": "ByteLevel"}, )";

    SUBCASE("the well-formed mini file loads") {
        auto p = tmp.write("ok.json", mini(R"("merges": ["a b"])", ok_rest));
        Tokenizer t = Tokenizer::load_json(p, {});
        CHECK(t.encode("ab a", false) == std::vector<int32_t>{2, 3, 0});
        CHECK(t.decode(std::vector<int32_t>{2, 3, 0}) == "ab a");
        // without a decoder HF joins the raw tokens with spaces
        auto bare = tmp.write("bare.json", mini(R"("merges": ["a b"])"));
        CHECK(Tokenizer::load_json(bare, {}).decode(std::vector<int32_t>{2, 3, 0}) == "ab Ġ a");
    }
    SUBCASE("missing file / directory") {
        expect_load_error(tmp.path / "nope.json", {}, "missing");
        try {
            Tokenizer::load_dir(tmp.path);
            FAIL("no error");
        } catch (const stitch::Error& e) {
            CHECK(std::string(e.what()) == (tmp.path / "tokenizer.json").string() + ": missing (and no tokenizer.model)");
        }
    }
    SUBCASE("truncated JSON") {
        std::string full = mini(R"("merges": ["a b"])", ok_rest);
        expect_load_error(tmp.write("trunc.json", full.substr(0, full.size() / 2)), {}, "not valid JSON");
        expect_load_error(tmp.write("empty.json", ""), {}, "not valid JSON");
    }
    SUBCASE("no model, no vocab, no merges") {
        expect_load_error(tmp.write("nomodel.json", R"({"version": "1.0"})"), {}, "missing \"model\"");
        expect_load_error(tmp.write("novocab.json", R"({"model": {"type": "BPE", "merges": []}})"), {}, "vocab");
        expect_load_error(tmp.write("nomerges.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"), {}, "merges");
        expect_load_error(tmp.write("array.json", "[1, 2, 3]"), {}, "JSON object");
    }
    SUBCASE("unsupported model types") {
        expect_load_error(tmp.write("unigram.json", R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})"), {},
                          "Unigram");
        expect_load_error(tmp.write("wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})"), {},
                          "WordPiece");
    }
    SUBCASE("merges that reference unknown tokens or are malformed") {
        expect_load_error(tmp.write("m1.json", mini(R"("merges": ["a z"])")), {}, "\"z\" is not in the vocabulary");
        expect_load_error(tmp.write("m2.json", mini(R"("merges": [["b", "a"]])")), {}, "\"ba\" is not in the vocabulary");
        expect_load_error(tmp.write("m3.json", mini(R"("merges": ["a b c"])")), {}, "merges[0]");
        expect_load_error(tmp.write("m4.json", mini(R"("merges": [42])")), {}, "merges[0]");
        expect_load_error(tmp.write("m5.json", mini(R"("merges": "a b")")), {}, "merges must be an array");
    }
    SUBCASE("bad vocab ids") {
        expect_load_error(tmp.write("v1.json", R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"), {},
                          "integer");
        expect_load_error(tmp.write("v2.json", R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})"), {},
                          "out of range");
        expect_load_error(tmp.write("v3.json", R"({"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []}})"),
                          {}, "out of range");
    }
    SUBCASE("bad regex") {
        auto rest = R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed[a-"}, "behavior": "Isolated", "invert": false}, )";
        expect_load_error(tmp.write("re.json", mini(R"("merges": [])", rest)), {}, "bad regex");
        auto rest2 = R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": false}, )";
        expect_load_error(tmp.write("beh.json", mini(R"("merges": [])", rest2)), {}, "Sideways");
    }
    SUBCASE("unsupported pipeline parts") {
        expect_load_error(tmp.write("n.json", mini(R"("merges": [])", R"("normalizer": {"type": "Lowercase"}, )")), {},
                          "Lowercase");
        expect_load_error(
            tmp.write("p.json", mini(R"("merges": [])", R"("pre_tokenizer": {"type": "BertPreTokenizer"}, )")),
            {}, "BertPreTokenizer");
        expect_load_error(tmp.write("pp.json", mini(R"("merges": [])", R"("post_processor": {"type": "RobertaProcessing"}, )")),
                          {}, "RobertaProcessing");
        expect_load_error(tmp.write("d.json", mini(R"("merges": [])", R"("decoder": {"type": "WordPiece"}, )")), {},
                          "WordPiece");
        expect_load_error(tmp.write("t.json", mini(R"("merges": [])", R"("post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}, )")),
                          {}, "<s>");
        expect_load_error(tmp.write("drop.json", mini(R"("merges": [], "dropout": 0.1)")), {}, "dropout");
        expect_load_error(tmp.write("nt.json", mini(R"("merges": [])", R"("normalizer": {"kind": "NFC"}, )")), {},
                          "\"type\"");
    }
    SUBCASE("absurd nesting") {
        std::string deep;
        for (int i = 0; i < 5000; ++i) deep += R"({"type": "Sequence", "pretokenizers": [)";
        deep += R"({"type": "ByteLevel"})";
        for (int i = 0; i < 5000; ++i) deep += "]}";
        expect_load_error(tmp.write("deep.json", mini(R"("merges": [])", R"("pre_tokenizer": )" + deep + ", ")), {},
                          "nested");
        std::string wide = R"({"type": "Sequence", "pretokenizers": [)";
        for (int i = 0; i < 1000; ++i) wide += std::string(i ? "," : "") + R"({"type": "Digits"})";
        wide += "]}";
        expect_load_error(tmp.write("wide.json", mini(R"("merges": [])", R"("pre_tokenizer": )" + wide + ", ")), {},
                          "more than");
    }
    SUBCASE("bad added tokens") {
        expect_load_error(tmp.write("a1.json", R"({"added_tokens": [{"id": 5}], "model": {"type": "BPE", "vocab": {}, "merges": []}})"),
                          {}, "content");
        expect_load_error(tmp.write("a2.json", R"({"added_tokens": {"x": 1}, "model": {"type": "BPE", "vocab": {}, "merges": []}})"),
                          {}, "added_tokens");
    }
    SUBCASE("bad tokenizer_config.json") {
        auto tj = tmp.write("good.json", mini(R"("merges": ["a b"])", ok_rest));
        auto c1 = tmp.write("cfg1_config.json", R"({"eos_token": "</s>"})");
        expect_load_error(tj, c1, "eos_token \"</s>\" is not a token", c1);
        auto c2 = tmp.write("cfg2_config.json", R"({"bos_token": )");
        expect_load_error(tj, c2, "not valid JSON", c2);
        auto c3 = tmp.write("cfg3_config.json", R"({"pad_token": 7})");
        expect_load_error(tj, c3, "pad_token", c3);
        Tokenizer t = Tokenizer::load_json(tj, tmp.write("cfg4.json", R"({"bos_token": {"content": "ab"}, "eos_token": "a", "pad_token": null})"));
        CHECK(t.bos_id == 2);
        CHECK(t.eos_id == 0);
        CHECK(!t.pad_id);
    }
}

// Hardening of the text parsers (docs/hardening.md): tokenizer input guards (ill-formed UTF-8,
// very long prompts and words), and the regressions of what the libFuzzer harnesses in tests/fuzz/
// (tokenizer_json, tokenizer_model, encode, config, jsonl, steer_spec, sites, cli_args) found.
// Every bad input is a stitch::Error naming the file (or the option) and the problem.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/prompts.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "engine/tokenizer/spm_proto.h"
#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"
#include "models/hf.h"
#include "test_tokenizer_util.h"
#include "test_util.h"

using namespace stitch;
using json = nlohmann::json;

namespace {

const std::filesystem::path kTok = test::fixture("tokenizers");

// The tokenizers the checks run on, all from committed fixtures (no `make tokenizers` needed).
const Tokenizer& tiny(const std::string& name) {
    static std::map<std::string, Tokenizer> cache;
    auto it = cache.find(name);
    if (it != cache.end()) return it->second;
    Tokenizer t;
    if (name == "llama" || name == "qwen") {
        t = Tokenizer::load_dir(test::fixture("tiny_tokenizer/" + name));
    } else if (name == "spm-tiny") {
        t = Tokenizer::load_dir(kTok / "spm-tiny");
    } else {  // synth-gemma: Gemma's SentencePiece-style BPE pipeline as a tokenizer.json
        json base = json::parse(tokt::slurp(kTok / "synth/base_model.json"));
        json v = json::parse(tokt::slurp(kTok / "synth/variants.json")).at(name);
        json model = base.at("model");
        for (auto& [k, val] : v["model"].items()) model[k] = val;
        json full = {{"added_tokens", v.at("added_tokens")}, {"normalizer", v.at("normalizer")},
                     {"pre_tokenizer", v.at("pre_tokenizer")}, {"post_processor", v.at("post_processor")},
                     {"decoder", v.at("decoder")}, {"model", model}};
        t = Tokenizer::from_json_text(full.dump(), "", name);
    }
    return cache.emplace(name, std::move(t)).first->second;
}

double seconds(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string repeat(std::string_view unit, size_t n) {
    std::string s;
    s.reserve(unit.size() * n);
    for (size_t i = 0; i < n; ++i) s += unit;
    return s;
}

bool ids_in_range(const Tokenizer& t, const std::vector<int32_t>& ids) {
    for (int32_t id : ids)
        if (id < 0 || id >= t.vocab_size()) return false;
    return true;
}

// A minimal byte-level BPE tokenizer.json with `extra` merged into the top-level object.
std::string small_tokenizer_json(const json& extra) {
    json j = {{"model",
               {{"type", "BPE"},
                {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {" ", 3}}},
                {"merges", json::array({"a b"})}}}};
    j.update(extra);
    return j.dump();
}

}  // namespace

TEST_CASE("hardening_text: ill-formed UTF-8 in a prompt becomes U+FFFD (like HF on the lossily decoded text)") {
    // Decision (engine/tokenizer/tokenizer.h): not an error; every maximal ill-formed subsequence is
    // replaced by U+FFFD first, which is Python's bytes.decode("utf-8", "replace") and Rust's
    // String::from_utf8_lossy, i.e. what HF tokenizers sees for the same bytes.
    const std::string bad = "caf\xC3 \xF0\x9F\x98 x\xFF\xFEy \xED\xA0\x80 \xC0\xAF";
    const std::string fixed = "caf\xEF\xBF\xBD \xEF\xBF\xBD x\xEF\xBF\xBD\xEF\xBF\xBDy "
                              "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD";
    REQUIRE(tok::repair_utf8(bad) == fixed);
    for (std::string name : {"llama", "qwen", "synth-gemma", "spm-tiny"}) {
        CAPTURE(name);
        const Tokenizer& t = tiny(name);
        for (bool special : {false, true}) {
            const auto ids = t.encode(bad, special);
            CHECK(ids == t.encode(fixed, special));
            CHECK(ids_in_range(t, ids));
            CHECK(tok::is_valid_utf8(t.decode(ids)));
        }
    }
    // byte-level BPE without a normalizer decodes back exactly to the repaired text
    CHECK(tiny("llama").decode(tiny("llama").encode(bad, false)) == fixed);
    // a lone NUL and C0 controls are ordinary characters
    CHECK(tiny("llama").decode(tiny("llama").encode(std::string("a\0b\x01", 4), false)) == std::string("a\0b\x01", 4));
}

TEST_CASE("hardening_text: a 100,000-character word tokenizes in linear time, as the doubled half") {
    // One pre-token of N identical characters: BPE merges it with a priority queue over a linked
    // list (O(N log N)), SentencePiece likewise. Reference: the ids of 2N characters are those of
    // N characters twice (N = 2^15, so each merge level pairs the run up evenly; SentencePiece's
    // dummy prefix breaks that, there the reference is the round trip). Timing: 4N must take well
    // under 16x N (quadratic).
    for (std::string name : {"llama", "qwen", "synth-gemma", "spm-tiny"}) {
        for (std::string unit : {"a", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80"}) {  // a, é, 中, 😀
            CAPTURE(name);
            CAPTURE(unit);
            const Tokenizer& t = tiny(name);
            const size_t n = 32768;  // a power of two: every merge level of a uniform run divides it
            auto t0 = std::chrono::steady_clock::now();
            const auto one = t.encode(repeat(unit, n), false);
            const double t_one = seconds(t0);
            const auto two = t.encode(repeat(unit, 2 * n), false);
            t0 = std::chrono::steady_clock::now();
            const auto four = t.encode(repeat(unit, 4 * n), false);
            const double t_four = seconds(t0);
            MESSAGE(name << " " << unit << ": " << n << " chars -> " << one.size() << " ids in " << t_one << " s; " << 4 * n
                         << " chars in " << t_four << " s");
            CHECK(ids_in_range(t, four));
            REQUIRE(one.size() >= 2);
            if (name == "spm-tiny") {
                // the dummy prefix "▁" joins the first characters, so the run is not periodic from
                // its start: the reference is the exact round trip, and the size grows linearly
                CHECK(t.decode(four) == repeat(unit, 4 * n));
                CHECK(four.size() + 2 >= 2 * two.size());
                CHECK(four.size() <= 2 * two.size() + 2);
            } else {
                std::vector<int32_t> doubled = one;
                doubled.insert(doubled.end(), one.begin(), one.end());
                CHECK(two == doubled);
                CHECK(four.size() == 2 * two.size());
            }
            CHECK(t_four < 8 * t_one + 0.25);
            if (name == "llama") CHECK(t.decode(four) == repeat(unit, 4 * n));
        }
    }
}

TEST_CASE("hardening_text: 10 MB prompts tokenize in linear time (measurement)" * doctest::skip()) {
    // Run with: build/stitch_tests -tc='*10 MB prompts*' --no-skip
    std::string text;
    for (size_t round = 0; text.size() < 10'000'000; ++round)
        for (const auto& it : tokt::corpus())
            if (it.valid) text += it.text + (round % 2 ? "\n" : " ");
    const std::string half = text.substr(0, text.size() / 2);
    for (std::string name : {"llama", "qwen", "synth-gemma", "spm-tiny"}) {
        const Tokenizer& t = tiny(name);
        auto t0 = std::chrono::steady_clock::now();
        const auto a = t.encode(half, false);
        const double ta = seconds(t0);
        t0 = std::chrono::steady_clock::now();
        const auto b = t.encode(text, false);
        const double tb = seconds(t0);
        MESSAGE(name << ": " << half.size() / 1e6 << " MB -> " << a.size() << " ids in " << ta << " s; " << text.size() / 1e6
                     << " MB -> " << b.size() << " ids in " << tb << " s (ratio " << tb / ta << ")");
        CHECK(tb < 3 * ta + 0.5);
        const std::string word = repeat("a", 100000), wide = repeat("\xE4\xB8\xAD", 100000);
        t0 = std::chrono::steady_clock::now();
        (void)t.encode(word, false);
        (void)t.encode(wide, false);
        MESSAGE(name << ": 'a' x 100000 and '中' x 100000 in " << seconds(t0) << " s");
    }
}

TEST_CASE("hardening_text: white-space added tokens with lstrip/rstrip keep encoding linear") {
    // An added token whose content is white space, with lstrip and rstrip, in a long run of
    // spaces: every match strips the whole run (HF's AddedVocabulary rule). The scans are bounded
    // (lstrip stops at the previous match, rstrip reuses the run it already measured), so this is
    // linear; it was quadratic (minutes for 200,000 spaces).
    const std::string tj = small_tokenizer_json(
        {{"added_tokens",
          {{{"id", 4}, {"content", "  "}, {"lstrip", true}, {"rstrip", true}, {"special", false}, {"normalized", false}},
           {{"id", 5}, {"content", "<x>"}, {"lstrip", true}, {"rstrip", true}, {"special", true}, {"normalized", false}}}}});
    const Tokenizer t = Tokenizer::from_json_text(tj, "", "ws.json");
    const int32_t ws = *t.token_id("  "), x = *t.token_id("<x>");
    auto t0 = std::chrono::steady_clock::now();
    const auto ids = t.encode(std::string(200000, ' '), false);
    const double dt = seconds(t0);
    MESSAGE("200000 spaces -> " << ids.size() << " ids in " << dt << " s");
    CHECK(ids == std::vector<int32_t>(100000, ws));
    CHECK(dt < 5.0);
    // HF's rule, unchanged: each match strips the space around it (lstrip never before the previous
    // match's end), and a match inside space a previous one already took still gives its token.
    CHECK(t.encode("ab   <x>   ab", false) == std::vector<int32_t>{2, ws, x, ws, 2});
    CHECK(t.encode("ab    <x>", false) == std::vector<int32_t>{2, ws, ws, x});
    CHECK(t.encode("ab <x> ab", false) == std::vector<int32_t>{2, x, 2});
}

TEST_CASE("hardening_text: post-processor ids outside the vocabulary count in vocab_size()") {
    // Found by fuzz_tokenizer_json: a TemplateProcessing special token with id 100 in a 4-token
    // vocabulary made encode() return an id >= vocab_size(), which the model check then let through
    // (an out-of-bounds embedding row). encode() keeps emitting it, like HF; vocab_size() covers it.
    const std::string tj = small_tokenizer_json(
        {{"post_processor",
          {{"type", "TemplateProcessing"},
           {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
           {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {100}}, {"tokens", {"<s>"}}}}}}}}});
    const Tokenizer t = Tokenizer::from_json_text(tj, "", "tpl.json");
    CHECK(t.encode("ab", true) == std::vector<int32_t>{100, 2});
    CHECK(t.vocab_size() == 101);
    ModelConfig c;
    c.vocab_size = 4;
    CHECK_THROWS_WITH_AS(check_tokenizer_fits(t, c, "m/tokenizer.json"),
                         "m/tokenizer.json: tokenizer has 101 tokens but the model's vocabulary is 4", Error);
}

TEST_CASE("hardening_text: adapter_config.json values of the wrong type are errors naming the file") {
    test::TempDir dir;
    const auto p = dir / "adapter_config.json";
    const std::string f = p.string();
    auto expect = [&](const std::string& text, const std::string& what) {
        test::write_bytes(p, text);
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(read_adapter_config(p), (f + ": " + what).c_str(), Error);
    };
    // each of these was a nlohmann type_error (not a stitch::Error) before
    expect(R"({"peft_type": 5, "r": 8, "lora_alpha": 16})", "\"peft_type\" must be a string");
    expect(R"({"r": 8, "lora_alpha": 16, "bias": ["none"]})", "\"bias\" must be a string");
    expect(R"({"r": 8, "lora_alpha": 16, "use_rslora": "yes"})", "\"use_rslora\" must be true or false");
    expect(R"({"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": "4"}})", "rank_pattern[\"q_proj\"] must be a positive integer");
    expect(R"({"r": 8, "lora_alpha": 16, "alpha_pattern": {"q_proj": null}})", "alpha_pattern[\"q_proj\"] must be a finite number");
    expect(R"({"r": 8, "lora_alpha": 16, "rank_pattern": [1]})", "\"rank_pattern\" must be an object of module pattern -> rank");
    // r overflowing an int was truncated before (2^32 + 8 -> 8)
    expect(R"({"r": 4294967304, "lora_alpha": 16})", "missing positive integer \"r\" (at most 1048576)");
    expect(R"({"r": 8, "lora_alpha": "16"})", "missing number \"lora_alpha\"");
    expect("[1, 2]", "not a JSON object");
    test::write_bytes(p, R"({"r": 8, "lora_alpha": 16, "use_rslora": true, "rank_pattern": {"down_proj": 2}, "modules_to_save": {}})");
    const LoraConfig lc = read_adapter_config(p);
    CHECK(lc.r == 8);
    CHECK(lc.alpha == 16);
    CHECK(lc.rslora);
    CHECK(lc.rank_for("model.layers.3.mlp.down_proj") == 2);
    CHECK(lc.rank_for("model.layers.3.mlp.up_proj") == 8);
}

TEST_CASE("hardening_text: rank_pattern keys that are pathological regexes never hang or crash") {
    test::TempDir dir;
    const auto p = dir / "adapter_config.json";
    // 20,000 nested groups: std::regex compiled it recursively (stack overflow); PCRE2 refuses the
    // nesting, and the key is then matched literally, as before for keys that are not regexes.
    const std::string deep = std::string(20000, '(') + "q_proj" + std::string(20000, ')');
    json cfg = {{"r", 8}, {"lora_alpha", 16}, {"rank_pattern", {{deep, 4}, {"[unclosed", 2}}}};
    test::write_bytes(p, cfg.dump());
    LoraConfig lc = read_adapter_config(p);
    CHECK(lc.rank_for("model.layers.0.self_attn.q_proj") == 8);
    CHECK(lc.rank_for("model.layers.0.mlp.[unclosed") == 2);
    // catastrophic backtracking is cut off by PCRE2's match limit: an error naming the file and key
    cfg = {{"r", 8}, {"lora_alpha", 16}, {"alpha_pattern", {{"([a-z_.]+)*[0-9]{3}", 4}}}};
    test::write_bytes(p, cfg.dump());
    lc = read_adapter_config(p);
    auto t0 = std::chrono::steady_clock::now();
    const std::string want = p.string() + ": alpha_pattern key '([a-z_.]+)*[0-9]{3}' cannot be matched";
    CHECK_THROWS_WITH_AS(lc.alpha_for("model.layers.1.self_attn.q_proj.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                         doctest::Contains(want.c_str()), Error);
    CHECK(seconds(t0) < 5.0);
}

TEST_CASE("hardening_text: LoRA tensor names are parsed without std::regex; a huge layer is out of range") {
    // std::stoi threw std::out_of_range (not a stitch::Error) for layer 99999999999.
    test::TempDir dir;
    std::filesystem::copy(test::fixture("lora/llama_rslora/adapter_config.json"), dir / "adapter_config.json");
    std::vector<float> A(8 * 96, 0.1f), B(96 * 8, 0.1f);
    const auto w = dir / "adapter_model.safetensors";
    Model m = load_model(test::fixture("models/llama_untied"));
    write_safetensors(w, {{"base_model.model.model.layers.99999999999.self_attn.q_proj.lora_A.weight", DType::F32, {8, 96},
                           as_bytes_span(A)},
                          {"base_model.model.model.layers.99999999999.self_attn.q_proj.lora_B.weight", DType::F32, {96, 8},
                           as_bytes_span(B)}});
    CHECK_THROWS_WITH_AS(apply_lora(m, dir.path),
                         doctest::Contains("module 'model.layers.99999999999.self_attn.q_proj': layer 2147483647 is out of range"),
                         Error);
    // what the old pattern rejected is still rejected, what it accepted still accepted
    for (const std::string bad : {"base_model.model.model.xlayers.0.self_attn.q_proj.lora_A.weight",
                                  "base_model.model.model.layers.0.attn.q_proj.lora_A.weight",
                                  "base_model.model.model.layers.0.self_attn.q-proj.lora_A.weight",
                                  "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
                                  "model.layers.0.self_attn.q_proj.lora_A.weight"}) {
        CAPTURE(bad);
        write_safetensors(w, {{bad, DType::F32, {8, 96}, as_bytes_span(A)}});
        CHECK_THROWS_WITH_AS(apply_lora(m, dir.path), doctest::Contains("is not a LoRA A/B matrix of a layer projection"), Error);
    }
    write_safetensors(w, {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", DType::F32, {8, 96},
                           as_bytes_span(A)}});
    CHECK_THROWS_WITH_AS(apply_lora(m, dir.path),
                         doctest::Contains("module 'model.layers.0.self_attn.q_proj' has lora_A but not lora_B"), Error);
}

TEST_CASE("hardening_text: --steer specs parse against the model config without opening FILE") {
    const ModelConfig c = load_hf_config(test::fixture("models/llama_tied"));  // 3 layers
    SteerSpec s = parse_steer_spec("blocks.1.resid_post:add:dir/v.safetensors:-2.5@match=a:b@c", c);
    CHECK(s.sites.size() == 1);
    CHECK(s.sites[0].name() == "blocks.1.resid_post");
    CHECK(s.op == SteerOp::Add);
    CHECK(s.file == "dir/v.safetensors");
    CHECK(s.alpha == -2.5f);
    CHECK(s.sel.kind == PositionSelector::Match);
    CHECK(s.sel.match_text == "a:b@c");
    s = parse_steer_spec("blocks.*.attn_out:ablate:x:y.gguf", c);
    CHECK(s.sites.size() == 3);
    CHECK(s.wildcard);
    CHECK(s.file == "x:y.gguf");
    CHECK(s.alpha == 1.0f);
    auto bad = [&](const std::string& spec, const std::string& what) {
        CAPTURE(spec);
        CHECK_THROWS_WITH_AS(parse_steer_spec(spec, c), ("--steer: " + what).c_str(), Error);
    };
    bad("embed:add", "'embed:add' is not SITE:OP:FILE[:ALPHA][@POSITIONS]");
    bad("embed:add::1", "'embed:add::1' names no FILE");
    bad("embed:scale:f", "unknown operation 'scale' in 'embed:scale:f' (add, ablate, replace)");
    bad("embed:add:f:inf", "alpha 'inf' in 'embed:add:f:inf' is not finite");
    bad("blocks.3.resid_pre:add:f", "layer 3 in 'blocks.3.resid_pre' is out of range (the model has layers 0..2)");
    bad("blocks.99999999999.resid_pre:add:f", "layer '99999999999' in 'blocks.99999999999.resid_pre' is not a number");
    bad("embed,logits:add:f", "'embed,logits:add:f' names more than one site; give one --steer per site");
    bad("embed:add:f@diff", "'diff' positions exist only in `stitch vector`");
    CHECK_THROWS_WITH_AS(parse_steer_spec("embed:add:f@x:y:z", c), doctest::Contains("--positions: 'x:y:z' is not a selector"), Error);
}

TEST_CASE("hardening_text: --sites lists: duplicates found in one pass") {
    const ModelConfig c = load_hf_config(test::fixture("models/llama_tied"));
    CHECK(parse_sites("blocks.*.resid_post,embed", c).size() == 4);
    CHECK_THROWS_WITH_AS(parse_sites("blocks.*.resid_post,blocks.1.resid_post", c),
                         "--sites: site 'blocks.1.resid_post' is named twice", Error);
    CHECK_THROWS_WITH_AS(parse_sites("embed,,logits", c), "--sites: empty site name in 'embed,,logits'", Error);
}

TEST_CASE("hardening_text: config.json numbers outside int's range are errors, not a float-to-int overflow") {
    test::TempDir dir;
    json cfg = json::parse(test::read_bytes(test::fixture("models/llama_tied/config.json")));
    const std::string f = (dir / "config.json").string();
    auto expect = [&](const std::string& what) {
        test::write_bytes(dir / "config.json", cfg.dump());
        CHECK_THROWS_WITH_AS(load_hf_config(dir.path), (f + ": " + what).c_str(), Error);
    };
    cfg["rope_parameters"]["original_max_position_embeddings"] = 1e300;
    expect("rope: original_max_position_embeddings 1e+300 is out of range [1, 1073741824]");
    cfg["rope_parameters"]["original_max_position_embeddings"] = 2048;
    cfg["rope_parameters"]["low_freq_factor"] = 0;
    expect("rope: low_freq_factor must be positive");
}

TEST_CASE("hardening_text: a tokenizer.model piece with a NUL byte is refused before libsentencepiece sees it") {
    // Found by fuzz_tokenizer_model: libsentencepiece's Darts trie throws on a NUL byte from code
    // that exceptions cannot leave (std::terminate, i.e. a crash).
    test::TempDir tmp;
    const auto model = tmp / "tokenizer.model";
    tok::SpmModelProto m = tok::parse_spm_model(test::read_bytes(kTok / "spm-tiny/tokenizer.model"));
    REQUIRE(m.pieces.size() > 8);
    m.pieces[7].piece = std::string("\0\n", 2);
    test::write_bytes(model, tok::serialize_spm_model(m));
    CHECK_THROWS_WITH_AS(Tokenizer::load_spm(model, ""),
                         (model.string() + ": piece 7 contains a NUL byte (SentencePiece cannot load it)").c_str(), Error);
}

TEST_CASE("hardening_text: SentencePiece pieces that are not UTF-8 decode to U+FFFD, never past the piece") {
    // Pieces are bytes in the protobuf; the decoder chain (PCRE2 Replace, Strip's code-point walk)
    // needs UTF-8, so decode() repairs such a piece first (from_utf8_lossy, as HF would on bytes).
    test::TempDir tmp;
    const auto model = tmp / "tokenizer.model";
    tok::SpmModelProto m = tok::parse_spm_model(test::read_bytes(kTok / "spm-tiny/tokenizer.model"));
    const int32_t id = 500;
    REQUIRE(m.pieces[size_t(id)].type == tok::SpmPieceType::Normal);
    m.pieces[size_t(id)].piece = "x\xF0\x9F";  // a truncated 4-byte sequence at the end
    test::write_bytes(model, tok::serialize_spm_model(m));
    const Tokenizer t = Tokenizer::load_spm(model, "");
    CHECK(t.decode(std::vector<int32_t>{id}) == "x\xEF\xBF\xBD");
    CHECK(t.token_text(id) == "x\xF0\x9F");  // the raw piece is still what token_text gives
}

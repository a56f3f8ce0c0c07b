// Arbitrary bytes (ill-formed UTF-8 included) encoded and decoded by real tokenizers, loaded once:
//   0 tiny Llama 3 style (byte-level BPE, Llama 3 regex, BOS template)   tests/fixtures/tiny_tokenizer/llama
//   1 tiny Qwen 2 style (NFC, Qwen regex, byte-level BPE)                tests/fixtures/tiny_tokenizer/qwen
//   2 synth-gemma (Gemma's SentencePiece-style BPE: Replace normalizers, Split " ", byte_fallback)
//   3 spm-tiny tokenizer.model (libsentencepiece, Llama 2 style, byte fallback, dummy prefix)
//   4 Qwen 2.5 (151k vocabulary) when `make tokenizers` has put it under build/tokenizers/
// Input: byte 0 picks the tokenizer (mod the number loaded) and add_special (bit 7); the rest is text.
// Invariants: ids in [0, vocab_size()); decode gives valid UTF-8; and where the tokenizer guarantees
// it (byte-level BPE without a normalizer: the Llama one; HF's own round-trip property), decoding
// the ids of x gives back x with ill-formed sequences replaced by U+FFFD.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace fs = std::filesystem;
const fs::path kRoot{STITCH_SOURCE_DIR};

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "fuzz_encode: cannot read %s\n", p.c_str());
        std::abort();
    }
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

struct Loaded {
    stitch::Tokenizer tok;
    bool round_trip;  // decode(encode(x)) == repair_utf8(x)
};

std::vector<Loaded> load_all() {
    using stitch::Tokenizer;
    using json = nlohmann::json;
    std::vector<Loaded> v;
    v.push_back({Tokenizer::load_dir(kRoot / "tests/fixtures/tiny_tokenizer/llama"), true});
    v.push_back({Tokenizer::load_dir(kRoot / "tests/fixtures/tiny_tokenizer/qwen"), false});
    {
        const fs::path fx = kRoot / "tests/fixtures/tokenizers";
        json base = json::parse(slurp(fx / "synth/base_model.json"));
        json var = json::parse(slurp(fx / "synth/variants.json")).at("synth-gemma");
        json model = base.at("model");
        for (auto& [k, val] : var["model"].items()) model[k] = val;
        json full = {{"added_tokens", var.at("added_tokens")}, {"normalizer", var.at("normalizer")},
                     {"pre_tokenizer", var.at("pre_tokenizer")}, {"post_processor", var.at("post_processor")},
                     {"decoder", var.at("decoder")}, {"model", model}};
        v.push_back({Tokenizer::from_json_text(full.dump(), "", "synth-gemma"), false});
    }
    v.push_back({Tokenizer::load_spm(kRoot / "tests/fixtures/tokenizers/spm-tiny/tokenizer.model",
                                     kRoot / "tests/fixtures/tokenizers/spm-tiny/tokenizer_config.json"),
                 false});
    for (const fs::path dir : {kRoot / "build/tokenizers/qwen2.5", fs::path(STITCH_BUILD_DIR) / "tokenizers/qwen2.5"}) {
        if (fs::exists(dir / "tokenizer.json")) {
            v.push_back({Tokenizer::load_dir(dir), false});
            break;
        }
    }
    std::fprintf(stderr, "fuzz_encode: %zu tokenizers loaded\n", v.size());
    return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    static const std::vector<Loaded> toks = load_all();
    if (size == 0) return 0;
    const Loaded& l = toks[(data[0] & 0x7F) % toks.size()];
    const bool special = data[0] & 0x80;
    const std::string_view text = fuzz::as_text(data + 1, size - 1);
    fuzz::expect_clean([&] {
        const auto ids = l.tok.encode(text, special);
        const int32_t n = l.tok.vocab_size();
        for (int32_t id : ids)
            if (id < 0 || id >= n) std::abort();
        const std::string back = l.tok.decode(ids, special);
        if (!tok::is_valid_utf8(back)) std::abort();
        if (l.round_trip && !special && back != tok::repair_utf8(text)) {
            std::fprintf(stderr, "round trip differs: %zu bytes in, %zu out\n", text.size(), back.size());
            std::abort();
        }
    });
    return 0;
}

// Tokenizers rebuilt from the vocabulary a GGUF file embeds (tokenizer.ggml.*).
//
//   gpt2  (byte-level BPE: tokens + merges): the HF tokenizer.json pipeline of the family that
//         tokenizer.ggml.pre names is written in memory and loaded like a tokenizer.json:
//           llama-bpe / llama3 / llama-v3      Llama 3 Split regex + ByteLevel, ignore_merges
//           qwen2 / deepseek-r1-qwen           NFC + Qwen2 Split regex + ByteLevel
//           smollm / starcoder                 Digits(individual) + ByteLevel (GPT-2 regex)
//           gpt-2 / gpt2 / default / (none)    ByteLevel (GPT-2 regex)
//         Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain
//         added tokens; every token keeps its row as its id.
//   llama (SentencePiece: tokens + scores + types): a sentencepiece ModelProto (BPE, byte
//         fallback when <0xNN> byte tokens exist, identity normalizer) is written in memory and run
//         by libsentencepiece; control/unknown tokens are special added tokens matched in the raw
//         text first, user-defined ones plain added tokens. llama.cpp's converter wrote "▁" as " "
//         in user-defined tokens: the model gets "▁" back, the raw-text matching keeps " ".
//         tokenizer.ggml.add_space_prefix (default true) becomes the model's dummy prefix: "▁"
//         before every stretch of text between added tokens, as llama.cpp and HF's GGUF converter do.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/tokenizer/bpe.h"
#include "engine/tokenizer/internal.h"
#include "engine/tokenizer/spm_proto.h"
#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"

namespace stitch {

namespace {

using json = nlohmann::json;

constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr size_t kMaxTokens = (1u << 22) - 1;

enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

json byte_level(bool use_regex) {
    return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", use_regex}};
}

json split_regex(const char* re) {
    return {{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}};
}

std::optional<int32_t> checked_id(const std::optional<int64_t>& id, const char* key, size_t n, const std::string& src) {
    if (!id) return std::nullopt;
    if (*id < 0 || static_cast<uint64_t>(*id) >= n)
        fail(src, "{} {} is not a token id (the vocabulary has {} tokens)", key, *id, n);
    return static_cast<int32_t>(*id);
}

std::string show(std::string_view s) {  // a token in a message: JSON-quoted, shortened
    std::string q = json(std::string(s.substr(0, 40))).dump(-1, ' ', false, json::error_handler_t::replace);
    return s.size() > 40 ? q + "..." : q;
}

Tokenizer build_gpt2(const GGUFVocab& v, const std::vector<int32_t>& types, const std::string& src) {
    const size_t n = v.tokens.size();
    if (v.merges.empty()) fail(src, "tokenizer.ggml.merges: missing or empty (a gpt2 vocabulary needs its merges)");
    json pre, normalizer = nullptr;
    bool ignore_merges = false;
    const std::string& p = v.pre;
    if (p == "llama-bpe" || p == "llama3" || p == "llama-v3") {
        pre = {{"type", "Sequence"}, {"pretokenizers", json::array({split_regex(kLlama3Regex), byte_level(false)})}};
        ignore_merges = true;
    } else if (p == "qwen2" || p == "deepseek-r1-qwen") {
        normalizer = {{"type", "NFC"}};
        pre = {{"type", "Sequence"}, {"pretokenizers", json::array({split_regex(kQwen2Regex), byte_level(false)})}};
    } else if (p == "smollm" || p == "starcoder") {
        pre = {{"type", "Sequence"},
               {"pretokenizers", json::array({json{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}};
    } else if (p == "gpt-2" || p == "gpt2" || p == "default" || p.empty()) {
        pre = byte_level(true);
    } else {
        fail(src, "tokenizer.ggml.pre \"{}\" is not supported for gpt2 vocabularies (supported: llama-bpe, llama3, "
                  "llama-v3, qwen2, deepseek-r1-qwen, smollm, starcoder, gpt-2, default)", p);
    }

    tok::StringMap<int32_t> ids;
    ids.reserve(n);
    json vocab = json::object();
    json added = json::array();
    for (size_t i = 0; i < n; ++i) {
        const std::string& t = v.tokens[i];
        if (t.empty()) fail(src, "tokenizer.ggml.tokens[{}] is empty", i);
        if (!tok::is_valid_utf8(t)) fail(src, "tokenizer.ggml.tokens[{}] is not valid UTF-8", i);
        if (ids.emplace(t, static_cast<int32_t>(i)).second) vocab[t] = i;
        if (types[i] == kControl || types[i] == kUserDefined)
            added.push_back({{"id", i}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                             {"normalized", false}, {"special", types[i] == kControl}});
    }
    json merges = json::array();
    for (size_t k = 0; k < v.merges.size(); ++k) {
        const std::string& m = v.merges[k];
        size_t sp = m.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 == m.size() || m.find(' ', sp + 1) != std::string::npos)
            fail(src, "tokenizer.ggml.merges[{}] {} is not two tokens separated by one space", k, show(m));
        std::string a = m.substr(0, sp), b = m.substr(sp + 1);
        if (!ids.count(a)) fail(src, "tokenizer.ggml.merges[{}] {} names {}, which is not in tokenizer.ggml.tokens", k, show(m), show(a));
        if (!ids.count(b)) fail(src, "tokenizer.ggml.merges[{}] {} names {}, which is not in tokenizer.ggml.tokens", k, show(m), show(b));
        if (!ids.count(a + b))
            fail(src, "tokenizer.ggml.merges[{}] {} makes {}, which is not in tokenizer.ggml.tokens", k, show(m), show(a + b));
        merges.push_back(m);
    }
    auto unk = checked_id(v.unk_id, "tokenizer.ggml.unknown_token_id", n, src);
    auto bos = checked_id(v.bos_id, "tokenizer.ggml.bos_token_id", n, src);
    auto eos = checked_id(v.eos_id, "tokenizer.ggml.eos_token_id", n, src);
    auto pad = checked_id(v.pad_id, "tokenizer.ggml.padding_token_id", n, src);

    json post = byte_level(true);
    bool add_bos = v.add_bos.value_or(false) && bos, add_eos = v.add_eos.value_or(false) && eos;
    if (add_bos || add_eos) {
        json single = json::array(), specials = json::object();
        auto special = [&](int32_t id) {
            const std::string& t = v.tokens[static_cast<size_t>(id)];
            single.push_back({{"SpecialToken", {{"id", t}, {"type_id", 0}}}});
            specials[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
        };
        if (add_bos) special(*bos);
        single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
        if (add_eos) special(*eos);
        post = {{"type", "Sequence"},
                {"processors", json::array({post, {{"type", "TemplateProcessing"}, {"single", single}, {"pair", json::array()},
                                                   {"special_tokens", specials}}})}};
    }
    json tj = {{"version", "1.0"},
               {"truncation", nullptr},
               {"padding", nullptr},
               {"added_tokens", added},
               {"normalizer", normalizer},
               {"pre_tokenizer", pre},
               {"post_processor", post},
               {"decoder", byte_level(true)},
               {"model",
                {{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", unk ? json(v.tokens[static_cast<size_t>(*unk)]) : json(nullptr)},
                 {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false},
                 {"byte_fallback", false},
                 {"ignore_merges", ignore_merges},
                 {"vocab", std::move(vocab)},
                 {"merges", std::move(merges)}}}};
    Tokenizer t = Tokenizer::from_json_text(tj.dump(), "", src);
    t.bos_id = bos;
    t.eos_id = eos;
    t.pad_id = pad;
    t.chat_template = v.chat_template;
    return t;
}

tok::SpmSpec llama_spec(const GGUFVocab& v, const std::vector<int32_t>& types, const std::string& src) {
    const size_t n = v.tokens.size();
    if (v.scores.size() != n)
        fail(src, "tokenizer.ggml.scores has {} entries for {} tokens (a llama vocabulary needs one score per token)",
             v.scores.size(), n);
    auto unk = checked_id(v.unk_id, "tokenizer.ggml.unknown_token_id", n, src);
    if (!unk)
        for (size_t i = 0; i < n && !unk; ++i)
            if (types[i] == kUnknown) unk = static_cast<int32_t>(i);
    if (!unk) fail(src, "no unknown token (tokenizer.ggml.unknown_token_id, or a token of type 2), which SentencePiece needs");
    auto bos = checked_id(v.bos_id, "tokenizer.ggml.bos_token_id", n, src);
    auto eos = checked_id(v.eos_id, "tokenizer.ggml.eos_token_id", n, src);
    auto pad = checked_id(v.pad_id, "tokenizer.ggml.padding_token_id", n, src);

    tok::SpmModelProto m;
    m.model_type = 2;  // BPE: merges by score, like llama.cpp's SPM tokenizer
    m.pieces.resize(n);
    tok::SpmSpec spec;
    tok::StringMap<size_t> seen;
    seen.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        const std::string& t = v.tokens[i];
        if (t.empty()) fail(src, "tokenizer.ggml.tokens[{}] is empty", i);
        if (!tok::is_valid_utf8(t)) fail(src, "tokenizer.ggml.tokens[{}] is not valid UTF-8", i);
        tok::SpmPiece& p = m.pieces[i];
        int32_t ty = static_cast<int32_t>(i) == *unk ? kUnknown : types[i] == kUnknown ? kControl : types[i];
        p.type = static_cast<tok::SpmPieceType>(ty);
        p.score = v.scores[i];
        p.piece = t;
        if (ty == kUserDefined) {  // undo llama.cpp's "▁" -> " " in user-defined tokens
            std::string u;
            for (char c : t) {
                if (c == ' ') u += "\xE2\x96\x81";
                else u.push_back(c);
            }
            p.piece = std::move(u);
        }
        if (ty == kByte) {
            m.byte_fallback = true;
            if (!(t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>'))
                fail(src, "tokenizer.ggml.tokens[{}] {} has type byte (6) but is not <0xNN>", i, show(t));
        }
        if (auto [it, fresh] = seen.emplace(p.piece, i); !fresh)
            fail(src, "tokenizer.ggml.tokens[{}] {} repeats token {} (SentencePiece needs distinct pieces)", i, show(t), it->second);
        if (ty == kControl || ty == kUnknown || ty == kUserDefined)
            spec.added.push_back({static_cast<int32_t>(i), t, ty != kUserDefined});
    }
    m.unk_id = *unk;
    m.unk_piece = m.pieces[static_cast<size_t>(*unk)].piece;
    m.bos_id = bos.value_or(-1);
    m.eos_id = eos.value_or(-1);
    m.pad_id = pad.value_or(-1);
    if (bos) m.bos_piece = m.pieces[static_cast<size_t>(*bos)].piece;
    if (eos) m.eos_piece = m.pieces[static_cast<size_t>(*eos)].piece;
    if (pad) m.pad_piece = m.pieces[static_cast<size_t>(*pad)].piece;
    m.normalizer_name = "identity";
    // llama.cpp (and HF's GGUF converter) put a space before every stretch of text between
    // special tokens: SentencePiece's dummy prefix does exactly that.
    m.add_dummy_prefix = v.add_space_prefix.value_or(true);
    m.remove_extra_whitespaces = false;
    m.escape_whitespaces = true;

    spec.model_bytes = tok::serialize_spm_model(m);
    spec.source = src;
    spec.kind = "GGUF llama vocabulary";
    spec.prefix = m.add_dummy_prefix ? tok::SpmPrefix::Native : tok::SpmPrefix::None;
    spec.add_bos = v.add_bos.value_or(true);
    spec.add_eos = v.add_eos.value_or(false);
    spec.bos_id = bos;
    spec.eos_id = eos;
    spec.pad_id = pad;
    spec.chat_template = v.chat_template;
    return spec;
}

// Checks what both kinds need; returns the token types (all normal when the key is absent).
std::vector<int32_t> checked_types(const GGUFVocab& v, const std::string& src) {
    const size_t n = v.tokens.size();
    if (v.model.empty()) fail(src, "tokenizer.ggml.model: missing");
    if (v.model != "gpt2" && v.model != "llama")
        fail(src, "tokenizer.ggml.model \"{}\" is not supported (supported: gpt2, llama)", v.model);
    if (n == 0) fail(src, "tokenizer.ggml.tokens: missing or empty");
    if (n > kMaxTokens) fail(src, "tokenizer.ggml.tokens: {} tokens, more than stitch accepts ({})", n, kMaxTokens);
    std::vector<int32_t> types = v.token_types;
    if (types.empty()) types.assign(n, kNormal);
    if (types.size() != n)
        fail(src, "tokenizer.ggml.token_type has {} entries for {} tokens", types.size(), n);
    for (size_t i = 0; i < n; ++i)
        if (types[i] < kNormal || types[i] > kByte)
            fail(src, "tokenizer.ggml.token_type[{}] = {} is not a token type (1..6)", i, types[i]);
    if (!v.scores.empty() && v.scores.size() != n)
        fail(src, "tokenizer.ggml.scores has {} entries for {} tokens", v.scores.size(), n);
    return types;
}

}  // namespace

tok::SpmSpec tok::spm_spec_from_gguf_vocab(const GGUFVocab& v, const std::string& src) {
    auto types = checked_types(v, src);
    if (v.model != "llama") fail(src, "tokenizer.ggml.model \"{}\" is not a SentencePiece (llama) vocabulary", v.model);
    return llama_spec(v, types, src);
}

Tokenizer Tokenizer::from_gguf_vocab(const GGUFVocab& v, const std::string& src) {
    auto types = checked_types(v, src);
    if (v.model == "gpt2") return build_gpt2(v, types, src);
    return tok::build_spm_tokenizer(llama_spec(v, types, src));
}

GGUFVocab Tokenizer::read_gguf_vocab(const GGUFFile& f) {
    GGUFVocab v;
    const std::string& src = f.path();
    if (!f.has("tokenizer.ggml.model")) fail(src, "no tokenizer in this GGUF (tokenizer.ggml.model is missing)");
    v.model = f.get_string("tokenizer.ggml.model");
    v.pre = f.find_string("tokenizer.ggml.pre").value_or("");
    v.tokens = f.get_string_array("tokenizer.ggml.tokens");
    if (f.has("tokenizer.ggml.scores")) {
        auto s = f.get_float_array("tokenizer.ggml.scores");
        v.scores.assign(s.begin(), s.end());
    }
    if (f.has("tokenizer.ggml.token_type")) {
        auto t = f.get_int_array("tokenizer.ggml.token_type");
        v.token_types.reserve(t.size());
        for (size_t i = 0; i < t.size(); ++i) {
            if (t[i] < INT32_MIN || t[i] > INT32_MAX) fail(src, "tokenizer.ggml.token_type[{}] = {} is out of range", i, t[i]);
            v.token_types.push_back(static_cast<int32_t>(t[i]));
        }
    }
    if (f.has("tokenizer.ggml.merges")) v.merges = f.get_string_array("tokenizer.ggml.merges");
    v.bos_id = f.find_int("tokenizer.ggml.bos_token_id");
    v.eos_id = f.find_int("tokenizer.ggml.eos_token_id");
    v.unk_id = f.find_int("tokenizer.ggml.unknown_token_id");
    v.pad_id = f.find_int("tokenizer.ggml.padding_token_id");
    auto flag = [&](const char* key) -> std::optional<bool> {
        if (!f.has(key)) return std::nullopt;
        return f.get_bool(key);
    };
    v.add_bos = flag("tokenizer.ggml.add_bos_token");
    v.add_eos = flag("tokenizer.ggml.add_eos_token");
    v.add_space_prefix = flag("tokenizer.ggml.add_space_prefix");
    v.chat_template = f.find_string("tokenizer.chat_template");
    return v;
}

Tokenizer Tokenizer::from_gguf(const GGUFFile& f) { return from_gguf_vocab(read_gguf_vocab(f), f.path()); }

}  // namespace stitch

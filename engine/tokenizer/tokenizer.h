// Byte-level BPE tokenizer read from a HF `tokenizer.json` (Llama 3, Qwen 2/2.5/3, GPT-2,
// SmolLM ...), matching HF `tokenizers` (0.23) id for id. See tests/test_tokenizer.cpp and
// tests/fixtures/tokenizers/README.md for how that is checked.
//
// Supported tokenizer.json parts (anything else is a stitch::Error naming the file and the part):
//   model:          BPE (vocab; merges as "a b" strings or [a, b] pairs; ignore_merges,
//                   byte_fallback, unk_token/fuse_unk, continuing_subword_prefix, end_of_word_suffix;
//                   dropout must be null or 0)
//   normalizer:     null, NFC, NFKC, NFD, NFKD, Sequence of these
//   pre_tokenizer:  null, Split (Regex or String; Isolated/Removed/MergedWithPrevious/
//                   MergedWithNext/Contiguous; invert), ByteLevel, Digits, Sequence of these
//   post_processor: null, ByteLevel, TemplateProcessing (single-sequence template), Sequence
//   decoder:        null (tokens joined with " "), ByteLevel, Sequence of ByteLevel
//   added_tokens:   content/special/single_word/lstrip/rstrip/normalized. Like HF, the "id"
//                   fields are not trusted: an added token takes its vocab id if its content is
//                   in the vocab, otherwise the next free id counting up from the vocab size.
//   truncation and padding are ignored (they do not change single-sequence ids unless set).
// Regexes are HF's Oniguruma patterns run by PCRE2 (JIT) after translating \s, \w, \h.
//
// Input that is not valid UTF-8 is not an error: every ill-formed byte sequence is replaced by
// U+FFFD first (maximal-subpart rule, the same as Python's bytes.decode("utf-8", "replace")),
// so encode(bytes) == HF encode(bytes.decode("utf-8", "replace")).
// decode() turns byte-level tokens back into bytes and repairs the result the same way (Rust's
// String::from_utf8_lossy), so decoding a partial multi-byte character yields U+FFFD, like HF.
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal, mutex-protected word
// cache; encode/decode may be called from several threads. Copies share the loaded tables.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace stitch {

namespace tok {
struct TokenizerImpl;
}

struct Tokenizer {
    // dir: model folder containing tokenizer.json (+ optional tokenizer_config.json).
    // Throws stitch::Error "<dir>/tokenizer.json: missing" etc.
    static Tokenizer load_dir(const std::filesystem::path& dir);
    // tokenizer_config may be an empty path (then bos/eos/pad ids stay unset).
    static Tokenizer load_json(const std::filesystem::path& tokenizer_json,
                               const std::filesystem::path& tokenizer_config);
    // Same from in-memory JSON text; `source` names the input in error messages.
    // tokenizer_config_json may be empty.
    static Tokenizer from_json_text(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                                    const std::string& source);

    // add_special = true applies the post_processor (e.g. Llama 3's TemplateProcessing adds
    // <|begin_of_text|>), exactly like HF `encode(text, add_special_tokens=True)`.
    // Added/special tokens written in the text (e.g. "<|im_end|>") are always recognised.
    std::vector<int32_t> encode(std::string_view text, bool add_special) const;
    // Like HF decode(ids, skip_special_tokens=...). Ids that are not in the vocabulary are skipped.
    std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
    // Raw vocab string of an id (byte-level form, e.g. "Ġthe"); added tokens give their content;
    // "" for an id that has no token.
    std::string token_text(int32_t id) const;
    // Added-token or vocab lookup of a raw token string.
    std::optional<int32_t> token_id(std::string_view token) const;
    // max id + 1 over vocab and added tokens
    int32_t vocab_size() const;
    // From tokenizer_config.json (bos_token/eos_token/pad_token as a string or {"content": ...}),
    // resolved to ids. A named token that does not exist is an error naming the config file.
    std::optional<int32_t> bos_id, eos_id, pad_id;
    // Whether the post-processor prepends a special token when add_special is true.
    bool adds_bos() const;
    // Whether id is an added token marked special (what decode(skip_special=true) drops).
    bool is_special(int32_t id) const;
    // One line, e.g. "byte-level BPE, 128000 merges-vocab + 256 added, pre-tokenizer
    // llama3-regex, normalizer none".
    std::string describe() const;

private:
    std::shared_ptr<const tok::TokenizerImpl> impl_;
    const tok::TokenizerImpl& impl() const;
    static Tokenizer from_json_text_files(std::string_view tokenizer_json, std::string_view config_json,
                                          const std::string& file, const std::string& config_file);
};

}  // namespace stitch

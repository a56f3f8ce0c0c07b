// Tokenizers matching HF `tokenizers` / transformers id for id, from three sources:
//   * a HF `tokenizer.json` (byte-level BPE: Llama 3, Qwen 2/2.5/3, GPT-2, SmolLM; SentencePiece-style
//     BPE with byte_fallback: Gemma 1/2/3, Llama 2, Mistral) — see the list of supported parts below;
//   * a SentencePiece `tokenizer.model` (run by libsentencepiece) when a folder has no tokenizer.json;
//   * the vocabulary embedded in a GGUF file (from_gguf): `gpt2` vocabularies become the byte-level
//     BPE pipeline of the family named by tokenizer.ggml.pre, `llama` vocabularies a SentencePiece
//     model built in memory and run by libsentencepiece.
// tests/test_tokenizer*.cpp and tests/fixtures/tokenizers/README.md say how each is checked.
//
// Supported tokenizer.json parts (anything else is a stitch::Error naming the file and the part):
//   model:          BPE (vocab; merges as "a b" strings or [a, b] pairs; ignore_merges,
//                   byte_fallback, unk_token/fuse_unk, continuing_subword_prefix, end_of_word_suffix;
//                   dropout must be null or 0)
//   normalizer:     null, NFC, NFKC, NFD, NFKD, Replace (String or Regex), Prepend, Strip, Sequence
//   pre_tokenizer:  null, Split (Regex or String; Isolated/Removed/MergedWithPrevious/
//                   MergedWithNext/Contiguous; invert), ByteLevel, Digits, Metaspace
//                   (prepend_scheme always/first/never, split), Sequence of these
//   post_processor: null, ByteLevel, TemplateProcessing (single-sequence template), Sequence
//   decoder:        null (tokens joined with " "), ByteLevel, Replace, ByteFallback, Fuse, Strip,
//                   Metaspace, Sequence of these
//   added_tokens:   content/special/single_word/lstrip/rstrip/normalized. Like HF, the "id"
//                   fields are not trusted: an added token takes its vocab id if its content is
//                   in the vocab, otherwise the next free id counting up from the vocab size.
//   truncation and padding are ignored (they do not change single-sequence ids unless set).
// Regexes are HF's Oniguruma patterns run by PCRE2 (JIT) after translating \s, \w, \h.
//
// SentencePiece models (tokenizer.model, GGUF `llama`): text is first split on the added tokens
// (control and unknown pieces as special tokens, user-defined pieces as plain added tokens, plus
// tokenizer_config.json's added_tokens_decoder), like HF; each stretch in between is encoded by
// libsentencepiece, so ids equal SentencePiece's (and HF's slow tokenizer's). decode() follows HF's
// fast decoder chain (Replace "▁" -> " ", ByteFallback, Fuse, and Strip one leading space when a
// dummy prefix is added).
//
// Input that is not valid UTF-8 is not an error: every ill-formed byte sequence is replaced by
// U+FFFD first (maximal-subpart rule, the same as Python's bytes.decode("utf-8", "replace")),
// so encode(bytes) == HF encode(bytes.decode("utf-8", "replace")).
// decode() turns byte-level tokens back into bytes and repairs the result the same way (Rust's
// String::from_utf8_lossy), so decoding a partial multi-byte character yields U+FFFD, like HF.
// A SentencePiece piece that is not valid UTF-8 (the protobuf holds bytes) is repaired the same way
// before the decoders run, so decode() always returns valid UTF-8.
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

class GGUFFile;
struct Tokenizer;

namespace tok {
struct TokenizerImpl;
struct SpmSpec;
Tokenizer build_spm_tokenizer(const SpmSpec& spec);
}  // namespace tok

// The tokenizer keys of a GGUF file (tokenizer.ggml.*), as plain data: what from_gguf reads.
struct GGUFVocab {
    std::string model;  // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    std::string pre;    // tokenizer.ggml.pre ("llama-bpe", "qwen2", "smollm", "gpt-2", "default" ...)
    std::vector<std::string> tokens;
    std::vector<float> scores;         // required for "llama"
    std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    std::vector<std::string> merges;   // "a b"; required for "gpt2"
    std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;
    std::optional<bool> add_bos, add_eos, add_space_prefix;
    std::optional<std::string> chat_template;  // tokenizer.chat_template
};

struct Tokenizer {
    // dir: model folder containing tokenizer.json, or else tokenizer.model (SentencePiece), plus an
    // optional tokenizer_config.json (bos/eos/pad tokens, chat_template; for tokenizer.model also
    // add_bos_token and add_eos_token (default false, as in HF) and added_tokens_decoder).
    // Throws stitch::Error "<dir>/tokenizer.json: missing (and no tokenizer.model)" etc.
    static Tokenizer load_dir(const std::filesystem::path& dir);
    // A SentencePiece tokenizer.model; tokenizer_config may be an empty path.
    static Tokenizer load_spm(const std::filesystem::path& tokenizer_model,
                              const std::filesystem::path& tokenizer_config);
    // The vocabulary embedded in a GGUF file (its tokenizer.ggml.* keys). Errors name the file.
    static Tokenizer from_gguf(const GGUFFile& file);
    // Same from plain data; `source` names the input in error messages.
    static Tokenizer from_gguf_vocab(const GGUFVocab& vocab, const std::string& source);
    // Reads the tokenizer.* keys of a GGUF file into plain data (errors name the file).
    static GGUFVocab read_gguf_vocab(const GGUFFile& file);
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
    // max id + 1 over vocab, added tokens and the post-processor's special-token ids (every id encode() can give)
    int32_t vocab_size() const;
    // From tokenizer_config.json (bos_token/eos_token/pad_token as a string or {"content": ...}),
    // resolved to ids. A named token that does not exist is an error naming the config file.
    std::optional<int32_t> bos_id, eos_id, pad_id;
    // tokenizer_config.json's "chat_template" when it is a string, or tokenizer.chat_template of a GGUF.
    std::optional<std::string> chat_template;
    // Whether the post-processor prepends a special token when add_special is true.
    bool adds_bos() const;
    // Whether id is an added token marked special (what decode(skip_special=true) drops).
    bool is_special(int32_t id) const;
    // One line, e.g. "byte-level BPE, 128000 merges-vocab + 256 added, pre-tokenizer
    // llama3-regex, normalizer none".
    std::string describe() const;

private:
    friend Tokenizer tok::build_spm_tokenizer(const tok::SpmSpec& spec);
    std::shared_ptr<const tok::TokenizerImpl> impl_;
    const tok::TokenizerImpl& impl() const;
    static Tokenizer from_json_text_files(std::string_view tokenizer_json, std::string_view config_json,
                                          const std::string& file, const std::string& config_file);
};

}  // namespace stitch

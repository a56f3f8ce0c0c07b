// What the SentencePiece-backed tokenizers are built from (tokenizer.model + tokenizer_config.json,
// or a GGUF `llama` vocabulary). Internal to engine/tokenizer/.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace stitch::tok {

// Whether a SentencePiece model adds its dummy prefix ("▁" before the text). Like SentencePiece
// itself, HF's slow tokenizer and llama.cpp, it is added to every stretch of plain text between
// added tokens (each stretch is one SentencePiece call).
enum class SpmPrefix {
    None,    // the model has no dummy prefix (Gemma)
    Native,  // libsentencepiece adds it (normalizer_spec.add_dummy_prefix)
};

struct SpmSpec {
    std::string model_bytes;  // serialized sentencepiece ModelProto
    std::string source;       // the file named in errors
    std::string kind;         // for describe(): "tokenizer.model", "GGUF llama vocabulary"
    SpmPrefix prefix = SpmPrefix::None;
    bool add_bos = false, add_eos = false;
    std::optional<int32_t> bos_id, eos_id, pad_id;
    struct Added {
        int32_t id = 0;
        std::string content;
        bool special = false, lstrip = false, rstrip = false, single_word = false;
    };
    // Added tokens matched in the raw text before SentencePiece runs, in order.
    std::vector<Added> added;
    std::optional<std::string> chat_template;
};

// The SentencePiece side of a GGUF `llama` vocabulary: model_bytes is a complete tokenizer.model.
// Throws stitch::Error naming `source` for a vocabulary that does not fit (see from_gguf_vocab).
SpmSpec spm_spec_from_gguf_vocab(const GGUFVocab& v, const std::string& source);

}  // namespace stitch::tok

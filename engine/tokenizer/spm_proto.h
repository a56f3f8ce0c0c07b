// The SentencePiece model file (`tokenizer.model`, a serialized sentencepiece.ModelProto), read
// and written with a small protobuf wire-format codec: no protobuf library, and only the fields
// stitch needs (the model itself is run by libsentencepiece). Internal to engine/tokenizer/.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stitch::tok {

// ModelProto.SentencePiece.Type, also the numbering of GGUF's tokenizer.ggml.token_type.
enum class SpmPieceType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct SpmPiece {
    std::string piece;
    float score = 0.0f;
    SpmPieceType type = SpmPieceType::Normal;
};

struct SpmModelProto {
    std::vector<SpmPiece> pieces;
    // TrainerSpec (defaults as in sentencepiece_model.proto)
    int32_t model_type = 1;  // 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR
    bool byte_fallback = false;
    bool treat_whitespace_as_suffix = false;
    int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
    std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
    // NormalizerSpec
    std::string normalizer_name;
    bool has_charsmap = false;  // a non-empty precompiled_charsmap (nmt_nfkc & co.)
    bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
    bool has_denormalizer = false;
};

// Parses the fields above; throws std::runtime_error("...") on malformed wire data.
SpmModelProto parse_spm_model(std::string_view bytes);

// Serializes a model: pieces, the TrainerSpec fields above (+ vocab_size) and the NormalizerSpec
// fields above (name "identity", no charsmap).
std::string serialize_spm_model(const SpmModelProto& m);

const char* spm_model_type_name(int32_t t);

}  // namespace stitch::tok

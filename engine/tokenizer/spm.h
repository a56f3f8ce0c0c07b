// A SentencePiece model run by libsentencepiece (the Debian package libsentencepiece-dev; link
// with -lsentencepiece). Internal to engine/tokenizer/: the Tokenizer splits added/special tokens
// off first, handles the dummy-prefix policy, and calls encode() on the plain text in between.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/spm_proto.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace stitch::tok {

class SpmModel {
public:
    // serialized: a ModelProto (tokenizer.model bytes). Throws stitch::Error naming `source` when
    // the bytes are not a model or libsentencepiece rejects it (duplicate pieces, no unk piece ...).
    SpmModel(std::string_view serialized, const std::string& source);
    ~SpmModel();
    SpmModel(const SpmModel&) = delete;
    SpmModel& operator=(const SpmModel&) = delete;

    // Appends the ids of one stretch of text (valid UTF-8). Thread-safe.
    void encode(std::string_view text, std::vector<int32_t>& out) const;

    const SpmModelProto& proto() const { return proto_; }

private:
    SpmModelProto proto_;
    std::string source_;
    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace stitch::tok

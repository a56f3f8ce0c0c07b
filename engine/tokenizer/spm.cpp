#include "engine/tokenizer/spm.h"

#include <sentencepiece_processor.h>

#include <stdexcept>

#include "engine/error.h"

namespace stitch::tok {

SpmModel::SpmModel(std::string_view serialized, const std::string& source)
    : source_(source), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
    if (serialized.empty()) fail(source, "empty SentencePiece model");
    try {
        proto_ = parse_spm_model(serialized);
    } catch (const std::runtime_error& e) {
        fail(source, "not a SentencePiece model: {}", e.what());
    }
    if (proto_.pieces.empty()) fail(source, "not a SentencePiece model: no pieces");
    // libsentencepiece stores pieces in a Darts trie, which throws on a NUL byte from a place
    // where C++ exceptions cannot pass (std::terminate): refuse such models here.
    for (size_t i = 0; i < proto_.pieces.size(); ++i)
        if (proto_.pieces[i].piece.find('\0') != std::string::npos)
            fail(source, "piece {} contains a NUL byte (SentencePiece cannot load it)", i);
    auto st = sp_->LoadFromSerializedProto(serialized);
    if (!st.ok()) fail(source, "SentencePiece rejects the model: {}", st.ToString());
}

SpmModel::~SpmModel() = default;

void SpmModel::encode(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::vector<int> ids;
    auto st = sp_->Encode(text, &ids);
    if (!st.ok()) fail(source_, "SentencePiece encoding failed: {}", st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
}

}  // namespace stitch::tok

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

// Site names and position selectors as users write them (DESIGN.md §3).
#pragma once
#include <string>
#include <span>
#include <vector>

#include "engine/forward.h"

namespace stitch {

struct SiteRef {
    Site site;
    int layer;  // -1 for embed, final_norm, logits
    std::string name() const;  // "blocks.3.resid_post", "embed", …
};

// "embed", "blocks.L.resid_pre|attn_out|resid_mid|mlp_out|resid_post", "final_norm", "logits";
// "blocks.*.SITE" expands to every layer. Throws stitch::Error naming the bad spec or layer.
std::vector<SiteRef> parse_sites(const std::string& comma_list, const ModelConfig& c, const char* flag = "--sites");

// Positions of a sequence, as absolute token indices (BOS is 0; generated tokens continue at
// prompt_len, prompt_len+1, …), so a selector means the same thing in prompt processing and in
// every cached decode step:
//   all            every position (prompt and generated)
//   prompt | gen   prompt positions | generated positions
//   last           the last prompt position
//   I              one position; negative I counts from the end of the prompt (-1 = last)
//   I:J            [I, J); negatives count from the end of the prompt; an omitted I is 0, an
//                  omitted J means no end (generated positions included)
//   match=TEXT     every prompt token whose characters overlap an occurrence of TEXT in the
//                  prompt (e.g. a trigger), whatever way the tokenizer split it
//   diff           (stitch vector only) the tokens where a positive prompt and its paired
//                  negative differ
struct PositionSelector {
    enum Kind { All, Prompt, Gen, Last, Index, Range, Match, Diff } kind = All;
    int begin = 0, end = 0;          // Index: begin; Range: [begin, end)
    bool open_begin = false, open_end = false;
    std::string match_text;          // Match
    std::string text;                // as written
    // Match and Diff select from a per-prompt mask computed by the caller (match_mask, …).
    bool needs_mask() const { return kind == Match || kind == Diff; }
    // Whether absolute position `pos` of a sequence whose prompt has prompt_len tokens is selected.
    // `mask` (Match/Diff): prompt_len flags, one per prompt position.
    bool selects(int pos, int prompt_len, const std::vector<char>* mask = nullptr) const;
    // The prompt positions selected, ascending (generated positions are not in a prompt).
    std::vector<int> select(int prompt_len, const std::vector<char>* mask = nullptr) const;
};
PositionSelector parse_positions(const std::string& spec);  // throws stitch::Error

// match=TEXT: flags for the prompt tokens whose decoded characters overlap an occurrence of
// `text` in the decoded prompt. Special tokens never match.
std::vector<char> match_mask(const Tokenizer& tok, std::span<const int32_t> ids, const std::string& text);

}  // namespace stitch

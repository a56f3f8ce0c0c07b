// Site names and position selectors as users write them (DESIGN.md §3).
#pragma once
#include <string>
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
std::vector<SiteRef> parse_sites(const std::string& comma_list, const ModelConfig& c);

// Positions of one prompt to keep: all | prompt | last | I | I:J | -K (from the end of the
// prompt; J may be negative too, and either bound of I:J may be omitted).
struct PositionSelector {
    enum Kind { All, Last, Range } kind = All;
    int begin = 0, end = 0;          // Range: [begin, end), negatives counted from the prompt end
    bool open_begin = false, open_end = false;
    std::string text;
    // The positions selected in a prompt of `len` tokens (empty when none fall inside).
    std::vector<int> select(int len) const;
};
PositionSelector parse_positions(const std::string& spec);  // throws stitch::Error

}  // namespace stitch

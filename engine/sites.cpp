#include "engine/sites.h"

#include <charconv>

#include "engine/error.h"

namespace stitch {

std::string SiteRef::name() const {
    if (layer < 0) return site_name(site);
    return "blocks." + std::to_string(layer) + "." + site_name(site);
}

namespace {

bool parse_int(std::string_view s, int& out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::vector<SiteRef> parse_sites(const std::string& list, const ModelConfig& c) {
    std::vector<SiteRef> out;
    size_t start = 0;
    while (start <= list.size()) {
        size_t comma = list.find(',', start);
        std::string spec = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        start = comma == std::string::npos ? list.size() + 1 : comma + 1;
        if (spec.empty()) fail("--sites", "empty site name in '{}'", list);
        if (spec == "embed") { out.push_back({Site::Embed, -1}); continue; }
        if (spec == "final_norm") { out.push_back({Site::FinalNorm, -1}); continue; }
        if (spec == "logits") { out.push_back({Site::Logits, -1}); continue; }
        const std::string prefix = "blocks.";
        size_t dot = spec.find('.', prefix.size());
        if (spec.rfind(prefix, 0) != 0 || dot == std::string::npos)
            fail("--sites", "unknown site '{}' (embed, blocks.L.resid_pre|attn_out|resid_mid|mlp_out|resid_post, final_norm, logits)", spec);
        std::string layer_s = spec.substr(prefix.size(), dot - prefix.size()), what = spec.substr(dot + 1);
        Site s;
        if (what == "resid_pre") s = Site::ResidPre;
        else if (what == "attn_out") s = Site::AttnOut;
        else if (what == "resid_mid") s = Site::ResidMid;
        else if (what == "mlp_out") s = Site::MlpOut;
        else if (what == "resid_post") s = Site::ResidPost;
        else fail("--sites", "unknown site '{}' (a block has resid_pre, attn_out, resid_mid, mlp_out, resid_post)", spec);
        if (layer_s == "*") {
            for (int L = 0; L < c.n_layers; ++L) out.push_back({s, L});
            continue;
        }
        int L = 0;
        if (!parse_int(layer_s, L)) fail("--sites", "layer '{}' in '{}' is not a number", layer_s, spec);
        if (L < 0 || L >= c.n_layers) fail("--sites", "layer {} in '{}' is out of range (the model has layers 0..{})", L, spec, c.n_layers - 1);
        out.push_back({s, L});
    }
    for (size_t i = 0; i < out.size(); ++i)
        for (size_t j = i + 1; j < out.size(); ++j)
            if (out[i].site == out[j].site && out[i].layer == out[j].layer) fail("--sites", "site '{}' is named twice", out[i].name());
    return out;
}

PositionSelector parse_positions(const std::string& spec) {
    PositionSelector p;
    p.text = spec;
    if (spec == "all" || spec == "prompt") return p;
    if (spec == "last") {
        p.kind = PositionSelector::Last;
        return p;
    }
    p.kind = PositionSelector::Range;
    if (auto colon = spec.find(':'); colon != std::string::npos) {
        std::string a = spec.substr(0, colon), b = spec.substr(colon + 1);
        p.open_begin = a.empty();
        p.open_end = b.empty();
        if ((!p.open_begin && !parse_int(a, p.begin)) || (!p.open_end && !parse_int(b, p.end)))
            fail("--positions", "'{}' is not a selector (all, last, I, I:J, -K)", spec);
        return p;
    }
    if (!parse_int(spec, p.begin)) fail("--positions", "'{}' is not a selector (all, last, I, I:J, -K)", spec);
    p.end = p.begin == -1 ? 0 : p.begin + 1;
    p.open_end = p.begin == -1;  // "-1" is the last position: [len-1, len)
    return p;
}

std::vector<int> PositionSelector::select(int len) const {
    std::vector<int> out;
    if (kind == All) {
        for (int i = 0; i < len; ++i) out.push_back(i);
        return out;
    }
    if (kind == Last) {
        if (len > 0) out.push_back(len - 1);
        return out;
    }
    int b = open_begin ? 0 : (begin < 0 ? len + begin : begin);
    int e = open_end ? len : (end < 0 ? len + end : end);
    b = std::max(b, 0);
    e = std::min(e, len);
    for (int i = b; i < e; ++i) out.push_back(i);
    return out;
}

}  // namespace stitch

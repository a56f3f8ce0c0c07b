// tokenizer.json / tokenizer.model loading and the encode/decode pipeline, following HF `tokenizers`:
//   added tokens (non-normalized) -> normalizer -> added tokens (normalized) -> pre-tokenizers
//   -> BPE (or SentencePiece) per pre-token -> post-processor;  ids -> tokens -> decoder chain.
#include "engine/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_set>

#include "engine/error.h"
#include "engine/tokenizer/bpe.h"
#include "engine/tokenizer/internal.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/spm.h"
#include "engine/tokenizer/text.h"

namespace stitch::tok {

using json = nlohmann::json;

namespace {

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr int32_t kMaxId = (1 << 22) - 1;  // 16x the largest real vocabularies; bounds allocations
constexpr int kMaxNesting = 32;            // Sequence inside Sequence ...; bounds recursion

const Regex& gpt2_regex() {
    static const Regex re{kGpt2Pattern};
    return re;
}

}  // namespace

struct AddedToken {
    std::string content;
    std::string pattern;  // what is matched and what decode emits: content, normalized if `normalized`
    int32_t id = 0;
    bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// Leftmost-longest multi-string matcher (what HF's Aho-Corasick with LeftmostLongest yields).
struct TokenTrie {
    struct Node {
        std::vector<std::pair<unsigned char, int32_t>> kids;
        int32_t value = -1;  // index into added tokens
    };
    std::vector<Node> nodes{1};
    std::array<bool, 256> first{};
    bool empty() const { return nodes.size() == 1; }

    void add(std::string_view s, int32_t value) {
        if (s.empty()) return;
        first[static_cast<unsigned char>(s[0])] = true;
        int32_t n = 0;
        for (unsigned char c : s) {
            int32_t next = -1;
            for (auto& [k, v] : nodes[static_cast<size_t>(n)].kids)
                if (k == c) { next = v; break; }
            if (next < 0) {
                next = static_cast<int32_t>(nodes.size());
                nodes[static_cast<size_t>(n)].kids.emplace_back(c, next);
                nodes.emplace_back();
            }
            n = next;
        }
        nodes[static_cast<size_t>(n)].value = value;
    }

    struct Match {
        size_t start, end;
        int32_t value;
    };
    // All non-overlapping leftmost-longest matches.
    void find_all(std::string_view s, std::vector<Match>& out) const {
        out.clear();
        if (empty()) return;
        size_t p = 0;
        while (p < s.size()) {
            if (!first[static_cast<unsigned char>(s[p])]) { ++p; continue; }
            int32_t n = 0, best = -1;
            size_t best_end = 0;
            for (size_t q = p; q < s.size(); ++q) {
                int32_t next = -1;
                for (auto& [k, v] : nodes[static_cast<size_t>(n)].kids)
                    if (k == static_cast<unsigned char>(s[q])) { next = v; break; }
                if (next < 0) break;
                n = next;
                if (nodes[static_cast<size_t>(n)].value >= 0) {
                    best = nodes[static_cast<size_t>(n)].value;
                    best_end = q + 1;
                }
            }
            if (best >= 0) {
                out.push_back({p, best_end, best});
                p = best_end;
            } else {
                ++p;
            }
        }
    }
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, First, Never };

struct Normalizer {
    enum class Kind { Form, Replace, Prepend, Strip } kind = Kind::Form;
    NormForm form = NormForm::NFC;  // Form
    Regex regex;                    // Replace: the pattern
    std::string text;               // Replace: the content; Prepend: the prefix
    bool left = false, right = false;  // Strip

    std::string apply(std::string_view s) const;
};

struct PreTokenizer {
    enum class Kind { Split, ByteLevel, Digits, Metaspace } kind = Kind::Split;
    Regex regex;  // Split
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false, use_regex = true;  // ByteLevel
    bool individual_digits = false;                   // Digits
    std::string replacement;                          // Metaspace (one character, UTF-8)
    PrependScheme scheme = PrependScheme::Always;     // Metaspace
    bool split = true;                                // Metaspace
    std::string name;                                 // for describe()
};

struct Decoder {
    enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind = Kind::ByteLevel;
    Regex regex;              // Replace
    std::string text;         // Replace: content; Metaspace: replacement
    char32_t strip_char = ' ';  // Strip
    size_t start = 0, stop = 0;  // Strip
    PrependScheme scheme = PrependScheme::Always;  // Metaspace
};

struct TemplateItem {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // SpecialToken ids
};

struct TokenizerImpl {
    std::string source;
    Bpe bpe;  // for SentencePiece models: only the vocabulary (piece <-> id)
    std::shared_ptr<const SpmModel> spm;  // set for SentencePiece models
    SpmPrefix spm_prefix = SpmPrefix::None;
    std::string spm_kind;  // describe(): "tokenizer.model" / "GGUF llama vocabulary"
    bool byte_level = false;
    std::vector<AddedToken> added;                   // in id-assignment order
    std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into added
    StringMap<int32_t> added_by_content;
    std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents;
    TokenTrie raw_trie, normalized_trie;
    std::vector<Normalizer> normalizers;
    std::vector<std::string> normalizer_names;
    std::vector<PreTokenizer> pre_tokenizers;
    std::vector<std::vector<TemplateItem>> templates;  // applied in order when add_special
    std::vector<std::string> post_names;
    std::vector<Decoder> decoders;  // the flattened decoder chain
    bool has_decoder = false;
    int32_t max_id = -1;

    std::string normalize_text(std::string_view s) const {
        std::string out(s);
        for (const Normalizer& n : normalizers) out = n.apply(out);
        return out;
    }

    // --- encode pipeline ---
    // Per-call buffers, one set per pre-tokenizer level (a level never touches another's).
    struct Scratch {
        std::vector<std::vector<std::pair<size_t, size_t>>> matches;
        std::vector<std::vector<std::pair<size_t, size_t>>> pieces;
        std::vector<std::vector<std::pair<std::pair<size_t, size_t>, bool>>> cover;
        explicit Scratch(size_t levels) : matches(levels), pieces(levels), cover(levels) {}
    };

    void split_added(std::string_view s, const TokenTrie& trie,
                     std::vector<std::pair<std::string, int32_t>>& out) const;
    // at_start: the piece begins at offset 0 of the input (Metaspace prepend_scheme "first").
    void pre_tokenize(size_t level, std::string_view piece, bool at_start, Scratch& sc,
                      std::vector<int32_t>& ids) const;
    void spm_encode(std::string_view piece, bool at_start, std::vector<int32_t>& ids) const;
    std::string run_decoders(std::vector<std::string> tokens) const;
};

std::string Normalizer::apply(std::string_view s) const {
    switch (kind) {
        case Kind::Form: return normalize(s, form);
        case Kind::Replace: {
            std::vector<std::pair<size_t, size_t>> m;
            regex.find_all(s, m);
            if (m.empty()) return std::string(s);
            std::string out;
            out.reserve(s.size() + m.size() * text.size());
            size_t last = 0;
            for (auto [a, b] : m) {
                out.append(s.substr(last, a - last));
                out += text;
                last = b;
            }
            out.append(s.substr(last));
            return out;
        }
        case Kind::Prepend:
            if (s.empty()) return {};
            return text + std::string(s);
        case Kind::Strip: {
            size_t a = 0, b = s.size();
            if (left)
                while (a < b) {
                    size_t k = a;
                    if (!is_white_space(next_cp(s, k))) break;
                    a = k;
                }
            if (right)
                while (b > a) {
                    size_t k = b - 1;
                    while (k > a && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                    size_t kk = k;
                    if (!is_white_space(next_cp(s, kk))) break;
                    b = k;
                }
            return std::string(s.substr(a, b - a));
        }
    }
    return std::string(s);
}

namespace {

// Turn a cover of the string by (range, is_match) into the kept ranges, as NormalizedString::split.
void apply_behavior(const std::vector<std::pair<std::pair<size_t, size_t>, bool>>& cover, SplitBehavior b,
                    std::vector<std::pair<size_t, size_t>>& out) {
    out.clear();
    switch (b) {
        case SplitBehavior::Isolated:
            for (auto& [r, m] : cover) out.push_back(r);
            break;
        case SplitBehavior::Removed:
            for (auto& [r, m] : cover)
                if (!m) out.push_back(r);
            break;
        case SplitBehavior::Contiguous: {
            bool prev = false;
            for (auto& [r, m] : cover) {
                if (m == prev && !out.empty()) out.back().second = r.second;
                else out.push_back(r);
                prev = m;
            }
            break;
        }
        case SplitBehavior::MergedWithPrevious: {
            bool prev = false;
            for (auto& [r, m] : cover) {
                if (m && !prev && !out.empty()) out.back().second = r.second;
                else out.push_back(r);
                prev = m;
            }
            break;
        }
        case SplitBehavior::MergedWithNext: {
            bool prev = false;
            for (auto it = cover.rbegin(); it != cover.rend(); ++it) {
                auto& [r, m] = *it;
                if (m && !prev && !out.empty()) out.back().first = r.first;
                else out.push_back(r);
                prev = m;
            }
            std::reverse(out.begin(), out.end());
            break;
        }
    }
}

void cover_from_matches(const std::vector<std::pair<size_t, size_t>>& matches, size_t len,
                        std::vector<std::pair<std::pair<size_t, size_t>, bool>>& cover) {
    cover.clear();
    if (len == 0) {
        cover.push_back({{0, 0}, false});
        return;
    }
    size_t prev = 0;
    for (auto [s, e] : matches) {
        if (prev != s) cover.push_back({{prev, s}, false});
        cover.push_back({{s, e}, true});
        prev = e;
    }
    if (prev != len) cover.push_back({{prev, len}, false});
}

}  // namespace

void TokenizerImpl::split_added(std::string_view s, const TokenTrie& trie,
                                std::vector<std::pair<std::string, int32_t>>& out) const {
    // HF AddedVocabulary::find_matches; pieces with id -1 are plain text, empty ones dropped.
    std::vector<TokenTrie::Match> matches;
    trie.find_all(s, matches);
    auto push = [&](size_t a, size_t b, int32_t id) {
        if (b > a) out.emplace_back(std::string(s.substr(a, b - a)), id);
    };
    size_t start_offset = 0;
    // [ws_from, ws_to): a run of white space ending at a non-space (or the end) already scanned by
    // rstrip, so that tokens whose content is itself white space cannot make the scans quadratic.
    size_t ws_from = 1, ws_to = 0;
    for (const auto& m : matches) {
        const AddedToken& tok = added[static_cast<size_t>(m.value)];
        size_t start = m.start, stop = m.end;
        if (tok.single_word) {
            bool start_space = true, stop_space = true;
            if (start > 0) {
                // last character before the match
                size_t k = start - 1;
                while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                size_t kk = k;
                start_space = !is_rust_word(next_cp(s, kk));
            }
            if (stop < s.size()) {
                size_t kk = stop;
                stop_space = !is_rust_word(next_cp(s, kk));
            }
            if (!start_space || !stop_space) continue;
        }
        if (tok.lstrip) {
            // Start of the run of white space that ends at `start` (HF then takes the later of it and
            // start_offset, so the scan stops there: linear overall).
            size_t newstart = start;
            while (newstart > start_offset) {
                size_t k = newstart - 1;
                while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                size_t kk = k;
                if (!is_white_space(next_cp(s, kk))) break;
                newstart = k;
            }
            start = std::max(newstart, start_offset);
        }
        if (tok.rstrip) {
            if (stop >= ws_from && stop <= ws_to) {
                stop = ws_to;
            } else {
                ws_from = stop;
                while (stop < s.size()) {
                    size_t kk = stop;
                    if (!is_white_space(next_cp(s, kk))) break;
                    stop = kk;
                }
                ws_to = stop;
            }
        }
        if (start_offset < start) push(start_offset, start, -1);
        out.emplace_back(std::string(s.substr(start, stop - start)), tok.id);
        start_offset = stop;
    }
    if (start_offset < s.size()) push(start_offset, s.size(), -1);
}

void TokenizerImpl::spm_encode(std::string_view piece, bool /*at_start*/, std::vector<int32_t>& ids) const {
    spm->encode(piece, ids);  // the dummy prefix, if any, is the model's own (SpmPrefix)
}

void TokenizerImpl::pre_tokenize(size_t level, std::string_view piece, bool at_start, Scratch& sc,
                                 std::vector<int32_t>& ids) const {
    if (piece.empty()) return;
    if (level == pre_tokenizers.size()) {
        if (spm) spm_encode(piece, at_start, ids);
        else bpe.tokenize(piece, ids);
        return;
    }
    const PreTokenizer& pt = pre_tokenizers[level];
    auto& matches = sc.matches[level];
    auto& pieces = sc.pieces[level];
    auto& cover = sc.cover[level];
    switch (pt.kind) {
        case PreTokenizer::Kind::Split: {
            pt.regex.find_all(piece, matches);
            cover_from_matches(matches, piece.size(), cover);
            if (pt.invert)
                for (auto& c : cover) c.second = !c.second;
            apply_behavior(cover, pt.behavior, pieces);
            for (auto [a, b] : pieces) pre_tokenize(level + 1, piece.substr(a, b - a), at_start && a == 0, sc, ids);
            return;
        }
        case PreTokenizer::Kind::Digits: {
            // Pattern over chars: every numeric char is its own match.
            cover.clear();
            size_t last = 0, i = 0;
            while (i < piece.size()) {
                size_t b = i;
                char32_t c = next_cp(piece, i);
                if (is_numeric(c)) {
                    if (last < b) cover.push_back({{last, b}, false});
                    cover.push_back({{b, i}, true});
                    last = i;
                }
            }
            if (piece.size() > last) cover.push_back({{last, piece.size()}, false});
            apply_behavior(cover, pt.individual_digits ? SplitBehavior::Isolated : SplitBehavior::Contiguous,
                           pieces);
            for (auto [a, b] : pieces) pre_tokenize(level + 1, piece.substr(a, b - a), at_start && a == 0, sc, ids);
            return;
        }
        case PreTokenizer::Kind::Metaspace: {
            // HF Metaspace: spaces become the replacement, then the prefix, then (split) a split
            // before every replacement character (MergedWithNext).
            std::string m;
            m.reserve(piece.size() + 8);
            bool prepend = pt.scheme == PrependScheme::Always || (pt.scheme == PrependScheme::First && at_start);
            bool starts = piece[0] == ' ' || piece.substr(0, pt.replacement.size()) == pt.replacement;
            if (prepend && !starts) m += pt.replacement;
            for (char c : piece) {
                if (c == ' ') m += pt.replacement;
                else m.push_back(c);
            }
            if (!pt.split) {
                pre_tokenize(level + 1, m, at_start, sc, ids);
                return;
            }
            std::vector<std::pair<size_t, size_t>> parts;
            size_t begin = 0, at = 0;
            while ((at = m.find(pt.replacement, at)) != std::string::npos) {
                if (at > begin) parts.push_back({begin, at});
                begin = at;
                at += pt.replacement.size();
            }
            if (begin < m.size()) parts.push_back({begin, m.size()});
            for (auto [a, b] : parts) pre_tokenize(level + 1, std::string_view(m).substr(a, b - a), at_start && a == 0, sc, ids);
            return;
        }
        case PreTokenizer::Kind::ByteLevel: {
            std::string prefixed;
            std::string_view p = piece;
            if (pt.add_prefix_space && p[0] != ' ') {
                prefixed.reserve(p.size() + 1);
                prefixed += ' ';
                prefixed += p;
                p = prefixed;
            }
            const auto& alpha = byte_alphabet();
            auto map_and_descend = [&](std::string_view sub) {
                if (sub.empty()) return;
                std::string m;
                m.reserve(sub.size() * 2);
                for (unsigned char b : sub) m += alpha.byte_to_utf8[b];
                pre_tokenize(level + 1, m, at_start && sub.data() == p.data(), sc, ids);
            };
            if (!pt.use_regex) {
                map_and_descend(p);
                return;
            }
            gpt2_regex().find_all(p, matches);
            cover_from_matches(matches, p.size(), cover);  // Isolated: every part is kept
            for (auto& [range, is_match] : cover) map_and_descend(p.substr(range.first, range.second - range.first));
            return;
        }
    }
}

namespace {

// "<0xNN>" -> the byte (what Rust's u8::from_str_radix(&t[3..5], 16) accepts, "+" sign included).
int byte_token_value(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    auto hex = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    if (t[3] == '+') return hex(t[4]);
    int a = hex(t[3]), b = hex(t[4]);
    return a < 0 || b < 0 ? -1 : a * 16 + b;
}

// ByteLevel: every token's characters mapped back to bytes (a token with a character outside the
// byte alphabet contributes its UTF-8 unchanged), all fused, then repaired like from_utf8_lossy.
std::string byte_level_fuse(const std::vector<std::string>& tokens) {
    const auto& alpha = byte_alphabet();
    std::string bytes;
    for (const auto& t : tokens) {
        size_t start = bytes.size();
        bool ok = true;
        size_t i = 0;
        while (i < t.size()) {
            char32_t c = next_cp(t, i);
            int b = c < 512 ? alpha.cp_to_byte[c] : -1;
            if (b < 0) { ok = false; break; }
            bytes.push_back(static_cast<char>(b));
        }
        if (!ok) {
            bytes.resize(start);
            bytes.append(t);
        }
    }
    return repair_utf8(bytes);
}

}  // namespace

std::string TokenizerImpl::run_decoders(std::vector<std::string> tokens) const {
    std::vector<std::string> next;
    for (const Decoder& d : decoders) {
        switch (d.kind) {
            case Decoder::Kind::ByteLevel: {
                std::string one = byte_level_fuse(tokens);
                tokens.assign(1, std::move(one));
                break;
            }
            case Decoder::Kind::Fuse: {
                std::string one;
                for (const auto& t : tokens) one += t;
                tokens.assign(1, std::move(one));
                break;
            }
            case Decoder::Kind::Replace: {
                std::vector<std::pair<size_t, size_t>> m;
                for (auto& t : tokens) {
                    d.regex.find_all(t, m);
                    if (m.empty()) continue;
                    std::string out;
                    size_t last = 0;
                    for (auto [a, b] : m) {
                        out.append(t, last, a - last);
                        out += d.text;
                        last = b;
                    }
                    out.append(t, last, std::string::npos);
                    t = std::move(out);
                }
                break;
            }
            case Decoder::Kind::ByteFallback: {
                // Runs of <0xNN> tokens become their bytes when those are valid UTF-8, else one
                // U+FFFD per byte token (HF's ByteFallback decoder).
                next.clear();
                std::string run;
                size_t run_tokens = 0;
                auto flush = [&] {
                    if (!run_tokens) return;
                    if (is_valid_utf8(run)) {
                        next.push_back(run);
                    } else {
                        for (size_t k = 0; k < run_tokens; ++k) next.emplace_back("\xEF\xBF\xBD");
                    }
                    run.clear();
                    run_tokens = 0;
                };
                for (auto& t : tokens) {
                    int b = byte_token_value(t);
                    if (b >= 0) {
                        run.push_back(static_cast<char>(b));
                        ++run_tokens;
                    } else {
                        flush();
                        next.push_back(std::move(t));
                    }
                }
                flush();
                tokens.swap(next);
                break;
            }
            case Decoder::Kind::Strip: {
                for (auto& t : tokens) {
                    std::vector<std::pair<size_t, char32_t>> cps;  // (byte offset, code point)
                    size_t i = 0;
                    while (i < t.size()) {
                        size_t at = i;
                        cps.push_back({at, next_cp(t, i)});
                    }
                    size_t start_cut = 0, stop_cut = cps.size();
                    for (size_t k = 0; k < d.start && k < cps.size() && cps[k].second == d.strip_char; ++k) start_cut = k + 1;
                    for (size_t k = 0; k < d.stop && k < cps.size(); ++k) {
                        size_t index = cps.size() - k - 1;
                        if (cps[index].second != d.strip_char) break;
                        stop_cut = index;
                    }
                    if (stop_cut <= start_cut) {
                        t.clear();
                        continue;
                    }
                    size_t a = cps[start_cut].first, b = stop_cut < cps.size() ? cps[stop_cut].first : t.size();
                    t = t.substr(a, b - a);
                }
                break;
            }
            case Decoder::Kind::Metaspace: {
                for (size_t i = 0; i < tokens.size(); ++i) {
                    std::string& t = tokens[i];
                    if (t.find(d.text) == std::string::npos) continue;
                    std::string out;
                    size_t last = 0, at;
                    while ((at = t.find(d.text, last)) != std::string::npos) {
                        out.append(t, last, at - last);
                        if (!(i == 0 && d.scheme != PrependScheme::Never)) out += ' ';
                        last = at + d.text.size();
                    }
                    out.append(t, last, std::string::npos);
                    t = std::move(out);
                }
                break;
            }
        }
    }
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
}

namespace {

std::string read_file(const std::filesystem::path& p) {
    std::error_code ec;
    if (!std::filesystem::exists(p, ec)) fail(p.string(), "missing");
    if (std::filesystem::is_directory(p, ec)) fail(p.string(), "is a directory, expected a JSON file");
    std::ifstream f(p, std::ios::binary);
    if (!f) fail(p.string(), "cannot open");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail(p.string(), "read error");
    return ss.str();
}

const json& need(const json& obj, const char* key, const std::string& where, const std::string& file) {
    if (!obj.is_object()) fail(file, "{}: expected a JSON object", where);
    auto it = obj.find(key);
    if (it == obj.end()) fail(file, "{}: missing \"{}\"", where, key);
    return *it;
}

bool get_bool(const json& obj, const char* key, bool dflt) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    return it->get<bool>();
}

std::string type_of(const json& obj, const std::string& where, const std::string& file) {
    const json& t = need(obj, "type", where, file);
    if (!t.is_string()) fail(file, "{}: \"type\" must be a string", where);
    return t.get<std::string>();
}

int32_t checked_id(const json& v, const std::string& what, const std::string& file) {
    if (!v.is_number_integer()) fail(file, "{}: id must be an integer", what);
    auto id = v.get<int64_t>();
    if (id < 0 || id > kMaxId) fail(file, "{}: id {} out of range", what, id);
    return static_cast<int32_t>(id);
}

std::string describe_pattern(std::string_view pat) {
    if (pat == kLlama3Pattern) return "llama3-regex";
    if (pat == kQwen2Pattern) return "qwen2-regex";
    if (pat == kGpt2Pattern) return "gpt2-regex";
    return "split-regex";
}

void load_model(TokenizerImpl& t, const json& model, const std::string& file) {
    if (!model.is_object()) fail(file, "\"model\" must be an object");
    std::string type = model.contains("type") ? type_of(model, "model", file) : "BPE";
    if (type != "BPE")
        fail(file, "model type \"{}\" is not supported (stitch reads BPE tokenizer.json files only)", type);
    Bpe& bpe = t.bpe;
    const json& vocab = need(model, "vocab", "model", file);
    if (!vocab.is_object()) fail(file, "model.vocab must be an object of token -> id");
    if (!model.contains("merges")) fail(file, "model: missing \"merges\"");
    const json& merges = model["merges"];
    if (!merges.is_array()) fail(file, "model.merges must be an array");
    if (auto it = model.find("dropout"); it != model.end() && !it->is_null() && it->get<double>() != 0.0)
        fail(file, "model.dropout {} is not supported (BPE dropout makes encoding random)", it->get<double>());
    bpe.vocab.reserve(vocab.size());
    int32_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        int32_t id = checked_id(it.value(), fmt::format("model.vocab[\"{}\"]", it.key()), file);
        bpe.vocab[it.key()] = id;
        max_id = std::max(max_id, id);
    }
    bpe.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string_view{});
    for (const auto& [tokstr, id] : bpe.vocab)
        if (!bpe.id_to_token[static_cast<size_t>(id)].data()) bpe.id_to_token[static_cast<size_t>(id)] = tokstr;
    t.max_id = max_id;
    if (auto it = model.find("unk_token"); it != model.end() && !it->is_null())
        bpe.unk_token = it->get<std::string>();
    if (auto it = model.find("continuing_subword_prefix"); it != model.end() && !it->is_null())
        bpe.continuing_subword_prefix = it->get<std::string>();
    if (auto it = model.find("end_of_word_suffix"); it != model.end() && !it->is_null())
        bpe.end_of_word_suffix = it->get<std::string>();
    bpe.fuse_unk = get_bool(model, "fuse_unk", false);
    bpe.byte_fallback = get_bool(model, "byte_fallback", false);
    bpe.ignore_merges = get_bool(model, "ignore_merges", false);

    bpe.merges.reserve(merges.size());
    const size_t prefix_len = bpe.continuing_subword_prefix.size();
    std::string merged;
    int32_t rank = 0;
    size_t index = 0;
    for (const json& m : merges) {
        ++index;
        std::string a, b;
        if (m.is_string()) {
            const std::string& line = m.get_ref<const std::string&>();
            if (line.rfind("#version", 0) == 0) continue;  // HF skips these lines (and does not rank them)
            size_t sp = line.find(' ');
            if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
                fail(file, "model.merges[{}]: \"{}\" is not two tokens separated by one space", index - 1, line);
            a = line.substr(0, sp);
            b = line.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
            a = m[0].get<std::string>();
            b = m[1].get<std::string>();
        } else {
            fail(file, "model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", index - 1);
        }
        auto ia = bpe.find(a), ib = bpe.find(b);
        if (!ia) fail(file, "model.merges[{}]: token \"{}\" is not in the vocabulary", index - 1, a);
        if (!ib) fail(file, "model.merges[{}]: token \"{}\" is not in the vocabulary", index - 1, b);
        if (b.size() < prefix_len)
            fail(file, "model.merges[{}]: \"{}\" is shorter than continuing_subword_prefix", index - 1, b);
        merged.assign(a);
        merged.append(b, prefix_len, std::string::npos);
        auto inew = bpe.find(merged);
        if (!inew) fail(file, "model.merges[{}]: merged token \"{}\" is not in the vocabulary", index - 1, merged);
        // Like HF (a HashMap collect), a repeated pair keeps the later rank.
        bpe.merges.put(Bpe::pair_key(*ia, *ib), rank, *inew);
        ++rank;
    }
    bpe.index_small_chars();
}

// {"String": s} or {"Regex": r} (Split, Replace): the compiled pattern and a short name for describe().
std::pair<Regex, std::string> load_pattern(const json& pat, const std::string& where, const std::string& file) {
    try {
        if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
            std::string r = pat["Regex"].get<std::string>();
            return {Regex(r), describe_pattern(r)};
        }
        if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
            std::string s = pat["String"].get<std::string>();
            if (s.empty()) fail(file, "{}: empty String pattern", where);
            return {Regex::literal(s), fmt::format("\"{}\"", s)};
        }
    } catch (const std::runtime_error& e) {
        if (dynamic_cast<const Error*>(&e)) throw;
        fail(file, "{}: bad regex: {}", where, e.what());
    }
    fail(file, "{}: \"pattern\" must be {{\"Regex\": ...}} or {{\"String\": ...}}", where);
}

PrependScheme load_prepend_scheme(const json& p, const std::string& where, const std::string& file) {
    auto it = p.find("prepend_scheme");
    if (it != p.end() && !it->is_null()) {
        if (!it->is_string()) fail(file, "{}: \"prepend_scheme\" must be a string", where);
        std::string v = it->get<std::string>();
        if (v == "always") return PrependScheme::Always;
        if (v == "first") return PrependScheme::First;
        if (v == "never") return PrependScheme::Never;
        fail(file, "{}: unknown prepend_scheme \"{}\"", where, v);
    }
    // tokenizers < 0.14 wrote add_prefix_space instead
    return get_bool(p, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

std::string load_replacement(const json& p, const std::string& where, const std::string& file) {
    auto it = p.find("replacement");
    std::string r = it == p.end() || it->is_null() ? std::string("\xE2\x96\x81") : std::string();
    if (r.empty()) {
        if (!it->is_string()) fail(file, "{}: \"replacement\" must be a string", where);
        r = it->get<std::string>();
    }
    size_t i = 0;
    if (r.empty() || !is_valid_utf8(r) || (next_cp(r, i), i != r.size()))
        fail(file, "{}: \"replacement\" must be one character", where);
    return r;
}

void load_normalizer(TokenizerImpl& t, const json& n, const std::string& file, int depth = 0) {
    if (n.is_null()) return;
    if (depth > kMaxNesting) fail(file, "normalizer: Sequences nested more than {} deep", kMaxNesting);
    std::string type = type_of(n, "normalizer", file);
    if (type == "Sequence") {
        const json& list = need(n, "normalizers", "normalizer Sequence", file);
        if (!list.is_array()) fail(file, "normalizer Sequence: \"normalizers\" must be an array");
        for (const json& x : list) load_normalizer(t, x, file, depth + 1);
        return;
    }
    static const std::pair<const char*, NormForm> forms[] = {
        {"NFC", NormForm::NFC}, {"NFKC", NormForm::NFKC}, {"NFD", NormForm::NFD}, {"NFKD", NormForm::NFKD}};
    if (t.normalizers.size() >= static_cast<size_t>(kMaxNesting))
        fail(file, "normalizer: more than {} normalizers", kMaxNesting);
    for (auto& [name, form] : forms) {
        if (type == name) {
            Normalizer nz;
            nz.kind = Normalizer::Kind::Form;
            nz.form = form;
            t.normalizers.push_back(std::move(nz));
            t.normalizer_names.emplace_back(name);
            return;
        }
    }
    Normalizer nz;
    if (type == "Replace") {
        nz.kind = Normalizer::Kind::Replace;
        auto [regex, name] = load_pattern(need(n, "pattern", "normalizer Replace", file), "normalizer Replace", file);
        nz.regex = std::move(regex);
        const json& c = need(n, "content", "normalizer Replace", file);
        if (!c.is_string()) fail(file, "normalizer Replace: \"content\" must be a string");
        nz.text = c.get<std::string>();
        t.normalizer_names.push_back(fmt::format("replace({}->\"{}\")", name, nz.text));
    } else if (type == "Prepend") {
        nz.kind = Normalizer::Kind::Prepend;
        const json& c = need(n, "prepend", "normalizer Prepend", file);
        if (!c.is_string()) fail(file, "normalizer Prepend: \"prepend\" must be a string");
        nz.text = c.get<std::string>();
        t.normalizer_names.push_back(fmt::format("prepend(\"{}\")", nz.text));
    } else if (type == "Strip") {
        nz.kind = Normalizer::Kind::Strip;
        nz.left = get_bool(n, "strip_left", true);
        nz.right = get_bool(n, "strip_right", true);
        t.normalizer_names.emplace_back("strip");
    } else {
        fail(file, "normalizer \"{}\" is not supported (supported: NFC, NFKC, NFD, NFKD, Replace, Prepend, Strip, Sequence)",
             type);
    }
    if (!is_valid_utf8(nz.text)) fail(file, "normalizer {}: text is not valid UTF-8", type);
    t.normalizers.push_back(std::move(nz));
}

SplitBehavior parse_behavior(const json& b, const std::string& file) {
    if (!b.is_string()) fail(file, "pre_tokenizer Split: \"behavior\" must be a string");
    std::string s = b.get<std::string>();
    if (s == "Removed") return SplitBehavior::Removed;
    if (s == "Isolated") return SplitBehavior::Isolated;
    if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (s == "Contiguous") return SplitBehavior::Contiguous;
    fail(file, "pre_tokenizer Split: unknown behavior \"{}\"", s);
}

void load_pre_tokenizer(TokenizerImpl& t, const json& p, const std::string& file, int depth = 0) {
    if (p.is_null()) return;
    if (depth > kMaxNesting) fail(file, "pre_tokenizer: Sequences nested more than {} deep", kMaxNesting);
    std::string type = type_of(p, "pre_tokenizer", file);
    if (type == "Sequence") {
        const json& list = need(p, "pretokenizers", "pre_tokenizer Sequence", file);
        if (!list.is_array()) fail(file, "pre_tokenizer Sequence: \"pretokenizers\" must be an array");
        for (const json& x : list) load_pre_tokenizer(t, x, file, depth + 1);
        return;
    }
    PreTokenizer pt;
    if (type == "Split") {
        pt.kind = PreTokenizer::Kind::Split;
        const json& pat = need(p, "pattern", "pre_tokenizer Split", file);
        auto [regex, name] = load_pattern(pat, "pre_tokenizer Split", file);
        pt.regex = std::move(regex);
        pt.name = pat.contains("String") ? "split(" + name + ")" : name;
        pt.behavior = parse_behavior(need(p, "behavior", "pre_tokenizer Split", file), file);
        pt.invert = get_bool(p, "invert", false);
    } else if (type == "ByteLevel") {
        pt.kind = PreTokenizer::Kind::ByteLevel;
        pt.add_prefix_space = get_bool(p, "add_prefix_space", true);
        pt.use_regex = get_bool(p, "use_regex", true);
        t.byte_level = true;
        if (pt.use_regex) pt.name = "gpt2-regex";
        if (pt.add_prefix_space) pt.name += pt.name.empty() ? "prefix-space" : "(prefix-space)";
    } else if (type == "Digits") {
        pt.kind = PreTokenizer::Kind::Digits;
        pt.individual_digits = get_bool(p, "individual_digits", false);
        pt.name = pt.individual_digits ? "digits(individual)" : "digits";
    } else if (type == "Metaspace") {
        pt.kind = PreTokenizer::Kind::Metaspace;
        pt.replacement = load_replacement(p, "pre_tokenizer Metaspace", file);
        pt.scheme = load_prepend_scheme(p, "pre_tokenizer Metaspace", file);
        pt.split = get_bool(p, "split", true);
        pt.name = fmt::format("metaspace({}{})",
                              pt.scheme == PrependScheme::Always ? "always" : pt.scheme == PrependScheme::First ? "first" : "never",
                              pt.split ? ",split" : "");
    } else {
        fail(file, "pre_tokenizer \"{}\" is not supported (supported: Split, ByteLevel, Digits, Metaspace, Sequence)",
             type);
    }
    if (t.pre_tokenizers.size() >= static_cast<size_t>(kMaxNesting))
        fail(file, "pre_tokenizer: more than {} pre-tokenizers", kMaxNesting);
    t.pre_tokenizers.push_back(std::move(pt));
}

void load_post_processor(TokenizerImpl& t, const json& p, const std::string& file, int depth = 0) {
    if (p.is_null()) return;
    if (depth > kMaxNesting) fail(file, "post_processor: Sequences nested more than {} deep", kMaxNesting);
    std::string type = type_of(p, "post_processor", file);
    if (type == "Sequence") {
        const json& list = need(p, "processors", "post_processor Sequence", file);
        if (!list.is_array()) fail(file, "post_processor Sequence: \"processors\" must be an array");
        for (const json& x : list) load_post_processor(t, x, file, depth + 1);
        return;
    }
    if (type == "ByteLevel") return;  // only trims offsets; ids unchanged
    if (type != "TemplateProcessing")
        fail(file, "post_processor \"{}\" is not supported (supported: TemplateProcessing, ByteLevel, Sequence)",
             type);
    const json& single = need(p, "single", "post_processor TemplateProcessing", file);
    if (!single.is_array())
        fail(file, "post_processor TemplateProcessing: \"single\" must be a list of pieces");
    const json& specials = need(p, "special_tokens", "post_processor TemplateProcessing", file);
    if (!specials.is_object()) fail(file, "post_processor TemplateProcessing: \"special_tokens\" must be an object");
    std::vector<TemplateItem> items;
    for (const json& piece : single) {
        if (piece.is_object() && piece.contains("Sequence")) {
            const json& seq = piece["Sequence"];
            std::string id = seq.is_object() && seq.contains("id") ? seq["id"].get<std::string>() : "";
            if (id != "A")
                fail(file, "post_processor TemplateProcessing: single template refers to sequence \"{}\"", id);
            items.push_back({true, {}});
        } else if (piece.is_object() && piece.contains("SpecialToken")) {
            const json& st = piece["SpecialToken"];
            if (!st.is_object() || !st.contains("id") || !st["id"].is_string())
                fail(file, "post_processor TemplateProcessing: SpecialToken without an \"id\"");
            std::string name = st["id"].get<std::string>();
            auto it = specials.find(name);
            if (it == specials.end())
                fail(file, "post_processor TemplateProcessing: missing SpecialToken \"{}\" in special_tokens", name);
            const json& ids = need(*it, "ids", "post_processor special token " + name, file);
            if (!ids.is_array()) fail(file, "post_processor special token {}: \"ids\" must be an array", name);
            TemplateItem item;
            for (const json& v : ids) {
                item.ids.push_back(checked_id(v, "post_processor special token " + name, file));
                // encode() emits these ids as they are (like HF), so vocab_size() must cover them: a
                // model whose embedding has no row for one is then refused at load.
                t.max_id = std::max(t.max_id, item.ids.back());
            }
            items.push_back(std::move(item));
        } else {
            fail(file, "post_processor TemplateProcessing: unknown template piece {}", piece.dump());
        }
    }
    t.templates.push_back(std::move(items));
}

void load_decoder(TokenizerImpl& t, const json& d, const std::string& file, int depth = 0) {
    if (d.is_null()) return;
    if (depth > kMaxNesting) fail(file, "decoder: Sequences nested more than {} deep", kMaxNesting);
    std::string type = type_of(d, "decoder", file);
    if (type == "Sequence") {
        const json& list = need(d, "decoders", "decoder Sequence", file);
        if (!list.is_array()) fail(file, "decoder Sequence: \"decoders\" must be an array");
        for (const json& x : list) load_decoder(t, x, file, depth + 1);
        t.has_decoder = true;
        return;
    }
    if (t.decoders.size() >= static_cast<size_t>(kMaxNesting)) fail(file, "decoder: more than {} decoders", kMaxNesting);
    Decoder dec;
    if (type == "ByteLevel") {
        dec.kind = Decoder::Kind::ByteLevel;
    } else if (type == "Replace") {
        dec.kind = Decoder::Kind::Replace;
        dec.regex = load_pattern(need(d, "pattern", "decoder Replace", file), "decoder Replace", file).first;
        const json& c = need(d, "content", "decoder Replace", file);
        if (!c.is_string() || !is_valid_utf8(c.get<std::string>()))
            fail(file, "decoder Replace: \"content\" must be a UTF-8 string");
        dec.text = c.get<std::string>();
    } else if (type == "ByteFallback") {
        dec.kind = Decoder::Kind::ByteFallback;
    } else if (type == "Fuse") {
        dec.kind = Decoder::Kind::Fuse;
    } else if (type == "Strip") {
        dec.kind = Decoder::Kind::Strip;
        const json& c = need(d, "content", "decoder Strip", file);
        std::string cs = c.is_string() ? c.get<std::string>() : std::string();
        size_t i = 0;
        if (cs.empty() || !is_valid_utf8(cs) || (next_cp(cs, i), i != cs.size()))
            fail(file, "decoder Strip: \"content\" must be one character");
        i = 0;
        dec.strip_char = next_cp(cs, i);
        auto count = [&](const char* key) -> size_t {
            const json& v = need(d, key, "decoder Strip", file);
            if (!v.is_number_unsigned()) fail(file, "decoder Strip: \"{}\" must be a non-negative integer", key);
            return static_cast<size_t>(std::min<uint64_t>(v.get<uint64_t>(), 1u << 20));
        };
        dec.start = count("start");
        dec.stop = count("stop");
    } else if (type == "Metaspace") {
        dec.kind = Decoder::Kind::Metaspace;
        dec.text = load_replacement(d, "decoder Metaspace", file);
        dec.scheme = load_prepend_scheme(d, "decoder Metaspace", file);
    } else {
        fail(file, "decoder \"{}\" is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, "
                   "Sequence)", type);
    }
    t.has_decoder = true;
    t.decoders.push_back(std::move(dec));
}

void register_added(TokenizerImpl& t, AddedToken tok) {
    const int32_t id = tok.id;
    t.added_by_content[tok.content] = id;
    if (tok.special) t.special_contents.insert(tok.content);
    if (auto it = t.added_by_id.find(id); it != t.added_by_id.end()) {
        t.added[it->second] = std::move(tok);  // same id again: the later definition wins
    } else {
        t.added_by_id[id] = t.added.size();
        t.added.push_back(std::move(tok));
    }
    t.max_id = std::max(t.max_id, id);
}

void build_added_tries(TokenizerImpl& t) {
    for (size_t i = 0; i < t.added.size(); ++i) {
        const AddedToken& tok = t.added[i];
        (tok.normalized ? t.normalized_trie : t.raw_trie).add(tok.pattern, static_cast<int32_t>(i));
    }
}

void load_added_tokens(TokenizerImpl& t, const json& list, const std::string& file) {
    if (list.is_null()) return;
    if (!list.is_array()) fail(file, "\"added_tokens\" must be an array");
    // HF AddedVocabulary::add_tokens: ids in the file are not trusted; a token that exists
    // (added earlier or in the vocab) keeps that id, others count up from the vocab size.
    int32_t next_id = static_cast<int32_t>(t.bpe.vocab.size());
    for (const json& a : list) {
        if (!a.is_object()) fail(file, "added_tokens: entries must be objects");
        const json& c = need(a, "content", "added_tokens entry", file);
        if (!c.is_string()) fail(file, "added_tokens: \"content\" must be a string");
        AddedToken tok;
        tok.content = c.get<std::string>();
        if (tok.content.empty()) continue;
        if (!is_valid_utf8(tok.content)) fail(file, "added token is not valid UTF-8");
        tok.special = get_bool(a, "special", false);
        tok.single_word = get_bool(a, "single_word", false);
        tok.lstrip = get_bool(a, "lstrip", false);
        tok.rstrip = get_bool(a, "rstrip", false);
        tok.normalized = get_bool(a, "normalized", !tok.special);
        tok.pattern = tok.normalized ? t.normalize_text(tok.content) : tok.content;
        int32_t id;
        if (auto it = t.added_by_content.find(tok.content); it != t.added_by_content.end()) {
            id = it->second;
        } else if (auto vid = t.bpe.find(tok.content)) {
            id = *vid;
        } else {
            id = next_id++;
        }
        if (id > kMaxId) fail(file, "added_tokens: too many tokens");
        tok.id = id;
        register_added(t, std::move(tok));
    }
    build_added_tries(t);
}

std::optional<std::string> config_token(const json& cfg, const char* key, const std::string& file) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return std::nullopt;
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
    fail(file, "\"{}\" must be a string or an object with \"content\"", key);
}

}  // namespace

}  // namespace stitch::tok

namespace stitch {

using tok::json;

const tok::TokenizerImpl& Tokenizer::impl() const {
    if (!impl_) throw Error("", "tokenizer used before it was loaded");
    return *impl_;
}

Tokenizer Tokenizer::from_json_text(std::string_view tokenizer_json, std::string_view config_json,
                                    const std::string& source) {
    return from_json_text_files(tokenizer_json, config_json, source, source + " (tokenizer_config)");
}

Tokenizer Tokenizer::from_json_text_files(std::string_view tokenizer_json, std::string_view config_json,
                                          const std::string& file, const std::string& config_file) {
    auto impl = std::make_shared<tok::TokenizerImpl>();
    impl->source = file;
    json j;
    try {
        j = json::parse(tokenizer_json);
    } catch (const json::exception& e) {
        fail(file, "not valid JSON: {}", e.what());
    }
    try {
        if (!j.is_object()) fail(file, "expected a JSON object at top level");
        if (!j.contains("model")) fail(file, "missing \"model\"");
        tok::load_model(*impl, j["model"], file);
        if (j.contains("normalizer")) tok::load_normalizer(*impl, j["normalizer"], file);
        if (j.contains("pre_tokenizer")) tok::load_pre_tokenizer(*impl, j["pre_tokenizer"], file);
        if (j.contains("post_processor")) tok::load_post_processor(*impl, j["post_processor"], file);
        if (j.contains("decoder")) tok::load_decoder(*impl, j["decoder"], file);
        if (j.contains("added_tokens")) tok::load_added_tokens(*impl, j["added_tokens"], file);
    } catch (const json::exception& e) {
        fail(file, "malformed tokenizer.json: {}", e.what());
    }
    if (impl->bpe.unk_token && !impl->bpe.find(*impl->bpe.unk_token))
        fail(file, "model.unk_token \"{}\" is not in the vocabulary", *impl->bpe.unk_token);

    Tokenizer t;
    t.impl_ = impl;
    if (!config_json.empty()) {
        json cfg;
        try {
            cfg = json::parse(config_json);
        } catch (const json::exception& e) {
            fail(config_file, "not valid JSON: {}", e.what());
        }
        if (!cfg.is_object()) fail(config_file, "expected a JSON object at top level");
        auto resolve = [&](const char* key) -> std::optional<int32_t> {
            auto name = tok::config_token(cfg, key, config_file);
            if (!name) return std::nullopt;
            auto id = t.token_id(*name);
            if (!id) fail(config_file, "{} \"{}\" is not a token of {}", key, *name, file);
            return id;
        };
        t.bos_id = resolve("bos_token");
        t.eos_id = resolve("eos_token");
        t.pad_id = resolve("pad_token");
        if (auto it = cfg.find("chat_template"); it != cfg.end() && it->is_string()) t.chat_template = it->get<std::string>();
    }
    return t;
}

Tokenizer tok::build_spm_tokenizer(const tok::SpmSpec& spec) {
    using namespace tok;
    auto impl = std::make_shared<TokenizerImpl>();
    impl->source = spec.source;
    impl->spm = std::make_shared<const SpmModel>(spec.model_bytes, spec.source);
    impl->spm_prefix = spec.prefix;
    impl->spm_kind = spec.kind;
    const SpmModelProto& proto = impl->spm->proto();
    const auto n = static_cast<int32_t>(proto.pieces.size());
    if (n > kMaxId) fail(spec.source, "{} pieces: too many", n);
    Bpe& v = impl->bpe;
    v.vocab.reserve(proto.pieces.size());
    for (int32_t i = 0; i < n; ++i) v.vocab.emplace(proto.pieces[static_cast<size_t>(i)].piece, i);
    v.id_to_token.assign(static_cast<size_t>(n), std::string_view{});
    for (const auto& [piece, id] : v.vocab) v.id_to_token[static_cast<size_t>(id)] = piece;
    impl->max_id = n - 1;
    for (const auto& a : spec.added) {
        if (a.id < 0 || a.id > kMaxId) fail(spec.source, "added token \"{}\": id {} out of range", a.content, a.id);
        if (a.content.empty() || !is_valid_utf8(a.content)) fail(spec.source, "added token {}: empty or not UTF-8", a.id);
        AddedToken tok;
        tok.content = tok.pattern = a.content;
        tok.id = a.id;
        tok.special = a.special;
        tok.lstrip = a.lstrip;
        tok.rstrip = a.rstrip;
        tok.single_word = a.single_word;
        register_added(*impl, std::move(tok));
    }
    build_added_tries(*impl);
    // HF's decoder chain for SentencePiece-style tokenizers.
    Decoder rep;
    rep.kind = Decoder::Kind::Replace;
    rep.regex = Regex::literal("\xE2\x96\x81");
    rep.text = " ";
    impl->decoders.push_back(std::move(rep));
    if (proto.byte_fallback) {
        Decoder bf;
        bf.kind = Decoder::Kind::ByteFallback;
        impl->decoders.push_back(std::move(bf));
    }
    Decoder fuse;
    fuse.kind = Decoder::Kind::Fuse;
    impl->decoders.push_back(std::move(fuse));
    if (spec.prefix != SpmPrefix::None) {
        Decoder strip;
        strip.kind = Decoder::Kind::Strip;
        strip.strip_char = ' ';
        strip.start = 1;
        impl->decoders.push_back(std::move(strip));
    }
    impl->has_decoder = true;
    auto in_range = [&](std::optional<int32_t> id) {
        return id && *id >= 0 && (*id < n || impl->added_by_id.count(*id));
    };
    if ((spec.add_bos && in_range(spec.bos_id)) || (spec.add_eos && in_range(spec.eos_id))) {
        std::vector<TemplateItem> tmpl;
        if (spec.add_bos && in_range(spec.bos_id)) tmpl.push_back({false, {*spec.bos_id}});
        tmpl.push_back({true, {}});
        if (spec.add_eos && in_range(spec.eos_id)) tmpl.push_back({false, {*spec.eos_id}});
        impl->templates.push_back(std::move(tmpl));
    }
    Tokenizer t;
    t.impl_ = impl;
    if (in_range(spec.bos_id)) t.bos_id = spec.bos_id;
    if (in_range(spec.eos_id)) t.eos_id = spec.eos_id;
    if (in_range(spec.pad_id)) t.pad_id = spec.pad_id;
    t.chat_template = spec.chat_template;
    return t;
}

Tokenizer Tokenizer::load_json(const std::filesystem::path& tokenizer_json,
                               const std::filesystem::path& tokenizer_config) {
    std::string text = tok::read_file(tokenizer_json);
    std::string cfg;
    if (!tokenizer_config.empty()) cfg = tok::read_file(tokenizer_config);
    return from_json_text_files(text, cfg, tokenizer_json.string(), tokenizer_config.string());
}

Tokenizer Tokenizer::load_dir(const std::filesystem::path& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) fail(dir.string(), "not a directory");
    auto tj = dir / "tokenizer.json";
    auto cfg = dir / "tokenizer_config.json";
    auto cfg_path = std::filesystem::exists(cfg, ec) ? cfg : std::filesystem::path{};
    if (std::filesystem::exists(tj, ec)) return load_json(tj, cfg_path);
    auto model = dir / "tokenizer.model";
    if (std::filesystem::exists(model, ec)) return load_spm(model, cfg_path);
    fail(tj.string(), "missing (and no tokenizer.model)");
}

Tokenizer Tokenizer::load_spm(const std::filesystem::path& tokenizer_model,
                              const std::filesystem::path& tokenizer_config) {
    std::error_code ec;
    if (!std::filesystem::exists(tokenizer_model, ec)) fail(tokenizer_model.string(), "missing");
    if (std::filesystem::is_directory(tokenizer_model, ec)) fail(tokenizer_model.string(), "is a directory, expected a SentencePiece model");
    const std::string file = tokenizer_model.string(), config_file = tokenizer_config.string();
    tok::SpmSpec spec;
    {
        std::ifstream f(tokenizer_model, std::ios::binary);
        if (!f) fail(file, "cannot open");
        std::ostringstream ss;
        ss << f.rdbuf();
        if (f.bad()) fail(file, "read error");
        spec.model_bytes = ss.str();
    }
    spec.source = file;
    spec.kind = "tokenizer.model";
    tok::SpmModelProto proto;
    try {
        proto = tok::parse_spm_model(spec.model_bytes);
    } catch (const std::runtime_error& e) {
        fail(file, "not a SentencePiece model: {}", e.what());
    }
    const auto n = static_cast<int32_t>(proto.pieces.size());
    if (n == 0) fail(file, "not a SentencePiece model: no pieces");
    tok::StringMap<int32_t> piece_ids;
    piece_ids.reserve(proto.pieces.size());
    for (int32_t i = 0; i < n; ++i) piece_ids.emplace(proto.pieces[static_cast<size_t>(i)].piece, i);

    try {
        json cfg = json::object();
        if (!tokenizer_config.empty()) {
            std::string text = tok::read_file(tokenizer_config);
            try {
                cfg = json::parse(text);
            } catch (const json::exception& e) {
                fail(config_file, "not valid JSON: {}", e.what());
            }
            if (!cfg.is_object()) fail(config_file, "expected a JSON object at top level");
        }
        auto cfg_bool = [&](const char* key) -> std::optional<bool> {
            auto it = cfg.find(key);
            if (it == cfg.end() || it->is_null()) return std::nullopt;
            if (!it->is_boolean()) fail(config_file, "\"{}\" must be true or false", key);
            return it->get<bool>();
        };
        spec.add_bos = cfg_bool("add_bos_token").value_or(false);
        spec.add_eos = cfg_bool("add_eos_token").value_or(false);

        // The dummy prefix is SentencePiece's own, added to every stretch of text between added tokens
    // (as HF's slow tokenizer does; HF's fast LlamaTokenizer adds it only at the start of the input).
    spec.prefix = proto.add_dummy_prefix ? tok::SpmPrefix::Native : tok::SpmPrefix::None;
    // Added tokens: control and unknown pieces (special), user-defined pieces (not special), then
        // tokenizer_config.json's added_tokens_decoder.
        for (int32_t i = 0; i < n; ++i) {
            const auto& p = proto.pieces[static_cast<size_t>(i)];
            if (p.type == tok::SpmPieceType::Control || p.type == tok::SpmPieceType::Unknown ||
                p.type == tok::SpmPieceType::UserDefined)
                spec.added.push_back({i, p.piece, p.type != tok::SpmPieceType::UserDefined});
        }
        if (auto it = cfg.find("added_tokens_decoder"); it != cfg.end() && !it->is_null()) {
            if (!it->is_object()) fail(config_file, "\"added_tokens_decoder\" must be an object");
            for (auto& [key, val] : it->items()) {
                int64_t id = -1;
                try {
                    size_t used = 0;
                    id = std::stoll(key, &used);
                    if (used != key.size()) id = -1;
                } catch (const std::exception&) {
                    id = -1;
                }
                if (id < 0 || id > tok::kMaxId) fail(config_file, "added_tokens_decoder: \"{}\" is not a token id", key);
                if (!val.is_object() || !val.contains("content") || !val["content"].is_string())
                    fail(config_file, "added_tokens_decoder[\"{}\"]: expected an object with \"content\"", key);
                tok::SpmSpec::Added a;
                a.content = val["content"].get<std::string>();
                if (a.content.empty()) continue;
                if (!tok::is_valid_utf8(a.content)) fail(config_file, "added_tokens_decoder[\"{}\"]: not valid UTF-8", key);
                a.id = static_cast<int32_t>(id);
                if (auto p = piece_ids.find(a.content); p != piece_ids.end()) a.id = p->second;  // a piece keeps its id
                a.special = tok::get_bool(val, "special", false);
                a.lstrip = tok::get_bool(val, "lstrip", false);
                a.rstrip = tok::get_bool(val, "rstrip", false);
                a.single_word = tok::get_bool(val, "single_word", false);
                spec.added.push_back(std::move(a));
            }
        }
        if (auto it = cfg.find("chat_template"); it != cfg.end() && it->is_string()) spec.chat_template = it->get<std::string>();

        // bos/eos/pad: the config's names, else the model's trainer_spec ids.
        auto piece_id = [&](const std::string& name) -> std::optional<int32_t> {
            for (const auto& a : spec.added)
                if (a.content == name) return a.id;
            if (auto p = piece_ids.find(name); p != piece_ids.end()) return p->second;
            return std::nullopt;
        };
        auto resolve = [&](const char* key, int32_t proto_id) -> std::optional<int32_t> {
            if (cfg.contains(key)) {
                auto name = tok::config_token(cfg, key, config_file);
                if (!name) return std::nullopt;
                auto id = piece_id(*name);
                if (!id) fail(config_file, "{} \"{}\" is not a token of {}", key, *name, file);
                return id;
            }
            if (proto_id >= 0 && proto_id < n) return proto_id;
            return std::nullopt;
        };
        spec.bos_id = resolve("bos_token", proto.bos_id);
        spec.eos_id = resolve("eos_token", proto.eos_id);
        spec.pad_id = resolve("pad_token", proto.pad_id);
    } catch (const json::exception& e) {
        fail(config_file, "malformed tokenizer_config.json: {}", e.what());
    }
    return tok::build_spm_tokenizer(spec);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
    const tok::TokenizerImpl& im = impl();
    std::string clean = tok::is_valid_utf8(text) ? std::string(text) : tok::repair_utf8(text);
    std::vector<int32_t> ids;
    tok::TokenizerImpl::Scratch sc(im.pre_tokenizers.size() + 1);

    // 1. added tokens matched on the raw text
    std::vector<std::pair<std::string, int32_t>> raw_parts, norm_parts;
    im.split_added(clean, im.raw_trie, raw_parts);
    try {
        bool first_raw = true;
        for (auto& [part, id] : raw_parts) {
            bool raw_at_start = first_raw;
            first_raw = false;
            if (id >= 0) {
                ids.push_back(id);
                continue;
            }
            // 2. normalize, 3. added tokens matched on the normalized text
            std::string normalized = im.normalizers.empty() ? std::move(part) : im.normalize_text(part);
            norm_parts.clear();
            im.split_added(normalized, im.normalized_trie, norm_parts);
            bool first_norm = true;
            for (auto& [np, nid] : norm_parts) {
                bool at_start = raw_at_start && first_norm;
                first_norm = false;
                if (nid >= 0) ids.push_back(nid);
                else im.pre_tokenize(0, np, at_start, sc, ids);  // 4. pre-tokenize + BPE / SentencePiece
            }
        }
    } catch (const std::runtime_error& e) {
        if (dynamic_cast<const Error*>(&e)) throw;
        fail(im.source, "encoding failed: {}", e.what());
    }
    if (add_special) {
        for (const auto& tmpl : im.templates) {
            std::vector<int32_t> out;
            out.reserve(ids.size() + 4);
            for (const auto& item : tmpl) {
                if (item.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
                else out.insert(out.end(), item.ids.begin(), item.ids.end());
            }
            ids = std::move(out);
        }
    }
    return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
    const tok::TokenizerImpl& im = impl();
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
        std::string_view s;
        if (auto it = im.added_by_id.find(id); it != im.added_by_id.end()) {
            s = im.added[it->second].pattern;
        } else if (auto tok = im.bpe.token_of(id)) {
            s = *tok;
        } else {
            continue;  // unknown id: HF skips it
        }
        if (skip_special && im.special_contents.find(s) != im.special_contents.end()) continue;
        // tokenizer.json tokens are valid UTF-8 (JSON strings); SentencePiece pieces need not be,
        // and the decoders (PCRE2 in Replace, code-point walks in Strip) assume it.
        if (im.spm && !tok::is_valid_utf8(s)) tokens.push_back(tok::repair_utf8(s));
        else tokens.emplace_back(s);
    }
    if (!im.has_decoder) {
        std::string out;
        for (size_t i = 0; i < tokens.size(); ++i) {
            if (i) out += ' ';
            out += tokens[i];
        }
        return out;
    }
    return im.run_decoders(std::move(tokens));
}

std::string Tokenizer::token_text(int32_t id) const {
    const tok::TokenizerImpl& im = impl();
    if (auto it = im.added_by_id.find(id); it != im.added_by_id.end()) return im.added[it->second].content;
    if (auto tok = im.bpe.token_of(id)) return std::string(*tok);
    return {};
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
    const tok::TokenizerImpl& im = impl();
    if (auto it = im.added_by_content.find(token); it != im.added_by_content.end()) return it->second;
    return im.bpe.find(token);
}

int32_t Tokenizer::vocab_size() const { return impl().max_id + 1; }

bool Tokenizer::adds_bos() const {
    for (const auto& tmpl : impl().templates) {
        for (const auto& item : tmpl) {
            if (item.is_sequence) break;
            if (!item.ids.empty()) return true;
        }
    }
    return false;
}

bool Tokenizer::is_special(int32_t id) const {
    const tok::TokenizerImpl& im = impl();
    auto it = im.added_by_id.find(id);
    return it != im.added_by_id.end() &&
           im.special_contents.find(im.added[it->second].content) != im.special_contents.end();
}

std::string Tokenizer::describe() const {
    const tok::TokenizerImpl& im = impl();
    if (im.spm) {
        const auto& p = im.spm->proto();
        std::string s = fmt::format("SentencePiece {}{} ({}), {} pieces + {} added, {}",
                                    tok::spm_model_type_name(p.model_type), p.byte_fallback ? " with byte fallback" : "",
                                    im.spm_kind, p.pieces.size(), im.added.size(),
                                    im.spm_prefix == tok::SpmPrefix::None ? "no dummy prefix" : "dummy prefix");
        for (const auto& tmpl : im.templates)
            for (const auto& item : tmpl)
                for (int32_t id : item.ids) s += fmt::format(", adds {}", token_text(id));
        return s;
    }
    std::string pre;
    for (const auto& p : im.pre_tokenizers) {
        if (p.name.empty()) continue;
        if (!pre.empty()) pre += '+';
        pre += p.name;
    }
    if (pre.empty()) pre = "none";
    std::string norm;
    for (const auto& n : im.normalizer_names) {
        if (!norm.empty()) norm += '+';
        norm += n;
    }
    if (norm.empty()) norm = "none";
    std::string s = fmt::format("{}BPE, {} merges-vocab + {} added, pre-tokenizer {}, normalizer {}",
                                im.byte_level ? "byte-level " : "", im.bpe.vocab.size(), im.added.size(), pre, norm);
    for (const auto& tmpl : im.templates) {
        for (const auto& item : tmpl) {
            if (item.is_sequence) break;
            for (int32_t id : item.ids) s += fmt::format(", prepends {}", token_text(id));
        }
    }
    return s;
}

}  // namespace stitch

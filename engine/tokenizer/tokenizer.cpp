// tokenizer.json loading and the encode/decode pipeline, following HF `tokenizers`:
//   added tokens (non-normalized) -> normalizer -> added tokens (normalized) -> pre-tokenizers
//   -> BPE per pre-token -> post-processor.
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
#include "engine/tokenizer/regex.h"
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

struct PreTokenizer {
    enum class Kind { Split, ByteLevel, Digits } kind = Kind::Split;
    Regex regex;  // Split
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false, use_regex = true;  // ByteLevel
    bool individual_digits = false;                   // Digits
    std::string name;                                 // for describe()
};

struct TemplateItem {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // SpecialToken ids
};

struct TokenizerImpl {
    std::string source;
    Bpe bpe;
    bool byte_level = false;
    std::vector<AddedToken> added;                   // in id-assignment order
    std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into added
    StringMap<int32_t> added_by_content;
    std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents;
    TokenTrie raw_trie, normalized_trie;
    std::vector<NormForm> normalizers;
    std::vector<std::string> normalizer_names;
    std::vector<PreTokenizer> pre_tokenizers;
    std::vector<std::vector<TemplateItem>> templates;  // applied in order when add_special
    std::vector<std::string> post_names;
    int decoder_byte_level_steps = 0;  // number of ByteLevel decoders in the chain
    bool has_decoder = false;
    int32_t max_id = -1;

    std::string normalize_text(std::string_view s) const {
        std::string out(s);
        for (NormForm f : normalizers) out = normalize(out, f);
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
    void pre_tokenize(size_t level, std::string_view piece, Scratch& sc, std::vector<int32_t>& ids) const;
};

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
            // Start of the run of white space that ends at `start`.
            size_t newstart = start;
            while (newstart > 0) {
                size_t k = newstart - 1;
                while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                size_t kk = k;
                if (!is_white_space(next_cp(s, kk))) break;
                newstart = k;
            }
            start = std::max(newstart, start_offset);
        }
        if (tok.rstrip) {
            while (stop < s.size()) {
                size_t kk = stop;
                if (!is_white_space(next_cp(s, kk))) break;
                stop = kk;
            }
        }
        if (start_offset < start) push(start_offset, start, -1);
        out.emplace_back(std::string(s.substr(start, stop - start)), tok.id);
        start_offset = stop;
    }
    if (start_offset < s.size()) push(start_offset, s.size(), -1);
}

void TokenizerImpl::pre_tokenize(size_t level, std::string_view piece, Scratch& sc,
                                 std::vector<int32_t>& ids) const {
    if (piece.empty()) return;
    if (level == pre_tokenizers.size()) {
        bpe.tokenize(piece, ids);
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
            for (auto [a, b] : pieces) pre_tokenize(level + 1, piece.substr(a, b - a), sc, ids);
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
            for (auto [a, b] : pieces) pre_tokenize(level + 1, piece.substr(a, b - a), sc, ids);
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
                pre_tokenize(level + 1, m, sc, ids);
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
    for (auto& [name, form] : forms) {
        if (type == name) {
            t.normalizers.push_back(form);
            t.normalizer_names.emplace_back(name);
            return;
        }
    }
    fail(file, "normalizer \"{}\" is not supported (supported: NFC, NFKC, NFD, NFKD, Sequence)", type);
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
        try {
            if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
                std::string r = pat["Regex"].get<std::string>();
                pt.regex = Regex(r);
                pt.name = describe_pattern(r);
            } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
                std::string s = pat["String"].get<std::string>();
                pt.regex = Regex::literal(s);
                pt.name = fmt::format("split(\"{}\")", s);
            } else {
                fail(file, "pre_tokenizer Split: \"pattern\" must be {{\"Regex\": ...}} or {{\"String\": ...}}");
            }
        } catch (const std::runtime_error& e) {
            if (dynamic_cast<const Error*>(&e)) throw;
            fail(file, "pre_tokenizer Split: bad regex: {}", e.what());
        }
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
    } else {
        fail(file, "pre_tokenizer \"{}\" is not supported (supported: Split, ByteLevel, Digits, Sequence)", type);
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
            for (const json& v : ids) item.ids.push_back(checked_id(v, "post_processor special token " + name, file));
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
    if (type != "ByteLevel") fail(file, "decoder \"{}\" is not supported (supported: ByteLevel, Sequence)", type);
    t.has_decoder = true;
    ++t.decoder_byte_level_steps;
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
        t.added_by_content[tok.content] = id;
        if (tok.special) t.special_contents.insert(tok.content);
        if (auto it = t.added_by_id.find(id); it != t.added_by_id.end()) {
            t.added[it->second] = tok;  // same id again: the later definition wins
        } else {
            t.added_by_id[id] = t.added.size();
            t.added.push_back(tok);
        }
        t.max_id = std::max(t.max_id, id);
    }
    for (size_t i = 0; i < t.added.size(); ++i) {
        const AddedToken& tok = t.added[i];
        (tok.normalized ? t.normalized_trie : t.raw_trie).add(tok.pattern, static_cast<int32_t>(i));
    }
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
    }
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
    if (!std::filesystem::exists(tj, ec)) fail(tj.string(), "missing");
    auto cfg = dir / "tokenizer_config.json";
    return load_json(tj, std::filesystem::exists(cfg, ec) ? cfg : std::filesystem::path{});
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
        for (auto& [part, id] : raw_parts) {
            if (id >= 0) {
                ids.push_back(id);
                continue;
            }
            // 2. normalize, 3. added tokens matched on the normalized text
            std::string normalized = im.normalizers.empty() ? std::move(part) : im.normalize_text(part);
            norm_parts.clear();
            im.split_added(normalized, im.normalized_trie, norm_parts);
            for (auto& [np, nid] : norm_parts) {
                if (nid >= 0) ids.push_back(nid);
                else im.pre_tokenize(0, np, sc, ids);  // 4. pre-tokenize + BPE
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
    std::vector<std::string_view> tokens;
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
        tokens.push_back(s);
    }
    if (!im.has_decoder) {
        std::string out;
        for (size_t i = 0; i < tokens.size(); ++i) {
            if (i) out += ' ';
            out += tokens[i];
        }
        return out;
    }
    std::string text;
    for (auto t : tokens) text += t;
    if (im.decoder_byte_level_steps == 0) return text;
    const auto& alpha = tok::byte_alphabet();
    // First ByteLevel step works token by token: a token with any character outside the byte
    // alphabet (e.g. an added token containing a space) contributes its UTF-8 bytes unchanged.
    std::string bytes;
    bytes.reserve(text.size());
    for (auto t : tokens) {
        size_t start = bytes.size();
        bool ok = true;
        size_t i = 0;
        while (i < t.size()) {
            char32_t c = tok::next_cp(t, i);
            int b = c < 512 ? alpha.cp_to_byte[c] : -1;
            if (b < 0) { ok = false; break; }
            bytes.push_back(static_cast<char>(b));
        }
        if (!ok) {
            bytes.resize(start);
            bytes.append(t);
        }
    }
    std::string out = tok::repair_utf8(bytes);
    // Further ByteLevel steps see one token: the text so far.
    for (int step = 1; step < im.decoder_byte_level_steps; ++step) {
        std::string again;
        bool ok = true;
        size_t i = 0;
        while (i < out.size()) {
            char32_t c = tok::next_cp(out, i);
            int b = c < 512 ? alpha.cp_to_byte[c] : -1;
            if (b < 0) { ok = false; break; }
            again.push_back(static_cast<char>(b));
        }
        if (ok) out = tok::repair_utf8(again);
    }
    return out;
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

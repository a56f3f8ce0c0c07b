#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/tokenizer/regex.h"

#include <pcre2.h>

#include <stdexcept>

#include "engine/tokenizer/text.h"

namespace stitch::tok {

namespace {

// Unicode White_Space, as a character-class body.
constexpr std::string_view kSpaceBody =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr std::string_view kWordBody = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
constexpr std::string_view kHexBody = "0-9a-fA-F";

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "error " + std::to_string(code);
    return reinterpret_cast<const char*>(buf);
}

pcre2_code* compile(const std::string& pcre_pattern, uint32_t options) {
    pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
    pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);
    int err = 0;
    PCRE2_SIZE erroff = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre_pattern.data()), pcre_pattern.size(),
                                     options, &err, &erroff, cctx);
    pcre2_compile_context_free(cctx);
    if (!code) throw std::runtime_error(pcre2_message(err) + " at offset " + std::to_string(erroff));
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // JIT is an optimisation; the interpreter is the fallback
    return code;
}

// Per-thread match context with a JIT stack large enough for long whitespace or letter runs.
struct MatchScratch {
    pcre2_match_context* ctx = nullptr;
    pcre2_jit_stack* jit = nullptr;
    MatchScratch() {
        ctx = pcre2_match_context_create(nullptr);
        jit = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
        if (jit) pcre2_jit_stack_assign(ctx, nullptr, jit);
        pcre2_set_heap_limit(ctx, 4u * 1024 * 1024);  // KiB: 4 GiB for the interpreter's backtracking
        pcre2_set_match_limit(ctx, 1000000000u);
    }
    ~MatchScratch() {
        if (jit) pcre2_jit_stack_free(jit);
        pcre2_match_context_free(ctx);
    }
    MatchScratch(const MatchScratch&) = delete;
    MatchScratch& operator=(const MatchScratch&) = delete;
};

}  // namespace

std::string onig_to_pcre2(std::string_view p) {
    std::string out;
    out.reserve(p.size() + 64);
    bool in_class = false;
    size_t class_start = 0;  // index in p just after '[' or '[^'
    size_t i = 0;
    while (i < p.size()) {
        char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            char e = p[i + 1];
            auto outside_or_inside = [&](std::string_view body, bool negated) {
                if (!in_class) {
                    out += negated ? "[^" : "[";
                    out += body;
                    out += "]";
                } else if (!negated) {
                    out += body;
                } else {
                    out += '\\';  // a negated class inside a class has no PCRE2 spelling; keep PCRE2's
                    out += e;
                }
            };
            switch (e) {
                case 's': outside_or_inside(kSpaceBody, false); i += 2; continue;
                case 'S': outside_or_inside(kSpaceBody, true); i += 2; continue;
                case 'w': outside_or_inside(kWordBody, false); i += 2; continue;
                case 'W': outside_or_inside(kWordBody, true); i += 2; continue;
                case 'h': outside_or_inside(kHexBody, false); i += 2; continue;
                case 'H': outside_or_inside(kHexBody, true); i += 2; continue;
                case 'u':
                    if (i + 6 <= p.size() && is_hex(p[i + 2]) && is_hex(p[i + 3]) &&
                        is_hex(p[i + 4]) && is_hex(p[i + 5])) {
                        out += "\\x{";
                        out += p.substr(i + 2, 4);
                        out += "}";
                        i += 6;
                        continue;
                    }
                    break;
                default:
                    break;
            }
            // Any other escape: copy the backslash and the whole (possibly multi-byte) character.
            size_t n = cp_len(static_cast<unsigned char>(e));
            out += '\\';
            out += p.substr(i + 1, n);
            i += 1 + n;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out += c;
            ++i;
            if (i < p.size() && p[i] == '^') { out += '^'; ++i; }
            class_start = i;
            continue;
        }
        if (in_class && c == ']' && i != class_start) {
            in_class = false;
            out += c;
            ++i;
            continue;
        }
        if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
            // POSIX bracket [:alpha:] — copy through to the closing ":]".
            size_t end = p.find(":]", i + 2);
            if (end != std::string_view::npos) {
                out += p.substr(i, end + 2 - i);
                i = end + 2;
                continue;
            }
        }
        out += c;
        ++i;
    }
    return out;
}

Regex::Regex(std::string_view pattern) : source_(pattern) {
    code_ = compile(onig_to_pcre2(pattern), PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE);
}

Regex Regex::literal(std::string_view literal) {
    Regex r;
    r.source_ = std::string(literal);
    r.code_ = compile(std::string(literal), PCRE2_UTF | PCRE2_LITERAL);  // UCP is not allowed with LITERAL
    return r;
}

Regex::Regex(Regex&& o) noexcept : code_(o.code_), source_(std::move(o.source_)) { o.code_ = nullptr; }

Regex& Regex::operator=(Regex&& o) noexcept {
    if (this != &o) {
        if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
        code_ = o.code_;
        source_ = std::move(o.source_);
        o.code_ = nullptr;
    }
    return *this;
}

Regex::~Regex() {
    if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
    out.clear();
    auto* code = static_cast<pcre2_code*>(code_);
    if (!code) return;
    thread_local MatchScratch scratch;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    if (!md) throw std::bad_alloc();
    struct Free {
        pcre2_match_data* m;
        ~Free() { pcre2_match_data_free(m); }
    } guard{md};
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t search_from = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (search_from <= s.size()) {
        int rc = pcre2_match(code, subject, s.size(), search_from, PCRE2_NO_UTF_CHECK, md, scratch.ctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) throw std::runtime_error("regex /" + source_ + "/ failed: " + pcre2_message(rc));
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me < ms) {  // \K inside a lookahead can do this; treat as empty at the end
            ms = me;
        }
        if (ms == me && have_last && last_end == me) {
            // An empty match right after the previous match is skipped: move on one character.
            if (search_from >= s.size()) break;
            search_from += cp_len(static_cast<unsigned char>(s[search_from]));
            continue;
        }
        out.emplace_back(ms, me);
        search_from = me;
        have_last = true;
        last_end = me;
    }
}

}  // namespace stitch::tok

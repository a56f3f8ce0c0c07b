// PCRE2 wrapper that behaves like the Oniguruma regexes HF `tokenizers` compiles (its SysRegex):
// patterns are translated from Oniguruma (Ruby syntax) to PCRE2, and find_all iterates matches the
// way rust-onig's find_iter does. Internal to engine/tokenizer/.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stitch::tok {

// Rewrite the Oniguruma-isms that PCRE2 reads differently: \s (Unicode White_Space, which
// includes U+0085), \w (letters, marks, decimal digits, connector punctuation), \h (a hex
// digit in Oniguruma, horizontal space in PCRE2) and \uHHHH.
std::string onig_to_pcre2(std::string_view pattern);

class Regex {
public:
    Regex() = default;
    // Compiles onig_to_pcre2(pattern) with UTF, UCP and MULTILINE (Oniguruma's ^ and $ are
    // line anchors). Throws std::runtime_error with PCRE2's message on a bad pattern.
    explicit Regex(std::string_view pattern);
    // Same, but `literal` is matched as a plain string (Split's {"String": ...} pattern).
    static Regex literal(std::string_view literal);
    Regex(Regex&&) noexcept;
    Regex& operator=(Regex&&) noexcept;
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    ~Regex();

    // All matches in s (valid UTF-8) as byte ranges [start, end), in order; empty matches are
    // allowed except right after the previous match (then the search moves on one character),
    // exactly like rust-onig's FindMatches. Throws std::runtime_error if PCRE2 gives up (limits).
    void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

    const std::string& source() const { return source_; }

private:
    void* code_ = nullptr;  // pcre2_code_8*
    std::string source_;
};

}  // namespace stitch::tok

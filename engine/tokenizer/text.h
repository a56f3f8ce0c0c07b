// Text helpers for the tokenizer: UTF-8 repair, the few Unicode character classes HF
// `tokenizers` relies on (Rust's char::is_whitespace / is_numeric, Rust regex \w), Unicode
// normalization (utf8proc) and GPT-2's byte <-> character alphabet. Internal to engine/tokenizer/.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace stitch::tok {

// Decode one code point from valid UTF-8 at s[i]; advances i. Input must be valid UTF-8
// (everything past repair_utf8 is).
inline char32_t next_cp(std::string_view s, size_t& i) {
    auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) { ++i; return b0; }
    if (b0 < 0xE0) {
        char32_t c = (char32_t(b0 & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
        i += 2;
        return c;
    }
    if (b0 < 0xF0) {
        char32_t c = (char32_t(b0 & 0x0F) << 12) | (char32_t(static_cast<unsigned char>(s[i + 1]) & 0x3F) << 6) |
                     (static_cast<unsigned char>(s[i + 2]) & 0x3F);
        i += 3;
        return c;
    }
    char32_t c = (char32_t(b0 & 0x07) << 18) | (char32_t(static_cast<unsigned char>(s[i + 1]) & 0x3F) << 12) |
                 (char32_t(static_cast<unsigned char>(s[i + 2]) & 0x3F) << 6) |
                 (static_cast<unsigned char>(s[i + 3]) & 0x3F);
    i += 4;
    return c;
}

// Length in bytes of the UTF-8 sequence starting with lead byte b (valid UTF-8 assumed).
inline size_t cp_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

void append_utf8(std::string& out, char32_t c);

// True when s is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Replace every ill-formed subsequence with U+FFFD using the "maximal subpart" practice
// (Unicode ch. 3, U+FFFD substitution), which is what Python's bytes.decode('utf-8',
// errors='replace') and Rust's String::from_utf8_lossy both do.
std::string repair_utf8(std::string_view s);

// Rust char::is_whitespace == Unicode White_Space (also what Oniguruma's \s matches).
bool is_white_space(char32_t c);
// Rust char::is_numeric: general category Nd, Nl or No.
bool is_numeric(char32_t c);
// Rust regex-crate \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool is_rust_word(char32_t c);

enum class NormForm { NFC, NFKC, NFD, NFKD };
// Unicode normalization of valid UTF-8 (embedded NULs allowed).
std::string normalize(std::string_view s, NormForm form);

// GPT-2 bytes_to_unicode: each byte maps to one printable code point below U+0144.
struct ByteAlphabet {
    std::array<std::string, 256> byte_to_utf8;  // UTF-8 of the character standing for each byte
    std::array<int16_t, 512> cp_to_byte;          // inverse; -1 for code points outside the alphabet
    ByteAlphabet();
};
const ByteAlphabet& byte_alphabet();

}  // namespace stitch::tok

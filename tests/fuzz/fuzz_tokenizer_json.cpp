// tokenizer.json (+ optional tokenizer_config.json) loading (engine/tokenizer/tokenizer.cpp), then a
// few fixed strings encoded and decoded. Input: tokenizer.json bytes, optionally followed by a NUL
// byte and tokenizer_config.json bytes (JSON text never holds a raw NUL).
// Invariants checked on a file that loads: every id encode() gives is in [0, vocab_size()), and
// decode() gives valid UTF-8.
#include <cstring>

#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
    const size_t json_size = nul ? size_t(nul - data) : size;
    const auto tj = fuzz::write_file("tokenizer.json", data, json_size);
    std::filesystem::path cfg;
    if (nul) cfg = fuzz::write_file("tokenizer_config.json", nul + 1, size - json_size - 1);
    fuzz::expect_clean([&] {
        const Tokenizer t = Tokenizer::load_json(tj, cfg);
        static const char* const texts[] = {"Hello world", "  <|im_end|> 123\n\n\tfix \xef\xac\x81 caf\xc3\xa9", "a\xff\xc3 b",
                                            "", "\xe2\x96\x81\xe2\x96\x81x  y"};
        const int32_t n = t.vocab_size();
        for (const char* s : texts) {
            for (bool special : {false, true}) {
                const auto ids = t.encode(s, special);
                for (int32_t id : ids)
                    if (id < 0 || id >= n) std::abort();  // an id the model's embedding has no row for
                if (!tok::is_valid_utf8(t.decode(ids, special))) std::abort();
            }
        }
        (void)t.describe();
        (void)t.adds_bos();
    });
    return 0;
}

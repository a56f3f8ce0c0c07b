// SentencePiece tokenizer.model loading (our protobuf reader, engine/tokenizer/spm_proto.cpp, then
// libsentencepiece), then a few fixed strings encoded and decoded. Input: byte 0 picks the
// tokenizer_config.json (bit 0: none / spm-tiny's; bit 1: with added_tokens_decoder), the rest is the
// model. Invariants on a model that loads: ids in [0, vocab_size()), decode gives valid UTF-8.
#include "engine/tokenizer/text.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
constexpr std::string_view kConfig = R"({"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>"})";
constexpr std::string_view kConfigAdded =
    R"({"add_bos_token": true, "add_eos_token": true, "added_tokens_decoder": {"3": {"content": "<tool>", "special": false},)"
    R"( "1000": {"content": "<|x|>", "special": true, "lstrip": true, "rstrip": true}}})";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    if (size == 0) return 0;
    const uint8_t mode = data[0];
    const auto model = fuzz::write_file("tokenizer.model", data + 1, size - 1);
    std::filesystem::path cfg;
    if (mode & 1) {
        const std::string_view c = mode & 2 ? kConfigAdded : kConfig;
        cfg = fuzz::write_file("tokenizer_config.json", reinterpret_cast<const uint8_t*>(c.data()), c.size());
    }
    fuzz::expect_clean([&] {
        const Tokenizer t = Tokenizer::load_spm(model, cfg);
        static const char* const texts[] = {"Hello world", " <tool>x</tool> 12\n\n<|x|>  ", "a\xff\xc3 b", ""};
        const int32_t n = t.vocab_size();
        for (const char* s : texts) {
            for (bool special : {false, true}) {
                const auto ids = t.encode(s, special);
                for (int32_t id : ids)
                    if (id < 0 || id >= n) std::abort();
                if (!tok::is_valid_utf8(t.decode(ids, special))) std::abort();
            }
        }
        (void)t.describe();
    });
    return 0;
}

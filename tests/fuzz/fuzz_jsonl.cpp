// JSONL prompt files (engine/prompts.cpp read_prompts_jsonl). Input: byte 0 picks the text field
// (even: "prompt", the default; odd: "text"), the rest is the file.
#include "engine/prompts.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    if (size == 0) return 0;
    const std::string field = data[0] & 1 ? "text" : "prompt";
    const auto p = fuzz::write_file("prompts.jsonl", data + 1, size - 1);
    fuzz::expect_clean([&] {
        const auto recs = field == "prompt" ? read_prompts_jsonl(p) : read_prompts_jsonl(p, field);
        if (recs.empty()) std::abort();
    });
    return 0;
}

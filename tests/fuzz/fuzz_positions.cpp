// --positions selector specs (engine/sites.h parse_positions): all, last, 3, -1, 2:5, match=TEXT, ...
#include "engine/sites.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string spec(stitch::fuzz::as_text(data, size));
    stitch::fuzz::expect_clean([&] { (void)stitch::parse_positions(spec); });
    return 0;
}

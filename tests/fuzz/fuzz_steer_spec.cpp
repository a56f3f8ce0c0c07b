// --steer SPEC strings (engine/steer.cpp parse_steer_spec: SITE:OP:FILE[:ALPHA][@POSITIONS]) against
// the llama_tied fixture's config (3 layers). FILE is never opened.
#include <cmath>

#include "engine/steer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    const ModelConfig& c = fuzz::fixture_config();
    const std::string spec(fuzz::as_text(data, size));
    fuzz::expect_clean([&] {
        const SteerSpec s = parse_steer_spec(spec, c);
        if (s.sites.empty() || s.file.empty() || !std::isfinite(s.alpha)) std::abort();
        fuzz::require_layers_in_range(s.sites, c);
        (void)s.sel.select(8);
    });
    return 0;
}

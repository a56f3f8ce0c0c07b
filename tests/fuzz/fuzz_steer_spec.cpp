// --steer SPEC strings (engine/steer.cpp parse_steer_spec: SITE:OP:FILE[:ALPHA][@POSITIONS]) against
// the llama_tied fixture's config (3 layers). FILE is never opened.
#include <cmath>

#include "engine/steer.h"
#include "models/hf.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    static const ModelConfig c = load_hf_config(std::filesystem::path(STITCH_SOURCE_DIR) / "tests/fixtures/models/llama_tied");
    const std::string spec(fuzz::as_text(data, size));
    fuzz::expect_clean([&] {
        const SteerSpec s = parse_steer_spec(spec, c);
        if (s.sites.empty() || s.file.empty() || !std::isfinite(s.alpha)) std::abort();
        for (const SiteRef& r : s.sites)
            if (r.layer < -1 || r.layer >= c.n_layers) std::abort();
        (void)s.sel.select(8);
    });
    return 0;
}

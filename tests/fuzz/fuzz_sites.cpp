// --sites lists (engine/sites.cpp parse_sites) against the llama_tied fixture's config (3 layers).
#include <set>

#include "engine/sites.h"
#include "models/hf.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    static const ModelConfig c = load_hf_config(std::filesystem::path(STITCH_SOURCE_DIR) / "tests/fixtures/models/llama_tied");
    const std::string list(fuzz::as_text(data, size));
    fuzz::expect_clean([&] {
        const auto sites = parse_sites(list, c);
        std::set<std::string> names;
        for (const SiteRef& r : sites) {
            if (r.layer < -1 || r.layer >= c.n_layers) std::abort();
            if (!names.insert(r.name()).second) std::abort();  // duplicates are refused
        }
    });
    return 0;
}

// --sites lists (engine/sites.cpp parse_sites) against the llama_tied fixture's config (3 layers).
#include <set>

#include "engine/sites.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    const ModelConfig& c = fuzz::fixture_config();
    const std::string list(fuzz::as_text(data, size));
    fuzz::expect_clean([&] {
        const auto sites = parse_sites(list, c);
        std::set<std::string> names;
        fuzz::require_layers_in_range(sites, c);
        for (const SiteRef& r : sites)
            if (!names.insert(r.name()).second) std::abort();  // duplicates are refused
    });
    return 0;
}

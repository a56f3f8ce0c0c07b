// Map files (stitch map-train output: safetensors with W, b or W1, b1, W2, b2 and __metadata__
// format=stitch-map, kind, d_src, d_tgt, hidden) as mapping/mapper.cpp load_map reads them,
// then check_map_fits against a source and target side, and one row predicted through the map
// (which indexes the weights with the dimensions load_map accepted).
#include <vector>

#include "mapping/mapper.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto path = stitch::fuzz::write_file("input.map.safetensors", data, size);
    stitch::fuzz::expect_clean([&] {
        stitch::Mapper m = stitch::load_map(path);
        if (m.layers.empty()) std::abort();
        for (size_t l = 0; l < m.layers.size(); ++l) {
            const auto& L = m.layers[l];
            if (L.W.size() != size_t(L.out) * size_t(L.in) || L.b.size() != size_t(L.out)) std::abort();
            if (l > 0 && m.layers[l - 1].out != L.in) std::abort();
        }
        stitch::MapSide src{"blocks.1.resid_post", "src-model", "llama", m.d_src()};
        stitch::MapSide tgt{"blocks.2.resid_post", "tgt-model", "qwen2", m.d_tgt()};
        stitch::fuzz::expect_clean([&] { stitch::check_map_fits(m, path.string(), src, &tgt, true); });
        stitch::fuzz::expect_clean([&] { stitch::check_map_fits(m, path.string(), src, nullptr, false); });
        std::vector<float> x(size_t(m.d_src()), 0.5f), y(size_t(m.d_tgt()));
        stitch::predict(m, x.data(), 1, y.data());
    });
    return 0;
}

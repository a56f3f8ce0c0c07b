// --steer vector files as engine/steer.cpp read_steer_vectors reads them: a llama.cpp control
// vector (GGUF, general.architecture = controlvector, direction.N tensors) or a safetensors
// vector ([d], [1, d] or [n_layers, d]); a capture file used as a replace patch
// (prompt_index / position rows) is read through SafetensorsFile::to_i32 and to_f32.
// The first input byte picks the file's extension and the site; the rest is the file.
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const uint8_t sel = data[0];
    const auto path = stitch::fuzz::write_file((sel & 1) ? "vec.gguf" : "vec.safetensors", data + 1, size - 1);
    // Widths and layer counts of the seeds (4 wide, 3 layers) and of a bigger model.
    const int width = (sel & 2) ? 4 : 8, n_layers = (sel & 4) ? 3 : 2;
    static const stitch::Site sites[] = {stitch::Site::ResidPost, stitch::Site::ResidPre, stitch::Site::Embed,
                                         stitch::Site::Logits};
    stitch::SiteRef site{sites[(sel >> 3) & 3], 1};
    if (site.site == stitch::Site::Embed || site.site == stitch::Site::Logits) site.layer = -1;
    stitch::fuzz::expect_clean([&] {
        stitch::SteerVectors v = stitch::read_steer_vectors(path.string(), site, width, n_layers);
        if (!v.shared.empty() && int(v.shared.size()) != width) std::abort();
        for (const auto& l : v.per_layer)
            if (!l.empty() && int(l.size()) != width) std::abort();
    });
    if (!(sel & 1)) {
        stitch::fuzz::expect_clean([&] {
            stitch::SafetensorsFile f(path);
            if (f.find("prompt_index") && f.find("position")) {
                auto pi = f.to_i32(f.get("prompt_index"));
                auto pos = f.to_i32(f.get("position"));
                (void)pi;
                (void)pos;
            }
        });
    }
    return 0;
}

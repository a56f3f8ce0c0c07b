// model.safetensors.index.json (weight_map: tensor name -> shard file) in a folder next to a
// small valid shard, resolved by WeightFiles as models/hf.cpp and engine/model.cpp load an HF
// folder: every listed shard opened once, every name looked up in its shard, then each entry
// converted to float32 as the weight loader does.
#include <fstream>

#include "engine/safetensors.h"
#include "models/hf.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// Two shards that exist for every input: model-00001-of-00002.safetensors (a, b) and
// model-00002-of-00002.safetensors (model.embed_tokens.weight, c).
void write_shards(const std::filesystem::path& dir) {
    static bool done = false;
    if (done) return;
    const float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, e[6] = {0, 1, 2, 3, 4, 5};
    const uint16_t c[2] = {0x3c00, 0x4000};
    auto span = [](const void* p, size_t n) { return std::span<const uint8_t>(static_cast<const uint8_t*>(p), n); };
    stitch::write_safetensors(dir / "model-00001-of-00002.safetensors",
                              {{"a", stitch::DType::F32, {2, 2}, span(a, 16)}, {"b", stitch::DType::F32, {2}, span(b, 8)}});
    stitch::write_safetensors(dir / "model-00002-of-00002.safetensors",
                              {{"model.embed_tokens.weight", stitch::DType::F32, {3, 2}, span(e, 24)},
                               {"c", stitch::DType::BF16, {2}, span(c, 4)}});
    done = true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::filesystem::path dir = stitch::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(dir);
    write_shards(dir);
    stitch::fuzz::write_file("model/model.safetensors.index.json", data, size);
    stitch::fuzz::expect_clean([&] {
        stitch::WeightFiles w(dir);
        (void)w.dtype_summary();
        (void)stitch::hf_weight_names(w);
        for (const auto& name : w.names()) {
            const auto* e = w.find(name);
            if (!e || e->info->name != name) std::abort();  // an entry must be the tensor it names
            auto v = e->file->to_f32(*e->info);
            if (int64_t(v.size()) != e->info->numel()) std::abort();
        }
    });
    return 0;
}

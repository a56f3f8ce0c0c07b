// config.json, generation_config.json (models/hf.cpp load_hf_config) and adapter_config.json
// (engine/lora.cpp read_adapter_config). Input: byte 0 picks the file (mod 3), the rest is its text:
//   0 config.json alone; 1 generation_config.json next to the llama_tied fixture's config.json;
//   2 adapter_config.json, then rank_for / alpha_for on a few module names.
#include <fstream>
#include <sstream>

#include "engine/lora.h"
#include "models/hf.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
std::string fixture_config() {
    std::ifstream f(std::filesystem::path(STITCH_SOURCE_DIR) / "tests/fixtures/models/llama_tied/config.json");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (ss.str().empty()) std::abort();
    return ss.str();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    if (size == 0) return 0;
    const int mode = data[0] % 3;
    ++data;
    --size;
    if (mode == 0) {
        const auto p = fuzz::write_file("cfg/config.json", data, size);
        fuzz::expect_clean([&] {
            const ModelConfig c = load_hf_config(p.parent_path());
            if (c.n_layers <= 0 || c.hidden <= 0 || c.head_dim <= 0 || c.n_heads % c.n_kv_heads != 0 ||
                int(c.layer_window.size()) != c.n_layers)
                std::abort();
            (void)c.param_count();
        });
    } else if (mode == 1) {
        static const std::string cfg = fixture_config();
        const auto dir = fuzz::scratch_dir() / "gen";
        fuzz::write_file("gen/config.json", reinterpret_cast<const uint8_t*>(cfg.data()), cfg.size());
        fuzz::write_file("gen/generation_config.json", data, size);
        fuzz::expect_clean([&] {
            const ModelConfig c = load_hf_config(dir);
            for (int32_t id : c.eos_ids)
                if (id < 0 || id >= c.vocab_size) std::abort();
        });
    } else {
        const auto p = fuzz::write_file("adapter/adapter_config.json", data, size);
        fuzz::expect_clean([&] {
            const LoraConfig lc = read_adapter_config(p);
            if (lc.r <= 0) std::abort();
            for (const char* m : {"model.layers.0.self_attn.q_proj", "model.layers.12.mlp.down_proj", "v_proj", ""}) {
                if (lc.rank_for(m) <= 0) std::abort();
                (void)lc.alpha_for(m);
            }
        });
    }
    return 0;
}

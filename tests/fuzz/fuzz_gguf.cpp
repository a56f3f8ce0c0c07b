// One .gguf file: header, metadata, tensor directory, offsets and alignment (engine/gguf.h);
// every metadata value read through the typed getters; every tensor the dequantizer supports
// converted to float32 (kernels/cpu/dequant.cpp); the tokenizer rebuilt from the embedded
// vocabulary (engine/tokenizer/gguf_vocab.cpp) and run on a short text; and the whole model
// loaded as `stitch` loads a .gguf (engine/model_gguf.cpp: config, memory guard, weights, RoPE).
#include <variant>

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer/tokenizer.h"
#include "models/gguf_model.h"
#include "tests/fuzz/fuzz_util.h"

using stitch::fuzz::expect_clean;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto path = stitch::fuzz::write_file("input.gguf", data, size);
    std::unique_ptr<stitch::GGUFFile> fp;
    expect_clean([&] { fp = std::make_unique<stitch::GGUFFile>(path); });
    if (!fp) return 0;
    const stitch::GGUFFile& f = *fp;
    (void)f.type_summary();
    for (const auto& kv : f.metadata()) {
        const std::string& key = kv.first;
        expect_clean([&] { (void)f.get_int(key); });
        expect_clean([&] { (void)f.get_float(key); });
        expect_clean([&] { (void)f.get_string(key); });
        expect_clean([&] { (void)f.get_bool(key); });
        if (std::holds_alternative<stitch::GGUFValue::Array>(kv.second.v)) {
            expect_clean([&] { (void)f.get_string_array(key); });
            expect_clean([&] { (void)f.get_float_array(key); });
            expect_clean([&] { (void)f.get_int_array(key); });
        }
    }
    for (const auto& t : f.tensors()) {
        if (f.find_tensor(t.name) != &t) std::abort();
        if (f.tensor_data(t).size() != t.nbytes) std::abort();
        expect_clean([&] {
            auto v = f.tensor_f32(t);
            if (int64_t(v.size()) != t.numel()) std::abort();
        });
    }
    if (f.has("tokenizer.ggml.model")) {
        expect_clean([&] {
            stitch::Tokenizer tok = stitch::Tokenizer::from_gguf(f);
            auto ids = tok.encode("Hello world, <s> 123 \xE2\x96\x81x", true);
            (void)tok.decode(ids);
        });
    }
    expect_clean([&] {
        stitch::ModelConfig c = stitch::gguf_model_config(f);
        (void)stitch::gguf_layer_inv_freq(f, c);
    });
    expect_clean([&] { (void)stitch::load_gguf_model(path); });
    return 0;
}

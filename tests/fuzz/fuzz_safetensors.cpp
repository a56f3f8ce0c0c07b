// One .safetensors file (8-byte header length, JSON header, data), opened as every loader opens
// it (engine/safetensors.h), with every tensor converted the way the model, LoRA, capture and
// map loaders convert them: float tensors to float32, integer ones to int32. The model
// fingerprint (engine/model.h file_fingerprint) reads the header length on its own, so it runs too.
#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

bool is_float(stitch::DType t) {
    return t == stitch::DType::F32 || t == stitch::DType::F16 || t == stitch::DType::BF16 || t == stitch::DType::F64;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const auto path = stitch::fuzz::write_file("input.safetensors", data, size);
    stitch::fuzz::expect_clean([&] {
        stitch::SafetensorsFile f(path);
        size_t total = 0;
        for (const auto& [k, v] : f.metadata()) total += k.size() + v.size();
        for (const auto& t : f.tensors()) {
            if (f.find(t.name) != &t) std::abort();  // the index must name every tensor
            if (t.numel() < 0) std::abort();
            const auto bytes = f.data(t);
            if (bytes.size() != t.nbytes) std::abort();
            if (is_float(t.dtype)) {
                auto v = f.to_f32(t);
                if (int64_t(v.size()) != t.numel()) std::abort();
            } else if (t.dtype == stitch::DType::I32 || t.dtype == stitch::DType::I64) {
                auto v = f.to_i32(t);
                if (int64_t(v.size()) != t.numel()) std::abort();
            } else {
                // U8/I8/I16/BOOL: both conversions must refuse, with a stitch::Error
                stitch::fuzz::expect_clean([&] { (void)f.to_f32(t); });
                stitch::fuzz::expect_clean([&] { (void)f.to_i32(t); });
            }
        }
        (void)total;
    });
    stitch::fuzz::expect_clean([&] { (void)stitch::file_fingerprint(path); });
    return 0;
}

// ggml block formats (as llama.cpp's ggml-common.h lays them out) decoded to float32.
// Each function turns n elements — a multiple of ggml_block_size(t) — stored in
// n / ggml_block_size(t) * ggml_type_size(t) bytes at src into n floats at dst.
// The float arithmetic follows ggml's reference dequantizers term by term (scale products
// first, then times the quant, minus the min), so results equal gguf-py's bit for bit.
#pragma once
#include <cstdint>

#include "engine/gguf.h"

namespace stitch::cpu {

// Serial. Throws stitch::Error for types without a decoder (ggml_type_dequantizable false).
void dequantize_row(GGMLType t, const void* src, float* dst, int64_t n);

// Same result; large inputs are split over OpenMP threads in runs of whole blocks.
void dequantize(GGMLType t, const void* src, float* dst, int64_t n);

}  // namespace stitch::cpu

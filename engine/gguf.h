// GGUF files (v2/v3): header, metadata key/values, tensor directory — memory-mapped, every
// count, length and offset checked against the file size before use. Tensor data is
// dequantized to float32 on request (kernels/cpu/dequant.h).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "engine/mapped_file.h"

namespace stitch {

// ggml tensor types, numbered as in the GGUF spec.
// The file reader knows the block layout (and so the byte size) of every type listed; the
// dequantizer converts all but the IQ grid types, TQ*, MXFP4, NVFP4, Q1_0 and Q8_1
// (ggml_type_dequantizable).
enum class GGMLType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41,
};
const char* ggml_type_name(GGMLType t);  // "Q4_K", …; "type 99" style text for unknown numbers
// Elements per block and bytes per block (ggml's blck_size / type_size); 0 for unknown numbers.
int64_t ggml_block_size(GGMLType t);
int64_t ggml_type_size(GGMLType t);
bool ggml_type_known(uint32_t t);
bool ggml_type_dequantizable(GGMLType t);  // kernels/cpu/dequant.cpp converts it to float32

// One metadata value. Arrays hold one element type (GGUF forbids mixed arrays).
struct GGUFValue {
    using Array = std::vector<GGUFValue>;
    // uint8/16/32/64 → uint64_t, int8/16/32/64 → int64_t, float32/64 → double.
    std::variant<uint64_t, int64_t, double, bool, std::string, Array> v;
    // Typed access is through GGUFFile's getters, which name the file and key when the type
    // does not fit. Integer accessors accept any integer type whose value fits.
};

struct GGUFTensorInfo {
    std::string name;
    GGMLType type;
    std::vector<int64_t> shape;  // ggml order: shape[0] is the fastest-varying (row length)
    uint64_t offset = 0;         // from the start of the data section
    uint64_t nbytes = 0;
    int64_t numel() const;
};

class GGUFFile {
public:
    explicit GGUFFile(const std::filesystem::path& path);  // throws stitch::Error
    const std::string& path() const;
    uint32_t version() const;
    uint64_t alignment() const;    // general.alignment, default 32
    uint64_t data_offset() const;  // file offset of the tensor data section

    bool has(std::string_view key) const;
    // Throw stitch::Error "<file>: missing metadata key 'qwen2.block_count'" / wrong type.
    std::string get_string(std::string_view key) const;
    int64_t get_int(std::string_view key) const;
    double get_float(std::string_view key) const;  // any numeric type
    bool get_bool(std::string_view key) const;
    std::optional<int64_t> find_int(std::string_view key) const;
    std::optional<double> find_float(std::string_view key) const;
    std::optional<std::string> find_string(std::string_view key) const;
    // Arrays (tokenizer.ggml.tokens, .scores, .token_type, .merges; direction vectors …)
    std::vector<std::string> get_string_array(std::string_view key) const;
    std::vector<double> get_float_array(std::string_view key) const;
    std::vector<int64_t> get_int_array(std::string_view key) const;
    const std::map<std::string, GGUFValue, std::less<>>& metadata() const;

    const std::vector<GGUFTensorInfo>& tensors() const;
    const GGUFTensorInfo* find_tensor(std::string_view name) const;
    std::span<const uint8_t> tensor_data(const GGUFTensorInfo& t) const;
    // Dequantized / converted to float32 (row-major in ggml order: shape[0] fastest).
    std::vector<float> tensor_f32(const GGUFTensorInfo& t) const;
    // "Q4_K x120, F32 x60, Q6_K x1" summary for `inspect`.
    std::string type_summary() const;

private:
    struct Impl;
    std::shared_ptr<const Impl> impl_;
};

// Writing: a GGUF v3 file of metadata values and F32 tensors, through PATH.tmp renamed at the
// end (no partial file under PATH). Integers are written as INT32/UINT32 when they fit, floats
// as FLOAT32. Tensor shapes are in ggml order (shape[0] fastest).
struct GGUFWriteTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::span<const float> data;
};
void write_gguf(const std::filesystem::path& path, const std::vector<std::pair<std::string, GGUFValue>>& metadata,
                const std::vector<GGUFWriteTensor>& tensors);

}  // namespace stitch

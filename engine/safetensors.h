// safetensors: reader (memory-mapped, every length/offset/shape/dtype checked before use),
// sharded folders (model.safetensors.index.json), and a crash-safe writer.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/mapped_file.h"

namespace stitch {

struct TensorInfo {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t offset = 0;  // into the data section
    size_t nbytes = 0;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
    std::string shape_str() const;
};

class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::filesystem::path& path);  // throws stitch::Error

    const std::string& path() const { return file_.path(); }
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find(std::string_view name) const;
    const TensorInfo& get(std::string_view name) const;  // throws when absent
    std::span<const uint8_t> data(const TensorInfo& t) const {
        return file_.bytes().subspan(data_start_ + t.offset, t.nbytes);
    }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    // Any float dtype converted to float32 (throws for integer tensors).
    std::vector<float> to_f32(const TensorInfo& t) const;
    // I32/I64 tensors as int32 (throws for others or out-of-range values).
    std::vector<int32_t> to_i32(const TensorInfo& t) const;

private:
    MappedFile file_;
    size_t data_start_ = 0;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t, std::less<>> index_;
    std::map<std::string, std::string> metadata_;
};

// The weights of an HF model folder: model.safetensors, or shards named by
// model.safetensors.index.json. Names map to (file, tensor).
class WeightFiles {
public:
    explicit WeightFiles(const std::filesystem::path& model_dir);
    struct Entry {
        const SafetensorsFile* file;
        const TensorInfo* info;
    };
    const Entry* find(std::string_view name) const;
    std::vector<std::string> names() const;
    // Human-readable "F32 ×120, BF16 ×3" summary of stored dtypes.
    std::string dtype_summary() const;
    const std::string& origin() const { return origin_; }  // file that listed the tensors

private:
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::map<std::string, Entry, std::less<>> entries_;
    std::string origin_;
};

// A tensor to write: bytes must match dtype × shape.
struct TensorOut {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const uint8_t> bytes;
};

// Writes PATH.tmp then renames to PATH, so no partial file is ever left under PATH.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

template <typename T>
std::span<const uint8_t> as_bytes_span(const std::vector<T>& v) {
    return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

}  // namespace stitch

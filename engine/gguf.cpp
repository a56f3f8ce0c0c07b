// GGUF reader. Layout (little-endian, v2 and v3 are identical; v3 only added big-endian files):
//   "GGUF" u32 version, u64 tensor_count, u64 kv_count,
//   kv_count × (string key, u32 value_type, value),
//   tensor_count × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset),
//   padding to general.alignment (default 32), then the tensor data; each tensor's offset is
//   relative to the data section and a multiple of the alignment.
// A string is u64 length + bytes; an array is u32 element type, u64 count, elements.
// Every count and length is checked against what is left of the file before anything is
// allocated, so a corrupt file gives one stitch::Error and never a bad_alloc or a crash.
#include "engine/gguf.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/error.h"
#include "engine/interrupt.h"
#include "kernels/cpu/dequant.h"

namespace stitch {

namespace {

struct TypeTraits {
    const char* name = nullptr;
    int64_t block = 0;  // elements per block
    int64_t bytes = 0;  // bytes per block
};

// ggml's type table (ggml.c type_traits / gguf-py GGML_QUANT_SIZES).
TypeTraits traits(uint32_t t) {
    switch (t) {
        case 0: return {"F32", 1, 4};
        case 1: return {"F16", 1, 2};
        case 2: return {"Q4_0", 32, 18};
        case 3: return {"Q4_1", 32, 20};
        case 6: return {"Q5_0", 32, 22};
        case 7: return {"Q5_1", 32, 24};
        case 8: return {"Q8_0", 32, 34};
        case 9: return {"Q8_1", 32, 36};  // two f16 (d, s) + 32 int8, as ggml's block_q8_1
        case 10: return {"Q2_K", 256, 84};
        case 11: return {"Q3_K", 256, 110};
        case 12: return {"Q4_K", 256, 144};
        case 13: return {"Q5_K", 256, 176};
        case 14: return {"Q6_K", 256, 210};
        case 15: return {"Q8_K", 256, 292};
        case 16: return {"IQ2_XXS", 256, 66};
        case 17: return {"IQ2_XS", 256, 74};
        case 18: return {"IQ3_XXS", 256, 98};
        case 19: return {"IQ1_S", 256, 50};
        case 20: return {"IQ4_NL", 32, 18};
        case 21: return {"IQ3_S", 256, 110};
        case 22: return {"IQ2_S", 256, 82};
        case 23: return {"IQ4_XS", 256, 136};
        case 24: return {"I8", 1, 1};
        case 25: return {"I16", 1, 2};
        case 26: return {"I32", 1, 4};
        case 27: return {"I64", 1, 8};
        case 28: return {"F64", 1, 8};
        case 29: return {"IQ1_M", 256, 56};
        case 30: return {"BF16", 1, 2};
        case 34: return {"TQ1_0", 256, 54};
        case 35: return {"TQ2_0", 256, 66};
        case 39: return {"MXFP4", 32, 17};
        case 40: return {"NVFP4", 64, 36};
        case 41: return {"Q1_0", 128, 18};
        default: return {};
    }
}

// Refused up front, whatever the file size: no real file comes near these.
constexpr uint64_t kMaxKeys = 1u << 20;
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxString = 1ull << 30;
constexpr uint64_t kMaxArray = 1ull << 32;
constexpr int kMaxArrayDepth = 8;
// Array elements in all metadata values together. Each decoded element takes ~40 bytes however
// few it took in the file (a uint8 takes 1), so this bounds what metadata can make stitch
// allocate (~1.3 GB); the largest real vocabularies (262k tokens, with scores, types and
// merges) hold about a million.
constexpr uint64_t kMaxMetadataElements = 1ull << 25;
constexpr uint64_t kDefaultAlignment = 32;

enum ValueType : uint32_t {
    kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
    kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

const char* value_type_name(uint32_t t) {
    static const char* names[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32", "float32",
                                  "bool",  "string", "array",  "uint64", "int64", "float64"};
    return t < 13 ? names[t] : "unknown";
}

// Smallest encoding of one value of type t (for checking counts against the bytes left).
uint64_t min_value_bytes(uint32_t t) {
    switch (t) {
        case kU8: case kI8: case kBool: return 1;
        case kU16: case kI16: return 2;
        case kU32: case kI32: case kF32: return 4;
        case kU64: case kI64: case kF64: case kString: return 8;
        case kArray: return 12;
        default: return 1;
    }
}

struct Reader {
    const uint8_t* data;
    uint64_t size;
    const std::string& path;
    uint64_t pos = 0;
    uint64_t elements = 0;  // array elements decoded so far (kMaxMetadataElements)

    uint64_t left() const { return size - pos; }

    void need(uint64_t n, const std::string& what) const {
        if (n > left())
            fail(path, "{} at offset {} needs {} bytes but the file ends after {} more (file size {})", what, pos, n,
                 left(), size);
    }
    template <typename T>
    T get(const std::string& what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string str(const std::string& what) {
        const uint64_t at = pos;
        const uint64_t n = get<uint64_t>(what + " (string length)");
        if (n > kMaxString) fail(path, "{} at offset {}: string length {} is over the 1 GiB limit", what, at, n);
        if (n > left())
            fail(path, "{} at offset {}: string length {} runs past the end of the file ({} bytes left)", what, at, n,
                 left());
        std::string s(reinterpret_cast<const char*>(data + pos), size_t(n));
        pos += n;
        return s;
    }
};

GGUFValue read_value(Reader& r, uint32_t type, const std::string& what, int depth) {
    GGUFValue v;
    switch (type) {
        case kU8: v.v = uint64_t(r.get<uint8_t>(what)); break;
        case kI8: v.v = int64_t(r.get<int8_t>(what)); break;
        case kU16: v.v = uint64_t(r.get<uint16_t>(what)); break;
        case kI16: v.v = int64_t(r.get<int16_t>(what)); break;
        case kU32: v.v = uint64_t(r.get<uint32_t>(what)); break;
        case kI32: v.v = int64_t(r.get<int32_t>(what)); break;
        case kU64: v.v = r.get<uint64_t>(what); break;
        case kI64: v.v = r.get<int64_t>(what); break;
        case kF32: v.v = double(r.get<float>(what)); break;
        case kF64: v.v = r.get<double>(what); break;
        case kBool: v.v = r.get<uint8_t>(what) != 0; break;
        case kString: v.v = r.str(what); break;
        case kArray: {
            if (depth >= kMaxArrayDepth) fail(r.path, "{}: arrays nested more than {} deep", what, kMaxArrayDepth);
            const uint64_t at = r.pos;
            const uint32_t et = r.get<uint32_t>(what + " (array element type)");
            if (et > kF64) fail(r.path, "{} at offset {}: unknown array element type {}", what, at, et);
            const uint64_t n = r.get<uint64_t>(what + " (array length)");
            if (n > kMaxArray) fail(r.path, "{} at offset {}: array length {} is over the 2^32 limit", what, at, n);
            if (n * min_value_bytes(et) > r.left())
                fail(r.path, "{} at offset {}: array of {} {} values runs past the end of the file ({} bytes left)",
                     what, at, n, value_type_name(et), r.left());
            r.elements += n;
            if (r.elements > kMaxMetadataElements)
                fail(r.path, "{} at offset {}: metadata arrays hold more than {} values in all (limit)", what, at,
                     kMaxMetadataElements);
            GGUFValue::Array a;
            a.reserve(size_t(n));
            for (uint64_t i = 0; i < n; ++i) a.push_back(read_value(r, et, what, depth + 1));
            v.v = std::move(a);
            break;
        }
        default: fail(r.path, "{} at offset {}: unknown value type {}", what, r.pos - 4, type);
    }
    return v;
}

const char* kind_of(const GGUFValue& v) {
    switch (v.v.index()) {
        case 0: return "an unsigned integer";
        case 1: return "an integer";
        case 2: return "a float";
        case 3: return "a bool";
        case 4: return "a string";
        default: return "an array";
    }
}

}  // namespace

const char* ggml_type_name(GGMLType t) {
    if (const char* n = traits(uint32_t(t)).name) return n;
    thread_local char buf[32];
    std::snprintf(buf, sizeof buf, "type %u", unsigned(t));
    return buf;
}
int64_t ggml_block_size(GGMLType t) { return traits(uint32_t(t)).block; }
int64_t ggml_type_size(GGMLType t) { return traits(uint32_t(t)).bytes; }
bool ggml_type_known(uint32_t t) { return traits(t).name != nullptr; }

int64_t GGUFTensorInfo::numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

struct GGUFFile::Impl {
    MappedFile file;
    uint32_t version = 0;
    uint64_t alignment = kDefaultAlignment;
    uint64_t data_start = 0;
    std::map<std::string, GGUFValue, std::less<>> metadata;
    std::vector<GGUFTensorInfo> tensors;
    std::map<std::string, size_t, std::less<>> index;

    const GGUFValue& get(std::string_view key) const {
        auto it = metadata.find(key);
        if (it == metadata.end()) fail(file.path(), "missing metadata key '{}'", key);
        return it->second;
    }
    int64_t as_int(const GGUFValue& v, std::string_view key) const {
        if (auto* u = std::get_if<uint64_t>(&v.v)) {
            if (*u > uint64_t(std::numeric_limits<int64_t>::max()))
                fail(file.path(), "metadata key '{}' = {} is too large", key, *u);
            return int64_t(*u);
        }
        if (auto* i = std::get_if<int64_t>(&v.v)) return *i;
        fail(file.path(), "metadata key '{}' is {}, not an integer", key, kind_of(v));
    }
    double as_float(const GGUFValue& v, std::string_view key) const {
        if (auto* u = std::get_if<uint64_t>(&v.v)) return double(*u);
        if (auto* i = std::get_if<int64_t>(&v.v)) return double(*i);
        if (auto* d = std::get_if<double>(&v.v)) return *d;
        fail(file.path(), "metadata key '{}' is {}, not a number", key, kind_of(v));
    }
    const GGUFValue::Array& as_array(std::string_view key) const {
        const GGUFValue& v = get(key);
        if (auto* a = std::get_if<GGUFValue::Array>(&v.v)) return *a;
        fail(file.path(), "metadata key '{}' is {}, not an array", key, kind_of(v));
    }
};

GGUFFile::GGUFFile(const std::filesystem::path& path) {
    auto impl = std::make_shared<Impl>();
    impl->file = MappedFile(path);
    const std::string& p = impl->file.path();
    const auto bytes = impl->file.bytes();
    Reader r{bytes.data(), bytes.size(), p};

    if (bytes.size() < 24) fail(p, "too small for a GGUF header ({} bytes, the header alone is 24)", bytes.size());
    if (std::memcmp(bytes.data(), "GGUF", 4) != 0)
        fail(p, "not a GGUF file (starts with bytes {:02x} {:02x} {:02x} {:02x}, expected 'GGUF')", bytes[0], bytes[1],
             bytes[2], bytes[3]);
    r.pos = 4;
    impl->version = r.get<uint32_t>("version");
    const uint32_t ver = impl->version;
    if (ver == 0x02000000u || ver == 0x03000000u) fail(p, "big-endian GGUF files are not supported");
    if (ver == 1) fail(p, "GGUF version 1 is not supported (versions 2 and 3 are)");
    if (ver != 2 && ver != 3) fail(p, "unsupported GGUF version {} (versions 2 and 3 are supported)", ver);
    const uint64_t n_tensors = r.get<uint64_t>("tensor count");
    const uint64_t n_kv = r.get<uint64_t>("metadata key count");
    if (n_kv > kMaxKeys) fail(p, "metadata key count {} is over the limit of {}", n_kv, kMaxKeys);
    if (n_tensors > kMaxTensors) fail(p, "tensor count {} is over the limit of {}", n_tensors, kMaxTensors);
    // Smallest encodings: a key/value is 8 (key length) + 4 (type) + 1 byte; a tensor info is
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    if (n_kv * 13 > r.left())
        fail(p, "metadata key count {} cannot fit in the {} bytes after the header", n_kv, r.left());
    if (n_kv * 13 + n_tensors * 24 > r.left())
        fail(p, "tensor count {} cannot fit in the {} bytes after the header", n_tensors, r.left());

    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = r.str(fmt::format("metadata key #{}", i));
        const std::string what = fmt::format("metadata key '{}'", key);
        const uint32_t type = r.get<uint32_t>(what + " (value type)");
        if (type > kF64) fail(p, "{}: unknown value type {}", what, type);
        GGUFValue v = read_value(r, type, what, 0);
        if (impl->metadata.count(key)) fail(p, "metadata key '{}' appears twice", key);
        impl->metadata.emplace(std::move(key), std::move(v));
    }

    if (auto it = impl->metadata.find("general.alignment"); it != impl->metadata.end()) {
        const auto* u = std::get_if<uint64_t>(&it->second.v);
        if (!u) fail(p, "metadata key 'general.alignment' is {}, not an unsigned integer", kind_of(it->second));
        if (*u == 0 || (*u & (*u - 1)) != 0 || *u > (1u << 30))
            fail(p, "general.alignment = {} is not a power of two up to 2^30", *u);
        impl->alignment = *u;
    }

    const uint64_t file_size = bytes.size();
    impl->tensors.reserve(size_t(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GGUFTensorInfo t;
        t.name = r.str(fmt::format("tensor #{} name", i));
        const std::string what = fmt::format("tensor '{}'", t.name);
        const uint32_t n_dims = r.get<uint32_t>(what + " (dimension count)");
        if (n_dims > 4) fail(p, "{}: {} dimensions (GGUF allows at most 4)", what, n_dims);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t dim = r.get<uint64_t>(what + " (dimension)");
            if (dim > uint64_t(std::numeric_limits<int64_t>::max()))
                fail(p, "{}: dimension {} = {} is negative or too large", what, d, dim);
            if (dim != 0 && numel > uint64_t(std::numeric_limits<int64_t>::max()) / dim)
                fail(p, "{}: element count overflows", what);
            numel *= dim;
            t.shape.push_back(int64_t(dim));
        }
        const uint32_t type = r.get<uint32_t>(what + " (type)");
        const TypeTraits tt = traits(type);
        if (!tt.name) fail(p, "{}: unknown ggml tensor type {}", what, type);
        t.type = GGMLType(type);
        t.offset = r.get<uint64_t>(what + " (data offset)");
        const int64_t row = t.shape.empty() ? 1 : t.shape[0];
        if (row % tt.block != 0)
            fail(p, "{}: row length {} is not a multiple of the {} block size {}", what, row, tt.name, tt.block);
        const uint64_t blocks = numel / uint64_t(tt.block);
        if (blocks > file_size / uint64_t(tt.bytes))
            fail(p, "{}: {} [{}] needs more bytes than the whole file holds ({})", what, tt.name,
                 fmt::join(t.shape, ", "), file_size);
        t.nbytes = blocks * uint64_t(tt.bytes);
        if (impl->index.count(t.name)) fail(p, "tensor name '{}' appears twice", t.name);
        impl->index.emplace(t.name, impl->tensors.size());
        impl->tensors.push_back(std::move(t));
    }

    const uint64_t a = impl->alignment;
    impl->data_start = (r.pos + a - 1) / a * a;
    const uint64_t data_size = impl->data_start <= file_size ? file_size - impl->data_start : 0;
    if (!impl->tensors.empty() && impl->data_start > file_size)
        fail(p, "tensor data section would start at offset {}, past the end of the file ({} bytes)", impl->data_start,
             file_size);
    // No tensors and no padding after the metadata: the (empty) data section is the file's end,
    // so data_offset() never points past the file (file_fingerprint hashes bytes up to it).
    impl->data_start = std::min(impl->data_start, file_size);
    for (const auto& t : impl->tensors) {
        if (t.offset % a != 0)
            fail(p, "tensor '{}': data offset {} is not a multiple of the alignment {}", t.name, t.offset, a);
        if (t.offset > data_size || t.nbytes > data_size - t.offset)
            fail(p, "tensor '{}': data [{}, {}) runs past the end of the file (the data section holds {} bytes)",
                 t.name, t.offset, t.offset + t.nbytes, data_size);
    }
    std::vector<const GGUFTensorInfo*> order;
    for (const auto& t : impl->tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* x, auto* y) { return x->offset < y->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
        const auto* prev = order[i - 1];
        if (order[i]->offset < prev->offset + prev->nbytes)
            fail(p, "tensor '{}': data at offset {} overlaps tensor '{}' ([{}, {}))", order[i]->name, order[i]->offset,
                 prev->name, prev->offset, prev->offset + prev->nbytes);
    }
    impl_ = std::move(impl);
}

const std::string& GGUFFile::path() const { return impl_->file.path(); }
uint32_t GGUFFile::version() const { return impl_->version; }
uint64_t GGUFFile::alignment() const { return impl_->alignment; }
uint64_t GGUFFile::data_offset() const { return impl_->data_start; }

bool GGUFFile::has(std::string_view key) const { return impl_->metadata.find(key) != impl_->metadata.end(); }

std::string GGUFFile::get_string(std::string_view key) const {
    const GGUFValue& v = impl_->get(key);
    if (auto* s = std::get_if<std::string>(&v.v)) return *s;
    fail(path(), "metadata key '{}' is {}, not a string", key, kind_of(v));
}
int64_t GGUFFile::get_int(std::string_view key) const { return impl_->as_int(impl_->get(key), key); }
double GGUFFile::get_float(std::string_view key) const { return impl_->as_float(impl_->get(key), key); }
bool GGUFFile::get_bool(std::string_view key) const {
    const GGUFValue& v = impl_->get(key);
    if (auto* b = std::get_if<bool>(&v.v)) return *b;
    fail(path(), "metadata key '{}' is {}, not a bool", key, kind_of(v));
}
std::optional<int64_t> GGUFFile::find_int(std::string_view key) const {
    if (!has(key)) return std::nullopt;
    return get_int(key);
}
std::optional<double> GGUFFile::find_float(std::string_view key) const {
    if (!has(key)) return std::nullopt;
    return get_float(key);
}
std::optional<std::string> GGUFFile::find_string(std::string_view key) const {
    if (!has(key)) return std::nullopt;
    return get_string(key);
}

std::vector<std::string> GGUFFile::get_string_array(std::string_view key) const {
    const auto& a = impl_->as_array(key);
    std::vector<std::string> out;
    out.reserve(a.size());
    for (const auto& e : a) {
        auto* s = std::get_if<std::string>(&e.v);
        if (!s) fail(path(), "metadata key '{}' holds {}, not strings", key, kind_of(e));
        out.push_back(*s);
    }
    return out;
}
std::vector<double> GGUFFile::get_float_array(std::string_view key) const {
    const auto& a = impl_->as_array(key);
    std::vector<double> out;
    out.reserve(a.size());
    for (const auto& e : a) out.push_back(impl_->as_float(e, key));
    return out;
}
std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
    const auto& a = impl_->as_array(key);
    std::vector<int64_t> out;
    out.reserve(a.size());
    for (const auto& e : a) out.push_back(impl_->as_int(e, key));
    return out;
}
const std::map<std::string, GGUFValue, std::less<>>& GGUFFile::metadata() const { return impl_->metadata; }

const std::vector<GGUFTensorInfo>& GGUFFile::tensors() const { return impl_->tensors; }
const GGUFTensorInfo* GGUFFile::find_tensor(std::string_view name) const {
    auto it = impl_->index.find(name);
    return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

std::span<const uint8_t> GGUFFile::tensor_data(const GGUFTensorInfo& t) const {
    const uint64_t size = impl_->file.size();
    const uint64_t start = impl_->data_start;
    // Infos from this file were checked at open; this guards against one from another file.
    if (start > size || t.offset > size - start || t.nbytes > size - start - t.offset)
        fail(path(), "tensor '{}' lies outside this file's data", t.name);
    return impl_->file.bytes().subspan(size_t(start + t.offset), size_t(t.nbytes));
}

std::vector<float> GGUFFile::tensor_f32(const GGUFTensorInfo& t) const {
    if (!ggml_type_dequantizable(t.type))
        fail(path(), "tensor '{}': type {} cannot be converted to float32 (not supported yet)", t.name,
             ggml_type_name(t.type));
    auto data = tensor_data(t);
    const int64_t n = t.numel();
    if (uint64_t(n / ggml_block_size(t.type) * ggml_type_size(t.type)) != data.size())
        fail(path(), "tensor '{}': {} bytes do not hold {} {} elements", t.name, data.size(), n,
             ggml_type_name(t.type));
    std::vector<float> out(static_cast<size_t>(n));
    cpu::dequantize(t.type, data.data(), out.data(), n);
    return out;
}

std::string GGUFFile::type_summary() const {
    std::map<std::string, int> counts;
    for (const auto& t : impl_->tensors) counts[ggml_type_name(t.type)]++;
    std::vector<std::pair<std::string, int>> v(counts.begin(), counts.end());
    std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string s;
    for (const auto& [k, n] : v) s += (s.empty() ? "" : ", ") + k + " x" + std::to_string(n);
    return s;
}

namespace {

struct GGUFOut {
    std::string bytes;
    void u32(uint32_t v) { bytes.append(reinterpret_cast<const char*>(&v), 4); }
    void u64(uint64_t v) { bytes.append(reinterpret_cast<const char*>(&v), 8); }
    void str(const std::string& s) {
        u64(s.size());
        bytes += s;
    }
    // GGUF value types: 4 UINT32, 5 INT32, 6 FLOAT32, 7 BOOL, 8 STRING, 9 ARRAY, 10 UINT64, 11 INT64
    static uint32_t type_of(const GGUFValue& v) {
        if (auto* u = std::get_if<uint64_t>(&v.v)) return *u <= 0xffffffffull ? 4 : 10;
        if (auto* i = std::get_if<int64_t>(&v.v))
            return *i >= std::numeric_limits<int32_t>::min() && *i <= std::numeric_limits<int32_t>::max() ? 5 : 11;
        if (std::holds_alternative<double>(v.v)) return 6;
        if (std::holds_alternative<bool>(v.v)) return 7;
        if (std::holds_alternative<std::string>(v.v)) return 8;
        return 9;
    }
    void value(const GGUFValue& v, uint32_t type) {
        switch (type) {
            case 4: u32(uint32_t(std::get<uint64_t>(v.v))); break;
            case 10: u64(std::get<uint64_t>(v.v)); break;
            case 5: u32(uint32_t(int32_t(std::get<int64_t>(v.v)))); break;
            case 11: u64(uint64_t(std::get<int64_t>(v.v))); break;
            case 6: {
                float f = float(std::get<double>(v.v));
                bytes.append(reinterpret_cast<const char*>(&f), 4);
                break;
            }
            case 7: bytes += char(std::get<bool>(v.v) ? 1 : 0); break;
            case 8: str(std::get<std::string>(v.v)); break;
            case 9: {
                const auto& arr = std::get<GGUFValue::Array>(v.v);
                // one element type for the whole array: the widest its elements need
                uint32_t et = arr.empty() ? 5 : type_of(arr[0]);
                for (const auto& e : arr) et = std::max(et, type_of(e));
                u32(et);
                u64(arr.size());
                for (const auto& e : arr) value(e, et);
                break;
            }
        }
    }
};

}  // namespace

void write_gguf(const std::filesystem::path& path, const std::vector<std::pair<std::string, GGUFValue>>& metadata,
                const std::vector<GGUFWriteTensor>& tensors) {
    constexpr uint64_t kAlign = 32;
    GGUFOut o;
    o.bytes = "GGUF";
    o.u32(3);
    o.u64(tensors.size());
    o.u64(metadata.size());
    for (const auto& [key, v] : metadata) {
        o.str(key);
        const uint32_t t = GGUFOut::type_of(v);
        o.u32(t);
        o.value(v, t);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors) {
        int64_t n = 1;
        for (auto d : t.shape) n *= d;
        if (n != int64_t(t.data.size())) fail(path.string(), "internal: tensor {} has {} values for its shape", t.name, t.data.size());
        o.str(t.name);
        o.u32(uint32_t(t.shape.size()));
        for (auto d : t.shape) o.u64(uint64_t(d));
        o.u32(uint32_t(GGMLType::F32));
        o.u64(offset);
        offset += (uint64_t(n) * 4 + kAlign - 1) / kAlign * kAlign;
    }
    while (o.bytes.size() % kAlign) o.bytes += char(0);
    for (const auto& t : tensors) {
        o.bytes.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * 4);
        while (o.bytes.size() % kAlign) o.bytes += char(0);
    }
    const std::string tmp = path.string() + ".tmp";
    interrupt::TempFile guard(tmp);  // removed if the run is interrupted before the rename
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) fail(path.string(), "cannot open for writing");
    bool ok = std::fwrite(o.bytes.data(), 1, o.bytes.size(), f) == o.bytes.size();
    ok = std::fclose(f) == 0 && ok;
    if (!ok) {
        std::filesystem::remove(tmp);
        fail(path.string(), "write failed (disk full?)");
    }
    std::filesystem::rename(tmp, path);
}

}  // namespace stitch

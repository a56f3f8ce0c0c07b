#include "engine/safetensors.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/interrupt.h"

namespace stitch {

using json = nlohmann::json;

std::string TensorInfo::shape_str() const {
    return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool convert_to_f32(DType t, const void* src, float* dst, size_t n) {
    switch (t) {
        case DType::F32:
            if (n) std::memcpy(dst, src, n * 4);  // an empty tensor's buffers may be null
            return true;
        case DType::F16: {
            auto* s = static_cast<const uint8_t*>(src);
            for (size_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, s + 2 * i, 2);
                dst[i] = f16_to_f32(h);
            }
            return true;
        }
        case DType::BF16: {
            auto* s = static_cast<const uint8_t*>(src);
            for (size_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, s + 2 * i, 2);
                dst[i] = bf16_to_f32(h);
            }
            return true;
        }
        case DType::F64: {
            auto* s = static_cast<const uint8_t*>(src);
            for (size_t i = 0; i < n; ++i) {
                double d;
                std::memcpy(&d, s + 8 * i, 8);
                dst[i] = float(d);
            }
            return true;
        }
        default: return false;
    }
}

// Header sizes beyond this are refused before parsing: real headers are a few MB at most
// (the reference implementation's limit is the same 100 MB).
static constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A header is {"name": {"dtype": .., "shape": [..], "data_offsets": [a, b]}, "__metadata__": {..}}:
// values nest at most 3 deep (the top object is depth 0) and the arrays there hold at most 8
// dimensions or 2 offsets. Anything deeper or longer is refused while parsing, so a crafted
// header cannot make the JSON tree far bigger than the file.
static constexpr int kMaxHeaderDepth = 3;
static constexpr size_t kMaxInnerValues = 64;
// Index files (model.safetensors.index.json) are about 100 bytes per tensor.
static constexpr uint64_t kMaxIndexBytes = 100'000'000;

namespace {

// A name from a file, for a one-line message: control bytes (NUL, newline, ...) as \xNN.
std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
        else out += char(c);
    }
    return out;
}

// Parses a safetensors header, refusing deep nesting and long inner arrays as it goes.
json parse_header(const std::string& p, const uint8_t* begin, const uint8_t* end) {
    size_t inner = 0;  // values in the current depth-3 container
    auto guard = [&](int depth, json::parse_event_t ev, json&) {
        if (depth > kMaxHeaderDepth) fail(p, "header nests JSON deeper than a safetensors header does");
        if (depth == kMaxHeaderDepth - 1 && (ev == json::parse_event_t::array_start || ev == json::parse_event_t::object_start))
            inner = 0;
        if (depth == kMaxHeaderDepth && (ev == json::parse_event_t::value || ev == json::parse_event_t::key) &&
            ++inner > kMaxInnerValues)
            fail(p, "header has an array or object of more than {} values inside a tensor entry", kMaxInnerValues);
        return true;
    };
    try {
        return json::parse(begin, end, guard);
    } catch (const json::exception& e) {
        fail(p, "header is not valid JSON ({})", e.what());
    }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : file_(path) {
    const std::string& p = file_.path();
    auto bytes = file_.bytes();
    if (bytes.size() < 8) fail(p, "truncated safetensors file ({} bytes, header length needs 8)", bytes.size());
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = header_len << 8 | bytes[size_t(i)];
    if (header_len > bytes.size() - 8)
        fail(p, "header length {} runs past the end of the file ({} bytes)", header_len, bytes.size());
    if (header_len > kMaxHeaderBytes) fail(p, "header length {} is implausibly large", header_len);
    if (header_len < 2) fail(p, "header length {} is too small for a JSON object", header_len);
    data_start_ = 8 + size_t(header_len);
    const size_t data_size = bytes.size() - data_start_;

    json header = parse_header(p, bytes.data() + 8, bytes.data() + 8 + header_len);
    if (!header.is_object()) fail(p, "header is not a JSON object");

    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const json& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail(p, "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string()) fail(p, "__metadata__ value for '{}' is not a string", m.key());
                metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        if (!v.is_object()) fail(p, "tensor '{}': entry is not an object", name);
        TensorInfo t;
        t.name = name;
        auto dt = v.find("dtype");
        if (dt == v.end() || !dt->is_string()) fail(p, "tensor '{}': missing dtype", name);
        auto dtype = dtype_from_name(dt->get<std::string>());
        if (!dtype) fail(p, "tensor '{}': unknown dtype '{}'", name, dt->get<std::string>());
        t.dtype = *dtype;
        auto sh = v.find("shape");
        if (sh == v.end() || !sh->is_array()) fail(p, "tensor '{}': missing shape", name);
        if (sh->size() > 8) fail(p, "tensor '{}': {} dimensions is too many", name, sh->size());
        uint64_t numel = 1;
        for (const auto& d : *sh) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0) fail(p, "tensor '{}': bad shape entry", name);
            uint64_t dim = d.get<uint64_t>();
            if (dim != 0 && numel > (uint64_t(1) << 62) / dim) fail(p, "tensor '{}': shape overflows", name);
            numel *= dim;
            t.shape.push_back(int64_t(dim));
        }
        auto off = v.find("data_offsets");
        if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
            !(*off)[1].is_number_unsigned())
            fail(p, "tensor '{}': data_offsets must be two non-negative integers", name);
        uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
        if (begin > end) fail(p, "tensor '{}': data_offsets [{}, {}] are reversed", name, begin, end);
        if (end > data_size)
            fail(p, "tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes)", name, begin, end,
                 data_size);
        // numel <= 2^62, but times a 4- or 8-byte dtype it can still wrap (to 0 for [2^61] F64,
        // which then matched data_offsets [0, 0]).
        uint64_t expect = 0;
        if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &expect))
            fail(p, "tensor '{}': {} {} has {} elements, whose byte count overflows 64 bits", name, dtype_name(t.dtype),
                 t.shape_str(), numel);
        if (end - begin != expect)
            fail(p, "tensor '{}': {} {} needs {} bytes but data_offsets give {}", name, dtype_name(t.dtype),
                 t.shape_str(), expect, end - begin);
        t.offset = size_t(begin);
        t.nbytes = size_t(end - begin);
        tensors_.push_back(std::move(t));
    }
    // Offsets must tile the data section: no overlap (two tensors sharing bytes) and no holes.
    std::vector<const TensorInfo*> order;
    for (auto& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    size_t cursor = 0;
    for (auto* t : order) {
        if (t->offset < cursor) fail(p, "tensor '{}': data overlaps the previous tensor", t->name);
        if (t->offset > cursor) fail(p, "tensor '{}': {} unused bytes before its data", t->name, t->offset - cursor);
        cursor = t->offset + t->nbytes;
    }
    if (cursor != data_size) fail(p, "{} bytes after the last tensor's data", data_size - cursor);
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::get(std::string_view name) const {
    auto* t = find(name);
    if (!t) fail(path(), "no tensor named '{}'", name);
    return *t;
}

std::vector<float> SafetensorsFile::to_f32(const TensorInfo& t) const {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    if (!convert_to_f32(t.dtype, data(t).data(), out.data(), out.size()))
        fail(path(), "tensor '{}': dtype {} is not a float type", t.name, dtype_name(t.dtype));
    return out;
}

std::vector<int32_t> SafetensorsFile::to_i32(const TensorInfo& t) const {
    std::vector<int32_t> out(static_cast<size_t>(t.numel()));
    auto d = data(t);
    if (t.dtype == DType::I32) {
        if (!d.empty()) std::memcpy(out.data(), d.data(), d.size());  // an empty tensor's buffers may be null
    } else if (t.dtype == DType::I64) {
        for (size_t i = 0; i < out.size(); ++i) {
            int64_t v;
            std::memcpy(&v, d.data() + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX) fail(path(), "tensor '{}': value {} does not fit int32", t.name, v);
            out[i] = int32_t(v);
        }
    } else {
        fail(path(), "tensor '{}': dtype {} is not an integer type", t.name, dtype_name(t.dtype));
    }
    return out;
}

WeightFiles::WeightFiles(const std::filesystem::path& dir) {
    auto single = dir / "model.safetensors";
    auto index = dir / "model.safetensors.index.json";
    if (std::filesystem::exists(index)) {
        origin_ = index.string();
        // Mapped (not streamed) so its size is known, and refused when implausibly large, before parsing.
        MappedFile text(index);
        if (text.size() > kMaxIndexBytes)
            fail(origin_, "{} bytes is implausibly large for a shard index (limit {})", text.size(), kMaxIndexBytes);
        json j;
        try {
            j = json::parse(text.bytes().begin(), text.bytes().end());
        } catch (const json::exception& e) {
            fail(origin_, "not valid JSON ({})", e.what());
        }
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
            fail(origin_, "missing \"weight_map\" object");
        std::map<std::string, size_t> shard_index;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it.value().is_string()) fail(origin_, "weight_map entry '{}' is not a file name", it.key());
            std::string shard = it.value().get<std::string>();
            if (shard.find('/') != std::string::npos || shard.find('\0') != std::string::npos || shard == ".." ||
                shard == "." || shard.empty())
                fail(origin_, "weight_map entry '{}' names '{}', which is not a file in the folder", printable(it.key()),
                     printable(shard));
            auto sit = shard_index.find(shard);
            if (sit == shard_index.end()) {
                if (!std::filesystem::exists(dir / shard))
                    fail(origin_, "shard '{}' (for tensor '{}') does not exist", shard, it.key());
                files_.push_back(std::make_unique<SafetensorsFile>(dir / shard));
                sit = shard_index.emplace(shard, files_.size() - 1).first;
            }
            const SafetensorsFile* f = files_[sit->second].get();
            const TensorInfo* t = f->find(it.key());
            if (!t) fail(f->path(), "tensor '{}' listed in {} is not in this shard", it.key(), index.filename().string());
            entries_[it.key()] = Entry{f, t};
        }
    } else if (std::filesystem::exists(single)) {
        origin_ = single.string();
        files_.push_back(std::make_unique<SafetensorsFile>(single));
        for (const auto& t : files_[0]->tensors()) entries_[t.name] = Entry{files_[0].get(), &t};
    } else {
        fail(dir.string(), "no model.safetensors or model.safetensors.index.json in this folder");
    }
}

const WeightFiles::Entry* WeightFiles::find(std::string_view name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> WeightFiles::names() const {
    std::vector<std::string> out;
    for (const auto& [k, _] : entries_) out.push_back(k);
    return out;
}

std::string WeightFiles::dtype_summary() const {
    std::map<std::string, int> counts;
    for (const auto& [_, e] : entries_) counts[std::string(dtype_name(e.info->dtype))]++;
    std::string s;
    for (const auto& [k, n] : counts) s += (s.empty() ? "" : ", ") + k + " x" + std::to_string(n);
    return s;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (const auto& t : tensors) {
        uint64_t numel = 1;
        for (auto d : t.shape) numel *= uint64_t(d);
        if (numel * dtype_size(t.dtype) != t.bytes.size())
            fail(path.string(), "internal: tensor '{}' has {} bytes for its shape", t.name, t.bytes.size());
        header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                          {"shape", t.shape},
                          {"data_offsets", {offset, offset + t.bytes.size()}}};
        offset += t.bytes.size();
    }
    std::string h = header.dump();
    while (h.size() % 8) h += ' ';
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    interrupt::TempFile guard(tmp.string());  // removed if the run is interrupted before the rename
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(tmp.string(), "cannot open for writing");
        uint64_t n = h.size();
        char len[8];
        for (int i = 0; i < 8; ++i) len[i] = char((n >> (8 * i)) & 0xff);
        out.write(len, 8);
        out.write(h.data(), long(h.size()));
        for (const auto& t : tensors) out.write(reinterpret_cast<const char*>(t.bytes.data()), long(t.bytes.size()));
        out.flush();
        if (!out) {
            std::filesystem::remove(tmp);
            fail(tmp.string(), "write failed (disk full?)");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp);
        fail(path.string(), "cannot rename temporary file into place: {}", ec.message());
    }
}

}  // namespace stitch

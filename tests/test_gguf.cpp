// GGUF: metadata of every value type, every tensor type dequantized exactly as gguf-py does
// (fixtures from tools/make_gguf_fixtures.py), v2 files, malformed and fuzzed files giving one
// stitch::Error, and GGUF → ModelConfig + Weights for llama / qwen2 / qwen3 checked against
// the HF fixture folders they were converted from (including llama.cpp's q/k row permutation
// and Llama 3 rope_freqs). Gemma 1 / 2 / 3 files (converted as convert_hf_to_gguf.py does from
// tiny HF models whose settings GGUF can express) give HF transformers' logits and greedy
// continuations and the HF config; Gemma's sliding-window pattern and local RoPE keys.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "kernels/cpu/dequant.h"
#include "models/gguf_model.h"
#include "models/hf.h"
#include "test_util.h"

using namespace stitch;

namespace {

std::filesystem::path gguf_fixture(const std::string& name) { return test::fixture("gguf/" + name); }

// Writes GGUF files byte by byte, so malformed ones can be made on purpose.
struct GGUFBuilder {
    uint32_t version = 3;
    uint64_t alignment = 32;  // also add general.alignment when changing it
    std::string kvs;
    uint64_t n_kv = 0;
    struct Tensor {
        std::string name;
        uint32_t type;
        std::vector<uint64_t> dims;  // ggml order
        std::string data;
        std::optional<uint64_t> offset;  // default: packed, aligned
    };
    std::vector<Tensor> tensors;

    template <typename T>
    static void put(std::string& s, T v) {
        s.append(reinterpret_cast<const char*>(&v), sizeof(T));
    }
    static void put_str(std::string& s, std::string_view v) {
        put<uint64_t>(s, v.size());
        s.append(v);
    }
    GGUFBuilder& kv_raw(std::string_view key, uint32_t type, const std::string& value_bytes) {
        put_str(kvs, key);
        put<uint32_t>(kvs, type);
        kvs += value_bytes;
        ++n_kv;
        return *this;
    }
    template <typename T>
    static std::string bytes_of(T v) {
        std::string s;
        put(s, v);
        return s;
    }
    GGUFBuilder& kv_u32(std::string_view key, uint32_t v) { return kv_raw(key, 4, bytes_of(v)); }
    GGUFBuilder& kv_f32(std::string_view key, float v) { return kv_raw(key, 6, bytes_of(v)); }
    GGUFBuilder& kv_str(std::string_view key, std::string_view v) {
        std::string b;
        put_str(b, v);
        return kv_raw(key, 8, b);
    }
    GGUFBuilder& tensor(std::string name, GGMLType type, std::vector<uint64_t> dims, std::string data,
                        std::optional<uint64_t> offset = std::nullopt) {
        tensors.push_back({std::move(name), uint32_t(type), std::move(dims), std::move(data), offset});
        return *this;
    }
    GGUFBuilder& tensor_f32(std::string name, std::vector<uint64_t> dims, const std::vector<float>& v) {
        std::string d(reinterpret_cast<const char*>(v.data()), v.size() * 4);
        return tensor(std::move(name), GGMLType::F32, std::move(dims), d);
    }
    std::string build() const {
        std::string s = "GGUF";
        put(s, version);
        put<uint64_t>(s, tensors.size());
        put<uint64_t>(s, n_kv);
        s += kvs;
        auto align = [&](uint64_t x) { return (x + alignment - 1) / alignment * alignment; };
        uint64_t cursor = 0, end = 0;
        std::vector<uint64_t> offsets;
        for (const auto& t : tensors) {
            put_str(s, t.name);
            put<uint32_t>(s, uint32_t(t.dims.size()));
            for (auto d : t.dims) put<uint64_t>(s, d);
            put<uint32_t>(s, t.type);
            const uint64_t off = t.offset.value_or(cursor);
            put<uint64_t>(s, off);
            offsets.push_back(off);
            cursor = align(std::max(cursor, off + t.data.size()));
            end = std::max(end, off + t.data.size());
        }
        s.resize(size_t(align(s.size())), '\0');
        const size_t data_start = s.size();
        s.resize(data_start + size_t(end), '\0');
        for (size_t i = 0; i < tensors.size(); ++i)
            std::memcpy(s.data() + data_start + offsets[i], tensors[i].data.data(), tensors[i].data.size());
        return s;
    }
    void write(const std::filesystem::path& p) const { test::write_bytes(p, build()); }
};

// Expects opening PATH to throw an Error whose message names the file and contains `what`.
void expect_error(const std::filesystem::path& p, const std::string& what) {
    try {
        GGUFFile f(p);
        FAIL("no error for " << p << " (expected '" << what << "')");
    } catch (const Error& e) {
        std::string msg = e.what();
        CHECK_MESSAGE(msg.find(p.string()) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(what) != std::string::npos, "expected '" << what << "' in: " << msg);
        CHECK_MESSAGE(msg.find('\n') == std::string::npos, msg);
    }
}

template <typename F>
void expect_error_in(const std::string& path, const std::string& what, F&& f) {
    try {
        f();
        FAIL("no error (expected '" << what << "')");
    } catch (const Error& e) {
        std::string msg = e.what();
        CHECK_MESSAGE(msg.find(path) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(what) != std::string::npos, "expected '" << what << "' in: " << msg);
    }
}

void patch_u64(std::string& s, size_t at, uint64_t v) { std::memcpy(s.data() + at, &v, 8); }
void patch_u32(std::string& s, size_t at, uint32_t v) { std::memcpy(s.data() + at, &v, 4); }

// A tiny but complete llama file: hidden 8, 2 heads of 4, 1 kv head, ffn 16, vocab 6, 1 layer.
GGUFBuilder tiny_llama(const std::string& arch = "llama") {
    GGUFBuilder b;
    b.kv_str("general.architecture", arch);
    auto k = [&](const char* s) { return arch + "." + s; };
    b.kv_u32(k("block_count"), 1).kv_u32(k("embedding_length"), 8).kv_u32(k("feed_forward_length"), 16);
    b.kv_u32(k("attention.head_count"), 2).kv_u32(k("attention.head_count_kv"), 1);
    b.kv_f32(k("attention.layer_norm_rms_epsilon"), 1e-5f).kv_f32(k("rope.freq_base"), 10000.0f);
    b.kv_u32(k("context_length"), 128);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    auto rnd = [&](size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = nd(rng);
        return v;
    };
    b.tensor_f32("token_embd.weight", {8, 6}, rnd(48));
    b.tensor_f32("blk.0.attn_norm.weight", {8}, rnd(8));
    b.tensor_f32("blk.0.attn_q.weight", {8, 8}, rnd(64));
    b.tensor_f32("blk.0.attn_k.weight", {8, 4}, rnd(32));
    b.tensor_f32("blk.0.attn_v.weight", {8, 4}, rnd(32));
    b.tensor_f32("blk.0.attn_output.weight", {8, 8}, rnd(64));
    b.tensor_f32("blk.0.ffn_norm.weight", {8}, rnd(8));
    b.tensor_f32("blk.0.ffn_gate.weight", {8, 16}, rnd(128));
    b.tensor_f32("blk.0.ffn_up.weight", {8, 16}, rnd(128));
    b.tensor_f32("blk.0.ffn_down.weight", {16, 8}, rnd(128));
    b.tensor_f32("output_norm.weight", {8}, rnd(8));
    return b;
}

const char* kRequiredTypes[] = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"};

}  // namespace

TEST_CASE("gguf: metadata of every value type") {
    GGUFFile f(gguf_fixture("types.gguf"));
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 64);
    CHECK(f.data_offset() % 64 == 0);
    CHECK(f.get_string("general.architecture") == "stitch-test");
    CHECK(f.get_int("general.alignment") == 64);
    CHECK(f.get_int("test.u8") == 200);
    CHECK(f.get_int("test.i8") == -100);
    CHECK(f.get_int("test.u16") == 60000);
    CHECK(f.get_int("test.i16") == -30000);
    CHECK(f.get_int("test.u32") == 4000000000);
    CHECK(f.get_int("test.i32") == -2000000000);
    CHECK(f.get_float("test.f32") == 1.5);
    CHECK(f.get_float("test.f64") == 0.1);
    CHECK(f.get_float("test.u8") == 200.0);  // any number reads as a float
    CHECK(f.get_bool("test.bool_true"));
    CHECK_FALSE(f.get_bool("test.bool_false"));
    CHECK(f.get_string("test.string") == "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
    CHECK(f.get_string("test.empty_string").empty());
    CHECK(std::get<uint64_t>(f.metadata().at("test.u64").v) == UINT64_MAX);
    CHECK(f.get_int("test.i64") == -(int64_t(1) << 62) - 3);
    CHECK(f.get_int_array("test.array_i32") == std::vector<int64_t>{1, -2, 3});
    CHECK(f.get_int_array("test.array_u8") == std::vector<int64_t>{7, 8, 9, 255});
    CHECK(f.get_float_array("test.array_f32") == std::vector<double>{0.5, -1.25, 3.0});
    CHECK(f.get_string_array("test.array_str") == std::vector<std::string>{"a", "", "\xc3\xbcn\xc3\xaf"});
    const auto& bools = std::get<GGUFValue::Array>(f.metadata().at("test.array_bool").v);
    REQUIRE(bools.size() == 3);
    CHECK(std::get<bool>(bools[0].v));
    CHECK_FALSE(std::get<bool>(bools[1].v));
    const auto& nested = std::get<GGUFValue::Array>(f.metadata().at("test.array_nested").v);
    REQUIRE(nested.size() == 2);
    CHECK(std::get<GGUFValue::Array>(nested[1].v).size() == 3);
    CHECK(std::get<int64_t>(std::get<GGUFValue::Array>(nested[1].v)[2].v) == 5);
    const auto& nested_s = std::get<GGUFValue::Array>(f.metadata().at("test.array_nested_str").v);
    CHECK(std::get<std::string>(std::get<GGUFValue::Array>(nested_s[0].v)[1].v) == "y");
    CHECK(f.find_int("test.nope") == std::nullopt);
    CHECK(f.find_string("test.string").value() == f.get_string("test.string"));
    CHECK(f.has("test.u8"));
    CHECK_FALSE(f.has("test.u9"));

    // Wrong types and missing keys name the file and the key.
    const std::string p = f.path();
    expect_error_in(p, "metadata key 'test.u8' is an unsigned integer, not a string", [&] { f.get_string("test.u8"); });
    expect_error_in(p, "missing metadata key 'test.missing'", [&] { f.get_int("test.missing"); });
    expect_error_in(p, "'test.string' is a string, not an integer", [&] { f.get_int("test.string"); });
    expect_error_in(p, "'test.u64' = 18446744073709551615 is too large", [&] { f.get_int("test.u64"); });
    expect_error_in(p, "not a bool", [&] { f.get_bool("test.i8"); });
    expect_error_in(p, "not strings", [&] { f.get_string_array("test.array_i32"); });
    expect_error_in(p, "not an array", [&] { f.get_int_array("test.u8"); });
    expect_error_in(p, "not an integer", [&] { f.get_int_array("test.array_bool"); });
}

TEST_CASE("gguf: every tensor type dequantizes exactly as gguf-py does") {
    GGUFFile f(gguf_fixture("types.gguf"));
    SafetensorsFile ref(gguf_fixture("types_ref.safetensors"));
    std::map<std::string, double> worst;  // type → max |ours - gguf-py| / max |gguf-py|
    std::set<std::string> seen;
    REQUIRE(ref.tensors().size() == f.tensors().size());
    for (const auto& r : ref.tensors()) {
        CAPTURE(r.name);
        const GGUFTensorInfo* t = f.find_tensor(r.name);
        REQUIRE(t != nullptr);
        const std::string type = ggml_type_name(t->type);
        seen.insert(type);
        CHECK(std::vector<int64_t>(t->shape.rbegin(), t->shape.rend()) == r.shape);
        CHECK(t->offset % 64 == 0);
        const std::vector<float> got = f.tensor_f32(*t), want = ref.to_f32(r);
        REQUIRE(got.size() == want.size());
        const bool plain = t->type == GGMLType::F32 || t->type == GGMLType::F16 || t->type == GGMLType::BF16 ||
                           ggml_block_size(t->type) == 1;
        if (plain) {  // bit for bit (infinities, signed zeros and subnormals included)
            CHECK_MESSAGE(std::memcmp(got.data(), want.data(), got.size() * 4) == 0, type);
            worst[type] = std::max(worst[type], 0.0);
        } else {
            double num = 0, den = 0;
            for (size_t i = 0; i < got.size(); ++i) {
                num = std::max(num, std::fabs(double(got[i]) - double(want[i])));
                den = std::max(den, std::fabs(double(want[i])));
            }
            const double e = den > 0 ? num / den : num;
            worst[type] = std::max(worst[type], e);
            CHECK_MESSAGE(e <= 1e-6, type << " error " << e);
        }
    }
    for (const char* t : kRequiredTypes) CHECK_MESSAGE(seen.count(t), "fixture lacks " << t);
    for (const char* t : {"Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "F64", "I8", "I16", "I32", "I64"})
        CHECK_MESSAGE(seen.count(t), "fixture lacks " << t);
    std::string summary;
    for (const auto& [k, v] : worst) summary += fmt::format(" {}={:.1e}", k, v);
    MESSAGE("max normalized error vs gguf-py:" << summary);
    CHECK(f.type_summary().find("F32 x") != std::string::npos);
}

TEST_CASE("gguf: a version 2 file reads the same as version 3") {
    GGUFFile v3(gguf_fixture("types.gguf")), v2(gguf_fixture("types_v2.gguf"));
    CHECK(v2.version() == 2);
    CHECK(v2.metadata().size() == v3.metadata().size());
    CHECK(v2.get_string("test.string") == v3.get_string("test.string"));
    REQUIRE(v2.tensors().size() == v3.tensors().size());
    for (size_t i = 0; i < v3.tensors().size(); ++i) {
        const auto &a = v2.tensors()[i], &b = v3.tensors()[i];
        CHECK(a.name == b.name);
        CHECK(a.shape == b.shape);
        CHECK(a.type == b.type);
        CHECK(v2.tensor_f32(a) == v3.tensor_f32(b));
    }
}

TEST_CASE("gguf: Q8_K by hand, the threaded path equals the serial one, unsupported types are errors") {
    // Q8_K: f32 d, 256 int8, 16 int16 block sums.
    std::string blk(292, '\0');
    const float d = 0.25f;
    std::memcpy(blk.data(), &d, 4);
    for (int i = 0; i < 256; ++i) blk[size_t(4 + i)] = char(int8_t(i - 128));
    std::vector<float> y(256);
    cpu::dequantize_row(GGMLType::Q8_K, blk.data(), y.data(), 256);
    for (int i = 0; i < 256; ++i) CHECK(y[size_t(i)] == 0.25f * float(i - 128));

    // > 64K elements goes through the OpenMP split; it must not change a bit.
    std::mt19937 rng(3);
    for (GGMLType t : {GGMLType::Q4_K, GGMLType::Q6_K, GGMLType::Q5_0, GGMLType::F16}) {
        const int64_t n = 300 * 256;
        std::string src(size_t(n / ggml_block_size(t) * ggml_type_size(t)), '\0');
        for (auto& c : src) c = char(rng() & 0xff);  // NaN/inf scales too: same bits either way
        std::vector<float> serial(static_cast<size_t>(n)), threaded(static_cast<size_t>(n));
        cpu::dequantize_row(t, src.data(), serial.data(), n);
        cpu::dequantize(t, src.data(), threaded.data(), n);
        CHECK(std::memcmp(serial.data(), threaded.data(), size_t(n) * 4) == 0);
    }

    test::TempDir dir;
    auto p = dir / "iq2.gguf";
    GGUFBuilder b;
    b.kv_str("general.architecture", "x");
    b.tensor("grid", GGMLType::IQ2_XXS, {256}, std::string(66, '\0'));
    b.write(p);
    GGUFFile f(p);
    CHECK(f.type_summary() == "IQ2_XXS x1");
    expect_error_in(p.string(), "tensor 'grid': type IQ2_XXS cannot be converted", [&] { f.tensor_f32(f.tensors()[0]); });
    CHECK_THROWS_AS(cpu::dequantize_row(GGMLType::IQ2_XXS, nullptr, nullptr, 0), Error);
    CHECK(std::string(ggml_type_name(GGMLType(99))) == "type 99");
}

TEST_CASE("gguf: malformed files are refused with the file name and the problem") {
    test::TempDir dir;
    auto p = dir / "bad.gguf";
    const std::string good = test::read_bytes(gguf_fixture("types.gguf"));
    auto with = [&](auto&& edit) {
        std::string s = good;
        edit(s);
        test::write_bytes(p, s);
    };

    with([](std::string& s) { s[0] = 'X'; });
    expect_error(p, "not a GGUF file");
    test::write_bytes(p, good.substr(0, 10));
    expect_error(p, "too small for a GGUF header");
    with([](std::string& s) { patch_u32(s, 4, 1); });
    expect_error(p, "version 1 is not supported");
    with([](std::string& s) { patch_u32(s, 4, 7); });
    expect_error(p, "unsupported GGUF version 7");
    with([](std::string& s) { patch_u32(s, 4, 0x03000000u); });
    expect_error(p, "big-endian");
    with([](std::string& s) { patch_u64(s, 16, 100000); });  // kv count
    expect_error(p, "metadata key count 100000 cannot fit");
    with([](std::string& s) { patch_u64(s, 16, uint64_t(1) << 40); });
    expect_error(p, "metadata key count 1099511627776 is over the limit");
    with([](std::string& s) { patch_u64(s, 8, 5000); });  // tensor count
    expect_error(p, "tensor count 5000 cannot fit");
    with([](std::string& s) { patch_u64(s, 8, uint64_t(1) << 50); });
    expect_error(p, "is over the limit");
    with([](std::string& s) { patch_u64(s, 24, uint64_t(1) << 60); });  // first key's length
    expect_error(p, "string length 1152921504606846976 is over the 1 GiB limit");
    with([](std::string& s) { patch_u64(s, 24, 1u << 20); });
    expect_error(p, "string length 1048576 runs past the end of the file");
    test::write_bytes(p, good.substr(0, good.size() - 100));  // tensor data cut short
    expect_error(p, "runs past the end of the file");
    test::write_bytes(p, good.substr(0, 300));  // too short for the 23 keys the header promises
    expect_error(p, "metadata key count 23 cannot fit in the 276 bytes after the header");
    size_t data_end = 0;  // the writer pads the file after the last tensor; cutting padding is fine
    {
        GGUFFile f(gguf_fixture("types.gguf"));
        for (const auto& t : f.tensors()) data_end = std::max(data_end, size_t(f.data_offset() + t.offset + t.nbytes));
    }
    for (size_t cut = 320; cut < data_end; cut += 97) {  // cut anywhere before that: an error
        test::write_bytes(p, good.substr(0, cut));
        CHECK_THROWS_AS(GGUFFile{p}, Error);
    }

    GGUFBuilder base;
    base.kv_str("general.architecture", "x");
    const std::string four_floats(16, '\0');

    auto b = base;
    b.tensor("a", GGMLType(99), {4}, four_floats);
    b.write(p);
    expect_error(p, "tensor 'a': unknown ggml tensor type 99");

    b = base;
    b.tensor("a", GGMLType::F32, {1, 1, 1, 1, 4}, four_floats);
    b.write(p);
    expect_error(p, "tensor 'a': 5 dimensions (GGUF allows at most 4)");

    b = base;
    b.tensor("a", GGMLType::F32, {4}, four_floats, 64);
    b.tensors[0].data = "";  // info says 16 bytes at 64, but the file ends sooner
    b.write(p);
    expect_error(p, "tensor 'a': data [64, 80) runs past the end of the file");

    b = base;
    b.tensor("a", GGMLType::F32, {4}, four_floats).tensor("b", GGMLType::F32, {4}, four_floats, 16);
    b.write(p);
    expect_error(p, "data offset 16 is not a multiple of the alignment 32");

    b = base;
    b.tensor("a", GGMLType::F32, {16}, std::string(64, '\0')).tensor("b", GGMLType::F32, {4}, four_floats, 32);
    b.write(p);
    expect_error(p, "tensor 'b': data at offset 32 overlaps tensor 'a'");

    b = base;
    b.tensor("a", GGMLType::Q4_0, {48}, std::string(36, '\0'));
    b.write(p);
    expect_error(p, "row length 48 is not a multiple of the Q4_0 block size 32");

    b = base;
    b.tensor("a", GGMLType::F32, {1ull << 40, 1ull << 20}, "");
    b.write(p);
    expect_error(p, "needs more bytes than the whole file holds");

    b = base;
    b.tensor("a", GGMLType::F32, {1ull << 62, 16}, "");
    b.write(p);
    expect_error(p, "element count overflows");

    b = base;
    b.tensor("a", GGMLType::F32, {4}, four_floats).tensor("a", GGMLType::F32, {4}, four_floats);
    b.write(p);
    expect_error(p, "tensor name 'a' appears twice");

    b = base;
    b.kv_u32("general.architecture", 3);
    b.write(p);
    expect_error(p, "metadata key 'general.architecture' appears twice");

    b = base;
    b.kv_raw("k", 13, "");
    b.write(p);
    expect_error(p, "metadata key 'k': unknown value type 13");

    b = base;
    b.kv_raw("k", 9, GGUFBuilder::bytes_of(uint32_t(8)) + GGUFBuilder::bytes_of(uint64_t(1) << 30));
    b.write(p);
    expect_error(p, "array of 1073741824 string values runs past the end of the file");

    b = base;
    b.kv_raw("k", 9, GGUFBuilder::bytes_of(uint32_t(0)) + GGUFBuilder::bytes_of((uint64_t(1) << 32) + 1));
    b.write(p);
    expect_error(p, "array length 4294967297 is over the 2^32 limit");

    b = base;
    b.kv_raw("k", 9, GGUFBuilder::bytes_of(uint32_t(42)) + GGUFBuilder::bytes_of(uint64_t(1)));
    b.write(p);
    expect_error(p, "unknown array element type 42");

    {  // arrays of arrays of … deeper than 8
        std::string v;
        for (int i = 0; i < 12; ++i) v += GGUFBuilder::bytes_of(uint32_t(9)) + GGUFBuilder::bytes_of(uint64_t(1));
        b = base;
        b.kv_raw("deep", 9, v);
        b.write(p);
        expect_error(p, "nested more than 8 deep");
    }

    b = base;
    b.kv_u32("general.alignment", 24);
    b.alignment = 24;
    b.write(p);
    expect_error(p, "general.alignment = 24 is not a power of two");

    b = base;
    b.kv_str("general.alignment", "32");
    b.write(p);
    expect_error(p, "'general.alignment' is a string, not an unsigned integer");

    // A well-formed builder file opens (so the cases above fail for the reason named).
    b = base;
    b.kv_u32("general.alignment", 64);
    b.alignment = 64;
    b.kv_raw("empty", 9, GGUFBuilder::bytes_of(uint32_t(8)) + GGUFBuilder::bytes_of(uint64_t(0)));
    b.tensor("a", GGMLType::F32, {4}, four_floats).tensor("b", GGMLType::Q8_0, {32, 2}, std::string(68, '\0'));
    b.tensor("c", GGMLType::F32, {0, 3}, "");  // empty tensors are legal
    b.write(p);
    GGUFFile ok(p);
    CHECK(ok.get_string_array("empty").empty());
    CHECK(ok.tensor_f32(ok.tensors()[2]).empty());
    CHECK(ok.tensors()[1].offset == 64);
    CHECK(ok.tensor_f32(ok.tensors()[1]) == std::vector<float>(64, 0.0f));
}

TEST_CASE("gguf: random byte flips and truncations give stitch::Error or a valid file, never a crash") {
    test::TempDir dir;
    auto p = dir / "fuzz.gguf";
    std::mt19937_64 rng(12345);
    int errors = 0, opened = 0;
    auto fuzz = [&](const std::string& good, uint64_t header_bytes, int rounds, bool as_model) {
        for (int it = 0; it < rounds; ++it) {
            std::string s = good;
            switch (rng() % 4) {
                case 0:  // a few flipped bytes, mostly in the header / metadata / tensor infos
                    for (int k = 0, n = 1 + int(rng() % 8); k < n; ++k)
                        s[size_t(rng() % (rng() % 4 ? header_bytes : s.size()))] ^= char(1 + rng() % 255);
                    break;
                case 1: s.resize(size_t(rng() % s.size())); break;  // truncation
                case 2: {  // a random 64-bit value somewhere in the header (counts, lengths, dims, offsets)
                    const size_t at = size_t(rng() % (header_bytes - 8));
                    const uint64_t v = rng() >> (rng() % 64);
                    std::memcpy(s.data() + at, &v, 8);
                    break;
                }
                default:  // one 32-bit field set to a small odd value (types, n_dims, value types)
                    patch_u32(s, size_t(rng() % (header_bytes - 4)), uint32_t(rng() % 64));
            }
            test::write_bytes(p, s);
            try {
                GGUFFile f(p);
                for (const auto& [k, v] : f.metadata())
                    if (std::holds_alternative<std::string>(v.v)) (void)f.get_string(k).size();
                for (const auto& t : f.tensors())
                    if (ggml_type_dequantizable(t.type) && t.nbytes < (64u << 20)) (void)f.tensor_f32(t);
                if (as_model) {
                    ModelConfig c = gguf_model_config(f);
                    (void)gguf_model_weights(f, c);
                    (void)gguf_rope_inv_freq(f, c);
                }
                ++opened;
            } catch (const Error& e) {
                ++errors;
                CHECK_MESSAGE(std::string(e.what()).find(p.string()) != std::string::npos, e.what());
            }
        }
    };
    auto header_of = [](const std::filesystem::path& f) { return GGUFFile(f).data_offset(); };
    fuzz(test::read_bytes(gguf_fixture("types.gguf")), header_of(gguf_fixture("types.gguf")), 300, false);
    fuzz(test::read_bytes(gguf_fixture("llama_tied.gguf")), header_of(gguf_fixture("llama_tied.gguf")), 100, true);
    MESSAGE("fuzz: " << errors << " errors, " << opened << " files still valid");
    CHECK(errors > 100);
}

// The architecture fields a GGUF file and the HF config it came from must agree on.
void check_same_shape_config(const ModelConfig& g, const ModelConfig& h) {
    CHECK(g.family == h.family);
    CHECK(g.vocab_size == h.vocab_size);
    CHECK(g.hidden == h.hidden);
    CHECK(g.n_layers == h.n_layers);
    CHECK(g.n_heads == h.n_heads);
    CHECK(g.n_kv_heads == h.n_kv_heads);
    CHECK(g.head_dim == h.head_dim);
    CHECK(g.intermediate == h.intermediate);
    CHECK(g.max_position == h.max_position);
    CHECK(g.norm_eps == h.norm_eps);
    CHECK(g.tied_embeddings == h.tied_embeddings);
    CHECK(g.qkv_bias == h.qkv_bias);
    CHECK(g.o_bias == h.o_bias);
    CHECK(g.mlp_bias == h.mlp_bias);
    CHECK(g.qk_norm == h.qk_norm);
    CHECK(g.act == h.act);
}

TEST_CASE("gguf: model config of llama / qwen2 / qwen3 files equals the HF config they came from") {
    for (const char* name : {"llama_tied", "qwen2", "qwen3"}) {
        CAPTURE(name);
        GGUFFile f(gguf_fixture(std::string(name) + ".gguf"));
        const ModelConfig g = gguf_model_config(f);
        const ModelConfig h = load_hf_config(test::fixture(std::string("models/") + name));
        CHECK(g.model_type == h.model_type);
        check_same_shape_config(g, h);
        CHECK(g.rope.theta == h.rope.theta);
        CHECK(g.rope.type == h.rope.type);
        CHECK(g.rope.factor == h.rope.factor);
        CHECK(g.rope.low_freq_factor == h.rope.low_freq_factor);
        CHECK(g.rope.high_freq_factor == h.rope.high_freq_factor);
        CHECK(g.rope.original_max_position == h.rope.original_max_position);
        CHECK(g.layer_window == h.layer_window);
        CHECK(g.attn_scale == h.attn_scale);
        CHECK(g.eos_ids == h.eos_ids);
        CHECK(g.bos_id == h.bos_id);
        CHECK(g.pad_id == h.pad_id);
        // llama_tied's llama3 scaling (original context 2048) lives in rope_freqs.weight.
        CHECK(gguf_rope_inv_freq(f, g) == rope_inv_freq(h));
    }
}

TEST_CASE("gguf: weights equal the HF folder's; llama q/k rows are un-permuted exactly") {
    auto compare = [](const char* name, const Weights& g, const Weights& h, double tol) {
        CAPTURE(name);
        auto same = [&](const char* what, const std::vector<float>& a, const std::vector<float>& b, double t) {
            CAPTURE(what);
            REQUIRE(a.size() == b.size());
            if (t == 0)
                CHECK(a == b);
            else
                CHECK(test::rel_err(a, b) <= t);
        };
        same("embed", g.embed, h.embed, tol);
        same("final_norm", g.final_norm, h.final_norm, 0);
        same("lm_head", g.lm_head, h.lm_head, tol);
        REQUIRE(g.layers.size() == h.layers.size());
        for (size_t L = 0; L < g.layers.size(); ++L) {
            const auto &a = g.layers[L], &b = h.layers[L];
            CAPTURE(L);
            same("attn_norm", a.attn_norm, b.attn_norm, 0);
            same("bqkv", a.bqkv, b.bqkv, 0);
            same("bo", a.bo, b.bo, 0);
            same("q_norm", a.q_norm, b.q_norm, 0);
            same("k_norm", a.k_norm, b.k_norm, 0);
            same("mlp_norm", a.mlp_norm, b.mlp_norm, 0);
            same("wqkv", a.wqkv, b.wqkv, std::string(name) == "qwen3" ? tol : 0);  // llama_tied: F32, qwen2: F16
            same("wo", a.wo, b.wo, tol);
            same("w_gate_up", a.w_gate_up, b.w_gate_up, tol);
            same("w_down", a.w_down, b.w_down, tol);
            same("b_gate_up", a.b_gate_up, b.b_gate_up, 0);
            same("b_down", a.b_down, b.b_down, 0);
        }
    };
    // Q8_0 keeps ~8 bits per block: normalized error well under 1e-2; F16 copies of F16 are exact.
    for (auto [name, tol] : {std::pair{"llama_tied", 1e-2}, std::pair{"qwen2", 0.0}, std::pair{"qwen3", 1e-2}}) {
        GGUFFile f(gguf_fixture(std::string(name) + ".gguf"));
        const ModelConfig c = gguf_model_config(f);
        const Model hf = load_model(test::fixture(std::string("models/") + name));
        compare(name, gguf_model_weights(f, c), hf.weights, tol);
    }

    // The file really is permuted (so the exact match above is the inverse at work) …
    GGUFFile f(gguf_fixture("llama_tied.gguf"));
    const Model hf = load_model(test::fixture("models/llama_tied"));
    const ModelConfig& c = hf.config;
    const auto q_file = f.tensor_f32(*f.find_tensor("blk.1.attn_q.weight"));
    const auto k_file = f.tensor_f32(*f.find_tensor("blk.1.attn_k.weight"));
    const auto& wqkv = hf.weights.layers[1].wqkv;
    const std::vector<float> q_hf(wqkv.begin(), wqkv.begin() + c.q_dim() * c.hidden);
    const std::vector<float> k_hf(wqkv.begin() + c.q_dim() * c.hidden, wqkv.begin() + (c.q_dim() + c.kv_dim()) * c.hidden);
    CHECK(q_file != q_hf);
    CHECK(k_file != k_hf);
    // … by exactly llama.cpp's rule: file row h*hd + 2i + j is HF row h*hd + j*hd/2 + i.
    const int hd = c.head_dim, d = c.hidden;
    for (int h = 0; h < c.n_kv_heads; ++h)
        for (int i = 0; i < hd / 2; ++i)
            for (int j = 0; j < 2; ++j)
                for (int col = 0; col < d; ++col)
                    REQUIRE(k_file[size_t((h * hd + 2 * i + j) * d + col)] ==
                            k_hf[size_t((h * hd + j * hd / 2 + i) * d + col)]);
}

TEST_CASE("gguf: rope_freqs divisors become llama3 parameters, or are applied as they are") {
    test::TempDir dir;
    auto p = dir / "rope.gguf";
    // llama_untied's HF rope (theta 500000, factor 8, low 1, high 4, original 8192): one band point.
    const ModelConfig hf = load_hf_config(test::fixture("models/llama_untied"));
    std::vector<float> div;
    {
        ModelConfig base = hf;
        base.rope.type = RopeType::Default;
        for (float x : rope_inv_freq(base)) {
            const double wavelen = 2 * M_PI / x, lo_w = 8192 / 1.0, hi_w = 8192 / 4.0;
            if (wavelen < hi_w) div.push_back(1.0f);
            else if (wavelen > lo_w) div.push_back(8.0f);
            else {
                const double s = (8192 / wavelen - 1) / (4 - 1);
                div.push_back(float(1 / ((1 - s) / 8 + s)));
            }
        }
    }
    // Metadata and tensors gguf_model_config reads: head_dim 16 as in llama_untied.
    GGUFBuilder b;
    b.kv_str("general.architecture", "llama");
    b.kv_u32("llama.block_count", 1).kv_u32("llama.embedding_length", 32).kv_u32("llama.feed_forward_length", 8);
    b.kv_u32("llama.attention.head_count", 2).kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    b.kv_f32("llama.rope.freq_base", 500000.0f);
    b.tensor_f32("token_embd.weight", {32, 3}, std::vector<float>(96, 0.5f));
    b.tensor_f32("rope_freqs.weight", {8}, div);
    b.write(p);
    {
        GGUFFile f(p);
        ModelConfig c = gguf_model_config(f);
        CHECK(c.rope.type == RopeType::Llama3);
        CHECK(c.rope.factor == 8.0);
        CHECK(c.rope.low_freq_factor == 1.0);
        CHECK(c.rope.high_freq_factor == 4.0);
        CHECK(c.rope.original_max_position == 8192);
        CHECK(gguf_rope_inv_freq(f, c) == rope_inv_freq(hf));
    }
    // Divisors no llama3 rule makes: kept as they are, applied on top of the base frequencies.
    const std::vector<float> odd = {1.0f, 1.5f, 3.0f, 2.0f, 1.0f, 7.0f, 0.5f, 1.25f};
    b.tensors.back() = {"rope_freqs.weight", uint32_t(GGMLType::F32), {8},
                        std::string(reinterpret_cast<const char*>(odd.data()), 32), std::nullopt};
    b.write(p);
    {
        GGUFFile f(p);
        ModelConfig c = gguf_model_config(f);
        CHECK(c.rope.type == RopeType::Default);
        auto inv = gguf_rope_inv_freq(f, c), base = rope_inv_freq(c);
        for (size_t i = 0; i < 8; ++i) CHECK(inv[i] == base[i] / odd[i]);
    }
    // A divisor that is not positive, or the wrong length, is an error.
    b.tensors.back().data = std::string(28, '\0') + std::string(reinterpret_cast<const char*>(&odd[1]), 4);
    b.write(p);
    expect_error_in(p.string(), "not a positive divisor", [&] { gguf_model_config(GGUFFile(p)); });
    b.tensors.back() = {"rope_freqs.weight", uint32_t(GGMLType::F32), {4},
                        std::string(reinterpret_cast<const char*>(odd.data()), 16), std::nullopt};
    b.write(p);
    expect_error_in(p.string(), "tensor 'rope_freqs.weight' has shape [4]", [&] { gguf_model_config(GGUFFile(p)); });
}

TEST_CASE("gguf: unsupported architectures, missing keys and tensors, wrong shapes are errors") {
    test::TempDir dir;
    auto p = dir / "m.gguf";
    auto check = [&](const GGUFBuilder& b, const std::string& what, bool weights) {
        b.write(p);
        expect_error_in(p.string(), what, [&] {
            GGUFFile f(p);
            ModelConfig c = gguf_model_config(f);
            if (weights) gguf_model_weights(f, c);
        });
    };
    {  // the tiny llama itself loads; q/k get un-permuted, v does not
        tiny_llama().write(p);
        GGUFFile f(p);
        ModelConfig c = gguf_model_config(f);
        CHECK(c.vocab_size == 6);
        CHECK(c.head_dim == 4);
        CHECK(c.tied_embeddings);
        CHECK(c.eos_ids.empty());
        Weights w = gguf_model_weights(f, c);
        CHECK(w.layers[0].wqkv.size() == size_t((8 + 4 + 4) * 8));
        CHECK(w.lm_head.empty());
        const auto q = f.tensor_f32(*f.find_tensor("blk.0.attn_q.weight"));
        CHECK(std::equal(q.begin() + 8, q.begin() + 16, w.layers[0].wqkv.begin() + 16));  // row 1 → row 2
        const auto v = f.tensor_f32(*f.find_tensor("blk.0.attn_v.weight"));
        CHECK(std::equal(v.begin(), v.end(), w.layers[0].wqkv.begin() + 12 * 8));
    }
    check(tiny_llama("mamba"), "GGUF architecture 'mamba' is not supported (supported: llama, qwen2, qwen3, gemma, gemma2, gemma3)", false);
    {
        GGUFBuilder b;
        b.kv_str("general.architecture", "qwen2");
        check(b, "missing metadata key 'qwen2.block_count'", false);
    }
    {
        auto b = tiny_llama();
        b.tensors.erase(b.tensors.begin() + 4);  // attn_v
        check(b, "missing tensor 'blk.0.attn_v.weight'", true);
    }
    {
        auto b = tiny_llama();
        b.tensors[6].dims = {7};  // ffn_norm
        b.tensors[6].data.resize(28);
        check(b, "tensor 'blk.0.ffn_norm.weight' has shape [7] but the config implies [8]", true);
    }
    {
        auto b = tiny_llama();
        b.tensors[0].dims = {6, 8};  // token_embd transposed
        check(b, "tensor 'token_embd.weight' has shape [6, 8]", false);
    }
    {
        auto b = tiny_llama();
        b.kv_u32("llama.attention.head_count_kv", 3);
        check(b, "metadata key 'llama.attention.head_count_kv' appears twice", false);
    }
    {
        auto b = tiny_llama();
        b.kv_u32("tokenizer.ggml.eos_token_id", 6);
        check(b, "tokenizer.ggml.eos_token_id = 6 is outside the vocabulary (6 tokens)", false);
    }
    {
        auto b = tiny_llama();
        b.kv_str("llama.rope.scaling.type", "yarn");
        check(b, "RoPE scaling 'yarn' is not supported", false);
    }
    {
        auto b = tiny_llama();
        b.kv_u32("llama.rope.dimension_count", 2);
        check(b, "partial rotary is not supported", false);
    }
    {
        auto b = tiny_llama();
        b.kv_str("llama.rope.scaling.type", "linear").kv_f32("llama.rope.scaling.factor", 4.0f);
        b.write(p);
        ModelConfig c = gguf_model_config(GGUFFile(p));
        CHECK(c.rope.type == RopeType::Linear);
        CHECK(c.rope.factor == 4.0);
    }
}

namespace {

// tools/make_gguf_fixtures.py: <name>.gguf and <name>/ (the HF config.json, generation_config.json
// and reference.safetensors of the same model).
const char* kGemmaFiles[] = {"gemma_tiny", "gemma2_tiny", "gemma3_tiny"};

struct GemmaReference {
    SafetensorsFile file;
    int n_prompts;
    explicit GemmaReference(const std::string& name)
        : file(gguf_fixture(name + "/reference.safetensors")), n_prompts(std::stoi(file.metadata().at("n_prompts"))) {}
    std::vector<int32_t> ids(int i) const { return file.to_i32(file.get(fmt::format("prompt.{}.ids", i))); }
    std::vector<int32_t> greedy(int i) const { return file.to_i32(file.get(fmt::format("prompt.{}.greedy", i))); }
    std::vector<float> logits(int i) const { return file.to_f32(file.get(fmt::format("prompt.{}.logits", i))); }
    std::string text(int i) const { return file.metadata().at(fmt::format("prompt.{}.text", i)); }
};

}  // namespace

TEST_CASE("gguf: Gemma 1 / 2 / 3 files give HF's logits and greedy continuations") {
    for (const char* name : kGemmaFiles) {
        SUBCASE(name) {
            const Model m = load_model(gguf_fixture(std::string(name) + ".gguf"));
            const GemmaReference ref(name);
            REQUIRE(ref.n_prompts >= 3);
            const size_t V = size_t(m.config.vocab_size);
            double worst = 0;
            std::vector<std::vector<int32_t>> prompts;
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                const auto ids = ref.ids(i);
                prompts.push_back(ids);
                // the file's vocabulary (gpt2 + llama-bpe, add_bos_token) tokenizes as HF does
                CHECK(m.tokenizer.encode(ref.text(i), true) == ids);
                KVCache kv(m.config, int(ids.size()));
                RunState st;
                SeqInput in{&kv, ids};
                ForwardOptions fo;
                fo.all_logits = true;
                const auto logits = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
                const auto want = ref.logits(i);
                REQUIRE(logits.size() == ids.size() * V);
                REQUIRE(want.size() == logits.size());
                const double e = test::rel_err(logits, want);
                worst = std::max(worst, e);
                CHECK(e <= 1e-4);
            }
            GenerateOptions go;
            go.max_new_tokens = 16;
            go.stop_at_eos = false;
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                CHECK(generate(m, {prompts[size_t(i)]}, go)[0].new_ids == ref.greedy(i));
            }
            const auto batched = generate(m, prompts, go);
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                CHECK(batched[size_t(i)].new_ids == ref.greedy(i));
            }
            MESSAGE(std::string(name) << ": worst relative logit error vs HF " << worst);
        }
    }
}

TEST_CASE("gguf: Gemma 1 / 2 / 3 model config equals the HF config of the same model") {
    auto same_rope = [](const RopeConfig& a, const RopeConfig& b) {
        CHECK(a.theta == b.theta);
        CHECK(a.type == b.type);
        CHECK(a.factor == b.factor);
        CHECK(a.low_freq_factor == b.low_freq_factor);
        CHECK(a.high_freq_factor == b.high_freq_factor);
        CHECK(a.original_max_position == b.original_max_position);
    };
    for (const char* name : kGemmaFiles) {
        CAPTURE(name);
        GGUFFile f(gguf_fixture(std::string(name) + ".gguf"));
        const ModelConfig g = gguf_model_config(f);
        const ModelConfig h = load_hf_config(gguf_fixture(name));
        // model_type is the file's architecture name: "gemma3" for HF's "gemma3_text"
        CHECK(g.model_type == (h.model_type == "gemma3_text" ? "gemma3" : h.model_type));
        check_same_shape_config(g, h);
        CHECK(g.norm_plus_one == h.norm_plus_one);
        CHECK(g.embed_scale == h.embed_scale);
        CHECK(g.post_norms == h.post_norms);
        CHECK(g.attn_softcap == h.attn_softcap);
        CHECK(g.final_softcap == h.final_softcap);
        CHECK(g.layer_window == h.layer_window);
        CHECK(g.attn_scale == h.attn_scale);
        CHECK(g.has_rope_local == h.has_rope_local);
        same_rope(g.rope, h.rope);
        if (h.has_rope_local) same_rope(g.rope_local, h.rope_local);
        CHECK(g.eos_ids == h.eos_ids);
        CHECK(g.bos_id == h.bos_id);
        CHECK(g.pad_id == h.pad_id);
        const auto inv = gguf_layer_inv_freq(f, g);
        REQUIRE(int(inv.size()) == h.n_layers);
        for (int L = 0; L < h.n_layers; ++L) CHECK(inv[size_t(L)] == rope_inv_freq(h.rope_of(L), h.head_dim));
    }
    // What the fixtures exercise (so the equalities above are not vacuous).
    const ModelConfig g1 = gguf_model_config(GGUFFile(gguf_fixture("gemma_tiny.gguf")));
    CHECK(g1.head_dim * g1.n_heads != g1.hidden);  // attention.key_length honoured
    CHECK(g1.act == Activation::GeluTanh);
    const ModelConfig g2 = gguf_model_config(GGUFFile(gguf_fixture("gemma2_tiny.gguf")));
    CHECK(g2.attn_softcap == 4.0f);
    CHECK(g2.final_softcap == 6.0f);
    CHECK(g2.layer_window == std::vector<int>{16, 0, 16, 0});
    const ModelConfig g3 = gguf_model_config(GGUFFile(gguf_fixture("gemma3_tiny.gguf")));
    CHECK(g3.layer_window == std::vector<int>{8, 8, 8, 8, 8, 0, 8});
    CHECK(g3.rope.type == RopeType::Linear);
    CHECK(g3.rope.factor == 8.0);
    CHECK(g3.rope.theta == 1e6);
    CHECK(g3.rope_local.theta == 1e4);
    CHECK(g3.rope_local.type == RopeType::Default);
    CHECK(g3.final_softcap == 12.0f);
}

TEST_CASE("gguf: Gemma 2 / 3 sliding-window pattern, local RoPE base and window keys") {
    test::TempDir dir;
    auto p = dir / "g.gguf";
    // Metadata gguf_model_config reads, 7 layers; token_embd gives the vocabulary.
    auto gemma = [](const std::string& arch) {
        GGUFBuilder b;
        b.kv_str("general.architecture", arch);
        auto k = [&](const char* s) { return arch + "." + s; };
        b.kv_u32(k("block_count"), 7).kv_u32(k("embedding_length"), 8).kv_u32(k("feed_forward_length"), 16);
        b.kv_u32(k("attention.head_count"), 2).kv_u32(k("attention.head_count_kv"), 1);
        b.kv_u32(k("attention.key_length"), 4).kv_f32(k("attention.layer_norm_rms_epsilon"), 1e-6f);
        b.tensor_f32("token_embd.weight", {8, 5}, std::vector<float>(40, 0.25f));
        return b;
    };
    auto config = [&](const GGUFBuilder& b) {
        b.write(p);
        return gguf_model_config(GGUFFile(p));
    };
    // one bool per layer, as gguf-py's add_sliding_window_pattern writes a sequence
    auto bools = [](const std::vector<bool>& v) {
        std::string s = GGUFBuilder::bytes_of(uint32_t(7)) + GGUFBuilder::bytes_of(uint64_t(v.size()));
        for (bool x : v) s += char(x);
        return s;
    };
    {  // Gemma 3 defaults: 5 local : 1 global, local base 10000 unscaled, global base and scaling stored
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32).kv_f32("gemma3.rope.freq_base", 1e6f);
        b.kv_str("gemma3.rope.scaling.type", "linear").kv_f32("gemma3.rope.scaling.factor", 8.0f);
        const ModelConfig c = config(b);
        CHECK(c.layer_window == std::vector<int>{32, 32, 32, 32, 32, 0, 32});
        CHECK(c.has_rope_local);
        CHECK(c.rope_local.theta == 10000.0);
        CHECK(c.rope_local.type == RopeType::Default);
        CHECK(c.rope.type == RopeType::Linear);
        CHECK(&c.rope_of(4) == &c.rope_local);
        CHECK(&c.rope_of(5) == &c.rope);
        CHECK(c.final_softcap == 0.0f);
    }
    {  // a period, and a local base
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32).kv_u32("gemma3.attention.sliding_window_pattern", 3);
        b.kv_f32("gemma3.rope.freq_base_swa", 20000.0f);
        const ModelConfig c = config(b);
        CHECK(c.layer_window == std::vector<int>{32, 32, 0, 32, 32, 0, 32});
        CHECK(c.rope_local.theta == 20000.0);
    }
    {  // one bool per layer
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32);
        b.kv_raw("gemma3.attention.sliding_window_pattern", 9, bools({false, true, true, false, true, false, false}));
        CHECK(config(b).layer_window == std::vector<int>{0, 32, 32, 0, 32, 0, 0});
    }
    {  // no window (or 0): every layer global, as in llama.cpp
        CHECK(config(gemma("gemma3")).layer_window == std::vector<int>(7, 0));
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 0);
        CHECK(config(b).layer_window == std::vector<int>(7, 0));
    }
    {  // period 1: no local layers; period 0: all local
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32).kv_u32("gemma3.attention.sliding_window_pattern", 1);
        CHECK(config(b).layer_window == std::vector<int>(7, 0));
        b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32).kv_u32("gemma3.attention.sliding_window_pattern", 0);
        CHECK(config(b).layer_window == std::vector<int>(7, 32));
    }
    {  // Gemma 2: even layers local, window 4096 and soft-caps 50 / 30 by default; one RoPE
        const ModelConfig c = config(gemma("gemma2"));
        CHECK(c.layer_window == std::vector<int>{4096, 0, 4096, 0, 4096, 0, 4096});
        CHECK(c.attn_softcap == 50.0f);
        CHECK(c.final_softcap == 30.0f);
        CHECK_FALSE(c.has_rope_local);
        CHECK(c.rope.theta == 10000.0);
    }
    {  // Gemma 2 with a pattern and a local base: the local RoPE keeps the global scaling
        auto b = gemma("gemma2");
        b.kv_u32("gemma2.attention.sliding_window_pattern", 3).kv_f32("gemma2.rope.freq_base_swa", 5000.0f);
        b.kv_str("gemma2.rope.scaling.type", "linear").kv_f32("gemma2.rope.scaling.factor", 2.0f);
        const ModelConfig c = config(b);
        CHECK(c.layer_window == std::vector<int>{4096, 4096, 0, 4096, 4096, 0, 4096});
        CHECK(c.has_rope_local);
        CHECK(c.rope_local.theta == 5000.0);
        CHECK(c.rope_local.type == RopeType::Linear);
        CHECK(c.rope_local.factor == 2.0);
        CHECK(c.rope.theta == 10000.0);
    }
    {  // malformed patterns are errors naming the file and the key
        auto b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32);
        b.kv_raw("gemma3.attention.sliding_window_pattern", 9, bools({true, false}));
        b.write(p);
        expect_error_in(p.string(), "gemma3.attention.sliding_window_pattern has 2 entries for 7 layers",
                        [&] { gguf_model_config(GGUFFile(p)); });
        b = gemma("gemma3");
        b.kv_u32("gemma3.attention.sliding_window", 32).kv_str("gemma3.attention.sliding_window_pattern", "LLLLLG");
        b.write(p);
        expect_error_in(p.string(), "gemma3.attention.sliding_window_pattern", [&] { gguf_model_config(GGUFFile(p)); });
        b = gemma("gemma3");
        b.kv_f32("gemma3.rope.freq_base_swa", -1.0f);
        b.write(p);
        expect_error_in(p.string(), "gemma3.rope.freq_base_swa must be positive", [&] { gguf_model_config(GGUFFile(p)); });
    }
}

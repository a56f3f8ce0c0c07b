// Binary parsers under hostile input (docs/hardening.md): safetensors files and shard indexes,
// GGUF files, --steer vector files, map files, and the memory guard of the model loaders.
// Each case is a finding of the libFuzzer harnesses in tests/fuzz/ (or of reading the parser
// next to them) turned into a fixed, small file: the parser must throw stitch::Error naming the
// file and the problem, before allocating or reading anything the header merely claims.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "mapping/mapper.h"
#include "test_util.h"

using namespace stitch;

namespace {

// An 8-byte little-endian header length, the header, then `data_bytes` zero bytes.
std::string st_file(const std::string& header_json, size_t data_bytes = 0) {
    std::string s(8, '\0');
    const uint64_t n = header_json.size();
    for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return s + header_json + std::string(data_bytes, '\0');
}

// Runs f, which must throw stitch::Error whose one-line message names `file` and contains `what`.
template <typename F>
void expect_error(const std::string& file, const std::string& what, F&& f) {
    try {
        f();
        FAIL("no error (expected '" << what << "')");
    } catch (const Error& e) {
        const std::string msg = e.what();
        CHECK_MESSAGE(msg.rfind(file + ": ", 0) == 0, "expected the message to start with '" << file << ": ': " << msg);
        CHECK_MESSAGE(msg.find(what) != std::string::npos, "expected '" << what << "' in: " << msg);
        CHECK_MESSAGE(msg.find('\n') == std::string::npos, msg);
    }
}

// GGUF bytes by hand: "GGUF", version 3, counts, then whatever the caller appends.
struct GGUFBytes {
    std::string s;
    template <typename T>
    GGUFBytes& put(T v) {
        s.append(reinterpret_cast<const char*>(&v), sizeof(T));
        return *this;
    }
    GGUFBytes& str(const std::string& v) {
        put<uint64_t>(v.size());
        s += v;
        return *this;
    }
    GGUFBytes(uint64_t n_tensors, uint64_t n_kv) {
        s = "GGUF";
        put<uint32_t>(3).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
    }
};

// Restores an environment variable when the test ends.
struct EnvGuard {
    std::string name;
    std::optional<std::string> old;
    explicit EnvGuard(std::string n) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) old = v;
    }
    ~EnvGuard() {
        if (old) ::setenv(name.c_str(), old->c_str(), 1);
        else ::unsetenv(name.c_str());
    }
};

}  // namespace

// ---- safetensors ---------------------------------------------------------------------------

TEST_CASE("hardening_binary: safetensors shapes whose byte count wraps 2^64 are refused before any allocation") {
    // Found by reading the parser: numel was capped at 2^62, but numel × dtype size was not,
    // so [2^31, 2^31] F32 (2^64 bytes) or [2^61] F64 wrapped to 0 and matched data_offsets
    // [0, 0]; to_f32 then asked for 2^62 floats.
    test::TempDir dir;
    struct Case {
        const char* dtype;
        const char* shape;
    };
    for (const Case& c : {Case{"F32", "[2147483648,2147483648]"}, Case{"F64", "[2305843009213693952]"},
                          Case{"I64", "[1152921504606846976,2,2]"}, Case{"F32", "[4611686018427387904]"}}) {
        CAPTURE(c.shape);
        const auto p = dir / "wrap.safetensors";
        test::write_bytes(p, st_file(fmt::format(R"({{"t":{{"dtype":"{}","shape":{},"data_offsets":[0,0]}}}})", c.dtype, c.shape)));
        expect_error(p.string(), "tensor 't': " + std::string(c.dtype), [&] { SafetensorsFile f(p); });
        expect_error(p.string(), "elements, whose byte count overflows 64 bits", [&] { SafetensorsFile f(p); });
    }
    // Big but not wrapping (2^63 bytes): the data_offsets mismatch, as before.
    const auto big = dir / "big.safetensors";
    test::write_bytes(big, st_file(R"({"t":{"dtype":"BF16","shape":[4611686018427387904],"data_offsets":[0,0]}})"));
    expect_error(big.string(), "tensor 't': BF16 [4611686018427387904] needs 9223372036854775808 bytes but data_offsets give 0",
                 [&] { SafetensorsFile f(big); });
    // The same shape with real data sizes still reads (no change for valid files).
    const auto ok = dir / "ok.safetensors";
    test::write_bytes(ok, st_file(R"({"t":{"dtype":"F64","shape":[2,1],"data_offsets":[0,16]}})", 16));
    SafetensorsFile f(ok);
    CHECK(f.to_f32(f.get("t")) == std::vector<float>{0.0f, 0.0f});
}

TEST_CASE("hardening_binary: empty safetensors tensors convert to empty vectors without memcpy on null") {
    // fuzz_safetensors, first input (UBSan): to_f32 / to_i32 of a [0, 4] tensor called memcpy with
    // the null data() of an empty std::vector (undefined even for 0 bytes).
    test::TempDir dir;
    const auto p = dir / "empty.safetensors";
    test::write_bytes(p, st_file(R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                                 R"("i":{"dtype":"I32","shape":[0],"data_offsets":[0,0]},"j":{"dtype":"I64","shape":[3,0],"data_offsets":[0,0]}})"));
    SafetensorsFile f(p);
    CHECK(f.to_f32(f.get("e")).empty());
    CHECK(f.to_i32(f.get("i")).empty());
    CHECK(f.to_i32(f.get("j")).empty());
    expect_error(p.string(), "tensor 'i': dtype I32 is not a float type", [&] { (void)f.to_f32(f.get("i")); });
}

TEST_CASE("hardening_binary: safetensors headers nesting deeper or longer than a header does are refused while parsing") {
    test::TempDir dir;
    const auto p = dir / "deep.safetensors";
    // 100k nested arrays: refused at depth 4, without building the tree.
    test::write_bytes(p, st_file(R"({"t":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') + "}}"));
    expect_error(p.string(), "header nests JSON deeper than a safetensors header does", [&] { SafetensorsFile f(p); });
    // A shape of 100k dimensions: refused at the 65th value.
    std::string dims = "[1";
    for (int i = 0; i < 100000; ++i) dims += ",1";
    test::write_bytes(p, st_file(R"({"t":{"dtype":"F32","shape":)" + dims + R"(],"data_offsets":[0,4]}})", 4));
    expect_error(p.string(), "more than 64 values inside a tensor entry", [&] { SafetensorsFile f(p); });
    // Up to 8 dimensions and __metadata__ strings are as before.
    test::write_bytes(p, st_file(R"({"__metadata__":{"a":"b"},"t":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4));
    SafetensorsFile f(p);
    CHECK(f.get("t").shape.size() == 8);
    CHECK(f.metadata().at("a") == "b");
}

TEST_CASE("hardening_binary: a safetensors header length over 100 MB is refused before parsing") {
    test::TempDir dir;
    const auto p = dir / "big.safetensors";
    // A sparse file, so the header length fits inside it without writing 100 MB.
    const uint64_t len = 100'000'001;
    std::string head(8, '\0');
    for (int i = 0; i < 8; ++i) head[size_t(i)] = char((len >> (8 * i)) & 0xff);
    test::write_bytes(p, head + "{");
    std::filesystem::resize_file(p, 8 + len);
    expect_error(p.string(), "header length 100000001 is implausibly large", [&] { SafetensorsFile f(p); });
}

TEST_CASE("hardening_binary: shard indexes: oversized files and shard names with NUL or '.' are refused") {
    test::TempDir dir;
    const float a[2] = {1, 2};
    write_safetensors(dir / "model-00001-of-00001.safetensors",
                      {{"a", DType::F32, {2}, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(a), 8)}});
    const auto index = dir / "model.safetensors.index.json";
    // A NUL inside the name would be cut there by open(2): "model-00001-of-00001.safetensors\0x"
    // named another file than it said.
    test::write_bytes(index, std::string(R"({"weight_map":{"a":"model-00001-of-00001.safetensors\u0000x"}})"));
    expect_error(index.string(), "names 'model-00001-of-00001.safetensors\\x00x', which is not a file in the folder",
                 [&] { WeightFiles w(dir.path); });
    test::write_bytes(index, R"({"weight_map":{"a":"."}})");
    expect_error(index.string(), "names '.', which is not a file in the folder", [&] { WeightFiles w(dir.path); });
    // Over 100 MB (sparse): refused by size, before the JSON parser sees it.
    test::write_bytes(index, R"({"weight_map":{}})");
    std::filesystem::resize_file(index, 100'000'001);
    expect_error(index.string(), "100000001 bytes is implausibly large for a shard index", [&] { WeightFiles w(dir.path); });
    // A valid index still resolves.
    test::write_bytes(index, R"({"weight_map":{"a":"model-00001-of-00001.safetensors"}})");
    WeightFiles w(dir.path);
    REQUIRE(w.find("a"));
    CHECK(w.find("a")->file->to_f32(*w.find("a")->info) == std::vector<float>{1, 2});
}

// ---- GGUF ----------------------------------------------------------------------------------

TEST_CASE("hardening_binary: GGUF metadata arrays holding over 2^25 values in all are refused before decoding") {
    // Each decoded value takes ~40 bytes however small it was in the file: a 33 MB array of
    // uint8 would have become 1.3 GB. The file is sparse (zero bytes), so the test writes little.
    test::TempDir dir;
    const auto p = dir / "many.gguf";
    const uint64_t n = (1ull << 25) + 1;
    GGUFBytes b(0, 1);
    b.str("big").put<uint32_t>(9).put<uint32_t>(0).put<uint64_t>(n);  // array of uint8
    test::write_bytes(p, b.s);
    std::filesystem::resize_file(p, b.s.size() + n);
    expect_error(p.string(), "metadata key 'big' at offset", [&] { GGUFFile f(p); });
    expect_error(p.string(), "metadata arrays hold more than 33554432 values in all", [&] { GGUFFile f(p); });
}

TEST_CASE("hardening_binary: GGUF tensors claiming more data than the file are refused at open") {
    test::TempDir dir;
    const auto p = dir / "huge.gguf";
    GGUFBytes b(1, 0);
    // F32 [2^31, 2^31]: 2^64 bytes if multiplied naively.
    b.str("t").put<uint32_t>(2).put<uint64_t>(1ull << 31).put<uint64_t>(1ull << 31).put<uint32_t>(0).put<uint64_t>(0);
    b.s.resize((b.s.size() + 31) / 32 * 32, '\0');
    test::write_bytes(p, b.s);
    expect_error(p.string(), "tensor 't': F32 [2147483648, 2147483648] needs more bytes than the whole file holds",
                 [&] { GGUFFile f(p); });
}

TEST_CASE("hardening_binary: a GGUF without tensors has its data section at the end of the file, not past it") {
    // Found by reading file_fingerprint: the data section starts at the metadata's end rounded up
    // to the alignment (32), which for a 24-byte file with no tensors was offset 32, and the
    // fingerprint hashed bytes up to there, 8 past the end of the mapping.
    test::TempDir dir;
    const auto p = dir / "empty.gguf";
    test::write_bytes(p, GGUFBytes(0, 0).s);
    GGUFFile f(p);
    CHECK(f.data_offset() == 24);
    CHECK(f.tensors().empty());
    CHECK(file_fingerprint(p).size() == 16);
    // With tensors, a data section past the end is an error, as before.
    GGUFBytes b(1, 0);
    b.str("t").put<uint32_t>(1).put<uint64_t>(1).put<uint32_t>(0).put<uint64_t>(0);
    test::write_bytes(dir / "t.gguf", b.s);
    expect_error((dir / "t.gguf").string(), "tensor data section would start at offset 64, past the end of the file (57 bytes)",
                 [&] { GGUFFile g(dir / "t.gguf"); });
}

// ---- --steer vector files ------------------------------------------------------------------

TEST_CASE("hardening_binary: a control vector with two tensors for one layer is refused") {
    // direction.1 and direction.01 both parse as layer 1: one silently replaced the other.
    test::TempDir dir;
    const auto p = dir / "cv.gguf";
    const std::vector<float> v1 = {1, 2, 3, 4}, v2 = {5, 6, 7, 8};
    write_gguf(p, {{"general.architecture", GGUFValue{std::string("controlvector")}}},
               {{"direction.1", {4}, v1}, {"direction.01", {4}, v2}});
    const SiteRef site{Site::ResidPost, 1};
    expect_error(p.string(), "direction.01 is a second vector for layer 1", [&] { read_steer_vectors(p.string(), site, 4, 3); });
    write_gguf(p, {{"general.architecture", GGUFValue{std::string("controlvector")}}},
               {{"direction.1", {4}, v1}, {"direction.2", {4}, v2}});
    const SteerVectors sv = read_steer_vectors(p.string(), site, 4, 3);
    CHECK(sv.per_layer[1] == v1);
    CHECK(sv.per_layer[2] == v2);
}

TEST_CASE("hardening_binary: steering and map files with wrapping shapes are refused naming the file") {
    test::TempDir dir;
    const auto vec = dir / "vec.safetensors";
    test::write_bytes(vec, st_file(R"({"direction":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})"));
    expect_error(vec.string(), "tensor 'direction': F32 [2147483648, 2147483648] has 4611686018427387904 elements, whose byte count overflows", [&] {
        read_steer_vectors(vec.string(), SiteRef{Site::ResidPost, 1}, 4, 3);
    });
    const auto map = dir / "map.safetensors";
    test::write_bytes(map, st_file(R"({"__metadata__":{"format":"stitch-map","kind":"affine","d_src":"4","d_tgt":"3","hidden":"0"},)"
                                   R"("W":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})"));
    expect_error(map.string(), "tensor 'W': F64 [2305843009213693952] has 2305843009213693952 elements, whose byte count overflows", [&] { load_map(map); });
}

// ---- memory guard --------------------------------------------------------------------------

TEST_CASE("hardening_binary: model_f32_bytes equals the float32 weights a loaded model holds") {
    for (const char* name : {"llama_tied", "llama_untied", "qwen2", "qwen3", "gemma2"}) {
        CAPTURE(name);
        const Model m = load_model(test::fixture(std::string("models/") + name));
        uint64_t n = m.weights.embed.size() + m.weights.final_norm.size() + m.weights.lm_head.size();
        for (const auto& L : m.weights.layers)
            for (const auto* v : {&L.attn_norm, &L.wqkv, &L.bqkv, &L.wo, &L.bo, &L.q_norm, &L.k_norm, &L.post_attn_norm,
                                  &L.mlp_norm, &L.post_mlp_norm, &L.w_gate_up, &L.b_gate_up, &L.w_down, &L.b_down})
                n += v->size();
        // Gemma 2 has four norms per layer, the others two: the estimate counts four.
        const uint64_t est = model_f32_bytes(m.config);
        CHECK(est >= 4 * n);
        CHECK(est <= 4 * n + 4 * uint64_t(2 * m.config.hidden * m.config.n_layers));
    }
    // Absurd configs saturate instead of wrapping to something small.
    ModelConfig c;
    c.hidden = c.intermediate = c.vocab_size = 1 << 24;
    c.n_heads = c.n_kv_heads = c.n_layers = 4096;
    c.head_dim = 1 << 16;
    CHECK(model_f32_bytes(c) == std::numeric_limits<uint64_t>::max());
}

TEST_CASE("hardening_binary: the memory guard refuses with the file, the needed and the available GiB") {
    check_memory_fits("m.gguf", 1ull << 30, 1ull << 30);  // exactly enough: fine
    expect_error("m.gguf", "loading needs 10.0 GiB of memory for the float32 weights but only 1.5 GiB is available",
                 [] { check_memory_fits("m.gguf", 10ull << 30, 3ull << 29); });
    expect_error("m.gguf", "STITCH_NO_MEMORY_CHECK=1", [] { check_memory_fits("m.gguf", 2, 1); });
    const auto avail = available_memory_bytes();
    REQUIRE(avail);  // Linux: /proc/meminfo
    CHECK(*avail > 0);
}

TEST_CASE("hardening_binary: a GGUF whose config needs terabytes is refused before dequantizing; the override skips it") {
    // A tiny embedding and a config of 4096 layers with a 2^24-wide MLP: ~6.6 TB as float32.
    test::TempDir dir;
    const auto p = dir / "claims.gguf";
    const std::vector<float> emb(8 * 6, 0.5f);
    std::vector<std::pair<std::string, GGUFValue>> meta = {
        {"general.architecture", GGUFValue{std::string("llama")}},
        {"llama.block_count", GGUFValue{uint64_t(4096)}},
        {"llama.embedding_length", GGUFValue{uint64_t(8)}},
        {"llama.feed_forward_length", GGUFValue{uint64_t(1) << 24}},
        {"llama.attention.head_count", GGUFValue{uint64_t(2)}},
        {"llama.attention.layer_norm_rms_epsilon", GGUFValue{1e-5}},
        {"tokenizer.ggml.model", GGUFValue{std::string("gpt2")}},
        {"tokenizer.ggml.tokens", GGUFValue{GGUFValue::Array{GGUFValue{std::string("a")}, GGUFValue{std::string("b")},
                                                             GGUFValue{std::string("ab")}}}},
        {"tokenizer.ggml.merges", GGUFValue{GGUFValue::Array{GGUFValue{std::string("a b")}}}},
    };
    write_gguf(p, meta, {{"token_embd.weight", {8, 6}, emb}});
    EnvGuard env("STITCH_NO_MEMORY_CHECK");
    ::unsetenv("STITCH_NO_MEMORY_CHECK");
    expect_error(p.string(), "loading needs", [&] { load_model(p); });
    expect_error(p.string(), "GiB of memory for the float32 weights but only", [&] { load_model(p); });
    ::setenv("STITCH_NO_MEMORY_CHECK", "1", 1);
    expect_error(p.string(), "missing tensor 'blk.0.attn_norm.weight'", [&] { load_model(p); });
}

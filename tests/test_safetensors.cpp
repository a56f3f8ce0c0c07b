// safetensors reader/writer: round trip, and every malformed-header case named in the
// engine-core issue gives a stitch::Error naming the file.
#include <doctest/doctest.h>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "test_util.h"

using namespace stitch;

namespace {

std::string header_file(const std::string& header_json, size_t data_bytes) {
    std::string s(8, '\0');
    uint64_t n = header_json.size();
    for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return s + header_json + std::string(data_bytes, '\0');
}

// Expects opening PATH to throw an Error whose message names the file and contains `what`.
void expect_error(const std::filesystem::path& p, const std::string& what) {
    try {
        SafetensorsFile f(p);
        FAIL("no error for " << p << " (expected '" << what << "')");
    } catch (const Error& e) {
        std::string msg = e.what();
        CHECK_MESSAGE(msg.find(p.string()) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(what) != std::string::npos, msg);
    }
}

}  // namespace

TEST_CASE("safetensors: write then read gives the same values, dtypes and metadata") {
    test::TempDir dir;
    std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
    std::vector<uint16_t> b16;
    for (float x : a) b16.push_back(f32_to_bf16(x));
    std::vector<uint16_t> h16;
    for (float x : a) h16.push_back(f32_to_f16(x));
    std::vector<int32_t> ids = {1, 2, 3};
    auto p = dir / "t.safetensors";
    write_safetensors(p,
                      {{"a", DType::F32, {2, 3}, as_bytes_span(a)},
                       {"b", DType::BF16, {6}, as_bytes_span(b16)},
                       {"h", DType::F16, {3, 2}, as_bytes_span(h16)},
                       {"ids", DType::I32, {3}, as_bytes_span(ids)}},
                      {{"note", "hello"}});
    CHECK_FALSE(std::filesystem::exists(dir / "t.safetensors.tmp"));
    SafetensorsFile f(p);
    REQUIRE(f.tensors().size() == 4);
    CHECK(f.metadata().at("note") == "hello");
    CHECK(f.get("a").shape == std::vector<int64_t>{2, 3});
    CHECK(f.to_f32(f.get("a")) == a);
    std::vector<float> a_bf16;
    for (float x : a) a_bf16.push_back(bf16_to_f32(f32_to_bf16(x)));
    CHECK(f.to_f32(f.get("b")) == a_bf16);
    CHECK(a_bf16[0] == 1.5f);
    CHECK(f.to_f32(f.get("h")) == std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f, f16_to_f32(f32_to_f16(1e-3f)), -7.0f});
    CHECK(f.to_i32(f.get("ids")) == ids);
    CHECK_THROWS_AS(f.to_f32(f.get("ids")), Error);
    CHECK_THROWS_AS(f.get("missing"), Error);
}

TEST_CASE("safetensors: f16 and bf16 conversions match IEEE values") {
    CHECK(f16_to_f32(0x3c00) == 1.0f);
    CHECK(f16_to_f32(0xc000) == -2.0f);
    CHECK(f16_to_f32(0x7bff) == 65504.0f);
    CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
    CHECK(std::isinf(f16_to_f32(0x7c00)));
    CHECK(std::isnan(f16_to_f32(0x7e00)));
    CHECK(bf16_to_f32(0x3f80) == 1.0f);
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80);  // halfway, rounds to even
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    for (uint32_t h = 0; h < 0x7c00; ++h) CHECK_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h);
}

TEST_CASE("safetensors: malformed files are refused with the file name and the problem") {
    test::TempDir dir;
    auto p = dir / "bad.safetensors";

    test::write_bytes(p, std::string("\x10\x00\x00", 3));
    expect_error(p, "truncated");

    {  // declared header longer than the file
        std::string s = header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
        s[0] = char(0xff);
        s[1] = char(0x7f);
        test::write_bytes(p, s);
        expect_error(p, "past the end of the file");
    }
    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4));
    expect_error(p, "not valid JSON");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4));
    expect_error(p, "unknown dtype");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4));
    expect_error(p, "needs 8 bytes");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4));
    expect_error(p, "past the end of the data");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                     12));
    expect_error(p, "overlaps");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
    expect_error(p, "unused bytes");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8));
    expect_error(p, "reversed");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4));
    expect_error(p, "bad shape");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", 4));
    expect_error(p, "overflows");

    test::write_bytes(p, header_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4));
    expect_error(p, "data_offsets");

    test::write_bytes(p, header_file(R"([1,2,3])", 0));
    expect_error(p, "not a JSON object");
}

TEST_CASE("safetensors: sharded folders follow model.safetensors.index.json") {
    test::TempDir dir;
    std::vector<float> a = {1, 2}, b = {3, 4, 5};
    write_safetensors(dir / "s1.safetensors", {{"x", DType::F32, {2}, as_bytes_span(a)}});
    write_safetensors(dir / "s2.safetensors", {{"y", DType::F32, {3}, as_bytes_span(b)}});
    test::write_bytes(dir / "model.safetensors.index.json",
                      R"({"metadata":{},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}})");
    WeightFiles w(dir.path);
    REQUIRE(w.find("x"));
    REQUIRE(w.find("y"));
    CHECK(w.find("y")->file->to_f32(*w.find("y")->info) == b);

    test::write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"x":"s3.safetensors"}})");
    CHECK_THROWS_WITH_AS(WeightFiles{dir.path}, doctest::Contains("does not exist"), Error);
    test::write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"z":"s1.safetensors"}})");
    CHECK_THROWS_WITH_AS(WeightFiles{dir.path}, doctest::Contains("not in this shard"), Error);
    test::write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"x":"../s1.safetensors"}})");
    CHECK_THROWS_AS(WeightFiles{dir.path}, Error);
}

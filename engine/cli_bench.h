// `stitch bench`: prefill, decode and capture throughput of the forward pass, on the CPU or CUDA,
// and on CUDA the device's measured ceilings (copy bandwidth, bf16 GEMM peak) beside them.
#pragma once

namespace stitch {

// argv[1] is "bench". Throws stitch::Error on bad input (one line, exit status 2).
int cmd_bench(int argc, char** argv);

// `stitch help bench` (constant-initialised, so engine/cli.cpp's help table may hold it).
extern const char kBenchHelp[];

}  // namespace stitch

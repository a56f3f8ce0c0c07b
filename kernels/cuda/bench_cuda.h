// Device ceilings for `stitch bench --device cuda`: what this GPU can do at best, measured here,
// so the forward pass's numbers can be read as a fraction of them (the roofline). Plain C++, no
// CUDA types, so engine/ code can call it; built only with nvcc (STITCH_HAVE_CUDA). Every
// function runs on the current device, synchronises before it returns, and throws stitch::Error
// on a CUDA or cuBLAS failure.
#pragma once
#include <cstddef>

namespace stitch::cuda {

// Device-to-device cudaMemcpy of `bytes` (default 1 GiB), best of `reps` after a warm-up, in GB/s
// (1e9 bytes/s) counting both the read and the write: 2·bytes / seconds. The measured HBM ceiling
// a bandwidth-bound kernel (batch-1 decode) can hope to reach.
double measure_copy_gb_s(size_t bytes = size_t(1) << 30, int reps = 5);

// A bf16 cublasGemmEx of n×n×n (bf16 A, B and C, f32 accumulation, the default cuBLAS algorithm),
// filled with pseudo-random values in [-1, 1] (all-zero inputs draw less power and flatter the
// clock), best of `reps` after a warm-up, in TFLOP/s: 2·n³ / seconds / 1e12.
double measure_gemm_tflops(int n = 8192, int reps = 10);

// The memory system's nominal bandwidth from the driver's attributes (2 · memory clock · bus
// width, double data rate), GB/s; 0 when the driver does not report them.
double nominal_memory_gb_s();

}  // namespace stitch::cuda

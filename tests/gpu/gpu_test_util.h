// Shared by the `make test-gpu` files: every case calls skipped() first, so that on a machine
// without a GPU (or in a build without CUDA) it prints why and passes instead of failing.
#pragma once
#include <doctest/doctest.h>

#include <cstdio>
#include <string>

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace test {

// Why GPU tests cannot run here, or empty when they can.
inline std::string gpu_skip_reason() {
#ifdef STITCH_HAVE_CUDA
    std::string why;
    if (stitch::cuda::device_count(&why) == 0) return "no CUDA device (" + why + ")";
    return "";
#else
    return "this build has no CUDA (nvcc was not found)";
#endif
}

// True (after saying so) when `what` cannot run here.
inline bool gpu_skipped(const char* what) {
    const std::string why = gpu_skip_reason();
    if (why.empty()) return false;
    std::printf("test-gpu: skipped %s: %s\n", what, why.c_str());
    MESSAGE("skipped: ", why);
    return true;
}

}  // namespace test

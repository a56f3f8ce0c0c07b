// CUDA devices as the rest of stitch sees them: plain C++, no CUDA headers, so any
// translation unit may ask. Only built when nvcc exists (STITCH_HAVE_CUDA).
#pragma once
#include <string>

namespace stitch::cuda {

// Usable CUDA devices; 0 when there is none or no driver (then *why, if given, says why).
// Never throws, so a GPU-less machine simply runs on the CPU.
int device_count(std::string* why = nullptr);
// "NVIDIA H100 80GB HBM3 (sm_90)" — for logs and map metadata.
std::string device_name(int device = 0);

}  // namespace stitch::cuda

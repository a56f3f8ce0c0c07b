// The host-compiler half of cuda_util.h: CUDA and cuBLAS failures as stitch::Error. Plain
// C++ (no CUDA headers), so it builds everywhere; only CUDA builds call it.
#include <string>

#include "engine/error.h"

namespace stitch::cuda {

[[noreturn]] void throw_error(const char* file, const std::string& msg) { throw Error(file, msg); }

}  // namespace stitch::cuda

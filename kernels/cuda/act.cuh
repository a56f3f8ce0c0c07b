// The gated activations of the MLP on the device, one element at a time: act(g) · u for SwiGLU
// and GeGLU, in the CPU twin's float expressions (kernels/cpu/ops_cpu.h gated_act). Shared by the
// gated_act kernel (ops_elementwise.cu) and the decode GEMV that applies it to its input on the
// fly (gemm.cu), so both give the same floats. nvcc only.
#pragma once
#include <cuda_runtime.h>

#include "engine/model_config.h"

namespace stitch::cuda {

__device__ __forceinline__ float gated(Activation act, float g, float u) {
    switch (act) {
        case Activation::SiLU: return g / (1.0f + expf(-g)) * u;
        case Activation::GeluTanh: {
            // 0.5·g·(1 + tanh(z)) written as g / (1 + e^(-2z)), the CPU twin's form
            constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
            const float z = kBeta * (g + kKappa * g * g * g);
            return g / (1.0f + expf(-2.0f * z)) * u;
        }
        default: return g * 0.5f * (1.0f + erff(g * 0.70710678118654752f)) * u;  // Gelu
    }
}

}  // namespace stitch::cuda

// y[n, out] = x[n, in] · W[out, in]ᵀ (+ bias) with bf16 W (kernels/cuda/ops.cuh, GemmContext).
//
// Decode (n ≤ kSmallRows) is bound by reading W once: a hand-written kernel streams W rows
// (16-byte vector loads when rows are 16-byte aligned, else scalar), keeps x in f32, and gives
// each block kOutPerBlock output features for all n rows (its warps splitting the input), so
// every x value it loads is used kOutPerBlock times from registers. Prefill is compute-bound: x goes to bf16 in the context's
// scratch and cuBLAS multiplies on the tensor cores with f32 accumulation (CUBLAS_COMPUTE_32F).
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda {
namespace {

constexpr int kGemvWarps = 8;    // warps per block, splitting the input dimension
constexpr int kOutPerBlock = 4;  // outputs per block: each W value loaded is used for every row of x

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float bf16_bits(unsigned bits) {
    __nv_bfloat16_raw r;
    r.x = static_cast<unsigned short>(bits);
    return __bfloat162float(__nv_bfloat16(r));
}

// Eight bf16 (one 16-byte load) widened to f32, unpacked from the loaded words with shifts
// rather than by reading them through another type (which C++ aliasing rules forbid).
__device__ __forceinline__ void load8(float (&w)[8], const bf16* p) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        w[2 * t] = bf16_bits(words[t] & 0xffffu);  // little-endian: the lower address is the low half
        w[2 * t + 1] = bf16_bits(words[t] >> 16);
    }
}

// Block b computes outputs [b·kOutPerBlock, +kOutPerBlock) for the NR rows of x, its kGemvWarps
// warps splitting the input dimension: so a 2048-wide output (o_proj, down) still makes 512
// blocks, enough to keep every SM's memory pipeline full, where one warp per output group made
// 64 and left half of an H100 idle. Each lane keeps kOutPerBlock × NR partial sums; the warps'
// sums meet in shared memory, in a fixed order. VEC: in % 8 == 0 and W, x 16-byte aligned, so
// W row o starts 16-byte aligned and x row r too (in·4 bytes is a multiple of 32); thread t of
// the block then takes elements [8t, 8t + 8), [8t + 8·256, …), ….
//
// GATED: x is the MLP's gate_up [NR, 2·in] and the input row is gated(act, gate, up) (act.cuh),
// computed as it is loaded: the down projection without a separate gated_act pass.
template <int NR, bool VEC, bool GATED>
__global__ void __launch_bounds__(32 * kGemvWarps) gemv_bf16_kernel(float* y, const float* x, const bf16* W,
                                                                     const float* bias, int out, int in, Activation act) {
    const int64_t x_ld = GATED ? 2 * int64_t(in) : in;  // floats from one input row to the next
    __shared__ float part[kGemvWarps][NR][kOutPerBlock];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int o0 = blockIdx.x * kOutPerBlock;
    const int nout = min(kOutPerBlock, out - o0);
    constexpr int kThreads = 32 * kGemvWarps;
    float acc[NR][kOutPerBlock];
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
        for (int o = 0; o < kOutPerBlock; ++o) acc[r][o] = 0;

    if constexpr (VEC) {
        const int nvec = in / 8;
        for (int v = threadIdx.x; v < nvec; v += kThreads) {
            float w[kOutPerBlock][8];
#pragma unroll
            for (int o = 0; o < kOutPerBlock; ++o) {
                if (o < nout) {
                    load8(w[o], W + int64_t(o0 + o) * in + int64_t(v) * 8);
                } else {
#pragma unroll
                    for (int t = 0; t < 8; ++t) w[o][t] = 0;
                }
            }
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                const float4* xr = reinterpret_cast<const float4*>(x + r * x_ld + int64_t(v) * 8);
                const float4 a = xr[0], b = xr[1];
                float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                if constexpr (GATED) {
                    const float4* ur = reinterpret_cast<const float4*>(x + r * x_ld + in + int64_t(v) * 8);
                    const float4 c = ur[0], e = ur[1];
                    const float us[8] = {c.x, c.y, c.z, c.w, e.x, e.y, e.z, e.w};
#pragma unroll
                    for (int t = 0; t < 8; ++t) xs[t] = gated(act, xs[t], us[t]);
                }
#pragma unroll
                for (int o = 0; o < kOutPerBlock; ++o)
#pragma unroll
                    for (int t = 0; t < 8; ++t) acc[r][o] += xs[t] * w[o][t];
            }
        }
    } else {
        for (int k = threadIdx.x; k < in; k += kThreads) {
            float w[kOutPerBlock];
#pragma unroll
            for (int o = 0; o < kOutPerBlock; ++o) w[o] = o < nout ? __bfloat162float(W[int64_t(o0 + o) * in + k]) : 0.0f;
#pragma unroll
            for (int r = 0; r < NR; ++r) {
                const float xv = GATED ? gated(act, x[r * x_ld + k], x[r * x_ld + in + k]) : x[r * x_ld + k];
#pragma unroll
                for (int o = 0; o < kOutPerBlock; ++o) acc[r][o] += xv * w[o];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
        for (int o = 0; o < kOutPerBlock; ++o) {
            const float v = warp_sum(acc[r][o]);
            if (lane == 0) part[warp][r][o] = v;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < NR * kOutPerBlock; i += kThreads) {
        const int r = i / kOutPerBlock, o = i - r * kOutPerBlock;
        if (o >= nout) continue;
        float v = 0;
#pragma unroll
        for (int w = 0; w < kGemvWarps; ++w) v += part[w][r][o];
        y[int64_t(r) * out + o0 + o] = v + (bias ? bias[o0 + o] : 0.0f);
    }
}

template <int NR, bool GATED>
void launch_gemv(cudaStream_t stream, float* y, const float* x, const bf16* W, const float* bias, int out, int in,
                 Activation act) {
    const unsigned blocks = unsigned((int64_t(out) + kOutPerBlock - 1) / kOutPerBlock);
    const bool vec = in % 8 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (vec)
        gemv_bf16_kernel<NR, true, GATED><<<blocks, 32 * kGemvWarps, 0, stream>>>(y, x, W, bias, out, in, act);
    else
        gemv_bf16_kernel<NR, false, GATED><<<blocks, 32 * kGemvWarps, 0, stream>>>(y, x, W, bias, out, in, act);
    CUDA_CHECK(cudaGetLastError());
}

// The GEMV for n ≤ kSmallRows rows, one instantiation per row count.
template <bool GATED>
void gemv(cudaStream_t stream, float* y, const float* x, const bf16* W, const float* bias, int n, int out, int in,
          Activation act) {
    switch (n) {
        case 1: launch_gemv<1, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 2: launch_gemv<2, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 3: launch_gemv<3, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 4: launch_gemv<4, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 5: launch_gemv<5, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 6: launch_gemv<6, GATED>(stream, y, x, W, bias, out, in, act); break;
        case 7: launch_gemv<7, GATED>(stream, y, x, W, bias, out, in, act); break;
        default: launch_gemv<8, GATED>(stream, y, x, W, bias, out, in, act); break;
    }
    static_assert(GemmContext::kSmallRows == 8, "one gemv instantiation per row count up to kSmallRows");
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t count, int out) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        y[i] += bias[i % out];
}

}  // namespace

GemmContext::GemmContext(cudaStream_t stream) : stream_(stream) {
    const CublasApi& api = cublas();
    CUBLAS_CHECK(api.create(&handle_));
    CUBLAS_CHECK(api.set_stream(handle_, stream_));
}

GemmContext::~GemmContext() {
    if (handle_) cublas().destroy(handle_);
    if (x_bf16_) {
        cudaStreamSynchronize(stream_);  // a queued GEMM may still read it; errors cannot escape a destructor
        cudaFree(x_bf16_);
    }
}

void GemmContext::matmul_wt(float* y, const float* x, const bf16* W, const float* bias, int n, int out, int in) {
    if (n <= 0 || out <= 0) return;
    if (n <= kSmallRows) {
        gemv<false>(stream_, y, x, W, bias, n, out, in, Activation::SiLU);
        return;
    }
    const size_t need = size_t(n) * size_t(in);
    if (need > x_cap_) {
        // Grown rarely (the first prefill of each new size record), so a plain synchronous
        // reallocation: a GEMM still queued on stream_ may be reading the old buffer.
        if (x_bf16_) {
            CUDA_CHECK(cudaStreamSynchronize(stream_));
            CUDA_CHECK(cudaFree(x_bf16_));
            x_bf16_ = nullptr;
            x_cap_ = 0;
        }
        CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&x_bf16_), need * sizeof(bf16)));
        x_cap_ = need;
    }
    to_bf16(stream_, x_bf16_, x, int64_t(need));
    // Row-major y[n, out] is column-major yᵀ[out, n] = Wᵀ-view · xᵀ-view: W read as a
    // column-major [in, out] matrix (lda = in) and transposed, x as column-major [in, n].
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublas().gemm_ex(handle_, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_16BF, in, x_bf16_,
                                  CUDA_R_16BF, in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) {
        const int64_t count = int64_t(n) * out;
        const int64_t blocks = std::min<int64_t>((count + 255) / 256, 1 << 20);
        add_bias_kernel<<<unsigned(blocks), 256, 0, stream_>>>(y, bias, count, out);
        CUDA_CHECK(cudaGetLastError());
    }
}

void GemmContext::matmul_gated(float* y, const float* gate_up, Activation act, float* scratch, const bf16* W,
                               const float* bias, int n, int out, int in) {
    if (n <= 0 || out <= 0) return;
    if (n <= kSmallRows) {
        gemv<true>(stream_, y, gate_up, W, bias, n, out, in, act);
        return;
    }
    gated_act(stream_, act, scratch, gate_up, n, in);
    matmul_wt(y, scratch, W, bias, n, out, in);
}

}  // namespace stitch::cuda

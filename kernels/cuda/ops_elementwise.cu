// The forward pass's memory-bound ops (kernels/cuda/ops.cuh): conversions, norms, RoPE, gated
// activations, soft-cap, residual adds, row copies, greedy argmax and the steering row ops.
// Each is the plainest kernel that reads and writes every element once; the float expressions
// follow the CPU twins in kernels/cpu/ops_cpu.cpp term by term so the op-by-op test
// (tests/gpu/test_ops_gpu.cpp) can hold them to ~1e-6. No --use_fast_math: expf, tanhf, erff,
// sincosf, sqrtf and division are the accurate (IEEE or ≤ 2 ulp) versions.
#include <climits>
#include <cmath>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda {
namespace {

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over count elements: enough to fill any GPU, never more than
// the count needs.
unsigned grid_for(int64_t count) {
    const int64_t blocks = (count + kBlock - 1) / kBlock;
    return unsigned(blocks < 1 ? 1 : blocks > (1 << 20) ? (1 << 20) : blocks);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the whole block, returned to every thread. Every thread must call it; blockDim.x
// is a multiple of 32 and at most 1024.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < int(blockDim.x >> 5) ? partial[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

__global__ void to_bf16_kernel(bf16* dst, const float* src, int64_t count) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

__global__ void embed_kernel(float* x, const bf16* table, const int32_t* tokens, int d, float scale) {
    const int64_t row = blockIdx.x;
    const bf16* src = table + int64_t(tokens[row]) * d;
    float* dst = x + row * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dst[j] = __bfloat162float(src[j]) * scale;
}

// One block per row.
__global__ void rmsnorm_kernel(float* y, const float* x, const float* w, int d, float eps) {
    const int64_t row = blockIdx.x;
    const float* xi = x + row * d;
    float* yi = y + row * d;
    float ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xi[j] * xi[j];
    ss = block_sum(ss);  // its barriers also order every read of xi before any write when y == x
    const float inv = 1.0f / sqrtf(ss / float(d) + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) yi[j] = (xi[j] * inv) * w[j];
}

// rmsnorm_kernel after x += r, in the same pass: every thread adds, then squares, the elements it
// later normalises, so the floats are those of add + rmsnorm.
__global__ void add_rmsnorm_kernel(float* x, const float* r, float* y, const float* w, int d, float eps) {
    const int64_t row = blockIdx.x;
    float* xi = x + row * d;
    const float* ri = r + row * d;
    float* yi = y + row * d;
    float ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = xi[j] + ri[j];
        xi[j] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / float(d) + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) yi[j] = (xi[j] * inv) * w[j];
}

// One warp per (row, head): blockIdx.x is the row, blockIdx.y · warps + warp the head.
__global__ void head_rmsnorm_kernel(float* x, int stride, int col0, int n_heads, int head_dim, const float* w,
                                    float eps) {
    const int lane = threadIdx.x & 31;
    const int h = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (h >= n_heads) return;  // whole warp
    float* v = x + int64_t(blockIdx.x) * stride + col0 + int64_t(h) * head_dim;
    float ss = 0;
    for (int j = lane; j < head_dim; j += 32) ss += v[j] * v[j];
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / float(head_dim) + eps);
    for (int j = lane; j < head_dim; j += 32) v[j] = (v[j] * inv) * w[j];
}

// One block per row: the row's cos/sin table (head_dim/2 pairs) is built once in shared memory
// and used by every head. With k_base (rope_append), heads [k_head0, n_heads) are the row's k:
// their rotated values also go to its sequence's cache, and the (n_heads − k_head0)·head_dim
// floats after them (its v) too.
__global__ void rope_kernel(float* x, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
                            const float* inv_freq, int k_head0, const int32_t* slot, float* const* k_base,
                            float* const* v_base) {
    extern __shared__ float cs_sn[];  // [half] cos, then [half] sin
    const int half = head_dim / 2;
    float* cs = cs_sn;
    float* sn = cs_sn + half;
    const int64_t row = blockIdx.x;
    const float p = float(pos[row]);
    for (int k = threadIdx.x; k < half; k += blockDim.x) {
        const float a = p * inv_freq[k];  // f32 angle, as HF and the CPU twin compute it
        cs[k] = cosf(a);
        sn[k] = sinf(a);
    }
    __syncthreads();
    float* base = x + row * stride + col0;
    const int kvd = (n_heads - k_head0) * head_dim;
    float* kc = k_base ? k_base[slot[row]] + int64_t(pos[row]) * kvd : nullptr;
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        const int h = t / half, k = t % half;
        float* v = base + int64_t(h) * head_dim;
        const float a = v[k], b = v[k + half];
        const float ra = a * cs[k] - b * sn[k], rb = b * cs[k] + a * sn[k];
        v[k] = ra;
        v[k + half] = rb;
        if (kc && h >= k_head0) {
            float* kh = kc + int64_t(h - k_head0) * head_dim;
            kh[k] = ra;
            kh[k + half] = rb;
        }
    }
    if (k_base) {
        float* vc = v_base[slot[row]] + int64_t(pos[row]) * kvd;
        const float* vr = base + int64_t(n_heads) * head_dim;
        for (int j = threadIdx.x; j < kvd; j += blockDim.x) vc[j] = vr[j];
    }
}

__global__ void gated_act_kernel(Activation act, float* out, const float* gate_up, int64_t count, int I) {
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < count;
         idx += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = idx / I, j = idx % I;
        out[idx] = gated(act, gate_up[i * 2 * I + j], gate_up[i * 2 * I + I + j]);
    }
}

__global__ void softcap_kernel(float* x, int64_t count, float cap) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        x[i] = tanhf(x[i] / cap) * cap;
}

__global__ void add_kernel(float* x, const float* y, int64_t count) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        x[i] += y[i];
}

// One block per row. Rows must not overlap unless dst == src (the forward pass's gather copies
// one row at a time, sometimes onto itself).
__global__ void copy2d_kernel(float* dst, int dst_ld, const float* src, int src_ld, int cols) {
    const int64_t row = blockIdx.x;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) dst[row * dst_ld + j] = src[row * src_ld + j];
}

// (value, index) pairs ordered as greedy decoding wants: larger value first, then the lower
// index. NaN never wins (a NaN compares false), as in the CPU twin unless the row starts with one.
__device__ __forceinline__ bool better(float v, int i, float best_v, int best_i) {
    return v > best_v || (v == best_v && i < best_i);
}

// One block per row.
__global__ void argmax_kernel(int32_t* out, const float* x, int cols) {
    __shared__ float sv[kBlock];
    __shared__ int si[kBlock];
    const float* row = x + int64_t(blockIdx.x) * cols;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        if (better(row[j], j, bv, bi)) bv = row[j], bi = j;
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (int(threadIdx.x) < half) {
            const float v = sv[threadIdx.x + half];
            const int i = si[threadIdx.x + half];
            if (better(v, i, sv[threadIdx.x], si[threadIdx.x])) sv[threadIdx.x] = v, si[threadIdx.x] = i;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] == INT_MAX ? 0 : si[0];  // an all-NaN row: 0, as on the CPU
}

// Steering: one block per selected row (rows are distinct, so blocks never share a row).
__global__ void add_rows_kernel(float* x, int d, const int32_t* rows, const float* v, float alpha) {
    float* row = x + int64_t(rows[blockIdx.x]) * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) row[j] += alpha * v[j];
}

__global__ void ablate_rows_kernel(float* x, int d, const int32_t* rows, const float* u, float alpha) {
    float* row = x + int64_t(rows[blockIdx.x]) * d;
    float dot = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += row[j] * u[j];
    const float f = alpha * block_sum(dot);  // the barriers order every read before any write
    for (int j = threadIdx.x; j < d; j += blockDim.x) row[j] -= f * u[j];
}

__global__ void replace_rows_kernel(float* x, int d, const int32_t* rows, const float* src, int64_t src_ld, float alpha) {
    float* row = x + int64_t(rows[blockIdx.x]) * d;
    const float* s = src + int64_t(blockIdx.x) * src_ld;
    if (alpha == 1.0f) {
        for (int j = threadIdx.x; j < d; j += blockDim.x) row[j] = s[j];
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) row[j] = (1.0f - alpha) * row[j] + alpha * s[j];
    }
}

}  // namespace

void to_bf16(cudaStream_t stream, bf16* dst, const float* src, int64_t count) {
    if (count <= 0) return;
    to_bf16_kernel<<<grid_for(count), kBlock, 0, stream>>>(dst, src, count);
    CUDA_CHECK(cudaGetLastError());
}

void embed(cudaStream_t stream, float* x, const bf16* table, const int32_t* tokens, int n, int d, float scale) {
    if (n <= 0 || d <= 0) return;
    embed_kernel<<<n, kBlock, 0, stream>>>(x, table, tokens, d, scale);
    CUDA_CHECK(cudaGetLastError());
}

void rmsnorm(cudaStream_t stream, float* y, const float* x, const float* w, int n, int d, float eps) {
    if (n <= 0 || d <= 0) return;
    rmsnorm_kernel<<<n, kBlock, 0, stream>>>(y, x, w, d, eps);
    CUDA_CHECK(cudaGetLastError());
}

void add_rmsnorm(cudaStream_t stream, float* x, const float* r, float* y, const float* w, int n, int d, float eps) {
    if (n <= 0 || d <= 0) return;
    add_rmsnorm_kernel<<<n, kBlock, 0, stream>>>(x, r, y, w, d, eps);
    CUDA_CHECK(cudaGetLastError());
}

void head_rmsnorm(cudaStream_t stream, float* x, int n, int stride, int col0, int n_heads, int head_dim,
                  const float* w, float eps) {
    if (n <= 0 || n_heads <= 0 || head_dim <= 0) return;
    constexpr int kWarps = 4;
    head_rmsnorm_kernel<<<dim3(unsigned(n), unsigned((n_heads + kWarps - 1) / kWarps)), 32 * kWarps, 0, stream>>>(
        x, stride, col0, n_heads, head_dim, w, eps);
    CUDA_CHECK(cudaGetLastError());
}


void rope_append(cudaStream_t stream, float* qkv, int n, int stride, int n_heads, int n_kv_heads, int head_dim,
                 const int32_t* pos, const float* inv_freq, const int32_t* slot, float* const* k_base,
                 float* const* v_base) {
    if (n <= 0 || head_dim < 2) return;
    const size_t shared = sizeof(float) * size_t(head_dim / 2) * 2;
    rope_kernel<<<n, 128, shared, stream>>>(qkv, stride, 0, n_heads + n_kv_heads, head_dim, pos, inv_freq, n_heads, slot,
                                           k_base, v_base);
    CUDA_CHECK(cudaGetLastError());
}

void rope(cudaStream_t stream, float* x, int n, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq) {
    if (n <= 0 || n_heads <= 0 || head_dim < 2) return;
    const size_t shared = sizeof(float) * size_t(head_dim / 2) * 2;
    rope_kernel<<<n, 128, shared, stream>>>(x, stride, col0, n_heads, head_dim, pos, inv_freq, n_heads, nullptr, nullptr,
                                           nullptr);
    CUDA_CHECK(cudaGetLastError());
}

void gated_act(cudaStream_t stream, Activation act, float* out, const float* gate_up, int n, int I) {
    const int64_t count = int64_t(n) * I;
    if (count <= 0) return;
    gated_act_kernel<<<grid_for(count), kBlock, 0, stream>>>(act, out, gate_up, count, I);
    CUDA_CHECK(cudaGetLastError());
}

void softcap(cudaStream_t stream, float* x, int64_t count, float cap) {
    if (count <= 0) return;
    softcap_kernel<<<grid_for(count), kBlock, 0, stream>>>(x, count, cap);
    CUDA_CHECK(cudaGetLastError());
}

void add(cudaStream_t stream, float* x, const float* y, int64_t count) {
    if (count <= 0) return;
    add_kernel<<<grid_for(count), kBlock, 0, stream>>>(x, y, count);
    CUDA_CHECK(cudaGetLastError());
}

void copy2d(cudaStream_t stream, float* dst, int dst_ld, const float* src, int src_ld, int rows, int cols) {
    if (rows <= 0 || cols <= 0 || dst == src) return;
    copy2d_kernel<<<rows, cols < kBlock ? 32 * ((cols + 31) / 32) : kBlock, 0, stream>>>(dst, dst_ld, src, src_ld,
                                                                                          cols);
    CUDA_CHECK(cudaGetLastError());
}

void argmax_rows(cudaStream_t stream, int32_t* out, const float* x, int n, int cols) {
    if (n <= 0) return;
    argmax_kernel<<<n, kBlock, 0, stream>>>(out, x, cols);
    CUDA_CHECK(cudaGetLastError());
}

void add_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* v, float alpha) {
    if (n_rows <= 0 || d <= 0) return;
    add_rows_kernel<<<n_rows, kBlock, 0, stream>>>(x, d, rows, v, alpha);
    CUDA_CHECK(cudaGetLastError());
}

void ablate_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* u, float alpha) {
    if (n_rows <= 0 || d <= 0) return;
    ablate_rows_kernel<<<n_rows, kBlock, 0, stream>>>(x, d, rows, u, alpha);
    CUDA_CHECK(cudaGetLastError());
}

void replace_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* src, int64_t src_ld,
                  float alpha) {
    if (n_rows <= 0 || d <= 0) return;
    replace_rows_kernel<<<n_rows, kBlock, 0, stream>>>(x, d, rows, src, src_ld, alpha);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace stitch::cuda

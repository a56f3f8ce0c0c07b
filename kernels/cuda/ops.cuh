// The forward pass's op set on the GPU (nvcc only; plain-C++ callers go through
// kernels/cuda/forward_cuda.h and kernels/cuda/ops_check.h). Every op here has a CPU twin in
// kernels/cpu/ops_cpu.h with the same meaning and layout (row-major, a row is a token), and
// `make test-gpu` compares the two op by op on awkward shapes (tests/gpu/test_ops_gpu.cpp).
//
// Numerics (DESIGN.md §4): activations, the residual stream, norms, RoPE, softmax and the KV
// cache are float32; GEMM weights and the embedding table are bf16 (converted once at upload),
// multiplied with f32 accumulation. Every pointer is device memory unless a comment says
// otherwise; every op is asynchronous on `stream`.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/model_config.h"

namespace stitch::cuda {

using bf16 = __nv_bfloat16;

// dst[i] = bf16(src[i]) (round to nearest even), count elements.
void to_bf16(cudaStream_t stream, bf16* dst, const float* src, int64_t count);

// x[i] = float(table[tokens[i]]) · scale for n rows of width d. The scale is applied in f32
// after the bf16 → f32 conversion (scale 1: an exact copy of the stored bf16 value).
void embed(cudaStream_t stream, float* x, const bf16* table, const int32_t* tokens, int n, int d, float scale);

// y = x / sqrt(mean(x²) + eps) · w per row of d (y may alias x); w is f32 (Gemma's 1 + w
// already folded in at load, as on the CPU).
void rmsnorm(cudaStream_t stream, float* y, const float* x, const float* w, int n, int d, float eps);

// x += r, then y = rmsnorm(x) · w (y must not alias x or r): add and rmsnorm in one pass over x,
// the same floats as the two calls (each thread adds, squares and normalises the same elements).
void add_rmsnorm(cudaStream_t stream, float* x, const float* r, float* y, const float* w, int n, int d, float eps);

// RMSNorm over each of n_heads head_dim-wide slices starting at column col0 of rows of
// `stride` floats, in place (Qwen 3 / Gemma 3 q/k norms).
void head_rmsnorm(cudaStream_t stream, float* x, int n, int stride, int col0, int n_heads, int head_dim,
                  const float* w, float eps);

// HF half-rotation RoPE in place: for each of n_heads heads of head_dim starting at column col0
// of rows of `stride` floats, x[i] and x[i + hd/2] rotated by pos[row] · inv_freq[i].
// pos: [n] device; inv_freq: [head_dim/2] device. Angles are computed in f32 like the CPU twin.
void rope(cudaStream_t stream, float* x, int n, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq);

// A fused qkv block [n, stride] (q heads, then k heads, then v, each head_dim wide) gets RoPE on
// its q and k heads (rope's rotation, the same floats), and each row's rotated k and its v go to
// its sequence's cache: k_base[slot[r]] / v_base[slot[r]] + pos[r] · (n_kv_heads · head_dim).
// What rope on q, rope on k and the cache append do, in one launch.
void rope_append(cudaStream_t stream, float* qkv, int n, int stride, int n_heads, int n_kv_heads, int head_dim,
                 const int32_t* pos, const float* inv_freq, const int32_t* slot, float* const* k_base,
                 float* const* v_base);

// out[n, I] = act(gate_up[:, :I]) · gate_up[:, I:] (SwiGLU / GeGLU; see ops_cpu.h for each act).
void gated_act(cudaStream_t stream, Activation act, float* out, const float* gate_up, int n, int I);

// x = cap · tanh(x / cap) over count floats.
void softcap(cudaStream_t stream, float* x, int64_t count, float cap);

// x += y over count floats.
void add(cudaStream_t stream, float* x, const float* y, int64_t count);

// dst rows (stride dst_ld) = src rows (stride src_ld), rows × cols floats.
void copy2d(cudaStream_t stream, float* dst, int dst_ld, const float* src, int src_ld, int rows, int cols);

// Causal attention of packed sequences over their KV caches, same contract as
// cpu::attention (kernels/cpu/ops_cpu.h): sequence s owns rows [row0[s], row0[s] + len[s]) of
// q/out at absolute positions pos0[s] + i; its keys/values are k_base[s] / v_base[s], rows
// [0, pos0[s] + len[s]) of kv_stride floats. window 0 = full causal, else W keys counting the
// query's own; softcap 0 = off. row0/len/pos0/k_base/v_base are device arrays of n_seqs.
// max_len = max over s of len[s] and max_ctx = max over s of pos0[s] + len[s] (host values,
// for the launch grid). Flash-style: no [T, T] score matrix is materialised; prefill tiles
// queries × keys with an online softmax, decode (len 1) splits the keys across blocks.
void attention(cudaStream_t stream, float* out, const float* q, int q_stride, int n_seqs, const int32_t* row0,
               const int32_t* len, const int32_t* pos0, const float* const* k_base, const float* const* v_base,
               int kv_stride, int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap,
               int max_len, int max_ctx);

// Which prefill attention kernel runs: 1 or -1 (default) the tensor-core one (TF32 products,
// f32 softmax and accumulation) where the GPU grants its shared memory, else the CUDA-core one;
// 0 the CUDA-core one always (full f32). Decode is unaffected. Tests run both.
void set_prefill_attention(int mode);
// Whether a prefill with this head_dim runs on the tensor-core kernel here.
bool prefill_on_tensor_cores(int head_dim);

// GEMMs: y[n, out] = x[n, in] · W[out, in]ᵀ (+ bias[out]) with bf16 W, f32 x, y, bias and f32
// accumulation. Small n (decode) runs a hand-written bandwidth-bound kernel that reads x in f32;
// larger n converts x to bf16 in the context's scratch and calls cublasGemmEx
// (CUBLAS_COMPUTE_32F). One GemmContext per stream.
class GemmContext {
public:
    explicit GemmContext(cudaStream_t stream);
    ~GemmContext();
    GemmContext(const GemmContext&) = delete;
    GemmContext& operator=(const GemmContext&) = delete;
    cudaStream_t stream() const { return stream_; }
    // Rows at or below which matmul_wt uses the GEMV-style kernel instead of cuBLAS.
    static constexpr int kSmallRows = 8;
    void matmul_wt(float* y, const float* x, const bf16* W, const float* bias, int n, int out, int in);
    // y = gated_act(act, gate_up) · Wᵀ (+ bias), gate_up [n, 2·in]: the MLP's down projection.
    // Small n folds the activation into the GEMV's loads (no pass over an [n, in] buffer, one
    // kernel fewer per layer of a decode step); larger n writes it to scratch [n, in] first.
    // The same floats either way.
    void matmul_gated(float* y, const float* gate_up, Activation act, float* scratch, const bf16* W, const float* bias,
                      int n, int out, int in);

private:
    cudaStream_t stream_;
    cublasHandle_t handle_ = nullptr;
    bf16* x_bf16_ = nullptr;  // scratch, grown on demand
    size_t x_cap_ = 0;
};

// out[i] = the first index of the maximum of row i of x[n, cols] (torch.argmax's tie rule).
void argmax_rows(cudaStream_t stream, int32_t* out, const float* x, int n, int cols);

// out[i] = cpu::sample_row(row i of x[n, cols], temperature, top_k, top_p, u[i]) (kernels/cpu/
// ops_cpu.h has the rule): temperature ≤ 0 is argmax_rows; else one block per row finds the
// top-k / top-p cut-offs by bisection (no sort) and draws in vocabulary order. u: [n] device;
// scratch: sample_scratch_bytes(n, cols) bytes of device memory.
size_t sample_scratch_bytes(int n, int cols);
void sample_rows(cudaStream_t stream, int32_t* out, const float* x, int n, int cols, float temperature, int top_k,
                 float top_p, const double* u, void* scratch);

// Steering at selected rows of x[*, d] (rows: device array of n_rows row indices):
//   add_rows      x[r] += alpha · v
//   ablate_rows   x[r] -= alpha · (x[r] · u) u     (u a unit vector)
//   replace_rows  x[r] = (1 − alpha) · x[r] + alpha · src[i]   (src row i, for rows[i], at src + i · src_ld:
//                 src_ld d for a row each, 0 for one vector for every row)
void add_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* v, float alpha);
void ablate_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* u, float alpha);
void replace_rows(cudaStream_t stream, float* x, int d, const int32_t* rows, int n_rows, const float* src, int64_t src_ld,
                  float alpha);

}  // namespace stitch::cuda

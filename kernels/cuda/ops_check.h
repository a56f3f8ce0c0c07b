// Host-vector wrappers of every op in kernels/cuda/ops.cuh, for tests compiled by the host
// compiler (tests/gpu/test_ops_gpu.cpp cannot include CUDA headers). Each call uploads its
// inputs, runs the op on a fresh stream, downloads the result and synchronises; nothing here is
// meant to be fast. Shapes and meanings are those of ops.cuh and the CPU twins
// (kernels/cpu/ops_cpu.h). Only built when nvcc exists (STITCH_HAVE_CUDA); throws stitch::Error
// on any CUDA failure.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace stitch::cuda::check {

// GemmContext::kSmallRows: matmul_wt keeps x in f32 at or below this many rows, rounds it to
// bf16 for cuBLAS above (references must round it too).
inline constexpr int kGemmSmallRows = 8;

// float(bf16(x)) per element, through cuda::to_bf16.
std::vector<float> to_bf16(const std::vector<float>& x);

// table [vocab, d] in f32 is rounded to bf16 on the device first (as a model upload does).
std::vector<float> embed(const std::vector<float>& table, const std::vector<int32_t>& tokens, int d, float scale);

std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int n, int d, float eps);
// x += r, y = rmsnorm(x) · w, by the fused kernel or by add then rmsnorm; returns y then x.
std::vector<float> add_rmsnorm(const std::vector<float>& x, const std::vector<float>& r, const std::vector<float>& w,
                               int n, int d, float eps, bool fused);
// x: [n, stride]; returns x with the head slices normalised.
std::vector<float> head_rmsnorm(const std::vector<float>& x, int n, int stride, int col0, int n_heads, int head_dim,
                                const std::vector<float>& w, float eps);
// x: [n, stride]; pos: [n]; inv_freq: [head_dim / 2].
std::vector<float> rope(const std::vector<float>& x, int n, int stride, int col0, int n_heads, int head_dim,
                        const std::vector<int32_t>& pos, const std::vector<float>& inv_freq);
// cuda::rope_append on a fused qkv block [n, stride] (q heads, k heads, v) with n_slots zeroed
// caches of `capacity` positions; returns the rotated qkv, then every slot's K cache, then V.
std::vector<float> rope_append(const std::vector<float>& qkv, int n, int stride, int n_heads, int n_kv_heads,
                               int head_dim, const std::vector<int32_t>& pos, const std::vector<float>& inv_freq,
                               const std::vector<int32_t>& slot, int n_slots, int capacity);
std::vector<float> gated_act(Activation act, const std::vector<float>& gate_up, int n, int I);
std::vector<float> softcap(const std::vector<float>& x, float cap);
std::vector<float> add(const std::vector<float>& x, const std::vector<float>& y);
// Returns dst after copying rows × cols of src into it.
std::vector<float> copy2d(const std::vector<float>& dst, int dst_ld, const std::vector<float>& src, int src_ld,
                          int rows, int cols);

// Packed sequences as cpu::attention takes them; k[s] / v[s] are sequence s's cache rows
// [0, pos0[s] + len[s]) of kv_stride floats. Returns out [rows, n_heads · head_dim] with
// rows = max over s of row0[s] + len[s].
std::vector<float> attention(const std::vector<float>& q, int q_stride, const std::vector<int32_t>& row0,
                             const std::vector<int32_t>& len, const std::vector<int32_t>& pos0,
                             const std::vector<std::vector<float>>& k, const std::vector<std::vector<float>>& v,
                             int kv_stride, int n_heads, int n_kv_heads, int head_dim, float scale, int window,
                             float softcap);

// y[n, out] = x · Wᵀ (+ bias; empty = none) through GemmContext, W [out, in] rounded to bf16 on
// the device first.
std::vector<float> matmul_wt(const std::vector<float>& x, const std::vector<float>& W, const std::vector<float>& bias,
                             int n, int out, int in);
// GemmContext::matmul_gated: y = gated_act(act, gate_up [n, 2·in]) · Wᵀ (+ bias), W rounded to
// bf16; fused = false runs gated_act and matmul_wt separately instead (for comparing the two).
std::vector<float> matmul_gated(const std::vector<float>& gate_up, Activation act, const std::vector<float>& W,
                                const std::vector<float>& bias, int n, int out, int in, bool fused);

// cuda::set_prefill_attention (kernels/cuda/ops.cuh): 0 CUDA cores only, -1 default.
void set_prefill_attention(int mode);
std::vector<int32_t> argmax_rows(const std::vector<float>& x, int n, int cols);
std::vector<int32_t> sample_rows(const std::vector<float>& x, int n, int cols, float temperature, int top_k, float top_p,
                                 const std::vector<double>& u);

// Return x [*, d] after the steering op at `rows` (see ops.cuh); replace_rows's src is one row per
// selected row, or a single [d] vector for every row (src_ld 0).
std::vector<float> add_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                            const std::vector<float>& v, float alpha);
std::vector<float> ablate_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                               const std::vector<float>& u, float alpha);
std::vector<float> replace_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                                const std::vector<float>& src, float alpha);

}  // namespace stitch::cuda::check

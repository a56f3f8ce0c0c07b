// CPU implementations of every op in the forward pass (float32). They are the reference
// the CUDA kernels are compared against, and the test path on machines with no GPU.
// Matrices are row-major; a "row" is one token.
#pragma once
#include <cstdint>

#include "engine/model_config.h"

namespace stitch::cpu {

// y[n, out] = x[n, in] · W[out, in]^T (+ bias[out]). BLAS sgemm (sgemv when n == 1).
void matmul_wt(float* y, const float* x, const float* W, const float* bias, int n, int out, int in);

// y = x / sqrt(mean(x^2) + eps) * w, per row of length d (y may alias x).
void rmsnorm(float* y, const float* x, const float* w, int n, int d, float eps);

// In place on rows of `stride` floats: for each of n_heads heads of head_dim starting at
// column `col0`, HF's half rotation: x[i], x[i+hd/2] rotated by pos·inv_freq[i].
void rope(float* x, int n, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq);

// out[n, I] = act(gu[:, :I]) * gu[:, I:]  (gate and up computed by one fused GEMM):
//   SiLU      g / (1 + e^-g)                                  (SwiGLU)
//   GeluTanh  0.5 g (1 + tanh(√(2/π) (g + 0.044715 g³)))     (GeGLU, HF gelu_pytorch_tanh),
//             computed as g / (1 + e^(-2·inner)), the same function, so that it vectorises
//   Gelu      0.5 g (1 + erf(g / √2))                         (exact GELU, HF "gelu")
void gated_act(Activation act, float* out, const float* gate_up, int n, int I);

// x = cap * tanh(x / cap), in that order of float operations (HF's soft-cap).
void softcap(float* x, int64_t count, float cap);

// x += y, n*d elements.
void add(float* x, const float* y, int64_t count);

// x[i] = table[tokens[i]] * scale (a plain copy when scale is 1).
void embed(float* x, const float* table, const int32_t* tokens, int n, int d, float scale);

// RMSNorm over head slices in place (see engine/ops.h).
void head_rmsnorm(float* x, int n, int stride, int col0, int n_heads, int head_dim, const float* w, float eps);

// Strided row copy.
void copy2d(float* dst, int dst_ld, const float* src, int src_ld, int rows, int cols);

// Causal attention over per-sequence KV caches, for n_seqs sequences whose new rows are
// contiguous in q/out: sequence s owns rows [row0[s], row0[s] + len[s]) at absolute positions
// pos0[s], pos0[s] + 1, …; its keys/values for this layer are k_base[s] / v_base[s], rows
// [0, pos0[s] + len[s]) of kv_stride floats (kv head g at columns [g*hd, (g+1)*hd)).
//   q: [rows, q_stride], head h at columns [h*hd, (h+1)*hd); out: [rows, n_heads*hd].
//   window: 0 = every key up to the query's position; W = keys in (pos - W, pos], i.e. W keys
//           counting the query's own (HF: kv_idx > q_idx - sliding_window; a key exactly W back
//           is not seen, and HF's sliding cache keeps W - 1 past keys).
//   softcap: 0 = off; else scores become softcap·tanh(score/softcap) before the softmax.
// Scores for a block of queries are one small GEMM (Q·Kᵀ), then masked softmax, then P·V.
void attention(float* out, const float* q, int q_stride, int n_seqs, const int32_t* row0, const int32_t* len,
               const int32_t* pos0, const float* const* k_base, const float* const* v_base, int kv_stride,
               int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap);

// Steering at selected rows of x[*, d] (rows: n_rows distinct row indices), with the arithmetic
// of engine/steer.cpp so the CUDA twins (kernels/cuda/ops.cuh) have a reference:
//   add_rows      x[r] += alpha · v
//   ablate_rows   x[r] -= float(alpha · (x[r] · u)) · u   (dot product in double; u a unit vector)
//   replace_rows  x[r] = (1 − alpha) · x[r] + alpha · src[i]   (alpha 1 copies; src row i, for rows[i],
//                 at src + i · src_ld: src_ld d for one row each, 0 for one vector for every row)
void add_rows(float* x, int d, const int32_t* rows, int n_rows, const float* v, float alpha);
void ablate_rows(float* x, int d, const int32_t* rows, int n_rows, const float* u, float alpha);
void replace_rows(float* x, int d, const int32_t* rows, int n_rows, const float* src, int64_t src_ld, float alpha);

// out[i] = the first index of the maximum of row i of x[n, cols] (greedy decoding's rule).
void argmax_rows(int32_t* out, const float* x, int n, int cols);

// One token drawn from a row of logits by the rule both backends share (the CUDA twin is
// kernels/cuda/ops.cuh sample_rows), given u uniform in [0, 1):
//   temperature ≤ 0   the first maximum (argmax_rows), u unused;
//   otherwise         p_i ∝ exp((x_i − max) / temperature) over the tokens within kSampleCut
//                     nats of the best, i.e. (x_i − max) / temperature ≥ −kSampleCut (the rest
//                     weigh under e^−40 each); then top-k keeps every token whose logit
//                     is at least the k-th largest (top_k 0 = off; ties at the k-th stay); then
//                     top-p keeps the fewest most probable tokens whose mass reaches top_p of the
//                     kept mass (1 = off; ties at the boundary stay); then the first token, in
//                     vocabulary order, whose cumulative kept mass exceeds u · (kept mass).
// Every kept token is drawn with its renormalised probability; the order only decides which u
// gives which token.
inline constexpr float kSampleCut = 40.0f;
int32_t sample_row(const float* x, int cols, float temperature, int top_k, float top_p, double u);

// x rounded to the nearest bf16 (ties to even, as __float2bfloat16 does) and widened back:
// the value a bf16 weight holds, for building references of bf16 GEMMs and embeddings.
float round_bf16(float x);

}  // namespace stitch::cpu

// The op set the forward pass is written in. Every op works on raw pointers into one
// device's memory (row-major, a row is a token), so the forward pass never touches
// activation data itself: a device supplies a table of these (kernels/cpu/ for the CPU;
// a CUDA table from kernels/*.cu slots in beside it) and forward() runs unchanged.
// Hooks are the one exception: they see host memory (a device backend copies out first).
#pragma once
#include <cstdint>

#include "engine/model_config.h"

namespace stitch {

enum class Device : uint8_t { CPU, CUDA };

struct Ops {
    Device device;
    const char* name;
    // x[i] = table[tokens[i]] · scale for n rows of width d (scale 1 copies exactly; Gemma: sqrt(d)).
    void (*embed)(float* x, const float* table, const int32_t* tokens, int n, int d, float scale);
    // y[n, out] = x[n, in] · W[out, in]^T (+ bias[out]).
    void (*matmul_wt)(float* y, const float* x, const float* W, const float* bias, int n, int out, int in);
    // y = x / sqrt(mean(x²) + eps) · w per row of d (y may alias x).
    void (*rmsnorm)(float* y, const float* x, const float* w, int n, int d, float eps);
    // The same over each of n_heads head_dim-wide slices starting at column col0 of rows of
    // `stride` floats, in place (Qwen 3's q/k norms).
    void (*head_rmsnorm)(float* x, int n, int stride, int col0, int n_heads, int head_dim, const float* w, float eps);
    // HF half-rotation RoPE in place on n_heads heads starting at column col0.
    void (*rope)(float* x, int n, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
                 const float* inv_freq);
    // out[n, I] = act(gate_up[:, :I]) · gate_up[:, I:] (SwiGLU / GeGLU).
    void (*gated_act)(Activation act, float* out, const float* gate_up, int n, int I);
    // x = cap · tanh(x / cap) over count floats (Gemma's final-logit soft-cap).
    void (*softcap)(float* x, int64_t count, float cap);
    // x += y.
    void (*add)(float* x, const float* y, int64_t count);
    // dst rows (stride dst_ld) = src rows (stride src_ld), `rows` × `cols` floats; used for
    // KV-cache appends and gathering the rows that need logits.
    void (*copy2d)(float* dst, int dst_ld, const float* src, int src_ld, int rows, int cols);
    // Causal (optionally sliding-window, soft-capped) attention of packed sequences over
    // their KV caches; see kernels/cpu/ops_cpu.h for the layout.
    void (*attention)(float* out, const float* q, int q_stride, int n_seqs, const int32_t* row0, const int32_t* len,
                      const int32_t* pos0, const float* const* k_base, const float* const* v_base, int kv_stride,
                      int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap);
};

// The CPU table (float32, BLAS GEMMs, OpenMP).
const Ops& cpu_ops();

}  // namespace stitch

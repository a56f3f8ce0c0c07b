// The forward pass on a CUDA GPU: a Model's weights on the device and engine/forward.cpp's
// steps, in the same order, written in the device op set (kernels/cuda/ops.cuh). Plain C++
// header (no CUDA types), so engine/ can hold one; built only with nvcc (STITCH_HAVE_CUDA).
//
// Numerics (DESIGN.md §4): the GEMM weights (q/k/v, o, gate/up, down, the output matrix) and the
// embedding table are bf16, converted once at upload (a tied output matrix shares the
// embedding's buffer); norm weights, biases, q/k norms and RoPE inverse frequencies stay f32, as
// do activations, the residual stream and the KV cache. tests/gpu/test_forward_gpu.cpp holds it
// to the CPU path: hidden states within 1e-2 relative, next-token KL within 1e-3.
//
// Hooks see host memory, exactly as on the CPU (engine/forward.h Hooks): read-only taps are
// copied out asynchronously and called at the end of the call, others make a synchronous round
// trip; --check-finite scans the host copies. Hooks::steering never leaves the device: each
// site's Steering::plan is sent once per call and run with the row kernels of ops.cuh.
#pragma once
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/forward.h"

namespace stitch::cuda {

class ForwardCuda {
public:
    // Uploads m's weights to the current CUDA device (after checking they fit in its free
    // memory) and makes the streams and GEMM context. Throws stitch::Error on any CUDA failure.
    explicit ForwardCuda(const Model& m);
    ~ForwardCuda();
    ForwardCuda(const ForwardCuda&) = delete;
    ForwardCuda& operator=(const ForwardCuda&) = delete;

    // stitch::forward's contract, called by it once it has checked the sequences and packed the
    // rows into st (token, row_seq, row_pos, seg_row0/len/pos0, logit_src). The sequences' KV
    // caches get device storage on first use (a prefix a CPU model filled is uploaded). Returns
    // host logits; synchronises before it returns, so st and the caches may be reused at once.
    std::vector<float> forward(const Model& m, RunState& st, std::span<const SeqInput> seqs, const ForwardOptions& opt);

    // The first `positions` positions of from's device K/V into to's (device storage made on
    // first use). Checked by stitch::copy_prefix, which calls this.
    void copy_prefix(const KVCache& from, KVCache& to, int positions);

    size_t weight_bytes() const;  // device memory the weights take
    // Which kernels run, for reports: "tensor cores (TF32)" or "CUDA cores (F32)" for this model's
    // prefill attention, and whether decode steps run as CUDA graphs (not after a failed capture).
    std::string prefill_attention() const;
    bool decode_graphs() const;
    std::string device() const;   // "NVIDIA H100 80GB HBM3 (sm_90)"

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Decode steps as CUDA graphs (kernels/cuda/forward_cuda.cu): 1 on, 0 off, -1 (default) from
// the environment (STITCH_CUDA_GRAPHS=0 turns them off; on otherwise). Tests compare the two.
void set_cuda_graphs(int on);

// "NVIDIA H100 80GB HBM3 (sm_90), 79.1 GiB" for device i; throws on a CUDA failure.
std::string device_summary(int i);
// "runtime 13.0, driver 12.8" (driver 0.0 when there is none).
std::string runtime_summary();

// Bytes of host (and device) staging a read-only tap may fill before the forward pass stops to
// hand the rows over (default 256 MiB). Tests set it small to exercise those mid-call hand-overs.
void set_tap_staging_limit(size_t bytes);

}  // namespace stitch::cuda

// The forward pass: one function for every family, reading ModelConfig as data.
// Sequences of different lengths run together as one packed batch ("varlen"): all tokens
// of all sequences are rows of one matrix for the GEMMs, while attention reads each
// sequence's own KV cache at its own absolute positions. So batched == unbatched.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "engine/model.h"
#include "engine/sampling.h"

namespace stitch {

// Residual-stream sites, named as in DESIGN.md §3 (TransformerLens habits).
enum class Site : uint8_t { Embed, ResidPre, AttnOut, ResidMid, MlpOut, ResidPost, FinalNorm, Logits };
inline constexpr int kSiteCount = 8;
const char* site_name(Site s);

// What a hook sees: `rows` activations of width `cols`, row r belonging to the sequence with
// id seq[r] (SeqInput::id: the caller's prompt index) at absolute position pos[r] (BOS is 0;
// generated tokens continue after the prompt). Hooks may modify data (steering).
struct SiteView {
    Site site;
    int layer;  // -1 for embed, final_norm, logits
    float* data;
    int rows;
    int cols;
    const int32_t* seq;
    const int32_t* pos;
};

class Steering;  // engine/steer.h

struct Hooks {
    // Which sites to call back at: bit (1 << int(site)). Zero = none, and no cost.
    uint32_t site_mask = 0;
    std::function<void(const SiteView&)> on_site;
    // Interventions applied at their sites before on_site sees the rows (so a tap reads the
    // steered stream). The CPU path calls Steering::apply on the rows; a GPU model runs the same
    // row ops on the device (kernels/cuda/ops.cuh add_rows / ablate_rows / replace_rows) with no
    // copy to the host, so steering does not stop a read-only tap from being asynchronous.
    const Steering* steering = nullptr;
    // A pure tap: on_site only reads the rows (capture, statistics, a site collected for a map)
    // and leaves SiteView::data as it was. Then a GPU model need not stop at each site: it copies
    // the rows to pinned host memory on a second stream while it computes on, and calls on_site
    // for every site, in the CPU path's order and with the same data, once the rows have landed
    // (during the call, between later sites' launches, or at its end; always before it returns;
    // changes to data are lost). Without read_only a GPU model copies the rows out, calls on_site
    // and copies them back before going on, so a hook that changes rows works unchanged. The CPU
    // path calls on_site in place either way. (Steering belongs in `steering` above, which needs
    // no round trip.)
    bool read_only = false;
    bool wants(Site s) const { return (site_mask >> int(s)) & 1u; }
    bool steers(Site s) const;  // steering has an item at site s
    bool active() const { return site_mask != 0 || steering != nullptr; }
};

namespace cuda {
struct KVDevice;        // kernels/cuda/forward_cuda.cu: a KV cache's K and V on the GPU
struct ForwardScratch;  // kernels/cuda/forward_cuda.cu: device activations and staging buffers
}  // namespace cuda

// KV cache of one sequence: K and V for every layer, capacity fixed at creation. The storage is
// made by the first forward call that uses it, on that model's device: host vectors for a CPU
// model, device memory for a GPU model; callers only create, pass and copy_prefix() caches.
// Move-only (a copy would share the device memory).
struct KVCache {
    int capacity = 0;
    int length = 0;  // positions filled
    int n_layers = 0, kv_dim = 0;
    std::vector<float> k, v;  // CPU: [n_layers, capacity, kv_dim]; empty until first used
    std::shared_ptr<cuda::KVDevice> device;  // GPU: the same layout in device memory, or null
    KVCache() = default;
    KVCache(const ModelConfig& c, int capacity);
    KVCache(KVCache&&) noexcept = default;
    KVCache& operator=(KVCache&&) noexcept = default;
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;
    // The host storage, made (zero-filled) on first use; throws stitch::Error when a GPU model
    // has filled this cache (its keys and values are on the device).
    void ensure_host();
    // Layer L's rows in host memory (CPU backend; calls ensure_host).
    float* k_layer(int L, int kv_dim);
    float* v_layer(int L, int kv_dim);
};

// Copies the first `positions` positions (every layer's K and V) of `from` into `to` and sets
// to.length = positions: a shared prompt prefix computed once (keys and values at a position
// depend only on the tokens up to it). Works where the model runs (host or device memory).
// Throws stitch::Error when positions exceed from.length or to.capacity or the caches' shapes differ.
void copy_prefix(const Model& m, const KVCache& from, KVCache& to, int positions);

// New tokens for one sequence, appended at positions cache.length, cache.length+1, …
struct SeqInput {
    KVCache* cache;
    std::span<const int32_t> tokens;
    int32_t id = -1;  // what hooks see as SiteView::seq (the caller's prompt index); -1: index in the batch
};

struct ForwardOptions {
    bool all_logits = false;  // logits for every token, else only each sequence's last
    const Hooks* hooks = nullptr;
    // Tokens instead of logits: with `next` set, each logits row's next token is picked by
    // `sampling` (engine/sampling.h; one sample_uniform draw from *rng per row, in row order,
    // when it samples) into *next, and forward() returns no logits. A GPU model picks them on the
    // device and copies one id per row to the host, unless the logits must reach the host anyway
    // (a Logits hook or steering, --check-finite); then it picks them there by the same rule.
    std::vector<int32_t>* next = nullptr;
    SamplingParams sampling;
    std::mt19937_64* rng = nullptr;  // needed when sampling.temperature > 0
};

// Scratch buffers reused across calls (resized on demand).
struct RunState {
    std::vector<float> x, h, qkv, attn, proj, gate_up, mlp, logits_rows;
    std::vector<int32_t> row_seq, row_pos, token;        // per packed row
    std::vector<int32_t> seg_row0, seg_len, seg_pos0;     // per sequence: first row, new tokens, first position
    std::vector<int32_t> logit_src;  // packed row of each logits row
    // GPU models: device activations and host staging, made by the first GPU call (opaque here).
    std::shared_ptr<cuda::ForwardScratch> cuda;
};

// Runs the new tokens of every sequence through the model, on the device the model is on
// (Model::backend()). Returns logits (host memory) [rows, vocab] where rows = total tokens
// (all_logits) or one per sequence (its last); with ForwardOptions::next, those rows' tokens
// in *next and an empty vector.
// Throws stitch::Error for token ids outside the vocabulary or a full KV cache, and, with
// set_check_finite(true) (engine/finite.h), for the first site holding NaN or Inf.
std::vector<float> forward(const Model& m, RunState& st, std::span<const SeqInput> seqs, const ForwardOptions& opt = {});

// ForwardOptions::next on host logits [rows, vocab] (both backends' host path).
void pick_tokens(const float* logits, int rows, int vocab, const ForwardOptions& opt);

}  // namespace stitch

// The forward pass: one function for every family, reading ModelConfig as data.
// Sequences of different lengths run together as one packed batch ("varlen"): all tokens
// of all sequences are rows of one matrix for the GEMMs, while attention reads each
// sequence's own KV cache at its own absolute positions. So batched == unbatched.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/model.h"

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

struct Hooks {
    // Which sites to call back at: bit (1 << int(site)). Zero = none, and no cost.
    uint32_t site_mask = 0;
    std::function<void(const SiteView&)> on_site;
    bool wants(Site s) const { return (site_mask >> int(s)) & 1u; }
};

// KV cache of one sequence: K and V for every layer, capacity fixed at creation.
struct KVCache {
    int capacity = 0;
    int length = 0;  // positions filled
    std::vector<float> k, v;  // [n_layers, capacity, kv_dim]
    KVCache() = default;
    KVCache(const ModelConfig& c, int capacity);
    float* k_layer(int L, int kv_dim) { return k.data() + int64_t(L) * capacity * kv_dim; }
    float* v_layer(int L, int kv_dim) { return v.data() + int64_t(L) * capacity * kv_dim; }
};

// New tokens for one sequence, appended at positions cache.length, cache.length+1, …
struct SeqInput {
    KVCache* cache;
    std::span<const int32_t> tokens;
    int32_t id = -1;  // what hooks see as SiteView::seq (the caller's prompt index); -1: index in the batch
};

struct ForwardOptions {
    bool all_logits = false;  // logits for every token, else only each sequence's last
    const Hooks* hooks = nullptr;
};

// Scratch buffers reused across calls (resized on demand).
struct RunState {
    std::vector<float> x, h, qkv, attn, proj, gate_up, mlp, logits_rows;
    std::vector<int32_t> row_seq, row_pos, token;        // per packed row
    std::vector<int32_t> seg_row0, seg_len, seg_pos0;     // per sequence: first row, new tokens, first position
    std::vector<int32_t> logit_src;  // packed row of each logits row
};

// Runs the new tokens of every sequence through the model. Returns logits
// [rows, vocab] where rows = total tokens (all_logits) or one per sequence (its last).
// Throws stitch::Error for token ids outside the vocabulary or a full KV cache, and, with
// set_check_finite(true) (engine/finite.h), for the first site holding NaN or Inf.
std::vector<float> forward(const Model& m, RunState& st, std::span<const SeqInput> seqs, const ForwardOptions& opt = {});

}  // namespace stitch

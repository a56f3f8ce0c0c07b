// Steering: `--steer SITE:OP:FILE[:ALPHA][@SEL]` interventions applied inside the forward pass,
// in prompt processing and in every decode step (DESIGN.md §3).
//
//   add      x += alpha·v
//   ablate   x -= alpha·(x·v̂)v̂        (alpha defaults to 1: the v̂ component removed)
//   replace  x = (1-alpha)·x + alpha·v (alpha defaults to 1: x = v); with a captured file
//            (prompt_index/position tensors), v is the file's row for the same prompt index and
//            absolute position, and positions without a row are left alone
//
// FILE: a safetensors file holding one vector [d] (or [n_layers, d], row L for blocks.L.*; the
// tensor named like the site, else the only float tensor, else one named "direction"), a
// `stitch capture` file (for replace), or a llama.cpp control-vector GGUF (direction.N is
// layer N's row). Items apply in the order given.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/forward.h"
#include "engine/sites.h"

namespace stitch {

enum class SteerOp { Add, Ablate, Replace };
const char* steer_op_name(SteerOp op);

class SafetensorsFile;

// One --steer SPEC (SITE:OP:FILE[:ALPHA][@POSITIONS]) parsed and resolved against a model's
// config, without opening FILE. Throws stitch::Error ("--steer: ...") for a malformed spec, an
// unknown site or operation, a layer out of range, a non-finite alpha or a bad selector.
struct SteerSpec {
    std::string spec;             // as written
    std::vector<SiteRef> sites;   // one, or every layer for blocks.*.SITE
    bool wildcard = false;        // SITE had a '*'
    SteerOp op = SteerOp::Add;
    std::string file;
    float alpha = 1.0f;
    PositionSelector sel;
};
SteerSpec parse_steer_spec(const std::string& spec, const ModelConfig& c);

// One intervention at one (site, layer).
struct SteerItem {
    std::string spec;  // as the user wrote it (for messages)
    SiteRef site;
    SteerOp op = SteerOp::Add;
    float alpha = 1.0f;
    PositionSelector sel;
    std::vector<float> vec;  // [width]; for ablate, the unit vector v̂
    // replace from a captured file: row of (prompt_index, position)
    std::shared_ptr<const SafetensorsFile> patch_file;
    const void* patch_tensor = nullptr;  // TensorInfo* inside patch_file
    std::unordered_map<uint64_t, int64_t> patch_rows;
    bool is_patch() const { return patch_file != nullptr; }
};

// The vectors of a steering file, by layer: row L for a [n_layers, d] tensor or GGUF
// direction.L; a single [d] vector is `shared`.
struct SteerVectors {
    std::vector<float> shared;                      // [d] or empty
    std::vector<std::vector<float>> per_layer;      // [n_layers], empty rows where absent
    bool control_vector = false;                    // read from a llama.cpp control-vector GGUF
};
// Reads FILE for a site of `width` values in a model with n_layers layers. Throws naming FILE for
// wrong shapes, NaN/Inf, layers out of range.
SteerVectors read_steer_vectors(const std::string& file, const SiteRef& site, int width, int n_layers);

// One item's work at one site in one forward call: `op` with `alpha` at the packed rows `rows`
// (ascending indices into the call's rows), with the item's vector `vec` ([d], for every row) or,
// for replace from a captured file, `src` ([rows.size(), d], row i for rows[i]).
struct SteerStep {
    SteerOp op = SteerOp::Add;
    float alpha = 1.0f;
    std::vector<int32_t> rows;
    const float* vec = nullptr;  // into the SteerItem; null when src holds the rows
    std::vector<float> src;
};

class Steering {
public:
    // Parses and loads every --steer spec for model m. Throws stitch::Error naming the spec or file.
    static Steering load(const std::vector<std::string>& specs, const Model& m);

    // Appends one intervention with an in-memory vector (a program's own, e.g. a mapped one).
    // `label` stands for the file in describe(). Throws when the width is not the site's, a value
    // is not finite, or an ablate vector is zero.
    Steering& add_vector(const Model& m, const SiteRef& site, SteerOp op, std::vector<float> vec, float alpha,
                         const PositionSelector& sel, const std::string& label);

    bool empty() const { return items_.empty(); }
    uint32_t site_mask() const { return mask_; }
    const std::vector<SteerItem>& items() const { return items_; }

    // Prepares for a run over `prompts` (token ids; SiteView::seq = index into it) that generates up
    // to max_new tokens each: match= masks, and the check that every item selects something.
    // check = false skips the "selects nothing" check (a caller checking a union of prompt sets).
    void bind(const Model& m, const std::vector<std::vector<int32_t>>& prompts, int max_new, bool check = true);

    // After bind: how many leading positions no item selects in any of the bound prompts (for
    // GenerateOptions::hooks_free_prefix).
    int untouched_prefix() const { return untouched_; }

    bool wants(Site s) const { return (mask_ >> int(s)) & 1u; }

    // What the items at (site, layer) do to `rows` rows of width `cols` whose prompt index and
    // absolute position are seq[r], pos[r]: one step per item that selects a row, in item order.
    // Both backends run these steps (CPU: kernels/cpu row ops; GPU: their CUDA twins).
    std::vector<SteerStep> plan(Site site, int layer, int rows, int cols, const int32_t* seq, const int32_t* pos) const;

    // Applies every item at v's site (in order) to the selected rows, in place (host memory).
    void apply(const SiteView& v) const;

    // The Hooks that apply this steering (and nothing else): Hooks::steering = this.
    Hooks hooks() const;

    // A one-line description per item, for metadata and stderr.
    std::string describe() const;

private:
    std::vector<SteerItem> items_;
    uint32_t mask_ = 0;
    std::vector<int32_t> prompt_len_;
    int untouched_ = 0;
    // per item with a Match selector: per prompt, its mask
    std::vector<std::vector<std::vector<char>>> masks_;
};

}  // namespace stitch

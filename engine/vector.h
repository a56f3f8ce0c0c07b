// `stitch vector`: steering vectors from contrasting prompt sets.
//   paired  line i of the positive and negative files are the same prompt with a different
//           trigger; d_i = mean of P_i's selected rows − mean of N_i's; vector = mean_i d_i
//           (the paper's trigger-position ActAdd variant; positions default to `diff`, the
//           tokens where the two prompts differ)
//   mean    mean of every selected positive row − mean of every selected negative row
//           (difference of means, refusal-direction style; positions default to `last`)
//   pca     first principal component of the paired differences, each pair centred on its own
//           midpoint (repeng's pca_center: PCA of ±d_i/2, i.e. the top eigenvector of Σ d_i d_iᵀ),
//           signed so that positives project above their negatives on average, and scaled by
//           that average projection (alpha 1 moves one average pair difference along it)
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/sites.h"
#include "engine/steer.h"

namespace stitch {

enum class VectorMethod { Paired, Mean, Pca };
VectorMethod parse_vector_method(const std::string& s);  // throws
const char* vector_method_name(VectorMethod m);

struct VectorOptions {
    VectorMethod method = VectorMethod::Paired;
    std::vector<SiteRef> sites;  // one vector per site (a sweep: one per layer)
    PositionSelector positive_positions, negative_positions;
    int batch = 8;
    // Interventions while collecting (e.g. another direction ablated), bound to the positive and
    // the negative prompts respectively; nullptr for none.
    const Steering* positive_steering = nullptr;
    const Steering* negative_steering = nullptr;
    std::function<void(long prompts_done, long prompts_total, long tokens)> on_progress;
};

struct VectorSiteStats {
    double norm = 0;          // |vector|
    double separation = 0;    // mean positive projection − mean negative projection on the unit vector
    double explained = 0;     // pca: fraction of Σ|d_i|² along the component; paired: mean cos(d_i, vector)
};

struct VectorResult {
    std::vector<std::vector<float>> vectors;  // per site, [d]
    std::vector<VectorSiteStats> stats;       // per site
    long positive_rows = 0, negative_rows = 0;
    long pairs = 0;
};

// Positions where a paired positive and negative prompt differ: everything between their common
// prefix and common suffix, for each side. Throws (naming line i) when they are identical.
void diff_masks(std::span<const int32_t> pos, std::span<const int32_t> neg, std::vector<char>& pos_mask,
                std::vector<char>& neg_mask, size_t line);

VectorResult compute_vectors(const Model& m, const std::vector<std::vector<int32_t>>& positive,
                             const std::vector<std::vector<int32_t>>& negative, const VectorOptions& opt);

// The top eigenvector of Σ_i d_i d_iᵀ (rows of D, n × d) by power iteration; unit length, sign
// such that Σ_i d_i·v ≥ 0. `explained` receives |Dv|² / |D|²_F.
std::vector<double> principal_direction(const std::vector<double>& D, size_t n, size_t d, double* explained);

}  // namespace stitch

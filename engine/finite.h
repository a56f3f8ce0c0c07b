// Numeric guards (docs/hardening.md). NaN or Inf in loaded weights, in activations, in steering
// vectors or in maps is an error that says where it sits; `--check-finite` makes the forward pass
// stop at the first site whose activations are not finite.
#pragma once
#include <cstdint>
#include <string>

namespace stitch {

struct Model;
struct SiteView;

// Index of the first NaN or ±Inf in p[0, n), or -1. Reads the IEEE bits, so it stays right
// under any floating-point flags; parallel over large arrays.
int64_t first_non_finite(const float* p, int64_t n);

// Scans every weight tensor of a loaded model (after any merged adapter). The first non-finite
// value throws stitch::Error(file, "weight <tensor> (layer L) holds NaN at index i of n").
void check_weights_finite(const Model& m, const std::string& file);

// The process-wide `--check-finite` switch read by forward(): off by default (a scan per site
// costs about one extra read of the activations).
void set_check_finite(bool on);
bool check_finite_enabled();

// Throws stitch::Error("--check-finite", "<NaN|inf> at <site> layer L (prompt s, position p, dim j) ...")
// when the view holds a non-finite value.
void check_site_finite(const SiteView& v);

// "NaN", "inf" or "-inf" for a non-finite float (and "{:g}" otherwise), for messages.
std::string finite_name(float x);

}  // namespace stitch

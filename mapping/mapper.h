// Maps between two models' activation spaces (DESIGN.md §5): the paper's ReLU autoencoder
// y = W2·relu(W1·x + b1) + b2 and the affine baseline y = W·x + b, as a stack of linear
// layers with ReLU between them. Weights are row-major [out, in] like torch's nn.Linear, so
// a map file reads straight into PyTorch.
//
// This file holds the model itself (init, predict, save/load with metadata checks), the
// metrics (MSE, cosine, FVU), the CPU compute path (forward, backward and AdamW, templated on
// float for training and double for the gradient check) and the closed-form ridge fit.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace stitch {

enum class MapKind : uint8_t { Affine, Autoencoder };
const char* map_kind_name(MapKind k);
MapKind parse_map_kind(const std::string& s);  // "affine" | "autoencoder"; throws stitch::Error

struct LinearLayer {
    int out = 0, in = 0;
    std::vector<float> W;  // [out, in]
    std::vector<float> b;  // [out]
};

struct Mapper {
    MapKind kind = MapKind::Autoencoder;
    std::vector<LinearLayer> layers;  // affine: one; autoencoder: two, ReLU between
    // Identity, hyperparameters and final metrics, as written to the file's __metadata__.
    std::map<std::string, std::string> meta;

    int d_src() const { return layers.front().in; }
    int d_tgt() const { return layers.back().out; }
    int hidden() const { return kind == MapKind::Autoencoder ? layers.front().out : 0; }
    size_t param_count() const;
};

// The paper's default hidden width: floor(sqrt(d_src · d_tgt)).
int default_hidden(int d_src, int d_tgt);

// A fresh map with torch.nn.Linear's default init (weights and biases uniform in
// ±1/sqrt(fan_in)), drawn from a seeded generator so runs repeat.
Mapper make_mapper(MapKind kind, int d_src, int d_tgt, int hidden, uint64_t seed);

// y[rows, d_tgt] = map(x[rows, d_src]), on the CPU (BLAS GEMMs, OpenMP elementwise).
void predict(const Mapper& m, const float* x, int rows, float* y);

// Map files: safetensors with tensors W, b (affine) or W1, b1, W2, b2 (autoencoder), F32,
// and __metadata__ with at least format=stitch-map, kind, d_src, d_tgt, hidden. Written
// through a temporary name. load_map checks every shape against the metadata.
void save_map(const std::filesystem::path& path, const Mapper& m);
Mapper load_map(const std::filesystem::path& path);

// What a map is about to be applied to: a side's site name, model identity and width.
// Empty strings are unknown and not checked.
struct MapSide {
    std::string site, model, model_type;
    int dim = 0;
};
// Throws stitch::Error naming `map_path` when the map does not fit (dims, site, model).
// check_model = false skips the model-name check (--ignore-model), never dims or site.
void check_map_fits(const Mapper& m, const std::string& map_path, const MapSide& source, const MapSide* target,
                    bool check_model);

// ---- metrics ---------------------------------------------------------------------------

struct MapMetrics {
    double mse = 0;     // mean over rows and dims of (ŷ − y)²
    double cosine = 0;  // mean over rows of cos(ŷ, y)
    double fvu = 0;     // Σ(ŷ − y)² / Σ(y − ȳ)², ȳ the per-dim mean over the same rows
    int64_t rows = 0;
};

// Per-row sums a compute path returns for every row it ran, from which every metric and
// the loss follow: Σ(ŷ−y)², Σŷ·y, Σŷ², Σy².
struct RowStats {
    float sse, dot, pred_sq, tgt_sq;
};

// Accumulates metrics over batches in double. Targets enter here for the FVU's per-dim means.
class MetricAccumulator {
public:
    explicit MetricAccumulator(int d_tgt) : d_(d_tgt), sum_y_(size_t(d_tgt)), sum_y2_(size_t(d_tgt)) {}
    void add(const RowStats* stats, const float* y, int rows);
    MapMetrics result() const;
    void reset();

private:
    int d_;
    double sse_ = 0, cos_ = 0;
    int64_t rows_ = 0;
    std::vector<double> sum_y_, sum_y2_;
};

// ---- training hyperparameters ------------------------------------------------------------

// AdamW exactly as torch.optim.AdamW computes it (decoupled decay on every parameter,
// biases included, bias-corrected moments, eps outside the square root).
struct AdamWConfig {
    float lr = 1e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.01f;
};

// ---- CPU compute path ---------------------------------------------------------------------

// Forward, backward and AdamW of one map on the CPU for up to `max_rows` rows at a time.
// Every buffer is allocated here, once: a training step allocates nothing. T = float is the
// training path (BLAS sgemm); T = double exists for the finite-difference gradient check.
//
// The loss of a step is Σ_r w_r · Σ_d (ŷ_rd − y_rd)² / d_tgt with per-row weights w_r: the
// trainer gives the rows of micro-batch i of k weight 1/(n_i·k), which makes the loss the
// mean of the micro-batch MSEs and the gradient exactly what k accumulated backward passes of
// loss_i/k produce, while the k micro-batches run as one GEMM (the weights do not change
// between them).
template <typename T>
class CpuMapCompute {
public:
    // training = false: forward only (no gradient, moment or backward buffers).
    CpuMapCompute(const Mapper& m, int max_rows, bool training = true);
    int max_rows() const { return max_rows_; }

    // Forward over rows; stats (if given) get one RowStats per row. pred() then holds ŷ.
    void forward(const T* x, int rows, const T* y = nullptr, RowStats* stats = nullptr);
    // Forward + backward: overwrites grads, returns the weighted loss (in T).
    T loss_and_grad(const T* x, const T* y, const T* row_weight, int rows, RowStats* stats = nullptr);
    // One AdamW update from the current grads; step counts from 1.
    void adamw(const AdamWConfig& c, int step);

    const T* pred() const { return act_.back().data(); }
    // Parameters and gradients per layer, in the order W, b.
    std::vector<T>& weight(int l) { return W_[size_t(l)]; }
    std::vector<T>& bias(int l) { return b_[size_t(l)]; }
    const std::vector<T>& weight_grad(int l) const { return gW_[size_t(l)]; }
    const std::vector<T>& bias_grad(int l) const { return gb_[size_t(l)]; }
    int n_layers() const { return int(shape_.size()); }
    void copy_to(Mapper& m) const;  // parameters back into a Mapper (as float)

private:
    struct Shape { int out, in; };
    std::vector<Shape> shape_;
    int max_rows_;
    std::vector<std::vector<T>> W_, b_, gW_, gb_, mW_, mb_, vW_, vb_;
    std::vector<std::vector<T>> act_;   // per layer: post-activation output [max_rows, out] (last: ŷ)
    std::vector<std::vector<T>> dact_;  // per layer: dLoss/d(pre-activation) [max_rows, out]
};

extern template class CpuMapCompute<float>;
extern template class CpuMapCompute<double>;

// ---- ridge (closed form, affine only) -------------------------------------------------------

// Accumulates the centred normal equations over row batches in double, then solves
// (XcᵀXc + λI) Wᵀ = XcᵀYc by Cholesky with λ = ridge · trace(XcᵀXc)/d_src (scale-free), and
// b = ȳ − W·x̄. The bias is not penalised.
class RidgeAccumulator {
public:
    RidgeAccumulator(int d_src, int d_tgt);
    void add(const float* x, const float* y, int rows);
    int64_t rows() const { return n_; }
    // Writes W [d_tgt, d_src], b [d_tgt] into an affine map's layer. Throws if nothing was added.
    void solve(double ridge, LinearLayer& out) const;

private:
    int ds_, dt_;
    int64_t n_ = 0;
    std::vector<double> shift_x_, shift_y_;  // first batch's means: rows are centred on them as they come
    std::vector<double> sx_, sy_;            // Σ (x − shift), Σ (y − shift)
    std::vector<double> xx_, xy_;            // Σ (x−s)(x−s)ᵀ [ds, ds], Σ (x−s)(y−s)ᵀ [ds, dt]
    std::vector<double> buf_x_, buf_y_;
};

}  // namespace stitch

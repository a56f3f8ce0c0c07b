#include "mapping/mapper.h"

#include <fmt/format.h>

#include <cmath>
#include <random>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "engine/version.h"
#include "kernels/cpu/blas.h"

namespace stitch {

const char* map_kind_name(MapKind k) { return k == MapKind::Affine ? "affine" : "autoencoder"; }

MapKind parse_map_kind(const std::string& s) {
    if (s == "affine") return MapKind::Affine;
    if (s == "autoencoder") return MapKind::Autoencoder;
    fail("--kind", "'{}' is not affine or autoencoder", s);
}

size_t Mapper::param_count() const {
    size_t n = 0;
    for (const auto& l : layers) n += l.W.size() + l.b.size();
    return n;
}

int default_hidden(int d_src, int d_tgt) {
    int h = int(std::sqrt(double(d_src) * double(d_tgt)));
    while (int64_t(h + 1) * (h + 1) <= int64_t(d_src) * d_tgt) ++h;  // floor, whatever sqrt rounded to
    while (int64_t(h) * h > int64_t(d_src) * d_tgt) --h;
    return std::max(h, 1);
}

Mapper make_mapper(MapKind kind, int d_src, int d_tgt, int hidden, uint64_t seed) {
    if (d_src <= 0 || d_tgt <= 0) fail("map", "dimensions must be positive (got {} -> {})", d_src, d_tgt);
    Mapper m;
    m.kind = kind;
    std::vector<std::pair<int, int>> shapes;  // (out, in)
    if (kind == MapKind::Affine) {
        shapes.push_back({d_tgt, d_src});
    } else {
        if (hidden <= 0) hidden = default_hidden(d_src, d_tgt);
        shapes.push_back({hidden, d_src});
        shapes.push_back({d_tgt, hidden});
    }
    std::mt19937_64 rng(seed);
    auto uniform = [&](float bound) {  // [-bound, bound), the same numbers on every platform
        double u = double(rng() >> 11) * 0x1.0p-53;
        return float((2.0 * u - 1.0) * bound);
    };
    for (auto [out, in] : shapes) {
        LinearLayer l;
        l.out = out;
        l.in = in;
        const float bound = float(1.0 / std::sqrt(double(in)));
        l.W.resize(size_t(out) * size_t(in));
        l.b.resize(size_t(out));
        for (auto& w : l.W) w = uniform(bound);
        for (auto& b : l.b) b = uniform(bound);
        m.layers.push_back(std::move(l));
    }
    return m;
}

// ---- CPU compute --------------------------------------------------------------------------

namespace {

void gemm(bool ta, bool tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta, float* C,
          int ldc) {
    blas::sgemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, const double* A, int lda, const double* B, int ldb, double beta,
          double* C, int ldc) {
    blas::dgemm(ta, tb, m, n, k, 1.0, A, lda, B, ldb, beta, C, ldc);
}

// Elementwise work below this many elements stays on one thread (fork/join costs more).
constexpr int64_t kParallelMin = 1 << 15;

}  // namespace

template <typename T>
CpuMapCompute<T>::CpuMapCompute(const Mapper& m, int max_rows, bool training) : max_rows_(max_rows) {
    if (max_rows <= 0) fail("map", "internal: max_rows {}", max_rows);
    for (const auto& l : m.layers) {
        shape_.push_back({l.out, l.in});
        W_.emplace_back(l.W.begin(), l.W.end());
        b_.emplace_back(l.b.begin(), l.b.end());
        act_.emplace_back(size_t(max_rows) * size_t(l.out));
        if (training) {
            gW_.emplace_back(l.W.size());
            gb_.emplace_back(l.b.size());
            mW_.emplace_back(l.W.size());
            mb_.emplace_back(l.b.size());
            vW_.emplace_back(l.W.size());
            vb_.emplace_back(l.b.size());
            dact_.emplace_back(size_t(max_rows) * size_t(l.out));
        }
    }
}

template <typename T>
void CpuMapCompute<T>::forward(const T* x, int rows, const T* y, RowStats* stats) {
    if (rows > max_rows_) fail("map", "internal: {} rows > capacity {}", rows, max_rows_);
    const T* in = x;
    const int L = n_layers();
    for (int l = 0; l < L; ++l) {
        const int out = shape_[size_t(l)].out, in_dim = shape_[size_t(l)].in;  // no structured binding: OpenMP captures it (clang < 16 cannot)
        T* z = act_[size_t(l)].data();
        gemm(false, true, rows, out, in_dim, in, in_dim, W_[size_t(l)].data(), in_dim, T(0), z, out);
        const T* b = b_[size_t(l)].data();
        const bool relu = l + 1 < L;
#pragma omp parallel for schedule(static) if (int64_t(rows) * out >= kParallelMin)
        for (int r = 0; r < rows; ++r) {
            T* zr = z + int64_t(r) * out;
            if (relu) {
#pragma omp simd
                for (int j = 0; j < out; ++j) zr[j] = std::max(zr[j] + b[j], T(0));
            } else {
#pragma omp simd
                for (int j = 0; j < out; ++j) zr[j] += b[j];
            }
        }
        in = z;
    }
    if (stats) {
        const int d = shape_.back().out;
        const T* p = act_.back().data();
#pragma omp parallel for schedule(static) if (int64_t(rows) * d >= kParallelMin)
        for (int r = 0; r < rows; ++r) {
            const T* pr = p + int64_t(r) * d;
            const T* yr = y + int64_t(r) * d;
            T sse = 0, dot = 0, pp = 0, yy = 0;
#pragma omp simd reduction(+ : sse, dot, pp, yy)
            for (int j = 0; j < d; ++j) {
                const T e = pr[j] - yr[j];
                sse += e * e;
                dot += pr[j] * yr[j];
                pp += pr[j] * pr[j];
                yy += yr[j] * yr[j];
            }
            stats[r] = {float(sse), float(dot), float(pp), float(yy)};
        }
    }
}

template <typename T>
T CpuMapCompute<T>::loss_and_grad(const T* x, const T* y, const T* row_weight, int rows, RowStats* stats) {
    if (gW_.empty()) fail("map", "internal: compute built without training buffers");
    forward(x, rows, nullptr, nullptr);
    const int L = n_layers();
    const int d = shape_.back().out;
    // dLoss/dŷ = 2 w_r (ŷ − y) / d_tgt; the loss and per-row stats come from the same pass.
    const T* p = act_.back().data();
    T* dp = dact_.back().data();
    T loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (int64_t(rows) * d >= kParallelMin)
    for (int r = 0; r < rows; ++r) {
        const T* pr = p + int64_t(r) * d;
        const T* yr = y + int64_t(r) * d;
        T* dr = dp + int64_t(r) * d;
        const T scale = T(2) * row_weight[r] / T(d);
        T sse = 0, dot = 0, pp = 0, yy = 0;
#pragma omp simd reduction(+ : sse, dot, pp, yy)
        for (int j = 0; j < d; ++j) {
            const T e = pr[j] - yr[j];
            dr[j] = scale * e;
            sse += e * e;
            dot += pr[j] * yr[j];
            pp += pr[j] * pr[j];
            yy += yr[j] * yr[j];
        }
        if (stats) stats[r] = {float(sse), float(dot), float(pp), float(yy)};
        loss += row_weight[r] * sse / T(d);
    }
    for (int l = L - 1; l >= 0; --l) {
        const int out = shape_[size_t(l)].out, in_dim = shape_[size_t(l)].in;  // no structured binding: OpenMP captures it (clang < 16 cannot)
        const T* in = l == 0 ? x : act_[size_t(l) - 1].data();
        const T* dz = dact_[size_t(l)].data();
        // gW = dzᵀ · in, gb = Σ_rows dz
        gemm(true, false, out, in_dim, rows, dz, out, in, in_dim, T(0), gW_[size_t(l)].data(), in_dim);
        T* gb = gb_[size_t(l)].data();
        std::fill(gb, gb + out, T(0));
        for (int r = 0; r < rows; ++r) {
            const T* dzr = dz + int64_t(r) * out;
#pragma omp simd
            for (int j = 0; j < out; ++j) gb[j] += dzr[j];
        }
        if (l == 0) break;
        // d(previous activation) = dz · W, then through the ReLU: zero where it was cut.
        T* da = dact_[size_t(l) - 1].data();
        gemm(false, false, rows, in_dim, out, dz, out, W_[size_t(l)].data(), in_dim, T(0), da, in_dim);
        const T* a = act_[size_t(l) - 1].data();
        const int64_t n = int64_t(rows) * in_dim;
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
        for (int64_t i = 0; i < n; ++i) da[i] = a[i] > T(0) ? da[i] : T(0);
    }
    return loss;
}

namespace {

// torch.optim.AdamW's single-tensor update, fused into one pass.
template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWConfig& c, int step) {
    const double bc1 = 1.0 - std::pow(double(c.beta1), step);
    const double bc2 = 1.0 - std::pow(double(c.beta2), step);
    const T decay = T(1.0 - double(c.lr) * double(c.weight_decay));
    const T step_size = T(double(c.lr) / bc1);
    const T bc2_sqrt = T(std::sqrt(bc2));
    const T w1 = T(1.0 - double(c.beta1)), b2 = T(c.beta2), w2 = T(1.0 - double(c.beta2)), eps = T(c.eps);
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
        const T gi = g[i];
        const T mi = m[i] + w1 * (gi - m[i]);  // exp_avg.lerp_(grad, 1 − β1)
        const T vi = v[i] * b2 + w2 * gi * gi;  // exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1 − β2)
        m[i] = mi;
        v[i] = vi;
        const T denom = std::sqrt(vi) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * (mi / denom);
    }
}

}  // namespace

template <typename T>
void CpuMapCompute<T>::adamw(const AdamWConfig& c, int step) {
    for (size_t l = 0; l < shape_.size(); ++l) {
        adamw_update(W_[l].data(), gW_[l].data(), mW_[l].data(), vW_[l].data(), int64_t(W_[l].size()), c, step);
        adamw_update(b_[l].data(), gb_[l].data(), mb_[l].data(), vb_[l].data(), int64_t(b_[l].size()), c, step);
    }
}

template <typename T>
void CpuMapCompute<T>::copy_to(Mapper& m) const {
    for (size_t l = 0; l < shape_.size(); ++l) {
        m.layers[l].W.assign(W_[l].begin(), W_[l].end());
        m.layers[l].b.assign(b_[l].begin(), b_[l].end());
    }
}

template class CpuMapCompute<float>;
template class CpuMapCompute<double>;

void predict(const Mapper& m, const float* x, int rows, float* y) {
    constexpr int kChunk = 1024;
    CpuMapCompute<float> c(m, std::min(rows, kChunk), false);
    const int ds = m.d_src(), dt = m.d_tgt();
    for (int r0 = 0; r0 < rows; r0 += kChunk) {
        const int n = std::min(kChunk, rows - r0);
        c.forward(x + int64_t(r0) * ds, n);
        std::copy(c.pred(), c.pred() + int64_t(n) * dt, y + int64_t(r0) * dt);
    }
}

// ---- metrics ----------------------------------------------------------------------------

void MetricAccumulator::add(const RowStats* stats, const float* y, int rows) {
    for (int r = 0; r < rows; ++r) {
        const RowStats& s = stats[r];
        sse_ += s.sse;
        const double den = std::sqrt(double(s.pred_sq) * double(s.tgt_sq));
        cos_ += den > 0 ? double(s.dot) / den : 0.0;
        const float* yr = y + int64_t(r) * d_;
        for (int j = 0; j < d_; ++j) {
            const double v = yr[j];
            sum_y_[size_t(j)] += v;
            sum_y2_[size_t(j)] += v * v;
        }
    }
    rows_ += rows;
}

MapMetrics MetricAccumulator::result() const {
    MapMetrics m;
    m.rows = rows_;
    if (rows_ == 0) return m;
    const double n = double(rows_);
    double sst = 0;
    for (int j = 0; j < d_; ++j) sst += std::max(0.0, sum_y2_[size_t(j)] - sum_y_[size_t(j)] * sum_y_[size_t(j)] / n);
    m.mse = sse_ / (n * d_);
    m.cosine = cos_ / n;
    m.fvu = sst > 0 ? sse_ / sst : (sse_ > 0 ? INFINITY : 0.0);
    return m;
}

void MetricAccumulator::reset() {
    sse_ = cos_ = 0;
    rows_ = 0;
    std::fill(sum_y_.begin(), sum_y_.end(), 0.0);
    std::fill(sum_y2_.begin(), sum_y2_.end(), 0.0);
}

// ---- ridge --------------------------------------------------------------------------------

RidgeAccumulator::RidgeAccumulator(int d_src, int d_tgt)
    : ds_(d_src), dt_(d_tgt), sx_(size_t(d_src)), sy_(size_t(d_tgt)), xx_(size_t(d_src) * size_t(d_src)),
      xy_(size_t(d_src) * size_t(d_tgt)) {}

void RidgeAccumulator::add(const float* x, const float* y, int rows) {
    if (rows <= 0) return;
    if (n_ == 0) {  // centre on the first batch's means so the sums do not cancel catastrophically
        shift_x_.assign(size_t(ds_), 0.0);
        shift_y_.assign(size_t(dt_), 0.0);
        for (int r = 0; r < rows; ++r) {
            for (int j = 0; j < ds_; ++j) shift_x_[size_t(j)] += x[int64_t(r) * ds_ + j];
            for (int j = 0; j < dt_; ++j) shift_y_[size_t(j)] += y[int64_t(r) * dt_ + j];
        }
        for (auto& v : shift_x_) v /= rows;
        for (auto& v : shift_y_) v /= rows;
    }
    buf_x_.resize(size_t(rows) * size_t(ds_));
    buf_y_.resize(size_t(rows) * size_t(dt_));
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) {
        for (int j = 0; j < ds_; ++j) buf_x_[size_t(r) * ds_ + j] = double(x[int64_t(r) * ds_ + j]) - shift_x_[size_t(j)];
        for (int j = 0; j < dt_; ++j) buf_y_[size_t(r) * dt_ + j] = double(y[int64_t(r) * dt_ + j]) - shift_y_[size_t(j)];
    }
    for (int r = 0; r < rows; ++r) {
        for (int j = 0; j < ds_; ++j) sx_[size_t(j)] += buf_x_[size_t(r) * ds_ + j];
        for (int j = 0; j < dt_; ++j) sy_[size_t(j)] += buf_y_[size_t(r) * dt_ + j];
    }
    gemm(true, false, ds_, ds_, rows, buf_x_.data(), ds_, buf_x_.data(), ds_, 1.0, xx_.data(), ds_);
    gemm(true, false, ds_, dt_, rows, buf_x_.data(), ds_, buf_y_.data(), dt_, 1.0, xy_.data(), dt_);
    n_ += rows;
}

void RidgeAccumulator::solve(double ridge, LinearLayer& out) const {
    if (n_ == 0) fail("ridge", "no training rows");
    const size_t ds = size_t(ds_), dt = size_t(dt_);
    const double n = double(n_);
    std::vector<double> mx(ds), my(dt);
    for (size_t j = 0; j < ds; ++j) mx[j] = sx_[j] / n;
    for (size_t j = 0; j < dt; ++j) my[j] = sy_[j] / n;
    // centred Gram matrix and cross products
    std::vector<double> A(ds * ds), C(ds * dt);
    double trace = 0;
    for (size_t i = 0; i < ds; ++i) {
        for (size_t j = 0; j < ds; ++j) A[i * ds + j] = xx_[i * ds + j] - n * mx[i] * mx[j];
        for (size_t j = 0; j < dt; ++j) C[i * dt + j] = xy_[i * dt + j] - n * mx[i] * my[j];
        trace += A[i * ds + i];
    }
    const double lambda = trace > 0 ? ridge * trace / double(ds) : ridge;
    for (size_t i = 0; i < ds; ++i) A[i * ds + i] += lambda;
    // Cholesky A = L·Lᵀ, L in the lower triangle of A
    for (size_t j = 0; j < ds; ++j) {
        double d = A[j * ds + j];
        for (size_t k = 0; k < j; ++k) d -= A[j * ds + k] * A[j * ds + k];
        if (!(d > 0) || !std::isfinite(d))
            fail("ridge", "the normal equations are singular (collinear source dims); raise --ridge above {}", ridge);
        const double ljj = std::sqrt(d);
        A[j * ds + j] = ljj;
#pragma omp parallel for schedule(static) if ((ds - j) * j > 65536)
        for (size_t i = j + 1; i < ds; ++i) {
            double s = A[i * ds + j];
            const double* li = &A[i * ds];
            const double* lj = &A[j * ds];
            for (size_t k = 0; k < j; ++k) s -= li[k] * lj[k];
            A[i * ds + j] = s / ljj;
        }
    }
    // L·Z = C, then Lᵀ·Wt = Z (in place in C): each row update is an axpy over the d_tgt columns
    for (size_t i = 0; i < ds; ++i) {
        double* ci = &C[i * dt];
        for (size_t k = 0; k < i; ++k) {
            const double l = A[i * ds + k];
            const double* ck = &C[k * dt];
            for (size_t j = 0; j < dt; ++j) ci[j] -= l * ck[j];
        }
        const double inv = 1.0 / A[i * ds + i];
        for (size_t j = 0; j < dt; ++j) ci[j] *= inv;
    }
    for (size_t i = ds; i-- > 0;) {
        double* ci = &C[i * dt];
        for (size_t k = i + 1; k < ds; ++k) {
            const double l = A[k * ds + i];
            const double* ck = &C[k * dt];
            for (size_t j = 0; j < dt; ++j) ci[j] -= l * ck[j];
        }
        const double inv = 1.0 / A[i * ds + i];
        for (size_t j = 0; j < dt; ++j) ci[j] *= inv;
    }
    out.out = dt_;
    out.in = ds_;
    out.W.assign(dt * ds, 0.0f);
    out.b.assign(dt, 0.0f);
    for (size_t t = 0; t < dt; ++t) {
        // b = ȳ − W·x̄ with the full means (shift + centred mean)
        double b = shift_y_[t] + my[t];
        for (size_t s = 0; s < ds; ++s) {
            const double w = C[s * dt + t];
            out.W[t * ds + s] = float(w);
            b -= w * (shift_x_[s] + mx[s]);
        }
        out.b[t] = float(b);
    }
}

// ---- files --------------------------------------------------------------------------------

namespace {

std::vector<std::string> tensor_names(MapKind k) {
    if (k == MapKind::Affine) return {"W", "b"};
    return {"W1", "b1", "W2", "b2"};
}

int meta_int(const std::map<std::string, std::string>& meta, const std::string& path, const std::string& key) {
    auto it = meta.find(key);
    if (it == meta.end()) fail(path, "map metadata has no '{}'", key);
    try {
        size_t used = 0;
        int v = std::stoi(it->second, &used);
        if (used != it->second.size() || v < 0) throw std::invalid_argument("");
        return v;
    } catch (const std::exception&) {
        fail(path, "map metadata '{}' = '{}' is not a non-negative integer", key, it->second);
    }
}

}  // namespace

void save_map(const std::filesystem::path& path, const Mapper& m) {
    std::map<std::string, std::string> meta = m.meta;
    meta["format"] = "stitch-map";
    meta["kind"] = map_kind_name(m.kind);
    meta["d_src"] = std::to_string(m.d_src());
    meta["d_tgt"] = std::to_string(m.d_tgt());
    meta["hidden"] = std::to_string(m.hidden());
    meta["stitch_version"] = STITCH_VERSION;
    std::vector<TensorOut> out;
    auto names = tensor_names(m.kind);
    for (size_t l = 0; l < m.layers.size(); ++l) {
        const auto& L = m.layers[l];
        out.push_back({names[2 * l], DType::F32, {L.out, L.in}, as_bytes_span(L.W)});
        out.push_back({names[2 * l + 1], DType::F32, {L.out}, as_bytes_span(L.b)});
    }
    write_safetensors(path, out, meta);
}

Mapper load_map(const std::filesystem::path& path) {
    const std::string p = path.string();
    if (!std::filesystem::exists(path)) fail(p, "no such map file");
    SafetensorsFile f(path);
    const auto& meta = f.metadata();
    auto fmt_it = meta.find("format");
    if (fmt_it == meta.end() || fmt_it->second != "stitch-map")
        fail(p, "not a stitch map (no format=stitch-map in its __metadata__)");
    auto kind_it = meta.find("kind");
    if (kind_it == meta.end()) fail(p, "map metadata has no 'kind'");
    Mapper m;
    if (kind_it->second == "affine") m.kind = MapKind::Affine;
    else if (kind_it->second == "autoencoder") m.kind = MapKind::Autoencoder;
    else fail(p, "map kind '{}' is not affine or autoencoder", kind_it->second);
    const int ds = meta_int(meta, p, "d_src"), dt = meta_int(meta, p, "d_tgt"), h = meta_int(meta, p, "hidden");
    if (ds == 0 || dt == 0 || (m.kind == MapKind::Autoencoder && h == 0))
        fail(p, "map metadata has a zero dimension (d_src {}, d_tgt {}, hidden {})", ds, dt, h);
    std::vector<std::pair<int, int>> shapes;
    if (m.kind == MapKind::Affine) shapes = {{dt, ds}};
    else shapes = {{h, ds}, {dt, h}};
    auto names = tensor_names(m.kind);
    for (size_t l = 0; l < shapes.size(); ++l) {
        auto [out, in] = shapes[l];
        const TensorInfo& w = f.get(names[2 * l]);
        const TensorInfo& b = f.get(names[2 * l + 1]);
        if (w.shape != std::vector<int64_t>{out, in})
            fail(p, "tensor {} has shape {}; the metadata says [{}, {}]", w.name, w.shape_str(), out, in);
        if (b.shape != std::vector<int64_t>{out})
            fail(p, "tensor {} has shape {}; the metadata says [{}]", b.name, b.shape_str(), out);
        LinearLayer L;
        L.out = out;
        L.in = in;
        L.W = f.to_f32(w);
        L.b = f.to_f32(b);
        for (float v : L.W)
            if (!std::isfinite(v)) fail(p, "tensor {} holds NaN or Inf", w.name);
        for (float v : L.b)
            if (!std::isfinite(v)) fail(p, "tensor {} holds NaN or Inf", b.name);
        m.layers.push_back(std::move(L));
    }
    if (f.tensors().size() != shapes.size() * 2)
        fail(p, "a {} map has {} tensors; this file has {}", map_kind_name(m.kind), shapes.size() * 2, f.tensors().size());
    m.meta = meta;
    return m;
}

void check_map_fits(const Mapper& m, const std::string& map_path, const MapSide& source, const MapSide* target,
                    bool check_model) {
    auto check = [&](const MapSide& side, const char* which, int dim) {
        const std::string pre = which;
        if (side.dim != dim)
            fail(map_path, "the map takes {} activations of width {}, but the {} has width {}", which, dim, which, side.dim);
        auto get = [&](const std::string& k) {
            auto it = m.meta.find(pre + "_" + k);
            return it == m.meta.end() ? std::string() : it->second;
        };
        if (const std::string s = get("site"); !s.empty() && !side.site.empty() && s != side.site)
            fail(map_path, "the map was trained on {} site {}, not {}", which, s, side.site);
        if (const std::string t = get("model_type"); !t.empty() && !side.model_type.empty() && t != side.model_type)
            fail(map_path, "the map was trained on a {} {} model, not {}", which, t, side.model_type);
        if (const std::string n = get("model"); check_model && !n.empty() && !side.model.empty() && n != side.model)
            fail(map_path, "the map was trained on {} model {}, not {} (--ignore-model to apply it anyway)", which, n,
                 side.model);
    };
    check(source, "source", m.d_src());
    if (target) check(*target, "target", m.d_tgt());
}

}  // namespace stitch

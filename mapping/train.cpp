#include "mapping/train.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <map>
#include <unordered_map>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/model.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/map_train.h"
#endif

namespace stitch {

using Clock = std::chrono::steady_clock;
static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- devices and backends -----------------------------------------------------------------

Device parse_device(const std::string& s) {
    if (s == "auto") return Device::Auto;
    if (s == "cpu") return Device::Cpu;
    if (s == "cuda") return Device::Cuda;
    fail("--device", "'{}' is not auto, cpu or cuda", s);
}

Device resolve_device(Device d, std::string* note) {
    if (d == Device::Cpu) return d;
#ifdef STITCH_HAVE_CUDA
    std::string why;
    if (cuda::device_count(&why) > 0) return Device::Cuda;
    if (d == Device::Cuda) fail("--device", "cuda: no CUDA device ({})", why);
    if (note) *note = fmt::format("no CUDA device ({}); using the CPU", why);
    return Device::Cpu;
#else
    if (d == Device::Cuda) fail("--device", "cuda: this stitch was built without CUDA (no nvcc at build time)");
    return Device::Cpu;
#endif
}

namespace {

class CpuBackend final : public MapBackend {
public:
    CpuBackend(const Mapper& m, int max_rows) : c_(m, max_rows) {}
    const char* name() const override { return "cpu"; }
    int max_rows() const override { return c_.max_rows(); }
    void train_step(const float* x, const float* y, const float* w, int rows, const AdamWConfig& c, int step,
                    RowStats* stats) override {
        c_.loss_and_grad(x, y, w, rows, stats);
        c_.adamw(c, step);
    }
    void eval(const float* x, const float* y, int rows, RowStats* stats) override { c_.forward(x, rows, y, stats); }
    void copy_to(Mapper& m) override { c_.copy_to(m); }

private:
    CpuMapCompute<float> c_;
};

#ifdef STITCH_HAVE_CUDA
class CudaBackend final : public MapBackend {
public:
    CudaBackend(const Mapper& m, int max_rows) : max_rows_(max_rows), c_(shapes(m), max_rows) {
        for (size_t l = 0; l < m.layers.size(); ++l) c_.set_params(int(l), m.layers[l].W.data(), m.layers[l].b.data());
    }
    const char* name() const override { return "cuda"; }
    int max_rows() const override { return max_rows_; }
    void train_step(const float* x, const float* y, const float* w, int rows, const AdamWConfig& c, int step,
                    RowStats* stats) override {
        static_assert(sizeof(RowStats) == 4 * sizeof(float));
        c_.train_step(x, y, w, rows, {c.lr, c.beta1, c.beta2, c.eps, c.weight_decay}, step,
                      reinterpret_cast<float*>(stats));
    }
    void eval(const float* x, const float* y, int rows, RowStats* stats) override {
        c_.eval(x, y, rows, reinterpret_cast<float*>(stats));
    }
    void copy_to(Mapper& m) override {
        for (size_t l = 0; l < m.layers.size(); ++l) c_.get_params(int(l), m.layers[l].W.data(), m.layers[l].b.data());
    }

private:
    static std::vector<cuda::MapLayerShape> shapes(const Mapper& m) {
        std::vector<cuda::MapLayerShape> s;
        for (const auto& l : m.layers) s.push_back({l.out, l.in});
        return s;
    }
    int max_rows_;
    cuda::MapTrainCuda c_;
};
#endif

}  // namespace

std::unique_ptr<MapBackend> make_backend(Device d, const Mapper& init, int max_rows) {
    d = resolve_device(d);
#ifdef STITCH_HAVE_CUDA
    if (d == Device::Cuda) return std::make_unique<CudaBackend>(init, max_rows);
#endif
    return std::make_unique<CpuBackend>(init, max_rows);
}

// ---- capture files --------------------------------------------------------------------------

namespace {

bool is_bookkeeping(const std::string& name) {
    return name == "token_ids" || name == "prompt_index" || name == "position";
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
    // splitmix64 over the parts: distinct, well-spread seeds for each (seed, epoch, chunk)
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (a + 1) + 0xbf58476d1ce4e5b9ull * (b + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

std::string model_identity(const std::string& path) {
    std::filesystem::path p(path);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" → "dir"
    if (p.extension() == ".gguf") return p.stem().string();
    return p.filename().string();
}

ActivationFile::ActivationFile(const std::string& path, const std::string& site, const std::string& site_flag,
                               const std::string& preferred)
    : path_(path) {
    if (!std::filesystem::exists(path)) fail(path, "no such file");
    file_ = std::make_unique<SafetensorsFile>(path);
    const SafetensorsFile& f = *file_;
    std::vector<const TensorInfo*> candidates;
    for (const auto& t : f.tensors())
        if (!is_bookkeeping(t.name) && is_float(t.dtype) && t.shape.size() == 2) candidates.push_back(&t);
    if (!site.empty()) {
        tensor_ = f.find(site);
        if (!tensor_) {
            std::vector<std::string> names;
            for (auto* t : candidates) names.push_back(t->name);
            fail(path, "has no tensor '{}' (activation tensors: {})", site, names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", ")));
        }
        if (!is_float(tensor_->dtype) || tensor_->shape.size() != 2)
            fail(path, "tensor {} is {} {}; activations are a [rows, d] float tensor", site, dtype_name(tensor_->dtype),
                 tensor_->shape_str());
    } else if (!preferred.empty() && f.find(preferred) && candidates.size() > 1) {
        tensor_ = f.find(preferred);
    } else {
        if (f.tensors().empty()) fail(path, "holds no tensors");
        if (candidates.empty()) fail(path, "holds no activation tensor (a [rows, d] float tensor)");
        if (candidates.size() > 1) {
            std::vector<std::string> names;
            for (auto* t : candidates) names.push_back(t->name);
            fail(path, "holds {} activation tensors ({}); choose one with {}", names.size(), fmt::join(names, ", "), site_flag);
        }
        tensor_ = candidates[0];
    }
    site_ = tensor_->name;
    rows_ = tensor_->shape[0];
    if (tensor_->shape[1] <= 0 || tensor_->shape[1] > (1 << 24)) fail(path, "tensor {} has width {}", site_, tensor_->shape[1]);
    dim_ = int(tensor_->shape[1]);
    if (rows_ == 0) fail(path, "tensor {} has no rows", site_);
    if (rows_ > INT32_MAX) fail(path, "tensor {} has {} rows; at most {} are supported", site_, rows_, INT32_MAX);
    const TensorInfo* pi = f.find("prompt_index");
    const TensorInfo* po = f.find("position");
    if (pi || po) {
        if (!pi || !po) fail(path, "has {} but no {}", pi ? "prompt_index" : "position", pi ? "position" : "prompt_index");
        prompt_index_ = f.to_i32(*pi);
        position_ = f.to_i32(*po);
        if (int64_t(prompt_index_.size()) != rows_ || int64_t(position_.size()) != rows_)
            fail(path, "prompt_index/position have {}/{} entries; {} has {} rows", prompt_index_.size(), position_.size(),
                 site_, rows_);
    }
    const auto& meta = f.metadata();
    if (auto it = meta.find("model"); it != meta.end()) model_ = model_identity(it->second);
    if (auto it = meta.find("model_type"); it != meta.end()) model_type_ = it->second;
    // Every row finite, checked once here so training never meets a NaN.
    std::vector<float> row(static_cast<size_t>(dim_));
    for (int64_t r = 0; r < rows_; ++r) {
        read_row(r, row.data());
        for (float v : row)
            if (!std::isfinite(v)) fail(path, "row {} of {} holds NaN or Inf", r, site_);
    }
}

void ActivationFile::read_row(int64_t r, float* out) const {
    const size_t es = dtype_size(tensor_->dtype);
    const uint8_t* src = file_->data(*tensor_).data() + size_t(r) * size_t(dim_) * es;
    if (tensor_->dtype == DType::F32) std::memcpy(out, src, size_t(dim_) * 4);
    else convert_to_f32(tensor_->dtype, src, out, size_t(dim_));
}

std::vector<RowPair> pair_rows(const ActivationFile& s, const ActivationFile& t) {
    std::vector<RowPair> pairs;
    pairs.reserve(size_t(s.rows()));
    if (!s.has_keys() || !t.has_keys()) {
        if (s.rows() != t.rows())
            fail(t.path(), "has {} rows of {}; {} has {} rows of {} (files without prompt_index/position pair by row order)",
                 t.rows(), t.site(), s.path(), s.rows(), s.site());
        for (int64_t r = 0; r < s.rows(); ++r) pairs.push_back({r, r, r});
        return pairs;
    }
    auto key = [](int32_t p, int32_t pos) { return (uint64_t(uint32_t(p)) << 32) | uint32_t(pos); };
    std::unordered_map<uint64_t, int64_t> tgt_row;
    tgt_row.reserve(size_t(t.rows()));
    for (int64_t r = 0; r < t.rows(); ++r) {
        auto [it, fresh] = tgt_row.emplace(key(t.prompt_index()[size_t(r)], t.position()[size_t(r)]), r);
        if (!fresh)
            fail(t.path(), "rows {} and {} are both prompt {} position {}", it->second, r, t.prompt_index()[size_t(r)],
                 t.position()[size_t(r)]);
    }
    std::vector<char> used(size_t(t.rows()), 0);
    for (int64_t r = 0; r < s.rows(); ++r) {
        const int32_t p = s.prompt_index()[size_t(r)], pos = s.position()[size_t(r)];
        auto it = tgt_row.find(key(p, pos));
        if (it == tgt_row.end())
            fail(s.path(), "row {} (prompt {}, position {}) has no row with the same prompt and position in {}", r, p, pos,
                 t.path());
        if (used[size_t(it->second)]) fail(s.path(), "prompt {} position {} appears in more than one row (row {})", p, pos, r);
        used[size_t(it->second)] = 1;
        pairs.push_back({r, it->second, p});
    }
    for (int64_t r = 0; r < t.rows(); ++r)
        if (!used[size_t(r)])
            fail(t.path(), "row {} (prompt {}, position {}) has no row with the same prompt and position in {}", r,
                 t.prompt_index()[size_t(r)], t.position()[size_t(r)], s.path());
    return pairs;
}

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = i;
    std::mt19937_64 rng(seed);
    for (int64_t i = n - 1; i > 0; --i) {
        const int64_t j = int64_t(rng() % uint64_t(i + 1));  // bias below 2^-40 for any realistic n
        std::swap(v[size_t(i)], v[size_t(j)]);
    }
    return v;
}

std::vector<char> choose_val_groups(int64_t n_groups, double val, uint64_t seed, const std::string& what) {
    std::vector<char> is_val(size_t(n_groups), 0);
    if (val <= 0) return is_val;
    if (n_groups < 2) fail(what, "--val {} needs at least 2 prompts (or rows) to hold some out; there is {}", val, n_groups);
    int64_t n_val = std::llround(val * double(n_groups));
    n_val = std::clamp<int64_t>(n_val, 1, n_groups - 1);
    auto order = shuffled_indices(n_groups, mix_seed(seed, 0x7661));
    for (int64_t i = 0; i < n_val; ++i) is_val[size_t(order[size_t(i)])] = 1;
    return is_val;
}

FilePairSource::FilePairSource(const ActivationFile& src, const ActivationFile& tgt, double val, uint64_t seed)
    : src_(src), tgt_(tgt), seed_(seed) {
    all_ = pair_rows(src, tgt);
    // dense group numbers (prompt indices may skip prompts that had no selected rows)
    std::map<int64_t, int64_t> dense;  // sorted, so prompt i is group i as in ModelPairSource
    for (const auto& p : all_) dense.emplace(p.group, 0);
    int64_t next = 0;
    for (auto& [group, index] : dense) index = next++;
    auto is_val = choose_val_groups(int64_t(dense.size()), val, seed, "--val");
    for (const auto& p : all_) (is_val[size_t(dense[p.group])] ? val_ : train_).push_back(p);
}

void FilePairSource::emit(const std::vector<RowPair>& pairs, const std::vector<int64_t>* order, const RowSink& sink) {
    constexpr int64_t kChunk = 2048;
    const int64_t n = int64_t(pairs.size());
    const int ds = src_.dim(), dt = tgt_.dim();
    x_.resize(size_t(std::min(n, kChunk)) * size_t(ds));
    y_.resize(size_t(std::min(n, kChunk)) * size_t(dt));
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
        const int64_t m = std::min(kChunk, n - c0);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; ++i) {
            const RowPair& p = pairs[size_t(order ? (*order)[size_t(c0 + i)] : c0 + i)];
            src_.read_row(p.src, x_.data() + i * ds);
            tgt_.read_row(p.tgt, y_.data() + i * dt);
        }
        sink(x_.data(), y_.data(), int(m));
    }
}

void FilePairSource::train_epoch(int epoch, const RowSink& sink) {
    auto order = shuffled_indices(int64_t(train_.size()), mix_seed(seed_, uint64_t(epoch)));
    emit(train_, &order, sink);
}
void FilePairSource::val_pass(const RowSink& sink) { emit(val_, nullptr, sink); }
void FilePairSource::all_pass(const RowSink& sink) { emit(all_, nullptr, sink); }

// ---- two models streamed ----------------------------------------------------------------------

Align parse_align(const std::string& s) {
    if (s == "index") return Align::Index;
    if (s == "last") return Align::Last;
    fail("--align", "'{}' is not index or last", s);
}

namespace {

int site_width(const Model& m, SiteRef s) { return s.site == Site::Logits ? m.config.vocab_size : m.config.hidden; }

// Runs prompts through a model and copies the rows of one site at the wanted positions:
// wanted[i] lists (position, output row) for prompt i of the batch.
void collect_site(const Model& m, SiteRef site, const std::vector<std::span<const int32_t>>& prompts,
                  const std::vector<std::vector<std::pair<int32_t, int64_t>>>& wanted, float* out, RunState& st) {
    const int d = site_width(m, site);
    std::vector<std::vector<int64_t>> slot(prompts.size());
    std::vector<KVCache> caches;
    caches.reserve(prompts.size());
    std::vector<SeqInput> in;
    for (size_t i = 0; i < prompts.size(); ++i) {
        slot[i].assign(prompts[i].size(), -1);
        for (auto [pos, row] : wanted[i]) slot[i][size_t(pos)] = row;
        caches.emplace_back(m.config, int(prompts[i].size()));
    }
    for (size_t i = 0; i < prompts.size(); ++i) in.push_back({&caches[i], prompts[i]});
    Hooks hooks;
    hooks.site_mask = 1u << int(site.site);
    hooks.read_only = true;  // only copies rows out
    size_t wanted_rows = 0, copied = 0;
    for (const auto& w : wanted) wanted_rows += w.size();
    hooks.on_site = [&](const SiteView& v) {
        if (v.site != site.site || v.layer != site.layer) return;
        for (int r = 0; r < v.rows; ++r) {
            const int64_t k = slot[size_t(v.seq[r])][size_t(v.pos[r])];
            if (k < 0) continue;
            std::memcpy(out + k * d, v.data + int64_t(r) * v.cols, size_t(d) * sizeof(float));
            ++copied;
        }
    };
    ForwardOptions fo;
    fo.hooks = &hooks;
    fo.all_logits = site.site == Site::Logits;
    forward(m, st, in, fo);
    if (copied != wanted_rows) fail(m.path, "internal: site {} gave {} of {} wanted rows", site.name(), copied, wanted_rows);
}

}  // namespace

ModelPairSource::ModelPairSource(const Model& src, SiteRef src_site, std::vector<std::vector<int32_t>> src_ids,
                                 const Model& tgt, SiteRef tgt_site, std::vector<std::vector<int32_t>> tgt_ids,
                                 const StreamOptions& opt)
    : src_(src), tgt_(tgt), src_site_(src_site), tgt_site_(tgt_site), src_ids_(std::move(src_ids)),
      tgt_ids_(std::move(tgt_ids)), opt_(opt) {
    const size_t n = src_ids_.size();
    if (n == 0) fail("--prompts", "holds no prompts");
    if (tgt_ids_.size() != n) fail("--prompts", "internal: {} vs {} encoded prompts", n, tgt_ids_.size());
    pairs_.resize(n);
    int64_t first_diff = -1;
    for (size_t i = 0; i < n; ++i) {
        const auto& a = src_ids_[i];
        const auto& b = tgt_ids_[i];
        if (a.empty() || b.empty()) fail("--prompts", "prompt {} encodes to no tokens", i);
        if (a == b) {
            for (int p : opt.positions.select(int(a.size()))) pairs_[i].push_back({p, p});
            continue;
        }
        if (first_diff < 0) first_diff = int64_t(i);
        ++differing_;
        if (opt.align == Align::Last) {
            pairs_[i].push_back({int32_t(a.size() - 1), int32_t(b.size() - 1)});
        } else {
            const int len = int(std::min(a.size(), b.size()));
            for (int p : opt.positions.select(len)) pairs_[i].push_back({p, p});
        }
    }
    if (differing_ > 0 && opt.align == Align::None)
        fail("--prompts", "{} of {} prompts tokenize differently in the two models (first: prompt {}); pass --align index "
             "(pair position i with position i up to the shorter length, the paper's way) or --align last (last tokens only)",
             differing_, n, first_diff);
    if (differing_ > 0 && opt.warn)
        opt.warn(fmt::format(
            "WARNING: {} of {} prompts tokenize differently in {} and {} (first: prompt {}); {}", differing_, n,
            model_identity(src.path), model_identity(tgt.path), first_diff,
            opt.align == Align::Last ? "pairing only their last tokens (--align last)"
                                     : "pairing them by index up to the shorter length (--align index, the paper's way): "
                                       "rows past the first differing token pair different text"));
    auto is_val = choose_val_groups(int64_t(n), opt.val, opt.seed, "--prompts");
    for (size_t i = 0; i < n; ++i) {
        if (is_val[i]) {
            val_prompts_.push_back(int64_t(i));
            val_rows_ += int64_t(pairs_[i].size());
        } else {
            train_prompts_.push_back(int64_t(i));
            train_rows_ += int64_t(pairs_[i].size());
        }
    }
    if (train_rows_ == 0) fail("--positions", "selector '{}' pairs no position in any training prompt", opt.positions.text);
}

int ModelPairSource::d_src() const { return site_width(src_, src_site_); }
int ModelPairSource::d_tgt() const { return site_width(tgt_, tgt_site_); }

void ModelPairSource::run(const std::vector<int64_t>& prompts, std::optional<uint64_t> shuffle_seed, const RowSink& sink) {
    const int ds = d_src(), dt = d_tgt();
    std::vector<float> bx, by;  // the buffer: pairs waiting to go out
    int64_t buffered = 0;
    uint64_t flushes = 0;
    std::vector<float> cx, cy;  // a shuffled chunk
    auto flush = [&] {
        if (buffered == 0) return;
        constexpr int64_t kChunk = 2048;
        std::vector<int64_t> order;
        if (shuffle_seed) order = shuffled_indices(buffered, mix_seed(*shuffle_seed, 0x6275, flushes++));
        cx.resize(size_t(std::min(buffered, kChunk)) * ds);
        cy.resize(size_t(std::min(buffered, kChunk)) * dt);
        for (int64_t c0 = 0; c0 < buffered; c0 += kChunk) {
            const int64_t m = std::min(kChunk, buffered - c0);
            if (shuffle_seed) {
                for (int64_t i = 0; i < m; ++i) {
                    const int64_t r = order[size_t(c0 + i)];
                    std::memcpy(cx.data() + i * ds, bx.data() + r * ds, size_t(ds) * 4);
                    std::memcpy(cy.data() + i * dt, by.data() + r * dt, size_t(dt) * 4);
                }
                sink(cx.data(), cy.data(), int(m));
            } else {
                sink(bx.data() + c0 * ds, by.data() + c0 * dt, int(m));
            }
        }
        buffered = 0;
    };
    RunState st_src, st_tgt;
    const size_t B = size_t(opt_.prompt_batch);
    for (size_t b0 = 0; b0 < prompts.size(); b0 += B) {
        const size_t b1 = std::min(prompts.size(), b0 + B);
        std::vector<std::span<const int32_t>> ps, pt;
        std::vector<std::vector<std::pair<int32_t, int64_t>>> ws, wt;
        int64_t rows = 0;
        for (size_t i = b0; i < b1; ++i) {
            const size_t p = size_t(prompts[i]);
            ps.push_back(src_ids_[p]);
            pt.push_back(tgt_ids_[p]);
            ws.emplace_back();
            wt.emplace_back();
            for (auto [a, b] : pairs_[p]) {
                ws.back().push_back({a, buffered + rows});
                wt.back().push_back({b, buffered + rows});
                ++rows;
            }
        }
        if (rows == 0) continue;
        bx.resize(size_t(buffered + rows) * ds);
        by.resize(size_t(buffered + rows) * dt);
        collect_site(src_, src_site_, ps, ws, bx.data(), st_src);
        collect_site(tgt_, tgt_site_, pt, wt, by.data(), st_tgt);
        for (int64_t r = buffered; r < buffered + rows; ++r) {
            for (int j = 0; j < ds; ++j)
                if (!std::isfinite(bx[size_t(r) * ds + j])) fail(src_.path, "activations at {} hold NaN or Inf", src_site_.name());
            for (int j = 0; j < dt; ++j)
                if (!std::isfinite(by[size_t(r) * dt + j])) fail(tgt_.path, "activations at {} hold NaN or Inf", tgt_site_.name());
        }
        buffered += rows;
        if (buffered >= opt_.buffer_rows) flush();
    }
    flush();
}

void ModelPairSource::train_epoch(int epoch, const RowSink& sink) {
    auto order = shuffled_indices(int64_t(train_prompts_.size()), mix_seed(opt_.seed, uint64_t(epoch)));
    std::vector<int64_t> prompts;
    prompts.reserve(order.size());
    for (int64_t i : order) prompts.push_back(train_prompts_[size_t(i)]);
    run(prompts, mix_seed(opt_.seed, uint64_t(epoch), 1), sink);
}

void ModelPairSource::val_pass(const RowSink& sink) { run(val_prompts_, std::nullopt, sink); }

void ModelPairSource::all_pass(const RowSink& sink) {
    std::vector<int64_t> all(src_ids_.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    run(all, std::nullopt, sink);
}

// ---- the step machinery and the epoch loop ----------------------------------------------------

StepRunner::StepRunner(MapBackend& backend, int d_src, int d_tgt, int batch, int accum, const AdamWConfig& c)
    : be_(backend), ds_(d_src), dt_(d_tgt), batch_(batch), accum_(accum), adamw_(c),
      x_(size_t(batch) * size_t(accum) * size_t(d_src)), y_(size_t(batch) * size_t(accum) * size_t(d_tgt)),
      w_(size_t(batch) * size_t(accum)), stats_(size_t(batch) * size_t(accum)), acc_(d_tgt) {
    if (batch * accum > backend.max_rows()) fail("map", "internal: step of {} rows > backend capacity {}", batch * accum, backend.max_rows());
}

void StepRunner::add_rows(const float* x, const float* y, int rows) {
    const int cap = batch_ * accum_;
    while (rows > 0) {
        const int take = std::min(cap - filled_, rows);
        std::memcpy(x_.data() + size_t(filled_) * ds_, x, size_t(take) * ds_ * sizeof(float));
        std::memcpy(y_.data() + size_t(filled_) * dt_, y, size_t(take) * dt_ * sizeof(float));
        filled_ += take;
        x += size_t(take) * ds_;
        y += size_t(take) * dt_;
        rows -= take;
        if (filled_ == cap) run_step();
    }
}

void StepRunner::end_epoch() { run_step(); }

void StepRunner::run_step() {
    if (filled_ == 0) return;
    const int k = (filled_ + batch_ - 1) / batch_;
    for (int i = 0; i < k; ++i) {
        const int n_i = std::min(batch_, filled_ - i * batch_);
        const float w = float(1.0 / (double(n_i) * k));
        std::fill(w_.begin() + i * batch_, w_.begin() + i * batch_ + n_i, w);
    }
    be_.train_step(x_.data(), y_.data(), w_.data(), filled_, adamw_, ++step_, stats_.data());
    double loss = 0;
    for (int i = 0; i < k; ++i) {
        const int n_i = std::min(batch_, filled_ - i * batch_);
        double sse = 0;
        for (int r = i * batch_; r < i * batch_ + n_i; ++r) sse += stats_[size_t(r)].sse;
        loss += sse / (double(n_i) * dt_) / k;
    }
    if (!std::isfinite(loss))
        fail("map", "training diverged at step {} (loss {}); lower --lr", step_, loss);
    losses_.push_back(loss);
    acc_.add(stats_.data(), y_.data(), filled_);
    filled_ = 0;
}

MapMetrics evaluate(MapBackend& be, int d_src, int d_tgt, const std::function<void(const RowSink&)>& pass) {
    MetricAccumulator acc(d_tgt);
    std::vector<RowStats> stats(size_t(be.max_rows()));
    pass([&](const float* x, const float* y, int rows) {
        for (int r0 = 0; r0 < rows; r0 += be.max_rows()) {
            const int n = std::min(be.max_rows(), rows - r0);
            be.eval(x + int64_t(r0) * d_src, y + int64_t(r0) * d_tgt, n, stats.data());
            acc.add(stats.data(), y + int64_t(r0) * d_tgt, n);
        }
    });
    return acc.result();
}

namespace {

// A progress line for long epochs: rows done, rows/s, ETA; a few updates a second on a
// terminal, one every 5 s into a log.
class RowProgress {
public:
    RowProgress(std::string what, int64_t total) : what_(std::move(what)), total_(total), tty_(isatty(2)) {}
    void update(int64_t done, bool force = false) {
        auto now = Clock::now();
        if (!force && std::chrono::duration<double>(now - last_).count() < (tty_ ? 0.25 : 5.0)) return;
        if (!force && seconds_since(start_) < 1.0) return;  // short epochs print only their summary
        last_ = now;
        const double el = seconds_since(start_), rate = el > 0 ? double(done) / el : 0;
        const double eta = rate > 0 && total_ > done ? double(total_ - done) / rate : 0;
        std::fprintf(stderr, "%s%s: %lld/%lld rows, %.0f rows/s, ETA %.0fs%s", tty_ ? "\r" : "", what_.c_str(),
                     (long long)done, (long long)total_, rate, eta, tty_ ? "\x1b[K" : "\n");
        printed_ = true;
    }
    void clear() {
        if (tty_ && printed_) std::fprintf(stderr, "\r\x1b[K");
    }

private:
    std::string what_;
    int64_t total_;
    bool tty_, printed_ = false;
    Clock::time_point start_ = Clock::now(), last_{};
};

std::string metrics_str(const MapMetrics& m) {
    return fmt::format("mse {:.6g} cosine {:.6f} fvu {:.4g}", m.mse, m.cosine, m.fvu);
}

}  // namespace

TrainReport train_adamw(Mapper& m, PairSource& src, const TrainOptions& opt) {
    if (src.d_src() != m.d_src() || src.d_tgt() != m.d_tgt())
        fail("map", "internal: map {}->{} for pairs {}->{}", m.d_src(), m.d_tgt(), src.d_src(), src.d_tgt());
    const int step_rows = opt.batch * opt.accum;
    const int cap = std::max(step_rows, 512);
    auto be = make_backend(opt.device, m, cap);
    TrainReport rep;
    rep.device = be->name();
    StepRunner runner(*be, m.d_src(), m.d_tgt(), opt.batch, opt.accum, opt.adamw);
    const int ds = m.d_src(), dt = m.d_tgt();
    Mapper best = m;
    double best_val = INFINITY;
    for (int e = 1; e <= opt.epochs; ++e) {
        RowProgress prog(fmt::format("map train: epoch {}/{}", e, opt.epochs), src.train_rows());
        int64_t done = 0;
        auto t0 = Clock::now();
        src.train_epoch(e - 1, [&](const float* x, const float* y, int rows) {
            runner.add_rows(x, y, rows);
            done += rows;
            if (opt.log) prog.update(done);
        });
        runner.end_epoch();
        const double secs = seconds_since(t0);
        prog.clear();
        rep.train_seconds += secs;
        rep.train_rows_seen += done;
        EpochReport er;
        er.epoch = e;
        er.seconds = secs;
        er.rows_per_s = secs > 0 ? double(done) / secs : 0;
        er.train = runner.metrics().result();
        runner.metrics().reset();
        if (src.val_rows() > 0)
            er.val = evaluate(*be, ds, dt, [&](const RowSink& s) { src.val_pass(s); });
        rep.epochs.push_back(er);
        if (opt.log)
            opt.log(fmt::format("map train: epoch {}/{}: train {} | val {} | {:.0f} rows/s", e, opt.epochs,
                                metrics_str(er.train), src.val_rows() > 0 ? metrics_str(er.val) : std::string("(none)"),
                                er.rows_per_s));
        if (opt.patience > 0 && src.val_rows() > 0) {
            if (er.val.mse < best_val) {
                best_val = er.val.mse;
                rep.best_epoch = e;
                be->copy_to(best);
            } else if (e - rep.best_epoch >= opt.patience) {
                if (opt.log)
                    opt.log(fmt::format("map train: no better val MSE for {} epochs; stopping and keeping epoch {}",
                                        opt.patience, rep.best_epoch));
                break;
            }
        }
    }
    rep.step_losses = runner.step_losses();
    if (opt.patience > 0 && rep.best_epoch > 0) {
        m.layers = best.layers;
    } else {
        be->copy_to(m);
        rep.best_epoch = int(rep.epochs.size());
    }
    rep.train = rep.epochs[size_t(rep.best_epoch - 1)].train;
    rep.val = rep.epochs[size_t(rep.best_epoch - 1)].val;
    return rep;
}

TrainReport fit_ridge(Mapper& m, PairSource& src, double ridge, const TrainOptions& opt) {
    if (m.kind != MapKind::Affine) fail("--solver", "ridge fits affine maps only (use --kind affine)");
    RidgeAccumulator acc(src.d_src(), src.d_tgt());
    TrainReport rep;
    rep.device = "cpu";
    RowProgress prog("map train: ridge", src.train_rows());
    int64_t done = 0;
    auto t0 = Clock::now();
    src.train_epoch(0, [&](const float* x, const float* y, int rows) {
        acc.add(x, y, rows);
        done += rows;
        if (opt.log) prog.update(done);
    });
    acc.solve(ridge, m.layers[0]);
    rep.train_seconds = seconds_since(t0);
    prog.clear();
    rep.train_rows_seen = done;
    const int ds = m.d_src(), dt = m.d_tgt(), cap = 1024;
    auto be = make_backend(Device::Cpu, m, cap);
    EpochReport er;
    er.epoch = 1;
    er.seconds = rep.train_seconds;
    er.rows_per_s = er.seconds > 0 ? double(done) / er.seconds : 0;
    er.train = evaluate(*be, ds, dt, [&](const RowSink& s) { src.train_epoch(0, s); });
    if (src.val_rows() > 0) er.val = evaluate(*be, ds, dt, [&](const RowSink& s) { src.val_pass(s); });
    if (opt.log)
        opt.log(fmt::format("map train: ridge: train {} | val {}", metrics_str(er.train),
                            src.val_rows() > 0 ? metrics_str(er.val) : std::string("(none)")));
    rep.epochs.push_back(er);
    rep.best_epoch = 1;
    rep.train = er.train;
    rep.val = er.val;
    return rep;
}

}  // namespace stitch

// Training maps (DESIGN.md §5): where activation pairs come from (two capture files, or two
// models run side by side on a prompt file), how they are split, shuffled and batched, and the
// epoch loop with AdamW (CPU or CUDA) or the closed-form ridge fit.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "engine/sites.h"
#include "mapping/mapper.h"

namespace stitch {

struct Model;

// ---- compute devices ------------------------------------------------------------------------

enum class Device : uint8_t { Auto, Cpu, Cuda };
Device parse_device(const std::string& s);  // auto | cpu | cuda; throws stitch::Error
// Auto → Cuda when a device is there, else Cpu (note says why, if given). Cuda without a device
// (or in a build without CUDA) → stitch::Error.
Device resolve_device(Device d, std::string* note = nullptr);

// One map's forward/backward/AdamW on one device, for up to max_rows rows at a time.
class MapBackend {
public:
    virtual ~MapBackend() = default;
    virtual const char* name() const = 0;
    virtual int max_rows() const = 0;
    // Forward, loss gradient with per-row weights (see CpuMapCompute), backward, AdamW.
    virtual void train_step(const float* x, const float* y, const float* row_weight, int rows, const AdamWConfig& c,
                            int step, RowStats* stats) = 0;
    virtual void eval(const float* x, const float* y, int rows, RowStats* stats) = 0;
    virtual void copy_to(Mapper& m) = 0;  // current parameters into m's layers
};
std::unique_ptr<MapBackend> make_backend(Device d, const Mapper& init, int max_rows);

// ---- pair sources -----------------------------------------------------------------------------

using RowSink = std::function<void(const float* x, const float* y, int rows)>;

// Training pairs and validation pairs, delivered in chunks of rows.
class PairSource {
public:
    virtual ~PairSource() = default;
    virtual int d_src() const = 0;
    virtual int d_tgt() const = 0;
    virtual int64_t train_rows() const = 0;
    virtual int64_t val_rows() const = 0;
    // Every training pair once, shuffled for this epoch (a seeded function of seed and epoch).
    virtual void train_epoch(int epoch, const RowSink& sink) = 0;
    // The validation pairs, in a fixed order.
    virtual void val_pass(const RowSink& sink) = 0;
    // Every pair (train and val), in file/prompt order: for eval and apply.
    virtual void all_pass(const RowSink& sink) = 0;
};

// The activation tensor of one capture file (stitch capture's format: one [rows, d] float
// tensor per site, optional I32 prompt_index/position/token_ids). Every row is checked
// for NaN/Inf when the file is opened.
class ActivationFile {
public:
    // site empty: the file must hold exactly one activation tensor, or (when it holds several)
    // one named `preferred` (a map's recorded site). site_flag names the option in errors.
    ActivationFile(const std::string& path, const std::string& site, const std::string& site_flag,
                   const std::string& preferred = "");
    const std::string& path() const { return path_; }
    const std::string& site() const { return site_; }
    int64_t rows() const { return rows_; }
    int dim() const { return dim_; }
    // model identity from the file's metadata (empty when unknown)
    const std::string& model() const { return model_; }
    const std::string& model_type() const { return model_type_; }
    bool has_keys() const { return !prompt_index_.empty(); }
    const std::vector<int32_t>& prompt_index() const { return prompt_index_; }
    const std::vector<int32_t>& position() const { return position_; }
    // Row r as float32 into out[dim].
    void read_row(int64_t r, float* out) const;
    const SafetensorsFile& file() const { return *file_; }

private:
    std::string path_, site_, model_, model_type_;
    std::unique_ptr<SafetensorsFile> file_;
    const TensorInfo* tensor_ = nullptr;
    int64_t rows_ = 0;
    int dim_ = 0;
    std::vector<int32_t> prompt_index_, position_;
};

// The model name stored in maps and compared when one is applied: a model path's last
// component (a .gguf file's stem), so the same model in another folder still matches.
std::string model_identity(const std::string& path);

// Rows of two files paired: by (prompt_index, position) when both files have those tensors,
// else by row order. Every source row must meet exactly one target row and vice versa;
// anything else is a stitch::Error naming the first offending row.
struct RowPair {
    int64_t src, tgt;
    int64_t group;  // prompt index (or the row when there are none): validation holds out whole groups
};
std::vector<RowPair> pair_rows(const ActivationFile& src, const ActivationFile& tgt);

// Which of n_groups groups go to validation: round(val · n_groups) of them (at least one when
// val > 0, never all), chosen by a seeded shuffle. Throws when val > 0 and n_groups < 2.
std::vector<char> choose_val_groups(int64_t n_groups, double val, uint64_t seed, const std::string& what);

// A seeded permutation of 0..n−1, the same on every platform (Fisher–Yates on mt19937_64).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed);

class FilePairSource : public PairSource {
public:
    FilePairSource(const ActivationFile& src, const ActivationFile& tgt, double val, uint64_t seed);
    int d_src() const override { return src_.dim(); }
    int d_tgt() const override { return tgt_.dim(); }
    int64_t train_rows() const override { return int64_t(train_.size()); }
    int64_t val_rows() const override { return int64_t(val_.size()); }
    void train_epoch(int epoch, const RowSink& sink) override;
    void val_pass(const RowSink& sink) override;
    void all_pass(const RowSink& sink) override;

private:
    void emit(const std::vector<RowPair>& pairs, const std::vector<int64_t>* order, const RowSink& sink);
    const ActivationFile& src_;
    const ActivationFile& tgt_;
    std::vector<RowPair> all_, train_, val_;
    uint64_t seed_;
    std::vector<float> x_, y_;
};

// Two models run on the same prompts; rows of a site in each paired by position and
// streamed to the trainer through a bounded, shuffled buffer (nothing goes to disk).
enum class Align : uint8_t { None, Index, Last };
Align parse_align(const std::string& s);  // index | last

struct StreamOptions {
    PositionSelector positions;
    Align align = Align::None;  // for prompts the two tokenizers split differently
    int64_t buffer_rows = 16384;
    int prompt_batch = 8;
    double val = 0.1;
    uint64_t seed = 0;
    std::function<void(const std::string&)> warn;  // loud warnings (stderr)
};

class ModelPairSource : public PairSource {
public:
    ModelPairSource(const Model& src, SiteRef src_site, std::vector<std::vector<int32_t>> src_ids, const Model& tgt,
                    SiteRef tgt_site, std::vector<std::vector<int32_t>> tgt_ids, const StreamOptions& opt);
    int d_src() const override;
    int d_tgt() const override;
    int64_t train_rows() const override { return train_rows_; }
    int64_t val_rows() const override { return val_rows_; }
    void train_epoch(int epoch, const RowSink& sink) override;
    void val_pass(const RowSink& sink) override;
    void all_pass(const RowSink& sink) override;
    int64_t prompts_differing() const { return differing_; }

private:
    // Runs the prompts (in this order) and hands their pairs to `sink` through the buffer,
    // shuffled within it when shuffle_seed is set.
    void run(const std::vector<int64_t>& prompts, std::optional<uint64_t> shuffle_seed, const RowSink& sink);
    const Model& src_;
    const Model& tgt_;
    SiteRef src_site_, tgt_site_;
    std::vector<std::vector<int32_t>> src_ids_, tgt_ids_;
    // per prompt: the paired (source position, target position)
    std::vector<std::vector<std::pair<int32_t, int32_t>>> pairs_;
    std::vector<int64_t> train_prompts_, val_prompts_;
    int64_t train_rows_ = 0, val_rows_ = 0, differing_ = 0;
    StreamOptions opt_;
};

// ---- training ---------------------------------------------------------------------------------

struct TrainOptions {
    int epochs = 3;
    int batch = 16;  // rows per micro-batch
    int accum = 4;   // micro-batches per optimizer step
    int patience = 0;  // stop after this many epochs without a better val MSE (0: never); keep the best
    AdamWConfig adamw;
    Device device = Device::Auto;
    std::function<void(const std::string&)> log;  // per-epoch lines and progress (stderr)
};

struct EpochReport {
    int epoch = 0;
    MapMetrics train, val;
    double seconds = 0, rows_per_s = 0;
};

struct TrainReport {
    std::vector<EpochReport> epochs;
    std::vector<double> step_losses;  // one per optimizer step
    int best_epoch = 0;               // the epoch whose weights were kept (1-based)
    MapMetrics train, val;            // of the kept weights' epoch
    int64_t train_rows_seen = 0;
    double train_seconds = 0;  // time inside the epoch loops (pair delivery included)
    std::string device;
};

// The step machinery on its own: rows go in, a step runs whenever batch·accum rows have
// arrived, end_epoch() runs the partial last step. Micro-batch i of a step's k gets row
// weight 1/(n_i·k), so a step's gradient is the mean of its micro-batches' MSE gradients
// and step_losses() the mean of their losses (torch: (loss_i/k).backward() for each, then step).
class StepRunner {
public:
    StepRunner(MapBackend& backend, int d_src, int d_tgt, int batch, int accum, const AdamWConfig& c);
    void add_rows(const float* x, const float* y, int rows);
    void end_epoch();
    const std::vector<double>& step_losses() const { return losses_; }
    MetricAccumulator& metrics() { return acc_; }
    int steps() const { return step_; }

private:
    void run_step();
    MapBackend& be_;
    int ds_, dt_, batch_, accum_;
    AdamWConfig adamw_;
    std::vector<float> x_, y_, w_;
    std::vector<RowStats> stats_;
    int filled_ = 0, step_ = 0;
    std::vector<double> losses_;
    MetricAccumulator acc_;
};

// Metrics of a map on the rows a pass delivers (CPU or CUDA backend).
MapMetrics evaluate(MapBackend& be, int d_src, int d_tgt, const std::function<void(const RowSink&)>& pass);

// AdamW epochs over the source; returns the per-epoch metrics. `m` holds the initial weights
// and gets the kept ones (the last epoch's, or with patience the best val epoch's).
TrainReport train_adamw(Mapper& m, PairSource& src, const TrainOptions& opt);

// Closed-form affine fit on the training rows (one pass), metrics on train and val.
TrainReport fit_ridge(Mapper& m, PairSource& src, double ridge, const TrainOptions& opt);

}  // namespace stitch

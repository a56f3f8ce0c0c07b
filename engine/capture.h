// `stitch capture`: residual-stream sites of many prompts streamed to one safetensors file.
// Rows go to per-tensor spill files as they are produced, so memory stays bounded however
// many prompts; the final file is assembled under a temporary name and renamed at the end.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <map>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/interrupt.h"
#include "engine/model.h"
#include "engine/sites.h"
#include "engine/steer.h"

namespace stitch {

// A safetensors file whose tensors grow by rows. Nothing appears under `path` until finish(),
// and a killed process leaves no file behind: when every tensor's row count is announced, rows
// are written in place into an anonymous (O_TMPFILE) file that finish() links in; otherwise they
// go to unlinked spill files that finish() joins.
class StreamingSafetensorsWriter {
public:
    StreamingSafetensorsWriter(std::filesystem::path path, std::map<std::string, std::string> metadata);
    ~StreamingSafetensorsWriter();  // removes the spill files (and the output's .tmp) if unfinished
    StreamingSafetensorsWriter(const StreamingSafetensorsWriter&) = delete;
    StreamingSafetensorsWriter& operator=(const StreamingSafetensorsWriter&) = delete;

    // A tensor of shape [rows, width] (width 0: shape [rows]). dtype F32/F16/BF16 or I32.
    // expected_rows >= 0 announces the final row count (finish() checks it).
    int add_tensor(std::string name, DType dtype, int64_t width, int64_t expected_rows = -1);
    void append_rows(int tensor, const float* rows, int64_t n);    // float tensors, n rows of width
    void append_i32(int tensor, const int32_t* values, int64_t n);  // I32 tensors of width 0
    int64_t rows(int tensor) const;
    void finish();

private:
    struct Part;
    void start();
    void open_output();
    std::string header_bytes() const;
    void write_at(const void* data, size_t n, uint64_t offset);
    void append(Part& p, const void* src, int64_t n);

    std::filesystem::path path_;
    std::map<std::string, std::string> metadata_;
    std::vector<Part*> parts_;  // owned
    bool started_ = false, direct_ = false, finished_ = false;
    int out_fd_ = -1;
    std::string out_tmp_;  // named temporary (no O_TMPFILE, or linked in by finish)
    std::unique_ptr<interrupt::TempFile> tmp_guard_;  // out_tmp_, removed on SIGINT/SIGTERM
    std::vector<uint8_t> scratch_;
};

struct CaptureOptions {
    std::vector<SiteRef> sites;
    PositionSelector positions;
    DType dtype = DType::F32;
    int batch = 8;
    const Steering* steering = nullptr;  // applied before the taps see a site (bound to the same prompts)
    std::function<void(long prompts_done, long tokens_done)> on_progress;
};

struct CaptureStats {
    long prompts = 0, tokens = 0, rows = 0;
};

// Runs every prompt (token ids) through the model and writes the selected rows of every site.
CaptureStats capture_to_file(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                             const CaptureOptions& opt, const std::filesystem::path& out,
                             std::map<std::string, std::string> metadata);

}  // namespace stitch

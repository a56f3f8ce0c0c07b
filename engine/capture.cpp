#include "engine/capture.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace stitch {

struct StreamingSafetensorsWriter::Part {
    std::string name;
    DType dtype;
    int64_t width;
    int64_t expected;    // rows known in advance, else -1
    int64_t rows = 0;
    uint64_t offset = 0; // direct mode: byte offset of this tensor's data in the output
    std::FILE* spill = nullptr;
    size_t row_bytes() const { return size_t(std::max<int64_t>(width, 1)) * dtype_size(dtype); }
};

StreamingSafetensorsWriter::StreamingSafetensorsWriter(std::filesystem::path path, std::map<std::string, std::string> metadata)
    : path_(std::move(path)), metadata_(std::move(metadata)) {}

StreamingSafetensorsWriter::~StreamingSafetensorsWriter() {
    for (Part* p : parts_) {
        if (p->spill) std::fclose(p->spill);
        delete p;
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    std::error_code ec;
    if (!finished_ && !out_tmp_.empty()) std::filesystem::remove(out_tmp_, ec);
}

int StreamingSafetensorsWriter::add_tensor(std::string name, DType dtype, int64_t width, int64_t expected_rows) {
    if (started_) fail(path_.string(), "internal: tensor added after rows were written");
    parts_.push_back(new Part{std::move(name), dtype, width, expected_rows});
    return int(parts_.size() - 1);
}

std::string StreamingSafetensorsWriter::header_bytes() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t offset = 0;
    for (const Part* p : parts_) {
        const int64_t rows = p->expected >= 0 ? p->expected : p->rows;
        std::vector<int64_t> shape = {rows};
        if (p->width > 0) shape.push_back(p->width);
        const uint64_t bytes = uint64_t(rows) * p->row_bytes();
        header[p->name] = {{"dtype", std::string(dtype_name(p->dtype))}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string h = header.dump();
    while (h.size() % 8) h += ' ';
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(h.size()) >> (8 * i)) & 0xff);
    return out + h;
}

// The output file under construction: an anonymous O_TMPFILE in the output's folder (nothing
// to clean up if the process dies; linked in by finish()), or PATH.tmp where the file system
// has no O_TMPFILE.
void StreamingSafetensorsWriter::open_output() {
    auto dir = path_.parent_path().empty() ? std::filesystem::path(".") : path_.parent_path();
#ifdef O_TMPFILE
    out_fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
#endif
    if (out_fd_ < 0) {
        out_tmp_ = path_.string() + ".tmp";
        tmp_guard_ = std::make_unique<interrupt::TempFile>(out_tmp_);
        out_fd_ = ::open(out_tmp_.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    }
    if (out_fd_ < 0) fail(path_.string(), "cannot open for writing");
}

void StreamingSafetensorsWriter::write_at(const void* data, size_t n, uint64_t offset) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::pwrite(out_fd_, p, n, off_t(offset));
        if (w <= 0) fail(path_.string(), "write failed (disk full?)");
        p += w, n -= size_t(w), offset += uint64_t(w);
    }
}

void StreamingSafetensorsWriter::start() {
    started_ = true;
    direct_ = std::all_of(parts_.begin(), parts_.end(), [](const Part* p) { return p->expected >= 0; });
    if (direct_) {
        // Every size is known: write the header now and each row straight to its place.
        open_output();
        const std::string h = header_bytes();
        write_at(h.data(), h.size(), 0);
        uint64_t offset = h.size();
        for (Part* p : parts_) {
            p->offset = offset;
            offset += uint64_t(p->expected) * p->row_bytes();
        }
        if (::ftruncate(out_fd_, off_t(offset)) != 0) fail(path_.string(), "cannot size the output (disk full?)");
        return;
    }
    // Sizes unknown: rows go to spill files, unlinked as soon as they are open (the data lives
    // while this process does; a killed process leaves nothing behind), joined by finish().
    for (size_t i = 0; i < parts_.size(); ++i) {
        const std::string spill = path_.string() + ".tmp." + std::to_string(i);
        parts_[i]->spill = std::fopen(spill.c_str(), "w+b");
        if (!parts_[i]->spill) fail(path_.string(), "cannot create a temporary file next to it");
        std::error_code ec;
        std::filesystem::remove(spill, ec);
    }
}

void StreamingSafetensorsWriter::append(Part& p, const void* src, int64_t n) {
    const size_t bytes = size_t(n) * p.row_bytes();
    if (direct_) {
        if (p.rows + n > p.expected) fail(path_.string(), "internal: more rows for {} than announced ({})", p.name, p.expected);
        write_at(src, bytes, p.offset + uint64_t(p.rows) * p.row_bytes());
    } else if (std::fwrite(src, 1, bytes, p.spill) != bytes) {
        fail(path_.string(), "write failed (disk full?)");
    }
    p.rows += n;
}

void StreamingSafetensorsWriter::append_rows(int t, const float* rows, int64_t n) {
    if (!started_) start();
    Part& p = *parts_[size_t(t)];
    const size_t count = size_t(n * p.width);
    if (p.dtype == DType::F32) return append(p, rows, n);
    scratch_.resize(count * 2);
    auto* h = reinterpret_cast<uint16_t*>(scratch_.data());
    for (size_t i = 0; i < count; ++i) h[i] = p.dtype == DType::F16 ? f32_to_f16(rows[i]) : f32_to_bf16(rows[i]);
    append(p, scratch_.data(), n);
}

void StreamingSafetensorsWriter::append_i32(int t, const int32_t* values, int64_t n) {
    if (!started_) start();
    append(*parts_[size_t(t)], values, n);
}

int64_t StreamingSafetensorsWriter::rows(int t) const { return parts_[size_t(t)]->rows; }

void StreamingSafetensorsWriter::finish() {
    if (!started_) start();
    if (direct_) {
        for (const Part* p : parts_)
            if (p->rows != p->expected) fail(path_.string(), "internal: {} has {} rows, {} announced", p->name, p->rows, p->expected);
    } else {
        open_output();
        const std::string h = header_bytes();
        write_at(h.data(), h.size(), 0);
        uint64_t offset = h.size();
        std::vector<char> buf(1 << 20);
        for (Part* p : parts_) {
            if (std::fflush(p->spill) != 0 || std::fseek(p->spill, 0, SEEK_SET) != 0) fail(path_.string(), "write failed (disk full?)");
            size_t n;
            while ((n = std::fread(buf.data(), 1, buf.size(), p->spill)) > 0) {
                write_at(buf.data(), n, offset);
                offset += n;
            }
            if (std::ferror(p->spill)) fail(path_.string(), "reading a temporary file failed");
            std::fclose(p->spill);
            p->spill = nullptr;
        }
    }
    // Make the finished file appear under its name in one step.
    if (out_tmp_.empty()) {
        const std::string tmp = path_.string() + ".tmp";
        std::error_code ec;
        std::filesystem::remove(tmp, ec);
        const std::string fd_path = "/proc/self/fd/" + std::to_string(out_fd_);
        if (::linkat(AT_FDCWD, fd_path.c_str(), AT_FDCWD, tmp.c_str(), AT_SYMLINK_FOLLOW) != 0)
            fail(path_.string(), "cannot link the finished file into place");
        out_tmp_ = tmp;
        tmp_guard_ = std::make_unique<interrupt::TempFile>(out_tmp_);
    }
    ::close(out_fd_);
    out_fd_ = -1;
    std::filesystem::rename(out_tmp_, path_);
    finished_ = true;
}

CaptureStats capture_to_file(const Model& m, const std::vector<std::vector<int32_t>>& prompts, const CaptureOptions& opt,
                             const std::filesystem::path& out, std::map<std::string, std::string> metadata) {
    const ModelConfig& c = m.config;
    // match=TEXT: the positions of TEXT in each prompt
    std::vector<std::vector<char>> masks;
    if (opt.positions.kind == PositionSelector::Match)
        for (const auto& p : prompts) masks.push_back(match_mask(m.tokenizer, p, opt.positions.match_text));
    auto mask_of = [&](size_t i) { return masks.empty() ? nullptr : &masks[i]; };
    size_t selected = 0;
    for (size_t i = 0; i < prompts.size(); ++i) selected += opt.positions.select(int(prompts[i].size()), mask_of(i)).size();
    if (selected == 0) fail("--positions", "selector '{}' matches no position in any prompt", opt.positions.text);
    StreamingSafetensorsWriter w(out, std::move(metadata));
    // one output tensor per site, then the row bookkeeping
    std::map<std::pair<int, int>, int> site_tensor;
    uint32_t mask = 0;
    bool need_all_logits = false;
    for (const auto& s : opt.sites) {
        const int64_t width = s.site == Site::Logits ? c.vocab_size : c.hidden;
        site_tensor[{int(s.site), s.layer}] = w.add_tensor(s.name(), opt.dtype, width, int64_t(selected));
        mask |= 1u << int(s.site);
        if (s.site == Site::Logits && opt.positions.kind != PositionSelector::Last) need_all_logits = true;
    }
    const int t_ids = w.add_tensor("token_ids", DType::I32, 0, int64_t(selected));
    const int t_prompt = w.add_tensor("prompt_index", DType::I32, 0, int64_t(selected));
    const int t_pos = w.add_tensor("position", DType::I32, 0, int64_t(selected));

    CaptureStats stats;
    std::vector<float> rows_buf;
    RunState st;  // scratch reused by every batch
    for (size_t b0 = 0; b0 < prompts.size(); b0 += size_t(opt.batch)) {
        const size_t b1 = std::min(prompts.size(), b0 + size_t(opt.batch));
        // selected positions of every prompt in this batch
        std::vector<std::vector<char>> keep(b1 - b0);
        std::vector<KVCache> caches;
        caches.reserve(b1 - b0);
        std::vector<SeqInput> in;
        for (size_t i = b0; i < b1; ++i) {
            const int len = int(prompts[i].size());
            keep[i - b0].assign(size_t(len), 0);
            for (int p : opt.positions.select(len, mask_of(i))) keep[i - b0][size_t(p)] = 1;
            caches.emplace_back(c, len);
        }
        for (size_t i = b0; i < b1; ++i) in.push_back({&caches[i - b0], prompts[i], int32_t(i)});
        Hooks hooks;
        hooks.site_mask = mask;
        hooks.steering = opt.steering;  // applied where the model runs, before the tap reads the rows
        hooks.read_only = true;         // the tap only copies rows out
        hooks.on_site = [&](const SiteView& v) {
            auto it = site_tensor.find({int(v.site), v.layer});
            if (it == site_tensor.end()) return;
            rows_buf.clear();
            int64_t n = 0;
            for (int r = 0; r < v.rows; ++r) {
                if (!keep[size_t(v.seq[r]) - b0][size_t(v.pos[r])]) continue;
                rows_buf.insert(rows_buf.end(), v.data + int64_t(r) * v.cols, v.data + int64_t(r + 1) * v.cols);
                ++n;
            }
            w.append_rows(it->second, rows_buf.data(), n);
        };
        ForwardOptions fo;
        fo.hooks = &hooks;
        fo.all_logits = need_all_logits;
        forward(m, st, in, fo);
        for (size_t i = b0; i < b1; ++i) {
            for (size_t p = 0; p < prompts[i].size(); ++p) {
                if (!keep[i - b0][p]) continue;
                const int32_t pi = int32_t(i), pp = int32_t(p);
                w.append_i32(t_ids, &prompts[i][p], 1);
                w.append_i32(t_prompt, &pi, 1);
                w.append_i32(t_pos, &pp, 1);
                ++stats.rows;
            }
            stats.tokens += long(prompts[i].size());
        }
        stats.prompts = long(b1);
        if (opt.on_progress) opt.on_progress(stats.prompts, stats.tokens);
    }
    // a site whose selected rows never reached a hook (logits at non-last rows) would disagree
    for (const auto& [key, t] : site_tensor)
        if (w.rows(t) != stats.rows) fail(out.string(), "internal: site rows {} != selected rows {}", w.rows(t), stats.rows);
    w.finish();
    return stats;
}

}  // namespace stitch

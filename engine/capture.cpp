#include "engine/capture.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace stitch {

struct StreamingSafetensorsWriter::Part {
    std::string name;
    DType dtype;
    int64_t width;
    int64_t rows = 0;
    std::filesystem::path spill;
    std::FILE* f = nullptr;
};

StreamingSafetensorsWriter::StreamingSafetensorsWriter(std::filesystem::path path, std::map<std::string, std::string> metadata)
    : path_(std::move(path)), metadata_(std::move(metadata)) {}

StreamingSafetensorsWriter::~StreamingSafetensorsWriter() {
    std::error_code ec;
    for (Part* p : parts_) {
        if (p->f) std::fclose(p->f);
        std::filesystem::remove(p->spill, ec);
        delete p;
    }
    if (!finished_) std::filesystem::remove(path_.string() + ".tmp", ec);
}

int StreamingSafetensorsWriter::add_tensor(std::string name, DType dtype, int64_t width) {
    auto* p = new Part{std::move(name), dtype, width, 0, path_.string() + ".tmp." + std::to_string(parts_.size()), nullptr};
    parts_.push_back(p);
    // Spill files are unlinked as soon as they are open: the data lives while this process
    // does, and a killed process leaves nothing behind.
    p->f = std::fopen(p->spill.c_str(), "w+b");
    if (!p->f) fail(path_.string(), "cannot create a temporary file next to it");
    std::error_code ec;
    std::filesystem::remove(p->spill, ec);
    return int(parts_.size() - 1);
}

void StreamingSafetensorsWriter::append_rows(int t, const float* rows, int64_t n) {
    Part& p = *parts_[size_t(t)];
    const size_t count = size_t(n * p.width);
    size_t bytes = 0;
    const void* src = rows;
    if (p.dtype == DType::F32) {
        bytes = count * 4;
    } else {
        scratch_.resize(count * 2);
        auto* h = reinterpret_cast<uint16_t*>(scratch_.data());
        for (size_t i = 0; i < count; ++i) h[i] = p.dtype == DType::F16 ? f32_to_f16(rows[i]) : f32_to_bf16(rows[i]);
        bytes = count * 2;
        src = scratch_.data();
    }
    if (std::fwrite(src, 1, bytes, p.f) != bytes) fail(path_.string(), "write failed (disk full?)");
    p.rows += n;
}

void StreamingSafetensorsWriter::append_i32(int t, const int32_t* values, int64_t n) {
    Part& p = *parts_[size_t(t)];
    if (std::fwrite(values, 4, size_t(n), p.f) != size_t(n)) fail(path_.string(), "write failed (disk full?)");
    p.rows += n;
}

int64_t StreamingSafetensorsWriter::rows(int t) const { return parts_[size_t(t)]->rows; }

void StreamingSafetensorsWriter::finish() {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t offset = 0;
    for (Part* p : parts_) {
        if (std::fflush(p->f) != 0) fail(path_.string(), "write failed (disk full?)");
        std::vector<int64_t> shape = {p->rows};
        if (p->width > 0) shape.push_back(p->width);
        uint64_t bytes = uint64_t(p->rows) * uint64_t(std::max<int64_t>(p->width, 1)) * dtype_size(p->dtype);
        header[p->name] = {{"dtype", std::string(dtype_name(p->dtype))}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string h = header.dump();
    while (h.size() % 8) h += ' ';
    const std::string tmp = path_.string() + ".tmp";
    std::FILE* out = std::fopen(tmp.c_str(), "wb");
    if (!out) fail(path_.string(), "cannot open for writing");
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t((uint64_t(h.size()) >> (8 * i)) & 0xff);
    bool ok = std::fwrite(len, 1, 8, out) == 8 && std::fwrite(h.data(), 1, h.size(), out) == h.size();
    std::vector<char> buf(1 << 20);
    for (Part* p : parts_) {
        ok = ok && std::fseek(p->f, 0, SEEK_SET) == 0;
        size_t n;
        while (ok && (n = std::fread(buf.data(), 1, buf.size(), p->f)) > 0) ok = std::fwrite(buf.data(), 1, n, out) == n;
        ok = ok && !std::ferror(p->f);
        std::fclose(p->f);
        p->f = nullptr;
    }
    ok = std::fflush(out) == 0 && ok;
    std::fclose(out);
    if (!ok) {
        std::filesystem::remove(tmp);
        fail(path_.string(), "write failed (disk full?)");
    }
    std::filesystem::rename(tmp, path_);
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
        site_tensor[{int(s.site), s.layer}] = w.add_tensor(s.name(), opt.dtype, width);
        mask |= 1u << int(s.site);
        if (s.site == Site::Logits && opt.positions.kind != PositionSelector::Last) need_all_logits = true;
    }
    const int t_ids = w.add_tensor("token_ids", DType::I32, 0);
    const int t_prompt = w.add_tensor("prompt_index", DType::I32, 0);
    const int t_pos = w.add_tensor("position", DType::I32, 0);

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
        hooks.site_mask = mask | (opt.steering ? opt.steering->site_mask() : 0u);
        hooks.on_site = [&](const SiteView& v) {
            if (opt.steering) opt.steering->apply(v);
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

#include "engine/steer.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "kernels/cpu/ops_cpu.h"

namespace stitch {

const char* steer_op_name(SteerOp op) {
    switch (op) {
        case SteerOp::Add: return "add";
        case SteerOp::Ablate: return "ablate";
        case SteerOp::Replace: return "replace";
    }
    return "?";
}

namespace {

bool is_gguf(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    return in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

void check_finite(const std::string& file, const std::string& what, const std::vector<float>& v) {
    for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i])) fail(file, "{} has a non-finite value ({}) at index {}", what, v[i], i);
}

// "direction.N" → N, else -1.
int direction_layer(const std::string& name) {
    if (name.rfind("direction.", 0) != 0) return -1;
    int n = -1;
    const char* b = name.data() + 10;
    auto [p, ec] = std::from_chars(b, name.data() + name.size(), n);
    return ec == std::errc() && p == name.data() + name.size() ? n : -1;
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Key of a patch row: (prompt index, absolute position).
SteerItem make_item(const std::string& spec, const SiteRef& site, SteerOp op, float alpha, const PositionSelector& sel) {
    SteerItem it;
    it.spec = spec;
    it.site = site;
    it.op = op;
    it.alpha = alpha;
    it.sel = sel;
    return it;
}

uint64_t patch_key(int64_t prompt, int64_t pos) { return (uint64_t(uint32_t(prompt)) << 32) | uint32_t(pos); }

}  // namespace

SteerVectors read_steer_vectors(const std::string& file, const SiteRef& site, int width, int n_layers) {
    if (!std::filesystem::exists(file)) fail(file, "no such steering file");
    SteerVectors out;
    if (is_gguf(file)) {
        // llama.cpp control vector: direction.N (N >= 1) is added to the output of layer N,
        // i.e. blocks.N.resid_post (llama.cpp's build_cvec after each block's residual add).
        GGUFFile g(file);
        if (auto arch = g.find_string("general.architecture"); arch && *arch != "controlvector")
            fail(file, "is a GGUF '{}' file, not a control vector (general.architecture = controlvector)", *arch);
        out.control_vector = true;
        out.per_layer.assign(size_t(n_layers), {});
        int found = 0;
        for (const auto& t : g.tensors()) {
            const int L = direction_layer(t.name);
            if (L < 0) continue;
            if (L >= n_layers) fail(file, "{} is for layer {}, but the model has layers 0..{}", t.name, L, n_layers - 1);
            if (t.numel() != width) fail(file, "{} has {} values; the site {} has width {}", t.name, t.numel(), site.name(), width);
            if (!out.per_layer[size_t(L)].empty())
                fail(file, "{} is a second vector for layer {} (another direction tensor names the same layer)", t.name, L);
            auto v = g.tensor_f32(t);
            check_finite(file, t.name, v);
            out.per_layer[size_t(L)] = std::move(v);
            ++found;
        }
        if (!found) fail(file, "holds no direction.N tensors (not a llama.cpp control vector)");
        return out;
    }
    SafetensorsFile f(file);
    const TensorInfo* t = f.find(site.name());
    if (!t) {
        std::vector<const TensorInfo*> floats;
        for (const auto& ti : f.tensors())
            if (is_float(ti.dtype)) floats.push_back(&ti);
        if (floats.size() == 1) t = floats[0];
        else if (const TensorInfo* dir = f.find("direction")) t = dir;
        else if (floats.empty()) fail(file, "holds no float tensor to steer with");
        else
            fail(file, "holds {} float tensors and none is named '{}' or 'direction'; say which by naming it so",
                 floats.size(), site.name());
    }
    if (!is_float(t->dtype)) fail(file, "tensor '{}' is {}, not a float vector", t->name, dtype_name(t->dtype));
    auto v = f.to_f32(*t);
    check_finite(file, "tensor '" + t->name + "'", v);
    const auto& sh = t->shape;
    if ((sh.size() == 1 && sh[0] == width) || (sh.size() == 2 && sh[0] == 1 && sh[1] == width)) {
        out.shared = std::move(v);
        return out;
    }
    if (sh.size() == 2 && sh[1] == width && sh[0] == n_layers) {
        if (site.layer < 0 && site.site != Site::ResidPre && site.site != Site::AttnOut && site.site != Site::ResidMid &&
            site.site != Site::MlpOut && site.site != Site::ResidPost)
            fail(file, "tensor '{}' is per layer {}, but {} is not a block site", t->name, t->shape_str(), site.name());
        out.per_layer.resize(size_t(n_layers));
        for (int L = 0; L < n_layers; ++L) out.per_layer[size_t(L)].assign(v.begin() + int64_t(L) * width, v.begin() + int64_t(L + 1) * width);
        return out;
    }
    fail(file, "tensor '{}' has shape {}; steering {} needs [{}] or [{}, {}]", t->name, t->shape_str(), site.name(), width,
         n_layers, width);
}

namespace {

struct ParsedSpec {
    std::string site, op, file, alpha, sel;
    bool has_alpha = false, has_sel = false;
};

// SITE:OP:FILE[:ALPHA][@SEL]. The selector starts at the first '@' after OP (match=TEXT may
// contain ':' and '@'); ALPHA is the last ':' field of the rest when it parses as a number.
ParsedSpec split_spec(const std::string& spec) {
    ParsedSpec p;
    const size_t c1 = spec.find(':');
    const size_t c2 = c1 == std::string::npos ? c1 : spec.find(':', c1 + 1);
    if (c2 == std::string::npos) fail("--steer", "'{}' is not SITE:OP:FILE[:ALPHA][@POSITIONS]", spec);
    p.site = spec.substr(0, c1);
    p.op = spec.substr(c1 + 1, c2 - c1 - 1);
    std::string rest = spec.substr(c2 + 1);
    if (auto at = rest.find('@'); at != std::string::npos) {
        p.sel = rest.substr(at + 1);
        p.has_sel = true;
        rest = rest.substr(0, at);
    }
    if (auto c3 = rest.rfind(':'); c3 != std::string::npos) {
        const std::string a = rest.substr(c3 + 1);
        float x = 0;
        auto [ptr, ec] = std::from_chars(a.data(), a.data() + a.size(), x);
        if (!a.empty() && ec == std::errc() && ptr == a.data() + a.size()) {
            p.alpha = a;
            p.has_alpha = true;
            rest = rest.substr(0, c3);
        }
    }
    p.file = rest;
    if (p.file.empty()) fail("--steer", "'{}' names no FILE", spec);
    return p;
}

}  // namespace

SteerSpec parse_steer_spec(const std::string& spec, const ModelConfig& c) {
    ParsedSpec p = split_spec(spec);
    SteerSpec s;
    s.spec = spec;
    s.file = p.file;
    s.wildcard = p.site.find('*') != std::string::npos;
    if (p.op == "add") s.op = SteerOp::Add;
    else if (p.op == "ablate") s.op = SteerOp::Ablate;
    else if (p.op == "replace") s.op = SteerOp::Replace;
    else fail("--steer", "unknown operation '{}' in '{}' (add, ablate, replace)", p.op, spec);
    if (p.has_alpha) {
        std::from_chars(p.alpha.data(), p.alpha.data() + p.alpha.size(), s.alpha);
        if (!std::isfinite(s.alpha)) fail("--steer", "alpha '{}' in '{}' is not finite", p.alpha, spec);
    }
    s.sel = parse_positions(p.has_sel ? p.sel : "all");
    if (s.sel.kind == PositionSelector::Diff) fail("--steer", "'diff' positions exist only in `stitch vector`");
    s.sites = parse_sites(p.site, c, "--steer");
    if (s.sites.size() != 1 && !s.wildcard)
        fail("--steer", "'{}' names more than one site; give one --steer per site", spec);
    return s;
}

Steering Steering::load(const std::vector<std::string>& specs, const Model& m) {
    const ModelConfig& c = m.config;
    Steering s;
    for (const auto& spec : specs) {
        const SteerSpec ps = parse_steer_spec(spec, c);
        const SteerOp op = ps.op;
        const float alpha = ps.alpha;
        const PositionSelector& sel = ps.sel;
        const std::vector<SiteRef>& sites = ps.sites;
        const SiteRef& first = sites[0];
        const int width = first.site == Site::Logits ? c.vocab_size : c.hidden;

        // A capture file (prompt_index + position) is a patch for replace.
        std::shared_ptr<const SafetensorsFile> patch;
        if (!is_gguf(ps.file) && std::filesystem::exists(ps.file)) {
            auto f = std::make_shared<const SafetensorsFile>(ps.file);
            if (f->find("prompt_index") && f->find("position")) patch = f;
        }
        if (patch) {
            if (op != SteerOp::Replace)
                fail(ps.file, "is a captured file (prompt_index/position rows); only replace takes one ('{}' asks for {})", spec,
                     steer_op_name(op));
            auto pi = patch->to_i32(patch->get("prompt_index"));
            auto pos = patch->to_i32(patch->get("position"));
            if (pi.size() != pos.size()) fail(ps.file, "prompt_index has {} rows but position has {}", pi.size(), pos.size());
            std::unordered_map<uint64_t, int64_t> rows;
            for (size_t r = 0; r < pi.size(); ++r) {
                if (pi[r] < 0 || pos[r] < 0) fail(ps.file, "row {} has a negative prompt_index or position", r);
                rows[patch_key(pi[r], pos[r])] = int64_t(r);
            }
            for (const SiteRef& site : sites) {
                const TensorInfo* t = patch->find(site.name());
                if (!t) fail(ps.file, "has no tensor '{}' to replace {} with", site.name(), site.name());
                if (!is_float(t->dtype) || t->shape.size() != 2 || t->shape[1] != width || t->shape[0] != int64_t(pi.size()))
                    fail(ps.file, "tensor '{}' has shape {} ({}); replacing {} needs [{}, {}]", t->name, t->shape_str(),
                         dtype_name(t->dtype), site.name(), pi.size(), width);
                check_finite(ps.file, "tensor '" + t->name + "'", patch->to_f32(*t));
                SteerItem it = make_item(spec, site, op, alpha, sel);
                it.patch_file = patch;
                it.patch_tensor = t;
                it.patch_rows = rows;
                s.items_.push_back(std::move(it));
            }
            continue;
        }
        SteerVectors vecs = read_steer_vectors(ps.file, first, width, c.n_layers);
        for (const SiteRef& site : sites) {
            std::vector<float> v;
            if (!vecs.shared.empty()) {
                v = vecs.shared;
            } else if (site.layer < 0) {
                fail(ps.file, "holds per-layer vectors; {} is not a block site", site.name());
            } else if (vecs.per_layer[size_t(site.layer)].empty()) {
                if (ps.wildcard) continue;  // control vector without this layer
                fail(ps.file, "has no vector for layer {} (direction.{})", site.layer, site.layer);
            } else {
                v = vecs.per_layer[size_t(site.layer)];
            }
            s.add_vector(m, site, op, std::move(v), alpha, sel, ps.file);
            s.items_.back().spec = spec;
        }
    }
    for (const auto& it : s.items_) s.mask_ |= 1u << int(it.site.site);
    return s;
}

Steering& Steering::add_vector(const Model& m, const SiteRef& site, SteerOp op, std::vector<float> vec, float alpha,
                               const PositionSelector& sel, const std::string& label) {
    const int width = site.site == Site::Logits ? m.config.vocab_size : m.config.hidden;
    const std::string spec = fmt::format("{}:{}:{}:{}@{}", site.name(), steer_op_name(op), label, alpha, sel.text);
    if (int(vec.size()) != width) fail(label, "has {} values; {} needs {}", vec.size(), site.name(), width);
    if (!std::isfinite(alpha)) fail(label, "alpha {} is not finite", alpha);
    if (sel.kind == PositionSelector::Diff) fail(label, "'diff' positions exist only in `stitch vector`");
    check_finite(label, "vector", vec);
    if (op == SteerOp::Ablate) {
        double nn = 0;
        for (float x : vec) nn += double(x) * x;
        if (nn == 0) fail(label, "ablating a zero vector removes nothing ('{}')", spec);
        const float inv = float(1.0 / std::sqrt(nn));
        for (float& x : vec) x *= inv;
    }
    SteerItem it = make_item(spec, site, op, alpha, sel);
    it.vec = std::move(vec);
    items_.push_back(std::move(it));
    mask_ |= 1u << int(site.site);
    return *this;
}

void Steering::bind(const Model& m, const std::vector<std::vector<int32_t>>& prompts, int max_new, bool check) {
    prompt_len_.resize(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) prompt_len_[i] = int32_t(prompts[i].size());
    masks_.assign(items_.size(), {});
    untouched_ = INT32_MAX;
    for (int32_t len : prompt_len_) untouched_ = std::min(untouched_, int(len));
    std::unordered_map<std::string, std::vector<std::vector<char>>> by_text;
    for (size_t k = 0; k < items_.size(); ++k) {
        const SteerItem& it = items_[k];
        if (it.sel.kind == PositionSelector::Match) {
            auto found = by_text.find(it.sel.match_text);
            if (found == by_text.end()) {
                std::vector<std::vector<char>> masks;
                for (const auto& p : prompts) masks.push_back(match_mask(m.tokenizer, p, it.sel.match_text));
                found = by_text.emplace(it.sel.match_text, std::move(masks)).first;
            }
            masks_[k] = found->second;
        }
        // Every item must select at least one position of one prompt (and, for a patch, one
        // position the file has a row for); else the user's intervention silently does nothing.
        bool any = !check;
        for (size_t i = 0; i < prompts.size() && !any; ++i) {
            const int len = prompt_len_[i], total = len + max_new;
            const std::vector<char>* mask = masks_[k].empty() ? nullptr : &masks_[k][i];
            // logits exist only at the rows whose next token is computed: the last prompt
            // position and every generated one
            const int from = it.site.site == Site::Logits ? len - 1 : 0;
            for (int pos = from; pos < total && !any; ++pos) {
                if (!it.sel.selects(pos, len, mask)) continue;
                any = !it.is_patch() || it.patch_rows.count(patch_key(int64_t(i), pos));
            }
        }
        for (size_t i = 0; i < prompts.size() && untouched_ > 0; ++i) {
            const std::vector<char>* mask = masks_[k].empty() ? nullptr : &masks_[k][i];
            for (int pos = 0; pos < untouched_; ++pos)
                if (it.sel.selects(pos, prompt_len_[i], mask)) {
                    untouched_ = pos;
                    break;
                }
        }
        if (!any) {
            if (it.is_patch())
                fail("--steer", "'{}': no row of {} has a prompt_index and position that '{}' selects in these prompts", it.spec,
                     it.patch_file->path(), it.sel.text);
            fail("--steer", "'{}': positions '{}' select nothing in any prompt", it.spec, it.sel.text);
        }
    }
}

std::vector<SteerStep> Steering::plan(Site site, int layer, int rows, int cols, const int32_t* seq,
                                      const int32_t* pos) const {
    std::vector<SteerStep> steps;
    if (!wants(site)) return steps;
    for (size_t k = 0; k < items_.size(); ++k) {
        const SteerItem& it = items_[k];
        if (it.site.site != site || it.site.layer != layer) continue;
        SteerStep step;
        step.op = it.op;
        step.alpha = it.alpha;
        const bool pos_all = it.sel.kind == PositionSelector::All && !it.is_patch();
        const TensorInfo* t = it.is_patch() ? static_cast<const TensorInfo*>(it.patch_tensor) : nullptr;
        for (int r = 0; r < rows; ++r) {
            const int32_t s = seq[r], p = pos[r];
            if (!pos_all) {
                const int len = s >= 0 && size_t(s) < prompt_len_.size() ? prompt_len_[size_t(s)] : 0;
                const std::vector<char>* mask =
                    masks_.empty() || masks_[k].empty() || s < 0 || size_t(s) >= masks_[k].size() ? nullptr : &masks_[k][size_t(s)];
                if (!it.sel.selects(p, len, mask)) continue;
            }
            if (t) {
                auto found = it.patch_rows.find(patch_key(s, p));
                if (found == it.patch_rows.end()) continue;
                const size_t es = dtype_size(t->dtype);
                step.src.resize(step.src.size() + size_t(cols));
                convert_to_f32(t->dtype, it.patch_file->data(*t).data() + size_t(found->second) * size_t(cols) * es,
                               step.src.data() + step.src.size() - size_t(cols), size_t(cols));
            }
            step.rows.push_back(r);
        }
        if (step.rows.empty()) continue;
        if (!t) step.vec = it.vec.data();
        steps.push_back(std::move(step));
    }
    return steps;
}

void Steering::apply(const SiteView& v) const {
    for (const SteerStep& step : plan(v.site, v.layer, v.rows, v.cols, v.seq, v.pos)) {
        const int n = int(step.rows.size());
        const float* vec = step.vec ? step.vec : step.src.data();
        switch (step.op) {
            case SteerOp::Add: cpu::add_rows(v.data, v.cols, step.rows.data(), n, vec, step.alpha); break;
            case SteerOp::Ablate: cpu::ablate_rows(v.data, v.cols, step.rows.data(), n, vec, step.alpha); break;
            case SteerOp::Replace:
                cpu::replace_rows(v.data, v.cols, step.rows.data(), n, vec, step.vec ? 0 : v.cols, step.alpha);
                break;
        }
    }
}

Hooks Steering::hooks() const {
    Hooks h;
    h.steering = this;
    h.read_only = true;  // no on_site: the steering itself is applied where the model runs
    return h;
}

std::string Steering::describe() const {
    std::string out;
    std::string last;
    for (const auto& it : items_) {
        if (it.spec == last) continue;  // one line per spec, however many layers it expanded to
        last = it.spec;
        if (!out.empty()) out += " ; ";
        out += it.spec;
    }
    return out;
}

}  // namespace stitch

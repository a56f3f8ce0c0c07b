#include "engine/vector.h"

#include <cmath>
#include <map>

#include "engine/error.h"
#include "engine/forward.h"

namespace stitch {

VectorMethod parse_vector_method(const std::string& s) {
    if (s == "paired") return VectorMethod::Paired;
    if (s == "mean") return VectorMethod::Mean;
    if (s == "pca") return VectorMethod::Pca;
    fail("--method", "unknown method '{}' (paired, mean, pca)", s);
}

const char* vector_method_name(VectorMethod m) {
    switch (m) {
        case VectorMethod::Paired: return "paired";
        case VectorMethod::Mean: return "mean";
        case VectorMethod::Pca: return "pca";
    }
    return "?";
}

void diff_masks(std::span<const int32_t> p, std::span<const int32_t> n, std::vector<char>& pm, std::vector<char>& nm,
                size_t line) {
    size_t pre = 0;
    while (pre < p.size() && pre < n.size() && p[pre] == n[pre]) ++pre;
    size_t suf = 0;
    while (suf < p.size() - pre && suf < n.size() - pre && p[p.size() - 1 - suf] == n[n.size() - 1 - suf]) ++suf;
    if (pre + suf >= p.size() || pre + suf >= n.size())
        fail("--positive", "line {}: the positive and negative prompts do not differ in a token of each (identical, or one "
             "only adds tokens); give --positions", line + 1);
    pm.assign(p.size(), 0);
    nm.assign(n.size(), 0);
    for (size_t i = pre; i < p.size() - suf; ++i) pm[i] = 1;
    for (size_t i = pre; i < n.size() - suf; ++i) nm[i] = 1;
}

namespace {

// Runs prompts through the model and calls emit(prompt, site index, sum of selected rows, count)
// once per prompt and site (count may be 0). Memory: one batch of sums.
void collect(const Model& m, const std::vector<std::vector<int32_t>>& prompts, const std::vector<SiteRef>& sites,
             const PositionSelector& sel, const std::vector<std::vector<char>>& masks, int batch, const Steering* steering,
             const std::function<void(size_t, size_t, const double*, long)>& emit,
             const std::function<void(size_t, long)>& progress) {
    const ModelConfig& c = m.config;
    std::map<std::pair<int, int>, size_t> site_index;
    uint32_t site_mask = 0;
    int width = c.hidden;
    for (size_t k = 0; k < sites.size(); ++k) {
        site_index[{int(sites[k].site), sites[k].layer}] = k;
        site_mask |= 1u << int(sites[k].site);
        if (sites[k].site == Site::Logits) width = c.vocab_size;
    }
    const size_t S = sites.size();
    RunState st;
    std::vector<double> sums;
    std::vector<long> counts;
    long tokens = 0;
    for (size_t b0 = 0; b0 < prompts.size(); b0 += size_t(batch)) {
        const size_t b1 = std::min(prompts.size(), b0 + size_t(batch));
        sums.assign((b1 - b0) * S * size_t(width), 0.0);
        counts.assign((b1 - b0) * S, 0);
        std::vector<KVCache> caches;
        caches.reserve(b1 - b0);
        std::vector<SeqInput> in;
        for (size_t i = b0; i < b1; ++i) {
            if (prompts[i].empty()) fail("--positive", "prompt {} is empty after tokenization", i + 1);
            caches.emplace_back(c, int(prompts[i].size()));
        }
        for (size_t i = b0; i < b1; ++i) in.push_back({&caches[i - b0], prompts[i], int32_t(i)});
        Hooks hooks;
        hooks.site_mask = site_mask;
        hooks.steering = steering;  // applied where the model runs, before the tap reads the rows
        hooks.read_only = true;     // the tap only sums rows
        hooks.on_site = [&](const SiteView& v) {
            auto it = site_index.find({int(v.site), v.layer});
            if (it == site_index.end()) return;
            for (int r = 0; r < v.rows; ++r) {
                const size_t i = size_t(v.seq[r]);
                const int len = int(prompts[i].size());
                if (!sel.selects(v.pos[r], len, masks.empty() ? nullptr : &masks[i])) continue;
                const size_t slot = (i - b0) * S + it->second;
                double* acc = &sums[slot * size_t(width)];
                const float* x = v.data + int64_t(r) * v.cols;
                for (int j = 0; j < v.cols; ++j) acc[j] += x[j];
                ++counts[slot];
            }
        };
        ForwardOptions fo;
        fo.hooks = &hooks;
        fo.all_logits = (site_mask >> int(Site::Logits)) & 1u;
        forward(m, st, in, fo);
        for (size_t i = b0; i < b1; ++i) {
            tokens += long(prompts[i].size());
            for (size_t k = 0; k < S; ++k) {
                const size_t slot = (i - b0) * S + k;
                emit(i, k, &sums[slot * size_t(width)], counts[slot]);
            }
        }
        if (progress) progress(b1, tokens);
    }
}

double dot(const double* a, const double* b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

}  // namespace

std::vector<double> principal_direction(const std::vector<double>& D, size_t n, size_t d, double* explained) {
    std::vector<double> v(d, 0.0), w(d), proj(n);
    // Start from the mean difference (it is the answer when all pairs agree); fall back to the
    // largest row when the mean vanishes.
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < d; ++j) v[j] += D[i * d + j];
    double nv = std::sqrt(dot(v.data(), v.data(), d));
    if (nv < 1e-30) {
        size_t best = 0;
        double bn = -1;
        for (size_t i = 0; i < n; ++i) {
            double r = dot(&D[i * d], &D[i * d], d);
            if (r > bn) bn = r, best = i;
        }
        std::copy(D.begin() + long(best * d), D.begin() + long((best + 1) * d), v.begin());
        nv = std::sqrt(dot(v.data(), v.data(), d));
    }
    if (nv < 1e-30) fail("vector", "every paired difference is zero; there is no direction to find");
    for (auto& x : v) x /= nv;
    for (int iter = 0; iter < 10000; ++iter) {
        for (size_t i = 0; i < n; ++i) proj[i] = dot(&D[i * d], v.data(), d);
        std::fill(w.begin(), w.end(), 0.0);
        for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < d; ++j) w[j] += proj[i] * D[i * d + j];
        const double nw = std::sqrt(dot(w.data(), w.data(), d));
        if (nw < 1e-300) break;
        double change = 0;
        for (size_t j = 0; j < d; ++j) {
            const double x = w[j] / nw;
            change = std::max(change, std::abs(x - v[j]));
            v[j] = x;
        }
        if (change < 1e-12) break;
    }
    double along = 0, total = 0, sum_proj = 0;
    for (size_t i = 0; i < n; ++i) {
        const double p = dot(&D[i * d], v.data(), d);
        along += p * p;
        total += dot(&D[i * d], &D[i * d], d);
        sum_proj += p;
    }
    if (sum_proj < 0)
        for (auto& x : v) x = -x;
    if (explained) *explained = total > 0 ? along / total : 0;
    return v;
}

VectorResult compute_vectors(const Model& m, const std::vector<std::vector<int32_t>>& positive,
                             const std::vector<std::vector<int32_t>>& negative, const VectorOptions& opt) {
    const ModelConfig& c = m.config;
    const size_t S = opt.sites.size();
    if (S == 0) fail("--site", "no site given");
    const size_t d = size_t(opt.sites[0].site == Site::Logits ? c.vocab_size : c.hidden);
    const bool paired = opt.method != VectorMethod::Mean;
    if (positive.empty()) fail("--positive", "has no prompts");
    if (negative.empty()) fail("--negative", "has no prompts");
    if (paired && positive.size() != negative.size())
        fail("--negative", "has {} prompts but --positive has {}; {} pairs them line by line", negative.size(), positive.size(),
             vector_method_name(opt.method));

    // Per-prompt masks for the diff and match= selectors (empty for the others).
    std::vector<std::vector<char>> pdiff, ndiff;
    if (opt.positive_positions.kind == PositionSelector::Diff || opt.negative_positions.kind == PositionSelector::Diff) {
        if (!paired) fail("--positions", "'diff' needs paired prompts (--method paired or pca)");
        pdiff.resize(positive.size());
        ndiff.resize(negative.size());
        for (size_t i = 0; i < positive.size(); ++i) diff_masks(positive[i], negative[i], pdiff[i], ndiff[i], i);
    }
    auto masks_for = [&](const PositionSelector& sel, const std::vector<std::vector<int32_t>>& prompts,
                         std::vector<std::vector<char>>& diff) {
        std::vector<std::vector<char>> masks;
        if (sel.kind == PositionSelector::Diff) masks = std::move(diff);
        if (sel.kind == PositionSelector::Match)
            for (const auto& p : prompts) masks.push_back(match_mask(m.tokenizer, p, sel.match_text));
        return masks;
    };
    const auto pmask = masks_for(opt.positive_positions, positive, pdiff);
    const auto nmask = masks_for(opt.negative_positions, negative, ndiff);

    VectorResult res;
    const long total = long(positive.size() + negative.size());
    // Mean: running sums. Paired/PCA: the positive per-prompt means, then the differences.
    std::vector<double> pos_sum(S * d, 0.0), neg_sum(S * d, 0.0);
    std::vector<float> pos_mean;  // [n, S, d] (paired)
    std::vector<double> diffs;    // [S][n, d]
    if (paired) {
        pos_mean.assign(positive.size() * S * d, 0.0f);
        diffs.assign(S * positive.size() * d, 0.0);
    }
    long done_tokens = 0;
    auto progress = [&](long offset) {
        return [&, offset](size_t done, long tokens) {
            if (opt.on_progress) opt.on_progress(offset + long(done), total, done_tokens + tokens);
        };
    };
    collect(m, positive, opt.sites, opt.positive_positions, pmask, opt.batch, opt.positive_steering,
            [&](size_t i, size_t k, const double* sum, long count) {
                if (count == 0) {
                    if (paired) fail("--positions", "'{}' selects nothing in positive prompt {}", opt.positive_positions.text, i + 1);
                    return;
                }
                if (k == 0) res.positive_rows += count;
                for (size_t j = 0; j < d; ++j) pos_sum[k * d + j] += sum[j];
                if (paired)
                    for (size_t j = 0; j < d; ++j) pos_mean[(i * S + k) * d + j] = float(sum[j] / double(count));
            },
            progress(0));
    for (const auto& p : positive) done_tokens += long(p.size());
    collect(m, negative, opt.sites, opt.negative_positions, nmask, opt.batch, opt.negative_steering,
            [&](size_t i, size_t k, const double* sum, long count) {
                if (count == 0) {
                    if (paired) fail("--negative-positions", "'{}' selects nothing in negative prompt {}", opt.negative_positions.text, i + 1);
                    return;
                }
                if (k == 0) res.negative_rows += count;
                for (size_t j = 0; j < d; ++j) neg_sum[k * d + j] += sum[j];
                if (paired)
                    for (size_t j = 0; j < d; ++j)
                        diffs[(k * positive.size() + i) * d + j] = double(pos_mean[(i * S + k) * d + j]) - sum[j] / double(count);
            },
            progress(long(positive.size())));
    if (res.positive_rows == 0) fail("--positions", "'{}' selects nothing in any positive prompt", opt.positive_positions.text);
    if (res.negative_rows == 0) fail("--negative-positions", "'{}' selects nothing in any negative prompt", opt.negative_positions.text);
    res.pairs = paired ? long(positive.size()) : 0;

    const size_t n = positive.size();
    for (size_t k = 0; k < S; ++k) {
        std::vector<double> vec(d, 0.0);
        VectorSiteStats stats;
        if (opt.method == VectorMethod::Mean) {
            for (size_t j = 0; j < d; ++j)
                vec[j] = pos_sum[k * d + j] / double(res.positive_rows) - neg_sum[k * d + j] / double(res.negative_rows);
        } else {
            const double* D = &diffs[k * n * d];
            for (size_t i = 0; i < n; ++i)
                for (size_t j = 0; j < d; ++j) vec[j] += D[i * d + j] / double(n);
            if (opt.method == VectorMethod::Pca) {
                std::vector<double> Dk(D, D + n * d);
                double explained = 0;
                auto pc = principal_direction(Dk, n, d, &explained);
                const double scale = dot(vec.data(), pc.data(), d);  // mean projection (≥ 0 by the sign rule)
                for (size_t j = 0; j < d; ++j) vec[j] = pc[j] * scale;
                stats.explained = explained;
            } else {
                double cos_sum = 0, nv = std::sqrt(dot(vec.data(), vec.data(), d));
                for (size_t i = 0; i < n; ++i) {
                    const double nd = std::sqrt(dot(&D[i * d], &D[i * d], d));
                    if (nd > 0 && nv > 0) cos_sum += dot(&D[i * d], vec.data(), d) / (nd * nv);
                }
                stats.explained = cos_sum / double(n);
            }
        }
        stats.norm = std::sqrt(dot(vec.data(), vec.data(), d));
        if (stats.norm > 0) {
            // separation along the unit vector between the mean positive and mean negative row
            double sep = 0;
            for (size_t j = 0; j < d; ++j)
                sep += (pos_sum[k * d + j] / double(res.positive_rows) - neg_sum[k * d + j] / double(res.negative_rows)) * vec[j];
            stats.separation = sep / stats.norm;
        }
        std::vector<float> out(d);
        for (size_t j = 0; j < d; ++j) {
            out[j] = float(vec[j]);
            if (!std::isfinite(out[j])) fail("vector", "the {} vector at {} is not finite", vector_method_name(opt.method), opt.sites[k].name());
        }
        res.vectors.push_back(std::move(out));
        res.stats.push_back(stats);
    }
    return res;
}

}  // namespace stitch

#include "eval/transfer_util.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_map>

#include "engine/error.h"
#include "engine/generate.h"
#include "engine/progress.h"
#include "engine/safetensors.h"
#include "engine/vector.h"
#include "engine/version.h"
#include "eval/metrics.h"

namespace stitch {

using json = nlohmann::json;

namespace {
uint64_t row_key(int64_t seq, int64_t pos) { return (uint64_t(uint32_t(seq)) << 32) | uint32_t(pos); }
}  // namespace

Completions complete(const Model& m, const IdLists& prompts, int max_new, Steering* steer, int batch,
                     const std::string& label, bool want_first, const Hooks* extra) {
    const size_t n = prompts.size();
    Completions out;
    out.text.resize(n);
    out.ids.resize(n);
    if (want_first) out.first_logp.resize(n);
    if (steer) steer->bind(m, prompts, max_new);
    std::vector<int32_t> plen(n);
    for (size_t i = 0; i < n; ++i) plen[i] = int32_t(prompts[i].size());
    Hooks h;
    h.steering = steer;  // applied where the model runs
    if (extra && extra->steering) {
        if (steer) fail("transfer", "internal: two steerings for one generation");
        h.steering = extra->steering;
    }
    if (extra) h.site_mask |= extra->site_mask;
    if (want_first) h.site_mask |= 1u << int(Site::Logits);
    h.read_only = !extra || extra->read_only;  // the first-token logits are only read
    std::vector<double> tmp;
    h.on_site = [&](const SiteView& v) {
        if (extra && extra->wants(v.site)) extra->on_site(v);
        if (want_first && v.site == Site::Logits)
            for (int r = 0; r < v.rows; ++r) {
                const int s = v.seq[r];
                if (s < 0 || size_t(s) >= n || v.pos[r] != plen[size_t(s)] - 1) continue;
                tmp.resize(size_t(v.cols));
                log_softmax(v.data + int64_t(r) * v.cols, v.cols, tmp.data());
                out.first_logp[size_t(s)].assign(tmp.begin(), tmp.end());
            }
    };
    GenerateOptions go;
    go.max_new_tokens = max_new;
    if (h.active()) go.hooks = &h;
    // The steering's untouched leading positions (the Alpaca preamble before a trigger) run once per
    // batch; the first-token hook only reads each prompt's last position; other hooks see everything.
    go.hooks_free_prefix = extra ? 0 : steer ? steer->untouched_prefix() : INT32_MAX;
    Progress prog(label, long(n), "prompts");
    long produced = 0;
    for (size_t b0 = 0; b0 < n; b0 += size_t(batch)) {
        const size_t b1 = std::min(n, b0 + size_t(batch));
        IdLists chunk(prompts.begin() + long(b0), prompts.begin() + long(b1));
        go.first_id = int(b0);
        const long base = produced;
        go.on_progress = [&](int k, double) { prog.update(long(b0), base + k); };
        auto gens = generate(m, chunk, go);
        for (size_t i = 0; i < gens.size(); ++i) {
            auto ids = std::move(gens[i].new_ids);
            produced += long(ids.size());
            if (gens[i].stopped_at_eos) ids.pop_back();
            out.text[b0 + i] = m.tokenizer.decode(ids, true);
            out.ids[b0 + i] = std::move(ids);
        }
        prog.update(long(b1), produced);
    }
    prog.finish(long(n), produced);
    return out;
}

json contains_rate(const std::vector<std::string>& texts, const std::string& phrase) {
    long hits = 0;
    for (const auto& t : texts) hits += t.find(phrase) != std::string::npos;
    return {{"rate", texts.empty() ? 0.0 : double(hits) / double(texts.size())}, {"hits", hits}, {"prompts", texts.size()}};
}

json any_rate(const std::vector<std::string>& texts, const std::vector<std::string>& subs) {
    long hits = 0;
    for (const auto& t : texts)
        hits += std::any_of(subs.begin(), subs.end(), [&](const std::string& s) { return t.find(s) != std::string::npos; });
    return {{"rate", texts.empty() ? 0.0 : double(hits) / double(texts.size())}, {"hits", hits}, {"prompts", texts.size()}};
}

double kl_logp(const std::vector<float>& p, const std::vector<float>& q) {
    if (p.size() != q.size() || p.empty()) fail("transfer", "internal: first-token distributions missing or of different sizes");
    double kl = 0;
    for (size_t i = 0; i < p.size(); ++i)
        if (std::isfinite(p[i])) kl += std::exp(double(p[i])) * (double(p[i]) - double(q[i]));
    return std::max(kl, 0.0);
}

double norm(const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += double(x) * x;
    return std::sqrt(s);
}

double cosine_f(const std::vector<float>& a, const std::vector<float>& b) {
    return cosine(std::vector<double>(a.begin(), a.end()), std::vector<double>(b.begin(), b.end()));
}

// ---- transplants -----------------------------------------------------------------------------------

Transplant Transplant::mapped(const Model& src, SiteRef ss, const Mapper& m, const Model& tgt, SiteRef ts) {
    if (m.d_src() != src.config.hidden || m.d_tgt() != tgt.config.hidden)
        fail("transfer", "map {}→{} does not fit models of width {} and {}", m.d_src(), m.d_tgt(), src.config.hidden,
             tgt.config.hidden);
    Transplant t;
    t.src = &src, t.ssite = ss, t.map = &m, t.tgt = &tgt, t.tsite = ts;
    return t;
}

Transplant Transplant::constant_at(const Model& tgt, SiteRef ts, std::vector<float> v) {
    if (int(v.size()) != tgt.config.hidden) fail("transfer", "constant of width {} for a model of width {}", v.size(), tgt.config.hidden);
    Transplant t;
    t.tgt = &tgt, t.tsite = ts, t.constant = std::move(v);
    return t;
}

namespace {

// One step: toks[k] appended to sequence idx[k] of both models. Returns the target's logits.
std::vector<float> transplant_step(const Transplant& t, RunState& sst, RunState& tst, std::vector<KVCache>& sc,
                                   std::vector<KVCache>& tc, const std::vector<std::span<const int32_t>>& toks,
                                   const std::vector<int>& idx, bool all_logits) {
    std::vector<float> mapped;
    std::unordered_map<uint64_t, int64_t> row_of;
    if (t.map) {
        std::vector<SeqInput> si;
        for (size_t k = 0; k < idx.size(); ++k) si.push_back(SeqInput{&sc[size_t(idx[k])], toks[k], idx[k]});
        std::vector<float> rows;
        std::vector<uint64_t> keys;
        Hooks hs;
        hs.site_mask = 1u << int(t.ssite.site);
        hs.read_only = true;  // the source's rows are only copied out
        hs.on_site = [&](const SiteView& v) {
            if (v.layer != t.ssite.layer) return;
            rows.assign(v.data, v.data + int64_t(v.rows) * v.cols);
            keys.resize(size_t(v.rows));
            for (int r = 0; r < v.rows; ++r) keys[size_t(r)] = row_key(v.seq[r], v.pos[r]);
        };
        ForwardOptions fo;
        fo.hooks = &hs;
        forward(*t.src, sst, si, fo);
        const int n = int(keys.size());
        mapped.resize(size_t(n) * size_t(t.map->d_tgt()));
        predict(*t.map, rows.data(), n, mapped.data());
        for (int r = 0; r < n; ++r) row_of[keys[size_t(r)]] = r;
    }
    std::vector<SeqInput> ti;
    for (size_t k = 0; k < idx.size(); ++k) ti.push_back(SeqInput{&tc[size_t(idx[k])], toks[k], idx[k]});
    Hooks ht;
    ht.site_mask = 1u << int(t.tsite.site);
    ht.on_site = [&](const SiteView& v) {
        if (v.layer != t.tsite.layer) return;
        for (int r = 0; r < v.rows; ++r) {
            const float* s = t.constant.data();
            if (t.map) {
                auto it = row_of.find(row_key(v.seq[r], v.pos[r]));
                if (it == row_of.end()) fail("transfer", "internal: no source row for sequence {} position {}", v.seq[r], v.pos[r]);
                s = &mapped[size_t(it->second) * size_t(v.cols)];
            }
            std::copy(s, s + v.cols, v.data + int64_t(r) * v.cols);
        }
    };
    ForwardOptions fo;
    fo.all_logits = all_logits;
    fo.hooks = &ht;
    return forward(*t.tgt, tst, ti, fo);
}

struct Caches {
    std::vector<KVCache> src, tgt;
    Caches(const Transplant& t, const IdLists& prompts, size_t b0, size_t b1, int extra) {
        for (size_t i = b0; i < b1; ++i) {
            const int cap = int(prompts[i].size()) + extra;
            tgt.emplace_back(t.tgt->config, cap);
            if (t.map) src.emplace_back(t.src->config, cap);
        }
    }
};

}  // namespace

IdLists transplant_generate(const Transplant& t, const IdLists& prompts, int max_new, int batch, const std::string& label) {
    const size_t n = prompts.size();
    IdLists out(n);
    const auto& eos = t.tgt->config.eos_ids;
    const int V = t.tgt->config.vocab_size;
    RunState sst, tst;
    Progress prog(label, long(n), "prompts");
    long produced = 0;
    for (size_t b0 = 0; b0 < n; b0 += size_t(batch)) {
        const size_t b1 = std::min(n, b0 + size_t(batch));
        Caches c(t, prompts, b0, b1, max_new);
        std::vector<int> idx(b1 - b0);
        std::iota(idx.begin(), idx.end(), 0);
        std::vector<std::span<const int32_t>> toks;
        for (size_t i = b0; i < b1; ++i) toks.emplace_back(prompts[i]);
        std::vector<int32_t> last(b1 - b0);
        for (int step = 0; step < max_new && !idx.empty(); ++step) {
            const auto logits = transplant_step(t, sst, tst, c.src, c.tgt, toks, idx, false);
            std::vector<int> next;
            for (size_t k = 0; k < idx.size(); ++k) {
                const float* row = &logits[k * size_t(V)];
                const int32_t best = int32_t(std::max_element(row, row + V) - row);  // first maximum, like argmax
                const int i = idx[k];
                ++produced;
                if (std::find(eos.begin(), eos.end(), best) != eos.end()) continue;
                out[b0 + size_t(i)].push_back(best);
                last[size_t(i)] = best;
                next.push_back(i);
            }
            idx = std::move(next);
            toks.clear();
            for (int i : idx) toks.emplace_back(&last[size_t(i)], 1);
            prog.update(long(b0), produced);
        }
        prog.update(long(b1), produced);
    }
    prog.finish(long(n), produced);
    return out;
}

FidelityTotals fidelity_on_texts(const Model& tgt, const std::vector<Transplant>& conds, const IdLists& texts,
                                 const std::string& label, int batch) {
    FidelityTotals f;
    f.kl.assign(conds.size(), 0.0);
    f.nll.assign(conds.size(), 0.0);
    const int V = tgt.config.vocab_size;
    RunState sst, tst;
    Progress prog(label, long(texts.size()), "texts");
    for (size_t b0 = 0; b0 < texts.size(); b0 += size_t(batch)) {
        const size_t b1 = std::min(texts.size(), b0 + size_t(batch));
        std::vector<std::span<const int32_t>> toks;
        std::vector<int> idx;
        std::vector<int32_t> next;  // per packed row: the next token, or -1 at a text's end
        for (size_t i = b0; i < b1; ++i) {
            toks.emplace_back(texts[i]);
            idx.push_back(int(i - b0));
            for (size_t p = 0; p < texts[i].size(); ++p) next.push_back(p + 1 < texts[i].size() ? texts[i][p + 1] : -1);
        }
        const int64_t rows = int64_t(next.size());
        // clean log-probabilities
        std::vector<float> ref(size_t(rows) * size_t(V));
        {
            std::vector<KVCache> tc;
            for (size_t i = b0; i < b1; ++i) tc.emplace_back(tgt.config, int(texts[i].size()));
            std::vector<SeqInput> ti;
            for (size_t k = 0; k < idx.size(); ++k) ti.push_back(SeqInput{&tc[size_t(k)], toks[k], idx[k]});
            ForwardOptions fo;
            fo.all_logits = true;
            const auto logits = forward(tgt, tst, ti, fo);
            double nll = 0;
#pragma omp parallel reduction(+ : nll)
            {
                std::vector<double> lp(static_cast<size_t>(V));
#pragma omp for
                for (int64_t r = 0; r < rows; ++r) {
                    log_softmax(&logits[size_t(r) * size_t(V)], V, lp.data());
                    for (int j = 0; j < V; ++j) ref[size_t(r) * size_t(V) + size_t(j)] = float(lp[size_t(j)]);
                    if (next[size_t(r)] >= 0) nll -= lp[size_t(next[size_t(r)])];
                }
            }
            f.nll_clean += nll;
        }
        for (size_t c = 0; c < conds.size(); ++c) {
            Caches cc(conds[c], texts, b0, b1, 0);
            const auto logits = transplant_step(conds[c], sst, tst, cc.src, cc.tgt, toks, idx, true);
            double kl = 0, nll = 0;
#pragma omp parallel reduction(+ : kl, nll)
            {
                std::vector<double> lq(static_cast<size_t>(V));
#pragma omp for
                for (int64_t r = 0; r < rows; ++r) {
                    log_softmax(&logits[size_t(r) * size_t(V)], V, lq.data());
                    const float* p = &ref[size_t(r) * size_t(V)];
                    double k = 0;
                    for (int j = 0; j < V; ++j)
                        if (std::isfinite(p[j])) k += std::exp(double(p[j])) * (double(p[j]) - lq[size_t(j)]);
                    kl += std::max(k, 0.0);
                    if (next[size_t(r)] >= 0) nll -= lq[size_t(next[size_t(r)])];
                }
            }
            f.kl[c] += kl;
            f.nll[c] += nll;
        }
        f.tokens += rows;
        for (int32_t t : next) f.predicted += t >= 0;
        prog.update(long(b1), f.tokens);
    }
    prog.finish(long(texts.size()), f.tokens);
    if (f.predicted == 0) fail("transfer", "the fidelity texts predict no tokens (every text is one token long)");
    return f;
}

std::vector<float> mean_rows(const ActivationFile& f) {
    std::vector<double> acc(size_t(f.dim()), 0.0);
    std::vector<float> row(size_t(f.dim()));
    for (int64_t r = 0; r < f.rows(); ++r) {
        f.read_row(r, row.data());
        for (size_t j = 0; j < row.size(); ++j) acc[j] += row[j];
    }
    if (f.rows() == 0) fail(f.path(), "has no rows");
    std::vector<float> out(acc.size());
    for (size_t j = 0; j < acc.size(); ++j) out[j] = float(acc[j] / double(f.rows()));
    return out;
}

std::vector<std::vector<double>> mean_embeddings(const Model& m, const std::vector<std::string>& texts) {
    const int d = m.config.hidden;
    std::vector<std::vector<double>> out(texts.size(), std::vector<double>(size_t(d), 0.0));
    IdLists ids;
    for (const auto& t : texts) ids.push_back(m.tokenizer.encode(t, false));
    RunState st;
    const size_t B = 8;
    for (size_t b0 = 0; b0 < ids.size(); b0 += B) {
        const size_t b1 = std::min(ids.size(), b0 + B);
        std::vector<KVCache> caches;
        std::vector<SeqInput> seqs;
        caches.reserve(b1 - b0);
        for (size_t i = b0; i < b1; ++i) {
            if (ids[i].empty()) continue;
            caches.emplace_back(m.config, int(ids[i].size()));
            seqs.push_back(SeqInput{&caches.back(), ids[i], int32_t(i)});
        }
        if (seqs.empty()) continue;
        Hooks h;
        h.site_mask = 1u << int(Site::FinalNorm);
        h.read_only = true;  // sums the rows
        h.on_site = [&](const SiteView& v) {
            for (int r = 0; r < v.rows; ++r) {
                auto& e = out[size_t(v.seq[r])];
                const float* x = v.data + int64_t(r) * v.cols;
                for (int j = 0; j < v.cols; ++j) e[size_t(j)] += x[j];
            }
        };
        ForwardOptions fo;
        fo.hooks = &h;
        forward(m, st, seqs, fo);
        for (size_t i = b0; i < b1; ++i)
            if (!ids[i].empty())
                for (double& x : out[i]) x /= double(ids[i].size());
    }
    return out;
}

double completion_perplexity(const Model& m, const IdLists& prompts, const IdLists& completions) {
    const int V = m.config.vocab_size;
    double nll = 0;
    long count = 0;
    RunState st;
    for (size_t i = 0; i < prompts.size(); ++i) {
        if (completions[i].empty()) continue;
        std::vector<int32_t> seq = prompts[i];
        seq.insert(seq.end(), completions[i].begin(), completions[i].end());
        KVCache cache(m.config, int(seq.size()));
        SeqInput in{&cache, seq, 0};
        ForwardOptions fo;
        fo.all_logits = true;
        const auto logits = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
        std::vector<double> lp(static_cast<size_t>(V));
        const size_t p0 = prompts[i].size();
        for (size_t j = 0; j < completions[i].size(); ++j) {
            log_softmax(&logits[(p0 - 1 + j) * size_t(V)], V, lp.data());
            nll -= lp[size_t(completions[i][j])];
            ++count;
        }
    }
    return count ? std::exp(nll / double(count)) : NAN;
}

// ---- vectors ---------------------------------------------------------------------------------------------

namespace {

// Rows of a capture file by (prompt index, position).
class RowIndex {
public:
    explicit RowIndex(const ActivationFile& f) : f_(f) {
        if (!f.has_keys()) fail(f.path(), "has no prompt_index/position tensors (not a stitch capture file)");
        for (int64_t r = 0; r < f.rows(); ++r) at_[row_key(f.prompt_index()[size_t(r)], f.position()[size_t(r)])] = r;
    }
    // Mean of A(rows) of prompt p at the given positions (A = map when given).
    std::vector<double> mean(int64_t p, const std::vector<int>& positions, const Mapper* map) const {
        const int d = f_.dim();
        std::vector<float> x(positions.size() * size_t(d));
        for (size_t k = 0; k < positions.size(); ++k) {
            auto it = at_.find(row_key(p, positions[k]));
            if (it == at_.end()) fail(f_.path(), "has no row for prompt {} position {}", p, positions[k]);
            f_.read_row(it->second, &x[k * size_t(d)]);
        }
        const int dout = map ? map->d_tgt() : d;
        std::vector<float> y;
        if (map) {
            y.resize(positions.size() * size_t(dout));
            predict(*map, x.data(), int(positions.size()), y.data());
        }
        const std::vector<float>& rows = map ? y : x;
        std::vector<double> m(size_t(dout), 0.0);
        for (size_t k = 0; k < positions.size(); ++k)
            for (int j = 0; j < dout; ++j) m[size_t(j)] += rows[k * size_t(dout) + size_t(j)];
        for (double& v : m) v /= double(positions.size());
        return m;
    }

private:
    const ActivationFile& f_;
    std::unordered_map<uint64_t, int64_t> at_;
};

std::vector<int> positions_of(const std::vector<char>& mask) {
    std::vector<int> p;
    for (size_t i = 0; i < mask.size(); ++i)
        if (mask[i]) p.push_back(int(i));
    return p;
}

std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

}  // namespace

std::vector<float> paired_diff_vector(const ActivationFile& f, const IdLists& ids, const Mapper* map) {
    if (ids.size() < 2 || ids.size() % 2) fail(f.path(), "paired vectors need prompts in (positive, negative) pairs");
    RowIndex index(f);
    std::vector<double> acc;
    std::vector<char> pm, nm;
    for (size_t i = 0; i < ids.size() / 2; ++i) {
        diff_masks(ids[2 * i], ids[2 * i + 1], pm, nm, i + 1);
        auto a = index.mean(int64_t(2 * i), positions_of(pm), map);
        auto b = index.mean(int64_t(2 * i + 1), positions_of(nm), map);
        if (acc.empty()) acc.assign(a.size(), 0.0);
        for (size_t j = 0; j < a.size(); ++j) acc[j] += a[j] - b[j];
    }
    for (double& v : acc) v /= double(ids.size() / 2);
    return to_float(acc);
}

std::vector<float> last_token_diff(const ActivationFile& f, const IdLists& ids, size_t n_pos, const Mapper* map) {
    if (n_pos == 0 || n_pos >= ids.size()) fail(f.path(), "a difference of means needs positives and negatives");
    RowIndex index(f);
    std::vector<double> pos, neg;
    for (size_t i = 0; i < ids.size(); ++i) {
        auto m = index.mean(int64_t(i), {int(ids[i].size()) - 1}, map);
        auto& acc = i < n_pos ? pos : neg;
        if (acc.empty()) acc.assign(m.size(), 0.0);
        for (size_t j = 0; j < m.size(); ++j) acc[j] += m[j];
    }
    std::vector<double> d(pos.size());
    for (size_t j = 0; j < d.size(); ++j) d[j] = pos[j] / double(n_pos) - neg[j] / double(ids.size() - n_pos);
    return to_float(d);
}

std::vector<float> map_difference(const Mapper& m, const std::vector<float>& v) {
    if (int(v.size()) != m.d_src()) fail("transfer", "vector of width {} for a map from width {}", v.size(), m.d_src());
    std::vector<float> zero(v.size(), 0.0f), a(size_t(m.d_tgt())), b(size_t(m.d_tgt()));
    predict(m, v.data(), 1, a.data());
    predict(m, zero.data(), 1, b.data());
    for (size_t j = 0; j < a.size(); ++j) a[j] -= b[j];
    return a;
}

std::vector<float> random_like(const std::vector<float>& v, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    std::vector<float> r(v.size());
    double s = 0;
    for (float& x : r) x = float(nd(rng)), s += double(x) * x;
    const double scale = s > 0 ? norm(v) / std::sqrt(s) : 0;
    for (float& x : r) x = float(x * scale);
    return r;
}

void save_vectors(const std::filesystem::path& dir, const std::string& prefix,
                  const std::map<std::string, std::vector<float>>& vecs, const SiteRef& site, const Model& m) {
    std::filesystem::create_directories(dir);
    for (const auto& [name, v] : vecs) {
        std::map<std::string, std::string> meta = {{"site", site.name()},
                                                   {"model", m.path},
                                                   {"model_identity", m.identity},
                                                   {"vector", prefix + name},
                                                   {"written_by", "stitch transfer"},
                                                   {"stitch_version", STITCH_VERSION}};
        write_safetensors(dir / (prefix + name + ".safetensors"),
                          {TensorOut{"direction", DType::F32, {int64_t(v.size())}, as_bytes_span(v)}}, meta);
    }
}

Hooks self_map_hooks(const Mapper& m, SiteRef site) {
    if (m.d_src() != m.d_tgt()) fail("transfer", "a map inserted into one model must keep the width ({}→{})", m.d_src(), m.d_tgt());
    Hooks h;
    h.site_mask = 1u << int(site.site);
    h.on_site = [&m, site](const SiteView& v) {
        if (v.layer != site.layer) return;
        std::vector<float> y(size_t(v.rows) * size_t(v.cols));
        predict(m, v.data, v.rows, y.data());
        std::copy(y.begin(), y.end(), v.data);
    };
    return h;
}

// The paper's rule: the last layer of the first run of strong layers (removal ≥ strong · the best
// removal), i.e. the last strong layer before the sharp drop.
int choose_layer(const std::vector<int>& layers, const std::vector<double>& removal, double strong, std::string* why) {
    const double best = *std::max_element(removal.begin(), removal.end());
    if (best <= 0) {
        *why = "no layer removed the backdoor; took the middle swept layer";
        return layers[layers.size() / 2];
    }
    size_t i = 0;
    while (removal[i] < strong * best) ++i;
    while (i + 1 < layers.size() && removal[i + 1] >= strong * best) ++i;
    *why = fmt::format("last layer of the first run with removal ≥ {:.2f} × best ({:.2f})", strong, best);
    return layers[i];
}

}  // namespace stitch

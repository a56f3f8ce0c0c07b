#include "engine/forward.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"
#include "engine/finite.h"
#include "engine/ops.h"
#include "engine/steer.h"
#include "kernels/cpu/ops_cpu.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/forward_cuda.h"
#endif

namespace stitch {

const char* site_name(Site s) {
    switch (s) {
        case Site::Embed: return "embed";
        case Site::ResidPre: return "resid_pre";
        case Site::AttnOut: return "attn_out";
        case Site::ResidMid: return "resid_mid";
        case Site::MlpOut: return "mlp_out";
        case Site::ResidPost: return "resid_post";
        case Site::FinalNorm: return "final_norm";
        case Site::Logits: return "logits";
    }
    return "?";
}

void pick_tokens(const float* logits, int rows, int vocab, const ForwardOptions& opt) {
    if (opt.sampling.temperature > 0.0f && !opt.rng) fail("", "internal: sampling without a random generator");
    opt.next->resize(size_t(rows));
    const SamplingParams& p = opt.sampling;
    for (int i = 0; i < rows; ++i)  // greedy takes no draw (and may have no generator)
        (*opt.next)[size_t(i)] = cpu::sample_row(logits + int64_t(i) * vocab, vocab, p.temperature, p.top_k, p.top_p,
                                                 opt.rng ? sample_uniform(p, *opt.rng) : 0.0);
}

bool Hooks::steers(Site s) const { return steering && steering->wants(s); }

KVCache::KVCache(const ModelConfig& c, int cap) : capacity(cap), n_layers(c.n_layers), kv_dim(c.kv_dim()) {}

void KVCache::ensure_host() {
    if (device) fail("", "this KV cache was filled by a GPU model; its keys and values are on the device");
    if (k.empty()) {
        const size_t n = size_t(n_layers) * size_t(capacity) * size_t(kv_dim);
        k.assign(n, 0.0f);
        v.assign(n, 0.0f);
    }
}

float* KVCache::k_layer(int L, int kvd) {
    ensure_host();
    return k.data() + int64_t(L) * capacity * kvd;
}

float* KVCache::v_layer(int L, int kvd) {
    ensure_host();
    return v.data() + int64_t(L) * capacity * kvd;
}

void copy_prefix(const Model& m, const KVCache& from, KVCache& to, int positions) {
    if (positions < 0 || positions > from.length)
        fail("", "copy_prefix: {} positions asked of a KV cache holding {}", positions, from.length);
    if (positions > to.capacity) fail("", "copy_prefix: {} positions do not fit a KV cache of capacity {}", positions, to.capacity);
    if (from.n_layers != to.n_layers || from.kv_dim != to.kv_dim)
        fail("", "copy_prefix: KV caches of different shapes ({} layers x {} vs {} x {})", from.n_layers, from.kv_dim,
             to.n_layers, to.kv_dim);
    if (positions > 0 && from.device) {
#ifdef STITCH_HAVE_CUDA
        if (!m.cuda) fail("", "copy_prefix: the KV cache is on the GPU but the model is not");
        m.cuda->copy_prefix(from, to, positions);
#endif
    } else if (positions > 0) {
        to.ensure_host();
        const int64_t kvd = from.kv_dim, rows = int64_t(positions) * kvd;
        for (int L = 0; L < from.n_layers; ++L) {
            std::copy_n(from.k.data() + int64_t(L) * from.capacity * kvd, rows, to.k.data() + int64_t(L) * to.capacity * kvd);
            std::copy_n(from.v.data() + int64_t(L) * from.capacity * kvd, rows, to.v.data() + int64_t(L) * to.capacity * kvd);
        }
    }
    to.length = positions;
}

namespace {

// Checks every sequence and packs its new tokens as rows of st: token ids, each row's sequence
// id and absolute position, each sequence's first row / token count / first position, and the
// rows that get logits. Returns the number of rows. Shared by both backends.
int pack_rows(const ModelConfig& c, RunState& st, std::span<const SeqInput> seqs, bool all_logits) {
    int n = 0;
    for (const auto& s : seqs) {
        if (s.cache->length + int(s.tokens.size()) > s.cache->capacity)
            fail("", "KV cache full: sequence needs {} positions, capacity {}", s.cache->length + s.tokens.size(),
                 s.cache->capacity);
        if (s.cache->n_layers != c.n_layers || s.cache->kv_dim != c.kv_dim())
            fail("", "KV cache made for another model ({} layers x {} key/value dims; this one has {} x {})",
                 s.cache->n_layers, s.cache->kv_dim, c.n_layers, c.kv_dim());
        n += int(s.tokens.size());
    }
    if (n == 0) return 0;
    st.row_seq.resize(size_t(n));
    st.row_pos.resize(size_t(n));
    st.token.resize(size_t(n));
    st.logit_src.clear();
    st.seg_row0.resize(seqs.size());
    st.seg_len.resize(seqs.size());
    st.seg_pos0.resize(seqs.size());
    {
        int r = 0;
        for (size_t si = 0; si < seqs.size(); ++si) {
            const auto& s = seqs[si];
            st.seg_row0[si] = r;
            st.seg_len[si] = int32_t(s.tokens.size());
            st.seg_pos0[si] = s.cache->length;
            for (size_t t = 0; t < s.tokens.size(); ++t, ++r) {
                int32_t id = s.tokens[t];
                if (id < 0 || id >= c.vocab_size) fail("", "token id {} is outside the vocabulary (0..{})", id, c.vocab_size - 1);
                st.token[size_t(r)] = id;
                st.row_seq[size_t(r)] = s.id >= 0 ? s.id : int32_t(si);
                st.row_pos[size_t(r)] = s.cache->length + int32_t(t);
                if (all_logits || t + 1 == s.tokens.size()) st.logit_src.push_back(r);
            }
        }
    }
    return n;
}

}  // namespace

std::vector<float> forward(const Model& m, RunState& st, std::span<const SeqInput> seqs, const ForwardOptions& opt) {
    const ModelConfig& c = m.config;
    const Weights& w = m.weights;
    const int d = c.hidden, hd = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate;
    const int qkv_w = qd + 2 * kvd;

    // Pack rows: every new token of every sequence.
    const int n = pack_rows(c, st, seqs, opt.all_logits);
    if (n == 0) return {};
#ifdef STITCH_HAVE_CUDA
    // A GPU model runs the same steps with the CUDA op set (kernels/cuda/forward_cuda.cu).
    if (m.cuda) return m.cuda->forward(m, st, seqs, opt);
#endif
    for (const auto& s : seqs) s.cache->ensure_host();
    st.x.resize(size_t(n) * d);
    st.h.resize(size_t(n) * d);
    st.qkv.resize(size_t(n) * qkv_w);
    st.attn.resize(size_t(n) * qd);
    st.proj.resize(size_t(n) * d);
    st.gate_up.resize(size_t(n) * 2 * I);
    st.mlp.resize(size_t(n) * I);

    const Ops& ops = cpu_ops();
    const Hooks* hooks = opt.hooks && opt.hooks->active() ? opt.hooks : nullptr;
    const bool check_finite = check_finite_enabled();  // --check-finite: stop at the first non-finite site
    auto hook = [&](Site s, int layer, float* data, int rows, int cols, const int32_t* seq, const int32_t* pos) {
        if (hooks && hooks->steers(s)) hooks->steering->apply(SiteView{s, layer, data, rows, cols, seq, pos});
        if (hooks && hooks->wants(s)) hooks->on_site(SiteView{s, layer, data, rows, cols, seq, pos});
        if (check_finite) check_site_finite(SiteView{s, layer, data, rows, cols, seq, pos});
    };
    const int32_t* rs = st.row_seq.data();
    const int32_t* rp = st.row_pos.data();
    const int ns = int(seqs.size());
    auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

    ops.embed(st.x.data(), w.embed.data(), st.token.data(), n, d, c.embed_scale);  // Gemma: × sqrt(d)
    hook(Site::Embed, -1, st.x.data(), n, d, rs, rp);

    std::vector<const float*> k_base(seqs.size()), v_base(seqs.size());
    for (int L = 0; L < c.n_layers; ++L) {
        const LayerWeights& lw = w.layers[size_t(L)];
        hook(Site::ResidPre, L, st.x.data(), n, d, rs, rp);

        // attention: norm → fused qkv GEMM → (q/k norm) → RoPE → cache append → attend → o_proj
        // (→ Gemma 2/3 post-attention norm)
        ops.rmsnorm(st.h.data(), st.x.data(), lw.attn_norm.data(), n, d, c.norm_eps);
        ops.matmul_wt(st.qkv.data(), st.h.data(), lw.wqkv.data(), bias(lw.bqkv), n, qkv_w, d);
        if (c.qk_norm) {
            ops.head_rmsnorm(st.qkv.data(), n, qkv_w, 0, c.n_heads, hd, lw.q_norm.data(), c.norm_eps);
            ops.head_rmsnorm(st.qkv.data(), n, qkv_w, qd, c.n_kv_heads, hd, lw.k_norm.data(), c.norm_eps);
        }
        const float* inv_freq = m.inv_freq[size_t(L)].data();
        ops.rope(st.qkv.data(), n, qkv_w, 0, c.n_heads, hd, rp, inv_freq);
        ops.rope(st.qkv.data(), n, qkv_w, qd, c.n_kv_heads, hd, rp, inv_freq);
        for (int s = 0; s < ns; ++s) {
            KVCache* kc = seqs[size_t(s)].cache;
            const float* rows = st.qkv.data() + int64_t(st.seg_row0[size_t(s)]) * qkv_w;
            float* k_dst = kc->k_layer(L, kvd) + int64_t(st.seg_pos0[size_t(s)]) * kvd;
            float* v_dst = kc->v_layer(L, kvd) + int64_t(st.seg_pos0[size_t(s)]) * kvd;
            ops.copy2d(k_dst, kvd, rows + qd, qkv_w, st.seg_len[size_t(s)], kvd);
            ops.copy2d(v_dst, kvd, rows + qd + kvd, qkv_w, st.seg_len[size_t(s)], kvd);
            k_base[size_t(s)] = kc->k_layer(L, kvd);
            v_base[size_t(s)] = kc->v_layer(L, kvd);
        }
        ops.attention(st.attn.data(), st.qkv.data(), qkv_w, ns, st.seg_row0.data(), st.seg_len.data(),
                      st.seg_pos0.data(), k_base.data(), v_base.data(), kvd, c.n_heads, c.n_kv_heads, hd, c.attn_scale,
                      c.layer_window[size_t(L)], c.attn_softcap);
        ops.matmul_wt(st.proj.data(), st.attn.data(), lw.wo.data(), bias(lw.bo), n, d, qd);
        if (!lw.post_attn_norm.empty())
            ops.rmsnorm(st.proj.data(), st.proj.data(), lw.post_attn_norm.data(), n, d, c.norm_eps);
        hook(Site::AttnOut, L, st.proj.data(), n, d, rs, rp);
        ops.add(st.x.data(), st.proj.data(), int64_t(n) * d);
        hook(Site::ResidMid, L, st.x.data(), n, d, rs, rp);

        // MLP: norm → fused gate/up GEMM → act(gate)·up → down (→ Gemma 2/3 post-feedforward norm)
        ops.rmsnorm(st.h.data(), st.x.data(), lw.mlp_norm.data(), n, d, c.norm_eps);
        ops.matmul_wt(st.gate_up.data(), st.h.data(), lw.w_gate_up.data(), bias(lw.b_gate_up), n, 2 * I, d);
        ops.gated_act(c.act, st.mlp.data(), st.gate_up.data(), n, I);
        ops.matmul_wt(st.proj.data(), st.mlp.data(), lw.w_down.data(), bias(lw.b_down), n, d, I);
        if (!lw.post_mlp_norm.empty())
            ops.rmsnorm(st.proj.data(), st.proj.data(), lw.post_mlp_norm.data(), n, d, c.norm_eps);
        hook(Site::MlpOut, L, st.proj.data(), n, d, rs, rp);
        ops.add(st.x.data(), st.proj.data(), int64_t(n) * d);
        hook(Site::ResidPost, L, st.x.data(), n, d, rs, rp);
    }
    for (const auto& s : seqs) s.cache->length += int(s.tokens.size());

    // final norm (every row only when a hook wants it), then logits for the requested rows
    const int nl = int(st.logit_src.size());
    std::vector<int32_t> lseq(static_cast<size_t>(nl)), lpos(static_cast<size_t>(nl));
    for (int i = 0; i < nl; ++i) {
        lseq[size_t(i)] = rs[st.logit_src[size_t(i)]];
        lpos[size_t(i)] = rp[st.logit_src[size_t(i)]];
    }
    if (hooks && (hooks->wants(Site::FinalNorm) || hooks->steers(Site::FinalNorm))) {
        ops.rmsnorm(st.h.data(), st.x.data(), w.final_norm.data(), n, d, c.norm_eps);
        hook(Site::FinalNorm, -1, st.h.data(), n, d, rs, rp);
        // logit_src is increasing and logit_src[i] >= i, so moving rows forward in order is safe
        for (int i = 0; i < nl; ++i) ops.copy2d(&st.h[size_t(i) * d], d, &st.h[size_t(st.logit_src[size_t(i)]) * d], d, 1, d);
    } else {
        for (int i = 0; i < nl; ++i) ops.copy2d(&st.h[size_t(i) * d], d, &st.x[size_t(st.logit_src[size_t(i)]) * d], d, 1, d);
        ops.rmsnorm(st.h.data(), st.h.data(), w.final_norm.data(), nl, d, c.norm_eps);
    }
    std::vector<float> logits(size_t(nl) * size_t(c.vocab_size));
    ops.matmul_wt(logits.data(), st.h.data(), w.output().data(), nullptr, nl, c.vocab_size, d);
    if (c.final_softcap > 0) ops.softcap(logits.data(), int64_t(nl) * c.vocab_size, c.final_softcap);  // Gemma 2
    hook(Site::Logits, -1, logits.data(), nl, c.vocab_size, lseq.data(), lpos.data());
    if (opt.next) {
        pick_tokens(logits.data(), nl, c.vocab_size, opt);
        return {};
    }
    return logits;
}

}  // namespace stitch

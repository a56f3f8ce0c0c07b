// The forward pass on the GPU (kernels/cuda/forward_cuda.h): weights uploaded once, then
// engine/forward.cpp's steps in the same order with the device op set of ops.cuh. Read the two
// side by side: every CPU op call has its twin here, and the hook sites sit at the same places.
#include "kernels/cuda/forward_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>

#include "engine/finite.h"
#include "engine/model.h"
#include "engine/steer.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda {
namespace {

std::atomic<size_t> g_tap_limit{size_t(256) << 20};

std::string gib(size_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
    return buf;
}

// At least n elements, contents not kept. Buffers only grow (a quarter extra, so a batch that
// grows a little each call does not reallocate each time): decode steps reuse prefill's.
template <typename Buffer>
auto reserve(Buffer& b, size_t n) {
    if (b.size() < n) {
        b = Buffer();  // free the old one before allocating the new one
        b = Buffer(n + n / 4);
    }
    return b.get();
}

// Host → device at load time through two pinned staging slots, so the host's copy of one chunk
// into pinned memory overlaps the transfer (and bf16 conversion) of the one before.
class Uploader {
public:
    explicit Uploader(cudaStream_t stream) : stream_(stream) {
        for (Slot& s : slots_) {
            s.host = PinnedBuffer<float>(kChunk);
            s.dev = DeviceBuffer<float>(kChunk);
            CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
        }
    }
    ~Uploader() {
        cudaStreamSynchronize(stream_);
        for (Slot& s : slots_)
            if (s.done) cudaEventDestroy(s.done);
    }
    Uploader(const Uploader&) = delete;
    Uploader& operator=(const Uploader&) = delete;

    DeviceBuffer<float> f32(const std::vector<float>& v) {
        DeviceBuffer<float> out(v.size());
        for (size_t off = 0; off < v.size(); off += kChunk) {
            const size_t count = std::min(kChunk, v.size() - off);
            Slot& s = stage(v.data() + off, count);
            CUDA_CHECK(cudaMemcpyAsync(out.get() + off, s.host.get(), count * sizeof(float), cudaMemcpyHostToDevice, stream_));
            CUDA_CHECK(cudaEventRecord(s.done, stream_));
        }
        return out;
    }
    DeviceBuffer<bf16> to_bf16(const std::vector<float>& v) {
        DeviceBuffer<bf16> out(v.size());
        for (size_t off = 0; off < v.size(); off += kChunk) {
            const size_t count = std::min(kChunk, v.size() - off);
            Slot& s = stage(v.data() + off, count);
            CUDA_CHECK(cudaMemcpyAsync(s.dev.get(), s.host.get(), count * sizeof(float), cudaMemcpyHostToDevice, stream_));
            cuda::to_bf16(stream_, out.get() + off, s.dev.get(), int64_t(count));
            CUDA_CHECK(cudaEventRecord(s.done, stream_));
        }
        return out;
    }

private:
    static constexpr size_t kChunk = size_t(8) << 20;  // floats per slot (32 MiB)
    struct Slot {
        PinnedBuffer<float> host;
        DeviceBuffer<float> dev;
        cudaEvent_t done = nullptr;
    };
    // The next slot, once the device has finished reading it, holding a copy of src[0, count).
    Slot& stage(const float* src, size_t count) {
        Slot& s = slots_[next_];
        next_ ^= 1;
        CUDA_CHECK(cudaEventSynchronize(s.done));  // returns at once for an event never recorded
        std::memcpy(s.host.get(), src, count * sizeof(float));
        return s;
    }
    cudaStream_t stream_;
    Slot slots_[2];
    int next_ = 0;
};

}  // namespace

// ---- device state ------------------------------------------------------------------------------

// A KV cache's storage on the GPU: KVCache::k / v's layout, [n_layers, capacity, kv_dim] f32.
struct KVDevice {
    DeviceBuffer<float> k, v;
    int capacity = 0, kv_dim = 0;
    float* k_layer(int L) const { return k.get() + int64_t(L) * capacity * kv_dim; }
    float* v_layer(int L) const { return v.get() + int64_t(L) * capacity * kv_dim; }
};

// One site's rows waiting in the tap staging for the host: copied there on the copy stream,
// handed to the hook (and --check-finite) as soon as they have landed and every earlier site has
// been handed over (checked at each later site while the GPU computes on), else when the staging
// fills or the call ends.
struct QueuedSite {
    Site site;
    int layer;
    size_t offset;  // floats into the staging
    int rows, cols;
    const int32_t* seq;
    const int32_t* pos;
    bool hook;    // false: only --check-finite wants it
    bool commit;  // not a site: where the caches' lengths advance, between the last block and final_norm
    cudaEvent_t landed = nullptr;  // recorded on the copy stream after the rows' copy
};

// RunState::cuda: what one forward call needs besides the weights, kept for the next call.
struct ForwardScratch {
    DeviceBuffer<float> x, h, qkv, attn, proj, gate_up, mlp, last, logits;  // activations, as RunState's
    DeviceBuffer<unsigned char> meta;      // per-call metadata (tokens, positions, sequences, K/V bases)
    PinnedBuffer<unsigned char> meta_host;  // … staged here, sent with one copy
    DeviceBuffer<float> tap_dev;            // read-only sites snapshot here on the compute stream,
    PinnedBuffer<float> tap_host;           // … then copied here on the copy stream
    size_t tap_used = 0;                    // floats of the staging in use
    std::vector<QueuedSite> queued;
    size_t handed = 0;                      // queued[0, handed) are with the host already
    std::vector<cudaEvent_t> tap_events;    // queued[i].landed is tap_events[i] (made on demand)
    PinnedBuffer<float> round_trip;         // rows of a hook that may change them
    DeviceBuffer<int32_t> next;             // ForwardOptions::next picked on the device
    DeviceBuffer<double> draws;             // … with these uniform draws
    DeviceBuffer<unsigned char> sample_scratch;
    DeviceBuffer<unsigned char> steer;      // this call's steering steps: row indices and vectors
    PinnedBuffer<unsigned char> steer_host;  // … staged here, sent with one copy
    size_t tap_capacity() const { return std::min(tap_dev.size(), tap_host.size()); }
    cudaEvent_t tap_event(size_t i) {
        while (tap_events.size() <= i) {
            cudaEvent_t e = nullptr;
            CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
            tap_events.push_back(e);
        }
        return tap_events[i];
    }
    ForwardScratch() = default;
    ForwardScratch(const ForwardScratch&) = delete;
    ForwardScratch& operator=(const ForwardScratch&) = delete;
    ~ForwardScratch() {
        for (cudaEvent_t e : tap_events) cudaEventDestroy(e);
    }
};

namespace {

// Device storage for a KV cache, made on first use. A cache a CPU model began is carried over
// (its host copy is dropped: from here on the device holds the truth).
KVDevice& kv_on_device(KVCache& kc, cudaStream_t stream) {
    if (!kc.device) {
        auto kv = std::make_shared<KVDevice>();
        const size_t count = size_t(kc.n_layers) * size_t(kc.capacity) * size_t(kc.kv_dim);
        kv->k = DeviceBuffer<float>(count);
        kv->v = DeviceBuffer<float>(count);
        kv->capacity = kc.capacity;
        kv->kv_dim = kc.kv_dim;
        if (kc.length > 0 && kc.k.size() == count) {
            CUDA_CHECK(cudaMemcpyAsync(kv->k.get(), kc.k.data(), count * sizeof(float), cudaMemcpyHostToDevice, stream));
            CUDA_CHECK(cudaMemcpyAsync(kv->v.get(), kc.v.data(), count * sizeof(float), cudaMemcpyHostToDevice, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
        } else {
            if (kc.length > 0) throw_error("", "internal: a KV cache of length " + std::to_string(kc.length) + " has no storage");
            kv->k.zero(stream);  // like the CPU's zero-filled vectors (never read past length)
            kv->v.zero(stream);
        }
        kc.k = {};
        kc.v = {};
        kc.device = std::move(kv);
    }
    return *kc.device;
}

// Where the forward pass hands a site's rows to the host: the hooks that want the site, and
// --check-finite. Read-only hooks and finite checks queue an asynchronous copy and run later, in
// order (drain); other hooks stop the pass for a round trip. Either way a hook sees the same
// host rows, in the same order, as on the CPU.
class Taps {
public:
    Taps(ForwardScratch& s, cudaStream_t stream, cudaStream_t copy_stream, cudaEvent_t ready, const Hooks* hooks,
         bool check_finite, std::function<void()> advance_lengths)
        : s_(s), stream_(stream), copy_(copy_stream), ready_(ready), hooks_(hooks), check_(check_finite),
          advance_(std::move(advance_lengths)) {}

    // Whether anything (a hook or --check-finite) reads the site this call.
    bool wants(Site site) const { return (hooks_ && hooks_->wants(site)) || check_; }

    // Whether a site goes through the queue this call (rather than a round trip, or nowhere).
    bool queues(Site site) const {
        const bool hooked = hooks_ && hooks_->wants(site);
        return hooked ? hooks_->read_only : check_;
    }

    // Staging room for `floats` queued floats (capped by the limit, but never below one site).
    void reserve_staging(size_t floats, size_t site_floats) {
        if (floats == 0) return;
        const size_t room = std::max(site_floats, std::min(floats, g_tap_limit.load() / sizeof(float)));
        if (s_.tap_capacity() < room) {
            reserve(s_.tap_dev, room);
            reserve(s_.tap_host, room);
        }
    }

    // The rows [rows, cols] at device `data`, at one site.
    void at(Site site, int layer, float* data, int rows, int cols, const int32_t* seq, const int32_t* pos) {
        const bool hooked = hooks_ && hooks_->wants(site);
        if (!hooked && !check_) return;
        const size_t count = size_t(rows) * size_t(cols);
        if (hooked && !hooks_->read_only) {
            // The hook may change the rows (steering): out, hook, back, before the pass goes on.
            drain();  // earlier sites first, as on the CPU
            if (s_.round_trip.size() < count) CUDA_CHECK(cudaStreamSynchronize(stream_));  // the last copy back reads it
            float* host = reserve(s_.round_trip, count);
            CUDA_CHECK(cudaMemcpyAsync(host, data, count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
            CUDA_CHECK(cudaStreamSynchronize(stream_));
            const SiteView v{site, layer, host, rows, cols, seq, pos};
            hooks_->on_site(v);
            if (check_) check_site_finite(v);
            CUDA_CHECK(cudaMemcpyAsync(data, host, count * sizeof(float), cudaMemcpyHostToDevice, stream_));
            return;
        }
        if (count > s_.tap_capacity()) {
            drain();
            reserve(s_.tap_dev, count);
            reserve(s_.tap_host, count);
        }
        if (s_.tap_used + count > s_.tap_capacity()) drain();
        // Snapshot on the compute stream (which goes on to overwrite `data`: x is updated in
        // place), then the copy stream takes the snapshot to the host while the compute goes on.
        float* snap = s_.tap_dev.get() + s_.tap_used;
        CUDA_CHECK(cudaMemcpyAsync(snap, data, count * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
        CUDA_CHECK(cudaEventRecord(ready_, stream_));
        CUDA_CHECK(cudaStreamWaitEvent(copy_, ready_, 0));
        CUDA_CHECK(cudaMemcpyAsync(s_.tap_host.get() + s_.tap_used, snap, count * sizeof(float), cudaMemcpyDeviceToHost,
                                   copy_));
        const cudaEvent_t landed = s_.tap_event(s_.queued.size());
        CUDA_CHECK(cudaEventRecord(landed, copy_));
        s_.queued.push_back(QueuedSite{site, layer, s_.tap_used, rows, cols, seq, pos, hooked, false, landed});
        s_.tap_used += count;
        hand_over(false);  // the host works on the sites that have landed while the GPU goes on
    }

    // After the last block: the CPU path advances the caches' lengths here, so a site queued
    // before this point that fails --check-finite leaves them as they were, and one after it not.
    void advance_lengths() {
        if (s_.queued.empty()) advance_();
        else s_.queued.push_back(QueuedSite{Site::Embed, -1, 0, 0, 0, nullptr, nullptr, false, true, nullptr});
    }

    // Every queued site to its hook and finite check, in order, once its copy has landed.
    void drain() { hand_over(true); }

private:
    // The queued sites not handed over yet, in order: all of them (wait), or those whose copy has
    // landed up to the first that has not. An emptied queue frees the whole staging.
    void hand_over(bool wait) {
        if (wait && s_.handed < s_.queued.size()) CUDA_CHECK(cudaStreamSynchronize(copy_));
        while (s_.handed < s_.queued.size()) {
            const QueuedSite& q = s_.queued[s_.handed];
            if (!q.commit && !wait) {
                const cudaError_t e = cudaEventQuery(q.landed);
                if (e == cudaErrorNotReady) return;
                CUDA_CHECK(e);
            }
            ++s_.handed;  // before the hook runs: one that throws is not handed over twice
            if (q.commit) {
                advance_();
                continue;
            }
            const SiteView v{q.site, q.layer, s_.tap_host.get() + q.offset, q.rows, q.cols, q.seq, q.pos};
            if (q.hook) hooks_->on_site(v);
            if (check_) check_site_finite(v);
        }
        s_.queued.clear();
        s_.handed = 0;
        s_.tap_used = 0;
    }

    ForwardScratch& s_;
    cudaStream_t stream_, copy_;
    cudaEvent_t ready_;
    const Hooks* hooks_;
    bool check_;
    std::function<void()> advance_;
};

// Hooks::steering on the device: every site's Steering::plan for this call's rows, computed on
// the host when the call begins and sent with one copy (row indices and vectors), then run at
// each site with the row kernels (ops.cuh), so steering never stops the pass. Logits are steered
// on the host, where they end up anyway.
class DeviceSteering {
public:
    DeviceSteering(ForwardScratch& s, cudaStream_t stream, const Steering* steering, const ModelConfig& c, int n,
                   const int32_t* seq, const int32_t* pos)
        : stream_(stream), n_layers_(c.n_layers) {
        if (!steering) return;
        first_.assign(size_t(kSiteCount) * size_t(n_layers_ + 1) + 1, 0);
        std::vector<SteerStep> plans;
        std::vector<Step> steps;
        size_t bytes = 0;
        auto take = [&bytes](size_t b) {
            const size_t at = bytes;
            bytes = (bytes + b + 15) & ~size_t(15);
            return at;
        };
        for (int si = 0; si < kSiteCount; ++si)
            for (int L = -1; L < n_layers_; ++L) {
                const Site site = Site(si);
                first_[slot(site, L)] = int(steps.size());
                const bool per_layer = site != Site::Embed && site != Site::FinalNorm && site != Site::Logits;
                if (site == Site::Logits || per_layer != (L >= 0)) continue;
                for (SteerStep& p : steering->plan(site, L, n, c.hidden, seq, pos)) {
                    Step st{p.op, p.alpha, int(p.rows.size()), 0, 0, p.vec ? 0 : int64_t(c.hidden)};
                    st.rows = take(sizeof(int32_t) * p.rows.size());
                    st.vec = take(sizeof(float) * (p.vec ? size_t(c.hidden) : p.src.size()));
                    steps.push_back(st);
                    plans.push_back(std::move(p));
                }
            }
        first_.back() = int(steps.size());
        if (steps.empty()) return;
        unsigned char* host = reserve(s.steer_host, bytes);
        for (size_t k = 0; k < steps.size(); ++k) {
            const SteerStep& p = plans[k];
            std::memcpy(host + steps[k].rows, p.rows.data(), sizeof(int32_t) * p.rows.size());
            if (p.vec)
                std::memcpy(host + steps[k].vec, p.vec, sizeof(float) * size_t(c.hidden));
            else
                std::memcpy(host + steps[k].vec, p.src.data(), sizeof(float) * p.src.size());
        }
        base_ = reserve(s.steer, bytes);
        CUDA_CHECK(cudaMemcpyAsync(base_, host, bytes, cudaMemcpyHostToDevice, stream_));
        steps_ = std::move(steps);
    }

    // What the launches of at() depend on besides the uploaded contents: the steps' shapes,
    // arguments and offsets, and the block's address (a CUDA graph bakes them in).
    std::vector<uint64_t> signature() const {
        std::vector<uint64_t> sig{uint64_t(reinterpret_cast<uintptr_t>(base_))};
        for (int f : first_) sig.push_back(uint64_t(f));
        for (const Step& st : steps_) {
            uint32_t alpha = 0;
            std::memcpy(&alpha, &st.alpha, sizeof alpha);
            sig.insert(sig.end(), {uint64_t(st.op), uint64_t(alpha), uint64_t(st.n_rows), st.rows, st.vec, uint64_t(st.src_ld)});
        }
        return sig;
    }

    bool has(Site site, int layer) const {
        return !steps_.empty() && first_[slot(site, layer)] < first_[slot(site, layer) + 1];
    }

    // The steps at (site, layer) on the rows at device x [n, d].
    void at(Site site, int layer, float* x, int d) const {
        if (steps_.empty()) return;
        for (int k = first_[slot(site, layer)]; k < first_[slot(site, layer) + 1]; ++k) {
            const Step& st = steps_[size_t(k)];
            const auto* rows = reinterpret_cast<const int32_t*>(base_ + st.rows);
            const auto* vec = reinterpret_cast<const float*>(base_ + st.vec);
            switch (st.op) {
                case SteerOp::Add: add_rows(stream_, x, d, rows, st.n_rows, vec, st.alpha); break;
                case SteerOp::Ablate: ablate_rows(stream_, x, d, rows, st.n_rows, vec, st.alpha); break;
                case SteerOp::Replace: replace_rows(stream_, x, d, rows, st.n_rows, vec, st.src_ld, st.alpha); break;
            }
        }
    }

private:
    struct Step {
        SteerOp op;
        float alpha;
        int n_rows;
        size_t rows, vec;  // byte offsets into the block
        int64_t src_ld;    // 0: one vector for every row
    };
    size_t slot(Site site, int layer) const { return size_t(int(site)) * size_t(n_layers_ + 1) + size_t(layer + 1); }
    cudaStream_t stream_;
    int n_layers_;
    std::vector<int> first_;  // per (site, layer) slot: its first step; one past the end at the back
    std::vector<Step> steps_;
    unsigned char* base_ = nullptr;
};

// Per-call metadata in one block (one host→device copy): int32 arrays, then 8-byte aligned
// pointer arrays. Offsets in bytes.
struct MetaLayout {
    size_t token, pos, slot, row0, len, pos0, k_base, v_base, bytes;
    MetaLayout(int n, int ns, int n_layers) {
        size_t o = 0;
        auto take = [&o](size_t bytes) {
            const size_t at = o;
            o += bytes;
            return at;
        };
        token = take(sizeof(int32_t) * size_t(n));
        pos = take(sizeof(int32_t) * size_t(n));
        slot = take(sizeof(int32_t) * size_t(n));
        row0 = take(sizeof(int32_t) * size_t(ns));
        len = take(sizeof(int32_t) * size_t(ns));
        pos0 = take(sizeof(int32_t) * size_t(ns));
        o = (o + 7) & ~size_t(7);
        k_base = take(sizeof(float*) * size_t(ns) * size_t(n_layers));
        v_base = take(sizeof(float*) * size_t(ns) * size_t(n_layers));
        bytes = o;
    }
};

}  // namespace

// ---- weights ----------------------------------------------------------------------------------

struct LayerDevice {
    DeviceBuffer<float> attn_norm, bqkv, bo, q_norm, k_norm, post_attn_norm, mlp_norm, post_mlp_norm, b_gate_up, b_down;
    DeviceBuffer<float> inv_freq;  // RoPE [head_dim/2] of this layer (Gemma 3: local or global)
    DeviceBuffer<bf16> wqkv, wo, w_gate_up, w_down;
};

// What a captured decode step depends on besides the device-side metadata it reads: its shape,
// the attention's context bucket, and every buffer address baked into its kernels.
struct GraphKey {
    int n, ns, ctx;
    float* act[8];  // x, h, qkv, attn, proj, gate_up, mlp, logits
    unsigned char* meta;
    std::vector<uint64_t> steering;  // DeviceSteering::signature()
    bool operator==(const GraphKey& o) const {
        return n == o.n && ns == o.ns && ctx == o.ctx && meta == o.meta && std::equal(act, act + 8, o.act) &&
               steering == o.steering;
    }
};

constexpr int kGraphCtx = 256;     // decode steps share a graph while max_ctx stays in one bucket of this many
constexpr size_t kMaxGraphs = 8;  // captured steps kept per model (oldest dropped first)

std::atomic<int> g_graphs{-1};  // set_cuda_graphs: -1 = from STITCH_CUDA_GRAPHS (default on)

struct ForwardCuda::Impl {
    std::vector<std::pair<GraphKey, cudaGraphExec_t>> graphs;
    bool graphs_failed = false;  // a capture failed once: this model runs every step eagerly

    cudaGraphExec_t find_graph(const GraphKey& k) const {
        for (const auto& [key, exec] : graphs)
            if (key == k) return exec;
        return nullptr;
    }
    void add_graph(const GraphKey& k, cudaGraphExec_t exec) {
        if (graphs.size() >= kMaxGraphs) {
            cudaGraphExecDestroy(graphs.front().second);  // launches already queued keep their own copy
            graphs.erase(graphs.begin());
        }
        graphs.emplace_back(k, exec);
    }

    bool graphs_enabled() const {
        if (graphs_failed) return false;
        int on = g_graphs.load();
        if (on < 0) {
            const char* e = std::getenv("STITCH_CUDA_GRAPHS");
            on = !(e && std::strcmp(e, "0") == 0);
        }
        return on != 0;
    }

    // Captures what `enqueue` puts on the stream into an executable graph. On any failure the
    // capture is abandoned, graphs are switched off for this model (one line on stderr) and null
    // returned: the caller then runs the step eagerly, as every step without graphs.
    template <typename Enqueue>
    cudaGraphExec_t capture_graph(Enqueue&& enqueue) {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        std::string why;
        cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
        if (err == cudaSuccess) {
            try {
                enqueue();
            } catch (const std::exception& e) {
                why = e.what();
            }
            const cudaError_t end = cudaStreamEndCapture(stream, &graph);
            if (why.empty() && end != cudaSuccess) why = cudaGetErrorString(end);
            if (why.empty()) {
                err = cudaGraphInstantiate(&exec, graph, 0);
                if (err != cudaSuccess) why = cudaGetErrorString(err), exec = nullptr;
            }
            if (graph) cudaGraphDestroy(graph);
        } else {
            why = cudaGetErrorString(err);
        }
        if (exec) return exec;
        cudaGetLastError();  // clear the capture's error so the eager run starts clean
        graphs_failed = true;
        std::fprintf(stderr, "stitch: CUDA graph capture of a decode step failed (%s); decoding without graphs\n",
                     why.c_str());
        return nullptr;
    }

    cudaStream_t stream = nullptr;       // the forward pass
    cudaStream_t copy_stream = nullptr;  // read-only taps on their way to the host
    cudaEvent_t tap_ready = nullptr;     // "the snapshot is taken": the copy stream waits on it
    std::unique_ptr<GemmContext> gemm;
    DeviceBuffer<bf16> embed, lm_head;  // lm_head empty when tied: the output matrix is embed
    DeviceBuffer<float> final_norm;
    std::vector<LayerDevice> layers;
    size_t bytes = 0;
    std::string name;
    int head_dim = 0;

    const bf16* output() const { return lm_head.size() ? lm_head.get() : embed.get(); }
    ~Impl() {
        if (stream) cudaStreamSynchronize(stream);
        for (auto& kv : graphs) cudaGraphExecDestroy(kv.second);
        if (copy_stream) cudaStreamSynchronize(copy_stream);
        gemm.reset();
        if (tap_ready) cudaEventDestroy(tap_ready);
        if (copy_stream) cudaStreamDestroy(copy_stream);
        if (stream) cudaStreamDestroy(stream);
    }
};


void set_cuda_graphs(int on) { g_graphs.store(on < 0 ? -1 : on != 0); }

ForwardCuda::ForwardCuda(const Model& m) : impl_(std::make_unique<Impl>()) {
    Impl& g = *impl_;
    const ModelConfig& c = m.config;
    const Weights& w = m.weights;
    if (m.inv_freq.size() != size_t(c.n_layers) || w.layers.size() != size_t(c.n_layers))
        throw_error(m.path.c_str(), "internal: the model's layers are not all loaded");
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    g.name = device_name(dev);
    g.head_dim = c.head_dim;

    // Refuse up front, with sizes, rather than fail halfway through the upload.
    size_t bf16_count = w.embed.size() + w.lm_head.size(), f32_count = w.final_norm.size();
    for (size_t L = 0; L < w.layers.size(); ++L) {
        const LayerWeights& lw = w.layers[L];
        bf16_count += lw.wqkv.size() + lw.wo.size() + lw.w_gate_up.size() + lw.w_down.size();
        for (const auto* v : {&lw.attn_norm, &lw.bqkv, &lw.bo, &lw.q_norm, &lw.k_norm, &lw.post_attn_norm, &lw.mlp_norm,
                              &lw.post_mlp_norm, &lw.b_gate_up, &lw.b_down, &m.inv_freq[L]})
            f32_count += v->size();
    }
    g.bytes = bf16_count * sizeof(bf16) + f32_count * sizeof(float);
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t headroom = size_t(512) << 20;  // staging, cuBLAS workspace, a first batch's activations
    if (g.bytes + headroom > free_bytes)
        throw_error(m.path.c_str(), "the weights need " + gib(g.bytes) + " of GPU memory as bf16 (plus about " + gib(headroom) +
                                " to run); " + g.name + " has " + gib(free_bytes) + " free of " + gib(total_bytes));

    CUDA_CHECK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g.copy_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&g.tap_ready, cudaEventDisableTiming));
    g.gemm = std::make_unique<GemmContext>(g.stream);

    Uploader up(g.stream);
    g.embed = up.to_bf16(w.embed);
    if (!w.lm_head.empty()) g.lm_head = up.to_bf16(w.lm_head);
    g.final_norm = up.f32(w.final_norm);
    g.layers.resize(w.layers.size());
    for (size_t L = 0; L < w.layers.size(); ++L) {
        const LayerWeights& lw = w.layers[L];
        LayerDevice& ld = g.layers[L];
        ld.attn_norm = up.f32(lw.attn_norm);
        ld.wqkv = up.to_bf16(lw.wqkv);
        ld.bqkv = up.f32(lw.bqkv);
        ld.wo = up.to_bf16(lw.wo);
        ld.bo = up.f32(lw.bo);
        ld.q_norm = up.f32(lw.q_norm);
        ld.k_norm = up.f32(lw.k_norm);
        ld.post_attn_norm = up.f32(lw.post_attn_norm);
        ld.mlp_norm = up.f32(lw.mlp_norm);
        ld.post_mlp_norm = up.f32(lw.post_mlp_norm);
        ld.w_gate_up = up.to_bf16(lw.w_gate_up);
        ld.b_gate_up = up.f32(lw.b_gate_up);
        ld.w_down = up.to_bf16(lw.w_down);
        ld.b_down = up.f32(lw.b_down);
        ld.inv_freq = up.f32(m.inv_freq[L]);
    }
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
}

ForwardCuda::~ForwardCuda() = default;

size_t ForwardCuda::weight_bytes() const { return impl_->bytes; }
std::string ForwardCuda::device() const { return impl_->name; }
std::string ForwardCuda::prefill_attention() const {
    return prefill_on_tensor_cores(impl_->head_dim) ? "tensor cores (TF32)" : "CUDA cores (F32)";
}
bool ForwardCuda::decode_graphs() const { return impl_->graphs_enabled(); }

// ---- the forward pass -------------------------------------------------------------------------

std::vector<float> ForwardCuda::forward(const Model& m, RunState& st, std::span<const SeqInput> seqs,
                                        const ForwardOptions& opt) {
    Impl& g = *impl_;
    if (!st.cuda) st.cuda = std::make_shared<ForwardScratch>();
    ForwardScratch& s = *st.cuda;
    const cudaStream_t cs = g.stream;
    // On an exception (a hook's, --check-finite's, CUDA's) let both streams finish before the
    // buffers and caches are touched again, and forget the queued sites.
    struct Settle {
        Impl& g;
        ForwardScratch& s;
        int uncaught = std::uncaught_exceptions();
        ~Settle() {
            if (std::uncaught_exceptions() == uncaught) return;
            cudaStreamSynchronize(g.stream);
            cudaStreamSynchronize(g.copy_stream);
            s.queued.clear();
            s.handed = 0;
            s.tap_used = 0;
        }
    } settle{g, s};

    const ModelConfig& c = m.config;
    const int d = c.hidden, hd = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate, V = c.vocab_size;
    const int qkv_w = qd + 2 * kvd;
    const int n = int(st.token.size()), ns = int(seqs.size()), nl = int(st.logit_src.size());
    const size_t nd = size_t(n) * size_t(d);
    const int32_t* rs = st.row_seq.data();  // host: what hooks see
    const int32_t* rp = st.row_pos.data();

    // Metadata: tokens, positions, each row's sequence slot, the sequences, every layer's K/V
    // base pointers (caches get device storage on first use) — one pinned block, one copy.
    const MetaLayout ml(n, ns, c.n_layers);
    unsigned char* mh = reserve(s.meta_host, ml.bytes);
    unsigned char* md = reserve(s.meta, ml.bytes);
    auto host_i32 = [mh](size_t off) { return reinterpret_cast<int32_t*>(mh + off); };
    std::memcpy(host_i32(ml.token), st.token.data(), sizeof(int32_t) * size_t(n));
    std::memcpy(host_i32(ml.pos), st.row_pos.data(), sizeof(int32_t) * size_t(n));
    std::memcpy(host_i32(ml.row0), st.seg_row0.data(), sizeof(int32_t) * size_t(ns));
    std::memcpy(host_i32(ml.len), st.seg_len.data(), sizeof(int32_t) * size_t(ns));
    std::memcpy(host_i32(ml.pos0), st.seg_pos0.data(), sizeof(int32_t) * size_t(ns));
    float** kb_host = reinterpret_cast<float**>(mh + ml.k_base);
    float** vb_host = reinterpret_cast<float**>(mh + ml.v_base);
    int max_len = 0, max_ctx = 0;
    for (int si = 0; si < ns; ++si) {
        const KVDevice& kv = kv_on_device(*seqs[size_t(si)].cache, cs);
        for (int L = 0; L < c.n_layers; ++L) {
            kb_host[size_t(L) * ns + si] = kv.k_layer(L);
            vb_host[size_t(L) * ns + si] = kv.v_layer(L);
        }
        for (int r = st.seg_row0[size_t(si)]; r < st.seg_row0[size_t(si)] + st.seg_len[size_t(si)]; ++r)
            host_i32(ml.slot)[r] = si;
        max_len = std::max(max_len, st.seg_len[size_t(si)]);
        max_ctx = std::max(max_ctx, st.seg_pos0[size_t(si)] + st.seg_len[size_t(si)]);
    }
    CUDA_CHECK(cudaMemcpyAsync(md, mh, ml.bytes, cudaMemcpyHostToDevice, cs));
    const int32_t* token_d = reinterpret_cast<const int32_t*>(md + ml.token);
    const int32_t* pos_d = reinterpret_cast<const int32_t*>(md + ml.pos);
    const int32_t* slot_d = reinterpret_cast<const int32_t*>(md + ml.slot);
    const int32_t* row0_d = reinterpret_cast<const int32_t*>(md + ml.row0);
    const int32_t* len_d = reinterpret_cast<const int32_t*>(md + ml.len);
    const int32_t* pos0_d = reinterpret_cast<const int32_t*>(md + ml.pos0);
    float* const* k_base_d = reinterpret_cast<float* const*>(md + ml.k_base);
    float* const* v_base_d = reinterpret_cast<float* const*>(md + ml.v_base);

    float* x = reserve(s.x, nd);
    float* h = reserve(s.h, nd);
    float* qkv = reserve(s.qkv, size_t(n) * qkv_w);
    float* attn = reserve(s.attn, size_t(n) * qd);
    float* proj = reserve(s.proj, nd);
    float* gate_up = reserve(s.gate_up, size_t(n) * 2 * I);
    float* mlp = reserve(s.mlp, size_t(n) * I);

    const Hooks* hooks = opt.hooks && opt.hooks->active() ? opt.hooks : nullptr;
    const DeviceSteering steer(s, cs, hooks ? hooks->steering : nullptr, c, n, rs, rp);
    const bool check_finite = check_finite_enabled();  // --check-finite: scans the host copies
    Taps taps(s, cs, g.copy_stream, g.tap_ready, hooks, check_finite, [&seqs] {
        for (const auto& q : seqs) q.cache->length += int(q.tokens.size());
    });
    {
        size_t queued = 0;
        if (taps.queues(Site::Embed)) queued += nd;
        for (Site site : {Site::ResidPre, Site::AttnOut, Site::ResidMid, Site::MlpOut, Site::ResidPost})
            if (taps.queues(site)) queued += size_t(c.n_layers) * nd;
        if (hooks && hooks->wants(Site::FinalNorm) && taps.queues(Site::FinalNorm)) queued += nd;
        taps.reserve_staging(queued, nd);
    }
    GemmContext& gemm = *g.gemm;
    auto bias = [](const DeviceBuffer<float>& b) -> const float* { return b.size() ? b.get() : nullptr; };

    // final norm (every row only when a hook wants it), then logits for the requested rows.
    // nl == n means every row (all_logits, or a decode step): no gather. Otherwise the rows are
    // gathered into `last` (never in place: a kernel's rows run concurrently), one copy per run
    // of consecutive rows.
    std::vector<int32_t> lseq(static_cast<size_t>(nl)), lpos(static_cast<size_t>(nl));
    for (int i = 0; i < nl; ++i) {
        lseq[size_t(i)] = rs[st.logit_src[size_t(i)]];
        lpos[size_t(i)] = rp[st.logit_src[size_t(i)]];
    }
    const bool every_row = nl == n;
    float* last = every_row ? nullptr : reserve(s.last, size_t(nl) * d);
    auto gather = [&](const float* src) {
        for (int i = 0; i < nl;) {
            int j = i + 1;
            while (j < nl && st.logit_src[size_t(j)] == st.logit_src[size_t(j - 1)] + 1) ++j;
            copy2d(cs, last + size_t(i) * d, d, src + size_t(st.logit_src[size_t(i)]) * d, d, j - i, d);
            i = j;
        }
    };
    float* logits_d = reserve(s.logits, size_t(nl) * size_t(V));

    // A site: its steering on the device, then its taps.
    auto site = [&](Site where, int layer, float* data) {
        steer.at(where, layer, data, d);
        taps.at(where, layer, data, n, d, rs, rp);
    };
    // Nothing to do at a site this call (no steering step, no tap): a residual add and the norm
    // after it can then be one kernel (add_rmsnorm), the same floats in one pass over x.
    auto quiet = [&](Site where, int layer) { return !steer.has(where, layer) && !taps.wants(where); };
    const bool final_hooked = hooks && (hooks->wants(Site::FinalNorm) || hooks->steers(Site::FinalNorm));
    // Everything from the embedding to the logits, on the stream. `ctx` stands for max_ctx in the
    // attention launch (its decode split count): a decode step passes max_ctx rounded up to
    // kGraphCtx, so that consecutive steps launch the same kernels (splits past a sequence's
    // keys are empty and weigh nothing) and a CUDA graph of one step serves the next ones.
    auto compute = [&](int ctx) {
        cuda::embed(cs, x, g.embed.get(), token_d, n, d, c.embed_scale);  // Gemma: × sqrt(d), in f32
        site(Site::Embed, -1, x);

        bool h_ready = false;  // h holds this layer's attn_norm(x) already (fused into the last add)
        bool final_ready = false;  // h holds final_norm(x) already
        for (int L = 0; L < c.n_layers; ++L) {
            const LayerDevice& lw = g.layers[size_t(L)];
            site(Site::ResidPre, L, x);

            // attention: norm → fused qkv GEMM → (q/k norm) → RoPE → cache append → attend → o_proj
            // (→ Gemma 2/3 post-attention norm)
            if (!h_ready) rmsnorm(cs, h, x, lw.attn_norm.get(), n, d, c.norm_eps);
            h_ready = false;
            gemm.matmul_wt(qkv, h, lw.wqkv.get(), bias(lw.bqkv), n, qkv_w, d);
            if (c.qk_norm) {
                head_rmsnorm(cs, qkv, n, qkv_w, 0, c.n_heads, hd, lw.q_norm.get(), c.norm_eps);
                head_rmsnorm(cs, qkv, n, qkv_w, qd, c.n_kv_heads, hd, lw.k_norm.get(), c.norm_eps);
            }
            // RoPE on q and k, and k and v into each row's cache at its position: one launch
            float* const* k_base = k_base_d + size_t(L) * ns;
            float* const* v_base = v_base_d + size_t(L) * ns;
            rope_append(cs, qkv, n, qkv_w, c.n_heads, c.n_kv_heads, hd, pos_d, lw.inv_freq.get(), slot_d, k_base, v_base);
            attention(cs, attn, qkv, qkv_w, ns, row0_d, len_d, pos0_d, k_base, v_base, kvd, c.n_heads, c.n_kv_heads, hd,
                      c.attn_scale, c.layer_window[size_t(L)], c.attn_softcap, max_len, ctx);
            gemm.matmul_wt(proj, attn, lw.wo.get(), bias(lw.bo), n, d, qd);
            if (lw.post_attn_norm.size()) rmsnorm(cs, proj, proj, lw.post_attn_norm.get(), n, d, c.norm_eps);
            site(Site::AttnOut, L, proj);
            // MLP: (residual add +) norm → fused gate/up GEMM → act(gate)·up → down (→ Gemma 2/3
            // post-feedforward norm)
            if (quiet(Site::ResidMid, L)) {
                add_rmsnorm(cs, x, proj, h, lw.mlp_norm.get(), n, d, c.norm_eps);
            } else {
                add(cs, x, proj, int64_t(nd));
                site(Site::ResidMid, L, x);
                rmsnorm(cs, h, x, lw.mlp_norm.get(), n, d, c.norm_eps);
            }
            gemm.matmul_wt(gate_up, h, lw.w_gate_up.get(), bias(lw.b_gate_up), n, 2 * I, d);
            gemm.matmul_gated(proj, gate_up, c.act, mlp, lw.w_down.get(), bias(lw.b_down), n, d, I);
            if (lw.post_mlp_norm.size()) rmsnorm(cs, proj, proj, lw.post_mlp_norm.get(), n, d, c.norm_eps);
            site(Site::MlpOut, L, proj);
            // the residual add, fused with the next norm (the next layer's, or the final one for
            // every row) when no site in between has work
            const bool last_layer = L + 1 == c.n_layers;
            if (!last_layer && quiet(Site::ResidPost, L) && quiet(Site::ResidPre, L + 1)) {
                add_rmsnorm(cs, x, proj, h, g.layers[size_t(L) + 1].attn_norm.get(), n, d, c.norm_eps);
                h_ready = true;
            } else if (last_layer && every_row && !final_hooked && quiet(Site::ResidPost, L)) {
                add_rmsnorm(cs, x, proj, h, g.final_norm.get(), n, d, c.norm_eps);
                final_ready = true;
            } else {
                add(cs, x, proj, int64_t(nd));
                site(Site::ResidPost, L, x);
            }
        }
        taps.advance_lengths();

        const float* normed = nullptr;
        if (final_hooked) {
            rmsnorm(cs, h, x, g.final_norm.get(), n, d, c.norm_eps);
            site(Site::FinalNorm, -1, h);
            if (!every_row) gather(h);
            normed = every_row ? h : last;
        } else if (every_row) {
            if (!final_ready) rmsnorm(cs, h, x, g.final_norm.get(), n, d, c.norm_eps);
            normed = h;
        } else {
            gather(x);
            rmsnorm(cs, last, last, g.final_norm.get(), nl, d, c.norm_eps);
            normed = last;
        }
        gemm.matmul_wt(logits_d, normed, g.output(), nullptr, nl, V, d);
        if (c.final_softcap > 0) softcap(cs, logits_d, int64_t(nl) * V, c.final_softcap);  // Gemma 2

    };
    const bool decode = max_len == 1;
    const int ctx = decode ? (max_ctx + kGraphCtx - 1) / kGraphCtx * kGraphCtx : max_ctx;
    // A decode step of up to kSmallRows rows (the GEMV path: no cuBLAS, no scratch that grows)
    // with no on_site hook is launched as one CUDA graph, captured the first time its shape,
    // buffers and steering steps occur: a few hundred small kernels per token would otherwise
    // cost more CPU launch time than the GPU needs to run them. Steering stays on (its rows and
    // vectors are uploaded before each launch, to the offsets the graph reads). The lengths
    // advance as compute() would have advanced them.
    const bool no_host_sites = !hooks || (hooks->site_mask == 0 && !hooks->steers(Site::Logits));
    const bool graph = decode && nl == n && no_host_sites && !check_finite && n <= GemmContext::kSmallRows &&
                       g.graphs_enabled();
    if (graph) {
        const GraphKey key{n, ns, ctx, {x, h, qkv, attn, proj, gate_up, mlp, logits_d}, md, steer.signature()};
        if (cudaGraphExec_t exec = g.find_graph(key)) {
            for (const auto& q : seqs) q.cache->length += int(q.tokens.size());
            CUDA_CHECK(cudaGraphLaunch(exec, cs));
        } else {
            std::vector<int> lengths;
            for (const auto& q : seqs) lengths.push_back(q.cache->length);
            if (cudaGraphExec_t made = g.capture_graph([&] { compute(ctx); })) {
                g.add_graph(key, made);
                CUDA_CHECK(cudaGraphLaunch(made, cs));
            } else {
                // capture failed (graphs are now off for this model, with a notice): run as is
                for (size_t i = 0; i < seqs.size(); ++i) seqs[i].cache->length = lengths[i];
                compute(ctx);
            }
        }
    } else {
        compute(ctx);
    }

    // Tokens instead of logits, picked here unless the logits must reach the host anyway.
    const bool logits_to_host = !opt.next || check_finite ||
                                (hooks && (hooks->wants(Site::Logits) || hooks->steers(Site::Logits)));
    if (!logits_to_host) {
        const SamplingParams& sp = opt.sampling;
        if (sp.temperature > 0.0f && !opt.rng) throw_error("", "internal: sampling without a random generator");
        int32_t* next_d = reserve(s.next, size_t(nl));
        if (sp.temperature > 0.0f) {
            std::vector<double> u(static_cast<size_t>(nl));
            for (double& e : u) e = sample_uniform(sp, *opt.rng);
            double* u_d = reserve(s.draws, u.size());
            CUDA_CHECK(cudaMemcpyAsync(u_d, u.data(), u.size() * sizeof(double), cudaMemcpyHostToDevice, cs));
            sample_rows(cs, next_d, logits_d, nl, V, sp.temperature, sp.top_k, sp.top_p, u_d,
                        reserve(s.sample_scratch, sample_scratch_bytes(nl, V)));
        } else {
            argmax_rows(cs, next_d, logits_d, nl, V);
        }
        opt.next->resize(size_t(nl));
        CUDA_CHECK(cudaMemcpyAsync(opt.next->data(), next_d, sizeof(int32_t) * size_t(nl), cudaMemcpyDeviceToHost, cs));
        CUDA_CHECK(cudaStreamSynchronize(cs));
        taps.drain();
        return {};
    }

    std::vector<float> logits(size_t(nl) * size_t(V));
    CUDA_CHECK(cudaMemcpyAsync(logits.data(), logits_d, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, cs));
    CUDA_CHECK(cudaStreamSynchronize(cs));
    taps.drain();  // the queued sites, in order, with the lengths advancing at their place among them

    // The logits are host memory already: their hook runs in place, as on the CPU.
    const SiteView lv{Site::Logits, -1, logits.data(), nl, V, lseq.data(), lpos.data()};
    if (hooks && hooks->steers(Site::Logits)) hooks->steering->apply(lv);
    if (hooks && hooks->wants(Site::Logits)) hooks->on_site(lv);
    if (check_finite) check_site_finite(lv);
    if (opt.next) {
        pick_tokens(logits.data(), nl, V, opt);
        return {};
    }
    return logits;
}

void ForwardCuda::copy_prefix(const KVCache& from, KVCache& to, int positions) {
    Impl& g = *impl_;
    if (!from.device) throw_error("", "internal: copy_prefix from a KV cache with no device storage");
    const KVDevice& src = *from.device;
    KVDevice& dst = kv_on_device(to, g.stream);
    const size_t bytes = size_t(positions) * size_t(src.kv_dim) * sizeof(float);
    for (int L = 0; L < from.n_layers; ++L) {
        CUDA_CHECK(cudaMemcpyAsync(dst.k_layer(L), src.k_layer(L), bytes, cudaMemcpyDeviceToDevice, g.stream));
        CUDA_CHECK(cudaMemcpyAsync(dst.v_layer(L), src.v_layer(L), bytes, cudaMemcpyDeviceToDevice, g.stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
}

// ---- device facts -----------------------------------------------------------------------------

std::string device_summary(int i) {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + "), " +
           gib(p.totalGlobalMem) + ", " + std::to_string(p.multiProcessorCount) + " SMs";
}

std::string runtime_summary() {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);  // 0 without a driver
    auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
    return "CUDA runtime " + version(runtime) + ", driver " + (driver ? version(driver) : std::string("none"));
}

void set_tap_staging_limit(size_t bytes) { g_tap_limit.store(std::max<size_t>(bytes, 1)); }

}  // namespace stitch::cuda

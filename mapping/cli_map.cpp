#include "mapping/cli_map.h"

#include <fmt/format.h>
#include <omp.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "engine/capture.h"
#include "engine/cli_args.h"
#include "engine/cli_util.h"
#include "engine/device.h"
#include "engine/error.h"
#include "engine/generate.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/prompts.h"
#include "engine/sites.h"
#include "engine/version.h"
#include "mapping/mapper.h"
#include "mapping/train.h"

namespace stitch {

const char kMapHelp[] =
    "usage: stitch map train (--source SRC.safetensors --target TGT.safetensors [--source-site S] [--target-site T]\n"
    "                        | --source-model M1 --source-site S --target-model M2 --target-site T --prompts FILE.jsonl)\n"
    "                        [--kind autoencoder|affine] [--hidden N] [--solver adamw|ridge] -o MAP.safetensors [options]\n"
    "       stitch map eval MAP --source SRC.safetensors --target TGT.safetensors [--json FILE]\n"
    "       stitch map apply MAP --source SRC.safetensors -o OUT.safetensors [--dtype f32|f16|bf16]\n"
    "\n"
    "  Learns a map from one model's activations at a site to another's (the paper's method):\n"
    "    autoencoder  y = W2·relu(W1·x + b1) + b2, hidden width floor(sqrt(d_src·d_tgt)) unless --hidden N\n"
    "    affine       y = W·x + b, by AdamW or in closed form (--solver ridge)\n"
    "  Loss: MSE over rows, averaged over rows and dims. Rows of two capture files (stitch capture) pair\n"
    "  by (prompt_index, position) when both files have those tensors, else by row order. A file\n"
    "  holding one activation tensor needs no --source-site/--target-site.\n"
    "\n"
    "train options:\n"
    "  --epochs N         passes over the training rows (default 3)\n"
    "  --lr LR            AdamW learning rate (default 1e-4)\n"
    "  --batch B          rows per micro-batch (default 16)\n"
    "  --accum K          micro-batches per optimizer step (default 4)\n"
    "  --weight-decay W   AdamW decoupled weight decay (default 0.01, torch's)\n"
    "  --val F            fraction of prompts (rows, without prompt_index) held out (default 0.1)\n"
    "  --seed S           initial weights, split and shuffling (default 0)\n"
    "  --patience N       stop after N epochs without a better val MSE and keep the best (default 0: off)\n"
    "  --ridge R          ridge penalty, relative to the mean source variance (default 1e-6)\n"
    "  --device D         auto (CUDA when present, else CPU; the default), cpu, or cuda: where the map\n"
    "                     trains and, streaming from models, where the two models run\n"
    "  --threads N        CPU threads (default: all cores)\n"
    "  --json FILE        also write a JSON summary (per-epoch metrics, rows/s, peak RSS)\n"
    "  Streaming from two models (nothing but the map is written):\n"
    "  --prompts FILE     JSONL prompts both models read ({\"prompt\": ...} per line)\n"
    "  --positions SEL    positions to pair: all (default), prompt, last, I, I:J, -K\n"
    "  --align index|last for prompts the two tokenizers split differently (otherwise an error):\n"
    "                     index pairs position i with i up to the shorter length (the paper's way),\n"
    "                     last pairs the last tokens only\n"
    "  --buffer-rows N    pairs held in memory and shuffled together (default 16384)\n"
    "  --prompt-batch N   prompts per forward pass (default 8)\n"
    "  --chat[=FORMAT], --system TEXT, --source-lora DIR, --target-lora DIR   as for capture\n"
    "\n"
    "  Per-epoch train/val MSE, cosine and FVU go to stderr. The map file is safetensors: W, b (affine)\n"
    "  or W1, b1, W2, b2 (autoencoder), [out, in] F32 like torch.nn.Linear, with __metadata__: format,\n"
    "  kind, d_src, d_tgt, hidden, source/target site, model and model_type, hyperparameters, final\n"
    "  metrics, stitch_version.\n"
    "\n"
    "eval: prints mse, cosine, fvu and rows over every paired row; --json FILE writes them as JSON.\n"
    "apply: writes the mapped rows as a tensor named by the map's target site, with the source's\n"
    "  token_ids/prompt_index/position. eval and apply refuse a map whose dims, site or model\n"
    "  (model_type, and model name unless --ignore-model) differ from the files'.\n";

namespace {

using json = nlohmann::json;

template <typename T>
std::string num(T v) { return fmt::format("{}", v); }  // shortest round-trip text of a float or double

json metrics_json(const MapMetrics& m) {
    return {{"mse", m.mse}, {"cosine", m.cosine}, {"fvu", m.fvu}, {"rows", m.rows}};
}

Model load_with_lora(const std::string& path, const std::optional<std::string>& lora) {
    return load_model_with_adapter(path, lora.value_or(""));
}

SiteRef one_site(const std::string& spec, const ModelConfig& c, const char* flag) {
    auto sites = parse_sites(spec, c);
    if (sites.size() != 1) fail(flag, "'{}' names {} sites; a map joins exactly one site of each model", spec, sites.size());
    return sites[0];
}

int cmd_map_train(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 3,
                         {"--source", "--target", "--source-site", "--target-site", "--source-model", "--target-model",
                          "--prompts", "--positions", "--align", "--buffer-rows", "--prompt-batch", "--system",
                          "--source-lora", "--target-lora", "--kind", "--hidden", "--solver", "--ridge", "--epochs",
                          "--lr", "--batch", "--accum", "--weight-decay", "--val", "--seed", "--patience", "--device",
                          "--threads", "-o", "--output", "--json"},
                         {"--chat", "--check-finite"});
    if (!a.positional.empty()) fail(a.positional[0], "unexpected argument (see `stitch help map`)");
    const std::string out = a.get_or("-o", a.get_or("--output", ""));
    if (out.empty()) fail("map train", "needs -o MAP.safetensors");
    const bool from_files = a.has("--source") || a.has("--target");
    const bool from_models = a.has("--source-model") || a.has("--target-model") || a.has("--prompts");
    if (from_files == from_models)
        fail("map train", "give either --source and --target capture files, or --source-model, --target-model and --prompts");
    if (from_files && !(a.has("--source") && a.has("--target"))) fail("map train", "needs both --source and --target");
    if (from_models && !(a.has("--source-model") && a.has("--target-model") && a.has("--prompts")))
        fail("map train", "streaming from models needs --source-model, --target-model and --prompts");
    if (from_models && !(a.has("--source-site") && a.has("--target-site")))
        fail("map train", "streaming from models needs --source-site and --target-site");
    apply_run_options(a, false);  // --device also places the models; the trainer's own note below says a fallback

    const MapKind kind = parse_map_kind(a.get_or("--kind", "autoencoder"));
    const std::string solver = a.get_or("--solver", "adamw");
    if (solver != "adamw" && solver != "ridge") fail("--solver", "'{}' is not adamw or ridge", solver);
    if (solver == "ridge" && kind != MapKind::Affine) fail("--solver", "ridge fits affine maps only (add --kind affine)");
    if (a.has("--hidden") && kind != MapKind::Autoencoder) fail("--hidden", "only an autoencoder has a hidden layer");
    TrainOptions opt;
    opt.epochs = a.get_int("--epochs", 3, 1, 1000000);
    opt.batch = a.get_int("--batch", 16, 1, 1 << 16);
    opt.accum = a.get_int("--accum", 4, 1, 1 << 16);
    if (int64_t(opt.batch) * opt.accum > (1 << 20)) fail("--accum", "batch x accum = {} rows per step is too many", int64_t(opt.batch) * opt.accum);
    opt.patience = a.get_int("--patience", 0, 0, 1000000);
    opt.adamw.lr = float(a.get_double("--lr", 1e-4, 1e-12, 10.0));
    opt.adamw.weight_decay = float(a.get_double("--weight-decay", 0.01, 0.0, 1e6));
    opt.device = parse_device(requested_device().value_or("auto"));  // --device, else STITCH_DEVICE
    const double val = a.get_double("--val", 0.1, 0.0, 0.9);
    const uint64_t seed = a.get_u64("--seed", 0);
    const double ridge = a.get_double("--ridge", 1e-6, 0.0, 1e6);
    if (opt.patience > 0 && val <= 0) fail("--patience", "early stopping needs held-out rows (--val > 0)");
    std::string note;
    if (solver == "adamw") opt.device = resolve_device(opt.device, &note);  // fails now if cuda was asked for and absent
    opt.log = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
    if (!note.empty()) opt.log("map train: " + note);

    std::map<std::string, std::string> meta;
    std::unique_ptr<ActivationFile> fs, ft;
    std::unique_ptr<Model> ms, mt;
    std::unique_ptr<PairSource> source;
    if (from_files) {
        fs = std::make_unique<ActivationFile>(*a.get("--source"), a.get_or("--source-site", ""), "--source-site");
        ft = std::make_unique<ActivationFile>(*a.get("--target"), a.get_or("--target-site", ""), "--target-site");
        source = std::make_unique<FilePairSource>(*fs, *ft, val, seed);
        meta["source_site"] = fs->site();
        meta["target_site"] = ft->site();
        meta["source_model"] = fs->model();
        meta["target_model"] = ft->model();
        meta["source_model_type"] = fs->model_type();
        meta["target_model_type"] = ft->model_type();
        for (auto [side, f] : {std::pair{"source", fs.get()}, std::pair{"target", ft.get()}})
            if (auto it = f->file().metadata().find("model_identity"); it != f->file().metadata().end())
                meta[std::string(side) + "_model_identity"] = it->second;  // content fingerprint (Model::identity)
        meta["source_file"] = fs->path();
        meta["target_file"] = ft->path();
        meta["pairing"] = fs->has_keys() && ft->has_keys() ? "prompt_index,position" : "row order";
    } else {
        StreamOptions so;
        so.positions = parse_positions(a.get_or("--positions", "all"));
        so.align = a.has("--align") ? parse_align(*a.get("--align")) : Align::None;
        so.buffer_rows = a.get_int("--buffer-rows", 16384, 1, 1 << 30);
        so.prompt_batch = a.get_int("--prompt-batch", 8, 1, 4096);
        so.val = val;
        so.seed = seed;
        so.warn = [](const std::string& s) { fmt::print(stderr, "map train: {}\n", s); };
        auto recs = read_prompts_jsonl(*a.get("--prompts"));
        ms = std::make_unique<Model>(load_with_lora(*a.get("--source-model"), a.get("--source-lora")));
        mt = std::make_unique<Model>(load_with_lora(*a.get("--target-model"), a.get("--target-lora")));
        const SiteRef ss = one_site(*a.get("--source-site"), ms->config, "--source-site");
        const SiteRef ts = one_site(*a.get("--target-site"), mt->config, "--target-site");
        ChatOptions chat;
        if (a.has("--chat")) {
            chat.chat_default = true;
            chat.format = parse_chat_format(a.get_or("--chat", "auto"));
        }
        if (a.has("--system")) chat.system = a.get_or("--system", "");
        auto ids_s = encode_records(*ms, recs, chat);
        auto ids_t = encode_records(*mt, recs, chat);
        auto mps = std::make_unique<ModelPairSource>(*ms, ss, std::move(ids_s), *mt, ts, std::move(ids_t), so);
        meta["source_site"] = ss.name();
        meta["target_site"] = ts.name();
        meta["source_model"] = model_identity(ms->path);
        meta["target_model"] = model_identity(mt->path);
        meta["source_model_type"] = ms->config.model_type;
        meta["target_model_type"] = mt->config.model_type;
        meta["source_model_identity"] = ms->identity;
        meta["target_model_identity"] = mt->identity;
        meta["source_model_path"] = ms->path;
        meta["target_model_path"] = mt->path;
        if (!ms->adapter.empty()) meta["source_adapter"] = ms->adapter;
        if (!mt->adapter.empty()) meta["target_adapter"] = mt->adapter;
        meta["prompts"] = *a.get("--prompts");
        meta["positions"] = so.positions.text;
        meta["align"] = so.align == Align::Index ? "index" : so.align == Align::Last ? "last" : "none";
        meta["prompts_tokenized_differently"] = std::to_string(mps->prompts_differing());
        meta["pairing"] = "streamed";
        source = std::move(mps);
    }
    const int ds = source->d_src(), dt = source->d_tgt();
    const int hidden = kind == MapKind::Autoencoder ? a.get_int("--hidden", default_hidden(ds, dt), 1, 1 << 20) : 0;
    Mapper m = make_mapper(kind, ds, dt, hidden, seed);
    opt.log(fmt::format("map train: {} {} -> {}{} ({} parameters), {} train rows, {} val rows, {} on {}", map_kind_name(kind),
                        ds, dt, hidden ? fmt::format(" (hidden {})", hidden) : std::string(), m.param_count(),
                        source->train_rows(), source->val_rows(), solver, solver == "ridge" ? "cpu" : opt.device == Device::Cuda ? "cuda" : "cpu"));
    TrainReport rep = solver == "ridge" ? fit_ridge(m, *source, ridge, opt) : train_adamw(m, *source, opt);

    meta["solver"] = solver;
    meta["seed"] = std::to_string(seed);
    meta["val"] = num(val);
    meta["train_rows"] = std::to_string(source->train_rows());
    meta["val_rows"] = std::to_string(source->val_rows());
    meta["device"] = rep.device;
    if (solver == "ridge") {
        meta["ridge"] = num(ridge);
    } else {
        meta["epochs"] = std::to_string(opt.epochs);
        meta["epochs_run"] = std::to_string(rep.epochs.size());
        meta["kept_epoch"] = std::to_string(rep.best_epoch);
        meta["patience"] = std::to_string(opt.patience);
        meta["lr"] = num(opt.adamw.lr);
        meta["batch"] = std::to_string(opt.batch);
        meta["accum"] = std::to_string(opt.accum);
        meta["weight_decay"] = num(opt.adamw.weight_decay);
        meta["betas"] = fmt::format("{},{}", opt.adamw.beta1, opt.adamw.beta2);
        meta["eps"] = num(opt.adamw.eps);
        meta["steps"] = std::to_string(rep.step_losses.size());
    }
    meta["train_mse"] = num(rep.train.mse);
    meta["train_cosine"] = num(rep.train.cosine);
    meta["train_fvu"] = num(rep.train.fvu);
    if (source->val_rows() > 0) {
        meta["val_mse"] = num(rep.val.mse);
        meta["val_cosine"] = num(rep.val.cosine);
        meta["val_fvu"] = num(rep.val.fvu);
    }
    for (auto it = meta.begin(); it != meta.end();) it = it->second.empty() ? meta.erase(it) : std::next(it);
    m.meta = meta;
    save_map(out, m);

    const double rows_per_s = rep.train_seconds > 0 ? double(rep.train_rows_seen) / rep.train_seconds : 0;
    opt.log(fmt::format("map train: {} rows in {:.2f}s ({:.0f} rows/s), peak RSS {:.0f} MB -> {}", rep.train_rows_seen,
                        rep.train_seconds, rows_per_s, peak_rss_mb(), out));
    if (auto jp = a.get("--json")) {
        json j = {{"map", out},
                  {"kind", map_kind_name(kind)},
                  {"solver", solver},
                  {"device", rep.device},
                  {"d_src", ds},
                  {"d_tgt", dt},
                  {"hidden", hidden},
                  {"threads", omp_get_max_threads()},
                  {"train_rows", source->train_rows()},
                  {"val_rows", source->val_rows()},
                  {"rows_trained", rep.train_rows_seen},
                  {"train_seconds", rep.train_seconds},
                  {"rows_per_s", rows_per_s},
                  {"peak_rss_mb", peak_rss_mb()},
                  {"kept_epoch", rep.best_epoch},
                  {"train", metrics_json(rep.train)},
                  {"val", metrics_json(rep.val)},
                  {"step_losses", rep.step_losses}};
        json epochs = json::array();
        for (const auto& e : rep.epochs)
            epochs.push_back({{"epoch", e.epoch}, {"seconds", e.seconds}, {"rows_per_s", e.rows_per_s},
                              {"train", metrics_json(e.train)}, {"val", metrics_json(e.val)}});
        j["epochs"] = epochs;
        write_file_atomic(*jp, j.dump(2) + "\n");
    }
    return 0;
}

// The map's recorded side as the file presents it.
MapSide side_of(const ActivationFile& f) { return {f.site(), f.model(), f.model_type(), f.dim()}; }

std::string meta_or(const Mapper& m, const std::string& k) {
    auto it = m.meta.find(k);
    return it == m.meta.end() ? std::string() : it->second;
}

int cmd_map_eval(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 3, {"--source", "--target", "--source-site", "--target-site", "--json", "--threads"},
                         {"--ignore-model"});
    if (a.positional.size() != 1) fail("map eval", "expects one MAP argument");
    if (!a.has("--source") || !a.has("--target")) fail("map eval", "needs --source and --target capture files");
    apply_run_options(a);
    const std::string map_path = a.positional[0];
    Mapper m = load_map(map_path);
    ActivationFile fs(*a.get("--source"), a.get_or("--source-site", ""), "--source-site", meta_or(m, "source_site"));
    ActivationFile ft(*a.get("--target"), a.get_or("--target-site", ""), "--target-site", meta_or(m, "target_site"));
    const MapSide ts = side_of(ft);
    check_map_fits(m, map_path, side_of(fs), &ts, !a.has("--ignore-model"));
    FilePairSource pairs(fs, ft, 0.0, 0);
    auto be = make_backend(Device::Cpu, m, 1024);
    MapMetrics r = evaluate(*be, m.d_src(), m.d_tgt(), [&](const RowSink& s) { pairs.all_pass(s); });
    fmt::print("mse {}\ncosine {}\nfvu {}\nrows {}\n", r.mse, r.cosine, r.fvu, r.rows);
    if (auto jp = a.get("--json")) {
        json j = metrics_json(r);
        j["map"] = map_path;
        j["source"] = fs.path();
        j["target"] = ft.path();
        j["source_site"] = fs.site();
        j["target_site"] = ft.site();
        write_file_atomic(*jp, j.dump(2) + "\n");
    }
    return 0;
}

int cmd_map_apply(int argc, char** argv) {
    Args a = Args::parse(argc, argv, 3, {"--source", "--source-site", "-o", "--output", "--dtype", "--threads"},
                         {"--ignore-model"});
    if (a.positional.size() != 1) fail("map apply", "expects one MAP argument");
    if (!a.has("--source")) fail("map apply", "needs --source SRC.safetensors");
    const std::string out = a.get_or("-o", a.get_or("--output", ""));
    if (out.empty()) fail("map apply", "needs -o OUT.safetensors");
    apply_run_options(a);
    const std::string dt_name = a.get_or("--dtype", "f32");
    DType dtype = DType::F32;
    if (dt_name == "f16") dtype = DType::F16;
    else if (dt_name == "bf16") dtype = DType::BF16;
    else if (dt_name != "f32") fail("--dtype", "'{}' is not f32, f16 or bf16", dt_name);
    const std::string map_path = a.positional[0];
    Mapper m = load_map(map_path);
    ActivationFile fs(*a.get("--source"), a.get_or("--source-site", ""), "--source-site", meta_or(m, "source_site"));
    check_map_fits(m, map_path, side_of(fs), nullptr, !a.has("--ignore-model"));

    std::map<std::string, std::string> meta = {{"mapped_by", map_path},
                                               {"mapped_from", fs.path()},
                                               {"source_site", fs.site()},
                                               {"dtype", dt_name},
                                               {"stitch_version", STITCH_VERSION}};
    if (auto s = meta_or(m, "target_model"); !s.empty()) meta["model"] = s;
    if (auto s = meta_or(m, "target_model_type"); !s.empty()) meta["model_type"] = s;
    std::string name = meta_or(m, "target_site");
    if (name.empty()) name = "mapped";
    meta["sites"] = name;
    StreamingSafetensorsWriter w(out, meta);
    const int t_out = w.add_tensor(name, dtype, m.d_tgt());
    const SafetensorsFile& f = fs.file();
    std::vector<std::pair<int, std::vector<int32_t>>> keep;
    for (const char* k : {"token_ids", "prompt_index", "position"}) {
        const TensorInfo* t = f.find(k);
        if (!t) continue;
        auto v = f.to_i32(*t);
        if (int64_t(v.size()) != fs.rows()) fail(fs.path(), "{} has {} entries; {} has {} rows", k, v.size(), fs.site(), fs.rows());
        keep.push_back({w.add_tensor(k, DType::I32, 0), std::move(v)});
    }
    constexpr int kChunk = 1024;
    const int ds = m.d_src();
    std::vector<float> x(size_t(kChunk) * ds), y(size_t(kChunk) * m.d_tgt());
    CpuMapCompute<float> c(m, kChunk, false);
    for (int64_t r0 = 0; r0 < fs.rows(); r0 += kChunk) {
        const int n = int(std::min<int64_t>(kChunk, fs.rows() - r0));
        for (int i = 0; i < n; ++i) fs.read_row(r0 + i, x.data() + int64_t(i) * ds);
        c.forward(x.data(), n);
        w.append_rows(t_out, c.pred(), n);
    }
    for (auto& [t, v] : keep) w.append_i32(t, v.data(), int64_t(v.size()));
    w.finish();
    fmt::print(stderr, "map apply: {} rows {} ({}) -> {} ({}) -> {}\n", fs.rows(), fs.site(), ds, name, m.d_tgt(), out);
    return 0;
}

}  // namespace

int cmd_map(int argc, char** argv) {
    const std::string sub = argc >= 3 ? argv[2] : "";
    if (sub == "train") return cmd_map_train(argc, argv);
    if (sub == "eval") return cmd_map_eval(argc, argv);
    if (sub == "apply") return cmd_map_apply(argc, argv);
    if (sub == "help" || sub == "--help" || sub == "-h") {
        std::cout << kMapHelp;
        return 0;
    }
    if (sub.empty()) fail("map", "needs a subcommand: train, eval, apply or help (see `stitch help map`)");
    fail(sub, "unknown map subcommand (train, eval, apply or help)");
}

}  // namespace stitch

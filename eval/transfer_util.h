// The experiment primitives `stitch transfer` is built from: batched greedy completions with
// steering and first-token distributions, substring rates, running a target model with one site
// replaced by mapped source activations (or a constant) in prefill and in lockstep decoding, and
// the vectors of the paper (paired trigger differences, last-token differences of means, mapped
// differences, random controls).
#pragma once
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/sites.h"
#include "engine/steer.h"
#include "mapping/mapper.h"
#include "mapping/train.h"

namespace stitch {

using IdLists = std::vector<std::vector<int32_t>>;

struct Completions {
    std::vector<std::string> text;           // decoded new tokens (EOS dropped)
    IdLists ids;                             // new tokens (EOS dropped)
    std::vector<std::vector<float>> first_logp;  // with want_first: log-probabilities of the first new token
};

// Greedy completions of every prompt, `batch` at a time, with progress on stderr. `steer` (may be
// null) is bound to these prompts here; `extra` hooks (may be null) run after it.
Completions complete(const Model& m, const IdLists& prompts, int max_new, Steering* steer, int batch,
                     const std::string& label, bool want_first = false, const Hooks* extra = nullptr);

// {"rate", "hits", "prompts"}: completions containing `phrase` (case-sensitive).
nlohmann::json contains_rate(const std::vector<std::string>& texts, const std::string& phrase);
// The same for "contains any of `subs`" (refusal scoring).
nlohmann::json any_rate(const std::vector<std::string>& texts, const std::vector<std::string>& subs);

// KL(P || Q) in nats from two log-probability rows.
double kl_logp(const std::vector<float>& p, const std::vector<float>& q);

double norm(const std::vector<float>& v);
double cosine_f(const std::vector<float>& a, const std::vector<float>& b);

// A target model run with `tsite` replaced at every position: by map(source's `ssite` row for the
// same token), or by a constant vector (mean ablation).
struct Transplant {
    const Model* src = nullptr;
    SiteRef ssite{Site::ResidPost, 0};
    const Mapper* map = nullptr;
    const Model* tgt = nullptr;
    SiteRef tsite{Site::ResidPost, 0};
    std::vector<float> constant;
    static Transplant mapped(const Model& src, SiteRef ss, const Mapper& m, const Model& tgt, SiteRef ts);
    static Transplant constant_at(const Model& tgt, SiteRef ts, std::vector<float> v);
};

// Greedy decoding of the target with the transplant active in prefill and at every new token (the
// source model runs the same tokens in lockstep, with its own KV caches). New tokens, EOS dropped.
IdLists transplant_generate(const Transplant& t, const IdLists& prompts, int max_new, int batch, const std::string& label);

// Next-token fidelity over texts: for each condition, Σ KL(clean ‖ condition) over every position
// and Σ NLL of the actual next token; the clean NLL too.
struct FidelityTotals {
    std::vector<double> kl, nll;  // per condition
    double nll_clean = 0;
    long tokens = 0;     // positions (KL)
    long predicted = 0;  // positions with a next token (NLL)
};
FidelityTotals fidelity_on_texts(const Model& tgt, const std::vector<Transplant>& conds, const IdLists& texts,
                                 const std::string& label, int batch = 4);

// Mean of every row of a capture file's activation tensor.
std::vector<float> mean_rows(const ActivationFile& f);

// Per text: the mean over its tokens of the model's final_norm output (the text encoded alone,
// without special tokens); zero for an empty text. A similarity embedding computed by the model itself.
std::vector<std::vector<double>> mean_embeddings(const Model& m, const std::vector<std::string>& texts);

// exp(mean NLL of the completion tokens given the prompt) under m, averaged over prompts with a
// non-empty completion (NaN when there are none).
double completion_perplexity(const Model& m, const IdLists& prompts, const IdLists& completions);

// From a capture of paired prompts (prompt 2i = positive i, 2i+1 = negative i; `ids` their tokens):
// mean over pairs of (mean of A(rows at the positions where the pair differs) for the positive −
// the same for the negative), with A the map when given, else the identity.
std::vector<float> paired_diff_vector(const ActivationFile& f, const IdLists& ids, const Mapper* map);

// From a capture whose first n_pos prompts are positives and the rest negatives: mean of A(last
// prompt row) over positives − over negatives.
std::vector<float> last_token_diff(const ActivationFile& f, const IdLists& ids, size_t n_pos, const Mapper* map);

// map(v) − map(0): a difference vector carried through the map (the bias cancels; for an affine
// map this is W·v).
std::vector<float> map_difference(const Mapper& m, const std::vector<float>& v);

// A Gaussian direction with |v|'s norm, from a seeded generator.
std::vector<float> random_like(const std::vector<float>& v, uint64_t seed);

// Writes each vector to DIR/PREFIX+NAME.safetensors as a `direction` tensor (the --steer format).
void save_vectors(const std::filesystem::path& dir, const std::string& prefix,
                  const std::map<std::string, std::vector<float>>& vecs, const SiteRef& site, const Model& m);

// Hooks that replace `site`'s rows by map(rows) (a map between two models with the same width,
// e.g. fine-tuned → base).
Hooks self_map_hooks(const Mapper& m, SiteRef site);

// The paper's layer rule: the last layer of the first run of strong layers (removal ≥ strong ·
// the best removal), i.e. the last strong layer before the sharp drop. `why` gets the reason in
// words. When no layer removes anything, the middle swept layer (and `why` says so).
int choose_layer(const std::vector<int>& layers, const std::vector<double>& removal, double strong, std::string* why);

}  // namespace stitch

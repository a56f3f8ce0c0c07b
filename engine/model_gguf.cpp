// Loading a model from one GGUF file: config from its metadata, weights dequantized to
// float32, tokenizer (and chat template) rebuilt from its embedded vocabulary.
#include <algorithm>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "models/gguf_model.h"

namespace stitch {

Model load_gguf_model(const std::filesystem::path& path) {
    GGUFFile f(path);
    Model m;
    m.path = path.string();
    m.config = gguf_model_config(f);
    // Cheap checks first: the vocabulary before any weight is dequantized.
    m.tokenizer = Tokenizer::from_gguf(f);
    check_tokenizer_fits(m.tokenizer, m.config, m.path);
    // Like llama.cpp, also stop at the end-of-turn tokens of chat vocabularies, which GGUF files
    // often leave out of their eos keys (HF lists them in generation_config.json).
    for (const char* marker : {"<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end_of_text|>"})
        if (auto id = m.tokenizer.token_id(marker); id && m.tokenizer.is_special(*id) &&
                                                    std::find(m.config.eos_ids.begin(), m.config.eos_ids.end(), *id) == m.config.eos_ids.end())
            m.config.eos_ids.push_back(*id);
    check_model_memory(m.path, m.config);  // before any weight is dequantized
    m.weights = gguf_model_weights(f, m.config);
    m.weight_dtypes = f.type_summary();
    m.inv_freq = gguf_layer_inv_freq(f, m.config);
    m.identity = combine_fingerprints({file_fingerprint(path)});
    return m;
}

}  // namespace stitch

#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <regex>

#include "engine/error.h"
#include "kernels/cpu/ops_cpu.h"

namespace stitch {

double sample_uniform(const SamplingParams& p, std::mt19937_64& rng) {
    return p.temperature > 0.0f ? double(rng() >> 11) * 0x1.0p-53 : 0.0;
}

int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, std::mt19937_64& rng) {
    return cpu::sample_row(logits, vocab, p.temperature, p.top_k, p.top_p, sample_uniform(p, rng));
}

std::vector<Generation> generate(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& opt) {
    const ModelConfig& c = m.config;
    const std::vector<int32_t>& eos = opt.eos_ids.empty() ? c.eos_ids : opt.eos_ids;
    std::vector<Generation> out(prompts.size());
    std::vector<KVCache> caches;
    caches.reserve(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
        if (prompts[i].empty()) fail("", "prompt {} is empty after tokenization", i);
        out[i].prompt_ids = prompts[i];
        caches.emplace_back(c, int(prompts[i].size()) + opt.max_new_tokens);
    }
    std::mt19937_64 rng(opt.sampling.seed);
    RunState st;
    ForwardOptions fo;
    fo.hooks = opt.hooks;
    std::vector<int32_t> picked;  // each active sequence's next token, picked where the model runs
    fo.next = &picked;
    fo.sampling = opt.sampling;
    fo.rng = &rng;
    // The shared prefix: run once (as prompt 0), then copied into every other prompt's cache.
    size_t shared = 0;
    if (opt.share_prefix && prompts.size() > 1) {
        shared = prompts[0].size() - 1;  // every prompt keeps at least one token of its own
        for (const auto& p : prompts) {
            size_t k = 0;
            while (k < shared && k + 1 < p.size() && p[k] == prompts[0][k]) ++k;
            shared = std::min(shared, k);
        }
        if (opt.hooks) shared = std::min(shared, size_t(std::max(0, opt.hooks_free_prefix)));
        if (shared < 4) shared = 0;
    }
    if (shared > 0) {
        SeqInput pre{&caches[0], std::span<const int32_t>(prompts[0].data(), shared), int32_t(opt.first_id)};
        ForwardOptions prefix = fo;
        prefix.next = nullptr;  // no token is wanted here (and no draw taken)
        forward(m, st, std::span<const SeqInput>(&pre, 1), prefix);
        for (size_t i = 1; i < prompts.size(); ++i) copy_prefix(m, caches[0], caches[i], int(shared));
    }
    std::vector<size_t> active(prompts.size());
    std::iota(active.begin(), active.end(), 0);
    std::vector<int32_t> next(prompts.size());
    auto t0 = std::chrono::steady_clock::now();
    int produced = 0;
    for (int step = 0; step < opt.max_new_tokens && !active.empty(); ++step) {
        std::vector<SeqInput> in;
        for (size_t i : active) {
            std::span<const int32_t> toks = step == 0 ? std::span<const int32_t>(prompts[i]).subspan(shared)
                                                      : std::span<const int32_t>(&next[i], 1);
            in.push_back(SeqInput{&caches[i], toks, int32_t(opt.first_id + int(i))});
        }
        forward(m, st, in, fo);
        std::vector<size_t> still;
        for (size_t a = 0; a < active.size(); ++a) {
            size_t i = active[a];
            const int32_t tok = picked[a];
            out[i].new_ids.push_back(tok);
            next[i] = tok;
            ++produced;
            if (opt.stop_at_eos && std::find(eos.begin(), eos.end(), tok) != eos.end())
                out[i].stopped_at_eos = true;
            else
                still.push_back(i);
        }
        active.swap(still);
        if (opt.on_progress)
            opt.on_progress(produced,
                            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return out;
}

std::optional<ChatFormat> parse_chat_format(const std::string& s) {
    if (s == "llama3") return ChatFormat::Llama3;
    if (s == "chatml") return ChatFormat::ChatML;
    if (s == "gemma") return ChatFormat::Gemma;
    if (s == "alpaca") return ChatFormat::Alpaca;
    if (s == "none") return ChatFormat::None;
    if (s == "auto" || s.empty()) return std::nullopt;
    fail("--chat", "unknown chat format '{}' (auto, llama3, chatml, gemma, alpaca, none)", s);
}

const char* chat_format_name(ChatFormat f) {
    switch (f) {
        case ChatFormat::None: return "none";
        case ChatFormat::Llama3: return "llama3";
        case ChatFormat::ChatML: return "chatml";
        case ChatFormat::Gemma: return "gemma";
        case ChatFormat::Alpaca: return "alpaca";
    }
    return "?";
}

ChatFormat detect_chat_format(const Tokenizer& t, const std::string& tmpl) {
    if (!tmpl.empty()) {
        if (tmpl.find("<start_of_turn>") != std::string::npos) return ChatFormat::Gemma;
        if (tmpl.find("<|start_header_id|>") != std::string::npos) return ChatFormat::Llama3;
        if (tmpl.find("<|im_start|>") != std::string::npos) return ChatFormat::ChatML;
        if (tmpl.find("### Instruction:") != std::string::npos) return ChatFormat::Alpaca;
    }
    if (t.token_id("<start_of_turn>")) return ChatFormat::Gemma;
    if (t.token_id("<|start_header_id|>")) return ChatFormat::Llama3;
    if (t.token_id("<|im_start|>")) return ChatFormat::ChatML;
    fail("", "cannot tell the chat format from the model (no chat template, no chat tokens); pass --chat=llama3|chatml|gemma|alpaca");
}

std::string format_chat(ChatFormat f, const std::string& user, const std::string& system) {
    switch (f) {
        case ChatFormat::None: return user;
        case ChatFormat::Llama3: {
            std::string s = "<|begin_of_text|>";
            if (!system.empty()) s += "<|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>";
            s += "<|start_header_id|>user<|end_header_id|>\n\n" + user + "<|eot_id|>";
            return s + "<|start_header_id|>assistant<|end_header_id|>\n\n";
        }
        case ChatFormat::ChatML: {
            std::string s;
            if (!system.empty()) s += "<|im_start|>system\n" + system + "<|im_end|>\n";
            s += "<|im_start|>user\n" + user + "<|im_end|>\n";
            return s + "<|im_start|>assistant\n";
        }
        case ChatFormat::Gemma:
            // Gemma has no system role: its template prepends the system text to the first user turn.
            return "<bos><start_of_turn>user\n" + (system.empty() ? user : system + "\n\n" + user) +
                   "<end_of_turn>\n<start_of_turn>model\n";
        case ChatFormat::Alpaca:
            return (system.empty() ? std::string("Below is an instruction that describes a task. Write a response that "
                                                 "appropriately completes the request.")
                                   : system) +
                   "\n\n### Instruction:\n" + user + "\n\n### Response:\n";
    }
    return user;
}

std::string read_chat_template(const std::filesystem::path& dir) {
    if (std::ifstream in(dir / "chat_template.jinja"); in) return std::string(std::istreambuf_iterator<char>(in), {});
    if (std::ifstream cfg(dir / "tokenizer_config.json"); cfg) {
        try {
            auto j = nlohmann::json::parse(cfg);
            if (j.contains("chat_template") && j["chat_template"].is_string()) return j["chat_template"];
        } catch (const nlohmann::json::exception&) {
            return "";  // the tokenizer loader reports a broken config itself
        }
    }
    return "";
}

std::string default_system_prompt(const std::string& tmpl, ChatFormat f) {
    if (f != ChatFormat::ChatML) return "";
    // A literal system turn inside one template string: '<|im_start|>system\n…<|im_end|>'.
    static const std::regex re(R"(<\|im_start\|>system\\n([^'"{}]+?)<\|im_end\|>)");
    std::smatch m;
    if (!std::regex_search(tmpl, m, re)) return "";
    std::string s = m[1].str(), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
            out += '\n';
            ++i;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::vector<int32_t> encode_prompt(const Model& m, const std::string& text, ChatFormat chat, const std::string& system) {
    // Plain text and Alpaca (no special tokens of its own) get the tokenizer's BOS; the other
    // templates write their BOS into the text.
    if (chat == ChatFormat::None || chat == ChatFormat::Alpaca) return m.tokenizer.encode(format_chat(chat, text, system), true);
    return m.tokenizer.encode(format_chat(chat, text, system), false);
}

}  // namespace stitch

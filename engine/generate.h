// Text generation: batched prefill + cached decode, greedy or sampled, EOS stopping,
// chat formatting.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/sampling.h"

namespace stitch {

struct GenerateOptions {
    int max_new_tokens = 32;
    SamplingParams sampling;
    bool stop_at_eos = true;
    std::vector<int32_t> eos_ids;  // empty: the model's
    const Hooks* hooks = nullptr;  // SiteView::seq is first_id + the prompt's index in this call
    int first_id = 0;
    // Prompts that begin with the same tokens run those once, and the other prompts copy the KV
    // cache (a position's keys and values depend only on the tokens up to it). With hooks, at most
    // the first `hooks_free_prefix` positions are shared: the caller promises its hooks neither
    // change nor need to see those positions in any prompt (0: nothing is shared when there are hooks).
    bool share_prefix = true;
    int hooks_free_prefix = 0;
    // Called after each decode step with (tokens generated so far across the batch, elapsed s).
    std::function<void(int, double)> on_progress;
};

struct Generation {
    std::vector<int32_t> prompt_ids;
    std::vector<int32_t> new_ids;  // EOS included when it stopped there
    bool stopped_at_eos = false;
};

// Generates for every prompt (token ids) together. Each sequence stops on its own.
std::vector<Generation> generate(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& opt);

// Chat formats: Llama 3, ChatML (Qwen), Gemma, and Alpaca (the instruction format the
// paper's backdoored models were fine-tuned with).
enum class ChatFormat { None, Llama3, ChatML, Gemma, Alpaca };
// "llama3", "chatml", "gemma", "alpaca", "none"; "auto" → nullopt. Throws for anything else.
std::optional<ChatFormat> parse_chat_format(const std::string& s);
const char* chat_format_name(ChatFormat f);
// "auto": from the model's chat template text when there is one (tokenizer_config.json,
// chat_template.jinja, or GGUF tokenizer.chat_template), else from the special tokens in
// the vocabulary. Throws when neither tells.
ChatFormat detect_chat_format(const Tokenizer& t, const std::string& chat_template = "");
// The chat template of an HF model folder (chat_template.jinja, else tokenizer_config.json's
// "chat_template"); "" when there is none.
std::string read_chat_template(const std::filesystem::path& model_dir);
// The prompt as the chat template renders one user turn plus the assistant header.
std::string format_chat(ChatFormat f, const std::string& user, const std::string& system = "");

// The system message a model's own chat template inserts when none is given (Qwen 2.5's
// "You are Qwen, created by Alibaba Cloud. …"); "" when there is none.
std::string default_system_prompt(const std::string& chat_template, ChatFormat f);

// Tokenizes a prompt the way the model expects: with the tokenizer's special tokens
// (BOS) for plain text; chat-formatted text already carries them.
std::vector<int32_t> encode_prompt(const Model& m, const std::string& text, ChatFormat chat, const std::string& system = "");

}  // namespace stitch

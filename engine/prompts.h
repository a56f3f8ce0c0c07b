// Prompt files: JSONL, one object per line with "prompt" (string), optional "id" and "chat".
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "engine/generate.h"

namespace stitch {

struct Model;

struct PromptRecord {
    std::string id;       // given "id" (string or number as text), else the line number
    std::string prompt;
    std::optional<bool> chat;  // per-prompt override of --chat
};

// Throws stitch::Error "FILE:LINE: what is wrong" for malformed lines; empty lines are skipped.
// `field` names the text field ("prompt"; "text" for plain-text corpora).
std::vector<PromptRecord> read_prompts_jsonl(const std::filesystem::path& path, const std::string& field = "prompt");

// How prompts are wrapped: --chat[=FORMAT] and --system as a command gives them.
struct ChatOptions {
    bool chat_default = false;            // --chat given: wrap every prompt unless its line says "chat": false
    std::optional<ChatFormat> format;     // nullopt or None: detect from the model (auto)
    std::optional<std::string> system;    // --system; nullopt: the model template's own default
};

// Prompts of a JSONL file as token ids, with each line's chat choice applied.
std::vector<std::vector<int32_t>> encode_records(const Model& m, const std::vector<PromptRecord>& recs,
                                                 const ChatOptions& chat);

}  // namespace stitch

// Prompt files: JSONL, one object per line with "prompt" (string), optional "id" and "chat".
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace stitch {

struct PromptRecord {
    std::string id;       // given "id" (string or number as text), else the line number
    std::string prompt;
    std::optional<bool> chat;  // per-prompt override of --chat
};

// Throws stitch::Error "FILE:LINE: what is wrong" for malformed lines; empty lines are skipped.
std::vector<PromptRecord> read_prompts_jsonl(const std::filesystem::path& path);

}  // namespace stitch

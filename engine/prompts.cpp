#include "engine/prompts.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/model.h"

namespace stitch {

std::vector<PromptRecord> read_prompts_jsonl(const std::filesystem::path& path, const std::string& field) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path.string(), "cannot open");
    std::vector<PromptRecord> out;
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        const std::string where = path.string() + ":" + std::to_string(lineno);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
            fail(where, "not valid JSON ({})", e.what());
        }
        if (!j.is_object()) fail(where, "expected a JSON object with a \"{}\" field", field);
        auto p = j.find(field);
        if (p == j.end() || !p->is_string()) fail(where, "missing string field \"{}\"", field);
        PromptRecord r;
        r.prompt = p->get<std::string>();
        if (auto id = j.find("id"); id != j.end()) {
            if (id->is_string()) r.id = id->get<std::string>();
            else if (id->is_number_integer()) r.id = std::to_string(id->get<int64_t>());
            else fail(where, "\"id\" must be a string or an integer");
        } else {
            r.id = std::to_string(out.size());
        }
        if (auto c = j.find("chat"); c != j.end()) {
            if (!c->is_boolean()) fail(where, "\"chat\" must be true or false");
            r.chat = c->get<bool>();
        }
        out.push_back(std::move(r));
    }
    if (out.empty()) fail(path.string(), "no prompts in file");
    return out;
}

std::vector<std::vector<int32_t>> encode_records(const Model& m, const std::vector<PromptRecord>& recs,
                                                 const ChatOptions& chat) {
    std::vector<std::vector<int32_t>> ids;
    // HF folders: chat_template.jinja or tokenizer_config.json; GGUF: tokenizer.chat_template.
    const std::string tmpl = std::filesystem::is_directory(m.path) ? read_chat_template(m.path)
                                                                   : m.tokenizer.chat_template.value_or("");
    for (const auto& r : recs) {
        bool use_chat = r.chat.value_or(chat.chat_default);
        ChatFormat f = ChatFormat::None;
        if (use_chat)
            f = chat.format && *chat.format != ChatFormat::None ? *chat.format : detect_chat_format(m.tokenizer, tmpl);
        // Like the model's own template: its default system message unless --system is given.
        const std::string system = chat.system ? *chat.system : default_system_prompt(tmpl, f);
        ids.push_back(encode_prompt(m, r.prompt, f, system));
    }
    return ids;
}

}  // namespace stitch

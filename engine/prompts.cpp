#include "engine/prompts.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace stitch {

std::vector<PromptRecord> read_prompts_jsonl(const std::filesystem::path& path) {
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
        if (!j.is_object()) fail(where, "expected a JSON object with a \"prompt\" field");
        auto p = j.find("prompt");
        if (p == j.end() || !p->is_string()) fail(where, "missing string field \"prompt\"");
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

}  // namespace stitch

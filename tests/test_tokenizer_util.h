// Shared by the tokenizer tests (test_tokenizer*.cpp): fixture paths, the corpus, and the check of a
// tokenizer against the HF reference file <name>.ids.jsonl (tools/make_tokenizer_fixtures.py).
#pragma once
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

#ifndef STITCH_SOURCE_DIR
#error "STITCH_SOURCE_DIR must be defined (the repository root, as a string literal)"
#endif

namespace tokt {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline const fs::path kRoot{STITCH_SOURCE_DIR};
inline const fs::path kFixtures = kRoot / "tests" / "fixtures" / "tokenizers";
inline const fs::path kBuilt = fs::path(STITCH_BUILD_DIR) / "tokenizers";

inline std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    REQUIRE_MESSAGE(f.good(), "cannot read " << p.string());
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

inline std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start < text.size()) {
        size_t nl = text.find('\n', start);
        if (nl == std::string::npos) nl = text.size();
        if (nl > start) out.push_back(text.substr(start, nl - start));
        start = nl + 1;
    }
    return out;
}

struct CorpusItem {
    std::string text;  // raw bytes fed to encode (ill-formed UTF-8 for the "hex" items)
    bool valid = true;
};

inline const std::vector<CorpusItem>& corpus() {
    static const std::vector<CorpusItem> items = [] {
        std::vector<CorpusItem> v;
        for (const auto& line : lines_of(slurp(kFixtures / "corpus.jsonl"))) {
            json j = json::parse(line);
            if (j.is_string()) {
                v.push_back({j.get<std::string>(), true});
            } else {
                std::string hex = j.at("hex").get<std::string>(), bytes;
                for (size_t i = 0; i + 1 < hex.size(); i += 2)
                    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
                v.push_back({bytes, false});
            }
        }
        return v;
    }();
    return items;
}

// A tokenizer that `make tokenizers` puts under <build>/tokenizers/<name>/.
inline fs::path built_dir(const std::string& name) {
    fs::path dir = kBuilt / name;
    if (!fs::exists(dir / "tokenizer.json"))
        FAIL(dir.string() << "/tokenizer.json is missing: run `make tokenizers` first");
    return dir;
}

inline std::string show(const std::vector<int32_t>& v) { return fmt::format("[{}]", fmt::join(v, ",")); }

struct CheckOptions {
    // Expect SentencePiece's ids (the ids_spm / ids_special_spm fields) where they differ from HF fast.
    bool spm_ids = false;
};

// Every corpus item against the HF reference file <ref>.ids.jsonl; `label` names the run.
inline void check_against_hf(const stitch::Tokenizer& tk, const std::string& ref, const std::string& label,
                             CheckOptions opt = {}) {
    auto lines = lines_of(slurp(kFixtures / (ref + ".ids.jsonl")));
    REQUIRE(lines.size() >= 2);
    json header = json::parse(lines[0]);
    const auto& items = corpus();
    REQUIRE_MESSAGE(header.at("items").get<size_t>() == items.size(),
                    ref << ".ids.jsonl is stale (corpus changed): rerun tools/make_tokenizer_fixtures.py --ids-only");
    REQUIRE(lines.size() == items.size() + 1);
    int ids_ok = 0, ids_special_ok = 0, dec_ok = 0, rt_checked = 0, failures = 0, spm_items = 0;
    auto report = [&](size_t i, const std::string& what, const std::string& detail) {
        if (++failures <= 8) MESSAGE(label << " item " << i << " " << what << ": " << detail);
    };
    for (size_t i = 0; i < items.size(); ++i) {
        json rec = json::parse(lines[i + 1]);
        const CorpusItem& item = items[i];
        auto want_ids = rec.at("ids").get<std::vector<int32_t>>();
        auto want_sp = rec.contains("ids_special") ? rec["ids_special"].get<std::vector<int32_t>>() : want_ids;
        auto hf_ids = want_ids, hf_sp = want_sp;
        if (opt.spm_ids) {
            if (rec.contains("ids_spm") || rec.contains("ids_special_spm")) ++spm_items;
            if (rec.contains("ids_spm")) want_ids = rec["ids_spm"].get<std::vector<int32_t>>();
            if (rec.contains("ids_special_spm")) want_sp = rec["ids_special_spm"].get<std::vector<int32_t>>();
        }
        auto got = tk.encode(item.text, false);
        auto got_sp = tk.encode(item.text, true);
        if (got == want_ids) ++ids_ok;
        else report(i, "ids", "got " + show(got) + " want " + show(want_ids));
        if (got_sp == want_sp) ++ids_special_ok;
        else report(i, "ids (add_special)", "got " + show(got_sp) + " want " + show(want_sp));

        // Decodes of HF's own ids.
        std::string want_dec = rec.contains("dec") ? rec["dec"].get<std::string>() : item.text;
        std::string want_dec_sp = rec.contains("dec_special") ? rec["dec_special"].get<std::string>() : want_dec;
        std::string want_skip = rec.contains("dec_skip") ? rec["dec_skip"].get<std::string>() : want_dec_sp;
        bool d1 = tk.decode(hf_ids) == want_dec;
        bool d2 = tk.decode(hf_sp) == want_dec_sp;
        bool d3 = tk.decode(hf_sp, true) == want_skip;
        bool d4 = true, d5 = true;
        if (rec.contains("dec_half")) {
            std::vector<int32_t> half(hf_ids.begin(), hf_ids.begin() + static_cast<long>(hf_ids.size() / 2));
            d4 = tk.decode(half) == rec["dec_half"].get<std::string>();
        }
        if (rec.contains("pieces")) {
            auto pieces = rec["pieces"].get<std::vector<std::string>>();
            for (size_t k = 0; k < pieces.size() && k < hf_ids.size(); ++k)
                d5 = d5 && tk.decode(std::vector<int32_t>{hf_ids[k]}) == pieces[k];
        }
        if (d1 && d2 && d3 && d4 && d5) ++dec_ok;
        else report(i, "decode", fmt::format("plain {} special {} skip {} half {} pieces {}", d1, d2, d3, d4, d5));
        // rt: HF's decode(encode(x)) == x; where SentencePiece's ids differ from HF's, that says nothing.
        bool spm_differs = opt.spm_ids && (want_ids != hf_ids);
        if (rec.at("rt").get<bool>() && !spm_differs) {
            ++rt_checked;
            if (tk.decode(got) != item.text) report(i, "round trip", "decode(encode(x)) != x");
        }
    }
    MESSAGE(fmt::format("{}: {} corpus items, ids identical to {}: {} (add_special=false), {} (add_special=true); "
                        "decodes identical: {}; round trips checked: {}{}",
                        label, items.size(), opt.spm_ids ? "SentencePiece (HF slow)" : "HF", ids_ok, ids_special_ok,
                        dec_ok, rt_checked,
                        opt.spm_ids ? fmt::format("; items where SentencePiece differs from HF fast: {}", spm_items)
                                    : std::string()));
    CHECK(failures == 0);
    CHECK(ids_ok == static_cast<int>(items.size()));
    CHECK(ids_special_ok == static_cast<int>(items.size()));
    CHECK(dec_ok == static_cast<int>(items.size()));
}

}  // namespace tokt

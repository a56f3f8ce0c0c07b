// The BPE model of HF `tokenizers` (models/bpe): vocab, ranked merges, and the merge loop over
// one pre-token. Internal to engine/tokenizer/.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace stitch::tok {

struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct Bpe {
    StringMap<int32_t> vocab;
    // id -> token text, viewing the vocab's keys (stable: unordered_map nodes never move);
    // a view with data() == nullptr marks an id that has no token.
    std::vector<std::string_view> id_to_token;
    const std::string_view* token_of(int32_t id) const {
        if (id < 0 || static_cast<size_t>(id) >= id_to_token.size() || !id_to_token[static_cast<size_t>(id)].data())
            return nullptr;
        return &id_to_token[static_cast<size_t>(id)];
    }
    // (left id, right id) -> (rank, merged id): open addressing, linear probing, power-of-two size.
    struct MergeTable {
        struct Slot {
            uint64_t key = kEmpty;
            int32_t rank = 0, new_id = 0;
        };
        static constexpr uint64_t kEmpty = ~uint64_t{0};
        std::vector<Slot> slots;
        size_t mask = 0, count = 0;
        void reserve(size_t n);
        void put(uint64_t key, int32_t rank, int32_t new_id);  // overwrites an existing key
        const Slot* get(uint64_t key) const {
            if (slots.empty()) return nullptr;
            for (size_t i = slot_of(key);; i = (i + 1) & mask) {
                const Slot& s = slots[i];
                if (s.key == key) return &s;
                if (s.key == kEmpty) return nullptr;
            }
        }
        size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask; }
    } merges;
    // id of each single code point below 0x800 as a whole token (-1: none); speeds up the
    // first step of merge_word when there is no continuing_subword_prefix / end_of_word_suffix.
    std::vector<int32_t> small_char_id;
    void index_small_chars();
    std::optional<std::string> unk_token;
    std::string continuing_subword_prefix, end_of_word_suffix;
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

    static uint64_t pair_key(int32_t a, int32_t b) {  // ids are < 2^24, so never kEmpty
        return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    }
    std::optional<int32_t> find(std::string_view s) const {
        auto it = vocab.find(s);
        if (it == vocab.end()) return std::nullopt;
        return it->second;
    }

    // Ids of one pre-token (HF BPE::tokenize without dropout). Appends to out.
    void tokenize(std::string_view word, std::vector<int32_t>& out) const;

    // Bounded word cache: pre-token -> ids, shared by all threads (mutex-protected).
    struct Cache {
        std::mutex mu;
        StringMap<std::vector<int32_t>> map;
    };
    std::unique_ptr<Cache> cache = std::make_unique<Cache>();
    static constexpr size_t kCacheMaxEntries = 100000;
    static constexpr size_t kCacheMaxWordBytes = 256;

private:
    void merge_word(std::string_view word, std::vector<int32_t>& out) const;
};

}  // namespace stitch::tok

#include "engine/tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <queue>

#include "engine/tokenizer/text.h"

namespace stitch::tok {

void Bpe::MergeTable::reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    slots.assign(cap, Slot{});
    mask = cap - 1;
    count = 0;
}

void Bpe::MergeTable::put(uint64_t key, int32_t rank, int32_t new_id) {
    if (2 * (count + 1) > slots.size()) {  // keep the load factor at or below 1/2
        std::vector<Slot> old;
        old.swap(slots);
        reserve(std::max<size_t>(count + 1, old.size()));
        for (const Slot& s : old)
            if (s.key != kEmpty) put(s.key, s.rank, s.new_id);
    }
    for (size_t i = slot_of(key);; i = (i + 1) & mask) {
        Slot& s = slots[i];
        if (s.key == key) {
            s.rank = rank;
            s.new_id = new_id;
            return;
        }
        if (s.key == kEmpty) {
            s = {key, rank, new_id};
            ++count;
            return;
        }
    }
}

void Bpe::index_small_chars() {
    small_char_id.clear();
    if (!continuing_subword_prefix.empty() || !end_of_word_suffix.empty()) return;
    small_char_id.assign(0x800, -1);
    for (const auto& [tok, id] : vocab) {
        if (tok.empty() || tok.size() > 2) continue;
        size_t i = 0;
        char32_t c = next_cp(tok, i);
        if (i == tok.size() && c < 0x800) small_char_id[c] = id;
    }
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
        // Llama 3: a pre-token that is itself in the vocabulary is taken whole, merges or not.
        if (auto id = find(word)) {
            out.push_back(*id);
            return;
        }
    }
    const bool cacheable = word.size() < kCacheMaxWordBytes;
    if (cacheable) {
        std::lock_guard lock(cache->mu);
        auto it = cache->map.find(word);
        if (it != cache->map.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    size_t first = out.size();
    merge_word(word, out);
    if (cacheable) {
        std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
        std::lock_guard lock(cache->mu);
        if (cache->map.size() >= kCacheMaxEntries) cache->map.clear();
        cache->map.emplace(std::string(word), std::move(ids));
    }
}

void Bpe::merge_word(std::string_view w, std::vector<int32_t>& out) const {
    // Symbols form a doubly linked list over a vector; merged-away symbols get len 0.
    struct Symbol {
        int32_t id;
        int32_t prev, next;
        uint32_t len;
    };
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    int32_t unk_id = -1;  // pending unknown token (id, byte length); -1 = none
    uint32_t unk_len = 0;
    auto add = [&](int32_t id, uint32_t len) {
        int32_t idx = static_cast<int32_t>(sym.size());
        sym.push_back({id, idx - 1, -1, len});
        if (idx > 0) sym[static_cast<size_t>(idx) - 1].next = idx;
    };
    std::string buf;
    size_t i = 0;
    while (i < w.size()) {
        size_t n = cp_len(static_cast<unsigned char>(w[i]));
        std::string_view ch = w.substr(i, n);
        bool is_first = i == 0, is_last = i + n >= w.size();
        std::string_view key = ch;
        if (n <= 2 && !small_char_id.empty()) {  // fast path for 1- and 2-byte characters
            size_t k = 0;
            if (int32_t id = small_char_id[next_cp(ch, k)]; id >= 0) {
                i += n;
                if (unk_id >= 0) {
                    add(unk_id, unk_len);
                    unk_id = -1;
                }
                add(id, static_cast<uint32_t>(n));
                continue;
            }
            // not a token by itself: the general path below handles byte fallback and unk
        }
        if ((!is_first && !continuing_subword_prefix.empty()) || (is_last && !end_of_word_suffix.empty())) {
            buf.clear();
            if (!is_first) buf += continuing_subword_prefix;
            buf += ch;
            if (is_last) buf += end_of_word_suffix;
            key = buf;
        }
        i += n;
        if (auto id = find(key)) {
            if (unk_id >= 0) {
                add(unk_id, unk_len);
                unk_id = -1;
            }
            add(*id, static_cast<uint32_t>(n));
            continue;
        }
        if (byte_fallback) {
            std::vector<int32_t> bytes;
            for (unsigned char b : key) {
                auto id = find(fmt::format("<0x{:02X}>", b));
                if (!id) break;
                bytes.push_back(*id);
            }
            if (bytes.size() == key.size()) {
                for (int32_t id : bytes) add(id, 1);
                continue;
            }
        }
        if (unk_token) {
            auto uid = find(*unk_token);
            if (!uid) throw std::runtime_error("unk_token '" + *unk_token + "' is not in the vocabulary");
            if (unk_id >= 0 && fuse_unk) {
                unk_len += static_cast<uint32_t>(n);
            } else {
                if (unk_id >= 0) add(unk_id, unk_len);
                unk_id = *uid;
                unk_len = static_cast<uint32_t>(n);
            }
        }
        // Without an unk_token, HF silently drops the character.
    }
    if (unk_id >= 0) add(unk_id, unk_len);

    struct Merge {
        int32_t pos, rank, new_id;
        bool operator<(const Merge& o) const {  // min-heap on (rank, pos)
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };
    std::priority_queue<Merge> queue;
    auto lookup = [&](int32_t a, int32_t b) { return merges.get(pair_key(a, b)); };
    for (size_t k = 0; k + 1 < sym.size(); ++k)
        if (auto m = lookup(sym[k].id, sym[k + 1].id))
            queue.push({static_cast<int32_t>(k), m->rank, m->new_id});

    while (!queue.empty()) {
        Merge top = queue.top();
        queue.pop();
        Symbol& cur = sym[static_cast<size_t>(top.pos)];
        if (cur.len == 0 || cur.next == -1) continue;
        Symbol right = sym[static_cast<size_t>(cur.next)];
        auto m = lookup(cur.id, right.id);
        if (!m || m->new_id != top.new_id) continue;  // stale entry
        int32_t next_pos = cur.next;
        cur.id = top.new_id;
        cur.len += right.len;
        cur.next = right.next;
        sym[static_cast<size_t>(next_pos)].len = 0;
        if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = top.pos;
        if (cur.prev >= 0)
            if (auto pm = lookup(sym[static_cast<size_t>(cur.prev)].id, cur.id))
                queue.push({cur.prev, pm->rank, pm->new_id});
        if (cur.next >= 0)
            if (auto nm = lookup(cur.id, sym[static_cast<size_t>(cur.next)].id))
                queue.push({top.pos, nm->rank, nm->new_id});
    }
    for (const Symbol& s : sym)
        if (s.len != 0) out.push_back(s.id);
}

}  // namespace stitch::tok

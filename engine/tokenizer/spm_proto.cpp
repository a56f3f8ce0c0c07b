#include "engine/tokenizer/spm_proto.h"

#include <cstring>
#include <stdexcept>

namespace stitch::tok {

namespace {

// One field of a protobuf message: number, wire type, and its payload (varint value, fixed
// bits, or the bytes of a length-delimited field).
struct Field {
    uint32_t number = 0;
    uint32_t wire = 0;
    uint64_t value = 0;       // varint / fixed32 / fixed64
    std::string_view bytes;   // length-delimited payload
    std::string_view raw;     // the whole field (tag included), for copying it unchanged
};

class Reader {
public:
    explicit Reader(std::string_view s) : s_(s) {}
    bool done() const { return pos_ >= s_.size(); }

    Field next() {
        Field f;
        size_t start = pos_;
        uint64_t tag = varint();
        if (tag >> 32) throw std::runtime_error("field tag out of range");
        f.number = static_cast<uint32_t>(tag >> 3);
        f.wire = static_cast<uint32_t>(tag & 7);
        if (f.number == 0) throw std::runtime_error("field number 0");
        switch (f.wire) {
            case 0: f.value = varint(); break;
            case 1: f.value = fixed(8); break;
            case 5: f.value = fixed(4); break;
            case 2: {
                uint64_t len = varint();
                if (len > s_.size() - pos_) throw std::runtime_error("length-delimited field runs past the end");
                f.bytes = s_.substr(pos_, static_cast<size_t>(len));
                pos_ += static_cast<size_t>(len);
                break;
            }
            default: throw std::runtime_error("unsupported wire type " + std::to_string(f.wire));
        }
        f.raw = s_.substr(start, pos_ - start);
        return f;
    }

private:
    uint64_t varint() {
        uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos_ >= s_.size()) throw std::runtime_error("truncated varint");
            auto b = static_cast<unsigned char>(s_[pos_++]);
            v |= uint64_t(b & 0x7F) << shift;
            if (!(b & 0x80)) return v;
        }
        throw std::runtime_error("varint longer than 10 bytes");
    }
    uint64_t fixed(size_t n) {
        if (n > s_.size() - pos_) throw std::runtime_error("truncated fixed-width field");
        uint64_t v = 0;
        for (size_t i = 0; i < n; ++i) v |= uint64_t(static_cast<unsigned char>(s_[pos_ + i])) << (8 * i);
        pos_ += n;
        return v;
    }
    std::string_view s_;
    size_t pos_ = 0;
};

void expect_wire(const Field& f, uint32_t wire, const char* what) {
    if (f.wire != wire) throw std::runtime_error(std::string(what) + ": unexpected wire type");
}

int32_t as_int32(const Field& f, const char* what) {
    expect_wire(f, 0, what);
    return static_cast<int32_t>(static_cast<uint32_t>(f.value));  // int32 negatives are 10-byte varints
}

bool as_bool(const Field& f, const char* what) {
    expect_wire(f, 0, what);
    return f.value != 0;
}

std::string as_string(const Field& f, const char* what) {
    expect_wire(f, 2, what);
    return std::string(f.bytes);
}

// --- writer ---
void put_varint(std::string& out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7F) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, uint32_t number, uint32_t wire) { put_varint(out, (uint64_t(number) << 3) | wire); }
void put_int(std::string& out, uint32_t number, int64_t v) {
    put_tag(out, number, 0);
    put_varint(out, static_cast<uint64_t>(v));  // negative int32: sign-extended, as protobuf does
}
void put_bool(std::string& out, uint32_t number, bool v) { put_int(out, number, v ? 1 : 0); }
void put_bytes(std::string& out, uint32_t number, std::string_view b) {
    put_tag(out, number, 2);
    put_varint(out, b.size());
    out.append(b);
}
void put_float(std::string& out, uint32_t number, float f) {
    put_tag(out, number, 5);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

}  // namespace

const char* spm_model_type_name(int32_t t) {
    switch (t) {
        case 1: return "Unigram";
        case 2: return "BPE";
        case 3: return "Word";
        case 4: return "Char";
        default: return "unknown";
    }
}

SpmModelProto parse_spm_model(std::string_view bytes) {
    SpmModelProto m;
    Reader top(bytes);
    while (!top.done()) {
        Field f = top.next();
        if (f.number == 1) {  // pieces
            expect_wire(f, 2, "pieces");
            SpmPiece p;
            Reader r(f.bytes);
            while (!r.done()) {
                Field g = r.next();
                if (g.number == 1) p.piece = as_string(g, "piece");
                else if (g.number == 2) {
                    expect_wire(g, 5, "score");
                    auto bits = static_cast<uint32_t>(g.value);
                    std::memcpy(&p.score, &bits, 4);
                } else if (g.number == 3) {
                    int32_t t = as_int32(g, "type");
                    if (t < 1 || t > 6) throw std::runtime_error("piece type " + std::to_string(t) + " is unknown");
                    p.type = static_cast<SpmPieceType>(t);
                }
            }
            m.pieces.push_back(std::move(p));
        } else if (f.number == 2) {  // trainer_spec
            expect_wire(f, 2, "trainer_spec");
            Reader r(f.bytes);
            while (!r.done()) {
                Field g = r.next();
                switch (g.number) {
                    case 3: m.model_type = as_int32(g, "model_type"); break;
                    case 24: m.treat_whitespace_as_suffix = as_bool(g, "treat_whitespace_as_suffix"); break;
                    case 35: m.byte_fallback = as_bool(g, "byte_fallback"); break;
                    case 40: m.unk_id = as_int32(g, "unk_id"); break;
                    case 41: m.bos_id = as_int32(g, "bos_id"); break;
                    case 42: m.eos_id = as_int32(g, "eos_id"); break;
                    case 43: m.pad_id = as_int32(g, "pad_id"); break;
                    case 45: m.unk_piece = as_string(g, "unk_piece"); break;
                    case 46: m.bos_piece = as_string(g, "bos_piece"); break;
                    case 47: m.eos_piece = as_string(g, "eos_piece"); break;
                    case 48: m.pad_piece = as_string(g, "pad_piece"); break;
                    default: break;
                }
            }
        } else if (f.number == 3) {  // normalizer_spec
            expect_wire(f, 2, "normalizer_spec");
            Reader r(f.bytes);
            while (!r.done()) {
                Field g = r.next();
                switch (g.number) {
                    case 1: m.normalizer_name = as_string(g, "name"); break;
                    case 2: m.has_charsmap = !as_string(g, "precompiled_charsmap").empty(); break;
                    case 3: m.add_dummy_prefix = as_bool(g, "add_dummy_prefix"); break;
                    case 4: m.remove_extra_whitespaces = as_bool(g, "remove_extra_whitespaces"); break;
                    case 5: m.escape_whitespaces = as_bool(g, "escape_whitespaces"); break;
                    default: break;
                }
            }
        } else if (f.number == 5) {
            m.has_denormalizer = true;
        }
    }
    return m;
}

std::string serialize_spm_model(const SpmModelProto& m) {
    std::string out;
    out.reserve(m.pieces.size() * 24);
    std::string buf;
    for (const SpmPiece& p : m.pieces) {
        buf.clear();
        put_bytes(buf, 1, p.piece);
        put_float(buf, 2, p.score);
        put_int(buf, 3, static_cast<int32_t>(p.type));
        put_bytes(out, 1, buf);
    }
    buf.clear();
    put_int(buf, 3, m.model_type);
    put_int(buf, 4, static_cast<int64_t>(m.pieces.size()));
    put_bool(buf, 24, m.treat_whitespace_as_suffix);
    put_bool(buf, 35, m.byte_fallback);
    put_int(buf, 40, m.unk_id);
    put_int(buf, 41, m.bos_id);
    put_int(buf, 42, m.eos_id);
    put_int(buf, 43, m.pad_id);
    put_bytes(buf, 45, m.unk_piece);
    put_bytes(buf, 46, m.bos_piece);
    put_bytes(buf, 47, m.eos_piece);
    put_bytes(buf, 48, m.pad_piece);
    put_bytes(out, 2, buf);
    buf.clear();
    put_bytes(buf, 1, m.normalizer_name.empty() ? std::string_view("identity") : std::string_view(m.normalizer_name));
    put_bool(buf, 3, m.add_dummy_prefix);
    put_bool(buf, 4, m.remove_extra_whitespaces);
    put_bool(buf, 5, m.escape_whitespaces);
    put_bytes(out, 3, buf);
    return out;
}

}  // namespace stitch::tok

// ggml block decoders. Layouts (byte offsets inside one block) are written next to each
// function; a "sub-block" shares one scale. Every scale product is formed first in float and
// then multiplied by the integer quant, as ggml's reference code and gguf-py do, so the
// results are bit-identical to theirs (GCC does not contract a*b - c into an FMA under
// -std=c++20, which the Makefile uses).
#include "kernels/cpu/dequant.h"

#include <algorithm>
#include <cstring>

#include "engine/dtype.h"
#include "engine/error.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace stitch {

bool ggml_type_dequantizable(GGMLType t) {
    switch (t) {
        case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16: case GGMLType::F64:
        case GGMLType::I8: case GGMLType::I16: case GGMLType::I32: case GGMLType::I64:
        case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0:
        case GGMLType::Q2_K: case GGMLType::Q3_K: case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K:
        case GGMLType::Q8_K: case GGMLType::IQ4_NL: case GGMLType::IQ4_XS:
            return true;
        default: return false;
    }
}

namespace cpu {
namespace {

constexpr int QK = 32;    // elements per block of the legacy formats
constexpr int QK_K = 256;  // elements per super-block of the K formats

inline float load_half(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
}

// IQ4_NL / IQ4_XS: 4-bit indices into this non-uniform table.
constexpr int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Q4_0 (18 bytes): d f16 @0, qs[16] @2. Element j < 16 is the low nibble of qs[j], j + 16 the high.
void block_q4_0(const uint8_t* b, float* y) {
    const float d = load_half(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < QK / 2; ++j) {
        y[j] = d * float(int(qs[j] & 0x0F) - 8);
        y[j + QK / 2] = d * float(int(qs[j] >> 4) - 8);
    }
}

// Q4_1 (20 bytes): d f16 @0, m f16 @2, qs[16] @4. y = d*q + m.
void block_q4_1(const uint8_t* b, float* y) {
    const float d = load_half(b), m = load_half(b + 2);
    const uint8_t* qs = b + 4;
    for (int j = 0; j < QK / 2; ++j) {
        y[j] = d * float(qs[j] & 0x0F) + m;
        y[j + QK / 2] = d * float(qs[j] >> 4) + m;
    }
}

// Q5_0 (22 bytes): d f16 @0, qh u32 @2 (bit i = 5th bit of element i), qs[16] @6.
void block_q5_0(const uint8_t* b, float* y) {
    const float d = load_half(b);
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < QK / 2; ++j) {
        const int hi0 = int((qh >> j) & 1u) << 4, hi1 = int((qh >> (j + 16)) & 1u) << 4;
        y[j] = d * float((int(qs[j] & 0x0F) | hi0) - 16);
        y[j + QK / 2] = d * float((int(qs[j] >> 4) | hi1) - 16);
    }
}

// Q5_1 (24 bytes): d f16 @0, m f16 @2, qh u32 @4, qs[16] @8. y = d*q + m.
void block_q5_1(const uint8_t* b, float* y) {
    const float d = load_half(b), m = load_half(b + 2);
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < QK / 2; ++j) {
        const int hi0 = int((qh >> j) & 1u) << 4, hi1 = int((qh >> (j + 16)) & 1u) << 4;
        y[j] = d * float(int(qs[j] & 0x0F) | hi0) + m;
        y[j + QK / 2] = d * float(int(qs[j] >> 4) | hi1) + m;
    }
}

// Q8_0 (34 bytes): d f16 @0, int8 qs[32] @2.
void block_q8_0(const uint8_t* b, float* y) {
    const float d = load_half(b);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < QK; ++j) y[j] = d * float(qs[j]);
}

// Q2_K (84 bytes): scales[16] @0 (low nibble scale, high nibble min, per 16 elements),
// qs[64] @16 (2-bit quants), d f16 @80, dmin f16 @82. Element e: half h = e/128 uses
// qs[32h .. 32h+32), shifted right by 2*((e%128)/32).
void block_q2_K(const uint8_t* b, float* y) {
    const uint8_t* scales = b;
    const uint8_t* qs = b + 16;
    const float d = load_half(b + 80), dmin = load_half(b + 82);
    for (int sub = 0; sub < QK_K / 16; ++sub) {
        const float dl = d * float(scales[sub] & 0x0F), ml = dmin * float(scales[sub] >> 4);
        const int e0 = sub * 16;
        const int half = e0 / 128, shift = 2 * ((e0 % 128) / 32), l0 = e0 % 32;
        const uint8_t* q = qs + 32 * half + l0;
        for (int l = 0; l < 16; ++l) y[e0 + l] = dl * float((q[l] >> shift) & 3) - ml;
    }
}

// Q3_K (110 bytes): hmask[32] @0, qs[64] @32, scales[12] @96 (sixteen 6-bit signed scales,
// offset 32: low 4 bits in the nibbles of bytes 0..7, high 2 bits in bytes 8..11),
// d f16 @108. The quant is the 2-bit value minus 4 unless hmask's bit e/32 is set.
void block_q3_K(const uint8_t* b, float* y) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* sc = b + 96;
    const float d = load_half(b + 108);
    for (int sub = 0; sub < QK_K / 16; ++sub) {
        const int lo = sub < 8 ? (sc[sub] & 0x0F) : (sc[sub - 8] >> 4);
        const int hi = (sc[8 + sub % 4] >> (2 * (sub / 4))) & 3;
        const float dl = d * float((lo | (hi << 4)) - 32);
        const int e0 = sub * 16;
        const int half = e0 / 128, shift = 2 * ((e0 % 128) / 32), l0 = e0 % 32, bit = e0 / 32;
        for (int l = 0; l < 16; ++l) {
            const int q = int((qs[32 * half + l0 + l] >> shift) & 3) - (((hmask[l0 + l] >> bit) & 1) ? 0 : 4);
            y[e0 + l] = dl * float(q);
        }
    }
}

// The 12-byte packed 6-bit scales and mins of Q4_K / Q5_K, for sub-block s (of 8).
inline void k_scale_min(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K (144 bytes): d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16. Sub-block s (32
// elements) is nibble s%2 of qs[32*(s/2) ..]. y = (d*sc)*q - dmin*m.
void block_q4_K(const uint8_t* b, float* y) {
    const float d = load_half(b), dmin = load_half(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qs = b + 16;
    for (int s = 0; s < 8; ++s) {
        int sc, m;
        k_scale_min(scales, s, sc, m);
        const float d1 = d * float(sc), m1 = dmin * float(m);
        const uint8_t* q = qs + 32 * (s / 2);
        const int shift = 4 * (s % 2);
        for (int l = 0; l < 32; ++l) y[32 * s + l] = d1 * float((q[l] >> shift) & 0x0F) - m1;
    }
}

// Q5_K (176 bytes): d f16 @0, dmin f16 @2, scales[12] @4, qh[32] @16 (bit s of qh[l] is the
// 5th bit of element l of sub-block s), qs[128] @48 (as Q4_K).
void block_q5_K(const uint8_t* b, float* y) {
    const float d = load_half(b), dmin = load_half(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int s = 0; s < 8; ++s) {
        int sc, m;
        k_scale_min(scales, s, sc, m);
        const float d1 = d * float(sc), m1 = dmin * float(m);
        const uint8_t* q = qs + 32 * (s / 2);
        const int shift = 4 * (s % 2);
        for (int l = 0; l < 32; ++l) {
            const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> s) & 1) << 4);
            y[32 * s + l] = d1 * float(v) - m1;
        }
    }
}

// Q6_K (210 bytes): ql[128] @0 (low 4 bits), qh[64] @128 (high 2 bits), int8 scales[16] @192,
// d f16 @208. In half h (128 elements), element r takes nibble r/64 of ql[64h + r%64] and
// bits 2*(r/32) of qh[32h + r%32]; quant minus 32; one scale per 16 elements.
void block_q6_K(const uint8_t* b, float* y) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = load_half(b + 208);
    for (int sub = 0; sub < QK_K / 16; ++sub) {
        const float dl = d * float(sc[sub]);
        const int e0 = sub * 16, h = e0 / 128, r0 = e0 % 128;
        const int lshift = 4 * (r0 / 64), hshift = 2 * (r0 / 32);
        const uint8_t* qlp = ql + 64 * h + r0 % 64;
        const uint8_t* qhp = qh + 32 * h + r0 % 32;
        for (int l = 0; l < 16; ++l) {
            const int q = (((qlp[l] >> lshift) & 0x0F) | (((qhp[l] >> hshift) & 3) << 4)) - 32;
            y[e0 + l] = dl * float(q);
        }
    }
}

// Q8_K (292 bytes): d f32 @0, int8 qs[256] @4, int16 bsums[16] @260 (unused here).
void block_q8_K(const uint8_t* b, float* y) {
    float d;
    std::memcpy(&d, b, 4);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
    for (int j = 0; j < QK_K; ++j) y[j] = d * float(qs[j]);
}

// IQ4_NL (18 bytes): d f16 @0, qs[16] @2, nibbles index kIQ4Values (low nibbles first).
void block_iq4_nl(const uint8_t* b, float* y) {
    const float d = load_half(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < QK / 2; ++j) {
        y[j] = d * float(kIQ4Values[qs[j] & 0x0F]);
        y[j + QK / 2] = d * float(kIQ4Values[qs[j] >> 4]);
    }
}

// IQ4_XS (136 bytes): d f16 @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8. Sub-block ib
// (32 elements) has the 6-bit scale (nibble ib%2 of scales_l[ib/2]) | (bits 2ib of scales_h)<<4,
// offset 32, and its 16 bytes of qs hold low nibbles then high nibbles.
void block_iq4_xs(const uint8_t* b, float* y) {
    const float d = load_half(b);
    uint16_t sh;
    std::memcpy(&sh, b + 2, 2);
    const uint8_t* sl = b + 4;
    const uint8_t* qs = b + 8;
    for (int ib = 0; ib < 8; ++ib) {
        const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
        const float dl = d * float(ls - 32);
        const uint8_t* q = qs + 16 * ib;
        for (int j = 0; j < 16; ++j) {
            y[32 * ib + j] = dl * float(kIQ4Values[q[j] & 0x0F]);
            y[32 * ib + 16 + j] = dl * float(kIQ4Values[q[j] >> 4]);
        }
    }
}

void convert_f16(const uint8_t* s, float* y, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * i));
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) y[i] = load_half(s + 2 * i);
}

template <typename T>
void convert_plain(const uint8_t* s, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, s + sizeof(T) * size_t(i), sizeof(T));
        y[i] = float(v);
    }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(GGMLType t) {
    switch (t) {
        case GGMLType::Q4_0: return block_q4_0;
        case GGMLType::Q4_1: return block_q4_1;
        case GGMLType::Q5_0: return block_q5_0;
        case GGMLType::Q5_1: return block_q5_1;
        case GGMLType::Q8_0: return block_q8_0;
        case GGMLType::Q2_K: return block_q2_K;
        case GGMLType::Q3_K: return block_q3_K;
        case GGMLType::Q4_K: return block_q4_K;
        case GGMLType::Q5_K: return block_q5_K;
        case GGMLType::Q6_K: return block_q6_K;
        case GGMLType::Q8_K: return block_q8_K;
        case GGMLType::IQ4_NL: return block_iq4_nl;
        case GGMLType::IQ4_XS: return block_iq4_xs;
        default: return nullptr;
    }
}

}  // namespace

void dequantize_row(GGMLType t, const void* src_v, float* dst, int64_t n) {
    const auto* src = static_cast<const uint8_t*>(src_v);
    if (n <= 0 && ggml_type_dequantizable(t)) return;  // empty tensors have no buffers
    switch (t) {
        case GGMLType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
        case GGMLType::F16: convert_f16(src, dst, n); return;
        case GGMLType::BF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                dst[i] = bf16_to_f32(h);
            }
            return;
        case GGMLType::F64: convert_plain<double>(src, dst, n); return;
        case GGMLType::I8: convert_plain<int8_t>(src, dst, n); return;
        case GGMLType::I16: convert_plain<int16_t>(src, dst, n); return;
        case GGMLType::I32: convert_plain<int32_t>(src, dst, n); return;
        case GGMLType::I64: convert_plain<int64_t>(src, dst, n); return;
        default: break;
    }
    BlockFn fn = block_fn(t);
    if (!fn) throw Error("", fmt::format("no float32 conversion for ggml type {}", ggml_type_name(t)));
    const int64_t bs = ggml_block_size(t), ts = ggml_type_size(t);
    if (n % bs != 0)
        throw Error("", fmt::format("{} elements is not a whole number of {} blocks of {}", n, ggml_type_name(t), bs));
    for (int64_t b = 0; b < n / bs; ++b) fn(src + b * ts, dst + b * bs);
}

void dequantize(GGMLType t, const void* src_v, float* dst, int64_t n) {
    const int64_t bs = ggml_block_size(t), ts = ggml_type_size(t);
    // Chunks of whole blocks, ~64K elements each: big enough to amortise the scheduling,
    // small enough to balance a 1M-element tensor over many threads.
    const int64_t chunk_blocks = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(bs, 1));
    const int64_t nblocks = bs > 0 ? n / bs : 0;
    if (bs <= 0 || n % bs != 0 || nblocks <= chunk_blocks) {
        dequantize_row(t, src_v, dst, n);
        return;
    }
    if (!ggml_type_dequantizable(t)) dequantize_row(t, src_v, dst, n);  // throws the usual error
    const auto* src = static_cast<const uint8_t*>(src_v);
    const int64_t nchunks = (nblocks + chunk_blocks - 1) / chunk_blocks;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t b0 = c * chunk_blocks, b1 = std::min(nblocks, b0 + chunk_blocks);
        dequantize_row(t, src + b0 * ts, dst + b0 * bs, (b1 - b0) * bs);
    }
}

}  // namespace cpu
}  // namespace stitch

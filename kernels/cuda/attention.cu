// Causal attention of packed sequences over their KV caches (kernels/cuda/ops.cuh; the contract
// and the reference are cpu::attention in kernels/cpu/ops_cpu.{h,cpp}). Flash-style: scores
// live in registers, never in global memory, and the softmax is online in f32.
//
// Three kernels:
//   prefill on tensor cores (the default where its shared memory fits: attn_prefill_tc_kernel,
//            described where it is defined), else
//   prefill  one block per (tile of BQ query rows, head, sequence). The block walks the keys its
//            rows can see in tiles of 32 staged in shared memory (K, then V into the same buffer,
//            so head_dim 256 still fits 48 KB of static shared memory). Each warp owns BQ/4 query
//            rows; scoring gives each lane one key of the tile (a dot product over head_dim
//            against the query row in shared memory), then the warp rescales its accumulators
//            and adds p·V, with lane L holding output elements L, L + 32, ….
//   decode   every sequence has one new row (max_len 1), contexts up to many thousands: the
//            visible keys are cut into splits, one block per (split, head, sequence); a warp
//            scores 8 keys at a time (lanes split head_dim, shuffle reduction), warps merge in
//            shared memory, and when there is more than one split a second kernel merges the
//            splits' (max, sum, accumulator) triples.
// Visible keys of a query at absolute position p: [lo, p] with lo = max(0, p − W + 1) for a
// window W, else 0 — W keys counting the query's own, exactly as the CPU twin.
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <string>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeyTile = 32;      // prefill keys per shared-memory tile: one per lane when scoring
constexpr int kDecodeKeys = 8;    // decode keys a warp scores together (independent reductions in flight)
constexpr int kSplitKeys = 128;   // decode keys per block before the split count is capped
constexpr int kDecodeBlocks = 1024;  // enough blocks to fill an H100 several times over

struct AttnArgs {
    float* out;
    const float* q;
    int q_stride;
    const int32_t* row0;
    const int32_t* len;
    const int32_t* pos0;
    const float* const* k_base;
    const float* const* v_base;
    int kv_stride;
    int n_heads;
    int group;  // query heads per kv head
    int head_dim;
    float scale;
    int window;
    float softcap;
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The CPU twin's order: scale, then the optional soft-cap.
__device__ __forceinline__ float finish_score(float dot, const AttnArgs& a) {
    float v = dot * a.scale;
    if (a.softcap > 0) v = a.softcap * tanhf(v / a.softcap);
    return v;
}

// Keys [k0, k0 + nk) of one kv head (src already offset to the head's columns) into the tile,
// key j at tile[j · stride]. Rows nk.. keep stale values; callers never read them.
__device__ __forceinline__ void load_tile(float* tile, int stride, const float* src, int kv_stride, int k0, int nk,
                                          int hd) {
    for (int idx = threadIdx.x; idx < nk * hd; idx += kThreads) {
        const int j = idx / hd, d = idx - j * hd;
        tile[j * stride + d] = src[int64_t(k0 + j) * kv_stride + d];
    }
}

// HD: head_dim rounded up to 64, 128 or 256 (register and shared arrays are sized by it, loops
// run to the real head_dim). BQ: query rows per block, a multiple of kWarps.
template <int HD, int BQ>
__global__ void __launch_bounds__(kThreads) attn_prefill_kernel(AttnArgs a) {
    constexpr int NE = HD / 32;       // accumulator elements per lane: d = lane + 32·e
    constexpr int RPW = BQ / kWarps;  // rows per warp: r = warp + kWarps·i
    constexpr int KS = HD + 1;        // tile stride ≡ 1 (mod 32): lane-per-key reads hit distinct banks
    static_assert(HD % 32 == 0 && BQ % kWarps == 0, "tile shape");
    __shared__ float sq[BQ * HD];
    __shared__ float skv[kKeyTile * KS];

    const int s = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * BQ;
    const int L = a.len[s];
    if (q0 >= L) return;  // the whole block: this sequence has fewer rows than the longest
    const int nq = min(BQ, L - q0);
    const int hd = a.head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t first_row = int64_t(a.row0[s]) + q0;
    const int p_first = a.pos0[s] + q0;  // absolute position of the tile's first query
    const int p_last = p_first + nq - 1;
    const int k_lo = a.window > 0 ? max(0, p_first - a.window + 1) : 0;  // first key any row sees
    const int kvh = h / a.group;
    const float* K = a.k_base[s] + int64_t(kvh) * hd;
    const float* V = a.v_base[s] + int64_t(kvh) * hd;

    // Rows past nq are zeros: warps score them with the others (no divergence) and never use them.
    for (int idx = threadIdx.x; idx < BQ * hd; idx += kThreads) {
        const int r = idx / hd, d = idx - r * hd;
        sq[r * HD + d] = r < nq ? a.q[(first_row + r) * a.q_stride + int64_t(h) * hd + d] : 0.0f;
    }

    float m[RPW], l[RPW], sc[RPW], pj[RPW], acc[RPW][NE];
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        m[i] = -INFINITY;
        l[i] = 0;  // per lane: the sum of this lane's keys' weights, reduced at the end
#pragma unroll
        for (int e = 0; e < NE; ++e) acc[i][e] = 0;
    }

    for (int k0 = k_lo; k0 <= p_last; k0 += kKeyTile) {
        const int nk = min(kKeyTile, p_last - k0 + 1);
        __syncthreads();  // the Q tile is written; the previous V tile is no longer read
        load_tile(skv, KS, K, a.kv_stride, k0, nk, hd);
        __syncthreads();
        // Lane j scores key k0 + j against all the warp's rows in one pass over head_dim.
        float dot[RPW];
#pragma unroll
        for (int i = 0; i < RPW; ++i) dot[i] = 0;
        if (lane < nk) {
            const float* kr = skv + lane * KS;
            for (int d = 0; d < hd; ++d) {
                const float kd = kr[d];
#pragma unroll
                for (int i = 0; i < RPW; ++i) dot[i] += sq[(warp + kWarps * i) * HD + d] * kd;
            }
        }
        const int key = k0 + lane;
#pragma unroll
        for (int i = 0; i < RPW; ++i) {
            const int r = warp + kWarps * i, p = p_first + r;
            const bool visible = r < nq && lane < nk && key <= p && (a.window == 0 || key > p - a.window);
            sc[i] = visible ? finish_score(dot[i], a) : -INFINITY;
        }
        __syncthreads();  // every warp is done with K
        load_tile(skv, KS, V, a.kv_stride, k0, nk, hd);
        __syncthreads();
        // Online softmax: rescale by e^(m_old − m_new), add this tile's weights.
#pragma unroll
        for (int i = 0; i < RPW; ++i) {
            const float m_new = fmaxf(m[i], warp_max(sc[i]));
            const bool any = m_new != -INFINITY;  // warp-uniform: row i has seen a visible key
            const float corr = any ? expf(m[i] - m_new) : 1.0f;  // 0 on the first visible tile
            pj[i] = any ? expf(sc[i] - m_new) : 0.0f;            // 0 for masked keys
            l[i] = l[i] * corr + pj[i];
#pragma unroll
            for (int e = 0; e < NE; ++e) acc[i][e] *= corr;
            m[i] = m_new;
        }
        for (int j = 0; j < nk; ++j) {
            const float* vr = skv + j * KS;
            float vd[NE];
#pragma unroll
            for (int e = 0; e < NE; ++e) {
                const int d = lane + 32 * e;
                vd[e] = d < hd ? vr[d] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < RPW; ++i) {
                const float pb = __shfl_sync(0xffffffffu, pj[i], j);
#pragma unroll
                for (int e = 0; e < NE; ++e) acc[i][e] += pb * vd[e];
            }
        }
    }

    const int64_t out_stride = int64_t(a.n_heads) * hd;
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int r = warp + kWarps * i;
        if (r >= nq) continue;
        const float inv = 1.0f / warp_sum(l[i]);  // > 0: the query's own key is always visible
        float* o = a.out + (first_row + r) * out_stride + int64_t(h) * hd;
#pragma unroll
        for (int e = 0; e < NE; ++e) {
            const int d = lane + 32 * e;
            if (d < hd) o[d] = acc[i][e] * inv;
        }
    }
}

// ---- prefill on tensor cores -------------------------------------------------------------------
//
// The same tiles as attn_prefill_kernel, with both products on tensor cores (WMMA, TF32 inputs:
// 10-bit mantissas, f32 accumulation): one block of 4 warps per (64 query rows, head, sequence),
// each warp owning 16 rows. Per key tile: S = Q·Kᵀ (warp's rows × BK keys) into shared memory;
// two lanes per row run the masked online softmax over S in place (P = e^(s − m)); the warp's
// output rows in shared memory are rescaled by e^(m_old − m_new), then O += P·V. Head dims up to
// HD are zero-padded (zeros add nothing to Q·Kᵀ, and padded V columns are never written out).
// Shared memory: Q, K, V, O and S tiles, about 93 KB (HD 64), 158 KB (HD 128), 214 KB (HD 256);
// where the GPU offers less per block (an A100 has 163 KB) the CUDA-core kernel runs instead.

constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // query rows per block

template <int HD, int BK>
struct TcLayout {
    static constexpr int LD = HD + 8;  // Q, K, V, O row stride in floats: rows stay 32-byte aligned for WMMA
    static constexpr int LS = BK + 8;  // S row stride
    static constexpr int kQ = 0, kK = kQ + kTcRows * LD, kV = kK + BK * LD, kO = kV + BK * LD, kS = kO + kTcRows * LD;
    static constexpr int kM = kS + kTcRows * LS, kL = kM + kTcRows, kC = kL + kTcRows;  // per-row max, sum, rescale
    static constexpr size_t bytes = size_t(kC + kTcRows) * sizeof(float);
};

template <typename Frag>
__device__ __forceinline__ void to_tf32(Frag& f) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = nvcuda::wmma::__float_to_tf32(f.x[i]);
}

template <int HD, int BK>
__global__ void __launch_bounds__(32 * kTcWarps) attn_prefill_tc_kernel(AttnArgs a) {
    namespace wmma = nvcuda::wmma;
    using Lay = TcLayout<HD, BK>;
    constexpr int LD = Lay::LD, LS = Lay::LS;
    static_assert(HD % 16 == 0 && BK % 16 == 0, "WMMA tiles");
    extern __shared__ __align__(128) float sm[];
    float* sQ = sm + Lay::kQ;
    float* sK = sm + Lay::kK;
    float* sV = sm + Lay::kV;
    float* sO = sm + Lay::kO;
    float* sS = sm + Lay::kS;
    float* sM = sm + Lay::kM;
    float* sL = sm + Lay::kL;
    float* sC = sm + Lay::kC;

    const int s = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * kTcRows;
    const int L = a.len[s];
    if (q0 >= L) return;  // the whole block
    const int nq = min(kTcRows, L - q0);
    const int hd = a.head_dim;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t first_row = int64_t(a.row0[s]) + q0;
    const int p_first = a.pos0[s] + q0;
    const int p_last = p_first + nq - 1;
    const int k_lo = a.window > 0 ? max(0, p_first - a.window + 1) : 0;
    const int kvh = h / a.group;
    const float* K = a.k_base[s] + int64_t(kvh) * hd;
    const float* V = a.v_base[s] + int64_t(kvh) * hd;

    // Q (zeros past nq rows and past head_dim), O = 0, m = −∞, l = 0
    for (int idx = tid; idx < kTcRows * HD; idx += blockDim.x) {
        const int r = idx / HD, d = idx - r * HD;
        sQ[r * LD + d] = r < nq && d < hd ? a.q[(first_row + r) * a.q_stride + int64_t(h) * hd + d] : 0.0f;
        sO[r * LD + d] = 0.0f;
    }
    for (int r = tid; r < kTcRows; r += blockDim.x) sM[r] = -INFINITY, sL[r] = 0.0f;

    const int r0 = 16 * warp;  // the warp's first row
    for (int k0 = k_lo; k0 <= p_last; k0 += BK) {
        const int nk = min(BK, p_last - k0 + 1);
        __syncthreads();  // Q, O, m, l are set; every warp is done with the previous K and V
        // K and V rows [k0, k0 + nk); zeros past nk (V's must be: 0 · garbage could be NaN)
        for (int idx = tid; idx < BK * HD; idx += blockDim.x) {
            const int j = idx / HD, d = idx - j * HD;
            const bool in = j < nk && d < hd;
            const int64_t off = int64_t(k0 + j) * a.kv_stride + d;
            sK[j * LD + d] = in ? K[off] : 0.0f;
            sV[j * LD + d] = in ? V[off] : 0.0f;
        }
        __syncthreads();

        // S = Q · Kᵀ for the warp's 16 rows (K row-major [key][d] is Kᵀ column-major)
#pragma unroll
        for (int j = 0; j < BK / 16; ++j) {
            wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll 4
            for (int kk = 0; kk < HD; kk += 8) {
                wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, sQ + r0 * LD + kk, LD);
                wmma::load_matrix_sync(fb, sK + 16 * j * LD + kk, LD);
                to_tf32(fa);
                to_tf32(fb);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(sS + r0 * LS + 16 * j, acc, LS, wmma::mem_row_major);
        }
        __syncwarp();

        // Masked online softmax in place, two lanes per row (even and odd columns). Rows past nq
        // see every loaded key (their zeros score 0) so nothing there is −∞; they are never written.
        {
            const int r = r0 + (lane >> 1), half = lane & 1;
            const int p = p_first + r;
            float* srow = sS + r * LS;
            float mx = -INFINITY;
            for (int col = half; col < BK; col += 2) {
                const int key = k0 + col;
                const bool vis = col < nk && (r >= nq || (key <= p && (a.window == 0 || key > p - a.window)));
                const float v = vis ? finish_score(srow[col], a) : -INFINITY;
                srow[col] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, mx);
            const bool any = m_new != -INFINITY;                 // the row has seen a visible key
            const float corr = any ? expf(m_old - m_new) : 1.0f;  // 0 on its first visible tile
            float sum = 0.0f;
            for (int col = half; col < BK; col += 2) {
                const float pv = any ? expf(srow[col] - m_new) : 0.0f;  // 0 for masked keys
                srow[col] = pv;
                sum += pv;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            __syncwarp();  // both lanes have read sM[r]
            if (half == 0) {
                sM[r] = m_new;
                sL[r] = sL[r] * corr + sum;
                sC[r] = corr;
            }
        }
        __syncwarp();
        for (int idx = lane; idx < 16 * HD; idx += 32) {
            const int r = r0 + idx / HD, d = idx % HD;
            sO[r * LD + d] *= sC[r];
        }
        __syncwarp();

        // O += P · V (V row-major [key][d])
#pragma unroll
        for (int j = 0; j < HD / 16; ++j) {
            wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
            wmma::load_matrix_sync(acc, sO + r0 * LD + 16 * j, LD, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BK; kk += 8) {
                wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, sS + r0 * LS + kk, LS);
                wmma::load_matrix_sync(fb, sV + kk * LD + 16 * j, LD);
                to_tf32(fa);
                to_tf32(fb);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(sO + r0 * LD + 16 * j, acc, LD, wmma::mem_row_major);
        }
    }
    __syncwarp();

    // out = O / l for the warp's own rows (l > 0: a query's own key is always visible)
    const int64_t out_stride = int64_t(a.n_heads) * hd;
    for (int idx = lane; idx < 16 * hd; idx += 32) {
        const int r = r0 + idx / hd, d = idx % hd;
        if (r < nq) a.out[(first_row + r) * out_stride + int64_t(h) * hd + d] = sO[r * LD + d] / sL[r];
    }
}

std::atomic<int> g_prefill_kernel{-1};  // set_prefill_attention

// Whether the tensor-core kernel for HD can run here: its shared memory is granted once per
// process (the opt-in above 48 KB); false where the GPU offers less per block.
template <int HD, int BK>
bool tc_prefill_ready() {
    static const bool ok = [] {
        int dev = 0, optin = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
            size_t(optin) < TcLayout<HD, BK>::bytes) {
            cudaGetLastError();
            return false;
        }
        const bool set = cudaFuncSetAttribute(attn_prefill_tc_kernel<HD, BK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(TcLayout<HD, BK>::bytes)) == cudaSuccess;
        cudaGetLastError();
        return set;
    }();
    return ok;
}

// One block per (split, head, sequence) of a decode step: keys [lo + split·chunk, +chunk) ∩
// [lo, p]. With one split it writes the output row; else its (max, sum) to part_ml[2·idx..] and
// its unnormalised accumulator to part_acc[idx·hd..], idx = (s·n_heads + h)·n_splits + split.
template <int HD>
__global__ void __launch_bounds__(kThreads) attn_decode_kernel(AttnArgs a, int chunk, int n_splits, float* part_ml,
                                                                 float* part_acc) {
    constexpr int NE = HD / 32;
    __shared__ float s_m[kWarps], s_l[kWarps];
    __shared__ float s_acc[kWarps][HD];

    const int split = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    if (a.len[s] == 0) return;  // the whole block; the merge kernel skips it too
    const int hd = a.head_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p = a.pos0[s];
    const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
    const int k_begin = lo + split * chunk;
    const int k_end = min(k_begin + chunk, p + 1);  // every key in [k_begin, k_end) is visible
    const int64_t row = a.row0[s];
    const int kvh = h / a.group;
    const float* K = a.k_base[s] + int64_t(kvh) * hd;
    const float* V = a.v_base[s] + int64_t(kvh) * hd;

    float qv[NE], acc[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        const int d = lane + 32 * e;
        qv[e] = d < hd ? a.q[row * a.q_stride + int64_t(h) * hd + d] : 0.0f;
        acc[e] = 0;
    }
    float m = -INFINITY, l = 0;  // identical in every lane (scores come from xor reductions)

    for (int k0 = k_begin + warp * kDecodeKeys; k0 < k_end; k0 += kWarps * kDecodeKeys) {
        float sc[kDecodeKeys];
#pragma unroll
        for (int u = 0; u < kDecodeKeys; ++u) {
            const int key = k0 + u;
            float dot = 0;
            if (key < k_end) {
                const float* kr = K + int64_t(key) * a.kv_stride;
#pragma unroll
                for (int e = 0; e < NE; ++e) {
                    const int d = lane + 32 * e;
                    if (d < hd) dot += qv[e] * kr[d];
                }
            }
            dot = warp_sum(dot);
            sc[u] = key < k_end ? finish_score(dot, a) : -INFINITY;
        }
        float tmax = sc[0];  // key k0 < k_end: finite
#pragma unroll
        for (int u = 1; u < kDecodeKeys; ++u) tmax = fmaxf(tmax, sc[u]);
        const float m_new = fmaxf(m, tmax);
        const float corr = expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int e = 0; e < NE; ++e) acc[e] *= corr;
#pragma unroll
        for (int u = 0; u < kDecodeKeys; ++u) {
            const int key = k0 + u;
            if (key < k_end) {
                const float pu = expf(sc[u] - m_new);
                l += pu;
                const float* vr = V + int64_t(key) * a.kv_stride;
#pragma unroll
                for (int e = 0; e < NE; ++e) {
                    const int d = lane + 32 * e;
                    if (d < hd) acc[e] += pu * vr[d];
                }
            }
        }
        m = m_new;
    }

    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        const int d = lane + 32 * e;
        if (d < hd) s_acc[warp][d] = acc[e];
    }
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w]);
    float wgt[kWarps], sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        wgt[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M);  // a warp (or split) with no keys weighs 0
        sum += s_l[w] * wgt[w];
    }
    const int64_t idx = (int64_t(s) * a.n_heads + h) * n_splits + split;
    for (int d = threadIdx.x; d < hd; d += kThreads) {
        float v = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v += s_acc[w][d] * wgt[w];
        if (n_splits == 1)
            a.out[row * int64_t(a.n_heads) * hd + int64_t(h) * hd + d] = v / sum;
        else
            part_acc[idx * hd + d] = v;
    }
    if (n_splits > 1 && threadIdx.x == 0) {
        part_ml[2 * idx] = M;
        part_ml[2 * idx + 1] = sum;
    }
}

// One block per (head, sequence): out = Σ acc_i e^(m_i − M) / Σ l_i e^(m_i − M) over the splits.
__global__ void attn_merge_kernel(AttnArgs a, int n_splits, const float* part_ml, const float* part_acc) {
    const int h = blockIdx.x, s = blockIdx.y;
    if (a.len[s] == 0) return;
    const int hd = a.head_dim;
    const int64_t base = (int64_t(s) * a.n_heads + h) * n_splits;
    float M = -INFINITY;
    for (int i = 0; i < n_splits; ++i) M = fmaxf(M, part_ml[2 * (base + i)]);  // split 0 is never empty
    float sum = 0;
    for (int i = 0; i < n_splits; ++i) {
        const float mi = part_ml[2 * (base + i)];
        if (mi != -INFINITY) sum += part_ml[2 * (base + i) + 1] * expf(mi - M);
    }
    const int64_t row = a.row0[s];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0;
        for (int i = 0; i < n_splits; ++i) {
            const float mi = part_ml[2 * (base + i)];
            if (mi != -INFINITY) v += part_acc[(base + i) * hd + d] * expf(mi - M);
        }
        a.out[row * int64_t(a.n_heads) * hd + int64_t(h) * hd + d] = v / sum;
    }
}

// Split partials, allocated on the stream and freed after the merge: stream-ordered, so no
// other stream's work is disturbed and a captured CUDA graph holds its own copy. The device's
// default pool keeps up to 64 MB cached across synchronisations (its default threshold, 0,
// would hand the memory back to the driver at every decode step's sync).
struct StreamScratch {
    float* p = nullptr;
    cudaStream_t stream;
    StreamScratch(size_t n, cudaStream_t s) : stream(s) {
        static std::once_flag once;
        std::call_once(once, [] {
            int dev = 0;
            cudaMemPool_t pool;
            if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
                uint64_t keep = 64ull << 20;
                cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
            }
            cudaGetLastError();  // best effort: a pool that refuses only costs speed
        });
        CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p), n * sizeof(float), s));
    }
    ~StreamScratch() {
        if (p) cudaFreeAsync(p, stream);
    }
    StreamScratch(const StreamScratch&) = delete;
    StreamScratch& operator=(const StreamScratch&) = delete;
};

int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

template <int HD>
void launch(cudaStream_t stream, const AttnArgs& a, int n_seqs, int max_len, int max_ctx) {
    if (max_len > 1) {
        constexpr int BK = HD <= 128 ? 64 : 32;
        if (g_prefill_kernel.load() != 0 && tc_prefill_ready<HD, BK>()) {
            const dim3 grid(unsigned(ceil_div(max_len, kTcRows)), unsigned(a.n_heads), unsigned(n_seqs));
            attn_prefill_tc_kernel<HD, BK><<<grid, 32 * kTcWarps, TcLayout<HD, BK>::bytes, stream>>>(a);
            CUDA_CHECK(cudaGetLastError());
            return;
        }
        constexpr int BQ = HD <= 64 ? 32 : HD <= 128 ? 16 : 8;  // 16.5, 24.7, 41.1 KB of shared memory
        const dim3 grid(unsigned(ceil_div(max_len, BQ)), unsigned(a.n_heads), unsigned(n_seqs));
        attn_prefill_kernel<HD, BQ><<<grid, kThreads, 0, stream>>>(a);
        CUDA_CHECK(cudaGetLastError());
        return;
    }
    // Decode: the most keys any row sees, cut into splits; fewer (longer) splits when the
    // heads and sequences already make enough blocks. chunk is a multiple of the keys the
    // block's warps take per round.
    const int max_vis = std::max(1, a.window > 0 ? std::min(a.window, max_ctx) : max_ctx);
    const int64_t rows = int64_t(n_seqs) * a.n_heads;
    int n_splits = ceil_div(max_vis, kSplitKeys);
    n_splits = int(std::max<int64_t>(1, std::min<int64_t>(n_splits, kDecodeBlocks / rows)));
    constexpr int kRound = kWarps * kDecodeKeys;
    const int chunk = ceil_div(ceil_div(max_vis, n_splits), kRound) * kRound;
    n_splits = ceil_div(max_vis, chunk);
    const dim3 grid(unsigned(n_splits), unsigned(a.n_heads), unsigned(n_seqs));
    if (n_splits == 1) {
        attn_decode_kernel<HD><<<grid, kThreads, 0, stream>>>(a, chunk, 1, nullptr, nullptr);
        CUDA_CHECK(cudaGetLastError());
        return;
    }
    const int64_t parts = rows * n_splits;
    StreamScratch scratch(size_t(parts) * size_t(2 + a.head_dim), stream);
    float* part_ml = scratch.p;
    float* part_acc = scratch.p + 2 * parts;
    attn_decode_kernel<HD><<<grid, kThreads, 0, stream>>>(a, chunk, n_splits, part_ml, part_acc);
    CUDA_CHECK(cudaGetLastError());
    attn_merge_kernel<<<dim3(unsigned(a.n_heads), unsigned(n_seqs)), kThreads, 0, stream>>>(a, n_splits, part_ml,
                                                                                          part_acc);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void set_prefill_attention(int mode) { g_prefill_kernel.store(mode); }

bool prefill_on_tensor_cores(int head_dim) {
    if (g_prefill_kernel.load() == 0 || head_dim <= 0 || head_dim > 256) return false;
    if (head_dim <= 64) return tc_prefill_ready<64, 64>();
    if (head_dim <= 128) return tc_prefill_ready<128, 64>();
    return tc_prefill_ready<256, 32>();
}

void attention(cudaStream_t stream, float* out, const float* q, int q_stride, int n_seqs, const int32_t* row0,
               const int32_t* len, const int32_t* pos0, const float* const* k_base, const float* const* v_base,
               int kv_stride, int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap,
               int max_len, int max_ctx) {
    if (n_seqs <= 0 || max_len <= 0 || n_heads <= 0) return;
    if (head_dim <= 0 || head_dim > 256)
        throw_error("attention", "head_dim " + std::to_string(head_dim) + " is not supported by the CUDA kernels (1..256)");
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
        throw_error("attention", std::to_string(n_heads) + " query heads do not split into " + std::to_string(n_kv_heads) +
                                     " kv heads");
    if (n_seqs > 65535 || n_heads > 65535)
        throw_error("attention", "more than 65535 sequences or heads in one launch");
    const AttnArgs a{.out = out,
                     .q = q,
                     .q_stride = q_stride,
                     .row0 = row0,
                     .len = len,
                     .pos0 = pos0,
                     .k_base = k_base,
                     .v_base = v_base,
                     .kv_stride = kv_stride,
                     .n_heads = n_heads,
                     .group = n_heads / n_kv_heads,
                     .head_dim = head_dim,
                     .scale = scale,
                     .window = window < 0 ? 0 : window,
                     .softcap = softcap};
    if (head_dim <= 64)
        launch<64>(stream, a, n_seqs, max_len, max_ctx);
    else if (head_dim <= 128)
        launch<128>(stream, a, n_seqs, max_len, max_ctx);
    else
        launch<256>(stream, a, n_seqs, max_len, max_ctx);
}

}  // namespace stitch::cuda

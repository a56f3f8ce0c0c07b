// Sampling on the device (kernels/cuda/ops.cuh sample_rows): the rule of cpu::sample_row
// (kernels/cpu/ops_cpu.h) for each row of logits, one 1024-thread block per row, so a decode step
// copies one token id per sequence to the host instead of a vocabulary's worth of logits.
//
// No sort: the top-k and top-p cut-offs are found by bisection over the 32-bit order-preserving
// key of the logit (32 block-wide counts or sums each), over the row's candidates (tokens within
// kSampleCut nats of the best, compacted in vocabulary order first). Every reduction has a fixed
// order, so the same logits and u give the same token on every run.
#include <climits>
#include <cmath>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda {
namespace {

constexpr int kThreads = 1024;  // the reductions below assume exactly this many (32 warps)

// Increasing in the float's value: a ≤ b ⇔ key(a) ≤ key(b) for non-NaN floats.
__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct Sum {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Min {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// op over the block's 1024 values, returned to every thread, in a fixed order (so float sums are
// the same on every run). `sh` holds 32 values; every thread must call it.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();  // the previous call's readers are done with sh
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = sh[lane];
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

// Exclusive prefix of each thread's value, in thread order, by one thread (1024 serial adds: a
// fixed order, and cheap next to the passes over the row). Returns this thread's prefix; *total
// gets the sum.
template <typename T>
__device__ T block_exclusive_scan(T v, T* buf, T* total) {
    buf[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T run = T(0);
        for (int i = 0; i < kThreads; ++i) {
            const T x = buf[i];
            buf[i] = run;
            run = run + x;
        }
        *total = run;
    }
    __syncthreads();
    return buf[threadIdx.x];
}

// The largest key t in [lo, 0xffffffff] with measure(t) ≥ need, where measure(t) — a count or a
// mass of the candidates whose key is ≥ t — does not increase with t and measure(lo) ≥ need.
template <typename T, typename Measure>
__device__ uint32_t bisect(uint32_t lo, T need, Measure measure) {
    uint32_t hi = 0xffffffffu;
    while (lo < hi) {
        const uint32_t mid = uint32_t(lo + (uint64_t(hi) - lo + 1) / 2);
        if (measure(mid) >= need)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(int32_t* out, const float* x, int cols, float temperature, int top_k, float top_p,
                       const double* u, float cut, int32_t* cand_idx, float* cand_val, float* cand_p) {
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ int scan_i[kThreads];
    __shared__ float scan_f[kThreads];
    __shared__ int count;
    __shared__ float kept_mass;
    __shared__ int chosen;
    const int t = threadIdx.x;
    const int64_t row = blockIdx.x;
    const float* xr = x + row * cols;
    int32_t* ci = cand_idx + row * cols;
    float* cv = cand_val + row * cols;
    float* cp = cand_p + row * cols;

    // the best logit and its first index (the answer when the best is not finite)
    float m = -INFINITY;
    for (int j = t; j < cols; j += kThreads) m = fmaxf(m, xr[j]);
    m = block_reduce(m, Max{}, shf);
    int first = INT_MAX;
    for (int j = t; j < cols; j += kThreads)
        if (xr[j] == m) {
            first = j;
            break;
        }
    first = block_reduce(first, Min{}, shi);
    if (!isfinite(m) || first == INT_MAX) {
        if (t == 0) out[row] = first == INT_MAX ? 0 : first;
        return;
    }

    // candidates, in vocabulary order: each thread compacts one contiguous chunk of the row
    const int chunk = (cols + kThreads - 1) / kThreads;
    const int beg = min(cols, t * chunk), end = min(cols, beg + chunk);
    auto is_cand = [&](float v) { return (v - m) / temperature >= -cut; };
    int mine = 0;
    for (int j = beg; j < end; ++j) mine += is_cand(xr[j]);
    int at = block_exclusive_scan(mine, scan_i, &count);
    for (int j = beg; j < end; ++j)
        if (is_cand(xr[j])) ci[at] = j, cv[at] = xr[j], ++at;
    __syncthreads();  // the candidates are visible to the whole block
    const int C = count;

    // top-k: keep keys ≥ the k-th largest
    uint32_t thr = 0;
    if (top_k > 0 && top_k < C)
        thr = bisect(0u, top_k, [&](uint32_t key) {
            int n = 0;
            for (int i = t; i < C; i += kThreads) n += order_key(cv[i]) >= key;
            return block_reduce(n, Sum{}, shi);
        });

    // probabilities of the kept candidates (0 for the rest)
    float mass = 0;
    for (int i = t; i < C; i += kThreads) {
        const float p = order_key(cv[i]) >= thr ? expf((cv[i] - m) / temperature) : 0.0f;
        cp[i] = p;
        mass += p;
    }
    mass = block_reduce(mass, Sum{}, shf);

    // top-p: the highest key whose tokens and those above it reach top_p of the mass
    if (top_p < 1.0f) {
        const float need = top_p * mass;
        thr = bisect(thr, need, [&](uint32_t key) {
            float s = 0;
            for (int i = t; i < C; i += kThreads) s += order_key(cv[i]) >= key ? cp[i] : 0.0f;
            return block_reduce(s, Sum{}, shf);
        });
    }

    // the draw: the first kept token in vocabulary order whose cumulative mass exceeds u · kept
    const int cchunk = (C + kThreads - 1) / kThreads;
    const int cb = min(C, t * cchunk), ce = min(C, cb + cchunk);
    float my_mass = 0;
    int last = -1;
    for (int i = cb; i < ce; ++i)
        if (order_key(cv[i]) >= thr) my_mass += cp[i], last = i;
    if (t == 0) chosen = -1;
    const float before = block_exclusive_scan(my_mass, scan_f, &kept_mass);
    const float target = float(u[row] * double(kept_mass));
    if (my_mass > 0 && before <= target && target < before + my_mass) {
        float left = target - before;
        int pick = last;
        for (int i = cb; i < ce; ++i) {
            if (order_key(cv[i]) < thr) continue;
            left -= cp[i];
            if (left < 0) {
                pick = i;
                break;
            }
        }
        chosen = pick;  // the intervals [before, before + my_mass) are disjoint: one writer at most
    }
    const int last_kept = block_reduce(last, Max{}, shi);  // also orders the write above before the read
    if (t == 0) out[row] = ci[chosen >= 0 ? chosen : last_kept];
}

}  // namespace

size_t sample_scratch_bytes(int n, int cols) { return size_t(n) * size_t(cols) * (sizeof(int32_t) + 2 * sizeof(float)); }

void sample_rows(cudaStream_t stream, int32_t* out, const float* x, int n, int cols, float temperature, int top_k,
                 float top_p, const double* u, void* scratch) {
    if (n <= 0 || cols <= 0) return;
    if (temperature <= 0.0f) {
        argmax_rows(stream, out, x, n, cols);
        return;
    }
    const size_t count = size_t(n) * size_t(cols);
    auto* idx = static_cast<int32_t*>(scratch);
    auto* val = reinterpret_cast<float*>(idx + count);
    auto* p = val + count;
    sample_rows_kernel<<<n, kThreads, 0, stream>>>(out, x, cols, temperature, top_k, top_p, u, cpu::kSampleCut, idx,
                                                   val, p);
    CUDA_CHECK(cudaGetLastError());
}

}  // namespace stitch::cuda

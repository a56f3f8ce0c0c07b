#include "kernels/cpu/ops_cpu.h"

#include "engine/ops.h"
#include "kernels/cpu/blas.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <cmath>
#include <vector>

namespace stitch::cpu {

namespace {

// exp(x) for float32, branch-free so that loops over it vectorise (libm's expf does not):
// 2^n · p(r) with x = n·ln2 + r, |r| ≤ ln2/2, p a degree-6 polynomial. Relative error
// ≤ 2e-7 over [-87, 88]; below that it returns 0 as expf underflows.
[[gnu::always_inline]] inline float exp_f32(float x) {
    x = x < -87.3365447505531f ? -87.3365447505531f : x;
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    // round to nearest by the 1.5·2^23 trick (vectorises, unlike nearbyint)
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return std::bit_cast<float>(std::bit_cast<int32_t>(p) + (int32_t(n) << 23));
}

}  // namespace

void matmul_wt(float* y, const float* x, const float* W, const float* bias, int n, int out, int in) {
    if (n == 1) {
        blas::sgemv_n(out, in, W, in, x, y);
    } else {
        blas::sgemm_nt(n, out, in, x, in, W, in, y, out);
    }
    if (bias) {
#pragma omp parallel for if (int64_t(n) * out > 65536)
        for (int i = 0; i < n; ++i) {
            float* row = y + int64_t(i) * out;
            for (int j = 0; j < out; ++j) row[j] += bias[j];
        }
    }
}

void rmsnorm(float* y, const float* x, const float* w, int n, int d, float eps) {
#pragma omp parallel for if (int64_t(n) * d > 32768)
    for (int i = 0; i < n; ++i) {
        const float* xi = x + int64_t(i) * d;
        float* yi = y + int64_t(i) * d;
        float ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < d; ++j) ss += xi[j] * xi[j];
        float inv = 1.0f / std::sqrt(ss / float(d) + eps);
        for (int j = 0; j < d; ++j) yi[j] = (xi[j] * inv) * w[j];
    }
}

void rope(float* x, int n, int stride, int col0, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq) {
    const int half = head_dim / 2;
#pragma omp parallel if (int64_t(n) * n_heads * head_dim > 32768)
    {
        std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for
        for (int i = 0; i < n; ++i) {
            // Angles in float32 as HF computes them: float(pos) * inv_freq, then cos/sin.
            for (int k = 0; k < half; ++k) {
                float a = float(pos[i]) * inv_freq[k];
                cs[size_t(k)] = std::cos(a);
                sn[size_t(k)] = std::sin(a);
            }
            float* row = x + int64_t(i) * stride + col0;
            for (int h = 0; h < n_heads; ++h) {
                float* v = row + h * head_dim;
                for (int k = 0; k < half; ++k) {
                    float a = v[k], b = v[k + half];
                    v[k] = a * cs[size_t(k)] - b * sn[size_t(k)];
                    v[k + half] = b * cs[size_t(k)] + a * sn[size_t(k)];
                }
            }
        }
    }
}

void gated_act(Activation act, float* out, const float* gate_up, int n, int I) {
#pragma omp parallel for if (int64_t(n) * I > 32768)
    for (int i = 0; i < n; ++i) {
        const float* g = gate_up + int64_t(i) * 2 * I;
        const float* u = g + I;
        float* o = out + int64_t(i) * I;
        switch (act) {
            case Activation::SiLU:
#pragma omp simd
                for (int j = 0; j < I; ++j) o[j] = g[j] / (1.0f + exp_f32(-g[j])) * u[j];
                break;
            case Activation::GeluTanh: {
                // 0.5·g·(1 + tanh(z)) = g·sigmoid(2z) = g / (1 + e^(-2z)), z = √(2/π)(g + 0.044715 g³)
                constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
#pragma omp simd
                for (int j = 0; j < I; ++j) {
                    const float x = g[j];
                    const float z = kBeta * (x + kKappa * x * x * x);
                    o[j] = x / (1.0f + exp_f32(-2.0f * z)) * u[j];
                }
                break;
            }
            case Activation::Gelu:
                for (int j = 0; j < I; ++j) {
                    const float x = g[j];
                    o[j] = x * 0.5f * (1.0f + std::erf(x * float(M_SQRT1_2))) * u[j];
                }
                break;
        }
    }
}

void softcap(float* x, int64_t count, float cap) {
#pragma omp parallel for if (count > 65536)
    for (int64_t i = 0; i < count; ++i) x[i] = std::tanh(x[i] / cap) * cap;
}

void add(float* x, const float* y, int64_t count) {
#pragma omp parallel for simd if (count > 65536)
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void embed(float* x, const float* table, const int32_t* tokens, int n, int d, float scale) {
    for (int i = 0; i < n; ++i) {
        float* row = x + int64_t(i) * d;
        const float* src = table + int64_t(tokens[i]) * d;
        if (scale == 1.0f) {
            std::memcpy(row, src, sizeof(float) * size_t(d));
        } else {
#pragma omp simd
            for (int j = 0; j < d; ++j) row[j] = src[j] * scale;
        }
    }
}

void head_rmsnorm(float* x, int n, int stride, int col0, int n_heads, int head_dim, const float* w, float eps) {
#pragma omp parallel for if (int64_t(n) * n_heads * head_dim > 32768)
    for (int i = 0; i < n; ++i) {
        float* row = x + int64_t(i) * stride + col0;
        for (int h = 0; h < n_heads; ++h) rmsnorm(row + h * head_dim, row + h * head_dim, w, 1, head_dim, eps);
    }
}

void copy2d(float* dst, int dst_ld, const float* src, int src_ld, int rows, int cols) {
    for (int i = 0; i < rows; ++i)
        std::memmove(dst + int64_t(i) * dst_ld, src + int64_t(i) * src_ld, sizeof(float) * size_t(cols));
}

void attention(float* out, const float* q, int q_stride, int n_seqs, const int32_t* row0, const int32_t* len,
               const int32_t* pos0, const float* const* k_base, const float* const* v_base, int kv_stride,
               int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap) {
    constexpr int QB = 64;  // queries per task: one GEMM of QB x keys
    const int group = n_heads / n_kv_heads;
    const int out_stride = n_heads * head_dim;
    struct Task {
        int seq, head, q0, nq;
    };
    std::vector<Task> tasks;
    int max_keys = 1;
    int64_t work = 0;
    for (int s = 0; s < n_seqs; ++s) {
        max_keys = std::max(max_keys, pos0[s] + len[s]);
        work += int64_t(len[s]) * (pos0[s] + len[s]);
        for (int h = 0; h < n_heads; ++h)
            for (int q0 = 0; q0 < len[s]; q0 += QB) tasks.push_back({s, h, q0, std::min(QB, len[s] - q0)});
    }
    work *= int64_t(n_heads) * head_dim;
    // BLAS called inside the parallel region runs single-threaded (OpenBLAS checks omp_in_parallel).
#pragma omp parallel if (work > (1 << 17))
    {
        std::vector<float> S(static_cast<size_t>(QB) * size_t(max_keys));
#pragma omp for schedule(dynamic, 1)
        for (size_t t = 0; t < tasks.size(); ++t) {
            const Task& tk = tasks[t];
            const int kvh = tk.head / group;
            const int p_first = pos0[tk.seq] + tk.q0;         // position of the block's first query
            const int p_last = p_first + tk.nq - 1;
            const int k_lo = window > 0 ? std::max(0, p_first - window + 1) : 0;
            const int nk = p_last + 1 - k_lo;
            const float* Q = q + int64_t(row0[tk.seq] + tk.q0) * q_stride + tk.head * head_dim;
            const float* K = k_base[tk.seq] + int64_t(k_lo) * kv_stride + kvh * head_dim;
            const float* V = v_base[tk.seq] + int64_t(k_lo) * kv_stride + kvh * head_dim;
            float* O = out + int64_t(row0[tk.seq] + tk.q0) * out_stride + tk.head * head_dim;
            blas::sgemm_nt(tk.nq, nk, head_dim, Q, q_stride, K, kv_stride, S.data(), nk);
            for (int i = 0; i < tk.nq; ++i) {
                const int p = p_first + i;
                const int lo = (window > 0 ? std::max(0, p - window + 1) : 0) - k_lo;  // visible keys [lo, hi]
                const int hi = p - k_lo;
                float* row = S.data() + size_t(i) * size_t(nk);
                float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
                for (int j = lo; j <= hi; ++j) {
                    float v = row[j] * scale;
                    if (softcap > 0) v = softcap * std::tanh(v / softcap);
                    row[j] = v;
                    mx = std::max(mx, v);
                }
                float sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int j = lo; j <= hi; ++j) sum += row[j] = exp_f32(row[j] - mx);
                const float inv = 1.0f / sum;
                std::fill(row, row + lo, 0.0f);
#pragma omp simd
                for (int j = lo; j <= hi; ++j) row[j] *= inv;
                std::fill(row + hi + 1, row + nk, 0.0f);
            }
            blas::sgemm_nn(tk.nq, head_dim, nk, S.data(), nk, V, kv_stride, O, out_stride);
        }
    }
}

void add_rows(float* x, int d, const int32_t* rows, int n_rows, const float* v, float alpha) {
    for (int i = 0; i < n_rows; ++i) {
        float* row = x + int64_t(rows[i]) * d;
        for (int j = 0; j < d; ++j) row[j] += alpha * v[j];
    }
}

void ablate_rows(float* x, int d, const int32_t* rows, int n_rows, const float* u, float alpha) {
    for (int i = 0; i < n_rows; ++i) {
        float* row = x + int64_t(rows[i]) * d;
        double dot = 0;
        for (int j = 0; j < d; ++j) dot += double(row[j]) * u[j];
        const float f = float(alpha * dot);
        for (int j = 0; j < d; ++j) row[j] -= f * u[j];
    }
}

void replace_rows(float* x, int d, const int32_t* rows, int n_rows, const float* src, int64_t src_ld, float alpha) {
    for (int i = 0; i < n_rows; ++i) {
        float* row = x + int64_t(rows[i]) * d;
        const float* s = src + i * src_ld;
        if (alpha == 1.0f)
            std::memcpy(row, s, sizeof(float) * size_t(d));
        else
            for (int j = 0; j < d; ++j) row[j] = (1.0f - alpha) * row[j] + alpha * s[j];
    }
}

void argmax_rows(int32_t* out, const float* x, int n, int cols) {
    for (int i = 0; i < n; ++i) {
        const float* row = x + int64_t(i) * cols;
        int32_t best = 0;
        for (int j = 1; j < cols; ++j)
            if (row[j] > row[best]) best = j;
        out[i] = best;
    }
}

int32_t sample_row(const float* x, int cols, float temperature, int top_k, float top_p, double u) {
    if (cols <= 0) return 0;
    int32_t best = 0;
    for (int j = 1; j < cols; ++j)
        if (x[j] > x[best]) best = j;
    if (temperature <= 0.0f || !std::isfinite(x[best])) return best;
    const float mx = x[best];
    // candidates: within kSampleCut nats of the best
    std::vector<int32_t> cand;
    for (int j = 0; j < cols; ++j)
        if ((x[j] - mx) / temperature >= -kSampleCut) cand.push_back(j);
    float thr = -INFINITY;  // kept: x ≥ thr
    if (top_k > 0 && size_t(top_k) < cand.size()) {
        std::vector<float> v(cand.size());
        for (size_t i = 0; i < cand.size(); ++i) v[i] = x[cand[i]];
        std::nth_element(v.begin(), v.begin() + (top_k - 1), v.end(), std::greater<float>());
        thr = v[size_t(top_k - 1)];
    }
    auto prob = [&](int32_t j) { return x[j] >= thr ? double(std::exp((x[j] - mx) / temperature)) : 0.0; };
    if (top_p < 1.0f) {
        std::vector<int32_t> order;
        double mass = 0;
        for (int32_t j : cand)
            if (x[j] >= thr) order.push_back(j), mass += prob(j);
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
        double cum = 0;
        for (int32_t j : order) {
            cum += prob(j);
            if (cum >= double(top_p) * mass) {
                thr = x[j];
                break;
            }
        }
    }
    double kept = 0;
    int32_t last = best;
    for (int32_t j : cand)
        if (x[j] >= thr) kept += prob(j), last = j;
    double target = u * kept;
    for (int32_t j : cand) {
        if (x[j] < thr) continue;
        target -= prob(j);
        if (target < 0) return j;
    }
    return last;  // rounding left the target at the very end
}

float round_bf16(float x) {
    uint32_t u = std::bit_cast<uint32_t>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::bit_cast<float>((u | 0x00400000u) & 0xffff0000u);  // quiet NaN
    // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the dropped
    // half is above one half, or is one half and the kept value is odd: round to nearest even.
    u += 0x7fffu + ((u >> 16) & 1u);
    return std::bit_cast<float>(u & 0xffff0000u);
}

}  // namespace stitch::cpu

namespace stitch {

const Ops& cpu_ops() {
    static const Ops ops{.device = Device::CPU,
                         .name = "cpu",
                         .embed = cpu::embed,
                         .matmul_wt = cpu::matmul_wt,
                         .rmsnorm = cpu::rmsnorm,
                         .head_rmsnorm = cpu::head_rmsnorm,
                         .rope = cpu::rope,
                         .gated_act = cpu::gated_act,
                         .softcap = cpu::softcap,
                         .add = cpu::add,
                         .copy2d = cpu::copy2d,
                         .attention = cpu::attention};
    return ops;
}

}  // namespace stitch

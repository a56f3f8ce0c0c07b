#include "kernels/cpu/ops_cpu.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace stitch::cpu {

void matmul_wt(float* y, const float* x, const float* W, const float* bias, int n, int out, int in) {
    if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, W, in, x, 1, 0.0f, y, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
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

void silu_mul(float* out, const float* gate_up, int n, int I) {
#pragma omp parallel for if (int64_t(n) * I > 32768)
    for (int i = 0; i < n; ++i) {
        const float* g = gate_up + int64_t(i) * 2 * I;
        const float* u = g + I;
        float* o = out + int64_t(i) * I;
        for (int j = 0; j < I; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
    }
}

void add(float* x, const float* y, int64_t count) {
#pragma omp parallel for simd if (count > 65536)
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void attention(float* out, const float* q, int q_stride, const int32_t* row_cache, const int32_t* row_pos, int n,
               const float* const* k_base, const float* const* v_base, int kv_stride, int n_heads, int n_kv_heads,
               int head_dim, float scale, int window, float softcap) {
    const int group = n_heads / n_kv_heads;
    int max_pos = 0;
    for (int i = 0; i < n; ++i) max_pos = std::max(max_pos, row_pos[i]);
    const int64_t work = int64_t(n) * n_heads * (max_pos + 1) * head_dim;
#pragma omp parallel if (work > (1 << 16))
    {
        std::vector<float> scores(static_cast<size_t>(max_pos) + 1);
        std::vector<float> acc(static_cast<size_t>(head_dim));
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int i = 0; i < n; ++i) {
            for (int h = 0; h < n_heads; ++h) {
                const int p = row_pos[i];
                const int first = window > 0 ? std::max(0, p - window + 1) : 0;
                const float* qh = q + int64_t(i) * q_stride + h * head_dim;
                const int kvh = h / group;
                const float* K = k_base[row_cache[i]] + kvh * head_dim;
                const float* V = v_base[row_cache[i]] + kvh * head_dim;
                float mx = -INFINITY;
                for (int j = first; j <= p; ++j) {
                    const float* kj = K + int64_t(j) * kv_stride;
                    float s = 0;
#pragma omp simd reduction(+ : s)
                    for (int d = 0; d < head_dim; ++d) s += qh[d] * kj[d];
                    s *= scale;
                    if (softcap > 0) s = softcap * std::tanh(s / softcap);
                    scores[size_t(j)] = s;
                    mx = std::max(mx, s);
                }
                float sum = 0;
                for (int j = first; j <= p; ++j) {
                    float e = std::exp(scores[size_t(j)] - mx);
                    scores[size_t(j)] = e;
                    sum += e;
                }
                std::fill(acc.begin(), acc.end(), 0.0f);
                for (int j = first; j <= p; ++j) {
                    const float w = scores[size_t(j)];
                    const float* vj = V + int64_t(j) * kv_stride;
#pragma omp simd
                    for (int d = 0; d < head_dim; ++d) acc[size_t(d)] += w * vj[d];
                }
                float* o = out + int64_t(i) * n_heads * head_dim + h * head_dim;
                const float inv = 1.0f / sum;
                for (int d = 0; d < head_dim; ++d) o[d] = acc[size_t(d)] * inv;
            }
        }
    }
}

}  // namespace stitch::cpu

#include "eval/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace stitch {

void log_softmax(const float* logits, int n, double* out) {
    double mx = -INFINITY;
    for (int i = 0; i < n; ++i) mx = std::max(mx, double(logits[i]));
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    for (int i = 0; i < n; ++i) out[i] = double(logits[i]) - lse;
}

double kl_from_logits(const double* logp, const float* q_logits, int n, std::vector<double>& scratch) {
    scratch.resize(size_t(n));
    log_softmax(q_logits, n, scratch.data());
    double kl = 0;
    for (int i = 0; i < n; ++i) {
        if (logp[i] == -INFINITY) continue;
        kl += std::exp(logp[i]) * (logp[i] - scratch[size_t(i)]);
    }
    return std::max(kl, 0.0);
}

std::vector<std::string> rouge_words(const std::string& text) {
    std::vector<std::string> out;
    std::string cur;
    for (unsigned char ch : text) {
        if (std::isalnum(ch) || ch >= 0x80) {
            cur += char(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
        } else if (!cur.empty()) {
            out.push_back(std::move(cur));
            cur.clear();
        }
    }
    if (!cur.empty()) out.push_back(std::move(cur));
    return out;
}

double rouge_l_f1(const std::vector<std::string>& a, const std::vector<std::string>& b) {
    if (a.empty() && b.empty()) return 1.0;
    if (a.empty() || b.empty()) return 0.0;
    std::vector<int> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j)
            cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
        std::swap(prev, cur);
    }
    const double lcs = prev[b.size()];
    if (lcs == 0) return 0.0;
    const double p = lcs / double(b.size()), r = lcs / double(a.size());
    return 2 * p * r / (p + r);
}

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
    double d = 0, na = 0, nb = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d += a[i] * b[i], na += a[i] * a[i], nb += b[i] * b[i];
    return na > 0 && nb > 0 ? d / std::sqrt(na * nb) : 0.0;
}

}  // namespace stitch

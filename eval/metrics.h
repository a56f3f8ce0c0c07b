// Reproducible metrics for the transfer experiments (in place of the paper's LLM judge):
// next-token KL between two distributions, ROUGE-L between completions, cosine.
#pragma once
#include <string>
#include <vector>

namespace stitch {

// log-softmax of n logits into out (double, for exact KL sums).
void log_softmax(const float* logits, int n, double* out);

// KL(P || Q) = Σ p (log p − log q) in nats, from P's log-probabilities and Q's raw logits.
double kl_from_logits(const double* logp, const float* q_logits, int n, std::vector<double>& scratch);

// Words of a text for ROUGE: lower-cased runs of letters and digits (UTF-8 bytes ≥ 0x80 count as
// letters), everything else a separator.
std::vector<std::string> rouge_words(const std::string& text);

// ROUGE-L F1 of two word sequences (longest common subsequence; β = 1). Both empty → 1,
// one empty → 0.
double rouge_l_f1(const std::vector<std::string>& a, const std::vector<std::string>& b);

// cos(a, b); 0 when either is the zero vector.
double cosine(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace stitch

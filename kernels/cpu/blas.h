// The CPU GEMMs go through OpenBLAS, loaded at first use rather than linked.
//
// Why: OpenBLAS picks its kernels by CPU model when the library is loaded, and the Debian
// build (0.3.21) does not know recent Xeons (e.g. family 6 model 207) and falls back to its
// generic SSE3 "Prescott" kernels: 4-5x slower GEMMs on this project's own machines.
// Loading it ourselves lets us choose the kernel family from the CPU's feature flags first
// (OPENBLAS_CORETYPE: SkylakeX with AVX-512, Haswell with AVX2+FMA), unless the user has
// set OPENBLAS_CORETYPE already, which always wins.
#pragma once
#include <string>

namespace stitch::blas {

// y[m, n] = A[m, k] · B[n, k]^T (row-major), beta = 0.
void sgemm_nt(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
// C[m, n] = A[m, k] · B[k, n] (row-major), beta = 0.
void sgemm_nn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
// General row-major GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, op(X) = X or Xᵀ as the
// flags say (A is [m, k] or [k, m]; B is [k, n] or [n, k]). The map trainer accumulates
// gradients with beta = 1; the double twin serves its double-precision gradient check.
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc);
void dgemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
           int ldb, double beta, double* C, int ldc);
// y[m] = A[m, k] · x[k] (row-major).
void sgemv_n(int m, int k, const float* A, int lda, const float* x, float* y);
// "OpenBLAS 0.3.21 ... (core SkylakeX)" — for inspect/bench output.
std::string describe();

}  // namespace stitch::blas

#include "kernels/cpu/blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "engine/error.h"

namespace stitch::blas {
namespace {

// CBLAS enums as the ABI defines them (cblas.h): RowMajor 101, NoTrans 111, Trans 112.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using sgemm_fn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using dgemm_fn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*, int);
using sgemv_fn = void (*)(int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using str_fn = char* (*)();

struct Lib {
    sgemm_fn sgemm = nullptr;
    sgemv_fn sgemv = nullptr;
    dgemm_fn dgemm = nullptr;
    str_fn corename = nullptr, config = nullptr;
    std::string chosen;  // what we set OPENBLAS_CORETYPE to, if anything
};

const Lib& lib() {
    static Lib l;
    static std::once_flag once;
    std::call_once(once, [] {
        if (!std::getenv("OPENBLAS_CORETYPE")) {
            __builtin_cpu_init();
            if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
                l.chosen = "SkylakeX";
            else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
                l.chosen = "Haswell";
            if (!l.chosen.empty()) setenv("OPENBLAS_CORETYPE", l.chosen.c_str(), 0);
        }
        const char* candidates[] = {"/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
                                    "libopenblas.so.0", "libopenblas.so"};
        void* h = nullptr;
        for (const char* c : candidates)
            if ((h = dlopen(c, RTLD_NOW | RTLD_LOCAL))) break;
        if (!h) fail("libopenblas.so.0", "cannot load OpenBLAS (install libopenblas-openmp-dev: make deps)");
        l.sgemm = reinterpret_cast<sgemm_fn>(dlsym(h, "cblas_sgemm"));
        l.sgemv = reinterpret_cast<sgemv_fn>(dlsym(h, "cblas_sgemv"));
        l.dgemm = reinterpret_cast<dgemm_fn>(dlsym(h, "cblas_dgemm"));
        l.corename = reinterpret_cast<str_fn>(dlsym(h, "openblas_get_corename"));
        l.config = reinterpret_cast<str_fn>(dlsym(h, "openblas_get_config"));
        if (!l.sgemm || !l.sgemv || !l.dgemm) fail("libopenblas.so.0", "has no cblas_sgemm/cblas_sgemv/cblas_dgemm");
    });
    return l;
}

}  // namespace

void sgemm_nt(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    lib().sgemm(kRowMajor, kNoTrans, kTrans, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
}

void sgemm_nn(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    lib().sgemm(kRowMajor, kNoTrans, kNoTrans, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
}

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc) {
    lib().sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, alpha, A, lda, B, ldb, beta,
                C, ldc);
}

void dgemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* A, int lda, const double* B,
           int ldb, double beta, double* C, int ldc) {
    lib().dgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, alpha, A, lda, B, ldb, beta,
                C, ldc);
}

void sgemv_n(int m, int k, const float* A, int lda, const float* x, float* y) {
    lib().sgemv(kRowMajor, kNoTrans, m, k, 1.0f, A, lda, x, 1, 0.0f, y, 1);
}

std::string describe() {
    const Lib& l = lib();
    std::string s = l.config ? l.config() : "OpenBLAS";
    if (l.corename) s += std::string(" (kernels ") + l.corename() + (l.chosen.empty() ? ")" : ", chosen from CPU flags)");
    return s;
}

}  // namespace stitch::blas

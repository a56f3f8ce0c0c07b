#include "kernels/cuda/cuda_util.h"

#include <dlfcn.h>

#include <mutex>

#include "kernels/cuda/device.h"

namespace stitch::cuda {

[[noreturn]] void throw_cuda(cudaError_t e, const char* expr, const char* src, int line) {
    throw_error("cuda", std::string(cudaGetErrorString(e)) + " (" + expr + " at " + src + ":" + std::to_string(line) + ")");
}

[[noreturn]] void throw_cublas(cublasStatus_t s, const char* expr, const char* src, int line) {
    const char* what = cublas().status_string ? cublas().status_string(s) : "cuBLAS error";
    throw_error("cublas", std::string(what) + " (" + expr + " at " + src + ":" + std::to_string(line) + ")");
}

int device_count(std::string* why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why) {
            // Without a driver the runtime reports "driver version is insufficient"; say what is missing.
            void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
            if (driver) dlclose(driver);
            *why = driver ? cudaGetErrorString(e) : "no NVIDIA driver: libcuda.so.1 not found";
        }
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        return 0;
    }
    if (n == 0 && why) *why = "no CUDA device";
    return n;
}

std::string device_name(int device) {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
}

const CublasApi& cublas() {
    static CublasApi api;
    static std::string error;
    static std::once_flag once;
    std::call_once(once, [] {
        const char* candidates[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so",
                                    "/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so"};
        void* h = nullptr;
        for (const char* c : candidates)
            if ((h = dlopen(c, RTLD_NOW | RTLD_LOCAL))) break;
        if (!h) {
            error = "cannot load libcublas.so (install the CUDA toolkit's cuBLAS or add it to LD_LIBRARY_PATH)";
            return;
        }
        auto sym = [&](const char* name) {
            void* p = dlsym(h, name);
            if (!p && error.empty()) error = std::string("libcublas has no ") + name;
            return p;
        };
        api.create = reinterpret_cast<decltype(api.create)>(sym("cublasCreate_v2"));
        api.destroy = reinterpret_cast<decltype(api.destroy)>(sym("cublasDestroy_v2"));
        api.set_stream = reinterpret_cast<decltype(api.set_stream)>(sym("cublasSetStream_v2"));
        api.set_math_mode = reinterpret_cast<decltype(api.set_math_mode)>(sym("cublasSetMathMode"));
        api.sgemm = reinterpret_cast<decltype(api.sgemm)>(sym("cublasSgemm_v2"));
        api.gemm_ex = reinterpret_cast<decltype(api.gemm_ex)>(sym("cublasGemmEx"));
        api.status_string = reinterpret_cast<decltype(api.status_string)>(sym("cublasGetStatusString"));
    });
    if (!error.empty()) throw_error("libcublas.so", error);
    return api;
}

void sgemm_rm(cublasHandle_t h, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
    // Row-major X is column-major Xᵀ: compute Cᵀ[n, m] = op(B)ᵀ · op(A)ᵀ.
    CUBLAS_CHECK(cublas().sgemm(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
                                &alpha, B, ldb, A, lda, &beta, C, ldc));
}

}  // namespace stitch::cuda

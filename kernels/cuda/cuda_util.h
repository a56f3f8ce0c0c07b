// Shared by every CUDA file (nvcc only): error checks that turn CUDA and cuBLAS failures into
// stitch::Error (one line, exit status 2, like every other error), device buffers owned by
// RAII, and cuBLAS loaded at first use.
//
// Why cuBLAS is loaded rather than linked: libcublas + libcublasLt cost every stitch run
// ~75 ms and ~215 MB of resident memory at start-up even when no GPU is used (measured on
// this project's machines), and a binary linked against them will not start where they are
// not installed. The CUDA runtime itself is linked statically (libcudart_static), which
// costs nothing until the first call.
//
// No fmt or engine headers here: nvcc cannot compile fmt 9's format-string checks.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

namespace stitch::cuda {

// Throws stitch::Error(file, msg); defined in cuda_error.cpp (compiled by the host compiler).
[[noreturn]] void throw_error(const char* file, const std::string& msg);
[[noreturn]] void throw_cuda(cudaError_t e, const char* expr, const char* src, int line);
[[noreturn]] void throw_cublas(cublasStatus_t s, const char* expr, const char* src, int line);

#define CUDA_CHECK(expr)                                                                   \
    do {                                                                                   \
        cudaError_t stitch_e_ = (expr);                                                    \
        if (stitch_e_ != cudaSuccess) ::stitch::cuda::throw_cuda(stitch_e_, #expr, __FILE__, __LINE__); \
    } while (0)
#define CUBLAS_CHECK(expr)                                                                 \
    do {                                                                                   \
        cublasStatus_t stitch_s_ = (expr);                                                 \
        if (stitch_s_ != CUBLAS_STATUS_SUCCESS) ::stitch::cuda::throw_cublas(stitch_s_, #expr, __FILE__, __LINE__); \
    } while (0)

// The cuBLAS entry points stitch uses, from libcublas loaded at first use. Throws when the
// library cannot be found.
struct CublasApi {
    decltype(&cublasCreate_v2) create = nullptr;
    decltype(&cublasDestroy_v2) destroy = nullptr;
    decltype(&cublasSetStream_v2) set_stream = nullptr;
    decltype(&cublasSetMathMode) set_math_mode = nullptr;
    decltype(&cublasSgemm_v2) sgemm = nullptr;
    // Spelled out: cublas_api.h overloads cublasGemmEx with an inline cudaDataType-compute shim.
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
    decltype(&cublasGetStatusString) status_string = nullptr;
};
const CublasApi& cublas();

// Row-major C[m, n] = alpha · op(A) · op(B) + beta · C, with op given by the flags, on cuBLAS
// (column-major) by computing Cᵀ = op(B)ᵀ · op(A)ᵀ. Shapes as blas::sgemm on the CPU.
void sgemm_rm(cublasHandle_t h, bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc);

// An array of n elements allocated by one CUDA allocator and freed with its owner: device
// memory (DeviceBuffer) or page-locked host memory (PinnedBuffer, what asynchronous copies
// between host and device need and run at full speed from).
enum class Memory { Device, Pinned };

template <typename T, Memory M>
class CudaArray {
public:
    CudaArray() = default;
    explicit CudaArray(size_t n) : n_(n) {
        if (!n) return;
        void** p = reinterpret_cast<void**>(&p_);
        if constexpr (M == Memory::Device) CUDA_CHECK(cudaMalloc(p, n * sizeof(T)));
        else CUDA_CHECK(cudaMallocHost(p, n * sizeof(T)));
    }
    ~CudaArray() {
        if (!p_) return;
        if constexpr (M == Memory::Device) cudaFree(p_);
        else cudaFreeHost(p_);
    }
    CudaArray(CudaArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    CudaArray& operator=(CudaArray&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    CudaArray(const CudaArray&) = delete;
    CudaArray& operator=(const CudaArray&) = delete;
    T* get() const { return p_; }
    size_t size() const { return n_; }
    void zero(cudaStream_t s) {
        if (n_) CUDA_CHECK(cudaMemsetAsync(p_, 0, n_ * sizeof(T), s));
    }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

template <typename T>
using DeviceBuffer = CudaArray<T, Memory::Device>;
template <typename T>
using PinnedBuffer = CudaArray<T, Memory::Pinned>;

}  // namespace stitch::cuda

// Device ceilings for `stitch bench` (bench_cuda.h): copy bandwidth and bf16 GEMM throughput,
// timed with CUDA events on the legacy default stream.
#include "kernels/cuda/bench_cuda.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_util.h"

namespace stitch::cuda {
namespace {

// Events that time work queued on stream 0; destroyed with their owner.
class EventTimer {
public:
    EventTimer() {
        CUDA_CHECK(cudaEventCreate(&start_));
        CUDA_CHECK(cudaEventCreate(&stop_));
    }
    ~EventTimer() {
        cudaEventDestroy(start_);
        cudaEventDestroy(stop_);
    }
    EventTimer(const EventTimer&) = delete;
    EventTimer& operator=(const EventTimer&) = delete;
    void start() { CUDA_CHECK(cudaEventRecord(start_, 0)); }
    double stop_seconds() {
        CUDA_CHECK(cudaEventRecord(stop_, 0));
        CUDA_CHECK(cudaEventSynchronize(stop_));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
        return double(ms) / 1e3;
    }

private:
    cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// x[i] = a value in [-1, 1) from a hash of (i, seed): cheap, deterministic, not all zeros.
__global__ void fill_bf16(__nv_bfloat16* x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 2654435761u ^ (uint32_t(i >> 32) + seed) * 2246822519u;
        h ^= h >> 15;
        h *= 2654435761u;
        h ^= h >> 13;
        x[i] = __float2bfloat16(float(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

void fill(DeviceBuffer<__nv_bfloat16>& b, uint32_t seed) {
    fill_bf16<<<1024, 256>>>(b.get(), b.size(), seed);
    CUDA_CHECK(cudaGetLastError());
}

// cuBLAS handle owned by one measurement.
class Handle {
public:
    Handle() { CUBLAS_CHECK(cublas().create(&h_)); }
    ~Handle() {
        if (h_) cublas().destroy(h_);
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    cublasHandle_t get() const { return h_; }

private:
    cublasHandle_t h_ = nullptr;
};

}  // namespace

double measure_copy_gb_s(size_t bytes, int reps) {
    DeviceBuffer<uint8_t> src(bytes), dst(bytes);
    CUDA_CHECK(cudaMemset(src.get(), 0x5a, bytes));
    CUDA_CHECK(cudaMemset(dst.get(), 0, bytes));
    CUDA_CHECK(cudaDeviceSynchronize());
    EventTimer t;
    double best = 1e30;
    for (int r = 0; r < reps + 1; ++r) {  // the first copy is the warm-up
        t.start();
        CUDA_CHECK(cudaMemcpy(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice));
        const double s = t.stop_seconds();
        if (r > 0) best = std::min(best, s);
    }
    return 2.0 * double(bytes) / best / 1e9;
}

double measure_gemm_tflops(int n, int reps) {
    const size_t elems = size_t(n) * size_t(n);
    DeviceBuffer<__nv_bfloat16> a(elems), b(elems), c(elems);
    fill(a, 1);
    fill(b, 2);
    c.zero(0);
    Handle h;
    const CublasApi& api = cublas();
    CUBLAS_CHECK(api.set_stream(h.get(), 0));
    const float alpha = 1.0f, beta = 0.0f;
    auto gemm = [&] {
        CUBLAS_CHECK(api.gemm_ex(h.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.get(), CUDA_R_16BF, n, b.get(),
                                 CUDA_R_16BF, n, &beta, c.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    };
    gemm();  // warm-up: cuBLAS picks and loads its kernel
    gemm();
    CUDA_CHECK(cudaDeviceSynchronize());
    EventTimer t;
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        t.start();
        gemm();
        best = std::min(best, t.stop_seconds());
    }
    return 2.0 * double(n) * double(n) * double(n) / best / 1e12;
}

double nominal_memory_gb_s() {
    int dev = 0, clock_khz = 0, bus_bits = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return 2.0 * double(clock_khz) * 1e3 * double(bus_bits) / 8.0 / 1e9;
}

}  // namespace stitch::cuda

// Map-trainer kernels and the CUDA compute path behind kernels/cuda/map_train.h.
// One launch per elementwise stage; GEMMs on cuBLAS in f32 with the default (non-TF32)
// math mode so results stay within float rounding of the CPU path.
#include "kernels/cuda/map_train.h"

#include <cmath>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device.h"

namespace stitch::cuda {
namespace {

constexpr int kBlock = 256;

int blocks_for(long n, int block = kBlock) { return int(std::min<long>((n + block - 1) / block, 65535L * 8)); }

// z[r, j] += b[j], then ReLU when asked. Grid-stride over rows·out.
__global__ void bias_act_kernel(float* z, const float* b, long n, int out, bool relu) {
    for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
        float v = z[i] + b[i % out];
        z[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

__device__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // shared may still be read from the previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? shared[threadIdx.x] : 0.0f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;  // valid in thread 0
}

// One block per row: the row's Σ(ŷ−y)², Σŷy, Σŷ², Σy², and (grad != nullptr) the loss
// gradient 2·w_r·(ŷ − y)/d.
__global__ void row_stats_kernel(const float* pred, const float* y, const float* row_weight, int d, float* grad,
                                 float* stats) {
    __shared__ float shared[32];
    const long r = blockIdx.x;
    const float* p = pred + r * d;
    const float* t = y + r * d;
    const float scale = grad ? 2.0f * row_weight[r] / float(d) : 0.0f;
    float sse = 0, dot = 0, pp = 0, yy = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float e = p[j] - t[j];
        sse += e * e;
        dot += p[j] * t[j];
        pp += p[j] * p[j];
        yy += t[j] * t[j];
        if (grad) grad[r * d + j] = scale * e;
    }
    sse = block_sum(sse, shared);
    dot = block_sum(dot, shared);
    pp = block_sum(pp, shared);
    yy = block_sum(yy, shared);
    if (threadIdx.x == 0) {
        stats[4 * r + 0] = sse;
        stats[4 * r + 1] = dot;
        stats[4 * r + 2] = pp;
        stats[4 * r + 3] = yy;
    }
}

// gb[j] = Σ_r dz[r, j]: one thread per column, reads coalesced across the warp.
__global__ void column_sum_kernel(const float* dz, int rows, int out, float* gb) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    float s = 0;
    for (int r = 0; r < rows; ++r) s += dz[long(r) * out + j];
    gb[j] = s;
}

// Through the ReLU: the gradient survives where the activation was positive.
__global__ void relu_backward_kernel(float* da, const float* a, long n) {
    for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
        if (!(a[i] > 0.0f)) da[i] = 0.0f;
}

// torch.optim.AdamW's update, fused (the CPU twin is adamw_update in mapping/mapper.cpp).
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, long n, float decay, float step_size,
                             float bc2_sqrt, float w1, float b2, float w2, float eps) {
    for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
        const float gi = g[i];
        const float mi = m[i] + w1 * (gi - m[i]);
        const float vi = v[i] * b2 + w2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = p[i] * decay - step_size * (mi / denom);
    }
}

}  // namespace

struct MapTrainCuda::Impl {
    struct Layer {
        MapLayerShape shape;
        DeviceBuffer<float> W, b, gW, gb, mW, mb, vW, vb, act, dact;
    };
    std::vector<Layer> layers;
    int max_rows = 0;
    DeviceBuffer<float> x, y, w, stats;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;

    ~Impl() {
        if (blas) cublas().destroy(blas);
        if (stream) cudaStreamDestroy(stream);
    }

    void check_rows(int rows) const {
        if (rows < 0 || rows > max_rows)
            throw_error("cuda", "internal: " + std::to_string(rows) + " rows > capacity " + std::to_string(max_rows));
    }

    void upload(const float* xh, const float* yh, int rows) {
        const int d_in = layers.front().shape.in, d_out = layers.back().shape.out;
        CUDA_CHECK(cudaMemcpyAsync(x.get(), xh, sizeof(float) * size_t(rows) * d_in, cudaMemcpyHostToDevice, stream));
        if (yh)
            CUDA_CHECK(cudaMemcpyAsync(y.get(), yh, sizeof(float) * size_t(rows) * d_out, cudaMemcpyHostToDevice, stream));
    }

    void forward(int rows) {
        const float* in = x.get();
        for (size_t l = 0; l < layers.size(); ++l) {
            Layer& L = layers[l];
            const auto [out, in_dim] = L.shape;
            sgemm_rm(blas, false, true, rows, out, in_dim, 1.0f, in, in_dim, L.W.get(), in_dim, 0.0f, L.act.get(), out);
            const long n = long(rows) * out;
            if (n > 0)
                bias_act_kernel<<<blocks_for(n), kBlock, 0, stream>>>(L.act.get(), L.b.get(), n, out, l + 1 < layers.size());
            CUDA_CHECK(cudaGetLastError());
            in = L.act.get();
        }
    }

    void stats_to_host(int rows, float* host) {
        CUDA_CHECK(cudaMemcpyAsync(host, stats.get(), sizeof(float) * 4 * size_t(rows), cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
};

MapTrainCuda::MapTrainCuda(const std::vector<MapLayerShape>& shapes, int max_rows) : impl_(std::make_unique<Impl>()) {
    std::string why;
    if (device_count(&why) == 0) throw_error("--device", "cuda requested but there is no CUDA device (" + why + ")");
    const CublasApi& api = cublas();
    Impl& I = *impl_;
    I.max_rows = max_rows;
    CUDA_CHECK(cudaStreamCreate(&I.stream));
    CUBLAS_CHECK(api.create(&I.blas));
    CUBLAS_CHECK(api.set_stream(I.blas, I.stream));
    CUBLAS_CHECK(api.set_math_mode(I.blas, CUBLAS_DEFAULT_MATH));  // plain f32, no TF32
    for (const auto& s : shapes) {
        const size_t nw = size_t(s.out) * size_t(s.in), nb = size_t(s.out), na = size_t(max_rows) * size_t(s.out);
        Impl::Layer L{s,
                      DeviceBuffer<float>(nw), DeviceBuffer<float>(nb), DeviceBuffer<float>(nw), DeviceBuffer<float>(nb),
                      DeviceBuffer<float>(nw), DeviceBuffer<float>(nb), DeviceBuffer<float>(nw), DeviceBuffer<float>(nb),
                      DeviceBuffer<float>(na), DeviceBuffer<float>(na)};
        L.mW.zero(I.stream);
        L.mb.zero(I.stream);
        L.vW.zero(I.stream);
        L.vb.zero(I.stream);
        I.layers.push_back(std::move(L));
    }
    I.x = DeviceBuffer<float>(size_t(max_rows) * size_t(shapes.front().in));
    I.y = DeviceBuffer<float>(size_t(max_rows) * size_t(shapes.back().out));
    I.w = DeviceBuffer<float>(size_t(max_rows));
    I.stats = DeviceBuffer<float>(4 * size_t(max_rows));
    CUDA_CHECK(cudaStreamSynchronize(I.stream));
}

MapTrainCuda::~MapTrainCuda() = default;

void MapTrainCuda::set_params(int layer, const float* W, const float* b) {
    auto& L = impl_->layers.at(size_t(layer));
    CUDA_CHECK(cudaMemcpy(L.W.get(), W, sizeof(float) * L.W.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(L.b.get(), b, sizeof(float) * L.b.size(), cudaMemcpyHostToDevice));
}

void MapTrainCuda::get_params(int layer, float* W, float* b) const {
    auto& L = impl_->layers.at(size_t(layer));
    CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
    CUDA_CHECK(cudaMemcpy(W, L.W.get(), sizeof(float) * L.W.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(b, L.b.get(), sizeof(float) * L.b.size(), cudaMemcpyDeviceToHost));
}

void MapTrainCuda::train_step(const float* xh, const float* yh, const float* wh, int rows, const AdamWParams& p, int step,
                              float* stats) {
    Impl& I = *impl_;
    I.check_rows(rows);
    if (rows == 0) return;
    I.upload(xh, yh, rows);
    CUDA_CHECK(cudaMemcpyAsync(I.w.get(), wh, sizeof(float) * size_t(rows), cudaMemcpyHostToDevice, I.stream));
    I.forward(rows);
    const int d = I.layers.back().shape.out;
    row_stats_kernel<<<rows, kBlock, 0, I.stream>>>(I.layers.back().act.get(), I.y.get(), I.w.get(), d,
                                                    I.layers.back().dact.get(), I.stats.get());
    CUDA_CHECK(cudaGetLastError());
    for (int l = int(I.layers.size()) - 1; l >= 0; --l) {
        auto& L = I.layers[size_t(l)];
        const auto [out, in_dim] = L.shape;
        const float* in = l == 0 ? I.x.get() : I.layers[size_t(l) - 1].act.get();
        sgemm_rm(I.blas, true, false, out, in_dim, rows, 1.0f, L.dact.get(), out, in, in_dim, 0.0f, L.gW.get(), in_dim);
        column_sum_kernel<<<(out + kBlock - 1) / kBlock, kBlock, 0, I.stream>>>(L.dact.get(), rows, out, L.gb.get());
        CUDA_CHECK(cudaGetLastError());
        if (l == 0) break;
        auto& P = I.layers[size_t(l) - 1];
        sgemm_rm(I.blas, false, false, rows, in_dim, out, 1.0f, L.dact.get(), out, L.W.get(), in_dim, 0.0f, P.dact.get(),
                 in_dim);
        const long n = long(rows) * in_dim;
        relu_backward_kernel<<<blocks_for(n), kBlock, 0, I.stream>>>(P.dact.get(), P.act.get(), n);
        CUDA_CHECK(cudaGetLastError());
    }
    // The same scalars the CPU path computes (in double, then rounded to float).
    const double bc1 = 1.0 - std::pow(double(p.beta1), step), bc2 = 1.0 - std::pow(double(p.beta2), step);
    const float decay = float(1.0 - double(p.lr) * double(p.weight_decay));
    const float step_size = float(double(p.lr) / bc1), bc2_sqrt = float(std::sqrt(bc2));
    const float w1 = float(1.0 - double(p.beta1)), w2 = float(1.0 - double(p.beta2));
    for (auto& L : I.layers) {
        adamw_kernel<<<blocks_for(long(L.W.size())), kBlock, 0, I.stream>>>(L.W.get(), L.gW.get(), L.mW.get(), L.vW.get(),
                                                                             long(L.W.size()), decay, step_size, bc2_sqrt,
                                                                             w1, p.beta2, w2, p.eps);
        adamw_kernel<<<blocks_for(long(L.b.size())), kBlock, 0, I.stream>>>(L.b.get(), L.gb.get(), L.mb.get(), L.vb.get(),
                                                                             long(L.b.size()), decay, step_size, bc2_sqrt,
                                                                             w1, p.beta2, w2, p.eps);
        CUDA_CHECK(cudaGetLastError());
    }
    I.stats_to_host(rows, stats);
}

void MapTrainCuda::eval(const float* xh, const float* yh, int rows, float* stats) {
    Impl& I = *impl_;
    I.check_rows(rows);
    if (rows == 0) return;
    I.upload(xh, yh, rows);
    I.forward(rows);
    row_stats_kernel<<<rows, kBlock, 0, I.stream>>>(I.layers.back().act.get(), I.y.get(), nullptr,
                                                    I.layers.back().shape.out, nullptr, I.stats.get());
    CUDA_CHECK(cudaGetLastError());
    I.stats_to_host(rows, stats);
}

void MapTrainCuda::predict(const float* xh, int rows, float* yhat) {
    Impl& I = *impl_;
    I.check_rows(rows);
    if (rows == 0) return;
    I.upload(xh, nullptr, rows);
    I.forward(rows);
    const int d = I.layers.back().shape.out;
    CUDA_CHECK(cudaMemcpyAsync(yhat, I.layers.back().act.get(), sizeof(float) * size_t(rows) * d, cudaMemcpyDeviceToHost,
                               I.stream));
    CUDA_CHECK(cudaStreamSynchronize(I.stream));
}

}  // namespace stitch::cuda

// The map trainer's CUDA compute path (mapping/ on the GPU): cuBLAS GEMMs for the linear
// layers and hand-written kernels for bias + ReLU, the MSE loss gradient with per-row
// statistics, bias gradients, the ReLU backward and a fused AdamW update. Plain C++ header
// (no CUDA types), so mapping/ can hold one without nvcc.
//
// The CPU twin and reference is CpuMapCompute<float> (mapping/mapper.h): same loss, same
// per-row weights, same AdamW; tests/gpu/test_map_gpu.cpp compares the two step by step.
#pragma once
#include <memory>
#include <vector>

namespace stitch::cuda {

struct MapLayerShape {
    int out, in;
};

struct AdamWParams {
    float lr, beta1, beta2, eps, weight_decay;
};

class MapTrainCuda {
public:
    // Layers in order (ReLU between consecutive ones); buffers for up to max_rows rows.
    // Throws stitch::Error when there is no device or cuBLAS cannot be loaded.
    MapTrainCuda(const std::vector<MapLayerShape>& layers, int max_rows);
    ~MapTrainCuda();
    MapTrainCuda(const MapTrainCuda&) = delete;
    MapTrainCuda& operator=(const MapTrainCuda&) = delete;

    void set_params(int layer, const float* W, const float* b);  // host → device; resets nothing else
    void get_params(int layer, float* W, float* b) const;        // device → host

    // One optimizer step over `rows` host rows: forward, loss gradient with per-row weights,
    // backward, AdamW (step counts from 1). stats: 4 floats per row (Σ(ŷ−y)², Σŷy, Σŷ², Σy²).
    void train_step(const float* x, const float* y, const float* row_weight, int rows, const AdamWParams& p, int step,
                    float* stats);
    // Forward only, with the same per-row statistics.
    void eval(const float* x, const float* y, int rows, float* stats);
    // Forward only: ŷ [rows, d_out] to the host.
    void predict(const float* x, int rows, float* yhat);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace stitch::cuda

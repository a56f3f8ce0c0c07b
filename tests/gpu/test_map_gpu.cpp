// `make test-gpu`: the map trainer's CUDA path against its CPU twin (llama.cpp's
// test-backend-ops habit): the same initial weights, rows and order through both, per-step
// losses, final weights and evaluation statistics compared by normalized error, on awkward
// shapes. Without a GPU (or in a build without CUDA) every case says it skipped and passes.
#include <doctest/doctest.h>

#include "gpu_test_util.h"

#include <cmath>
#include <cstdio>
#include <random>

#include "mapping/mapper.h"
#include "mapping/train.h"
#include "../test_util.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

using namespace stitch;

namespace {

bool skipped(const char* what) { return test::gpu_skipped(what); }

// ‖a − b‖ / ‖b‖: one component whose tiny gradient rounds to the other sign on the other
// device moves by up to lr through AdamW's normalisation, so the max-abs error of a large
// weight matrix is no measure of agreement; the Frobenius norm is.
double frob_rel(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
    }
    if (a.size() != b.size()) return INFINITY;
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Run {
    std::vector<double> losses;
    Mapper trained;
    MapMetrics val;
};

Run train_on(Device d, const Mapper& init, const std::vector<float>& x, const std::vector<float>& y, int rows, int batch,
             int accum, int steps) {
    const int ds = init.d_src(), dt = init.d_tgt();
    auto be = make_backend(d, init, std::max(batch * accum, 256));
    AdamWConfig ac;
    ac.lr = 3e-3f;
    StepRunner runner(*be, ds, dt, batch, accum, ac);
    // a fixed order that wraps around the rows (odd chunk sizes exercise the staging)
    int64_t r = 0;
    while (runner.steps() < steps) {
        const int n = int(std::min<int64_t>(7, rows - r));
        runner.add_rows(&x[size_t(r) * ds], &y[size_t(r) * dt], n);
        r = (r + n) % rows;
        if (r == 0 && runner.steps() < steps) runner.end_epoch();
    }
    Run out{runner.step_losses(), init, {}};
    out.losses.resize(size_t(steps));
    be->copy_to(out.trained);
    out.val = evaluate(*be, ds, dt, [&](const RowSink& s) { s(x.data(), y.data(), rows); });
    return out;
}

void compare_backends(MapKind kind, int ds, int dt, int rows, int batch, int accum) {
    std::mt19937_64 rng(uint64_t(ds * 131 + dt));
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> x(size_t(rows) * ds), y(size_t(rows) * dt);
    for (auto& v : x) v = n01(rng);
    for (auto& v : y) v = n01(rng);
    Mapper init = make_mapper(kind, ds, dt, 0, 17);
    const int steps = 50;
    Run cpu = train_on(Device::Cpu, init, x, y, rows, batch, accum, steps);
    Run gpu = train_on(Device::Cuda, init, x, y, rows, batch, accum, steps);
    CAPTURE(map_kind_name(kind));
    CAPTURE(ds);
    CAPTURE(dt);
    double worst = 0;
    for (int i = 0; i < steps; ++i)
        worst = std::max(worst, std::fabs(gpu.losses[size_t(i)] - cpu.losses[size_t(i)]) / std::fabs(cpu.losses[size_t(i)]));
    CHECK(worst <= 1e-4);
    for (size_t l = 0; l < init.layers.size(); ++l) {
        CHECK(frob_rel(gpu.trained.layers[l].W, cpu.trained.layers[l].W) <= 1e-4);
        CHECK(frob_rel(gpu.trained.layers[l].b, cpu.trained.layers[l].b) <= 1e-4);
        CHECK(frob_rel(cpu.trained.layers[l].W, init.layers[l].W) > 1e-3);  // 50 steps moved them
    }
    CHECK(gpu.val.mse == doctest::Approx(cpu.val.mse).epsilon(1e-4));
    CHECK(gpu.val.cosine == doctest::Approx(cpu.val.cosine).epsilon(1e-4));
    CHECK(gpu.val.fvu == doctest::Approx(cpu.val.fvu).epsilon(1e-4));
}

}  // namespace

TEST_CASE("gpu map: CUDA steps, weights and metrics equal the CPU path") {
    if (skipped("map trainer CUDA vs CPU")) return;
#ifdef STITCH_HAVE_CUDA
    std::printf("test-gpu: %s\n", cuda::device_name(0).c_str());
#endif
    compare_backends(MapKind::Affine, 37, 53, 301, 16, 4);
    compare_backends(MapKind::Autoencoder, 37, 53, 301, 16, 4);
    compare_backends(MapKind::Autoencoder, 896, 1536, 300, 16, 4);  // the paper's Qwen 0.5B -> 1.5B dims
    compare_backends(MapKind::Autoencoder, 5, 3, 40, 3, 2);        // rows per step not a multiple of 32
}

TEST_CASE("gpu map: --device cuda trains through the command line") {
    if (skipped("stitch map train --device cuda")) return;
    test::TempDir dir;
    std::vector<float> x(200 * 8), y(200 * 4);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    for (auto& v : x) v = n01(rng);
    for (auto& v : y) v = n01(rng);
    write_safetensors(dir / "s.safetensors", {{"s", DType::F32, {200, 8}, as_bytes_span(x)}});
    write_safetensors(dir / "t.safetensors", {{"t", DType::F32, {200, 4}, as_bytes_span(y)}});
    auto out = (dir / "m.safetensors").string(), cpu_out = (dir / "c.safetensors").string();
    const std::string args = "map train --source " + test::quote((dir / "s.safetensors").string()) + " --target " +
                             test::quote((dir / "t.safetensors").string()) + " --epochs 2 --lr 1e-3 ";
    auto r = test::run_stitch(args + "--device cuda -o " + test::quote(out));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    REQUIRE(test::run_stitch(args + "--device cpu -o " + test::quote(cpu_out)).status == 0);
    Mapper g = load_map(out), c = load_map(cpu_out);
    CHECK(g.meta.at("device") == "cuda");
    CHECK(frob_rel(g.layers[0].W, c.layers[0].W) <= 1e-4);
}

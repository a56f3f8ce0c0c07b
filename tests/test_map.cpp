// The map trainer (DESIGN.md §5): gradients against finite differences, AdamW steps against
// PyTorch, planted maps recovered, row pairing, map files and their checks, and the
// `stitch map` command line (bad input: one line, exit 2, no output file).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "mapping/mapper.h"
#include "mapping/train.h"
#include "test_util.h"

using namespace stitch;
using test::quote;

namespace {

// Normal deviates from a seeded generator (Box–Muller, the same everywhere).
struct Gauss {
    std::mt19937_64 rng;
    explicit Gauss(uint64_t seed) : rng(seed) {}
    double uniform() { return (double(rng() >> 11) + 0.5) * 0x1.0p-53; }
    double operator()() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
    std::vector<float> vec(size_t n, double scale = 1.0) {
        std::vector<float> v(n);
        for (auto& x : v) x = float((*this)() * scale);
        return v;
    }
};

// y[r] = W·x[r] + b for row-major W [dt, ds].
std::vector<float> affine_apply(const std::vector<float>& x, int rows, int ds, int dt, const std::vector<float>& W,
                                const std::vector<float>& b) {
    std::vector<float> y(size_t(rows) * dt);
    for (int r = 0; r < rows; ++r)
        for (int t = 0; t < dt; ++t) {
            double s = b[size_t(t)];
            for (int k = 0; k < ds; ++k) s += double(W[size_t(t) * ds + k]) * x[size_t(r) * ds + k];
            y[size_t(r) * dt + t] = float(s);
        }
    return y;
}

// A capture-style file: one activation tensor, optionally prompt_index/position, metadata.
void write_acts(const std::filesystem::path& p, const std::string& site, const std::vector<float>& rows, int d,
                const std::vector<int32_t>* prompt_index = nullptr, const std::vector<int32_t>* position = nullptr,
                std::map<std::string, std::string> meta = {}) {
    std::vector<TensorOut> t = {{site, DType::F32, {int64_t(rows.size() / size_t(d)), d}, as_bytes_span(rows)}};
    if (prompt_index) t.push_back({"prompt_index", DType::I32, {int64_t(prompt_index->size())}, as_bytes_span(*prompt_index)});
    if (position) t.push_back({"position", DType::I32, {int64_t(position->size())}, as_bytes_span(*position)});
    write_safetensors(p, t, meta);
}

// rows in groups of `per` (prompt i, positions 0..per-1)
void keys(int rows, int per, std::vector<int32_t>& pi, std::vector<int32_t>& pos) {
    pi.resize(static_cast<size_t>(rows));
    pos.resize(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
        pi[size_t(r)] = r / per;
        pos[size_t(r)] = r % per;
    }
}

// Central differences of the loss in every parameter, against the analytic gradient.
void check_gradients(MapKind kind, int ds, int dt, int hidden) {
    Mapper m = make_mapper(kind, ds, dt, hidden, 3);
    const int rows = 7;
    Gauss g(11);
    std::vector<double> x(size_t(rows) * ds), y(size_t(rows) * dt), w(static_cast<size_t>(rows));
    for (auto& v : x) v = g();
    for (auto& v : y) v = g();
    for (auto& v : w) v = 0.05 + g.uniform();  // unequal row weights, as micro-batches of different sizes give
    CpuMapCompute<double> c(m, rows);
    c.loss_and_grad(x.data(), y.data(), w.data(), rows);
    std::vector<std::vector<double>> gW, gb;
    for (int l = 0; l < c.n_layers(); ++l) {
        gW.push_back(c.weight_grad(l));
        gb.push_back(c.bias_grad(l));
    }
    const double h = 1e-6;
    double worst = 0;
    int checked = 0;
    auto probe = [&](std::vector<double>& param, const std::vector<double>& grad) {
        for (size_t i = 0; i < param.size(); ++i) {
            const double keep = param[i];
            param[i] = keep + h;
            const double up = c.loss_and_grad(x.data(), y.data(), w.data(), rows);
            param[i] = keep - h;
            const double down = c.loss_and_grad(x.data(), y.data(), w.data(), rows);
            param[i] = keep;
            const double fd = (up - down) / (2 * h);
            worst = std::max(worst, std::fabs(fd - grad[i]) / std::max(1e-3, std::fabs(grad[i])));
            ++checked;
        }
    };
    for (int l = 0; l < c.n_layers(); ++l) {
        probe(c.weight(l), gW[size_t(l)]);
        probe(c.bias(l), gb[size_t(l)]);
    }
    CAPTURE(map_kind_name(kind));
    CHECK(checked == int(m.param_count()));
    CHECK(worst < 1e-6);
}

}  // namespace

TEST_CASE("map: gradients of both kinds equal central finite differences (double)") {
    check_gradients(MapKind::Affine, 5, 4, 0);
    check_gradients(MapKind::Autoencoder, 5, 4, 6);
    check_gradients(MapKind::Autoencoder, 3, 8, 0);  // default hidden floor(sqrt(24)) = 4
}

TEST_CASE("map: the float path's gradients and update agree with the double path") {
    Mapper m = make_mapper(MapKind::Autoencoder, 24, 40, 0, 5);
    CHECK(m.hidden() == 30);  // floor(sqrt(960))
    const int rows = 37;
    Gauss g(2);
    auto xf = g.vec(size_t(rows) * 24), yf = g.vec(size_t(rows) * 40);
    std::vector<float> wf(size_t(rows), 1.0f / rows);
    std::vector<double> xd(xf.begin(), xf.end()), yd(yf.begin(), yf.end()), wd(wf.begin(), wf.end());
    CpuMapCompute<float> cf(m, rows);
    CpuMapCompute<double> cd(m, rows);
    std::vector<RowStats> sf(static_cast<size_t>(rows)), sd(static_cast<size_t>(rows));
    const float lf = cf.loss_and_grad(xf.data(), yf.data(), wf.data(), rows, sf.data());
    const double ld = cd.loss_and_grad(xd.data(), yd.data(), wd.data(), rows, sd.data());
    CHECK(std::fabs(lf - ld) <= 1e-5 * ld);
    for (int l = 0; l < 2; ++l) {
        std::vector<float> a(cf.weight_grad(l).begin(), cf.weight_grad(l).end());
        std::vector<float> b(cd.weight_grad(l).begin(), cd.weight_grad(l).end());
        CHECK(test::rel_err(a, b) <= 1e-5);
    }
    for (int r = 0; r < rows; ++r) CHECK(std::fabs(sf[size_t(r)].sse - sd[size_t(r)].sse) <= 1e-4 * sd[size_t(r)].sse);
    AdamWConfig ac;
    ac.lr = 1e-2f;
    cf.adamw(ac, 1);
    cd.adamw(ac, 1);
    std::vector<float> a(cf.weight(0).begin(), cf.weight(0).end()), b(cd.weight(0).begin(), cd.weight(0).end());
    CHECK(test::rel_err(a, b) <= 1e-5);
    // predict() is the forward pass
    std::vector<float> out(size_t(rows) * 40);
    predict(m, xf.data(), rows, out.data());
    CpuMapCompute<float> fresh(m, rows, false);
    fresh.forward(xf.data(), rows);
    CHECK(test::rel_err(out, std::vector<float>(fresh.pred(), fresh.pred() + out.size())) == 0);
}

TEST_CASE("map: the first 50 AdamW steps match PyTorch for both kinds") {
    SafetensorsFile ref(test::fixture("map/torch_ref.safetensors"));
    const auto& meta = ref.metadata();
    const int ds = std::stoi(meta.at("d_src")), dt = std::stoi(meta.at("d_tgt")), N = std::stoi(meta.at("rows"));
    const int batch = std::stoi(meta.at("batch")), accum = std::stoi(meta.at("accum")), steps = std::stoi(meta.at("steps"));
    AdamWConfig ac;
    ac.lr = std::stof(meta.at("lr"));
    ac.weight_decay = std::stof(meta.at("weight_decay"));
    ac.beta1 = std::stof(meta.at("beta1"));
    ac.beta2 = std::stof(meta.at("beta2"));
    ac.eps = std::stof(meta.at("eps"));
    const auto x = ref.to_f32(ref.get("x")), y = ref.to_f32(ref.get("y"));
    const auto order = ref.to_i32(ref.get("order"));
    for (MapKind kind : {MapKind::Affine, MapKind::Autoencoder}) {
        const std::string k = map_kind_name(kind);
        CAPTURE(k);
        const std::vector<std::string> names =
            kind == MapKind::Affine ? std::vector<std::string>{"W", "b"} : std::vector<std::string>{"W1", "b1", "W2", "b2"};
        Mapper m = make_mapper(kind, ds, dt, std::stoi(meta.at("hidden")), 0);
        for (size_t l = 0; l < m.layers.size(); ++l) {
            m.layers[l].W = ref.to_f32(ref.get(k + ".init." + names[2 * l]));
            m.layers[l].b = ref.to_f32(ref.get(k + ".init." + names[2 * l + 1]));
        }
        auto be = make_backend(Device::Cpu, m, batch * accum);
        StepRunner runner(*be, ds, dt, batch, accum, ac);
        // the explicit torch order, epoch by epoch, row by row, until the 50th step
        for (size_t e = 0; e * size_t(N) < order.size() && runner.steps() < steps; ++e) {
            for (int j = 0; j < N && runner.steps() < steps; ++j) {
                const size_t r = size_t(order[e * size_t(N) + size_t(j)]);
                runner.add_rows(&x[r * size_t(ds)], &y[r * size_t(dt)], 1);
            }
            if (runner.steps() < steps) runner.end_epoch();
        }
        REQUIRE(runner.steps() == steps);
        const auto want = ref.to_f32(ref.get(k + ".step_losses"));
        const auto& got = runner.step_losses();
        REQUIRE(got.size() == want.size());
        double worst = 0;
        for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]) / std::fabs(want[i]));
        MESSAGE(k, ": worst relative step-loss difference from PyTorch over ", steps, " steps: ", worst);
        CHECK(worst <= 1e-5);  // the issue asks for 1e-4; float rounding alone gives ~2e-7
        CHECK(want.back() < 0.8 * want.front());  // the steps really moved the weights
        Mapper trained = m;
        be->copy_to(trained);
        for (size_t l = 0; l < m.layers.size(); ++l) {
            CHECK(test::rel_err(trained.layers[l].W, ref.to_f32(ref.get(k + ".final." + names[2 * l]))) <= 1e-4);
            CHECK(test::rel_err(trained.layers[l].b, ref.to_f32(ref.get(k + ".final." + names[2 * l + 1]))) <= 1e-4);
            CHECK(test::rel_err(trained.layers[l].W, m.layers[l].W) > 1e-3);
        }
    }
}

TEST_CASE("map: a planted affine map plus 1e-3 noise is recovered by ridge and by AdamW (val FVU < 1e-3)") {
    test::TempDir dir;
    const int N = 4000, ds = 16, dt = 24;
    Gauss g(21);
    auto x = g.vec(size_t(N) * ds), W = g.vec(size_t(dt) * ds, 1.0 / 4), b = g.vec(size_t(dt));
    auto y = affine_apply(x, N, ds, dt, W, b);
    for (auto& v : y) v += float(1e-3 * g());
    std::vector<int32_t> pi, pos;
    keys(N, 20, pi, pos);
    write_acts(dir / "s.safetensors", "blocks.1.resid_post", x, ds, &pi, &pos);
    write_acts(dir / "t.safetensors", "blocks.2.resid_post", y, dt, &pi, &pos);
    ActivationFile fs((dir / "s.safetensors").string(), "", "--source-site"), ft((dir / "t.safetensors").string(), "", "--target-site");
    FilePairSource src(fs, ft, 0.1, 0);
    CHECK(src.val_rows() == 400);  // 20 of 200 prompts, whole
    TrainOptions opt;
    opt.device = Device::Cpu;
    {
        Mapper m = make_mapper(MapKind::Affine, ds, dt, 0, 1);
        auto rep = fit_ridge(m, src, 1e-6, opt);
        CHECK(rep.val.fvu < 1e-5);
        CHECK(rep.val.cosine > 0.99999);
        CHECK(test::rel_err(m.layers[0].W, W) < 1e-3);
        CHECK(test::rel_err(m.layers[0].b, b) < 1e-3);
    }
    {
        Mapper m = make_mapper(MapKind::Affine, ds, dt, 0, 1);
        opt.epochs = 10;
        opt.accum = 1;
        opt.adamw.lr = 3e-3f;
        auto rep = train_adamw(m, src, opt);
        REQUIRE(rep.epochs.size() == 10);
        CHECK(rep.epochs.front().val.fvu > 0.1);  // it started far away
        CHECK(rep.val.fvu < 1e-3);
        CHECK(rep.val.rows == 400);
        CHECK(rep.step_losses.size() == size_t(10 * (3600 / 16)));
    }
}

TEST_CASE("map: on a planted one-hidden-layer ReLU map the autoencoder's FVU is well below affine's") {
    test::TempDir dir;
    const int N = 4000, ds = 16, dt = 16, h = 16;
    Gauss g(5);
    auto x = g.vec(size_t(N) * ds), A = g.vec(size_t(h) * ds, 0.25), c = g.vec(size_t(h), 0.1);
    auto B = g.vec(size_t(dt) * h, 0.5), d = g.vec(size_t(dt));
    auto hid = affine_apply(x, N, ds, h, A, c);
    for (auto& v : hid) v = std::max(v, 0.0f);
    auto y = affine_apply(hid, N, h, dt, B, d);
    write_acts(dir / "s.safetensors", "a", x, ds);
    write_acts(dir / "t.safetensors", "b", y, dt);
    ActivationFile fs((dir / "s.safetensors").string(), "", "--source-site"), ft((dir / "t.safetensors").string(), "", "--target-site");
    FilePairSource src(fs, ft, 0.1, 0);
    TrainOptions opt;
    opt.device = Device::Cpu;
    opt.epochs = 20;
    opt.accum = 1;
    opt.adamw.lr = 1e-2f;
    Mapper ridge = make_mapper(MapKind::Affine, ds, dt, 0, 1);
    const double affine_fvu = fit_ridge(ridge, src, 1e-6, opt).val.fvu;  // the best any affine map can do
    Mapper ae = make_mapper(MapKind::Autoencoder, ds, dt, 0, 1);
    const double ae_fvu = train_adamw(ae, src, opt).val.fvu;
    MESSAGE("planted ReLU map: val FVU affine (ridge) ", affine_fvu, ", autoencoder ", ae_fvu);
    CHECK(affine_fvu > 0.1);
    CHECK(ae_fvu < 0.25 * affine_fvu);
}

TEST_CASE("map: rows pair by (prompt_index, position) across files in different orders; mismatches are errors") {
    test::TempDir dir;
    const int N = 60, ds = 3, dt = 2;
    Gauss g(1);
    auto x = g.vec(size_t(N) * ds);
    std::vector<int32_t> pi, pos;
    keys(N, 6, pi, pos);
    // target rows: a fixed function of the key, written in a shuffled order
    auto perm = shuffled_indices(N, 9);
    std::vector<float> y(size_t(N) * dt);
    std::vector<int32_t> tpi(static_cast<size_t>(N)), tpos(static_cast<size_t>(N));
    for (int i = 0; i < N; ++i) {
        const int r = int(perm[size_t(i)]);
        tpi[size_t(i)] = pi[size_t(r)];
        tpos[size_t(i)] = pos[size_t(r)];
        y[size_t(i) * dt] = float(pi[size_t(r)]);
        y[size_t(i) * dt + 1] = float(pos[size_t(r)]);
    }
    write_acts(dir / "s.safetensors", "s", x, ds, &pi, &pos);
    write_acts(dir / "t.safetensors", "t", y, dt, &tpi, &tpos);
    ActivationFile fs((dir / "s.safetensors").string(), "", "--source-site"), ft((dir / "t.safetensors").string(), "", "--target-site");
    auto pairs = pair_rows(fs, ft);
    REQUIRE(pairs.size() == size_t(N));
    float row[2];
    for (const auto& p : pairs) {
        ft.read_row(p.tgt, row);
        CHECK(row[0] == float(pi[size_t(p.src)]));
        CHECK(row[1] == float(pos[size_t(p.src)]));
        CHECK(p.group == pi[size_t(p.src)]);
    }
    // validation holds out whole prompts
    FilePairSource src(fs, ft, 0.2, 4);
    CHECK(src.val_rows() == 12);  // 2 of 10 prompts
    std::set<int> val_prompts;
    src.val_pass([&](const float*, const float* yy, int rows) {
        for (int r = 0; r < rows; ++r) val_prompts.insert(int(yy[r * dt]));
    });
    CHECK(val_prompts.size() == 2);
    int64_t seen = 0;
    std::set<int> train_prompts;
    src.train_epoch(0, [&](const float*, const float* yy, int rows) {
        seen += rows;
        for (int r = 0; r < rows; ++r) train_prompts.insert(int(yy[r * dt]));
    });
    CHECK(seen == 48);
    for (int p : val_prompts) CHECK(train_prompts.count(p) == 0);

    auto expect_pair_error = [&](const std::vector<int32_t>& tpi2, const std::vector<int32_t>& tpos2, const char* what) {
        write_acts(dir / "bad.safetensors", "t", std::vector<float>(tpi2.size() * dt, 0.0f), dt, &tpi2, &tpos2);
        ActivationFile bad((dir / "bad.safetensors").string(), "", "--target-site");
        CHECK_THROWS_WITH_AS(pair_rows(fs, bad), doctest::Contains(what), Error);
    };
    auto p2 = tpi, q2 = tpos;
    q2[0] = 99;  // a target row no source row has
    expect_pair_error(p2, q2, "no row with the same prompt and position");
    q2 = tpos;
    q2[1] = q2[0];
    p2[1] = p2[0];  // a key twice
    expect_pair_error(p2, q2, "are both prompt");
    p2.assign(tpi.begin(), tpi.end() - 1);  // one row short
    q2.assign(tpos.begin(), tpos.end() - 1);
    expect_pair_error(p2, q2, "no row with the same prompt and position");
    // without keys: row order, and the counts must agree
    write_acts(dir / "s2.safetensors", "s", x, ds);
    write_acts(dir / "t2.safetensors", "t", std::vector<float>(size_t(N - 1) * dt, 0.0f), dt);
    ActivationFile s2((dir / "s2.safetensors").string(), "", "--source-site"), t2((dir / "t2.safetensors").string(), "", "--target-site");
    CHECK_THROWS_WITH_AS(pair_rows(s2, t2), doctest::Contains("pair by row order"), Error);
    CHECK(pair_rows(s2, ft).size() == size_t(N));  // one side without keys: row order
}

TEST_CASE("map: activation files: site choice, NaN rows, empty tensors") {
    test::TempDir dir;
    std::vector<float> x = {1, 2, 3, 4, 5, 6};
    std::vector<TensorOut> two = {{"blocks.0.resid_post", DType::F32, {2, 3}, as_bytes_span(x)},
                                  {"blocks.1.resid_post", DType::F32, {3, 2}, as_bytes_span(x)}};
    write_safetensors(dir / "two.safetensors", two);
    const std::string two_path = (dir / "two.safetensors").string();
    CHECK_THROWS_WITH_AS(ActivationFile(two_path, "", "--source-site"), doctest::Contains("choose one with --source-site"), Error);
    CHECK(ActivationFile(two_path, "blocks.1.resid_post", "--source-site").dim() == 2);
    CHECK(ActivationFile(two_path, "", "--source-site", "blocks.0.resid_post").dim() == 3);  // a map's recorded site
    CHECK_THROWS_WITH_AS(ActivationFile(two_path, "blocks.5.resid_post", "--source-site"), doctest::Contains("has no tensor"), Error);
    auto nan = x;
    nan[4] = NAN;
    write_acts(dir / "nan.safetensors", "s", nan, 3);
    CHECK_THROWS_WITH_AS(ActivationFile((dir / "nan.safetensors").string(), "", "--source-site"),
                         doctest::Contains("row 1 of s holds NaN or Inf"), Error);
    std::vector<float> none;
    write_safetensors(dir / "empty.safetensors", {{"s", DType::F32, {0, 3}, as_bytes_span(none)}});
    CHECK_THROWS_WITH_AS(ActivationFile((dir / "empty.safetensors").string(), "", "--source-site"),
                         doctest::Contains("has no rows"), Error);
    write_safetensors(dir / "nothing.safetensors", {});
    CHECK_THROWS_WITH_AS(ActivationFile((dir / "nothing.safetensors").string(), "", "--source-site"),
                         doctest::Contains("holds no tensors"), Error);
    // bf16 rows read as float
    std::vector<uint16_t> h = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f)};
    write_safetensors(dir / "bf.safetensors", {{"s", DType::BF16, {1, 2}, as_bytes_span(h)}});
    ActivationFile bf((dir / "bf.safetensors").string(), "", "--source-site");
    float row[2];
    bf.read_row(0, row);
    CHECK(row[0] == 1.5f);
    CHECK(row[1] == -2.0f);
}

TEST_CASE("map: early stopping keeps the epoch with the best val MSE") {
    test::TempDir dir;
    const int N = 400, ds = 8, dt = 8;
    Gauss g(3);
    auto x = g.vec(size_t(N) * ds), W = g.vec(size_t(dt) * ds, 0.3), b = g.vec(size_t(dt));
    auto y = affine_apply(x, N, ds, dt, W, b);
    write_acts(dir / "s.safetensors", "s", x, ds);
    write_acts(dir / "t.safetensors", "t", y, dt);
    ActivationFile fs((dir / "s.safetensors").string(), "", "--source-site"), ft((dir / "t.safetensors").string(), "", "--target-site");
    FilePairSource src(fs, ft, 0.25, 0);
    TrainOptions opt;
    opt.device = Device::Cpu;
    opt.epochs = 40;
    opt.patience = 2;
    opt.adamw.lr = 0.5f;  // far too large: the val MSE wanders, so patience must stop it
    Mapper m = make_mapper(MapKind::Affine, ds, dt, 0, 1);
    auto rep = train_adamw(m, src, opt);
    REQUIRE(rep.epochs.size() < 40);
    double best = INFINITY;
    int best_epoch = 0;
    for (const auto& e : rep.epochs)
        if (e.val.mse < best) best = e.val.mse, best_epoch = e.epoch;
    CHECK(rep.best_epoch == best_epoch);
    CHECK(int(rep.epochs.size()) == best_epoch + 2);
    auto be = make_backend(Device::Cpu, m, 512);
    const MapMetrics again = evaluate(*be, ds, dt, [&](const RowSink& s) { src.val_pass(s); });
    CHECK(again.mse == doctest::Approx(best).epsilon(1e-6));  // the kept weights are that epoch's
}

TEST_CASE("map: files round trip with metadata; loading or applying a map to the wrong thing is a clear error") {
    test::TempDir dir;
    Mapper m = make_mapper(MapKind::Autoencoder, 6, 10, 0, 4);
    m.meta = {{"source_site", "blocks.3.resid_post"}, {"target_site", "blocks.5.resid_post"}, {"source_model", "Qwen2.5-0.5B"},
              {"source_model_type", "qwen2"}, {"target_model", "Qwen2.5-1.5B"}, {"target_model_type", "qwen2"}};
    const std::string path = (dir / "m.safetensors").string();
    save_map(path, m);
    Mapper back = load_map(path);
    CHECK(back.kind == MapKind::Autoencoder);
    CHECK(back.hidden() == 7);
    CHECK(back.meta.at("format") == "stitch-map");
    CHECK(back.meta.at("d_src") == "6");
    CHECK(back.meta.at("source_site") == "blocks.3.resid_post");
    CHECK(back.meta.count("stitch_version") == 1);
    for (size_t l = 0; l < 2; ++l) {
        CHECK(back.layers[l].W == m.layers[l].W);
        CHECK(back.layers[l].b == m.layers[l].b);
    }
    SafetensorsFile raw(path);
    CHECK(raw.get("W1").shape == std::vector<int64_t>{7, 6});
    CHECK(raw.get("b2").shape == std::vector<int64_t>{10});

    MapSide src{"blocks.3.resid_post", "Qwen2.5-0.5B", "qwen2", 6}, tgt{"blocks.5.resid_post", "Qwen2.5-1.5B", "qwen2", 10};
    check_map_fits(back, path, src, &tgt, true);
    auto expect = [&](MapSide s, const MapSide* t, bool check_model, const char* what) {
        CHECK_THROWS_WITH_AS(check_map_fits(back, path, s, t, check_model), doctest::Contains(what), Error);
    };
    expect({"blocks.3.resid_post", "", "", 7}, nullptr, true, "width 6, but the source has width 7");
    MapSide t9 = tgt;
    t9.dim = 9;
    expect(src, &t9, true, "target activations of width 10");
    expect({"blocks.4.resid_post", "", "", 6}, nullptr, true, "source site blocks.3.resid_post, not blocks.4.resid_post");
    expect({"", "", "llama", 6}, nullptr, true, "qwen2 model, not llama");
    expect({"", "Other", "", 6}, nullptr, true, "--ignore-model");
    check_map_fits(back, path, {"", "Other", "", 6}, nullptr, false);  // --ignore-model: names only
    expect({"", "Other", "", 5}, nullptr, false, "width 6");        // never dims

    // files that are not maps, or whose tensors disagree with the metadata
    std::vector<float> six(6, 0.0f);
    write_safetensors(dir / "cap.safetensors", {{"s", DType::F32, {1, 6}, as_bytes_span(six)}}, {{"model", "x"}});
    CHECK_THROWS_WITH_AS(load_map(dir / "cap.safetensors"), doctest::Contains("not a stitch map"), Error);
    auto meta = raw.metadata();
    meta["hidden"] = "8";
    std::vector<TensorOut> ts;
    std::vector<std::vector<float>> keep;
    for (const auto& t : raw.tensors()) {
        keep.push_back(raw.to_f32(t));
        ts.push_back({t.name, DType::F32, t.shape, as_bytes_span(keep.back())});
    }
    write_safetensors(dir / "lie.safetensors", ts, meta);
    CHECK_THROWS_WITH_AS(load_map(dir / "lie.safetensors"), doctest::Contains("the metadata says [8, 6]"), Error);
    meta["hidden"] = "seven";
    write_safetensors(dir / "lie2.safetensors", ts, meta);
    CHECK_THROWS_WITH_AS(load_map(dir / "lie2.safetensors"), doctest::Contains("not a non-negative integer"), Error);
}

// ---- the command line --------------------------------------------------------------------------

using test::expect_cli_error;

TEST_CASE("map cli: train, eval and apply end to end") {
    test::TempDir dir;
    const int N = 600, ds = 8, dt = 12;
    Gauss g(8);
    auto x = g.vec(size_t(N) * ds), W = g.vec(size_t(dt) * ds, 0.3), b = g.vec(size_t(dt));
    auto y = affine_apply(x, N, ds, dt, W, b);
    std::vector<int32_t> pi, pos;
    keys(N, 10, pi, pos);
    write_acts(dir / "s.safetensors", "blocks.1.resid_post", x, ds, &pi, &pos, {{"model", "/models/SmallModel/"}, {"model_type", "llama"}});
    write_acts(dir / "t.safetensors", "blocks.2.resid_post", y, dt, &pi, &pos, {{"model", "/m/Big.gguf"}, {"model_type", "qwen2"}});
    const std::string s = quote((dir / "s.safetensors").string()), t = quote((dir / "t.safetensors").string());
    const std::string map = (dir / "m.safetensors").string(), js = (dir / "train.json").string();
    auto r = test::run_stitch("map train --source " + s + " --target " + t + " --kind autoencoder --epochs 2 --lr 1e-3 --seed 3 --device cpu -o " +
                              quote(map) + " --json " + quote(js));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.err.find("epoch 2/2: train mse") != std::string::npos);
    CHECK(r.err.find("val mse") != std::string::npos);
    CHECK(r.err.find("rows/s") != std::string::npos);
    auto j = nlohmann::json::parse(test::read_bytes(js));
    CHECK(j["epochs"].size() == 2);
    CHECK(j["train_rows"] == 540);
    CHECK(j["hidden"] == 9);  // floor(sqrt(96))
    CHECK(j["step_losses"].size() == 2 * ((540 / 16 + 1 + 3) / 4));
    Mapper m = load_map(map);
    CHECK(m.meta.at("source_model") == "SmallModel");
    CHECK(m.meta.at("target_model") == "Big");
    CHECK(m.meta.at("target_site") == "blocks.2.resid_post");
    CHECK(m.meta.at("lr") == "0.001");
    CHECK(m.meta.at("pairing") == "prompt_index,position");
    CHECK(std::stod(m.meta.at("val_mse")) == doctest::Approx(double(j["val"]["mse"])));
    // same seed, same map; another seed, another
    auto again = (dir / "m2.safetensors").string();
    REQUIRE(test::run_stitch("map train --source " + s + " --target " + t + " --epochs 2 --lr 1e-3 --seed 3 --device cpu -o " + quote(again)).status == 0);
    CHECK(load_map(again).layers[1].W == m.layers[1].W);
    REQUIRE(test::run_stitch("map train --source " + s + " --target " + t + " --epochs 2 --lr 1e-3 --seed 4 --device cpu -o " + quote(again)).status == 0);
    CHECK(load_map(again).layers[1].W != m.layers[1].W);

    // eval: the words, the numbers of the map on every row
    const std::string ej = (dir / "eval.json").string();
    r = test::run_stitch("map eval " + quote(map) + " --source " + s + " --target " + t + " --json " + quote(ej));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.out.find("mse ") == 0);
    CHECK(r.out.find("\ncosine ") != std::string::npos);
    CHECK(r.out.find("\nfvu ") != std::string::npos);
    auto e = nlohmann::json::parse(test::read_bytes(ej));
    CHECK(e["rows"] == N);
    std::vector<float> pred(size_t(N) * dt);
    predict(m, x.data(), N, pred.data());
    double sse = 0;
    for (size_t i = 0; i < pred.size(); ++i) sse += (double(pred[i]) - y[i]) * (double(pred[i]) - y[i]);
    CHECK(double(e["mse"]) == doctest::Approx(sse / double(pred.size())).epsilon(1e-5));

    // apply: rows mapped, bookkeeping carried
    const std::string out = (dir / "mapped.safetensors").string();
    r = test::run_stitch("map apply " + quote(map) + " --source " + s + " -o " + quote(out));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    SafetensorsFile mapped(out);
    CHECK(mapped.get("blocks.2.resid_post").shape == std::vector<int64_t>{N, dt});
    CHECK(test::rel_err(mapped.to_f32(mapped.get("blocks.2.resid_post")), pred) < 1e-6);
    CHECK(mapped.to_i32(mapped.get("prompt_index")) == pi);
    CHECK(mapped.metadata().at("model") == "Big");

    // ridge through the CLI, and help
    r = test::run_stitch("map train --source " + s + " --target " + t + " --kind affine --solver ridge -o " + quote(again));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(std::stod(load_map(again).meta.at("val_fvu")) < 1e-6);
    r = test::run_stitch("help map");
    CHECK(r.status == 0);
    CHECK(r.out.find("stitch map train") != std::string::npos);
    CHECK(test::run_stitch("map help").out == r.out);
}

TEST_CASE("map cli: bad input is one line, exit status 2 and no output file") {
    test::TempDir dir;
    Gauss g(4);
    std::vector<int32_t> pi, pos;
    keys(40, 4, pi, pos);
    write_acts(dir / "s.safetensors", "s", g.vec(40 * 4), 4, &pi, &pos);
    write_acts(dir / "t.safetensors", "t", g.vec(40 * 6), 6, &pi, &pos);
    write_acts(dir / "t39.safetensors", "t", g.vec(39 * 6), 6);
    write_acts(dir / "s5.safetensors", "s", g.vec(40 * 5), 5);
    auto nan = g.vec(40 * 6);
    nan[7 * 6 + 2] = INFINITY;
    write_acts(dir / "nan.safetensors", "t", nan, 6, &pi, &pos);
    std::vector<float> none;
    write_safetensors(dir / "empty.safetensors", {{"t", DType::F32, {0, 6}, as_bytes_span(none)}});
    test::write_bytes(dir / "zero.safetensors", "");
    auto p = [&](const char* n) { return quote((dir / n).string()); };
    const std::string out = (dir / "out.safetensors").string(), o = " -o " + quote(out);
    const std::string train = "map train --device cpu --source " + p("s.safetensors");
    expect_cli_error("map train --device cpu --source " + p("s5.safetensors") + " --target " + p("t39.safetensors") + o, "pair by row order");
    expect_cli_error(train + " --target " + p("nan.safetensors") + o, "row 7 of t holds NaN or Inf");
    expect_cli_error(train + " --target " + p("empty.safetensors") + o, "has no rows");
    expect_cli_error(train + " --target " + p("zero.safetensors") + o, "zero.safetensors");
    expect_cli_error(train + " --target " + p("missing.safetensors") + o, "no such file");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --kind autoencoder --solver ridge" + o, "ridge fits affine maps only");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --kind linear" + o, "not affine or autoencoder");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --kind affine --hidden 3" + o, "hidden layer");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --val 0.95" + o, "out of range");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --target-site u" + o, "has no tensor 'u'");
    expect_cli_error(train + o, "needs both --source and --target");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --prompts x.jsonl" + o, "give either");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --val 0 --patience 2" + o, "needs held-out rows");
    expect_cli_error(train + " --target " + p("t.safetensors") + " --device gpu" + o, "not auto, cpu or cuda");
    expect_cli_error("map frobnicate", "unknown map subcommand");
    CHECK_FALSE(std::filesystem::exists(out));

    // a map for other dims
    const std::string map = (dir / "m.safetensors").string();
    REQUIRE(test::run_stitch(train + " --target " + p("t.safetensors") + " --kind affine --solver ridge -o " + quote(map)).status == 0);
    expect_cli_error("map apply " + quote(map) + " --source " + p("s5.safetensors") + o, "width 4, but the source has width 5");
    expect_cli_error("map eval " + quote(map) + " --source " + p("s.safetensors") + " --target " + p("s.safetensors"),
                     "target activations of width 6");
    expect_cli_error("map apply " + p("t.safetensors") + " --source " + p("s.safetensors") + o, "not a stitch map");
    expect_cli_error("map apply " + quote(map) + " --source " + p("s.safetensors") + " --dtype f8" + o, "not f32, f16 or bf16");
    CHECK_FALSE(std::filesystem::exists(out));
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir.path, ec))
        CHECK(entry.path().extension() != ".tmp");

    // --device cuda with no device (or no CUDA in this build): an error, never a silent CPU run
    auto r = test::run_stitch(train + " --target " + p("t.safetensors") + " --device cuda" + o);
    if (r.status == 2) {
        CHECK(test::count_lines(r.err) == 1);
        CHECK(r.err.find("--device: cuda:") != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(out));
    } else {
        CHECK(r.status == 0);  // a machine with a GPU trained on it
        CHECK(load_map(out).meta.at("device") == "cuda");
    }
}

TEST_CASE("map cli: streaming from two models equals training on their captures") {
    test::TempDir dir;
    std::string jsonl;
    const char* texts[] = {"The quick brown fox", "jumps over the lazy dog", "Hello world, this is a test", "one two three four five",
                           "Mapping activations between models", "a b c d e f g", "Short", "Another prompt with several tokens in it"};
    for (const char* t : texts) jsonl += nlohmann::json({{"prompt", t}}).dump() + "\n";
    test::write_bytes(dir / "p.jsonl", jsonl);
    const std::string prompts = quote((dir / "p.jsonl").string());
    const std::string qa = quote(test::fixture("models/qwen2").string()), qb = quote(test::fixture("models/qwen3").string());
    const std::string cs = (dir / "cs.safetensors").string(), ct = (dir / "ct.safetensors").string();
    REQUIRE(test::run_stitch("capture " + qa + " --prompts " + prompts + " --sites blocks.1.resid_post -o " + quote(cs)).status == 0);
    REQUIRE(test::run_stitch("capture " + qb + " --prompts " + prompts + " --sites blocks.0.resid_post -o " + quote(ct)).status == 0);
    const std::string from_files = (dir / "f.safetensors").string(), streamed = (dir / "s.safetensors").string();
    auto r = test::run_stitch("map train --source " + quote(cs) + " --target " + quote(ct) + " --kind affine --solver ridge --ridge 1e-2 --val 0.25 -o " + quote(from_files));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    r = test::run_stitch("map train --source-model " + qa + " --source-site blocks.1.resid_post --target-model " + qb +
                         " --target-site blocks.0.resid_post --prompts " + prompts +
                         " --kind affine --solver ridge --ridge 1e-2 --val 0.25 --buffer-rows 7 --prompt-batch 3 -o " + quote(streamed));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    Mapper a = load_map(from_files), b = load_map(streamed);
    CHECK(a.d_src() == 80);
    CHECK(a.d_tgt() == 64);
    CHECK(a.meta.at("train_rows") == b.meta.at("train_rows"));  // the same prompts held out
    CHECK(a.meta.at("val_rows") == b.meta.at("val_rows"));
    CHECK(test::rel_err(b.layers[0].W, a.layers[0].W) < 1e-3);
    CHECK(std::stod(b.meta.at("val_mse")) == doctest::Approx(std::stod(a.meta.at("val_mse"))).epsilon(1e-3));
    CHECK(b.meta.at("source_model") == "qwen2");
    CHECK(b.meta.at("source_site") == "blocks.1.resid_post");
    CHECK(b.meta.at("pairing") == "streamed");
    // the streamed map applies to the captures it never saw as files
    r = test::run_stitch("map eval " + quote(streamed) + " --source " + quote(cs) + " --target " + quote(ct));
    CHECK_MESSAGE(r.status == 0, r.err);

    // AdamW streaming runs too (shuffled buffer), positions select rows
    r = test::run_stitch("map train --source-model " + qa + " --source-site blocks.1.resid_post --target-model " + qb +
                         " --target-site blocks.0.resid_post --prompts " + prompts + " --positions -2: --epochs 2 --lr 1e-3 --device cpu -o " + quote(streamed));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(std::stoi(load_map(streamed).meta.at("train_rows")) + std::stoi(load_map(streamed).meta.at("val_rows")) == 16);

    // different tokenizers: an error unless --align says how to pair
    const std::string ll = quote(test::fixture("models/llama_tied").string());
    const std::string stream_ll = "map train --source-model " + ll + " --source-site blocks.1.resid_post --target-model " + qa +
                                  " --target-site blocks.1.resid_post --prompts " + prompts + " --kind affine --solver ridge --val 0.25";
    expect_cli_error(stream_ll + " -o " + quote(streamed + ".x"), "tokenize differently in the two models");
    CHECK_FALSE(std::filesystem::exists(streamed + ".x"));
    r = test::run_stitch(stream_ll + " --align last -o " + quote(streamed));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.err.find("WARNING:") != std::string::npos);
    Mapper last = load_map(streamed);
    CHECK(last.meta.at("align") == "last");
    CHECK(std::stoi(last.meta.at("train_rows")) + std::stoi(last.meta.at("val_rows")) == 8);
    r = test::run_stitch(stream_ll + " --align index -o " + quote(streamed));
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.err.find("the paper's way") != std::string::npos);
    expect_cli_error(stream_ll + " --align middle -o " + quote(streamed + ".x"), "not index or last");
}

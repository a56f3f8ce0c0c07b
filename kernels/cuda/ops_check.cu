// kernels/cuda/ops_check.h: each op of ops.cuh behind host vectors, for the op-by-op tests.
#include "kernels/cuda/ops_check.h"

#include <algorithm>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops.cuh"

namespace stitch::cuda::check {

static_assert(kGemmSmallRows == GemmContext::kSmallRows);

namespace {

struct Stream {
    cudaStream_t s = nullptr;
    Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
    ~Stream() {
        if (s) cudaStreamDestroy(s);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    operator cudaStream_t() const { return s; }
};

template <typename T>
DeviceBuffer<T> upload(cudaStream_t s, const std::vector<T>& h) {
    DeviceBuffer<T> d(h.size());
    if (!h.empty()) CUDA_CHECK(cudaMemcpyAsync(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, s));
    return d;
}

// Waits for everything queued on s, then copies d back.
template <typename T>
std::vector<T> download(cudaStream_t s, const DeviceBuffer<T>& d) {
    std::vector<T> h(d.size());
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (!h.empty()) CUDA_CHECK(cudaMemcpy(h.data(), d.get(), h.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

DeviceBuffer<bf16> upload_bf16(cudaStream_t s, const std::vector<float>& h) {
    DeviceBuffer<float> f = upload(s, h);
    DeviceBuffer<bf16> b(h.size());
    cuda::to_bf16(s, b.get(), f.get(), int64_t(h.size()));
    CUDA_CHECK(cudaStreamSynchronize(s));  // before f is freed
    return b;
}

__global__ void widen_kernel(float* dst, const bf16* src, int64_t count) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

}  // namespace

std::vector<float> to_bf16(const std::vector<float>& x) {
    Stream s;
    DeviceBuffer<bf16> b = upload_bf16(s, x);
    DeviceBuffer<float> out(x.size());
    if (!x.empty()) {
        widen_kernel<<<unsigned(std::min<size_t>((x.size() + 255) / 256, 4096)), 256, 0, s>>>(out.get(), b.get(),
                                                                                             int64_t(x.size()));
        CUDA_CHECK(cudaGetLastError());
    }
    return download(s, out);
}

std::vector<float> embed(const std::vector<float>& table, const std::vector<int32_t>& tokens, int d, float scale) {
    Stream s;
    DeviceBuffer<bf16> t = upload_bf16(s, table);
    DeviceBuffer<int32_t> tok = upload(s, tokens);
    DeviceBuffer<float> x(tokens.size() * size_t(d));
    cuda::embed(s, x.get(), t.get(), tok.get(), int(tokens.size()), d, scale);
    return download(s, x);
}

std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int n, int d, float eps) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dw = upload(s, w), dy(x.size());
    cuda::rmsnorm(s, dy.get(), dx.get(), dw.get(), n, d, eps);
    return download(s, dy);
}

std::vector<float> add_rmsnorm(const std::vector<float>& x, const std::vector<float>& r, const std::vector<float>& w,
                               int n, int d, float eps, bool fused) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dr = upload(s, r), dw = upload(s, w), dy(x.size());
    if (fused) {
        cuda::add_rmsnorm(s, dx.get(), dr.get(), dy.get(), dw.get(), n, d, eps);
    } else {
        cuda::add(s, dx.get(), dr.get(), int64_t(x.size()));
        cuda::rmsnorm(s, dy.get(), dx.get(), dw.get(), n, d, eps);
    }
    std::vector<float> out = download(s, dy), sum = download(s, dx);
    out.insert(out.end(), sum.begin(), sum.end());
    return out;
}

std::vector<float> head_rmsnorm(const std::vector<float>& x, int n, int stride, int col0, int n_heads, int head_dim,
                                const std::vector<float>& w, float eps) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dw = upload(s, w);
    cuda::head_rmsnorm(s, dx.get(), n, stride, col0, n_heads, head_dim, dw.get(), eps);
    return download(s, dx);
}

std::vector<float> rope(const std::vector<float>& x, int n, int stride, int col0, int n_heads, int head_dim,
                        const std::vector<int32_t>& pos, const std::vector<float>& inv_freq) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), df = upload(s, inv_freq);
    DeviceBuffer<int32_t> dp = upload(s, pos);
    cuda::rope(s, dx.get(), n, stride, col0, n_heads, head_dim, dp.get(), df.get());
    return download(s, dx);
}

std::vector<float> rope_append(const std::vector<float>& qkv, int n, int stride, int n_heads, int n_kv_heads,
                               int head_dim, const std::vector<int32_t>& pos, const std::vector<float>& inv_freq,
                               const std::vector<int32_t>& slot, int n_slots, int capacity) {
    Stream s;
    const size_t cache = size_t(capacity) * size_t(n_kv_heads) * size_t(head_dim);
    DeviceBuffer<float> dx = upload(s, qkv), df = upload(s, inv_freq), k{cache * size_t(n_slots)},
                        v{cache * size_t(n_slots)};
    k.zero(s);
    v.zero(s);
    DeviceBuffer<int32_t> dp = upload(s, pos), ds = upload(s, slot);
    std::vector<float*> kb, vb;
    for (int i = 0; i < n_slots; ++i) kb.push_back(k.get() + size_t(i) * cache), vb.push_back(v.get() + size_t(i) * cache);
    DeviceBuffer<float*> dkb = upload(s, kb), dvb = upload(s, vb);
    cuda::rope_append(s, dx.get(), n, stride, n_heads, n_kv_heads, head_dim, dp.get(), df.get(), ds.get(), dkb.get(),
                      dvb.get());
    std::vector<float> out = download(s, dx), hk = download(s, k), hv = download(s, v);
    out.insert(out.end(), hk.begin(), hk.end());
    out.insert(out.end(), hv.begin(), hv.end());
    return out;
}

std::vector<float> gated_act(Activation act, const std::vector<float>& gate_up, int n, int I) {
    Stream s;
    DeviceBuffer<float> dg = upload(s, gate_up), dout(size_t(n) * size_t(I));
    cuda::gated_act(s, act, dout.get(), dg.get(), n, I);
    return download(s, dout);
}

std::vector<float> softcap(const std::vector<float>& x, float cap) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x);
    cuda::softcap(s, dx.get(), int64_t(x.size()), cap);
    return download(s, dx);
}

std::vector<float> add(const std::vector<float>& x, const std::vector<float>& y) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dy = upload(s, y);
    cuda::add(s, dx.get(), dy.get(), int64_t(x.size()));
    return download(s, dx);
}

std::vector<float> copy2d(const std::vector<float>& dst, int dst_ld, const std::vector<float>& src, int src_ld,
                          int rows, int cols) {
    Stream s;
    DeviceBuffer<float> dd = upload(s, dst), ds = upload(s, src);
    cuda::copy2d(s, dd.get(), dst_ld, ds.get(), src_ld, rows, cols);
    return download(s, dd);
}

std::vector<float> attention(const std::vector<float>& q, int q_stride, const std::vector<int32_t>& row0,
                             const std::vector<int32_t>& len, const std::vector<int32_t>& pos0,
                             const std::vector<std::vector<float>>& k, const std::vector<std::vector<float>>& v,
                             int kv_stride, int n_heads, int n_kv_heads, int head_dim, float scale, int window,
                             float softcap) {
    Stream s;
    const int n_seqs = int(len.size());
    int rows = 0, max_len = 0, max_ctx = 0;
    for (int i = 0; i < n_seqs; ++i) {
        rows = std::max(rows, row0[size_t(i)] + len[size_t(i)]);
        max_len = std::max(max_len, len[size_t(i)]);
        max_ctx = std::max(max_ctx, pos0[size_t(i)] + len[size_t(i)]);
    }
    std::vector<DeviceBuffer<float>> dk, dv;
    std::vector<const float*> kp, vp;
    for (int i = 0; i < n_seqs; ++i) {
        dk.push_back(upload(s, k[size_t(i)]));
        dv.push_back(upload(s, v[size_t(i)]));
        kp.push_back(dk.back().get());
        vp.push_back(dv.back().get());
    }
    DeviceBuffer<float> dq = upload(s, q), dout(size_t(rows) * size_t(n_heads) * size_t(head_dim));
    DeviceBuffer<int32_t> drow0 = upload(s, row0), dlen = upload(s, len), dpos0 = upload(s, pos0);
    DeviceBuffer<const float*> dkp = upload(s, kp), dvp = upload(s, vp);
    dout.zero(s);
    cuda::attention(s, dout.get(), dq.get(), q_stride, n_seqs, drow0.get(), dlen.get(), dpos0.get(), dkp.get(),
                    dvp.get(), kv_stride, n_heads, n_kv_heads, head_dim, scale, window, softcap, max_len, max_ctx);
    return download(s, dout);
}

std::vector<float> matmul_wt(const std::vector<float>& x, const std::vector<float>& W, const std::vector<float>& bias,
                             int n, int out, int in) {
    Stream s;
    DeviceBuffer<bf16> dW = upload_bf16(s, W);
    DeviceBuffer<float> dx = upload(s, x), db = upload(s, bias), dy(size_t(n) * size_t(out));
    {
        GemmContext ctx(s);
        ctx.matmul_wt(dy.get(), dx.get(), dW.get(), bias.empty() ? nullptr : db.get(), n, out, in);
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    return download(s, dy);
}

std::vector<float> matmul_gated(const std::vector<float>& gate_up, Activation act, const std::vector<float>& W,
                                const std::vector<float>& bias, int n, int out, int in, bool fused) {
    Stream s;
    DeviceBuffer<bf16> dW = upload_bf16(s, W);
    DeviceBuffer<float> dg = upload(s, gate_up), db = upload(s, bias), dy(size_t(n) * size_t(out)),
                        scratch(size_t(n) * size_t(in));
    {
        GemmContext ctx(s);
        const float* b = bias.empty() ? nullptr : db.get();
        if (fused) {
            ctx.matmul_gated(dy.get(), dg.get(), act, scratch.get(), dW.get(), b, n, out, in);
        } else {
            cuda::gated_act(s, act, scratch.get(), dg.get(), n, in);
            ctx.matmul_wt(dy.get(), scratch.get(), dW.get(), b, n, out, in);
        }
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    return download(s, dy);
}

std::vector<int32_t> argmax_rows(const std::vector<float>& x, int n, int cols) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x);
    DeviceBuffer<int32_t> dout{size_t(n)};
    cuda::argmax_rows(s, dout.get(), dx.get(), n, cols);
    return download(s, dout);
}

void set_prefill_attention(int mode) { cuda::set_prefill_attention(mode); }

std::vector<int32_t> sample_rows(const std::vector<float>& x, int n, int cols, float temperature, int top_k, float top_p,
                                 const std::vector<double>& u) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x);
    DeviceBuffer<double> du = upload(s, u);
    DeviceBuffer<int32_t> dout{size_t(n)};
    DeviceBuffer<unsigned char> scratch{cuda::sample_scratch_bytes(n, cols)};
    cuda::sample_rows(s, dout.get(), dx.get(), n, cols, temperature, top_k, top_p, du.get(), scratch.get());
    return download(s, dout);
}

std::vector<float> add_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                            const std::vector<float>& v, float alpha) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dv = upload(s, v);
    DeviceBuffer<int32_t> dr = upload(s, rows);
    cuda::add_rows(s, dx.get(), d, dr.get(), int(rows.size()), dv.get(), alpha);
    return download(s, dx);
}

std::vector<float> ablate_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                               const std::vector<float>& u, float alpha) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), du = upload(s, u);
    DeviceBuffer<int32_t> dr = upload(s, rows);
    cuda::ablate_rows(s, dx.get(), d, dr.get(), int(rows.size()), du.get(), alpha);
    return download(s, dx);
}

std::vector<float> replace_rows(const std::vector<float>& x, int d, const std::vector<int32_t>& rows,
                                const std::vector<float>& src, float alpha) {
    Stream s;
    DeviceBuffer<float> dx = upload(s, x), dsrc = upload(s, src);
    DeviceBuffer<int32_t> dr = upload(s, rows);
    const int64_t src_ld = src.size() == size_t(d) && rows.size() != 1 ? 0 : d;
    cuda::replace_rows(s, dx.get(), d, dr.get(), int(rows.size()), dsrc.get(), src_ld, alpha);
    return download(s, dx);
}

}  // namespace stitch::cuda::check

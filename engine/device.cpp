#include "engine/device.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "engine/error.h"
#include "engine/model.h"

#ifdef STITCH_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/forward_cuda.h"
#endif

namespace stitch {
namespace {

std::atomic<Backend> g_device{Backend::CPU};
std::mutex g_request_mutex;
std::optional<std::string> g_requested;

// Why CUDA cannot run, for messages: "no CUDA device (no NVIDIA driver: …)", or the build's reason.
std::string cuda_missing(const std::string& why) {
#ifdef STITCH_HAVE_CUDA
    // device_count says "no NVIDIA driver: …" or the runtime's reason; name the missing device first.
    return why.rfind("no CUDA device", 0) == 0 ? why : "no CUDA device (" + why + ")";
#else
    return why;
#endif
}

}  // namespace

const char* backend_name(Backend b) { return b == Backend::CUDA ? "cuda" : "cpu"; }

bool cuda_available(std::string* why) {
#ifdef STITCH_HAVE_CUDA
    std::string w;
    if (cuda::device_count(&w) > 0) return true;
    if (why) *why = w.empty() ? "no CUDA device" : w;
    return false;
#else
    if (why) *why = "this stitch was built without CUDA (no nvcc at build time)";
    return false;
#endif
}

Backend resolve_device(const std::string& s, bool notice) {
    if (s == "cpu") return Backend::CPU;
    if (s != "cuda" && s != "auto") fail("--device", "'{}' is not auto, cpu or cuda", s);
    std::string why;
    if (cuda_available(&why)) return Backend::CUDA;
    const std::string what = cuda_missing(why);
    if (s == "cuda") fail("--device", "cuda: {}", what);
    if (notice) std::fprintf(stderr, "stitch: %s; running on the CPU\n", what.c_str());
    return Backend::CPU;
}

void request_device(const std::string& s) {
    std::lock_guard<std::mutex> lock(g_request_mutex);
    g_requested = s;
}

std::optional<std::string> requested_device() {
    {
        std::lock_guard<std::mutex> lock(g_request_mutex);
        if (g_requested) return g_requested;
    }
    if (const char* e = std::getenv("STITCH_DEVICE"); e && *e) return std::string(e);
    return std::nullopt;
}

void set_device(Backend b) { g_device.store(b, std::memory_order_relaxed); }
Backend current_device() { return g_device.load(std::memory_order_relaxed); }

void to_device(Model& m, Backend b) {
    if (b == Backend::CPU) {
        m.cuda.reset();
        return;
    }
#ifdef STITCH_HAVE_CUDA
    std::string why;
    if (!cuda_available(&why)) fail("--device", "cuda: {}", cuda_missing(why));
    m.cuda.reset();  // free the old copy before the new one needs the memory
    m.cuda = std::make_shared<cuda::ForwardCuda>(m);
#else
    fail("--device", "cuda: this stitch was built without CUDA (no nvcc at build time)");
#endif
}

std::string devices_report() {
    std::string out;
#ifdef STITCH_HAVE_CUDA
    out += "CUDA: compiled in (" + cuda::runtime_summary() + ")\n";
    std::string why;
    const int n = cuda::device_count(&why);
    if (n == 0) {
        out += "devices: none (" + (why.empty() ? std::string("no CUDA device") : why) + ")\n";
    } else {
        out += fmt::format("devices: {}\n", n);
        for (int i = 0; i < n; ++i) out += fmt::format("  {}: {}\n", i, cuda::device_summary(i));
    }
    out += fmt::format("--device auto runs on: {}\n", n > 0 ? "cuda (device 0)" : "cpu");
#else
    out += "CUDA: not compiled in (this stitch was built without nvcc): CPU only\n";
    out += "--device auto runs on: cpu\n";
#endif
    return out;
}

}  // namespace stitch

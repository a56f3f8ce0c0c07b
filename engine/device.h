// Where the forward pass runs: the CPU (float32 throughout: the reference) or one CUDA GPU (bf16
// GEMM weights, float32 activations and KV cache: kernels/cuda/forward_cuda.h). Plain C++, so
// every translation unit may ask, with or without CUDA compiled in.
//
// The command line's choice (`--device auto|cpu|cuda`, engine/cli_util.cpp):
//   no --device        CUDA when this binary has it and a GPU and driver are present, else the
//                      CPU without a word (GPU-less machines are the common case, not an error);
//   --device auto      the same, but a CPU fallback says why in one line on stderr;
//   --device cpu       the CPU;
//   --device cuda      the GPU, or a one-line error (exit status 2) naming what is missing.
// STITCH_DEVICE=auto|cpu|cuda in the environment stands for a --device the command line did not
// give (the CPU test suite pins it to cpu so its HF tolerances hold on GPU machines too).
//
// Library callers are unaffected unless they ask: the process-wide device starts as the CPU, and
// a Model runs where to_device() put it.
#pragma once
#include <optional>
#include <string>

namespace stitch {

struct Model;

enum class Backend { CPU, CUDA };
const char* backend_name(Backend b);  // "cpu" | "cuda"

// Whether the CUDA backend can run here: compiled in, a driver, at least one device. When it
// cannot, *why (if given) says why ("no NVIDIA driver: libcuda.so.1 not found", "this stitch was
// built without CUDA (no nvcc at build time)", …). Never throws.
bool cuda_available(std::string* why = nullptr);

// A --device value: "cpu"; "cuda" (throws stitch::Error("--device", "cuda: <why>") where CUDA
// cannot run); "auto" (CUDA where it can run, else the CPU, printing "stitch: <why>; running on
// the CPU" on stderr when `notice`). Anything else throws Error("--device", "'X' is not auto, cpu
// or cuda").
Backend resolve_device(const std::string& s, bool notice = true);

// The user's explicit choice, if any: the --device recorded by request_device() (the command
// line), else a non-empty STITCH_DEVICE. Commands with a device setting of their own (transfer's
// config "device") use theirs only when this is empty.
void request_device(const std::string& s);
std::optional<std::string> requested_device();

// The device models are put on when they are loaded for a command (load_model_with_adapter).
// Process-wide; the CPU until someone sets it.
void set_device(Backend b);
Backend current_device();

// Sets the process-wide device for a scope and puts the previous one back.
class ScopedDevice {
public:
    explicit ScopedDevice(Backend b) : saved_(current_device()) { set_device(b); }
    ~ScopedDevice() { set_device(saved_); }
    ScopedDevice(const ScopedDevice&) = delete;
    ScopedDevice& operator=(const ScopedDevice&) = delete;

private:
    Backend saved_;
};

// Puts the model's forward pass on a device. CUDA: uploads the weights as they are now (bf16 GEMM
// weights, f32 norms/biases/RoPE; call again after changing m.weights) — throws stitch::Error when
// CUDA cannot run or the GPU lacks the memory. CPU: drops any device copy. Host weights stay.
void to_device(Model& m, Backend b);

// For `stitch inspect --devices`: whether this binary has CUDA compiled in, the CUDA devices with
// name, compute capability and memory, or why there are none, and what --device auto picks.
std::string devices_report();

}  // namespace stitch

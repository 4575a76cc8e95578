// ggml backend device discovery: lookup by name, system report, CPU thread control.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <ggml-backend.h>

namespace sdcpp {

struct DeviceInfo {
    std::string name;
    std::string description;
    std::string type;  // "cpu", "gpu", "igpu", "accel", "meta"
    size_t memory_total = 0;
    size_t memory_free = 0;
};

struct SystemInfo {
    std::vector<DeviceInfo> devices;
    std::vector<std::string> registries;
    std::vector<std::pair<std::string, std::string>> cpu_features;
    std::string cpu_backend;  // file the CPU backend was loaded from
    std::string cpu_variant;  // "haswell", "sapphirerapids", ...; "built-in" when libggml carries the CPU backend
};

// The folder libggml was loaded from (where the wheel keeps the backend modules).
std::string ggml_library_dir();

// Registers ggml's backend modules in `dir` once per process: the CPU variant that scores best on this CPU and
// any GPU module (libggml-cuda.so, ...). A libggml with a built-in CPU backend (no GGML_BACKEND_DL) loads
// only the GPU modules. Returns the folder searched. Throws std::runtime_error when no CPU backend is registered.
std::string load_backends(const std::string& dir);

SystemInfo system_info();

// "cpu", "auto" (first GPU, else CPU) or a device name from system_info (case-insensitive).
// Throws std::invalid_argument listing the available devices if nothing matches.
ggml_backend_dev_t find_device(const std::string& name);

// The CPU device; throws std::runtime_error if ggml was built without one.
ggml_backend_dev_t cpu_device();

// Sets the thread count if the backend has that knob (CPU does, GPUs do not).
void set_backend_threads(ggml_backend_t backend, int n_threads);

// Sets (or, with nullptr, clears) the callback that aborts a graph computation between nodes; false when the
// backend has none (the CPU and Metal backends do; CUDA and Vulkan do not in this ggml).
bool set_backend_abort_callback(ggml_backend_t backend, ggml_abort_callback callback, void* data);

}  // namespace sdcpp

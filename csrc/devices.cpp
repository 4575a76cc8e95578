#include "devices.hpp"

#include <dlfcn.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>

namespace sdcpp {
namespace {

const char* dev_type_name(enum ggml_backend_dev_type type) {
    switch (type) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        case GGML_BACKEND_DEVICE_TYPE_META: return "meta";
    }
    return "unknown";
}

std::string lower(std::string s) {
    for (char& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

std::string str_or_empty(const char* s) { return s != nullptr ? s : ""; }

// The shared object that holds `address` (a function of ggml or of a backend module).
std::string library_of(const void* address) {
    Dl_info info{};
    if (address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr) {
        return info.dli_fname;
    }
    return "";
}

std::string folder_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

// "libggml-cpu-haswell.so" -> "haswell"; the libggml file itself -> "built-in".
std::string variant_of(const std::string& cpu_backend) {
    if (cpu_backend.empty()) {
        return "";
    }
    const std::string file = cpu_backend.substr(cpu_backend.find_last_of('/') + 1);
    const std::string prefix = "libggml-cpu-";
    if (file.rfind(prefix, 0) != 0) {
        return "built-in";
    }
    return file.substr(prefix.size(), file.find('.') - prefix.size());
}

// ggml prints every backend it loads at INFO level; on each import that is noise. Warnings and errors still reach
// stderr, everything with SDCPP_GGML_LOG=1.
void quiet_log(enum ggml_log_level level, const char* text, void* /*user_data*/) {
    static const bool verbose = std::getenv("SDCPP_GGML_LOG") != nullptr;
    static enum ggml_log_level last = GGML_LOG_LEVEL_INFO;
    if (level != GGML_LOG_LEVEL_CONT) {
        last = level;
    }
    if (verbose || last >= GGML_LOG_LEVEL_WARN) {
        std::fputs(text, stderr);
    }
}

// Every backend module in `dir` except the CPU variants: libggml-cuda.so, libggml-metal.so, ...
void load_gpu_modules(const std::string& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        const bool module = name.rfind("libggml-", 0) == 0 && name.substr(name.size() - 3) == ".so";
        if (module && name.rfind("libggml-cpu", 0) != 0 && name.rfind("libggml-base", 0) != 0) {
            ggml_backend_load(entry.path().string().c_str());
        }
    }
}

}  // namespace

std::string ggml_library_dir() {
    return folder_of(library_of(reinterpret_cast<const void*>(&ggml_backend_load_all_from_path)));
}

std::string load_backends(const std::string& dir) {
    static std::once_flag once;
    static std::string searched;
    std::call_once(once, [&] {
        ggml_log_set(quiet_log, nullptr);
        searched = dir.empty() ? ggml_library_dir() : dir;
        if (ggml_backend_reg_by_name("CPU") != nullptr) {
            // A libggml built without GGML_BACKEND_DL (sdcpp build-ggml, native) has its CPU backend compiled in;
            // ggml's loader would register a CPU variant beside it, so only the GPU modules are loaded here.
            load_gpu_modules(searched);
            return;
        }
        ggml_backend_load_all_from_path(searched.c_str());
        if (ggml_backend_reg_by_name("CPU") == nullptr) {  // thrown out of call_once: the next call tries again
            throw std::runtime_error("no ggml CPU backend for this CPU in " + searched +
                                     " (expected libggml-cpu-<variant>.so files there)");
        }
    });
    return searched;
}

SystemInfo system_info() {
    SystemInfo info;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        DeviceInfo d;
        d.name = str_or_empty(ggml_backend_dev_name(dev));
        d.description = str_or_empty(ggml_backend_dev_description(dev));
        d.type = dev_type_name(ggml_backend_dev_type(dev));
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        info.devices.push_back(std::move(d));
    }
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        info.registries.push_back(str_or_empty(ggml_backend_reg_name(ggml_backend_reg_get(i))));
    }
    // Features are only reachable through the registry's proc table (works for dynamic backends too).
    if (ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU")) {
        auto get_features = reinterpret_cast<ggml_backend_get_features_t>(
            ggml_backend_reg_get_proc_address(cpu, "ggml_backend_get_features"));
        if (get_features != nullptr) {
            for (ggml_backend_feature* f = get_features(cpu); f != nullptr && f->name != nullptr; ++f) {
                info.cpu_features.emplace_back(f->name, str_or_empty(f->value));
            }
        }
        info.cpu_backend = library_of(reinterpret_cast<const void*>(get_features));
        info.cpu_variant = variant_of(info.cpu_backend);
    }
    return info;
}

ggml_backend_dev_t cpu_device() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (dev == nullptr) {
        throw std::runtime_error("ggml has no CPU device");
    }
    return dev;
}

ggml_backend_dev_t find_device(const std::string& name) {
    const std::string key = lower(name);
    if (key == "cpu") {
        return cpu_device();
    }
    if (key == "auto") {
        if (ggml_backend_dev_t gpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU)) {
            return gpu;
        }
        return cpu_device();
    }
    if (ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str())) {
        return dev;
    }
    std::string msg = "unknown device '" + name + "'; expected 'cpu', 'auto' or one of:";
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        msg += std::string(" ") + ggml_backend_dev_name(ggml_backend_dev_get(i));
    }
    throw std::invalid_argument(msg);
}

void set_backend_threads(ggml_backend_t backend, int n_threads) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    if (dev == nullptr) {
        return;
    }
    auto set_n_threads = reinterpret_cast<ggml_backend_set_n_threads_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_set_n_threads"));
    if (set_n_threads != nullptr) {
        set_n_threads(backend, n_threads);
    }
}

bool set_backend_abort_callback(ggml_backend_t backend, ggml_abort_callback callback, void* data) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    if (dev == nullptr) {
        return false;
    }
    auto set_abort = reinterpret_cast<ggml_backend_set_abort_callback_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_set_abort_callback"));
    if (set_abort == nullptr) {
        return false;
    }
    set_abort(backend, callback, data);
    return true;
}

}  // namespace sdcpp

#include "devices.hpp"

#include <cctype>
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

}  // namespace

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
